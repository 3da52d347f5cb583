"""STOW-RS end to end: dicomweb-client and raw chunked bodies against gunicorn, the real worker, DCMTK's findscu."""

import http.client
import io
import sys

import numpy as np
import pydicom
import pytest
from pydicom.filereader import _read_file_meta_info
from pydicom.uid import generate_uid

from imaging import storage
from records.models import Instance
from tests import dicomgen, procs
from tests.dicomweb_data import PASSWORD, client_for, fresh_uids, pydicom_file
from tests.test_find_e2e import findscu

pytestmark = pytest.mark.e2e

MAX_BODY = 4 * 1024 * 1024  # the server's DICOMWEB_STOW_MAX_BODY_BYTES here
BOUNDARY = "e2e-stow-boundary"


@pytest.fixture
def gunicorn(system):
    """gunicorn (as `make run` serves the web) on a free 127.0.0.1 port, over the system's database, store and broker.

    Its access log records each request's Transfer-Encoding header.
    """
    port = procs.free_port()
    access = system.logs / f"gunicorn-access-{port}.log"
    env = {
        **system.env,
        "ALLOWED_HOSTS": "127.0.0.1",
        "DICOMWEB_STOW_MAX_BODY_BYTES": str(MAX_BODY),
    }
    log = system.logs / f"gunicorn-{port}.log"
    args = [sys.executable, "-m", "gunicorn", "imaging.wsgi:application", "--config", "python:imaging.gunicorn_conf"]
    args += ["--bind", f"127.0.0.1:{port}"]
    args += ["--workers", "1", "--access-logfile", str(access)]
    args += ["--access-logformat", "%(m)s %(U)s %(s)s te=%({transfer-encoding}i)s"]
    proc = procs.start(args, env, log)
    try:
        procs.wait_for(lambda: procs.port_open(port) or proc.poll() is not None, 60, "gunicorn")
        assert proc.poll() is None, log.read_text()
        yield {"port": port, "url": f"http://127.0.0.1:{port}", "access": access, "log": log}
    finally:
        procs.stop(proc)


def dicomweb_client(server: str, username: str, *roles: str):
    from dicomweb_client.api import DICOMwebClient
    from dicomweb_client.session_utils import create_session_from_user_pass

    client_for(*roles, username=username)
    return DICOMwebClient(url=f"{server}/dicomweb", session=create_session_from_user_pass(username, PASSWORD))


def encoded(ds) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def data_set_part(raw: bytes) -> bytes:
    fp = io.BytesIO(raw)
    fp.seek(132)
    _read_file_meta_info(fp)
    return raw[fp.tell() :]


def big_ct(study: str):
    """An uncompressed 800x800 CT: 1.28 MB of pixels."""
    ds = fresh_uids(pydicom_file("CT_small.dcm"), study=study)
    ds.Rows = ds.Columns = 800
    ds.PixelData = np.random.default_rng(7).integers(0, 4000, (800, 800), dtype=np.int16).tobytes()
    return ds


def access_lines(gunicorn, count: int = 1) -> list[str]:
    """The access log's POST lines, once ``count`` are there (gunicorn writes a line after its response)."""

    def lines():
        text = gunicorn["access"].read_text() if gunicorn["access"].exists() else ""
        found = [line for line in text.splitlines() if line.startswith("POST")]
        return found if len(found) >= count else None

    return procs.wait_for(lines, 20, "gunicorn's access log")


