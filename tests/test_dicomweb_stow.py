"""STOW-RS (PS3.18 10.5): parsing, the C-STORE store path, the PS3.18 response, refusals and roles.

Django's test client here; tests/test_dicomweb_stow_e2e.py drives dicomweb-client
against gunicorn with the real worker.
"""

import base64
import io

import pydicom
import pytest
from django.test import Client
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

from imaging import storage
from network.dicomweb import stow
from records.models import Instance
from tests import dicomgen
from tests.dicomweb_data import PASSWORD, client_for, fresh_uids, make_user, pydicom_file, store

pytestmark = pytest.mark.django_db

STUDIES = "/dicomweb/studies"
BOUNDARY = "stow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

# dicom+json tags of the response.
REFERENCED = "00081199"
FAILED = "00081198"
FAILURE_REASON = "00081197"
SOP_INSTANCE = "00081155"
SOP_CLASS = "00081150"
RETRIEVE_URL = "00081190"


class Handed(list):
    def submit(self, relpath, source_ae):
        self.append(relpath)


@pytest.fixture(autouse=True)
def handed(monkeypatch):
    """The paths handed to the indexer (no broker here)."""
    handoff = Handed()
    monkeypatch.setattr(stow, "handoff", lambda: handoff)
    return handoff


@pytest.fixture
def doctor():
    return client_for("Doctor")


def file_bytes(ds, enforce: bool = True) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=enforce)
    return out.getvalue()


def body(*parts: bytes, boundary: str = BOUNDARY, part_type: str = "application/dicom") -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def post(client, payload: bytes, url: str = STUDIES, content_type: str = CONTENT_TYPE, **extra):
    return client.generic(
        "POST", url, payload, content_type=content_type, HTTP_ACCEPT="application/dicom+json", **extra
    )


def ct(**changes):
    return fresh_uids(pydicom_file("CT_small.dcm", **changes))


def data_set_part(raw: bytes) -> bytes:
    """A DICOM file's bytes after its file meta."""
    fp = io.BytesIO(raw)
    fp.seek(132)
    _read_file_meta_info(fp)
    return raw[fp.tell() :]


def stored_path(sop: str):
    return storage.absolute(storage.instance_relpath(sop))


def items(response, tag):
    return response.json().get(tag, {}).get("Value", [])


def reasons(response):
    return [item[FAILURE_REASON]["Value"][0] for item in items(response, FAILED)]


def test_it_stores_two_instances_and_answers_200_with_their_urls(doctor, handed):
    first, second = ct(), fresh_uids(pydicom_file("MR_small.dcm"))
    response = post(doctor, body(file_bytes(first), file_bytes(second)))
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/dicom+json"
    refs = items(response, REFERENCED)
    assert [r[SOP_INSTANCE]["Value"][0] for r in refs] == [first.SOPInstanceUID, second.SOPInstanceUID]
    assert refs[0][SOP_CLASS]["Value"] == [first.SOPClassUID]
    assert refs[0][RETRIEVE_URL]["Value"] == [
        f"http://testserver/dicomweb/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
        f"/instances/{first.SOPInstanceUID}"
    ]
    assert FAILED not in response.json()
    # Two studies: no single study RetrieveURL at the top.
    assert RETRIEVE_URL not in response.json()
    assert handed == [storage.instance_relpath(first.SOPInstanceUID), storage.instance_relpath(second.SOPInstanceUID)]
    # The data set as uploaded, behind our file meta.
    stored = stored_path(first.SOPInstanceUID).read_bytes()
    assert data_set_part(stored) == data_set_part(file_bytes(first))
    assert pydicom.dcmread(io.BytesIO(stored)).file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID


def test_a_study_url_gives_the_study_retrieve_url(doctor):
    ds = ct()
    response = post(doctor, body(file_bytes(ds)), url=f"{STUDIES}/{ds.StudyInstanceUID}")
    assert response.status_code == 200, response.content
    assert response.json()[RETRIEVE_URL]["Value"] == [f"http://testserver/dicomweb/studies/{ds.StudyInstanceUID}"]


def test_it_refuses_an_instance_of_another_study_than_the_url(doctor):
    ds = ct()
    other = generate_uid(dicomgen.PYNETDICOM_ROOT)
    response = post(doctor, body(file_bytes(ds)), url=f"{STUDIES}/{other}")
    assert response.status_code == 409, response.content
    assert reasons(response) == [0xA900]
    assert "is not the study" in response["Warning"]
    assert not stored_path(ds.SOPInstanceUID).exists()


