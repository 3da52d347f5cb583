"""The web holds up: every view refuses strangers and users without a role, sign-ins are throttled,
the secret key is ours alone, sessions end, Administrators stay below superusers, and /health tells the truth.
"""

import datetime as dt
import json
import os
import re
import socket
import stat
import subprocess
import sys
import time
from re import _constants as sre
from re import _parser as sre_parse

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, path, resolve
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.test import APIRequestFactory, force_authenticate
from rest_framework.views import APIView

from imaging import health
from imaging.management.commands import runall
from imaging.settings import this_machine_hosts
from network.addresses import local_addresses
from records import api_permissions
from records.models import IndexingFailure
from records.roles import ADMINISTRATOR, DOCTOR, FRONT_DESK
from tests import procs

LOGIN = "/accounts/login/"
PASSWORD = "a-long-test-password"  # noqa: S105 - test users only


def make_user(username: str, *roles: str, **extra) -> User:
    user = User.objects.create_user(username, password=PASSWORD, **extra)
    user.groups.add(*Group.objects.filter(name__in=roles))
    return user


# --- Walking the whole URLconf ---------------------------------------------------------------------


def example_path(regex: str) -> str:
    """A string the regular expression matches: first alternative, shortest repetition, a plain character.

    Django's route patterns are regexes underneath (converters included), so one
    generator serves path() and re_path() alike, the admin's included.
    """

    def one_char(items) -> str:
        kind, value = items[0]
        if kind is sre.NEGATE:
            return "a"
        if kind is sre.LITERAL:
            return chr(value)
        if kind is sre.RANGE:
            return chr(value[0])
        if kind is sre.CATEGORY:
            return "1" if value is sre.CATEGORY_DIGIT else "a"
        raise ValueError(f"cannot make an example of {regex!r}")

    def build(parsed) -> str:
        out = []
        for kind, value in parsed:
            if kind is sre.LITERAL:
                out.append(chr(value))
            elif kind is sre.NOT_LITERAL:
                out.append("a" if value != ord("a") else "b")
            elif kind is sre.ANY:
                out.append("a")
            elif kind is sre.IN:
                out.append(one_char(value))
            elif kind is sre.SUBPATTERN:
                out.append(build(value[-1]))
            elif kind is sre.BRANCH:
                out.append(build(value[1][0]))
            elif kind in (sre.MAX_REPEAT, sre.MIN_REPEAT):
                low, _high, item = value
                out.append(build(item) * max(low, 1))
            elif kind is sre.AT:
                continue
            else:
                raise ValueError(f"cannot make an example of {regex!r} ({kind})")
        return "".join(out)

    return build(sre_parse.parse(regex))


def walk(resolver: URLResolver | None = None, prefix: str = "/", namespace: str = ""):
    """(url, name, view) for every view the URLconf reaches, with an example URL that resolves to it."""
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        part = example_path(entry.pattern.regex.pattern)
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from walk(entry, prefix + part, inner)
        elif isinstance(entry, URLPattern):
            yield prefix + part, f"{namespace}{entry.name or entry.lookup_str}", entry.callback


# The few views anyone may open, and why. Everything else must refuse anonymous users
# and signed-in users without a role.
PUBLIC = {
    "login": "signing in is how one gets a role's pages",
    "logout": "signing out needs nothing (POST only)",
    "set_language": "the language switch on the sign-in page",
    "health": "load balancers and monitors ask without signing in (imaging/health.py)",
    # Django's admin sends anyone it does not serve from its sign-out to its index, which refuses.
    "admin:logout": "signing out of the admin needs nothing",
}


def refused(response) -> bool:
    """A refusal: 401/403, or a redirect to our sign-in page or the admin's (which refuses in turn, test_roles)."""
    if response.status_code in (401, 403):
        return True
    location = response.get("Location", "")
    return response.status_code == 302 and location.startswith((LOGIN, "/admin/login/"))


def open_doors(client: Client) -> list[str]:
    """Every non-public view that answers ``client`` with anything but a refusal, for GET and POST."""
    doors = []
    for url, name, view in walk():
        assert resolve(url).func == view, f"{url} is no example of {name}"
        if name in PUBLIC:
            continue
        answers = {method: getattr(client, method)(url) for method in ("get", "post")}
        # A method the view does not take (405) serves nothing, but the other one must be refused.
        if not all(refused(r) or r.status_code == 405 for r in answers.values()) or not any(
            refused(r) for r in answers.values()
        ):
            doors.append(f"{name} {url}: " + ", ".join(f"{m} {r.status_code}" for m, r in answers.items()))
    return doors


