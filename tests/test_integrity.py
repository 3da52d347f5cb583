"""A SOP Instance UID already held under another study or patient: the store path follows the policy."""

import copy
import logging

import pydicom
import pytest
from pydicom.uid import generate_uid

from imaging import storage
from network.dimse import store
from records.models import InstanceConflict
from tests import dicomgen
from tests.test_store import encoded

pytestmark = pytest.mark.django_db


def first_stored(tmp_path, **changes):
    [path] = dicomgen.ct_series(tmp_path / generate_uid()[-8:], 1, size=16, patient_id="P-STORED")
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    meta, stream = encoded(ds)
    relpath = store.store(meta, stream, "CT1")
    return ds, relpath


def resent(ds, **changes):
    ds = copy.deepcopy(ds)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return encoded(ds)


@pytest.mark.parametrize(
    "changes",
    [{"StudyInstanceUID": "1.2.3.4.5.6"}, {"PatientID": "P-OTHER"}],
    ids=["another study", "another patient"],
)
def test_reject_keeps_the_stored_instance_and_answers_duplicate_sop_instance(tmp_path, settings, caplog, changes):
    settings.DICOM_UID_CONFLICT_POLICY = "reject"
    ds, relpath = first_stored(tmp_path)
    before = storage.absolute(relpath).read_bytes()
    meta, stream = resent(ds, **changes)

    with pytest.raises(store.Rejected) as refused:
        store.store(meta, stream, "MR2")

    assert refused.value.status == 0x0111
    assert "DICOM_UID_CONFLICT_POLICY=reject" in refused.value.reason
    assert storage.absolute(relpath).read_bytes() == before
    conflict = InstanceConflict.objects.get()
    assert conflict.resolution == InstanceConflict.Resolution.KEPT_STORED
    assert (conflict.sop_instance_uid, conflict.source_ae) == (ds.SOPInstanceUID, "MR2")
    assert conflict.stored_study_uid == ds.StudyInstanceUID
    assert conflict.incoming_study_uid == changes.get("StudyInstanceUID", ds.StudyInstanceUID)
    assert (conflict.stored_patient_id, conflict.incoming_patient_id) == (
        "P-STORED",
        changes.get("PatientID", "P-STORED"),
    )


def test_replace_stores_the_new_instance_and_records_the_conflict(tmp_path, settings, caplog):
    settings.DICOM_UID_CONFLICT_POLICY = "replace"
    ds, relpath = first_stored(tmp_path)
    meta, stream = resent(ds, StudyInstanceUID="1.2.3.4.5.7")

    with caplog.at_level(logging.WARNING, "imaging.integrity"):
        assert store.store(meta, stream, "MR2") == relpath

    assert storage.absolute(relpath).read_bytes().endswith(stream)
    conflict = InstanceConflict.objects.get()
    assert conflict.resolution == InstanceConflict.Resolution.REPLACED
    assert conflict.incoming_study_uid == "1.2.3.4.5.7"
    assert len([r for r in caplog.records if r.name == "imaging.integrity"]) == 1


def test_the_same_instance_sent_again_is_no_conflict(tmp_path, settings):
    settings.DICOM_UID_CONFLICT_POLICY = "reject"
    ds, relpath = first_stored(tmp_path)
    meta, stream = resent(ds, SeriesDescription="Corrected at the modality")

    assert store.store(meta, stream, "CT1") == relpath

    assert storage.absolute(relpath).read_bytes().endswith(stream)
    assert not InstanceConflict.objects.exists()


def test_a_deflated_stored_instance_is_compared_too(tmp_path, settings):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    settings.DICOM_UID_CONFLICT_POLICY = "reject"
    [path] = dicomgen.ct_series(tmp_path, 1, size=16, patient_id="P-DFL")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta, stream = encoded(ds)
    store.store(meta, stream, "CT1")
    meta, stream = resent(ds, PatientID="P-OTHER")

    with pytest.raises(store.Rejected):
        store.store(meta, stream, "CT1")
    assert InstanceConflict.objects.get().stored_patient_id == "P-DFL"


@pytest.mark.e2e
def test_a_real_scp_answers_0x0111_and_records_the_conflict(system, tmp_path):
    from pynetdicom import AE

    [path] = dicomgen.ct_series(tmp_path, 1, size=32, patient_id="P-FIRST")
    ds = pydicom.dcmread(path)

    def send(dataset):
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", system.port, ae_title="IMAGING")
        assert assoc.is_established
        try:
            return assoc.send_c_store(dataset).Status
        finally:
            assoc.release()

    assert send(ds) == 0x0000
    stored_bytes = storage.absolute(storage.instance_relpath(ds.SOPInstanceUID)).read_bytes()
    ds.PatientID = "P-SECOND"

    assert send(ds) == 0x0111

    assert storage.absolute(storage.instance_relpath(ds.SOPInstanceUID)).read_bytes() == stored_bytes
    conflict = InstanceConflict.objects.get(sop_instance_uid=ds.SOPInstanceUID)
    assert (conflict.stored_patient_id, conflict.incoming_patient_id) == ("P-FIRST", "P-SECOND")
    assert conflict.source_ae == "MODALITY"
    assert "refused (0x0111)" in system.log("runscp")


def test_a_data_set_received_to_disk_meets_the_same_policy(tmp_path, settings):
    """A large data set streamed to its file (network/guard.py) is checked like one held in memory."""
    settings.DICOM_UID_CONFLICT_POLICY = "reject"
    ds, relpath = first_stored(tmp_path)
    before = storage.absolute(relpath).read_bytes()
    meta, stream = resent(ds, PatientID="P-OTHER")
    spool = store.open_spool(
        sop_class=meta.MediaStorageSOPClassUID,
        sop_instance=meta.MediaStorageSOPInstanceUID,
        transfer_syntax=meta.TransferSyntaxUID,
        calling_ae="MR2",
        may_store=True,
    )
    spool.write(stream)

    with pytest.raises(store.Rejected) as refused:
        store.store_spooled(spool, "MR2")

    assert refused.value.status == 0x0111
    assert storage.absolute(relpath).read_bytes() == before
    conflict = InstanceConflict.objects.get()
    assert (conflict.incoming_patient_id, conflict.source_ae) == ("P-OTHER", "MR2")
    assert not [p for p in storage.absolute(relpath).parent.iterdir() if p.name.endswith(storage.PARTIAL_SUFFIX)]