def test_boundary_quoted_and_type_unquoted_are_read_alike(doctor):
    ds = ct()
    response = post(
        doctor, body(file_bytes(ds)), content_type=f'multipart/related; type=application/dicom; boundary="{BOUNDARY}"'
    )
    assert response.status_code == 200, response.content


@pytest.mark.parametrize(
    "garbage",
    [
        b"this is not DICOM at all",
        b"\x00" * 128 + b"DICM" + b"\xff" * 40,  # broken file meta
        b"\x00" * 4096,  # no DICM prefix
    ],
    ids=["text", "broken-meta", "no-prefix"],
)
def test_a_garbage_part_answers_409_and_writes_nothing(doctor, handed, garbage):
    before = sorted(storage.iter_instance_files())
    response = post(doctor, body(garbage))
    assert response.status_code == 409, response.content
    assert reasons(response) == [0xC000]
    assert REFERENCED not in response.json()
    assert sorted(storage.iter_instance_files()) == before
    assert handed == []


def test_a_data_set_without_file_meta_is_refused(doctor):
    ds = ct()
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, False
    write_dataset(raw, ds)
    response = post(doctor, body(raw.getvalue()))
    assert response.status_code == 409
    assert not stored_path(ds.SOPInstanceUID).exists()


@pytest.mark.parametrize("uid", ["../../etc/passwd", "1.2.3.abc", ""], ids=["path", "letters", "empty"])
def test_path_like_or_invalid_uids_are_refused(doctor, uid):
    ds = ct()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    response = post(doctor, body(file_bytes(ds, enforce=bool(uid))))
    assert response.status_code == 409, response.content
    assert reasons(response) in ([0xA900], [0xC000])
    assert "passwd" not in " ".join(str(p) for p in storage.iter_instance_files())


def test_a_data_set_whose_uid_differs_from_its_meta_is_refused(doctor):
    ds = ct()
    uid = ds.SOPInstanceUID.encode()
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    raw = file_bytes(ds)
    raw = raw.replace(uid, other, 1)  # the first one is the file meta's
    assert data_set_part(raw).count(uid) == 1
    response = post(doctor, body(raw))
    assert response.status_code == 409
    assert reasons(response) == [0xA900]
    assert "differs" in response["Warning"]


def test_a_mixed_body_answers_202_with_both_sequences(doctor):
    good = ct()
    response = post(doctor, body(file_bytes(good), b"garbage"))
    assert response.status_code == 202, response.content
    assert [r[SOP_INSTANCE]["Value"][0] for r in items(response, REFERENCED)] == [good.SOPInstanceUID]
    assert reasons(response) == [0xC000]
    assert "part 2" in response["Warning"]


def test_a_uid_held_under_another_study_is_a_failure_with_the_reason(doctor, settings):
    settings.DICOM_UID_CONFLICT_POLICY = "reject"
    held = ct()
    store(held)
    again = pydicom_file("CT_small.dcm", SOPInstanceUID=held.SOPInstanceUID)
    again.StudyInstanceUID = generate_uid(dicomgen.PYNETDICOM_ROOT)
    before = stored_path(held.SOPInstanceUID).read_bytes()
    response = post(doctor, body(file_bytes(again)))
    assert response.status_code == 409, response.content
    assert reasons(response) == [0x0111]
    assert "held under another" in response["Warning"]
    assert stored_path(held.SOPInstanceUID).read_bytes() == before


def test_the_same_uid_twice_in_one_body_under_two_studies_keeps_the_first(doctor, settings, handed):
    """The parts' files are committed together (storage.GroupCommit): the second still sees the first."""
    settings.DICOM_UID_CONFLICT_POLICY = "reject"
    first = ct()
    second = pydicom_file("CT_small.dcm", SOPInstanceUID=first.SOPInstanceUID)
    second.StudyInstanceUID = generate_uid(dicomgen.PYNETDICOM_ROOT)
    response = post(doctor, body(file_bytes(first), file_bytes(second)))
    assert response.status_code == 202, response.content
    assert [r[SOP_INSTANCE]["Value"][0] for r in items(response, REFERENCED)] == [first.SOPInstanceUID]
    assert reasons(response) == [0x0111]
    stored = stored_path(first.SOPInstanceUID).read_bytes()
    assert data_set_part(stored) == data_set_part(file_bytes(first))
    assert len(handed) == 1