@pytest.fixture
def stranger():
    return Client()


@pytest.fixture
def no_role_client(db):
    client = Client()
    client.force_login(make_user("newcomer"))
    return client


@pytest.mark.django_db
def test_the_walk_reaches_every_kind_of_view():
    names = {name for _url, name, _view in walk()}
    # The site's own pages, the admin's (its models, its catch-all) and the public ones.
    assert {"home", "records:study-list", "records:patient-list", "series-thumbnail"} <= names
    assert {"admin:index", "admin:auth_user_change", "admin:network_modalitynode_this_server"} <= names
    assert {"admin:axes_accessattempt_changelist", "admin:authtoken_tokenproxy_add"} <= names
    # The REST API: its root, lists, details, the send POST's list route, schema and docs.
    assert {"api:api-root", "api:study-list", "api:study-detail", "api:sendjob-list", "api:schema", "api:docs"} <= names
    assert set(PUBLIC) <= names, "the allow-list names a view that no longer exists"
    assert len(names) > 60


@pytest.mark.django_db
@pytest.mark.parametrize("persona", ["stranger", "no_role_client"])
def test_every_view_refuses_strangers_and_users_without_a_role(request, persona):
    assert open_doors(request.getfixturevalue(persona)) == []


class NamesNoRole(APIView):
    """What an API view looks like when its author forgets the permission."""

    def get(self, request):
        return Response({"secret": "patient data"})

    post = get


class ForDoctors(APIView):
    permission_classes = [api_permissions.DoctorsOnly]

    def get(self, request):
        return Response({"for": "doctors"})


class OpenToAll(APIView):
    permission_classes = [AllowAny]

    def get(self, request):
        return Response({"open": True})


# Used with pytest.mark.urls: the real URLconf plus API views.
urlpatterns = [
    *get_resolver("imaging.urls").url_patterns,
    path("api/test/no-role-named/", NamesNoRole.as_view(), name="api-no-role-named"),
    path("api/test/doctors/", ForDoctors.as_view(), name="api-doctors"),
]


@pytest.mark.django_db
@pytest.mark.urls("tests.test_web_security")
@pytest.mark.parametrize("persona", ["stranger", "no_role_client"])
def test_the_walk_covers_api_views_and_they_refuse_too(request, persona):
    assert {"api-no-role-named", "api-doctors"} <= {name for _url, name, _view in walk()}
    assert open_doors(request.getfixturevalue(persona)) == []


urlpatterns_with_open_door = [*urlpatterns, path("api/test/open/", OpenToAll.as_view(), name="api-open")]


@pytest.mark.django_db
def test_the_walk_finds_an_open_door(settings, stranger):
    # The walk's own check: a view open to all is reported, so an empty list above means something.
    settings.ROOT_URLCONF = type("urls", (), {"urlpatterns": urlpatterns_with_open_door})
    doors = open_doors(stranger)
    assert len(doors) == 1 and doors[0].startswith("api-open /api/test/open/: get 200")


@pytest.mark.django_db
def test_public_views_do_what_they_are_public_for(stranger):
    assert stranger.get(LOGIN).status_code == 200
    assert stranger.post("/accounts/logout/")["Location"] == LOGIN
    assert stranger.post("/i18n/setlang/", {"language": "zh-hans", "next": LOGIN})["Location"] == LOGIN
    assert stranger.get("/health").status_code in (200, 503)


# --- DRF: deny unless a view names its roles -----------------------------------------------------


def api_get(view, user=None):
    request = APIRequestFactory().get("/api/x/")
    if user is not None:
        force_authenticate(request, user=user)
    return view.as_view()(request)


def test_drf_denies_by_default():
    assert api_settings.DEFAULT_PERMISSION_CLASSES == [api_permissions.DenyAll]


@pytest.mark.django_db
def test_a_view_that_names_no_role_refuses_even_a_superuser():
    boss = User.objects.create_superuser("boss", password=PASSWORD)
    assert api_get(NamesNoRole, boss).status_code == 403
    # A stranger is asked to authenticate (401 with WWW-Authenticate: Basic), and refused all the same.
    stranger = api_get(NamesNoRole)
    assert stranger.status_code == 401 and stranger["WWW-Authenticate"].startswith("Basic ")


