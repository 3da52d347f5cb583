"""Corrections through the REST API: the same domain functions, the same roles, 400 naming the field,
409 for conflicts, the history, undo, and the rewrite job with its progress."""

import base64

import pytest
from rest_framework.test import APIClient

from records.models import Correction, Patient, Study
from records.roles import ADMINISTRATOR, DOCTOR, FRONT_DESK
from tests import dicomgen
from tests.dicomweb_data import PASSWORD, make_user, store_generated

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def two_patients(tmp_path):
    store_generated(dicomgen.ct_series(tmp_path / "a", 2, 32, patient_id="API001"), PatientName="ZHANG^WEI")
    store_generated(dicomgen.ct_series(tmp_path / "b", 1, 32, patient_id="TMP9"), PatientName="ZHANG^WEI")
    return Patient.objects.get(patient_id="API001"), Patient.objects.get(patient_id="TMP9")


def client(*roles, username="clerk") -> APIClient:
    make_user(username, *roles)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Basic " + base64.b64encode(f"{username}:{PASSWORD}".encode()).decode())
    return api


def test_the_front_desk_finds_and_corrects_a_patient(two_patients):
    api = client(FRONT_DESK)
    found = api.get("/api/patients/", {"patient_id": "API001"}).json()["results"]
    (patient,) = found
    response = api.patch(
        f"/api/patients/{patient['id']}/",
        {"name": "Zhang^Wei=张^伟", "birth_date": "1979-03-08", "sex": "M", "reason": "typed wrongly"},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["patient"]["name"] == "Zhang^Wei=张^伟"
    assert body["patient"]["birth_date"] == "1979-03-08"
    correction = body["correction"]
    assert correction["username"] == "clerk"
    assert correction["after"] == {"name": "Zhang^Wei=张^伟", "birth_date": "1979-03-08", "sex": "M"}
    assert correction["images_affected"] == 2
    (job,) = correction["rewrite_jobs"]
    assert (job["total"], job["done"]) == (2, 0)
    assert api.get(f"/api/rewrite-jobs/{job['id']}/").json()["state"] == "pending"

    history = api.get(f"/api/patients/{patient['id']}/history/").json()
    assert [h["id"] for h in history] == [correction["id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Zhang^Wei=张^伟"}, "reason"),
        ({"name": "A=B=C=D", "reason": "r"}, "name"),
        ({"birth_date": "1979-02-30", "reason": "r"}, "birth_date"),
        ({"sex": "male", "reason": "r"}, "sex"),
        ({"name_alphabetic": "X", "reason": "r"}, "name_alphabetic"),
    ],
)
def test_an_invalid_correction_is_refused_with_400_naming_the_field(two_patients, body, field):
    api = client(FRONT_DESK)
    response = api.patch(f"/api/patients/{two_patients[0].pk}/", body, format="json")
    assert response.status_code == 400
    assert list(response.json()) == [field]
    assert not Correction.objects.exists()
    assert Patient.objects.get(pk=two_patients[0].pk).name == "ZHANG^WEI"


def test_conflicts_are_refused_with_409(two_patients):
    api = client(ADMINISTRATOR)
    keep, duplicate = two_patients
    response = api.patch(f"/api/patients/{keep.pk}/", {"patient_id": "TMP9", "reason": "r"}, format="json")
    assert (response.status_code, list(response.json())) == (409, ["patient_id"])
    response = api.post(f"/api/patients/{keep.pk}/merge/", {"duplicate": keep.pk, "reason": "r"}, format="json")
    assert (response.status_code, list(response.json())) == (409, ["duplicate"])
    assert not Correction.objects.exists()


def test_a_merge_and_its_undo_through_the_api(two_patients):
    api = client(FRONT_DESK)
    keep, duplicate = two_patients
    response = api.post(
        f"/api/patients/{keep.pk}/merge/", {"duplicate": duplicate.pk, "reason": "temporary ID"}, format="json"
    )
    assert response.status_code == 200, response.content
    record = response.json()["correction"]
    assert record["kind"] == "merge" and record["studies_affected"] == 1
    assert api.get("/api/patients/", {"patient_id": "TMP9"}).json()["results"] == []
    assert Study.objects.filter(patient=keep).count() == 2

    response = api.post(f"/api/corrections/{record['id']}/undo/", {"reason": "not the same"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["undoes"] == record["id"]
    assert len(api.get("/api/patients/", {"patient_id": "TMP9"}).json()["results"]) == 1
    again = api.post(f"/api/corrections/{record['id']}/undo/", {"reason": "again"}, format="json")
    assert again.status_code == 409


def test_a_study_correction_through_the_api(two_patients):
    api = client(FRONT_DESK)
    study = Study.objects.filter(patient=two_patients[0]).get()
    response = api.patch(
        f"/api/studies/{study.pk}/", {"accession_number": "A77", "reason": "wrong order"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["study"]["accession_number"] == "A77"
    too_long = api.patch(f"/api/studies/{study.pk}/", {"accession_number": "A" * 17, "reason": "r"}, format="json")
    assert (too_long.status_code, list(too_long.json())) == (400, ["accession_number"])


def test_doctors_read_corrections_but_do_not_make_them(two_patients):
    api = client(DOCTOR, username="doc")
    keep, duplicate = two_patients
    assert api.patch(f"/api/patients/{keep.pk}/", {"sex": "M", "reason": "r"}, format="json").status_code == 403
    assert api.post(f"/api/patients/{keep.pk}/merge/", {"duplicate": duplicate.pk, "reason": "r"}).status_code == 403
    assert api.get(f"/api/patients/{keep.pk}/history/").status_code == 200
    assert api.get("/api/corrections/").status_code == 200
    assert not Correction.objects.exists()
