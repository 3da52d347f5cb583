"""The REST API under /api/: each endpoint for each role, filters, pagination, nodes, send jobs, the schema."""

import datetime as dt
import re
import shutil
import subprocess

import pydicom
import pytest
from django.contrib.auth.models import Group, User
from django.utils import timezone
from pydicom.data import get_testdata_file
from rest_framework.test import APIClient

from imaging import ingest, storage
from network import tasks
from network.models import AssociationLog, ModalityNode, SendJob
from records.models import IndexingFailure, Instance, InstanceConflict, Patient, Series, Study
from records.roles import ADMINISTRATOR, DOCTOR, FRONT_DESK
from tests import procs
from tests.storescp import storescp

PASSWORD = "a-long-test-password"  # noqa: S105 - test users only
PERSONAS = ("doctor", "front_desk", "administrator", "no_role", "anonymous")
USERNAMES = {"doctor": "doctor", "front_desk": "frontdesk", "administrator": "administrator", "no_role": "newcomer"}
ROLES = {"doctor": [DOCTOR], "front_desk": [FRONT_DESK], "administrator": [ADMINISTRATOR], "no_role": []}


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    # Password hashing is Django's business; hundreds of requests need not each pay for PBKDF2.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def make_user(persona: str) -> User | None:
    if persona == "anonymous":
        return None
    user = User.objects.create_user(USERNAMES[persona], password=PASSWORD)
    # get_or_create: a transactional test before this one may have emptied the migration's groups.
    user.groups.add(*(Group.objects.get_or_create(name=role)[0] for role in ROLES[persona]))
    return user


@pytest.fixture
def as_persona(db):
    """An API client signed in (session) as the persona, or not signed in for "anonymous"."""

    def client_for(persona: str) -> APIClient:
        client = APIClient()
        user = User.objects.filter(username=USERNAMES.get(persona, "")).first() or make_user(persona)
        if user is not None:
            client.force_login(user)
        return client

    return client_for


def make_study(n: int, *, patient=None, modalities=("CT",), instances_per_series=1, **fields) -> Study:
    patient = patient or Patient.objects.create(
        patient_id=fields.pop("patient_id", f"P{n:04d}"),
        name_alphabetic=fields.pop("name_alphabetic", f"Doe^Pat{n}"),
        name_ideographic=fields.pop("name_ideographic", ""),
    )
    patient.name = "=".join(g for g in (patient.name_alphabetic, patient.name_ideographic) if g)
    patient.save()
    study = Study.objects.create(
        patient=patient,
        study_instance_uid=f"1.2.3.{n}",
        accession_number=fields.pop("accession_number", f"ACC{n:04d}"),
        study_date=fields.pop("study_date", dt.date(2024, 1, 1) + dt.timedelta(days=n)),
        study_time=dt.time(9, 30),
        modalities_in_study="\\".join(sorted(modalities)),
        number_of_series=len(modalities),
        number_of_instances=instances_per_series * len(modalities),
        **fields,
    )
    for number, modality in enumerate(modalities, start=1):
        series = Series.objects.create(
            study=study,
            series_instance_uid=f"1.2.3.{n}.{number}",
            modality=modality,
            series_number=number,
            number_of_instances=instances_per_series,
        )
        for i in range(1, instances_per_series + 1):
            uid = f"1.2.3.{n}.{number}.{i}"
            Instance.objects.create(
                series=series,
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                instance_number=i,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                file_path=f"instances/{uid}.dcm",
                file_size=1000,
                checksum="0" * 64,
                received_at=timezone.now(),
            )
    return study


@pytest.fixture
def archive(db):
    """One of everything the API lists."""
    study = make_study(1, modalities=("CT", "SR"))
    node = ModalityNode.objects.create(ae_title="WORKSTATION", host="127.0.0.1", port=104)
    log = AssociationLog.objects.create(
        started_at=timezone.now(),
        calling_ae="WORKSTATION",
        called_ae="IMAGING",
        peer_host="127.0.0.1",
        node=node,
        outcome="released",
    )
    job = SendJob.objects.create(
        study=study, study_instance_uid=study.study_instance_uid, node=node, destination=str(node), total=2
    )
    failure = IndexingFailure.objects.create(file_path="instances/x.dcm", reason="cannot be parsed")
    conflict = InstanceConflict.objects.create(sop_instance_uid="1.2.3.9", resolution="kept-stored")
    series = study.series.first()
    return {
        "patients": study.patient.pk,
        "studies": study.pk,
        "series": series.pk,
        "instances": series.instances.first().pk,
        "nodes": node.pk,
        "associations": log.pk,
        "send-jobs": job.pk,
        "indexing-failures": failure.pk,
        "instance-conflicts": conflict.pk,
    }