def test_a_file_that_cannot_be_put_in_place_is_a_failure_and_not_indexed(doctor, handed):
    blocked, fine = ct(), ct()
    stored_path(blocked.SOPInstanceUID).mkdir(parents=True)  # the rename over a folder fails
    response = post(doctor, body(file_bytes(blocked), file_bytes(fine)))
    assert response.status_code == 202, response.content
    assert [r[SOP_INSTANCE]["Value"][0] for r in items(response, REFERENCED)] == [fine.SOPInstanceUID]
    assert reasons(response) == [0xA700]
    assert handed == [storage.instance_relpath(fine.SOPInstanceUID)]
    assert not list(stored_path(blocked.SOPInstanceUID).parent.glob("*.part"))  # its temporary file is gone
    stored_path(blocked.SOPInstanceUID).rmdir()


def test_many_parts_in_one_body_are_all_stored_whole(doctor, handed):
    many = [ct() for _ in range(12)]
    response = post(doctor, body(*(file_bytes(ds) for ds in many)))
    assert response.status_code == 200, response.content
    assert [r[SOP_INSTANCE]["Value"][0] for r in items(response, REFERENCED)] == [ds.SOPInstanceUID for ds in many]
    assert all(
        data_set_part(stored_path(ds.SOPInstanceUID).read_bytes()) == data_set_part(file_bytes(ds)) for ds in many
    )
    assert sorted(handed) == sorted(storage.instance_relpath(ds.SOPInstanceUID) for ds in many)


def test_a_resend_of_the_same_instance_is_stored(doctor):
    ds = ct()
    assert post(doctor, body(file_bytes(ds))).status_code == 200
    assert post(doctor, body(file_bytes(ds))).status_code == 200


def test_a_large_part_goes_through_the_spool_and_is_stored_whole(doctor, settings):
    settings.DICOM_STREAM_TO_DISK_BYTES = 70 * 1024  # CT_small is ~39 KB of pixels: force the disk path
    ds = fresh_uids(pydicom_file("emri_small.dcm"))  # multi-frame, ~80 KB
    uploaded = file_bytes(ds)
    assert len(uploaded) > settings.DICOM_STREAM_TO_DISK_BYTES
    response = post(doctor, body(uploaded))
    assert response.status_code == 200, response.content
    stored = stored_path(ds.SOPInstanceUID).read_bytes()
    assert data_set_part(stored) == data_set_part(uploaded)
    assert not [p for p in stored_path(ds.SOPInstanceUID).parent.iterdir() if p.name.startswith(".")]


def test_a_large_part_of_another_study_leaves_no_temporary_file(doctor, settings):
    settings.DICOM_STREAM_TO_DISK_BYTES = 70 * 1024
    ds = fresh_uids(pydicom_file("emri_small.dcm"))
    response = post(doctor, body(file_bytes(ds)), url=f"{STUDIES}/{generate_uid(dicomgen.PYNETDICOM_ROOT)}")
    assert response.status_code == 409
    folder = stored_path(ds.SOPInstanceUID).parent
    assert not stored_path(ds.SOPInstanceUID).exists()
    assert not folder.exists() or not list(folder.iterdir())


def test_low_disk_space_is_a_failure_and_writes_nothing(doctor, settings):
    settings.STORAGE_MIN_FREE_MB = 10**9
    ds = ct()
    response = post(doctor, body(file_bytes(ds)))
    assert response.status_code == 409
    assert reasons(response) == [0xA700]
    assert not stored_path(ds.SOPInstanceUID).exists()


def test_a_part_over_the_data_set_bound_is_413(doctor, settings):
    settings.DICOM_MAX_DATASET_BYTES = 10_000
    ds = ct()
    response = post(doctor, body(file_bytes(ds)))
    assert response.status_code == 413
    assert "DICOM_MAX_DATASET_BYTES" in response.json()["detail"]
    assert not stored_path(ds.SOPInstanceUID).exists()


def test_a_body_over_the_total_bound_is_413_before_reading(doctor, settings):
    settings.DICOMWEB_STOW_MAX_BODY_BYTES = 1000
    response = post(doctor, body(file_bytes(ct())))
    assert response.status_code == 413
    assert "DICOMWEB_STOW_MAX_BODY_BYTES" in response.json()["detail"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        "multipart/form-data; boundary=x",
        'multipart/related; type="application/dicom+json"; boundary=x',
        "multipart/related; boundary=x",
        'multipart/related; type="application/dicom"',
    ],
)
def test_a_body_that_is_not_multipart_related_dicom_is_415(doctor, content_type):
    response = post(doctor, body(file_bytes(ct())), content_type=content_type)
    assert response.status_code == 415, response.content
    assert response.json()["detail"]


