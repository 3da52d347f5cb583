"""A rewrite job whose Celery worker is killed (SIGKILL, the whole worker) halfway through: the
next worker to start carries it on, and every file ends up whole and corrected exactly once."""

import os
import signal

import pydicom
import pytest
from django.conf import settings

from imaging import storage
from records import demographics
from records.models import Patient, RewriteItem, RewriteJob
from tests import dicomgen, procs
from tests.conftest import service_env, start_worker
from tests.dicomweb_data import store_generated

pytestmark = pytest.mark.e2e

NEW_NAME = "Zhang^Wei=张^伟"
SLICES = 120


def procs_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def job_state(pk: int) -> RewriteJob:
    return RewriteJob.objects.get(pk=pk)


@pytest.mark.django_db(transaction=True)
def test_a_rewrite_job_survives_a_sigkill_of_its_worker(redis_url, tmp_path, rewrites_run_here):
    slices = store_generated(
        dicomgen.ct_series(tmp_path / "ct", SLICES, 256, patient_id="RW-WORKER"), PatientName="ZHANG^WEI"
    )
    record = demographics.correct_patient(
        patient=Patient.objects.get(patient_id="RW-WORKER"),
        changes={"name": NEW_NAME, "birth_date": "1979-03-08"},
        reason="typed wrongly at the CT",
        user=None,
        address="127.0.0.1",
    )
    job = RewriteJob.objects.get(correction=record)
    # A broker of their own (another Redis database): the session's worker never sees this job.
    # Nothing queues it here: the worker that starts finds it pending and carries it on.
    env = service_env(redis_url.rsplit("/", 1)[0] + "/3", REWRITE_LEASE_SECONDS="600")
    first = start_worker(env, tmp_path / "first.log", f"rewrite-first-{os.getpid()}", concurrency=1)
    try:
        procs.wait_for(lambda: job_state(job.pk).done >= 10, 60, "the first worker to rewrite 10 files")
        os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool, at once
        first.wait(30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    killed = job_state(job.pk)
    assert killed.state == "running" and 10 <= killed.done < SLICES, (killed.state, killed.done)

    # Its lease is far from expiring (600 s): a worker started on the same host sees its
    # holder is dead and takes the job over at once.
    second = start_worker(env, tmp_path / "second.log", f"rewrite-second-{os.getpid()}", concurrency=1)
    try:
        done = procs.wait_for(lambda: job_state(job.pk).state == "done" and job_state(job.pk), 90, "the job to finish")
    finally:
        procs.stop(second)

    assert (done.done, done.failed, done.total) == (SLICES, 0, SLICES)
    assert RewriteItem.objects.filter(job=done, done_at__isnull=True).count() == 0
    for ds in slices:
        back = pydicom.dcmread(storage.absolute(storage.instance_relpath(ds.SOPInstanceUID)))
        assert (str(back.PatientName), back.PatientBirthDate) == (NEW_NAME, "19790308")
        assert len(back.OriginalAttributesSequence) == 1  # corrected exactly once
        assert back.SOPInstanceUID == ds.SOPInstanceUID
        assert back.PixelData == ds.PixelData  # whole
    # The killed worker may leave the temporary files of the writes it was in (never a
    # destination): named by its pid, removed by reindex's walk once they are old.
    left = [p for p in storage.root().glob("instances/**/.*") if p.suffix in (".part", ".tmp")]
    assert len(left) <= settings.REWRITE_GROUP_FILES
    assert all(procs_gone(int(p.name.split(".dcm.")[1].split(".")[0])) for p in left), left
    assert "already running elsewhere" not in (tmp_path / "second.log").read_text()