# Who may read each endpoint.
ANY_ROLE = {"doctor", "front_desk", "administrator"}
IMAGES = {"doctor", "administrator"}
ADMINS = {"administrator"}
ENDPOINTS = {
    "patients": ANY_ROLE,
    "studies": ANY_ROLE,
    "series": ANY_ROLE,
    "instances": IMAGES,
    "nodes": ADMINS,
    "associations": ADMINS,
    "send-jobs": ADMINS,
    "indexing-failures": ADMINS,
    "instance-conflicts": ADMINS,
}


def urls(archive) -> list[tuple[str, set[str]]]:
    found = [("/api/", ANY_ROLE), ("/api/schema/", ANY_ROLE), ("/api/docs/", ANY_ROLE)]
    for name, allowed in ENDPOINTS.items():
        found += [(f"/api/{name}/", allowed), (f"/api/{name}/{archive[name]}/", allowed)]
    return found


def expected_refusal(persona: str) -> int:
    return 401 if persona == "anonymous" else 403


@pytest.mark.parametrize("persona", PERSONAS)
def test_each_endpoint_lets_in_its_roles_and_refuses_the_others(as_persona, archive, persona):
    client = as_persona(persona)
    for url, allowed in urls(archive):
        response = client.get(url)
        if persona in allowed:
            assert response.status_code == 200, (url, response.content[:300])
        elif url == "/api/docs/" and persona == "anonymous":
            # A page for people: strangers go to the sign-in page.
            assert response.status_code == 302 and response["Location"].startswith("/accounts/login/?next=/api/docs/")
        else:
            assert response.status_code == expected_refusal(persona), (url, response.status_code)
            if persona == "anonymous":
                assert response["WWW-Authenticate"] == 'Basic realm="imaging"'


@pytest.mark.parametrize("persona", ["doctor", "front_desk", "no_role", "anonymous"])
def test_only_administrators_write_nodes_and_send(as_persona, archive, persona):
    client = as_persona(persona)
    node_url = f"/api/nodes/{archive['nodes']}/"
    assert client.post("/api/nodes/", {"ae_title": "NEW", "host": "127.0.0.1", "port": 104}).status_code in (401, 403)
    assert client.patch(node_url, {"port": 105}).status_code in (401, 403)
    assert client.delete(node_url).status_code in (401, 403)
    send = {"study_instance_uid": "1.2.3.1", "node": "WORKSTATION"}
    assert client.post("/api/send-jobs/", send).status_code in (401, 403)
    assert ModalityNode.objects.get().port == 104 and SendJob.objects.count() == 1


@pytest.mark.parametrize("persona", ["doctor", "front_desk", "administrator"])
def test_the_browsable_api_renders_for_people(as_persona, archive, persona):
    client = as_persona(persona)
    for url, allowed in urls(archive):
        if persona in allowed and url not in ("/api/schema/", "/api/docs/"):
            response = client.get(url, HTTP_ACCEPT="text/html")
            assert response.status_code == 200, url
            assert response["Content-Type"].startswith("text/html"), url
    if persona == "administrator":
        # The send form asks for what a POST takes.
        html = client.get("/api/send-jobs/", HTTP_ACCEPT="text/html").content.decode()
        assert 'name="study_instance_uid"' in html and 'name="node"' in html


def test_the_index_is_read_only(as_persona, archive):
    client = as_persona("administrator")
    assert client.post("/api/studies/", {"study_instance_uid": "1.2"}).status_code == 405
    assert client.delete(f"/api/patients/{archive['patients']}/").status_code == 405
    assert client.delete(f"/api/associations/{archive['associations']}/").status_code == 405
    assert client.delete(f"/api/send-jobs/{archive['send-jobs']}/").status_code == 405
    assert Patient.objects.count() == 1 and AssociationLog.objects.count() == 1


