"""What we send out after a correction, against the running system and real clients.

- Before the files are rewritten (the job left pending): DCMTK getscu (C-GET), movescu (C-MOVE to a
  storescp), Send to node and dicomweb-client (WADO-RS instances and metadata) get the corrected
  values, the original UIDs and an Original Attributes Sequence item, while the stored files stay as
  they were.
- After a correction and a merge, the real worker having rewritten the files: findscu answers the
  new values at every level and nothing under the duplicate's ID; getscu, movescu and dicomweb-client
  get the rewritten files, which pydicom reads with the right characters.
"""

import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from imaging import storage
from network import scu
from network.models import ModalityNode, SendJob
from records import demographics
from records.models import Instance, Patient, RewriteJob, Study
from tests import dicomgen
from tests.conftest import runserver
from tests.dicomweb_data import fresh_uids, pydicom_file, store
from tests.storescp import storescp
from tests.test_corrections_e2e import wait_jobs_done
from tests.test_dicomweb_wado import dicomweb_client
from tests.test_find_e2e import findscu
from tests.test_get_e2e import getscu
from tests.test_ingest_e2e import storescu, wait_indexed
from tests.test_move_e2e import movescu, received

pytestmark = pytest.mark.e2e

OLD_NAME = "ZHANG^WEI"
NEW_NAME = "Zhang^Wei=张^伟"
NEW_VALUES = {"name": NEW_NAME, "birth_date": "1979-03-08", "sex": "M"}
CORRECTED = (NEW_NAME, "19790308", "M")
OLD = {"PatientName": OLD_NAME, "PatientBirthDate": "19800101", "PatientSex": "F"}


def correct(patient_id: str):
    return demographics.correct_patient(
        patient=Patient.objects.get(patient_id=patient_id),
        changes=NEW_VALUES,
        reason="typed wrongly at the CT",
        user=None,
        address="127.0.0.1",
    )


def check_file(ds: pydicom.Dataset, original: pydicom.Dataset, patient_id: str, old_patient_id: str) -> None:
    """A delivered file: the corrected values, in characters pydicom reads back; the original UIDs;
    one Original Attributes Sequence item (reason CORRECT) with the values it replaced."""
    assert (str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex) == CORRECTED
    assert (ds.PatientName.alphabetic, ds.PatientName.ideographic) == ("Zhang^Wei", "张^伟")
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientID == patient_id
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert ds[uid].value == original[uid].value
    [item] = ds.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == "CORRECT"
    assert item.ModifyingSystem == "IMAGING"
    [old] = item.ModifiedAttributesSequence
    assert (str(old.PatientName), old.PatientBirthDate, old.PatientSex) == (OLD_NAME, "19800101", "F")
    assert old.get("PatientID", patient_id) == old_patient_id


def check_metadata(meta: dict, patient_id: str) -> None:
    assert meta["00100010"]["Value"] == [{"Alphabetic": "Zhang^Wei", "Ideographic": "张^伟"}]
    assert (meta["00100020"]["Value"], meta["00100030"]["Value"], meta["00100040"]["Value"]) == (
        [patient_id],
        ["19790308"],
        ["M"],
    )
    [item] = meta["04000561"]["Value"]  # Original Attributes Sequence
    assert item["04000565"]["Value"] == ["CORRECT"]


def stored_bytes() -> dict[str, bytes]:
    return {i.sop_instance_uid: storage.absolute(i.file_path).read_bytes() for i in Instance.objects.all()}


