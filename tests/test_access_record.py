"""The access record: every way of reading a patient's study is recorded once per session and study,
not once per frame; the admin lists and filters it and can change none of it; old rows are pruned."""

import base64
import datetime as dt

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.authtoken.models import Token

from imaging import tasks
from records import access
from records.models import AccessRecord, Instance, Study
from tests import dicomgen
from tests.dicomweb_data import PASSWORD, client_for, make_user, store_generated

pytestmark = pytest.mark.django_db

Action = AccessRecord.Action


@pytest.fixture
def ct(tmp_path):
    """A 3-slice CT of one patient; returns its data sets."""
    return store_generated(
        dicomgen.ct_series(tmp_path, 3, 64, patient_id="AR0001"), PatientName="Wang^Fang=王^芳", AccessionNumber="X77"
    )


def wado(ds, tail="") -> str:
    return f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}{tail}"


# How each way of reading is asked for, and the action it is recorded as.
READS = {
    "study page": (lambda ds: f"/studies/{ds.StudyInstanceUID}/", {}, Action.STUDY_PAGE),
    "download": (lambda ds: f"/studies/{ds.StudyInstanceUID}/download.zip", {}, Action.DOWNLOAD),
    "viewer": (lambda ds: f"/viewer/?study={ds.StudyInstanceUID}", {}, Action.VIEWER),
    "retrieve": (
        lambda ds: f"/dicomweb/studies/{ds.StudyInstanceUID}",
        {"HTTP_ACCEPT": 'multipart/related; type="application/dicom"'},
        Action.WADO_RETRIEVE,
    ),
    "metadata": (
        lambda ds: f"/dicomweb/studies/{ds.StudyInstanceUID}/metadata",
        {"HTTP_ACCEPT": "application/dicom+json"},
        Action.WADO_METADATA,
    ),
    "frames": (
        lambda ds: wado(ds, "/frames/1"),
        {"HTTP_ACCEPT": 'multipart/related; type="application/octet-stream"'},
        Action.WADO_FRAMES,
    ),
    "bulkdata": (
        lambda ds: wado(ds, "/bulkdata/7FE00010"),
        {"HTTP_ACCEPT": 'multipart/related; type="application/octet-stream"'},
        Action.WADO_BULKDATA,
    ),
    "rendered": (lambda ds: wado(ds, "/rendered"), {"HTTP_ACCEPT": "image/png"}, Action.WADO_RENDERED),
    "thumbnail": (
        lambda ds: f"/dicomweb/studies/{ds.StudyInstanceUID}/thumbnail",
        {"HTTP_ACCEPT": "image/png"},
        Action.WADO_THUMBNAIL,
    ),
}


def read(client, how, ds):
    url, headers, _action = READS[how]
    response = client.get(url(ds), **headers)
    assert response.status_code == 200, (how, response.content[:300])
    if response.streaming:
        b"".join(response.streaming_content)
    return response


@pytest.mark.parametrize("how", list(READS))
def test_each_way_of_reading_is_recorded_once_per_session_and_study(ct, how):
    doctor = make_user("dr-li", "Doctor")
    first, second = Client(), Client()
    first.force_login(doctor)
    second.force_login(doctor)  # another session: another record
    for ds in ct:
        read(first, how, ds)
    read(first, how, ct[0])
    assert AccessRecord.objects.count() == 1
    record = AccessRecord.objects.get()
    assert (record.username, record.user, record.action) == ("dr-li", doctor, READS[how][2])
    assert (record.study_instance_uid, record.study) == (ct[0].StudyInstanceUID, Study.objects.get())
    assert (record.patient_id, record.patient_name, record.accession_number) == ("AR0001", "Wang^Fang=王^芳", "X77")
    assert record.address == "127.0.0.1"
    assert abs(timezone.now() - record.at) < dt.timedelta(minutes=1)
    # The session key is a credential: only its digest is kept.
    assert first.session.session_key not in record.session
    read(second, how, ct[0])
    assert AccessRecord.objects.count() == 2


def test_the_api_instance_read_is_recorded(ct):
    doctor = client_for("Doctor")
    instance = Instance.objects.get(sop_instance_uid=ct[0].SOPInstanceUID)
    for _ in range(2):
        assert doctor.get(reverse("api:instance-detail", args=[instance.pk])).status_code == 200
    assert doctor.get(reverse("api:instance-list")).status_code == 200  # a search, not a read
    assert list(AccessRecord.objects.values_list("action", "study_instance_uid")) == [
        (Action.API_INSTANCE, ct[0].StudyInstanceUID)
    ]


def test_fifty_frames_make_one_record_and_no_query_about_it(ct):
    doctor = client_for("Doctor")
    how = READS["frames"]
    read(doctor, "frames", ct[0])
    with CaptureQueriesContext(connection) as queries:
        for _ in range(50):
            for ds in ct:
                assert doctor.get(how[0](ds), **how[1]).status_code == 200
    assert AccessRecord.objects.count() == 1
    assert not [q["sql"] for q in queries.captured_queries if "records_accessrecord" in q["sql"]]
    # A web process that never saw the session (another gunicorn worker, a restart) writes nothing more.
    access.forget()
    read(doctor, "frames", ct[1])
    assert AccessRecord.objects.count() == 1


def test_what_is_not_found_is_not_recorded(ct):
    doctor = client_for("Doctor")
    assert doctor.get("/studies/1.2.826.0.1.3680043.8.498.1/").status_code == 404
    assert doctor.get("/dicomweb/studies/1.2.826.0.1.3680043.8.498.1/metadata").status_code == 404
    assert client_for("Front desk").get(wado(ct[0], "/rendered")).status_code == 403
    assert not AccessRecord.objects.exists()