def test_a_study_shows_its_patient_modalities_and_links(as_persona, archive):
    body = as_persona("front_desk").get(f"/api/studies/{archive['studies']}/").json()
    assert body["study_instance_uid"] == "1.2.3.1"
    assert body["patient"]["patient_id"] == "P0001" and body["patient"]["url"].endswith(
        f"/api/patients/{archive['patients']}/"
    )
    assert body["modalities_in_study"] == ["CT", "SR"]
    assert body["series"].endswith(f"/api/series/?study={archive['studies']}")
    series = as_persona("front_desk").get(body["series"]).json()
    assert [s["modality"] for s in series["results"]] == ["CT", "SR"]


def test_an_instance_names_its_series_and_study_but_not_its_file(as_persona, archive):
    body = as_persona("doctor").get(f"/api/instances/{archive['instances']}/").json()
    assert (body["series_instance_uid"], body["study_instance_uid"]) == ("1.2.3.1.1", "1.2.3.1")
    assert "file_path" not in body and Instance.objects.get(pk=body["id"]).file_path not in str(body)


# --- Filters and pages ---------------------------------------------------------------------------


@pytest.fixture
def studies(db):
    make_study(1, patient_id="ZW01", name_alphabetic="Zhang^Wei", name_ideographic="张^伟", modalities=("CT", "SR"))
    make_study(2, patient_id="LN02", name_alphabetic="Li^Na", modalities=("MR",), study_date=dt.date(2024, 3, 1))
    make_study(3, patient_id="RT03", name_alphabetic="Doe^John", modalities=("RTCT",), accession_number="A-77")
    return Study.objects.all()


def found(client, url) -> list[str]:
    response = client.get(url)
    assert response.status_code == 200, response.content
    return sorted(s["study_instance_uid"] for s in response.json()["results"])


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("patient_id=ZW01", ["1.2.3.1"]),
        ("name=zhang wei", ["1.2.3.1"]),
        ("name=张伟", ["1.2.3.1"]),
        ("name=Li^Na", ["1.2.3.2"]),
        ("modality=CT", ["1.2.3.1"]),  # CT\SR, not RTCT
        ("modality=rtct", ["1.2.3.3"]),
        ("accession_number=A-77", ["1.2.3.3"]),
        ("study_instance_uid=1.2.3.2", ["1.2.3.2"]),
        ("study_date_after=2024-01-03", ["1.2.3.2", "1.2.3.3"]),
        ("study_date_after=2024-01-02&study_date_before=2024-01-03", ["1.2.3.1"]),
        ("study_date_before=2024-01-01", []),
    ],
)
def test_studies_filter(as_persona, studies, query, expected):
    assert found(as_persona("front_desk"), f"/api/studies/?{query}") == expected


def test_other_lists_filter_too(as_persona, studies):
    client = as_persona("doctor")
    patients = client.get("/api/patients/?name=张").json()["results"]
    assert [p["patient_id"] for p in patients] == ["ZW01"] and patients[0]["number_of_studies"] == 1
    series = client.get("/api/series/?study_instance_uid=1.2.3.1&modality=SR").json()["results"]
    assert [s["series_instance_uid"] for s in series] == ["1.2.3.1.2"]
    instances = client.get("/api/instances/?series_instance_uid=1.2.3.2.1").json()["results"]
    assert [i["sop_instance_uid"] for i in instances] == ["1.2.3.2.1.1"]
    assert client.get("/api/instances/?study_instance_uid=1.2.3.1").json()["count"] == 2


@pytest.mark.parametrize(
    ("query", "field", "reason"),
    [
        ("study_date_after=2024-13-01", "study_date", "Enter a valid date."),
        ("study_date_after=2024-03-01&study_date_before=2024-01-01", "study_date", "The start date is after the end"),
        ("patient=abc", "patient", "Enter a number."),
    ],
)
def test_a_bad_filter_is_refused_with_the_reason(as_persona, studies, query, field, reason):
    response = as_persona("doctor").get(f"/api/studies/?{query}")
    assert response.status_code == 400
    assert reason in " ".join(response.json()[field])


def test_bad_choices_are_refused_on_the_administrators_lists(as_persona, db):
    response = as_persona("administrator").get("/api/send-jobs/?state=lost")
    assert response.status_code == 400 and "Select a valid choice" in response.json()["state"][0]
    response = as_persona("administrator").get("/api/associations/?started_at_after=yesterday")
    assert response.status_code == 400 and "started_at" in response.json()


