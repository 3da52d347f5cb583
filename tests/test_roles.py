"""Roles: each page and endpoint lets in its role, sends strangers to the login page and turns others away."""

import datetime as dt
import io

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.urls import reverse
from PIL import Image

from imaging import storage
from records.models import Patient, Series, Study
from records.roles import ADMINISTRATOR, DOCTOR, FRONT_DESK, user_roles

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"
NO_ROLE_TEXT = "Your account has no role yet"
PASSWORD = "a-long-test-password"  # noqa: S105 - test users only


def make_user(username: str, *roles: str, **extra) -> User:
    user = User.objects.create_user(username, password=PASSWORD, **extra)
    user.groups.add(*Group.objects.filter(name__in=roles))
    return user


@pytest.fixture
def doctor():
    return make_user("doctor", DOCTOR)


@pytest.fixture
def front_desk():
    return make_user("frontdesk", FRONT_DESK)


@pytest.fixture
def administrator():
    # Deliberately not is_staff: the group alone opens the admin.
    return make_user("administrator", ADMINISTRATOR)


@pytest.fixture
def no_role():
    return make_user("newcomer")


@pytest.fixture
def anonymous():
    return None


PERSONAS = ("doctor", "front_desk", "administrator", "no_role", "anonymous")


@pytest.fixture
def browse(client, request):
    """A client signed in as the named persona (or not signed in for "anonymous")."""

    def sign_in(persona: str):
        user = request.getfixturevalue(persona)
        if user is not None:
            client.force_login(user)
        return client

    return sign_in


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def make_study(n: int, *, patient=None, modalities=("CT",), thumbnails=True, **fields) -> Study:
    patient = patient or Patient.objects.create(patient_id=f"P{n:04d}", name_alphabetic=f"Doe^Pat{n}")
    study = Study.objects.create(
        patient=patient,
        study_instance_uid=f"1.2.3.{n}",
        accession_number=fields.pop("accession_number", f"ACC{n:04d}"),
        study_date=fields.pop("study_date", dt.date(2024, 1, 1) + dt.timedelta(days=n)),
        study_time=dt.time(9, 30),
        modalities_in_study="\\".join(sorted(modalities)),
        number_of_series=len(modalities),
        number_of_instances=10 * len(modalities),
        **fields,
    )
    for number, modality in enumerate(modalities, start=1):
        uid = f"1.2.3.{n}.{number}"
        thumbnail = ""
        if thumbnails:
            thumbnail = storage.thumbnail_relpath(uid)
            storage.absolute(thumbnail).parent.mkdir(parents=True, exist_ok=True)
            storage.absolute(thumbnail).write_bytes(png_bytes())
        Series.objects.create(
            study=study, series_instance_uid=uid, modality=modality, series_number=number, thumbnail=thumbnail
        )
    return study


@pytest.fixture
def study():
    return make_study(1)


# --- The groups the data migration made ---------------------------------------------------------


def codenames(group_name: str) -> set[str]:
    group = Group.objects.get(name=group_name)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


def test_the_migration_creates_the_three_roles():
    assert set(Group.objects.values_list("name", flat=True)) >= {DOCTOR, FRONT_DESK, ADMINISTRATOR}


def test_an_administrator_manages_users_and_nodes_and_only_reads_records_and_logs():
    expected = {f"auth.{a}_{m}" for a in ("view", "add", "change", "delete") for m in ("user", "group")}
    expected |= {"auth.view_permission"}
    expected |= {f"records.view_{m}" for m in ("patient", "study", "series", "instance")}
    # What the indexer could not index, and the UID conflicts it met: read only.
    expected |= {"records.view_indexingfailure", "records.view_instanceconflict"}
    # Who opened which patient's study: read only.
    expected |= {"records.view_accessrecord"}
    expected |= {f"network.{a}_modalitynode" for a in ("view", "add", "change", "delete")}
    expected |= {"network.view_associationlog", "network.view_sendjob", "network.add_sendjob"}
    # Unlocking sign-ins (django-axes' lockouts) and reading its sign-in log.
    expected |= {"axes.view_accessattempt", "axes.delete_accessattempt", "axes.view_accesslog"}
    # Issuing and revoking API tokens for programs (rest_framework.authtoken's admin).
    expected |= {"authtoken.view_tokenproxy", "authtoken.add_tokenproxy", "authtoken.delete_tokenproxy"}
    assert codenames(ADMINISTRATOR) == expected