@pytest.mark.django_db
def test_a_role_permission_lets_in_its_roles_only():
    assert api_get(ForDoctors, make_user("doc", DOCTOR)).status_code == 200
    assert api_get(ForDoctors, User.objects.create_superuser("boss", password=PASSWORD)).status_code == 200
    assert api_get(ForDoctors, make_user("desk", FRONT_DESK)).status_code == 403
    assert api_get(ForDoctors, make_user("nobody")).status_code == 403
    assert api_get(ForDoctors, make_user("gone", DOCTOR, is_active=False)).status_code == 403
    assert api_get(ForDoctors).status_code == 401


@pytest.mark.django_db
def test_a_role_set_admits_each_of_its_roles():
    view = type("V", (ForDoctors,), {"permission_classes": [api_permissions.DoctorsAndFrontDesk]})
    assert api_get(view, make_user("doc", DOCTOR)).status_code == 200
    assert api_get(view, make_user("desk", FRONT_DESK)).status_code == 200
    assert api_get(view, make_user("admin", ADMINISTRATOR)).status_code == 403


def test_a_role_permission_needs_known_roles():
    with pytest.raises(ValueError):
        api_permissions.allow_roles("Doktor")
    with pytest.raises(ValueError):
        api_permissions.allow_roles()


# --- Failed sign-ins are throttled ---------------------------------------------------------------


def sign_in(client, username, password=PASSWORD, address="127.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=address)


def signed_in_as(client) -> str | None:
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id).username if user_id else None


@pytest.mark.django_db
def test_wrong_passwords_lock_out_that_user_name_from_that_address(client, settings):
    from axes.models import AccessAttempt

    assert settings.AXES_FAILURE_LIMIT == settings.LOGIN_FAILURE_LIMIT == 5
    make_user("doctor", DOCTOR)
    make_user("colleague", DOCTOR)
    for attempt in range(1, 5):
        response = sign_in(client, "doctor", "wrong")
        assert response.status_code == 200, attempt
        assert "did not match" in response.content.decode()
    locked = sign_in(client, "doctor", "wrong")
    assert locked.status_code == 429
    body = locked.content.decode()
    assert "Too many failed sign-ins" in body and "after 5 wrong passwords" in body and "15 minutes" in body

    # The right password now fails too, with the same clear page.
    response = sign_in(client, "doctor")
    assert response.status_code == 429 and "Too many failed sign-ins" in response.content.decode()
    assert signed_in_as(client) is None

    # Others are not affected: another user here, the same user at another workstation.
    assert sign_in(Client(), "colleague").status_code == 302
    elsewhere = Client()
    assert sign_in(elsewhere, "doctor", address="127.0.0.2").status_code == 302
    assert signed_in_as(elsewhere) == "doctor"

    # Once the cool-off has passed (the attempts made that long ago), the right password works.
    cool_off = dt.timedelta(minutes=settings.LOGIN_COOLOFF_MINUTES)
    AccessAttempt.objects.update(attempt_time=django_settings_now() - cool_off - dt.timedelta(seconds=1))
    response = sign_in(client, "doctor")
    assert response.status_code == 302 and signed_in_as(client) == "doctor"


def django_settings_now():
    from django.utils import timezone

    return timezone.now()


@pytest.mark.django_db
def test_a_lockout_lasts_the_whole_cool_off(client, settings):
    from axes.models import AccessAttempt

    make_user("doctor", DOCTOR)
    for _ in range(5):
        sign_in(client, "doctor", "wrong")
    cool_off = dt.timedelta(minutes=settings.LOGIN_COOLOFF_MINUTES)
    AccessAttempt.objects.update(attempt_time=django_settings_now() - cool_off + dt.timedelta(minutes=1))
    assert sign_in(client, "doctor").status_code == 429


@pytest.mark.django_db
def test_a_successful_sign_in_forgets_earlier_mistakes(client):
    make_user("doctor", DOCTOR)
    for _ in range(4):
        sign_in(client, "doctor", "wrong")
    assert sign_in(client, "doctor").status_code == 302
    client.logout()
    for _ in range(4):
        assert sign_in(client, "doctor", "wrong").status_code == 200
    assert sign_in(client, "doctor").status_code == 302


