"""An administrator sets up a new device in a real browser (Debian's chromium, driven by Playwright)."""

import re

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client

from network.models import ModalityNode
from tests.storescp import storescp

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "browser-test-pass-123"  # noqa: S105 - a throwaway test account


@pytest.fixture
def page(live_server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(15_000)
    return page


def test_an_administrator_adds_a_node_tests_it_and_reads_our_settings(page, live_server, tmp_path, settings):
    from playwright.sync_api import expect

    settings.DICOM_AE_TITLE = "PACS_MAIN"
    settings.DICOM_PORT = 11999
    # Signed in through a session cookie: the sign-in page is another test's business.
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("admin", "admin@example.org", PASSWORD))
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])

    with storescp(tmp_path / "in", tmp_path / "storescp.log") as port:
        page.goto(f"{live_server.url}/admin/network/modalitynode/add/")
        expect(page.locator("#user-tools")).to_contain_text("admin")
        page.fill("#id_ae_title", " DR_WARD_3 ")
        page.fill("#id_host", "127.0.0.1")
        page.fill("#id_port", str(port))
        page.fill("#id_description", "ward DR")
        page.uncheck("#id_may_query")
        page.screenshot(path=tmp_path / "1-add-node.png", full_page=True)
        page.click("input[name=_save]")
        expect(page.locator("ul.messagelist")).to_contain_text("was added successfully")
        node = ModalityNode.objects.get()
        assert (node.ae_title, node.port, node.may_query) == ("DR_WARD_3", port, False)

        page.check(f"input[name=_selected_action][value='{node.pk}']")
        page.select_option("select[name=action]", "test_connection")
        page.click("button[name=index]")
        success = page.locator("ul.messagelist li.success")
        expect(success).to_contain_text("C-ECHO succeeded")
        assert re.search(
            r"DR_WARD_3 \(127\.0\.0\.1:\d+\): C-ECHO succeeded, round trip \d+\.\d ms", success.inner_text()
        )
        page.screenshot(path=tmp_path / "2-test-connection.png", full_page=True)

    page.click("text=This server")
    expect(page.locator("#our-ae-title")).to_have_text("PACS_MAIN")
    expect(page.locator("#our-port")).to_have_text("11999")
    page.screenshot(path=tmp_path / "3-this-server.png", full_page=True)