def test_a_part_of_another_type_is_refused(doctor):
    response = post(doctor, body(file_bytes(ct()), part_type="application/octet-stream"))
    assert response.status_code == 409
    assert "not application/dicom" in response["Warning"]


def test_a_truncated_body_is_400(doctor):
    payload = body(file_bytes(ct()))
    response = post(doctor, payload[: len(payload) // 2])
    assert response.status_code == 400
    assert "closing boundary" in response.json()["detail"]


def test_an_accept_we_cannot_serve_is_406(doctor):
    response = doctor.generic(
        "POST", STUDIES, body(file_bytes(ct())), content_type=CONTENT_TYPE, HTTP_ACCEPT="application/dicom+xml"
    )
    assert response.status_code == 406


@pytest.mark.parametrize(
    "accept", ["application/json", "*/*", "application/*", "application/dicom+json, application/json"]
)
def test_json_and_wildcards_are_accepted(doctor, accept):
    response = doctor.generic("POST", STUDIES, body(file_bytes(ct())), content_type=CONTENT_TYPE, HTTP_ACCEPT=accept)
    assert response.status_code == 200


@pytest.mark.parametrize(("role", "status"), [("Front desk", 403), (None, 403), ("Administrator", 200)])
def test_roles(role, status):
    client = client_for(role) if role else client_for()
    assert post(client, body(file_bytes(ct()))).status_code == status


def test_anonymous_is_401_and_nothing_written():
    ds = ct()
    response = post(Client(), body(file_bytes(ds)))
    assert response.status_code == 401
    assert not stored_path(ds.SOPInstanceUID).exists()


def test_basic_auth_needs_no_csrf_token_but_a_session_does():
    user = make_user("stow-doctor", "Doctor")
    basic = "Basic " + base64.b64encode(f"stow-doctor:{PASSWORD}".encode()).decode()
    strict = Client(enforce_csrf_checks=True)
    assert post(strict, body(file_bytes(ct())), HTTP_AUTHORIZATION=basic).status_code == 200
    strict.force_login(user)
    response = post(strict, body(file_bytes(ct())))
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]


def test_get_on_studies_is_still_qido_for_the_front_desk():
    assert client_for("Front desk").get(STUDIES, HTTP_ACCEPT="application/dicom+json").status_code == 200


def test_the_indexed_instance_is_found_after_indexing(doctor, handed):
    from imaging import ingest

    ds = ct()
    assert post(doctor, body(file_bytes(ds))).status_code == 200
    done, failed = ingest.index_files(list(handed))
    assert not failed
    assert Instance.objects.filter(sop_instance_uid=ds.SOPInstanceUID).exists()


def test_a_chunked_body_on_a_server_that_cannot_read_it_is_411(doctor):
    response = post(doctor, body(file_bytes(ct())), HTTP_TRANSFER_ENCODING="chunked")
    assert response.status_code == 411
    assert "chunked" in response.json()["detail"]


def test_a_body_cut_inside_a_spooled_part_leaves_no_temporary_file(doctor, settings):
    settings.DICOM_STREAM_TO_DISK_BYTES = 70 * 1024
    ds = fresh_uids(pydicom_file("emri_small.dcm"))
    payload = body(file_bytes(ds))
    response = post(doctor, payload[: len(payload) - 200])
    assert response.status_code == 400
    # The folder is shared with whatever other instances hash there: only this one's traces count.
    assert not stored_path(ds.SOPInstanceUID).exists()
    assert not list(stored_path(ds.SOPInstanceUID).parent.glob(f".{ds.SOPInstanceUID}.dcm.*"))


def test_a_data_set_of_another_sop_class_than_its_meta_is_stored_with_a_warning(doctor):
    ds = ct()
    raw = file_bytes(ds)
    ct_class, mr_class = b"1.2.840.10008.5.1.4.1.1.2\0", b"1.2.840.10008.5.1.4.1.1.4\0"
    raw = raw.replace(ct_class, mr_class, 1)  # the first one is the file meta's
    assert data_set_part(raw).count(ct_class) == 1
    response = post(doctor, body(raw))
    assert response.status_code == 202, response.content
    [ref] = items(response, REFERENCED)
    assert ref["00081196"]["Value"] == [0xB007]
    assert ref[SOP_CLASS]["Value"] == [ds.SOPClassUID]
    assert stored_path(ds.SOPInstanceUID).exists()


def test_a_stored_instance_has_no_warning(doctor):
    response = post(doctor, body(file_bytes(ct())))
    [ref] = items(response, REFERENCED)
    assert "00081196" not in ref