def test_lists_are_paginated(as_persona, db, settings):
    settings.API_PAGE_SIZE = 2
    settings.API_MAX_PAGE_SIZE = 3
    for n in range(1, 6):
        make_study(n)
    client = as_persona("doctor")
    first = client.get("/api/studies/").json()
    assert first["count"] == 5 and len(first["results"]) == 2 and first["previous"] is None
    # Newest first; the pages go on where the last one stopped.
    assert [s["study_instance_uid"] for s in first["results"]] == ["1.2.3.5", "1.2.3.4"]
    second = client.get(first["next"]).json()
    assert [s["study_instance_uid"] for s in second["results"]] == ["1.2.3.3", "1.2.3.2"]
    assert len(client.get("/api/studies/?page_size=50").json()["results"]) == 3  # capped by API_MAX_PAGE_SIZE
    beyond = client.get("/api/studies/?page=9")
    assert beyond.status_code == 404 and "Invalid page" in beyond.json()["detail"]


# Sign-in (session, user, groups), COUNT and one SELECT: the same for 30 rows as for one.
@pytest.mark.parametrize(
    ("url", "persona", "queries"),
    [
        ("/api/patients/", "front_desk", 5),
        ("/api/studies/", "front_desk", 5),
        ("/api/series/", "front_desk", 5),
        ("/api/instances/", "doctor", 5),
        ("/api/nodes/", "administrator", 5),
        ("/api/associations/", "administrator", 5),
        ("/api/send-jobs/", "administrator", 5),
        ("/api/indexing-failures/", "administrator", 5),
        ("/api/instance-conflicts/", "administrator", 5),
    ],
)
def test_list_queries_do_not_grow_with_the_rows(as_persona, db, django_assert_max_num_queries, url, persona, queries):
    now = timezone.now()
    for n in range(1, 16):
        study = make_study(n, modalities=("CT", "MR"))
        node = ModalityNode.objects.create(ae_title=f"NODE{n}", host="127.0.0.1", port=104)
        AssociationLog.objects.create(
            started_at=now, calling_ae=f"NODE{n}", called_ae="IMAGING", peer_host="h", node=node, outcome="released"
        )
        user = User.objects.create_user(f"requester{n}")
        SendJob.objects.create(
            study=study, study_instance_uid=study.study_instance_uid, node=node, destination="x", requested_by=user
        )
        IndexingFailure.objects.create(file_path=f"instances/{n}.dcm", reason="cannot be parsed")
        InstanceConflict.objects.create(sop_instance_uid=f"1.9.{n}", resolution="kept-stored")
    client = as_persona(persona)
    with django_assert_max_num_queries(queries):
        response = client.get(url)
    assert response.status_code == 200 and response.json()["count"] >= 15
    assert len(response.json()["results"]) >= 15


# --- Modality nodes: the admin's validation --------------------------------------------------------


@pytest.fixture
def administrator(as_persona):
    return as_persona("administrator")


def test_an_administrator_adds_changes_and_removes_a_node(administrator):
    response = administrator.post(
        "/api/nodes/",
        {"ae_title": " DR_WARD_3 ", "host": "127.0.0.1", "port": 4242, "may_query": False, "fallback_charset": "GBK"},
    )
    assert response.status_code == 201, response.content
    node = ModalityNode.objects.get()
    assert (node.ae_title, node.port, node.may_query, node.fallback_charset) == ("DR_WARD_3", 4242, False, "GBK")
    url = response.json()["url"]
    assert url.endswith(f"/api/nodes/{node.pk}/")
    assert administrator.patch(url, {"active": False}).status_code == 200
    node.refresh_from_db()
    assert not node.active
    assert administrator.delete(url).status_code == 204
    assert not ModalityNode.objects.exists()


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"ae_title": "BAD\\AE"}, "ae_title", "cannot contain a backslash"),
        ({"ae_title": "A" * 17}, "ae_title", "no more than 16 characters"),
        ({"ae_title": "   "}, "ae_title", "may not be blank"),
        ({"ae_title": "CT\x01"}, "ae_title", "control characters"),
        ({"ae_title": "医院"}, "ae_title", "ASCII"),
        ({"ae_title": " WORKSTATION "}, "ae_title", "already exists"),
        ({"port": 70000}, "port", "between 1 and 65535"),
        ({"port": -1}, "port", "greater than or equal to 0"),
        ({"fallback_charset": "KLINGON"}, "fallback_charset", "not a valid choice"),
        ({"host": ""}, "host", "may not be blank"),
    ],
)
def test_a_bad_node_is_refused_with_the_reason(administrator, data, field, reason):
    ModalityNode.objects.create(ae_title="WORKSTATION", host="127.0.0.1", port=104)
    response = administrator.post("/api/nodes/", {"ae_title": "NEW_NODE", "host": "127.0.0.1", "port": 104, **data})
    assert response.status_code == 400
    assert reason in " ".join(response.json()[field]), response.json()
    assert ModalityNode.objects.count() == 1