@pytest.mark.django_db
def test_an_administrator_unlocks_a_locked_out_user(client):
    from axes.models import AccessAttempt

    make_user("doctor", DOCTOR)
    for _ in range(5):
        sign_in(client, "doctor", "wrong")
    assert sign_in(client, "doctor").status_code == 429
    admin = Client()
    admin.force_login(make_user("administrator", ADMINISTRATOR))
    listing = admin.get("/admin/axes/accessattempt/")
    assert listing.status_code == 200 and "doctor" in listing.content.decode()
    attempt = AccessAttempt.objects.get(username="doctor")
    response = admin.post(
        "/admin/axes/accessattempt/", {"action": "delete_selected", "_selected_action": [attempt.pk], "post": "yes"}
    )
    assert response.status_code == 302
    assert sign_in(client, "doctor").status_code == 302


@pytest.mark.django_db
def test_the_lockout_page_speaks_simplified_chinese(client):
    make_user("doctor", DOCTOR)
    for _ in range(5):
        sign_in(client, "doctor", "wrong")
    response = client.post(LOGIN, {"username": "doctor", "password": PASSWORD}, headers={"accept-language": "zh-hans"})
    assert response.status_code == 429
    assert "登录失败次数过多" in response.content.decode()


# --- Settings read in a fresh process -------------------------------------------------------------


def fresh_env(tmp_path, **extra) -> dict[str, str]:
    """The environment of a process started by hand: none of this test run's settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SECRET_KEY", "DJANGO_"))}
    env.update(VAR_DIR=str(tmp_path / "var"), PYTHONUNBUFFERED="1", **extra)
    return env


def manage(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=procs.ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def settings_of(env, *names):
    code = (
        f"from django.conf import settings; import json; print(json.dumps([getattr(settings, n) for n in {names!r}]))"
    )
    done = manage(env, "shell", "-c", code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


PRINT_KEY = "from django.conf import settings; print(settings.SECRET_KEY)"


def test_a_generated_secret_key_survives_a_restart(tmp_path):
    env = fresh_env(tmp_path)
    # Three processes starting at once (web, SCP, worker) agree on one key...
    starting = [
        subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "shell",
                "-c",
                "from django.conf import settings; print(settings.SECRET_KEY)",
            ],
            cwd=procs.ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    keys = {proc.communicate(timeout=120)[0].strip().splitlines()[-1] for proc in starting}
    assert len(keys) == 1
    (key,) = keys
    # ...kept private in VAR_DIR, and the next start reads the same one.
    key_file = tmp_path / "var" / "secret-key"
    assert key_file.read_text().strip() == key and len(key) >= 50
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert settings_of(env, "SECRET_KEY") == [key]
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["secret-key"]  # no temporary files left


def test_a_secret_key_from_the_environment_wins(tmp_path):
    given = "k" * 25 + "e" * 25 + "y"
    (tmp_path / "key").write_text("from-a-file-" + "f" * 50 + "\n")
    assert settings_of(fresh_env(tmp_path, SECRET_KEY=given), "SECRET_KEY") == [given]
    assert settings_of(fresh_env(tmp_path, SECRET_KEY_FILE=str(tmp_path / "key")), "SECRET_KEY") == [
        "from-a-file-" + "f" * 50
    ]
    assert not (tmp_path / "var" / "secret-key").exists()


def test_no_key_is_in_the_repository():
    source = (procs.ROOT / "imaging" / "settings.py").read_text()
    assert "insecure" not in source
    assert "build-only" not in (procs.ROOT / "docker" / "Dockerfile").read_text()


def test_sessions_last_a_working_day_and_can_end_with_the_browser(tmp_path):
    names = ("SESSION_COOKIE_AGE", "SESSION_EXPIRE_AT_BROWSER_CLOSE")
    assert settings_of(fresh_env(tmp_path, SECRET_KEY="s" * 50), *names) == [10 * 3600, False]
    env = fresh_env(tmp_path, SECRET_KEY="s" * 50, SESSION_HOURS="8", SESSION_EXPIRE_AT_BROWSER_CLOSE="1")
    assert settings_of(env, *names) == [8 * 3600, True]


@pytest.mark.django_db
def test_the_session_cookie_carries_the_working_day(client, settings):
    make_user("doctor", DOCTOR)
    assert sign_in(client, "doctor").cookies["sessionid"]["max-age"] == 10 * 3600
    settings.SESSION_EXPIRE_AT_BROWSER_CLOSE = True
    cookie = sign_in(Client(), "doctor").cookies["sessionid"]
    assert cookie["max-age"] == "" and cookie["expires"] == ""


def test_https_makes_cookies_secure_and_trusts_the_proxy_header(tmp_path):
    names = ("SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT", "SECURE_PROXY_SSL_HEADER")
    names += ("SECURE_HSTS_SECONDS",)
    env = fresh_env(tmp_path, SECRET_KEY="s" * 50)
    assert settings_of(env, *names) == [False, False, False, None, 0]
    assert settings_of({**env, "HTTPS": "1"}, *names) == [
        True,
        True,
        True,
        ["HTTP_X_FORWARDED_PROTO", "https"],
        31536000,
    ]


@pytest.mark.django_db
def test_behind_an_https_proxy_cookies_are_secure_and_hsts_is_sent(client, settings):
    # What HTTPS=1 sets (the test above proves it does).
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 31536000
    make_user("doctor", DOCTOR)
    # Plain HTTP (the proxy says so, or says nothing) goes to HTTPS.
    assert client.get(LOGIN, headers={"x-forwarded-proto": "http"})["Location"] == f"https://testserver{LOGIN}"
    page = client.get(LOGIN, headers={"x-forwarded-proto": "https"})
    assert page.status_code == 200
    assert page["Strict-Transport-Security"] == "max-age=31536000"
    assert page.cookies["csrftoken"]["secure"] is True
    signed_in = client.post(LOGIN, {"username": "doctor", "password": PASSWORD}, headers={"x-forwarded-proto": "https"})
    assert signed_in.status_code == 302 and signed_in.cookies["sessionid"]["secure"] is True


@pytest.mark.django_db
def test_behind_https_the_health_check_still_answers_over_plain_http(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get(LOGIN).status_code == 301
    assert client.get("/health").status_code in (200, 503)


# --- check --deploy for the docker configuration --------------------------------------------------


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR:-default}, innermost first."""
    pattern = re.compile(r"\$\{(\w+):-([^${}]*)\}")
    while (match := pattern.search(value)) is not None:
        value = value[: match.start()] + (env.get(match[1]) or match[2]) + value[match.end() :]
    return value


