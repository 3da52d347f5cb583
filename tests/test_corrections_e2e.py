"""A correction against the running system: storescu sends a CT, the front desk corrects the name,
the real worker rewrites every file, findscu answers the new values, and a slice re-sent with the old
name is indexed and rewritten with the corrected one, which C-FIND and WADO-RS answer."""

import pydicom
import pytest

from imaging import storage
from records import demographics
from records.models import Instance, Patient, RewriteJob
from tests import dicomgen, procs
from tests.conftest import runserver
from tests.test_dicomweb_wado import dicomweb_client
from tests.test_find_e2e import findscu
from tests.test_ingest_e2e import storescu, wait_indexed

pytestmark = pytest.mark.e2e

NEW_NAME = "Zhang^Wei=张^伟"


def stored(ds) -> pydicom.Dataset:
    relpath = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID).file_path
    return pydicom.dcmread(storage.absolute(relpath))


def wait_jobs_done(count: int, timeout: float = 60) -> list[RewriteJob]:
    def done():
        jobs = list(RewriteJob.objects.order_by("pk"))
        return len(jobs) == count and all(job.state == "done" for job in jobs) and jobs

    return procs.wait_for(done, timeout, f"{count} rewrite job(s) to finish")


def test_a_correction_reaches_every_file_c_find_and_a_late_resend(system, tmp_path):
    files = dicomgen.ct_series(tmp_path / "ct", 3, 64, patient_id="E2E-ZW", patient_name="ZHANG^WEI")
    slices = [pydicom.dcmread(path) for path in files]
    assert storescu(system.port, *files).returncode == 0
    wait_indexed([ds.SOPInstanceUID for ds in slices])

    demographics.correct_patient(
        patient=Patient.objects.get(patient_id="E2E-ZW"),
        changes={"name": NEW_NAME, "birth_date": "1979-03-08"},
        reason="typed wrongly at the CT",
        user=None,
        address="127.0.0.1",
    )
    # C-FIND reads the index: the new values at once, before any file is rewritten.
    result, responses = findscu(
        system.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=E2E-ZW", "PatientName", "PatientBirthDate"
    )
    assert result.returncode == 0, result.stderr
    assert [(str(r.PatientName), r.PatientBirthDate) for r in responses] == [(NEW_NAME, "19790308")]

    (job,) = wait_jobs_done(1)
    assert (job.done, job.total) == (3, 3)
    for ds in slices:
        back = stored(ds)
        assert (str(back.PatientName), back.SpecificCharacterSet) == (NEW_NAME, "ISO_IR 192")
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert len(back.OriginalAttributesSequence) == 1

    # The modality sends the first slice again, as it was: old name, old birth date.
    assert storescu(system.port, files[0]).returncode == 0
    late_job = wait_jobs_done(2)[1]
    assert late_job.total == 1
    back = stored(slices[0])
    assert (str(back.PatientName), back.PatientBirthDate) == (NEW_NAME, "19790308")
    assert str(back.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == "ZHANG^WEI"
    assert Patient.objects.get(patient_id="E2E-ZW").name == NEW_NAME
    result, responses = findscu(system.port, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=E2E-ZW", "PatientName")
    assert [str(r.PatientName) for r in responses] == [NEW_NAME]
    # WADO-RS (dicomweb-client, as a viewer asks) serves the re-sent slice corrected too.
    with runserver(system.logs, "runserver-late") as web:
        client = dicomweb_client(web, "Doctor", username="late-doctor")
        meta = client.retrieve_instance_metadata(
            slices[0].StudyInstanceUID, slices[0].SeriesInstanceUID, slices[0].SOPInstanceUID
        )
        instance = client.retrieve_instance(
            slices[0].StudyInstanceUID, slices[0].SeriesInstanceUID, slices[0].SOPInstanceUID
        )
    assert meta["00100010"]["Value"] == [{"Alphabetic": "Zhang^Wei", "Ideographic": "张^伟"}]
    assert meta["00100030"]["Value"] == ["19790308"]
    assert str(instance.PatientName) == NEW_NAME
    assert instance.SOPInstanceUID == slices[0].SOPInstanceUID