def test_before_the_rewrite_every_sender_delivers_the_corrected_values(system, tmp_path, rewrites_run_here):
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    [ct_path] = dicomgen.ct_series(tmp_path / "ct", 1, 32, study_uid=study_uid, patient_id="E2E-PEND")
    ct = pydicom.dcmread(ct_path)
    rle = fresh_uids(pydicom_file("MR_small_RLE.dcm", PatientID="E2E-PEND"), study=study_uid)
    originals = {}
    for ds in (ct, rle):
        for keyword, value in OLD.items():
            setattr(ds, keyword, value)
        store(ds)
        originals[ds.SOPInstanceUID] = ds
    on_disk = stored_bytes()
    record = correct("E2E-PEND")
    assert rewrites_run_here == [RewriteJob.objects.get(correction=record).pk]  # not queued: it stays pending

    def check_all(got: dict[str, pydicom.Dataset]) -> None:
        assert set(got) == set(originals)
        for uid, ds in got.items():
            check_file(ds, originals[uid], "E2E-PEND", "E2E-PEND")

    # C-GET: getscu proposes uncompressed syntaxes only, so the RLE image is decompressed from the corrected file.
    result = getscu(system.port, tmp_path / "got", "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}")
    assert result.returncode == 0, result.stderr
    check_all(received(tmp_path / "got"))
    # C-MOVE to a storescp that takes RLE as stored.
    with storescp(tmp_path / "moved", tmp_path / "storescp-moved.log", "+xa", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        result = movescu(system.port, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}")
        assert result.returncode == 0, result.stderr
    moved = received(tmp_path / "moved")
    check_all(moved)
    assert moved[rle.SOPInstanceUID].file_meta.TransferSyntaxUID == RLELossless
    # Send to node.
    with storescp(tmp_path / "sent", tmp_path / "storescp-sent.log") as port:
        node = ModalityNode.objects.create(ae_title="TARGET", host="127.0.0.1", port=port)
        study = Study.objects.get(study_instance_uid=study_uid)
        job = SendJob.objects.create(study=study, study_instance_uid=study_uid, node=node)
        assert scu.send_study(study.pk, node.pk, job.pk).state == "succeeded"
    check_all(received(tmp_path / "sent"))
    # WADO-RS with dicomweb-client.
    with runserver(system.logs, "runserver-senders") as web:
        client = dicomweb_client(web, "Doctor", username="senders-doctor")
        check_all({ds.SOPInstanceUID: ds for ds in client.retrieve_study(study_uid)})
        metadata = client.retrieve_study_metadata(study_uid)
    assert len(metadata) == 2
    for meta in metadata:
        check_metadata(meta, "E2E-PEND")

    assert stored_bytes() == on_disk  # the files wait for their job
    assert RewriteJob.objects.get(correction=record).state == "pending"


def test_after_a_correction_and_a_merge_every_client_sees_the_rewritten_files(system, tmp_path):
    keep_files = dicomgen.ct_series(tmp_path / "keep", 2, 32, patient_id="E2E-KEEP", patient_name=OLD_NAME)
    temporary = dicomgen.ct_series(tmp_path / "tmp", 1, 32, patient_id="E2E-TMP", patient_name=OLD_NAME, seed=3)
    originals = {}
    for path in (*keep_files, *temporary):
        ds = pydicom.dcmread(path)
        for keyword, value in OLD.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
        originals[ds.SOPInstanceUID] = ds
    assert storescu(system.port, *keep_files, *temporary).returncode == 0
    wait_indexed(originals)
    first = pydicom.dcmread(keep_files[0])
    keep_study, merged_study = first.StudyInstanceUID, pydicom.dcmread(temporary[0]).StudyInstanceUID

    correct("E2E-KEEP")
    demographics.merge_patients(
        keep=Patient.objects.get(patient_id="E2E-KEEP"),
        duplicate=Patient.objects.get(patient_id="E2E-TMP"),
        reason="the same patient, registered under a temporary ID",
        user=None,
        address="127.0.0.1",
    )
    jobs = wait_jobs_done(2)
    assert sum(job.done for job in jobs) == 3
    old_id = {uid: "E2E-TMP" if ds.StudyInstanceUID == merged_study else "E2E-KEEP" for uid, ds in originals.items()}

    # C-FIND at every level: the new values; nothing under the duplicate's ID.
    patient_keys = ("PatientName", "PatientBirthDate", "PatientSex")

    def find(*keys, model="-P"):
        result, responses = findscu(system.port, tmp_path, *keys, *patient_keys, model=model)
        assert result.returncode == 0, result.stderr
        return responses

    [patient] = find("QueryRetrieveLevel=PATIENT", "PatientID=E2E-KEEP", "NumberOfPatientRelatedStudies")
    assert (str(patient.PatientName), patient.PatientBirthDate, patient.PatientSex) == CORRECTED
    assert patient.NumberOfPatientRelatedStudies == 2
    studies = find("QueryRetrieveLevel=STUDY", "PatientID=E2E-KEEP", "StudyInstanceUID")
    assert {s.StudyInstanceUID for s in studies} == {keep_study, merged_study}
    series = find("QueryRetrieveLevel=SERIES", "PatientID=E2E-KEEP", f"StudyInstanceUID={merged_study}")
    images = find(
        "QueryRetrieveLevel=IMAGE",
        "PatientID=E2E-KEEP",
        f"StudyInstanceUID={keep_study}",
        f"SeriesInstanceUID={first.SeriesInstanceUID}",
        "SOPInstanceUID",
    )
    assert len(series) == 1 and len(images) == 2
    for response in (*studies, *series, *images):
        assert (str(response.PatientName), response.PatientBirthDate, response.PatientSex) == CORRECTED
    assert find("QueryRetrieveLevel=PATIENT", "PatientID=E2E-TMP") == []
    assert find("QueryRetrieveLevel=STUDY", "PatientID=E2E-TMP", "StudyInstanceUID", model="-S") == []
    assert find("QueryRetrieveLevel=SERIES", "PatientID=E2E-TMP", f"StudyInstanceUID={merged_study}") == []

    def check_all(got: dict[str, pydicom.Dataset]) -> None:
        assert set(got) == set(originals)
        for uid, ds in got.items():
            check_file(ds, originals[uid], "E2E-KEEP", old_id[uid])

    both = f"StudyInstanceUID={keep_study}\\{merged_study}"
    result = getscu(system.port, tmp_path / "got", "QueryRetrieveLevel=STUDY", both)
    assert result.returncode == 0, result.stderr
    check_all(received(tmp_path / "got"))
    with storescp(tmp_path / "moved", tmp_path / "storescp.log", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        result = movescu(system.port, "QueryRetrieveLevel=PATIENT", "PatientID=E2E-KEEP", model="-P")
        assert result.returncode == 0, result.stderr
    check_all(received(tmp_path / "moved"))
    # The stored files themselves, as pydicom reads them.
    check_all({i.sop_instance_uid: pydicom.dcmread(storage.absolute(i.file_path)) for i in Instance.objects.all()})

    with runserver(system.logs, "runserver-senders") as web:
        client = dicomweb_client(web, "Doctor", username="senders-doctor")
        metadata = [*client.retrieve_study_metadata(keep_study), *client.retrieve_study_metadata(merged_study)]
    assert len(metadata) == 3
    for meta in metadata:
        check_metadata(meta, "E2E-KEEP")
