"""Programs and browsers sign in to /api/ (and /dicomweb/, through the same DRF settings): session, Basic, tokens.

Each auth method with each role on every endpoint; lockouts apply to Basic as to the
login page; administrators issue tokens in the admin (never a superuser's); CORS only
for the origins CORS_ALLOWED_ORIGINS lists.
"""

import base64

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from records.roles import ADMINISTRATOR
from tests.test_api import ENDPOINTS, PASSWORD, PERSONAS, archive, fast_hashing, make_user  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db
METHODS = ("session", "basic", "token")


def basic(username: str, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def signed_in(persona: str, method: str) -> APIClient:
    """A client that authenticates as the persona with ``method`` (none for anonymous)."""
    client = APIClient()
    user = make_user(persona)
    if user is None:
        return client
    if method == "session":
        # Through the real login page, as a browser does.
        assert client.post("/accounts/login/", {"username": user.username, "password": PASSWORD}).status_code == 302
    elif method == "basic":
        client.credentials(HTTP_AUTHORIZATION=basic(user.username))
    else:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("persona", PERSONAS)
def test_every_endpoint_with_every_auth_method_and_role(archive, persona, method):  # noqa: F811
    client = signed_in(persona, method)
    for name, allowed in {"": {"doctor", "front_desk", "administrator"}, **ENDPOINTS}.items():
        for url in [f"/api/{name}/" if name else "/api/"] + ([f"/api/{name}/{archive[name]}/"] if name else []):
            response = client.get(url)
            if persona in allowed:
                assert response.status_code == 200, (url, response.content[:200])
            elif persona == "anonymous":
                assert response.status_code == 401, url
                assert response["WWW-Authenticate"] == 'Basic realm="imaging"'
            else:
                assert response.status_code == 403, url
                assert "role does not give access" in response.json()["detail"]


def test_wrong_credentials_are_refused_with_a_reason():
    make_user("doctor")
    client = APIClient()
    response = client.get("/api/studies/", HTTP_AUTHORIZATION=basic("doctor", "wrong"))
    assert response.status_code == 401 and response.json()["detail"] == "Invalid username/password."
    response = client.get("/api/studies/", HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    assert response.status_code == 401 and response.json()["detail"] == "Invalid token."
    response = client.get("/api/studies/", HTTP_AUTHORIZATION="Basic !!!")
    assert response.status_code == 401 and "not correctly base64 encoded" in response.json()["detail"]


def test_an_inactive_users_token_no_longer_works():
    user = make_user("doctor")
    token = Token.objects.create(user=user)
    client = APIClient(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/studies/").status_code == 200
    user.is_active = False
    user.save()
    response = client.get("/api/studies/")
    assert response.status_code == 401 and "inactive" in response.json()["detail"]


def test_a_session_post_needs_the_csrf_token_but_basic_does_not():
    admin = make_user("administrator")
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(admin)
    node = {"ae_title": "CT1", "host": "127.0.0.1", "port": 104}
    response = browser.post("/api/nodes/", node)
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    script = APIClient(enforce_csrf_checks=True, HTTP_AUTHORIZATION=basic(admin.username))
    assert script.post("/api/nodes/", node).status_code == 201


# --- Lockouts (django-axes) apply to Basic ------------------------------------------------------------


def test_wrong_basic_passwords_lock_out_the_user_name_and_the_right_one_then_fails_too(settings):
    make_user("doctor")
    client = APIClient()
    for attempt in range(1, settings.LOGIN_FAILURE_LIMIT):
        response = client.get("/api/studies/", HTTP_AUTHORIZATION=basic("doctor", "wrong"))
        assert response.status_code == 401, attempt
    locked = client.get("/api/studies/", HTTP_AUTHORIZATION=basic("doctor", "wrong"))
    assert locked.status_code == 429 and "Too many failed sign-ins" in locked.json()["detail"]
    right = client.get("/api/studies/", HTTP_AUTHORIZATION=basic("doctor"))
    assert right.status_code == 429 and "right password included" in right.json()["detail"]
    # And the login page refuses the same user name from the same address.
    assert Client().post("/accounts/login/", {"username": "doctor", "password": PASSWORD}).status_code == 429
    # Another address is not affected.
    assert client.get("/api/studies/", HTTP_AUTHORIZATION=basic("doctor"), REMOTE_ADDR="127.0.0.2").status_code == 200


def test_a_user_locked_out_on_the_login_page_cannot_get_in_with_basic(settings):
    make_user("doctor")
    browser = Client()
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        browser.post("/accounts/login/", {"username": "doctor", "password": "wrong"})
    assert browser.post("/accounts/login/", {"username": "doctor", "password": PASSWORD}).status_code == 429
    response = APIClient().get("/api/studies/", HTTP_AUTHORIZATION=basic("doctor"))
    assert response.status_code == 429


# --- A Basic password is checked once, then remembered (API_BASIC_AUTH_CACHE_SECONDS) -------------


@pytest.fixture
def hasher_calls(monkeypatch):
    """How many times the password hasher verifies a password (the 0.6 s Basic used to pay per request)."""
    from django.contrib.auth.hashers import MD5PasswordHasher

    calls = []
    verify = MD5PasswordHasher.verify
    monkeypatch.setattr(MD5PasswordHasher, "verify", lambda self, *a: calls.append(1) or verify(self, *a))
    return calls


def test_a_basic_password_is_hashed_once_then_remembered(hasher_calls):
    make_user("doctor")
    client = APIClient(HTTP_AUTHORIZATION=basic("doctor"))
    for _ in range(5):
        assert client.get("/api/studies/").status_code == 200
    assert len(hasher_calls) == 1


def test_a_remembered_password_is_forgotten_when_the_password_changes(hasher_calls):
    user = make_user("doctor")
    client = APIClient(HTTP_AUTHORIZATION=basic("doctor"))
    assert client.get("/api/studies/").status_code == 200
    user.set_password("another-long-password")
    user.save()
    assert client.get("/api/studies/").status_code == 401
    changed = basic("doctor", "another-long-password")
    assert APIClient().get("/api/studies/", HTTP_AUTHORIZATION=changed).status_code == 200


def test_a_remembered_password_stops_working_when_the_user_is_deactivated():
    user = make_user("doctor")
    client = APIClient(HTTP_AUTHORIZATION=basic("doctor"))
    assert client.get("/api/studies/").status_code == 200
    user.is_active = False
    user.save()
    assert client.get("/api/studies/").status_code == 401


def test_a_remembered_password_is_refused_once_the_user_name_is_locked_out(settings):
    make_user("doctor")
    client = APIClient()
    assert client.get("/api/studies/", HTTP_AUTHORIZATION=basic("doctor")).status_code == 200
    for _ in range(settings.LOGIN_FAILURE_LIMIT):
        client.get("/api/studies/", HTTP_AUTHORIZATION=basic("doctor", "wrong"))
    right = client.get("/api/studies/", HTTP_AUTHORIZATION=basic("doctor"))
    assert right.status_code == 429 and "right password included" in right.json()["detail"]


def test_remembering_can_be_switched_off(settings, hasher_calls):
    settings.API_BASIC_AUTH_CACHE_SECONDS = 0
    make_user("doctor")
    client = APIClient(HTTP_AUTHORIZATION=basic("doctor"))
    for _ in range(3):
        assert client.get("/api/studies/").status_code == 200
    assert len(hasher_calls) == 3


# --- Administrators issue tokens in the admin --------------------------------------------------------


@pytest.fixture
def admin_browser():
    client = Client()
    client.force_login(make_user("administrator"))
    return client


def test_an_administrator_issues_a_token_that_a_program_then_uses(admin_browser):
    doctor = make_user("doctor")
    response = admin_browser.post("/admin/authtoken/tokenproxy/add/", {"user": doctor.pk, "_save": "Save"})
    assert response.status_code == 302, response.content.decode()[:2000]
    token = Token.objects.get(user=doctor)
    listing = admin_browser.get("/admin/authtoken/tokenproxy/").content.decode()
    assert token.key in listing
    assert APIClient(HTTP_AUTHORIZATION=f"Token {token.key}").get("/api/studies/").status_code == 200
    # Revoking it: the program is refused from then on.
    response = admin_browser.post(f"/admin/authtoken/tokenproxy/{doctor.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Token.objects.exists()
    assert APIClient(HTTP_AUTHORIZATION=f"Token {token.key}").get("/api/studies/").status_code == 401


def test_an_administrator_never_holds_a_superusers_token(admin_browser):
    boss = User.objects.create_superuser("boss", password=PASSWORD)
    response = admin_browser.post("/admin/authtoken/tokenproxy/add/", {"user": boss.pk, "_save": "Save"})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not Token.objects.exists()
    token = Token.objects.create(user=boss)
    assert token.key not in admin_browser.get("/admin/authtoken/tokenproxy/").content.decode()
    assert admin_browser.get(f"/admin/authtoken/tokenproxy/{boss.pk}/change/").status_code == 302  # "doesn't exist"
    admin_browser.post(f"/admin/authtoken/tokenproxy/{boss.pk}/delete/", {"post": "yes"})
    assert Token.objects.filter(user=boss).exists()


def test_doctors_cannot_issue_tokens():
    doctor = make_user("doctor")
    browser = Client()
    browser.force_login(doctor)
    # The admin is not theirs: sent to its sign-in gate, which refuses them (test_roles).
    response = browser.post("/admin/authtoken/tokenproxy/add/", {"user": doctor.pk})
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    assert not Token.objects.exists()
    assert Group.objects.get(name=ADMINISTRATOR).permissions.filter(codename="add_tokenproxy").exists()


# --- CORS: off unless listed -------------------------------------------------------------------------

VIEWER = "http://viewer.test:3000"
QUOTED_ACCEPT = 'multipart/related; type="application/dicom"'


def preflight(path: str, origin: str, headers: str = "authorization, accept"):
    return Client().options(
        path,
        HTTP_ORIGIN=origin,
        HTTP_ACCESS_CONTROL_REQUEST_METHOD="GET",
        HTTP_ACCESS_CONTROL_REQUEST_HEADERS=headers,
    )


@pytest.mark.parametrize("path", ["/api/studies/", "/dicomweb/studies/1.2.3/series"])
def test_a_listed_origin_gets_its_preflight_for_authorization_and_accept(settings, path):
    settings.CORS_ALLOWED_ORIGINS = [VIEWER]
    response = preflight(path, VIEWER)
    assert response.status_code == 200
    assert response["Access-Control-Allow-Origin"] == VIEWER
    allowed = {h.strip() for h in response["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "accept"} <= allowed
    assert "GET" in response["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in response


def test_the_listed_origins_request_itself_is_answered_with_cors_headers(settings):
    settings.CORS_ALLOWED_ORIGINS = [VIEWER]
    make_user("doctor")
    response = APIClient().get(
        "/api/studies/", HTTP_ORIGIN=VIEWER, HTTP_AUTHORIZATION=basic("doctor"), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 200 and response["Access-Control-Allow-Origin"] == VIEWER
    assert "Location" in response["Access-Control-Expose-Headers"]
    # The quoted Accept a DICOMweb client sends reaches the view (which answers for itself).
    response = APIClient().get(
        "/api/studies/", HTTP_ORIGIN=VIEWER, HTTP_AUTHORIZATION=basic("doctor"), HTTP_ACCEPT=QUOTED_ACCEPT
    )
    assert response["Access-Control-Allow-Origin"] == VIEWER


@pytest.mark.parametrize("listed", [[], [VIEWER]], ids=["none listed", "another listed"])
def test_other_origins_get_no_cors_headers(settings, listed):
    settings.CORS_ALLOWED_ORIGINS = listed
    response = preflight("/api/studies/", "http://evil.test")
    assert "Access-Control-Allow-Origin" not in response
    assert "Access-Control-Allow-Headers" not in response


def test_cors_is_only_for_the_api_and_dicomweb(settings):
    settings.CORS_ALLOWED_ORIGINS = [VIEWER]
    for path in ("/studies/", "/admin/", "/accounts/login/"):
        assert "Access-Control-Allow-Origin" not in preflight(path, VIEWER), path