def test_a_node_cannot_be_renamed_onto_another(administrator):
    ModalityNode.objects.create(ae_title="WORKSTATION", host="127.0.0.1", port=104)
    other = ModalityNode.objects.create(ae_title="CT1", host="127.0.0.1", port=105)
    response = administrator.patch(f"/api/nodes/{other.pk}/", {"ae_title": "WORKSTATION "})
    assert response.status_code == 400 and "already exists" in response.json()["ae_title"][0]
    assert administrator.patch(f"/api/nodes/{other.pk}/", {"port": 106}).status_code == 200  # its own title is fine


# --- Sending a study -------------------------------------------------------------------------------


@pytest.fixture
def queued(monkeypatch):
    calls = []
    monkeypatch.setattr(tasks.send_study, "delay", lambda *args: calls.append(args))
    return calls


def test_a_send_queues_the_job_and_answers_202_with_its_url(
    administrator, archive, queued, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        response = administrator.post(
            "/api/send-jobs/", {"study_instance_uid": "1.2.3.1", "node": "WORKSTATION"}, format="json"
        )
    assert response.status_code == 202, response.content
    job = SendJob.objects.latest("id")
    assert response["Location"] == response.json()["url"] and response["Location"].endswith(f"/api/send-jobs/{job.pk}/")
    assert queued == [(archive["studies"], archive["nodes"], job.pk)]
    assert (job.requested_by.username, job.state, job.total) == ("administrator", "queued", 2)
    body = administrator.get(response["Location"]).json()
    assert {k: body[k] for k in ("state", "total", "sent", "failed", "requested_by", "destination")} == {
        "state": "queued",
        "total": 2,
        "sent": 0,
        "failed": 0,
        "requested_by": "administrator",
        "destination": "WORKSTATION at 127.0.0.1:104",
    }


@pytest.mark.django_db(transaction=True)
def test_a_send_that_cannot_be_queued_says_so(administrator, archive, monkeypatch):
    # Committed for real, as in production: the job is queued when the view's transaction commits.
    def broker_down(*args):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(tasks.send_study, "delay", broker_down)
    response = administrator.post("/api/send-jobs/", {"study_instance_uid": "1.2.3.1", "node": "WORKSTATION"})
    assert response.status_code == 503
    assert response.json()["state"] == "failed" and "could not be queued" in response.json()["error"]
    assert SendJob.objects.latest("id").state == "failed"


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"node": "BAD\\AE"}, "node", "cannot contain a backslash"),
        ({"node": "A" * 17}, "node", "1 to 16 characters"),
        ({"node": "NOBODY"}, "node", "No modality node has AE title 'NOBODY'"),
        ({"node": "RETIRED"}, "node", "'RETIRED' is inactive"),
        ({"node": "STORE_ONLY"}, "node", "may not receive images"),
        ({"study_instance_uid": "9.9.9"}, "study_instance_uid", "No study has Study Instance UID '9.9.9'"),
        ({"study_instance_uid": ""}, "study_instance_uid", "may not be blank"),
    ],
)
def test_a_bad_send_is_refused_with_the_reason(administrator, archive, queued, data, field, reason):
    ModalityNode.objects.create(ae_title="RETIRED", host="127.0.0.1", port=105, active=False)
    ModalityNode.objects.create(ae_title="STORE_ONLY", host="127.0.0.1", port=106, may_retrieve=False)
    response = administrator.post("/api/send-jobs/", {"study_instance_uid": "1.2.3.1", "node": "WORKSTATION", **data})
    assert response.status_code == 400
    assert reason in " ".join(response.json()[field]), response.json()
    assert SendJob.objects.count() == 1 and queued == []


