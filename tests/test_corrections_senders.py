"""Until a file is rewritten, what we send out already carries the corrected values: Send to node (our
C-STORE writer and pynetdicom's, as stored and decompressed) and WADO-RS (instances, transcoded
instances, metadata, never cached from corrected bytes). In-process, with a real DCMTK storescp.

The correction is made inside the test's transaction, so its rewrite job is never queued: it stays
pending until the test runs it.
"""

import io
import json
from pathlib import Path

import pydicom
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom.uid import RLELossless, generate_uid

from imaging import rewrite, storage
from network import scu
from network.models import ModalityNode, SendJob
from records import demographics
from records.models import Instance, Patient, RewriteJob, Study
from tests import dicomgen
from tests.dicomweb_data import client_for, fresh_uids, pydicom_file, store
from tests.storescp import storescp
from tests.test_dicomweb_wado import parts, url

pytestmark = pytest.mark.django_db

OLD_NAME = "ZHANG^WEI"
NEW_NAME = "Zhang^Wei=张^伟"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def corrected():
    """A study of a CT (Explicit VR Little Endian) and an RLE MR for patient SND-1, corrected, its job pending."""
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    old = {"PatientID": "SND-1", "PatientName": OLD_NAME, "PatientBirthDate": "19800101", "PatientSex": "F"}
    sent = [fresh_uids(pydicom_file(name, **old), study=study_uid) for name in ("CT_small.dcm", "MR_small_RLE.dcm")]
    relpaths = [store(ds) for ds in sent]
    on_disk = {relpath: storage.absolute(relpath).read_bytes() for relpath in relpaths}
    record = demographics.correct_patient(
        patient=Patient.objects.get(patient_id="SND-1"),
        changes={"name": NEW_NAME, "birth_date": "1979-03-08", "sex": "M"},
        reason="typed wrongly at the CT",
        user=None,
        address="192.0.2.1",
    )
    assert RewriteJob.objects.get(correction=record).state == "pending"
    data = {"study": Study.objects.get(study_instance_uid=study_uid), "sent": sent, "on_disk": on_disk}
    yield data
    # The files were never written by a sender: only the job writes them.
    assert {relpath: storage.absolute(relpath).read_bytes() for relpath in relpaths} == data["on_disk"]


def assert_corrected(ds: pydicom.Dataset, original: pydicom.Dataset) -> None:
    assert str(ds.PatientName) == NEW_NAME
    assert ds.PatientName.ideographic == "张^伟"
    assert (ds.PatientID, ds.PatientBirthDate, ds.PatientSex) == ("SND-1", "19790308", "M")
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
        original.StudyInstanceUID,
        original.SeriesInstanceUID,
        original.SOPInstanceUID,
    )
    [item] = ds.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == "CORRECT"
    [old] = item.ModifiedAttributesSequence
    assert (str(old.PatientName), old.PatientBirthDate, old.PatientSex) == (OLD_NAME, "19800101", "F")


def received(out_dir) -> dict[str, pydicom.Dataset]:
    return {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(path) for path in out_dir.iterdir())}


@pytest.mark.parametrize("fast_send", [True, False], ids=["fastsend", "pynetdicom"])
@pytest.mark.parametrize("accept", ["+xa", "uncompressed"])
def test_a_study_sent_to_a_node_before_its_rewrite_carries_the_correction(
    corrected, tmp_path, settings, fast_send, accept
):
    settings.DICOM_FAST_SEND = fast_send
    study = corrected["study"]
    options = [accept] if accept == "+xa" else []
    with storescp(tmp_path / "in", tmp_path / "storescp.log", *options) as port:
        node = ModalityNode.objects.create(ae_title="TARGET", host="127.0.0.1", port=port)
        job = SendJob.objects.create(study=study, study_instance_uid=study.study_instance_uid, node=node)
        job = scu.send_study(study.pk, node.pk, job.pk)
    assert (job.state, job.sent, job.failures) == ("succeeded", 2, [])
    got = received(tmp_path / "in")
    for original in corrected["sent"]:
        assert_corrected(got[original.SOPInstanceUID], original)
    mr = got[corrected["sent"][1].SOPInstanceUID]
    # Sent as stored to a node that takes RLE, decompressed from the corrected file otherwise.
    assert (mr.file_meta.TransferSyntaxUID == RLELossless) == (accept == "+xa")