def test_doctors_and_front_desk_have_no_model_permissions():
    # Their pages check the group; model permissions only matter in the admin, which is closed to them.
    assert codenames(DOCTOR) == set()
    assert codenames(FRONT_DESK) == set()


def test_an_administrator_has_the_permissions_of_the_group(administrator):
    assert administrator.has_perm("network.add_modalitynode")
    assert administrator.has_perm("network.view_associationlog")
    assert not administrator.has_perm("network.delete_associationlog")
    assert not administrator.has_perm("records.change_patient")
    assert Permission.objects.filter(content_type__app_label="network").count() >= 8


def test_a_superuser_counts_as_every_role():
    boss = User.objects.create_superuser("boss", password=PASSWORD)
    assert user_roles(boss) == {DOCTOR, FRONT_DESK, ADMINISTRATOR}


def test_an_inactive_user_has_no_role(doctor):
    doctor.is_active = False
    assert user_roles(doctor) == set()


# --- Who gets what, page by page ---------------------------------------------------------------

FORBIDDEN = 403
TO_LOGIN = "login"
NO_ROLE = "no role"

# page -> persona -> expected answer
MATRIX = {
    "/": {
        "doctor": "/studies/",
        "front_desk": "/patients/",
        "administrator": "/admin/",
        "no_role": NO_ROLE,
        "anonymous": TO_LOGIN,
    },
    "/studies/": {
        "doctor": 200,
        "front_desk": FORBIDDEN,
        "administrator": FORBIDDEN,
        "no_role": NO_ROLE,
        "anonymous": TO_LOGIN,
    },
    "/patients/": {
        "doctor": FORBIDDEN,
        "front_desk": 200,
        "administrator": 200,  # the front desk's pages are for Administrators too (issue 11)
        "no_role": NO_ROLE,
        "anonymous": TO_LOGIN,
    },
    "thumbnail": {
        "doctor": 200,
        "front_desk": FORBIDDEN,
        "administrator": 200,
        "no_role": NO_ROLE,
        "anonymous": TO_LOGIN,
    },
    "/admin/": {
        "doctor": FORBIDDEN,
        "front_desk": FORBIDDEN,
        "administrator": 200,
        "no_role": NO_ROLE,
        "anonymous": TO_LOGIN,
    },
    "/admin/network/modalitynode/": {
        "doctor": FORBIDDEN,
        "front_desk": FORBIDDEN,
        "administrator": 200,
        "no_role": NO_ROLE,
        "anonymous": TO_LOGIN,
    },
}

CASES = [(page, persona, expected) for page, answers in MATRIX.items() for persona, expected in answers.items()]


@pytest.mark.parametrize(
    "page,persona,expected", CASES, ids=[f"{persona} at {page} gets {expected}" for page, persona, expected in CASES]
)
def test_each_persona_gets_what_its_role_allows(browse, study, page, persona, expected):
    url = reverse("series-thumbnail", args=[study.series.first().pk]) if page == "thumbnail" else page
    response = browse(persona).get(url, follow=True)
    final_url = response.redirect_chain[-1][0] if response.redirect_chain else url
    body = response.content.decode() if not response.streaming else ""
    if expected == TO_LOGIN:
        assert response.status_code == 200
        assert final_url.startswith(LOGIN)
        assert 'name="password"' in body
    elif expected == NO_ROLE:
        assert response.status_code == 403
        assert NO_ROLE_TEXT in body
    elif expected == FORBIDDEN:
        assert response.status_code == 403
        assert "This page is not for your role" in body
        assert NO_ROLE_TEXT not in body
    elif isinstance(expected, str):
        assert response.redirect_chain[0] == (expected, 302)
        assert response.status_code == 200
    else:
        assert response.status_code == expected
        assert not final_url.startswith(LOGIN)