def store_and_index(name: str, study_uid: str) -> str:
    """A pydicom test file in the store as if received, indexed; returns its SOP Instance UID."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID = study_uid
    ds.PatientID = "SEND01"
    relpath = storage.instance_relpath(ds.SOPInstanceUID)
    storage.absolute(relpath).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(storage.absolute(relpath))
    done, failed = ingest.index_files([relpath])
    assert done and not failed
    return ds.SOPInstanceUID


@pytest.mark.e2e
def test_a_send_through_the_api_reaches_a_real_storescp(system, tmp_path):
    """The real Celery worker sends the study; the job resource shows its progress to the end."""
    study_uid = "1.2.826.0.1.3680043.8.498.7101"
    uids = {store_and_index(name, study_uid) for name in ("CT_small.dcm", "MR_small_RLE.dcm")}
    client = APIClient()
    client.force_login(make_user("administrator"))
    try:
        with storescp(tmp_path / "in", tmp_path / "storescp.log") as port:
            ModalityNode.objects.create(ae_title="TARGET", host="127.0.0.1", port=port)
            response = client.post("/api/send-jobs/", {"study_instance_uid": study_uid, "node": "TARGET"})
            assert response.status_code == 202, response.content
            job_url = response["Location"]

            def finished():
                body = client.get(job_url).json()
                return body if body["state"] not in ("queued", "running") else None

            body = procs.wait_for(finished, 60, "the send job to finish")
        assert (body["state"], body["total"], body["sent"], body["failed"], body["failures"]) == (
            "succeeded",
            2,
            2,
            0,
            [],
        )
        assert body["started_at"] and body["finished_at"] >= body["started_at"]
        received = {pydicom.dcmread(p).SOPInstanceUID for p in (tmp_path / "in").iterdir()}
        assert received == uids
    finally:
        shutil.rmtree(storage.root() / storage.INSTANCES, ignore_errors=True)


# --- The schema and its docs ------------------------------------------------------------------------


def test_the_schema_is_generated_without_warnings_and_validates():
    done = subprocess.run(
        procs.manage("spectacular", "--validate", "--fail-on-warn", "--format", "openapi-json"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=procs.ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "Error" not in done.stderr
    assert '"openapi": "3.' in done.stdout


def test_the_schema_describes_the_api_and_how_to_sign_in(as_persona, db):
    response = as_persona("front_desk").get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert {"/api/studies/", "/api/send-jobs/", "/api/nodes/{id}/"} <= set(schema["paths"])
    assert all(p.startswith("/api/") for p in schema["paths"])
    assert set(schema["components"]["securitySchemes"]) == {"basicAuth", "tokenAuth", "cookieAuth"}
    post = schema["paths"]["/api/send-jobs/"]["post"]
    assert {"202", "503"} <= set(post["responses"])
    parameters = {p["name"] for p in schema["paths"]["/api/studies/"]["get"]["parameters"]}
    assert {
        "patient_id",
        "name",
        "study_date_after",
        "study_date_before",
        "modality",
        "page",
        "page_size",
    } <= parameters


def test_the_docs_page_uses_our_own_copy_of_swagger_ui(as_persona, db):
    response = as_persona("doctor").get("/api/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in html
    assert "cdn" not in html.lower() and "https://" not in html
    # What the page loads is in an installed app's static files, so collectstatic ships it
    # and WhiteNoise serves it in production.
    from django.contrib.staticfiles import finders

    for asset in re.findall(r'(?:src|href)="/static/([^"]+)"', html):
        assert finders.find(asset), asset
    assert len(re.findall(r'(?:src|href)="/static/', html)) >= 3


# --- Settings ---------------------------------------------------------------------------------------


def test_page_sizes_come_from_the_environment_and_a_bad_one_is_refused(tmp_path):
    from tests.test_web_security import fresh_env, manage, settings_of

    env = fresh_env(tmp_path, SECRET_KEY="s" * 50, API_PAGE_SIZE="25", API_MAX_PAGE_SIZE="200")
    assert settings_of(env, "API_PAGE_SIZE", "API_MAX_PAGE_SIZE") == [25, 200]
    done = manage({**env, "API_PAGE_SIZE": "0"}, "check")
    assert done.returncode != 0 and "API_PAGE_SIZE=0 must be between 1 and API_MAX_PAGE_SIZE" in done.stderr
    env = fresh_env(
        tmp_path, SECRET_KEY="s" * 50, CORS_ALLOWED_ORIGINS="https://viewer.example.org, http://10.0.0.5:3000"
    )
    assert settings_of(env, "CORS_ALLOWED_ORIGINS") == [["https://viewer.example.org", "http://10.0.0.5:3000"]]