def test_wado_rs_serves_the_corrected_file_as_stored_and_transcoded(corrected):
    doctor = client_for("Doctor")
    ct, mr = corrected["sent"]
    [(headers, body)] = parts(doctor.get(url(ct), HTTP_ACCEPT='multipart/related; type="application/dicom"'))
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    assert_corrected(pydicom.dcmread(io.BytesIO(body)), ct)
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}'
    [(headers, body)] = parts(doctor.get(url(mr), HTTP_ACCEPT=accept))
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    transcoded = pydicom.dcmread(io.BytesIO(body))
    assert_corrected(transcoded, mr)
    assert transcoded.file_meta.TransferSyntaxUID == EXPLICIT


def metadata(client, study_uid) -> list[dict]:
    response = client.get(f"/dicomweb/studies/{study_uid}/metadata", HTTP_ACCEPT="application/dicom+json")
    return json.loads(b"".join(response.streaming_content))


def test_wado_rs_metadata_shows_the_correction_and_caches_only_what_the_stored_file_says(corrected, settings, tmp_path):
    settings.DICOMWEB_METADATA_CACHE_DIR = str(tmp_path / "cache")
    doctor = client_for("Doctor")
    study_uid = corrected["study"].study_instance_uid
    for meta in metadata(doctor, study_uid):
        assert meta["00100010"]["Value"] == [{"Alphabetic": "Zhang^Wei", "Ideographic": "张^伟"}]
        assert (meta["00100030"]["Value"], meta["00100040"]["Value"]) == (["19790308"], ["M"])
        assert meta["04000561"]["Value"][0]["04000565"]["Value"] == ["CORRECT"]  # Original Attributes Sequence
    assert not list((tmp_path / "cache").glob("*/*.json"))  # built from the corrected bytes: not kept

    rewrite.run_job(RewriteJob.objects.get().pk)
    corrected["on_disk"] = {relpath: storage.absolute(relpath).read_bytes() for relpath in corrected["on_disk"]}
    again = metadata(doctor, study_uid)
    assert [m["00100010"]["Value"][0]["Ideographic"] for m in again] == ["张^伟", "张^伟"]
    assert len(list((tmp_path / "cache").glob("*/*.json"))) == 2  # the rewritten files' metadata is cached


def test_which_instances_go_out_corrected_is_one_query_for_a_whole_retrieve(tmp_path):
    for patient_id in ("SND-Q", "SND-OTHER"):
        for path in dicomgen.ct_series(tmp_path / patient_id, 5, 32, patient_id=patient_id, patient_name=OLD_NAME):
            store(pydicom.dcmread(path))
    instances = list(Instance.objects.filter(series__study__patient__patient_id="SND-Q"))

    def sent_as_stored_with(queries: int) -> None:
        with CaptureQueriesContext(connection) as captured:
            rewrite.mark_pending(instances)
            for instance in instances:
                assert isinstance(scu.payload(instance, {instance.transfer_syntax_uid}), Path)
        assert len(captured) == queries
        assert [instance.corrected_at for instance in instances] == [None] * 5

    sent_as_stored_with(queries=1)  # no rewrite job open anywhere
    demographics.correct_patient(
        patient=Patient.objects.get(patient_id="SND-OTHER"), changes={"sex": "M"}, reason="r", user=None, address=None
    )
    sent_as_stored_with(queries=2)  # another patient's job pending: which of these wait for it
