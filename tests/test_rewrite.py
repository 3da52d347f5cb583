"""The files follow a correction: every affected file rewritten with the index's values, UIDs kept,
text in UTF-8 when needed (sequences too), the old values in the Original Attributes Sequence,
atomically, once, and resumable after the rewriting process is killed."""

import datetime as dt
import hashlib
import io
import os
import signal
import subprocess
import sys
import textwrap

import pydicom
import pytest
from django.conf import settings
from pydicom.data import get_charset_files

from imaging import charsets, ingest, rewrite, storage
from records import demographics
from records.models import Instance, Patient, RewriteItem, RewriteJob
from tests import dicomgen, procs
from tests.conftest import database_url
from tests.dicomweb_data import fresh_uids, pydicom_file, store, store_generated

NEW_NAME = "Zhang^Wei=张^伟"


def read(ds) -> pydicom.Dataset:
    return pydicom.dcmread(storage.absolute(storage.instance_relpath(ds.SOPInstanceUID)))


def correct_name(patient_id: str, **more):
    return demographics.correct_patient(
        patient=Patient.objects.get(patient_id=patient_id),
        changes={"name": NEW_NAME, **more},
        reason="typed wrongly",
        user=None,
        address="192.0.2.1",
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "old_name"),
    [
        ("chrX2.dcm", "Wang^XiaoDong=王^小东"),  # GB18030
        ("chrH31.dcm", "Yamada^Tarou=山田^太郎=やまだ^たろう"),  # ISO 2022 IR 87
        ("chrX1.dcm", "Wang^XiaoDong=王^小東"),  # already UTF-8
    ],
)
def test_a_file_in_any_character_set_is_rewritten_in_utf8_with_its_old_values_kept(name, old_name):
    ds = fresh_uids(pydicom_file(name, PatientID=f"RW-{name}"))
    store(ds)
    before = pydicom.dcmread(get_charset_files(name)[0])
    record = correct_name(f"RW-{name}", birth_date="1979-03-08")
    job = RewriteJob.objects.get(correction=record)

    assert rewrite.run_job(job.pk).state == "done"

    back = read(ds)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == NEW_NAME
    assert back.PatientBirthDate == "19790308"
    assert (back.StudyInstanceUID, back.SeriesInstanceUID, back.SOPInstanceUID) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    (original,) = back.OriginalAttributesSequence
    (old,) = original.ModifiedAttributesSequence
    assert str(old.PatientName) == old_name
    assert old.PatientBirthDate == before.get("PatientBirthDate", "")
    assert original.ReasonForTheAttributeModification == "CORRECT"
    assert original.ModifyingSystem == settings.DICOM_AE_TITLE
    assert original.AttributeModificationDateTime.startswith(record.at.strftime("%Y%m%d"))
    # The rest of the data set is as it was (values as text, whatever their bytes were).
    for keyword in ("PatientID", "StudyDate", "Modality"):
        assert back.get(keyword) == ds.get(keyword)
    instance = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
    data = storage.absolute(instance.file_path).read_bytes()
    assert (instance.file_size, instance.checksum) == (len(data), hashlib.sha256(data).hexdigest())
    assert instance.specific_character_set == "ISO_IR 192"

    # Again: nothing changes, not a byte.
    again = rewrite.plan(correction=record, instance_ids=[instance.pk])
    rewrite.run_job(again.pk)
    assert storage.absolute(instance.file_path).read_bytes() == data
    assert not RewriteItem.objects.get(job=again).changed


@pytest.mark.django_db
def test_sequence_items_with_their_own_character_set_end_up_in_utf8_too():
    ds = fresh_uids(pydicom_file("chrSQEncoding1.dcm", PatientID="RW-SQ"))
    store(ds)
    record = correct_name("RW-SQ")
    rewrite.run_job(RewriteJob.objects.get(correction=record).pk)
    back = read(ds)
    (item,) = back.RequestedProcedureCodeSequence
    assert "SpecificCharacterSet" not in item
    assert str(item.PatientName) == "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"
    raw = storage.absolute(storage.instance_relpath(ds.SOPInstanceUID)).read_bytes()
    assert "山田".encode() in raw and b"\x1b$B" not in raw  # UTF-8, no ISO 2022 escape left


