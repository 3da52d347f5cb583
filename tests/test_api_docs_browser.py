"""/api/docs/ renders in a real browser (Debian's chromium) from our own files: no request leaves 127.0.0.1.

And a page on another origin (another port of 127.0.0.1) calls the API the way a
viewer elsewhere would: the browser's own CORS preflight, with Authorization and a
quoted Accept, must be answered for a listed origin.
"""

import base64
import http.server
import threading
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, User
from django.core.signals import request_started
from django.test import Client

from records.roles import DOCTOR

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "browser-test-pass-123"  # noqa: S105 - a throwaway test account
SCREENSHOTS = Path(django_settings.VAR_DIR) / "screenshots"


@pytest.fixture
def base_url(live_server) -> str:
    # The live server listens on the loopback address; name it by its number.
    return f"http://127.0.0.1:{urlsplit(live_server.url).port}"


@pytest.fixture
def page(browser):
    """A page whose every request is checked: anything not for 127.0.0.1 is aborted and recorded."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(15_000)
    page.elsewhere = []
    page.failed = []

    def only_loopback(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            page.elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_loopback)
    page.on("response", lambda r: page.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("requestfailed", lambda r: page.failed.append(f"failed {r.url}"))
    return page


@pytest.fixture
def watched_page(browser):
    """A page whose requests are recorded, not intercepted: with interception on, Playwright answers
    CORS preflights itself, and the server's answer is what is tested here."""
    page = browser.new_page()
    page.set_default_timeout(15_000)
    page.elsewhere = []
    page.on("request", lambda r: None if urlsplit(r.url).hostname == "127.0.0.1" else page.elsewhere.append(r.url))
    return page


def sign_in(page, base_url: str) -> None:
    user = User.objects.create_user("doctor", password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name=DOCTOR)[0])
    client = Client()
    client.force_login(user)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": base_url}])


def test_the_docs_page_renders_from_our_own_files(page, base_url):
    from playwright.sync_api import expect

    sign_in(page, base_url)
    page.goto(f"{base_url}/api/docs/")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Imaging archive API")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "api-docs.png")
    # The operations of the schema are listed, grouped by endpoint.
    expect(page.locator(".opblock-summary-path", has_text="/api/studies/").first).to_be_visible()
    expect(page.locator(".opblock-summary-path", has_text="/api/send-jobs/").first).to_be_visible()
    page.locator(".opblock-summary-path", has_text="/api/studies/").first.click()
    expect(page.locator(".parameters-container").first).to_contain_text("study_date_after")
    page.screenshot(path=SCREENSHOTS / "api-docs-studies.png")
    assert page.elsewhere == []
    assert page.failed == []


@pytest.fixture
def other_origin():
    """A page served from another origin (127.0.0.1, another port) that calls the API as a viewer would."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            body = b"<!doctype html><title>viewer</title><p>another origin</p>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


FETCH = """async ([url, auth]) => {
    try {
        const r = await fetch(url, {headers: {
            "Authorization": auth, "Accept": 'multipart/related; type="application/dicom", application/json'}});
        return {status: r.status, body: await r.text()};
    } catch (e) { return {error: String(e)}; }
}"""


def test_a_listed_origin_calls_the_api_through_a_real_preflight(watched_page, base_url, other_origin, settings):
    settings.CORS_ALLOWED_ORIGINS = [other_origin]
    user = User.objects.create_user("doctor", password=PASSWORD)
    user.groups.add(Group.objects.get_or_create(name=DOCTOR)[0])
    auth = "Basic " + base64.b64encode(f"doctor:{PASSWORD}".encode()).decode()
    watched_page.goto(other_origin)
    # Chromium does not report its preflights as requests of the page: the server sees them.
    preflights = []

    def seen(sender, environ, **kwargs):
        if environ["REQUEST_METHOD"] == "OPTIONS":
            preflights.append((environ["PATH_INFO"], environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")))

    request_started.connect(seen)
    try:
        result = watched_page.evaluate(FETCH, [f"{base_url}/api/studies/", auth])
    finally:
        request_started.disconnect(seen)
    assert result.get("status") == 200, result
    assert '"count":0' in result["body"]
    assert len(preflights) == 1 and preflights[0][0] == "/api/studies/"
    assert {h.strip() for h in preflights[0][1].split(",")} == {"accept", "authorization"}

    settings.CORS_ALLOWED_ORIGINS = ["http://127.0.0.1:1"]
    refused = watched_page.evaluate(FETCH, [f"{base_url}/api/studies/", auth])
    assert "error" in refused and "Failed to fetch" in refused["error"]
    assert watched_page.elsewhere == []