def chunked_post(gunicorn, payload: bytes, headers: dict[str, str], chunk: int = 64 * 1024):
    """POST ``payload`` with Transfer-Encoding: chunked through http.client; returns (status, body, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", gunicorn["port"], timeout=60)
    try:
        conn.putrequest("POST", "/dicomweb/studies")
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for offset in range(0, len(payload), chunk):
            piece = payload[offset : offset + chunk]
            conn.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        return response.status, response.read(), response
    finally:
        conn.close()


def basic(username: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{username}:{PASSWORD}".encode()).decode()


def multipart(*parts: bytes) -> bytes:
    out = b""
    for part in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


STOW_HEADERS = {
    "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
    "Accept": "application/dicom+json",
}


def test_store_instances_then_findscu_finds_them_and_the_files_are_as_sent(system, gunicorn, tmp_path):
    study = generate_uid(dicomgen.PYNETDICOM_ROOT)
    datasets = [
        fresh_uids(pydicom_file(name), study=study)
        for name in ("CT_small.dcm", "MR_small.dcm", "bad_sequence.dcm", "MR_small_jp2klossless.dcm", "emri_small.dcm")
    ]
    datasets.append(big_ct(study))
    sent = {ds.SOPInstanceUID: encoded(ds) for ds in datasets}
    assert sum(len(raw) for raw in sent.values()) > 10**6  # dicomweb-client sends it chunked
    client = dicomweb_client(gunicorn["url"], "stow-e2e-doctor", "Doctor")

    result = client.store_instances([pydicom.dcmread(io.BytesIO(raw)) for raw in sent.values()])

    refs = [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence]
    assert refs == list(sent)
    assert "FailedSOPSequence" not in result
    assert result.RetrieveURL == f"{gunicorn['url']}/dicomweb/studies/{study}"
    # It really came chunked (dicomweb-client chunks bodies over its 1 MB chunk_size).
    assert access_lines(gunicorn) == ["POST /dicomweb/studies 200 te=chunked"]
    for sop, raw in sent.items():
        stored = storage.absolute(storage.instance_relpath(sop)).read_bytes()
        assert data_set_part(stored) == data_set_part(raw), sop

    # Indexed by the worker through the web process's hand-off; then C-FIND finds them.
    procs.wait_for(
        lambda: Instance.objects.filter(series__study__study_instance_uid=study).count() == len(sent),
        60,
        "the worker to index the STOW-RS instances",
    )
    found, [answer] = findscu(
        system.port, tmp_path, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study}", "NumberOfStudyRelatedInstances"
    )
    assert found.returncode == 0, found.stderr
    assert answer.NumberOfStudyRelatedInstances == len(sent)
    found, series = findscu(
        system.port, tmp_path, "QueryRetrieveLevel=SERIES", f"StudyInstanceUID={study}", "SeriesInstanceUID"
    )
    assert sorted(s.SeriesInstanceUID for s in series) == sorted(ds.SeriesInstanceUID for ds in datasets)
    assert "STOW-RS from stow-e2e-doctor: 6 part(s), 6 stored, 0 refused" in gunicorn["log"].read_text()


def test_a_chunked_garbage_body_is_409_with_the_reason_and_writes_nothing(system, gunicorn):
    client_for("Doctor", username="stow-e2e-garbage")
    before = sorted(storage.iter_instance_files())
    status, content, response = chunked_post(
        gunicorn, multipart(b"not DICOM" * 1000), {**STOW_HEADERS, "Authorization": basic("stow-e2e-garbage")}
    )
    assert status == 409, content
    failed = pydicom.Dataset.from_json(content.decode()).FailedSOPSequence
    assert [item.FailureReason for item in failed] == [0xC000]
    assert "no preamble and DICM prefix" in response.getheader("Warning")
    assert sorted(storage.iter_instance_files()) == before
    assert access_lines(gunicorn) == ["POST /dicomweb/studies 409 te=chunked"]
    assert "part 1 (no SOP Instance UID) refused (0xC000)" in gunicorn["log"].read_text()


def test_a_mixed_body_and_a_conflict_answer_both_sequences(system, gunicorn, settings):
    client = dicomweb_client(gunicorn["url"], "stow-e2e-mixed", "Administrator")
    held = fresh_uids(pydicom_file("CT_small.dcm"))
    assert "FailedSOPSequence" not in client.store_instances([held])
    conflicting = pydicom_file("CT_small.dcm", SOPInstanceUID=held.SOPInstanceUID)
    conflicting.StudyInstanceUID = generate_uid(dicomgen.PYNETDICOM_ROOT)
    good = fresh_uids(pydicom_file("MR_small.dcm"))
    payload = multipart(encoded(good), encoded(conflicting), b"garbage")
    status, content, response = chunked_post(
        gunicorn, payload, {**STOW_HEADERS, "Authorization": basic("stow-e2e-mixed")}
    )
    assert status == 202, content
    result = pydicom.Dataset.from_json(content.decode())
    assert [item.ReferencedSOPInstanceUID for item in result.ReferencedSOPSequence] == [good.SOPInstanceUID]
    assert [(item.get("ReferencedSOPInstanceUID"), item.FailureReason) for item in result.FailedSOPSequence] == [
        (held.SOPInstanceUID, 0x0111),
        (None, 0xC000),
    ]
    assert "held under another" in response.getheader("Warning")
    stored = storage.absolute(storage.instance_relpath(held.SOPInstanceUID)).read_bytes()
    assert data_set_part(stored) == data_set_part(encoded(held))


@pytest.mark.parametrize(("role", "status"), [(None, 401), ("Front desk", 403)])
def test_roles_on_a_live_server(system, gunicorn, role, status):
    headers = dict(STOW_HEADERS)
    if role:
        client_for(role, username="stow-e2e-frontdesk")
        headers["Authorization"] = basic("stow-e2e-frontdesk")
    ds = fresh_uids(pydicom_file("CT_small.dcm"))
    got, _content, _response = chunked_post(gunicorn, multipart(encoded(ds)), headers)
    assert got == status
    assert not storage.absolute(storage.instance_relpath(ds.SOPInstanceUID)).exists()


def test_a_chunked_body_over_the_bound_is_413(system, gunicorn):
    client_for("Doctor", username="stow-e2e-big")
    study = generate_uid(dicomgen.PYNETDICOM_ROOT)
    parts = [encoded(big_ct(study)) for _ in range(4)]  # 4 x 1.28 MB > MAX_BODY
    status, content, _response = chunked_post(
        gunicorn, multipart(*parts), {**STOW_HEADERS, "Authorization": basic("stow-e2e-big")}
    )
    assert status == 413, content
    assert b"DICOMWEB_STOW_MAX_BODY_BYTES" in content