def basic(username: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()


def test_token_and_basic_users_are_recorded_once_per_day(ct):
    make_user("script", "Doctor")
    token = Token.objects.create(user=make_user("pacs-sync", "Doctor"))
    how = READS["metadata"]
    for _ in range(2):
        assert Client().get(how[0](ct[0]), HTTP_AUTHORIZATION=basic("script"), **how[1]).status_code == 200
        assert Client().get(how[0](ct[0]), HTTP_AUTHORIZATION=f"Token {token.key}", **how[1]).status_code == 200
    records = AccessRecord.objects.order_by("username")
    assert [(r.username, r.action) for r in records] == [
        ("pacs-sync", Action.WADO_METADATA),
        ("script", Action.WADO_METADATA),
    ]
    assert all(token.key not in r.session for r in records)


def test_a_basic_request_with_another_users_session_cookie_is_its_own_users_read(ct):
    make_user("script", "Doctor")
    browser = client_for("Doctor", username="dr-li")
    how = READS["metadata"]
    assert browser.get(how[0](ct[0]), **how[1]).status_code == 200
    assert browser.get(how[0](ct[0]), HTTP_AUTHORIZATION=basic("script"), **how[1]).status_code == 200
    assert sorted(AccessRecord.objects.values_list("username", flat=True)) == ["dr-li", "script"]


def test_the_address_is_remote_addr_not_a_header_the_client_writes(ct):
    doctor = client_for("Doctor")
    doctor.get(f"/studies/{ct[0].StudyInstanceUID}/", REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="8.8.8.8")
    assert AccessRecord.objects.get().address == "10.1.2.3"


def test_old_records_are_pruned_after_the_retention(ct, settings):
    settings.ACCESS_RECORD_RETENTION_DAYS = 30
    client_for("Doctor", username="a").get(f"/studies/{ct[0].StudyInstanceUID}/")
    client_for("Doctor", username="b").get(f"/studies/{ct[0].StudyInstanceUID}/")
    old, recent = AccessRecord.objects.order_by("username")
    AccessRecord.objects.filter(pk=old.pk).update(at=timezone.now() - dt.timedelta(days=31))
    assert tasks.prune_access_records() == 1
    assert list(AccessRecord.objects.all()) == [recent]


def test_the_default_retention_is_years():
    from django.conf import settings

    assert settings.ACCESS_RECORD_RETENTION_DAYS >= 7 * 365


def test_pruning_is_scheduled_daily():
    from imaging.celery import app

    app.loader.import_default_modules()
    schedule = app.conf.beat_schedule
    [entry] = [e for e in schedule.values() if e["task"] == "imaging.tasks.prune_access_records"]
    assert entry["schedule"] == 24 * 3600


# The admin


@pytest.fixture
def records(ct, tmp_path):
    other = store_generated(dicomgen.ct_series(tmp_path / "other", 1, 64, patient_id="AR0002"), PatientName="Li^Lei")
    client_for("Doctor", username="dr-li").get(f"/studies/{ct[0].StudyInstanceUID}/")
    read(client_for("Doctor", username="dr-zhao"), "frames", other[0])
    return AccessRecord.objects.order_by("username")


@pytest.fixture
def administrator():
    return client_for("Administrator", username="it-admin")


def test_an_administrator_lists_and_filters_records(records, administrator, django_assert_max_num_queries):
    url = reverse("admin:records_accessrecord_changelist")
    with django_assert_max_num_queries(12):
        response = administrator.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "dr-li" in html and "dr-zhao" in html and "AR0001" in html and "AR0002" in html
    li, zhao = records
    for query, shown, hidden in (
        ({"action": Action.WADO_FRAMES}, "AR0002", "AR0001"),
        ({"user__id__exact": li.user_id}, "AR0001", "AR0002"),
        ({"q": "AR0001"}, "AR0001", "AR0002"),
        ({"q": "Li^Lei"}, "AR0002", "AR0001"),
        ({"q": zhao.study_instance_uid}, "AR0002", "AR0001"),
    ):
        html = administrator.get(url, query).content.decode()
        assert shown in html and hidden not in html, query
    today = timezone.localdate()
    dated = administrator.get(url, {"at__year": today.year, "at__month": today.month, "at__day": today.day})
    assert "AR0001" in dated.content.decode()
    yesterday = today - dt.timedelta(days=1)
    html = administrator.get(url, {"at__year": yesterday.year, "at__month": yesterday.month, "at__day": yesterday.day})
    assert "AR0001" not in html.content.decode()
    assert administrator.get(reverse("admin:records_accessrecord_change", args=[li.pk])).status_code == 200


@pytest.mark.parametrize("who", ["administrator", "superuser"])
def test_no_one_adds_changes_or_deletes_a_record_in_the_admin(records, administrator, admin_client, who):
    client = administrator if who == "administrator" else admin_client
    li, _zhao = records
    before = list(AccessRecord.objects.values())
    add = reverse("admin:records_accessrecord_add")
    assert client.get(add).status_code == 403
    assert (
        client.post(add, {"username": "x", "action": "viewer", "session": "x", "study_instance_uid": "1.2"}).status_code
        == 403
    )
    change = reverse("admin:records_accessrecord_change", args=[li.pk])
    assert client.post(change, {"username": "someone else", "patient_id": "X"}).status_code == 403
    delete = reverse("admin:records_accessrecord_delete", args=[li.pk])
    assert client.get(delete).status_code == 403
    assert client.post(delete, {"post": "yes"}).status_code == 403
    changelist = reverse("admin:records_accessrecord_changelist")
    client.post(changelist, {"action": "delete_selected", "_selected_action": [li.pk], "post": "yes"})
    assert list(AccessRecord.objects.values()) == before