def test_a_doctor_cannot_open_the_admin(client, doctor):
    client.force_login(doctor)
    response = client.get("/admin/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    response = client.get(response["Location"])
    assert response.status_code == 403
    assert "Site administration" not in response.content.decode()


def test_a_doctor_with_staff_status_still_cannot_open_the_admin(client):
    client.force_login(make_user("staffdoctor", DOCTOR, is_staff=True))
    response = client.get("/admin/network/modalitynode/", follow=True)
    assert response.status_code == 403


def test_a_front_desk_user_cannot_open_the_admin(client, front_desk):
    client.force_login(front_desk)
    response = client.get("/admin/", follow=True)
    assert response.status_code == 403


def test_an_administrator_without_staff_status_signs_in_and_opens_the_admin(client, administrator):
    assert not administrator.is_staff
    response = client.post(LOGIN, {"username": "administrator", "password": PASSWORD, "next": "/admin/"}, follow=True)
    assert response.redirect_chain[-1][0] == "/admin/"
    assert response.status_code == 200
    assert "Site administration" in response.content.decode()
    nodes = client.get("/admin/network/modalitynode/add/")
    assert nodes.status_code == 200


def test_the_admin_login_page_sends_strangers_to_our_login_page(client):
    response = client.get("/admin/login/?next=/admin/network/")
    assert response.status_code == 302
    assert response["Location"] == f"{LOGIN}?next=/admin/network/"


def test_the_admin_login_page_does_not_redirect_elsewhere(client, administrator):
    client.force_login(administrator)
    response = client.get("/admin/login/?next=https://evil.example/")
    assert response["Location"] == "/admin/"


def test_signing_in_leads_a_doctor_to_the_study_list(client, doctor):
    response = client.post(LOGIN, {"username": "doctor", "password": PASSWORD}, follow=True)
    assert [url for url, _ in response.redirect_chain] == ["/", "/studies/"]


def test_signing_out_returns_to_the_login_page(client, doctor):
    client.force_login(doctor)
    response = client.post("/accounts/logout/")
    assert response["Location"] == LOGIN
    assert client.get("/studies/")["Location"].startswith(LOGIN)


def test_a_doctor_who_is_also_front_desk_starts_at_the_studies_and_sees_both_links(client):
    client.force_login(make_user("both", FRONT_DESK, DOCTOR))
    response = client.get("/", follow=True)
    assert response.redirect_chain[0] == ("/studies/", 302)
    body = response.content.decode()
    assert 'href="/studies/"' in body and 'href="/patients/"' in body
    assert 'href="/admin/"' not in body


def test_a_front_desk_user_who_is_also_administrator_starts_at_the_patients(client):
    client.force_login(make_user("both", ADMINISTRATOR, FRONT_DESK))
    response = client.get("/")
    assert response["Location"] == "/patients/"


def test_a_user_without_a_role_is_told_to_ask_an_administrator(client, no_role):
    client.force_login(no_role)
    response = client.get("/")
    assert response.status_code == 403
    body = response.content.decode()
    assert NO_ROLE_TEXT in body and "ask an administrator" in body and "newcomer" in body


# --- The doctors' study list -----------------------------------------------------------------------


def search_studies(client, **params) -> list[str]:
    response = client.get("/studies/", params)
    assert response.status_code == 200
    return [study.accession_number for study in response.context["page"]]


@pytest.fixture
def doctor_client(client, doctor):
    client.force_login(doctor)
    return client


def test_the_study_list_shows_each_series_thumbnail_with_the_study(doctor_client):
    study = make_study(1, modalities=("CT", "SR"), description="Chest")
    bare = Series.objects.create(study=study, series_instance_uid="1.2.3.1.9", modality="KO")
    body = doctor_client.get("/studies/").content.decode()
    for series in study.series.exclude(pk=bare.pk):
        assert f'src="{reverse("series-thumbnail", args=[series.pk])}"' in body
    assert reverse("series-thumbnail", args=[bare.pk]) not in body
    assert "Chest" in body and "CT\\SR" in body and "P0001" in body and "DOE Pat1" in body


def test_the_study_list_takes_the_same_number_of_queries_for_one_study_or_fifty(
    doctor_client, django_assert_max_num_queries
):
    make_study(0)
    with django_assert_max_num_queries(6):
        assert len(search_studies(doctor_client)) == 1
    for n in range(1, 60):
        make_study(n, modalities=("CT", "PT", "SR"))
    with django_assert_max_num_queries(6):
        assert len(search_studies(doctor_client)) == 50


def test_the_study_list_shows_fifty_studies_a_page_newest_first(doctor_client):
    for n in range(55):
        make_study(n)
    first = search_studies(doctor_client)
    assert first[0] == "ACC0054" and len(first) == 50
    assert search_studies(doctor_client, page=2) == [f"ACC{n:04d}" for n in range(4, -1, -1)]


def test_the_pages_keep_the_search(doctor_client):
    for n in range(55):
        make_study(n)
    body = doctor_client.get("/studies/", {"modality": "CT"}).content.decode()
    assert "?modality=CT&amp;page=2" in body


def test_doctors_find_studies_by_any_group_of_the_patient_name(doctor_client):
    zhang = Patient.objects.create(
        patient_id="CN1", name_alphabetic="Zhang^Wei", name_ideographic="张^伟", name_phonetic="ちょう^い"
    )
    make_study(1, patient=zhang)
    make_study(2)
    for text in ("zhang", "ZHANG WEI", "Zhang^Wei", "张伟", "伟", "ちょう"):
        assert search_studies(doctor_client, name=text) == ["ACC0001"], text
    assert search_studies(doctor_client, name="wei zhang") == ["ACC0001"]
    assert search_studies(doctor_client, name="zhang smith") == []


def test_doctors_find_studies_by_patient_id_and_accession_number(doctor_client):
    make_study(1)
    make_study(2)
    assert search_studies(doctor_client, patient_id="p0002") == ["ACC0002"]
    assert search_studies(doctor_client, accession_number="acc0001") == ["ACC0001"]


def test_a_modality_search_matches_whole_modalities_only(doctor_client):
    make_study(1, modalities=("CT", "SR"))
    make_study(2, modalities=("PT",))
    make_study(3, modalities=("MR", "RTSTRUCT"))
    assert search_studies(doctor_client, modality="ct") == ["ACC0001"]
    assert search_studies(doctor_client, modality="SR") == ["ACC0001"]
    assert search_studies(doctor_client, modality="RT") == []
    assert search_studies(doctor_client, modality="RTSTRUCT") == ["ACC0003"]


def test_doctors_find_studies_in_a_date_range(doctor_client):
    for n in range(1, 6):
        make_study(n, study_date=dt.date(2024, 3, n))
    assert search_studies(doctor_client, date_from="2024-03-02", date_to="2024-03-04") == [
        "ACC0004",
        "ACC0003",
        "ACC0002",
    ]
    assert search_studies(doctor_client, date_from="2024-03-05") == ["ACC0005"]


def test_a_reversed_date_range_is_explained_not_ignored(doctor_client, study):
    response = doctor_client.get("/studies/", {"date_from": "2024-03-05", "date_to": "2024-03-01"})
    assert response.status_code == 200
    assert list(response.context["page"]) == []
    assert "The start date is after the end date." in response.content.decode()


# --- The front desk's patient search -------------------------------------------------------------


def search_patients(client, **params) -> list[tuple[str, int]]:
    response = client.get("/patients/", params)
    assert response.status_code == 200
    return [(patient.patient_id, patient.study_count) for patient in response.context["page"]]


@pytest.fixture
def front_desk_client(client, front_desk):
    client.force_login(front_desk)
    return client


def test_the_front_desk_sees_patients_with_their_number_of_studies(front_desk_client):
    zhang = Patient.objects.create(patient_id="CN1", name_alphabetic="Zhang^Wei", name_ideographic="张^伟")
    make_study(1, patient=zhang)
    make_study(2, patient=zhang)
    Patient.objects.create(patient_id="X9", name_alphabetic="Nobody")
    assert search_patients(front_desk_client) == [("X9", 0), ("CN1", 2)]
    assert "ZHANG Wei (张伟)" in front_desk_client.get("/patients/").content.decode()


def test_the_front_desk_finds_patients_by_name_id_and_birth_date(front_desk_client):
    Patient.objects.create(patient_id="CN1", name_ideographic="张^伟", birth_date=dt.date(1980, 5, 1))
    Patient.objects.create(patient_id="CN2", name_alphabetic="Li^Na", birth_date=dt.date(1990, 1, 2))
    assert search_patients(front_desk_client, name="张伟") == [("CN1", 0)]
    assert search_patients(front_desk_client, name="li na") == [("CN2", 0)]
    assert search_patients(front_desk_client, patient_id="cn2") == [("CN2", 0)]
    assert search_patients(front_desk_client, birth_date="1980-05-01") == [("CN1", 0)]


def test_the_patient_search_takes_a_constant_number_of_queries(front_desk_client, django_assert_max_num_queries):
    for n in range(30):
        make_study(n, thumbnails=False)
    with django_assert_max_num_queries(5):
        assert len(search_patients(front_desk_client)) == 30


def test_the_pages_speak_simplified_chinese(doctor_client, study):
    body = doctor_client.get("/studies/", headers={"accept-language": "zh-hans"}).content.decode()
    assert "患者姓名" in body and "1 项检查" in body and "退出登录" in body


def test_the_no_role_page_speaks_simplified_chinese(client, no_role):
    client.force_login(no_role)
    body = client.get("/", headers={"accept-language": "zh-hans"}).content.decode()
    assert "您的账户还没有角色" in body and "newcomer" in body