def compose_environment(dotenv: dict[str, str]) -> dict[str, str]:
    """What docker/compose.yml's app services get: env_file (.env) under their environment: block."""
    lines = (procs.ROOT / "docker" / "compose.yml").read_text().splitlines()
    start = lines.index("x-app: &app")
    block = next(i for i in range(start, len(lines)) if lines[i].startswith("  environment:"))
    env = dict(dotenv)
    for line in lines[block + 1 :]:
        if not line.startswith("    "):
            break
        if line.strip().startswith("#"):
            continue
        key, _, value = line.strip().partition(": ")
        env[key] = interpolate(value.strip().strip('"'), dotenv)
    assert {"SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS", "VAR_DIR"} <= set(env)
    return env


def env_example() -> dict[str, str]:
    values = {}
    for line in (procs.ROOT / "docker" / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@pytest.mark.parametrize(
    "dotenv",
    [{}, env_example(), {**env_example(), "HTTPS": "1"}],
    ids=["compose defaults", "env example as .env", "env example with HTTPS=1"],
)
def test_check_deploy_is_clean_for_the_docker_configuration(tmp_path, dotenv):
    # As the entrypoint demands and the example says: a long random key.
    dotenv = {**dotenv, "SECRET_KEY": os.urandom(32).hex() + "Zz"}
    env = compose_environment(dotenv)
    # The image's paths do not exist here.
    env.update(VAR_DIR=str(tmp_path / "var"), STORAGE_DIR=str(tmp_path / "storage"))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env}
    done = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout
    assert "postgres" in env["DATABASE_URL"]