@pytest.mark.django_db
def test_a_late_arrival_file_is_rewritten_with_the_corrected_values(tmp_path):
    (ds,) = store_generated(dicomgen.ct_series(tmp_path, 1, 32, patient_id="RW-LATE"), PatientName="ZHANG^WEI")
    record = correct_name("RW-LATE")
    rewrite.run_job(RewriteJob.objects.get(correction=record).pk)
    store(ds)  # the modality sends the slice again, with the old name
    assert str(read(ds).PatientName) == "ZHANG^WEI"
    (job,) = rewrite.plan_late([Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID).pk])
    rewrite.run_job(job.pk)
    back = read(ds)
    assert str(back.PatientName) == NEW_NAME
    assert len(back.OriginalAttributesSequence) == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("group", [8, 1])  # files whose fsyncs overlap (REWRITE_GROUP_FILES), or one by one
def test_a_rewrite_killed_halfway_resumes_and_corrects_every_file_exactly_once(
    tmp_path, rewrites_run_here, group, settings
):
    settings.REWRITE_GROUP_FILES = group
    slices = store_generated(dicomgen.ct_series(tmp_path, 12, 32, patient_id="RW-KILL"), PatientName="ZHANG^WEI")
    record = correct_name("RW-KILL")
    job = RewriteJob.objects.get(correction=record)
    assert rewrites_run_here == [job.pk]
    # The child rewrites, and stops for good after the 5th file is in place but before
    # it is marked done: the worst moment for "exactly once".
    script = textwrap.dedent(
        f"""
        import sys, django
        django.setup()
        from imaging import rewrite
        seen = []
        def on_file(item):
            seen.append(item)
            print("file", len(seen), flush=True)
            if len(seen) == 5:
                sys.stdin.read()
        rewrite.run_job({job.pk}, on_file=on_file)
        """
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "imaging.settings",
        "DATABASE_URL": database_url(),
        "STORAGE_DIR": str(settings.STORAGE_DIR),
        "REWRITE_GROUP_FILES": str(group),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        cwd=procs.ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for expected in range(1, 6):
            line = child.stdout.readline()
            assert line == f"file {expected}\n", child.stderr.read() if not line else line
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    job.refresh_from_db()
    assert (job.state, job.done) == ("running", 4)  # killed with the 5th in place, not yet marked
    # Files are written ``group`` at a time and marked once all of them are durable.
    written = max(group, 5)
    assert sum(str(read(ds).PatientName) == NEW_NAME for ds in slices) == written

    job = rewrite.run_job(job.pk)

    assert (job.state, job.done, job.failed, job.total) == ("done", 12, 0, 12)
    for ds in slices:
        back = read(ds)
        assert str(back.PatientName) == NEW_NAME
        assert len(back.OriginalAttributesSequence) == 1
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.PixelData == ds.PixelData
    changed = list(RewriteItem.objects.filter(job=job).order_by("pk").values_list("changed", flat=True))
    # Those written but not marked were already right on resume: left alone.
    assert changed == [True] * 4 + [False] * (written - 4) + [True] * (12 - written)
    assert not list(storage.root().glob("instances/**/*.part"))


@pytest.mark.django_db
def test_a_job_writes_the_index_values_of_now_not_of_its_correction(tmp_path):
    (ds,) = store_generated(dicomgen.ct_series(tmp_path, 1, 32, patient_id="RW-TWICE"), PatientName="ZHANG^WEI")
    first = correct_name("RW-TWICE")
    demographics.correct_patient(
        patient=Patient.objects.get(patient_id="RW-TWICE"),
        changes={"name": "Zhang^Wei=张^维"},
        reason="the given name too",
        user=None,
        address=None,
    )
    for job in RewriteJob.objects.order_by("-pk"):  # the later job runs first
        rewrite.run_job(job.pk)
    back = read(ds)
    assert str(back.PatientName) == "Zhang^Wei=张^维"
    assert len(back.OriginalAttributesSequence) == 1
    assert first.rewrite_jobs.get().items.get().changed is False


def test_ingest_reads_a_rewritten_file_with_its_corrected_values(tmp_path):
    ds = pydicom.dcmread(get_charset_files("chrX2.dcm")[0])
    ds.decode()
    rewrite.rewrite_dataset(ds, {"PatientName": NEW_NAME}, at=dt.datetime.now(dt.UTC), source="CT")
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    header = ingest.read_header(path)
    assert charsets.person_name(header, "PatientName")[0] == NEW_NAME
    assert header.SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.django_db
def test_until_a_file_is_rewritten_a_sender_gets_the_corrected_bytes(tmp_path):
    slices = store_generated(dicomgen.ct_series(tmp_path, 2, 32, patient_id="RW-SEND"), PatientName="ZHANG^WEI")
    record = correct_name("RW-SEND")
    ids = list(Instance.objects.filter(series__study__patient__patient_id="RW-SEND").values_list("pk", flat=True))
    waiting = rewrite.pending(ids)
    assert waiting == {pk: record.at for pk in ids}

    instance = Instance.objects.select_related("series__study__patient").get(pk=ids[0])
    on_disk = storage.absolute(instance.file_path).read_bytes()
    data = rewrite.corrected_bytes(instance, at=waiting[instance.pk])
    sent = pydicom.dcmread(io.BytesIO(bytes(data)))
    assert str(sent.PatientName) == NEW_NAME
    assert sent.SOPInstanceUID == instance.sop_instance_uid
    assert len(sent.OriginalAttributesSequence) == 1
    assert storage.absolute(instance.file_path).read_bytes() == on_disk  # the file itself is the job's

    rewrite.run_job(RewriteJob.objects.get(correction=record).pk)
    assert rewrite.pending(ids) == {}
    assert rewrite.corrected_bytes(instance, at=record.at) is None
    assert {str(read(ds).PatientName) for ds in slices} == {NEW_NAME}


@pytest.mark.django_db
def test_a_zip_downloaded_before_the_rewrite_already_carries_the_correction(tmp_path):
    import zipfile

    from tests.dicomweb_data import client_for

    slices = store_generated(dicomgen.ct_series(tmp_path, 2, 32, patient_id="RW-ZIP"), PatientName="ZHANG^WEI")
    correct_name("RW-ZIP")
    response = client_for("Doctor").get(f"/studies/{slices[0].StudyInstanceUID}/download.zip")
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    assert archive.testzip() is None
    sent = [pydicom.dcmread(io.BytesIO(archive.read(name))) for name in archive.namelist()]
    assert [str(ds.PatientName) for ds in sent] == [NEW_NAME, NEW_NAME]
    assert sorted(ds.SOPInstanceUID for ds in sent) == sorted(ds.SOPInstanceUID for ds in slices)
    assert {str(read(ds).PatientName) for ds in slices} == {"ZHANG^WEI"}  # the files wait for the job


@pytest.mark.django_db
def test_a_file_that_declares_no_character_set_is_read_with_its_nodes_fallback(tmp_path):
    from network.models import ModalityNode

    ModalityNode.objects.create(ae_title="CTGB", host="127.0.0.1", port=11112, fallback_charset="GB18030")
    ds = pydicom.dcmread(dicomgen.ct_series(tmp_path, 1, 32, patient_id="RW-GB")[0])
    del ds.SpecificCharacterSet
    ds["PatientName"].value = "Wang^Fang=王^芳".encode("gb18030")
    ds.StudyDescription = "胸部".encode("gb18030")  # noqa: RUF001 - bytes as the modality wrote them
    ds.file_meta.SourceApplicationEntityTitle = "CTGB"
    store(ds)
    assert Patient.objects.get(patient_id="RW-GB").name == "Wang^Fang=王^芳"
    record = correct_name("RW-GB")
    rewrite.run_job(RewriteJob.objects.get(correction=record).pk)
    back = read(ds)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert (str(back.PatientName), back.StudyDescription) == (NEW_NAME, "胸部")
    assert str(back.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == "Wang^Fang=王^芳"


@pytest.mark.django_db
def test_resume_queues_only_the_jobs_no_live_worker_holds(tmp_path, rewrites_run_here):
    from imaging import leases

    store_generated(dicomgen.ct_series(tmp_path, 2, 16, patient_id="RW-RESUME"), PatientName="ZHANG^WEI")
    jobs = [RewriteJob.objects.get(correction=correct_name("RW-RESUME", sex=sex)) for sex in ("M", "F", "O")]
    rewrites_run_here.clear()
    RewriteJob.objects.filter(pk__in=[j.pk for j in jobs]).update(state="running")
    live, dead, free = jobs
    # A live holder (this process) and a dead one of this host (a pid that no longer runs).
    assert leases.acquire(rewrite.lease_name(live.pk), leases.new_holder(), 600)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_holder = f"{leases.socket.gethostname()}:{gone.stdout.strip()}:00000000"
    assert leases.holder_gone(dead_holder) and not leases.holder_gone(leases.new_holder())
    assert leases.acquire(rewrite.lease_name(dead.pk), dead_holder, 600)

    assert rewrite.resume_pending() == [dead.pk, free.pk]
    assert rewrites_run_here == [dead.pk, free.pk]
    # A pending job newer than the interval is most likely still in the queue: left alone.
    RewriteJob.objects.filter(pk=free.pk).update(state="pending")
    rewrites_run_here.clear()
    assert rewrite.resume_pending(queued_before=dt.datetime(2000, 1, 1, tzinfo=dt.UTC)) == [dead.pk]
    # A job held by a live worker is not run twice at once: the second copy does nothing.
    assert rewrite.run_job(live.pk).done == 0
    assert rewrite.run_job(dead.pk).state == "done"  # taken over from the dead holder


@pytest.mark.django_db
def test_a_file_re_stored_while_it_is_rewritten_is_not_overwritten_with_the_old_one(tmp_path, monkeypatch):
    (ds,) = store_generated(dicomgen.ct_series(tmp_path, 1, 16, patient_id="RW-RACE"), PatientName="ZHANG^WEI")
    job = RewriteJob.objects.get(correction=correct_name("RW-RACE"))
    relpath = storage.instance_relpath(ds.SOPInstanceUID)
    resent = pydicom.dcmread(storage.absolute(relpath))
    resent.ImageComments = "sent again by the modality"
    buffer = io.BytesIO()
    resent.save_as(buffer, enforce_file_format=True)
    built = rewrite.corrected
    calls = []

    def corrected_then_a_re_store(*args, **kwargs):
        result = built(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:  # the modality's copy lands between the rewrite's read and its rename
            storage.write_atomic(relpath, [buffer.getvalue()])
        return result

    monkeypatch.setattr(rewrite, "corrected", corrected_then_a_re_store)

    assert rewrite.run_job(job.pk).state == "done"

    back = read(ds)
    assert len(calls) == 2  # read again after the re-store
    assert (str(back.PatientName), back.ImageComments) == (NEW_NAME, "sent again by the modality")
    assert len(back.OriginalAttributesSequence) == 1


def test_a_lease_holder_that_died_but_was_not_reaped_is_gone():
    """A pool process killed with its worker, left a zombie (a container's PID 1 reaps nothing), holds nothing."""
    from imaging import leases

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    holder = f"{leases.socket.gethostname()}:{child.pid}:00000000"
    try:
        # Ended, not reaped yet: it still answers signal 0.
        procs.wait_for(lambda: leases._zombie(child.pid), 10, "the child to end")
        assert leases.holder_gone(holder)
    finally:
        child.wait()
    assert leases.holder_gone(holder)  # reaped: no such process at all
    assert not leases._zombie(os.getpid())