def test_check_deploy_still_speaks_up(tmp_path):
    # The silenced HTTPS checks are only those four: DEBUG on is still reported.
    env = {**compose_environment({"SECRET_KEY": "s" * 60}), "DEBUG": "1"}
    env.update(VAR_DIR=str(tmp_path / "var"), PATH=os.environ["PATH"])
    done = manage(env, "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode != 0 and "security.W018" in done.stderr + done.stdout


# --- Administrators stay below superusers ----------------------------------------------------------


@pytest.fixture
def administrator(db):
    return make_user("administrator", ADMINISTRATOR)


@pytest.fixture
def admin_of_users(client, administrator):
    client.force_login(administrator)
    return client


def user_form(user: User, **changes) -> dict:
    data = {
        "username": user.username,
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "is_active": "on",
        "groups": [g.pk for g in user.groups.all()],
        "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
        "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        "last_login_0": "",
        "last_login_1": "",
        "_save": "Save",
    }
    data.update(changes)
    return data


def change_url(user: User) -> str:
    return f"/admin/auth/user/{user.pk}/change/"


@pytest.mark.parametrize("target", ["another user", "themselves"])
def test_an_administrator_cannot_make_anyone_superuser(admin_of_users, administrator, target):
    user = make_user("doctor", DOCTOR) if target == "another user" else administrator
    permission = Permission.objects.get(codename="delete_associationlog")
    data = user_form(user, first_name="Changed", is_superuser="on", user_permissions=[permission.pk])
    response = admin_of_users.post(change_url(user), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    user.refresh_from_db()
    # The form was saved (the name changed) but superuser status and permissions were not taken.
    assert user.first_name == "Changed"
    assert not user.is_superuser
    assert not user.user_permissions.exists()


def test_a_superuser_can_make_someone_superuser(client, db):
    client.force_login(User.objects.create_superuser("boss", password=PASSWORD))
    user = make_user("doctor", DOCTOR)
    assert client.post(change_url(user), user_form(user, is_superuser="on")).status_code == 302
    user.refresh_from_db()
    assert user.is_superuser


def test_an_administrator_cannot_edit_or_delete_a_superuser(admin_of_users):
    boss = User.objects.create_superuser("boss", password=PASSWORD)
    page = admin_of_users.get(change_url(boss))
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()  # view only
    assert admin_of_users.post(change_url(boss), user_form(boss, first_name="Pwned", is_active="")).status_code == 403
    assert admin_of_users.post(f"/admin/auth/user/{boss.pk}/delete/", {"post": "yes"}).status_code == 403
    password = {"password1": "new-pass-9876-x", "password2": "new-pass-9876-x"}
    assert admin_of_users.post(f"/admin/auth/user/{boss.pk}/password/", password).status_code == 403
    bulk = {"action": "delete_selected", "_selected_action": [boss.pk], "post": "yes"}
    admin_of_users.post("/admin/auth/user/", bulk)
    boss.refresh_from_db()
    assert boss.first_name == "" and boss.is_active and boss.check_password(PASSWORD)


def test_an_administrator_still_manages_ordinary_accounts(admin_of_users):
    user = make_user("doctor", DOCTOR)
    front_desk = Group.objects.get(name=FRONT_DESK)
    response = admin_of_users.post(change_url(user), user_form(user, groups=[front_desk.pk]))
    assert response.status_code == 302
    assert list(user.groups.values_list("name", flat=True)) == [FRONT_DESK]
    assert admin_of_users.post(f"/admin/auth/user/{user.pk}/delete/", {"post": "yes"}).status_code == 302
    assert not User.objects.filter(pk=user.pk).exists()


def test_an_administrator_cannot_give_a_group_more_permissions(admin_of_users):
    group = Group.objects.get(name=ADMINISTRATOR)
    before = set(group.permissions.values_list("pk", flat=True))
    extra = Permission.objects.get(codename="delete_associationlog")
    data = {"name": ADMINISTRATOR, "permissions": [*before, extra.pk], "_save": "Save"}
    response = admin_of_users.post(f"/admin/auth/group/{group.pk}/change/", data)
    assert response.status_code == 302
    assert set(group.permissions.values_list("pk", flat=True)) == before


# --- /health ----------------------------------------------------------------------------------------


def get_health(client):
    started = time.monotonic()
    response = client.get("/health")
    return response, response.json(), time.monotonic() - started


@pytest.fixture
def healthy(settings, redis_url, tmp_path):
    settings.CELERY_BROKER_URL = redis_url
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.STORAGE_DIR.mkdir()
    settings.STORAGE_MIN_FREE_MB = 1
    settings.HEALTH_CHECK_TIMEOUT = 2
    return settings


@pytest.mark.django_db(transaction=True)
def test_health_is_ok_when_everything_is(client, healthy):
    response, body, _ = get_health(client)
    assert response.status_code == 200, body
    assert body["status"] == "ok" and body["failing"] == [] and body["reason"] == ""
    assert set(body["checks"]) == {"database", "broker", "storage", "free_space", "indexing_failures"}
    assert all(check["ok"] for check in body["checks"].values())
    assert body["checks"]["indexing_failures"]["count"] == 0
    assert body["checks"]["free_space"]["min_free_mb"] == 1 and body["checks"]["free_space"]["free_mb"] > 1
    assert response["Cache-Control"] == "no-store"
    # The probe file is gone again.
    assert list(healthy.STORAGE_DIR.iterdir()) == []


@pytest.mark.django_db(transaction=True)
def test_health_fails_when_redis_is_down(client, healthy):
    healthy.CELERY_BROKER_URL = f"redis://127.0.0.1:{procs.free_port()}/0"
    response, body, _ = get_health(client)
    assert response.status_code == 503
    assert body["status"] == "fail" and body["failing"] == ["broker"]
    assert body["reason"].startswith("broker: ConnectionError")


@pytest.mark.django_db(transaction=True)
def test_health_does_not_hang_on_a_broker_that_never_answers(client, healthy):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        healthy.CELERY_BROKER_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        healthy.HEALTH_CHECK_TIMEOUT = 1
        response, body, took = get_health(client)
    assert response.status_code == 503 and body["failing"] == ["broker"]
    assert took < 2.5


def test_health_does_not_wait_for_a_check_that_hangs():
    import threading

    release = threading.Event()
    started = time.monotonic()
    results = health.run_checks({"fast": lambda: health.Result(True), "stuck": lambda: release.wait(30)}, timeout=0.5)
    release.set()
    assert time.monotonic() - started < 2
    assert results["fast"].ok and not results["stuck"].ok
    assert results["stuck"].error == "no answer within 0.5 s"


@pytest.mark.django_db(transaction=True)
def test_health_makes_a_missing_storage_dir_as_the_first_store_would(client, healthy):
    healthy.STORAGE_DIR = healthy.STORAGE_DIR / "fresh"
    response, body, _ = get_health(client)
    assert response.status_code == 200, body
    assert healthy.STORAGE_DIR.is_dir() and list(healthy.STORAGE_DIR.iterdir()) == []


@pytest.mark.django_db(transaction=True)
def test_health_fails_when_storage_cannot_take_a_file(client, healthy):
    # Tests run as root, whom file modes do not stop: a regular file where the directory should be does.
    (healthy.STORAGE_DIR / "a-file").write_text("")
    healthy.STORAGE_DIR = healthy.STORAGE_DIR / "a-file" / "storage"
    response, body, _ = get_health(client)
    assert response.status_code == 503
    assert body["failing"] == ["storage"]
    assert body["checks"]["storage"]["error"] == "NotADirectoryError (details in the web server's log)"
    # Nothing public names where the archive lives.
    assert str(healthy.STORAGE_DIR.parent) not in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_health_fails_below_the_free_space_watermark(client, healthy):
    healthy.STORAGE_MIN_FREE_MB = 1024**3  # a petabyte
    response, body, _ = get_health(client)
    assert response.status_code == 503 and body["failing"] == ["free_space"]
    assert "below STORAGE_MIN_FREE_MB=1073741824" in body["reason"]
    assert str(healthy.STORAGE_DIR) not in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_health_counts_indexing_failures_and_fails_above_the_limit(client, healthy):
    IndexingFailure.objects.create(file_path="instances/ab/cd/x.dcm", reason="unknown character set 'hex'")
    response, body, _ = get_health(client)
    assert response.status_code == 200 and body["checks"]["indexing_failures"]["count"] == 1
    healthy.HEALTH_MAX_INDEXING_FAILURES = 0
    response, body, _ = get_health(client)
    assert response.status_code == 503 and body["failing"] == ["indexing_failures"]
    assert body["checks"]["indexing_failures"] == {
        "ok": False,
        "count": 1,
        "max": 0,
        "error": "1 stored files could not be indexed (see Indexing failures in the admin)",
    }


def test_health_fails_when_the_database_is_unreachable(tmp_path):
    # A real failure in a process of its own: PostgreSQL and Redis at closed ports.
    closed = procs.free_port()
    env = fresh_env(
        tmp_path,
        SECRET_KEY="s" * 50,
        ALLOWED_HOSTS="testserver",
        DATABASE_URL=f"postgres://someone:hunter2secret@127.0.0.1:{closed}/imaging",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{closed}/0",
        STORAGE_DIR=str(tmp_path),
        STORAGE_MIN_FREE_MB="1",
    )
    code = "from django.test import Client; r = Client().get('/health'); print(r.status_code, r.content.decode())"
    done = manage(env, "shell", "-c", code)
    assert done.returncode == 0, done.stderr
    status, _, text = done.stdout.strip().splitlines()[-1].partition(" ")
    body = json.loads(text)
    assert status == "503"
    assert body["failing"] == ["database", "broker", "indexing_failures"]
    assert body["checks"]["database"]["error"].startswith("OperationalError")
    assert "hunter2secret" not in text and "someone" not in text
    assert "health check database failed" in done.stderr


# --- make run: the web on all interfaces ----------------------------------------------------------


def test_runall_serves_the_web_on_all_interfaces_by_default():
    options = runall.Command().create_parser("manage.py", "runall").parse_args([])
    assert options.web_host == "0.0.0.0"
    assert runall.web_bind(options.web_host, 8000) == "0.0.0.0:8000"
    assert runall.web_bind("::", 8000) == "[::]:8000"


def test_runall_names_the_addresses_to_open_from_another_machine():
    assert runall.web_urls("0.0.0.0", 8000, ["10.1.2.3", "fd00::5"], "pacs") == (
        "http://127.0.0.1:8000/",
        ["http://10.1.2.3:8000/", "http://[fd00::5]:8000/", "http://pacs:8000/"],
    )
    assert runall.web_urls("127.0.0.1", 8000, ["10.1.2.3"], "pacs") == ("http://127.0.0.1:8000/", [])
    assert runall.web_urls("10.1.2.3", 8080, ["10.1.2.3"], "pacs") == (
        "http://10.1.2.3:8080/",
        ["http://10.1.2.3:8080/"],
    )


def test_runall_banner_leaves_out_addresses_allowed_hosts_refuses(settings):
    settings.ALLOWED_HOSTS = ["localhost", "127.0.0.1", "pacs"]
    banner = runall.Command()._banner("0.0.0.0", 8000, "", None, addresses=["10.1.2.3"], hostname="pacs")
    assert "From another machine: http://pacs:8000/\n" in banner and "10.1.2.3" not in banner
    settings.ALLOWED_HOSTS = ["localhost"]
    banner = runall.Command()._banner("0.0.0.0", 8000, "", None, addresses=["10.1.2.3"], hostname="pacs")
    assert "From another machine" not in banner and "ALLOWED_HOSTS lists none" in banner


def test_runall_banner_prints_the_address_for_other_machines(settings):
    settings.ALLOWED_HOSTS = ["10.1.2.3", "pacs"]
    banner = runall.Command()._banner("0.0.0.0", 8000, "admin", "pw", addresses=["10.1.2.3"], hostname="pacs")
    assert "Web:        http://127.0.0.1:8000/" in banner
    assert "From another machine: http://10.1.2.3:8000/  or  http://pacs:8000/" in banner
    local_only = runall.Command()._banner("127.0.0.1", 8000, "", None, addresses=["10.1.2.3"], hostname="pacs")
    assert "10.1.2.3" not in local_only.split("DICOM")[0] and "--web-host 0.0.0.0" in local_only


def test_allowed_hosts_are_this_machines_names_and_addresses():
    hosts = this_machine_hosts()
    assert {"localhost", "127.0.0.1", "[::1]", socket.gethostname().lower()} <= set(hosts)
    for address in local_addresses():
        assert (f"[{address.address}]" if address.version == 6 else address.address) in hosts
    # The test run sets no ALLOWED_HOSTS, so these are what the settings hold (the test
    # environment adds Django's test client's "testserver").
    assert "ALLOWED_HOSTS" not in os.environ
    assert [host for host in django_settings.ALLOWED_HOSTS if host != "testserver"] == hosts


@pytest.mark.django_db
def test_a_browser_on_another_machine_is_not_refused(client):
    # The Host header a browser elsewhere sends (no packet leaves this machine: the client is in-process).
    for host in [a.address for a in local_addresses() if a.version == 4] + [socket.gethostname()]:
        assert client.get(LOGIN, HTTP_HOST=f"{host}:8000").status_code == 200, host
    assert client.get(LOGIN, HTTP_HOST="evil.example").status_code == 400
