"""Bring stored files in line with a correction: the index's values written into each file.

A correction (records/demographics.py) changes the index at once and plans a
``RewriteJob``: one item per affected instance. The worker then rewrites one file
at a time:

- the values written are the index's as they are when the file is rewritten (the
  patient's ID, issuer, name, birth date and sex; the study's accession number,
  description and referring physician), so a job that runs late never writes back
  what a later correction fixed;
- Study, Series and SOP Instance UIDs, the file meta and the pixel data are kept;
- the old values go into a new Original Attributes Sequence item (PS3.3 C.12.1.1.9):
  Modified Attributes Sequence, Attribute Modification DateTime (the correction's),
  Modifying System (DICOM_AE_TITLE), Source of Previous Values (the AE that sent the
  file), Reason "CORRECT";
- text is decoded with the file's character set (a node's fallback for a file that
  declares none, as ingest reads it); when the file declared anything but the default
  repertoire, or a value is not ASCII, the whole data set, sequences included, is
  written as ISO_IR 192 (UTF-8) and declared so, once, at the top;
- the new file replaces the old one atomically (storage.write_atomic): a reader gets
  the old file or the new one, whole;
- a file already carrying the index's values is not written again, so running a job
  twice, or resuming one killed between writing a file and marking it done, changes
  nothing: each file is corrected exactly once.

One file is in memory at a time (read whole by pydicom, written to a buffer and to its
temporary file). Files are renamed into place ``REWRITE_GROUP_FILES`` at a time, their
fsyncs overlapping (storage.GroupCommit); a job holds a lease (``lease_name``) so that
one worker runs it at a time, and ``resume_pending`` carries on the jobs of a killed one.
"""

import datetime as dt
import hashlib
import io
import logging
import time

import pydicom
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging import charsets, ingest, leases, storage
from records.models import Correction, Instance, RewriteItem, RewriteJob

log = logging.getLogger(__name__)

State = RewriteJob.State
UTF8 = "ISO_IR 192"
# The attributes a correction may change, and the Person Name ones among them.
KEYWORDS = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyDescription",
    "ReferringPhysicianName",
)
PERSON_NAMES = ("PatientName", "ReferringPhysicianName")
_BATCH = 200


def plan(*, correction: Correction, instance_ids) -> RewriteJob | None:
    """A job with one item per instance (None when there is none). Call inside the correction's transaction."""
    ids = sorted(set(instance_ids))
    if not ids:
        return None
    job = RewriteJob.objects.create(correction=correction, total=len(ids))
    RewriteItem.objects.bulk_create([RewriteItem(job=job, instance_id=pk) for pk in ids], batch_size=500)
    return job


def plan_late(instance_ids) -> list[RewriteJob]:
    """Jobs for late arrivals indexed with corrected values: one per patient, under its latest correction."""
    from django.db.models import Q

    jobs = []
    by_patient: dict[int, list[int]] = {}
    rows = Instance.objects.filter(pk__in=set(instance_ids)).values_list("pk", "series__study__patient_id")
    for pk, patient_pk in rows:
        by_patient.setdefault(patient_pk, []).append(pk)
    for patient_pk, ids in by_patient.items():
        latest = Correction.objects.filter(Q(patient_id=patient_pk) | Q(study__patient_id=patient_pk)).first()
        if latest is not None:
            with transaction.atomic():
                job = plan(correction=latest, instance_ids=ids)
                transaction.on_commit(lambda job_id=job.pk: queue(job_id))
            jobs.append(job)
    return jobs


def queue(job_id: int) -> str:
    """Hand the job to the worker; returns "" or why it could not be queued (it stays pending, resumable)."""
    from imaging import tasks

    try:
        tasks.rewrite_files.apply_async((job_id,), retry=False)
        return ""
    except Exception as exc:  # broker down: the job stays pending; resume_pending() picks it up
        log.warning("cannot queue rewrite job %s: %s", job_id, exc)
        RewriteJob.objects.filter(pk=job_id).update(error=f"could not be queued: {exc}"[:500])
        return str(exc)


def target_values(instance: Instance) -> dict[str, str]:
    """What the index says the file should carry, as DICOM text (dates YYYYMMDD)."""
    study = instance.series.study
    patient = study.patient
    return {
        "PatientID": patient.patient_id,
        "IssuerOfPatientID": patient.issuer,
        "PatientName": patient.name,
        "PatientBirthDate": patient.birth_date.strftime("%Y%m%d") if patient.birth_date else "",
        "PatientSex": patient.sex,
        "AccessionNumber": study.accession_number,
        "StudyDescription": study.description,
        "ReferringPhysicianName": study.referring_physician,
    }


def _file_value(ds: Dataset, keyword: str) -> str:
    return charsets.person_name(ds, keyword)[0] if keyword in PERSON_NAMES else charsets.text(ds, keyword)


def _fallbacks(instance: Instance, cache: "ingest.RowCache | None" = None) -> list[str | None]:
    """The sending node's fallback character set, as ingest applies it (``cache``: a job's, one query a node)."""
    if not instance.source_ae:
        return []
    return [(cache or ingest.RowCache()).node_fallback(instance.source_ae)]


def _differences(ds: Dataset, target: dict[str, str]) -> dict[str, str]:
    """{keyword: value} of the targets the data set does not carry yet."""
    return {kw: value for kw, value in target.items() if _file_value(ds, kw) != value}


def _read_full(path, fallbacks: list[str | None]) -> Dataset:
    """The whole data set, every text value decoded to str with the character set ingest would read it with."""
    ds = pydicom.dcmread(path)
    fallbacks = [*fallbacks, settings.DICOM_FALLBACK_CHARSET]
    charsets.replace_unknown(ds, fallbacks)
    charsets.apply_fallback(ds, next((f for f in fallbacks if f), None))
    ds.decode()
    return ds


def _all_ascii(ds: Dataset) -> bool:
    for elem in ds.iterall():
        value = elem.value
        if isinstance(value, str) and not value.isascii():
            return False
        if isinstance(value, list | tuple | pydicom.multival.MultiValue):
            if any(isinstance(v, str | pydicom.valuerep.PersonName) and not str(v).isascii() for v in value):
                return False
        elif isinstance(value, pydicom.valuerep.PersonName) and not str(value).isascii():
            return False
    return True


def _to_utf8(ds: Dataset) -> None:
    """Declare ISO_IR 192 at the top and nowhere below: every value is a str already (``decode``)."""
    for elem in list(ds.iterall()):
        if elem.VR == "SQ":
            for item in elem.value:
                if "SpecificCharacterSet" in item:
                    del item.SpecificCharacterSet
    # PersonName values keep the bytes they were read from: make them plain text again.
    for elem in ds.iterall():
        if elem.VR == "PN" and elem.value is not None:
            if isinstance(elem.value, list | tuple | pydicom.multival.MultiValue):
                elem.value = [str(v) for v in elem.value]
            else:
                elem.value = str(elem.value)
    ds.SpecificCharacterSet = UTF8


def _modification_datetime(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S.%f+0000")


def rewrite_dataset(ds: Dataset, changes: dict[str, str], *, at: dt.datetime, source: str) -> None:
    """Write ``changes`` into the decoded ``ds``, the old values into a new Original Attributes Sequence item."""
    old = Dataset()
    for keyword in changes:
        if keyword in ds:
            old.add(pydicom.DataElement(ds[keyword].tag, ds[keyword].VR, ds[keyword].value))
        else:
            setattr(old, keyword, "")  # it was absent: an empty value says so
    item = Dataset()
    item.ModifiedAttributesSequence = Sequence([old])
    item.AttributeModificationDateTime = _modification_datetime(at)
    item.ModifyingSystem = settings.DICOM_AE_TITLE
    item.SourceOfPreviousValues = source
    item.ReasonForTheAttributeModification = "CORRECT"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "OriginalAttributesSequence" not in ds:
        ds.OriginalAttributesSequence = Sequence()
    ds.OriginalAttributesSequence.append(item)
    declared = [t for t in charsets.declared(ds) if t not in ("", "ISO_IR 6")]
    nested = any(elem.VR == "SQ" and any("SpecificCharacterSet" in i for i in elem.value) for elem in ds.iterall())
    if nested or (declared != [UTF8] and (declared or not _all_ascii(ds))):
        _to_utf8(ds)


def _load(instance_id: int) -> Instance:
    return Instance.objects.select_related("series__study__patient").get(pk=instance_id)


def corrected_bytes(instance: Instance, *, at: dt.datetime) -> memoryview | None:
    return corrected(instance, at=at)[0]


def corrected(
    instance: Instance, *, at: dt.datetime, cache: "ingest.RowCache | None" = None
) -> tuple[memoryview | None, str]:
    """The instance's file as the index says it should be (a whole Part 10 file, or None when it already is)
    and the Specific Character Set it declares.

    ``instance`` with its series, study and patient loaded (``select_related``). What the
    rewrite writes, and what a sender can send in its place until the file is rewritten.
    """
    path = storage.absolute(instance.file_path)
    # Read whole once: nearly every file asked about needs the rewrite (a bounded header
    # read first, to spare the whole read of a file already right, cost 10 % more here).
    ds = _read_full(path, _fallbacks(instance, cache))
    changes = _differences(ds, target_values(instance))
    if not changes:
        return None, ""
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if str(ds.get(uid, "")) != str(header_uid(instance, uid)):
            raise ValueError(f"{instance.file_path}: {uid} is not the indexed one; not rewritten")
    rewrite_dataset(ds, changes, at=at, source=instance.source_ae)
    declared = "\\".join(charsets.declared(ds))[:128]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getbuffer(), declared


def rewrite_instance(instance: "Instance | int", *, at: dt.datetime, cache: "ingest.RowCache | None" = None) -> bool:
    """Make the instance's file carry the index's values; True when the file was rewritten.

    ``instance``: its pk, or the row with series, study and patient loaded.
    ``at`` is the correction's time, written as the Attribute Modification DateTime.
    A file already carrying them is left as it is (its size and checksum are checked
    into the index all the same: a crash may have come between the write and them).
    """
    if not isinstance(instance, Instance):
        instance = _load(instance)
    path = storage.absolute(instance.file_path)
    for attempt in range(3):
        read = path.stat()
        data, declared = corrected(instance, at=at, cache=cache)
        if data is None:
            _update_index(instance, path)
            return False
        try:
            # Never over a file stored since it was read (a modality re-sent the image):
            # that one is read and corrected in its turn.
            storage.write_atomic(instance.file_path, [data], replacing=read)
            break
        except storage.Replaced:
            if attempt == 2:
                raise
    Instance.objects.filter(pk=instance.pk).update(
        file_size=len(data),
        checksum=hashlib.sha256(data).hexdigest(),
        specific_character_set=declared,
    )
    return True


def _failure(job_id: int, instance_id: int, exc: BaseException) -> str:
    if isinstance(exc, Instance.DoesNotExist):
        return "the instance was deleted"
    log.error("rewrite job %s: instance %s", job_id, instance_id, exc_info=exc)
    return f"{exc.__class__.__name__}: {exc}"[:500]


def _rewrite_group(job_id: int, instances: dict[int, "Instance | None"], *, at, cache) -> dict[int, tuple[bool, str]]:
    """Rewrite these files, their fsyncs overlapping (storage.GroupCommit); {instance pk: (changed, error)}.

    Each file is read, corrected and written in turn while the earlier ones are made
    durable; the index learns a file's new size and checksum only once it is in place.
    A file replaced meanwhile (a re-store) is read and corrected again on its own.
    """
    group = storage.GroupCommit()
    started: dict = {}
    results: dict[int, tuple[bool, str]] = {}
    for instance_id, instance in instances.items():
        try:
            if instance is None:
                raise Instance.DoesNotExist
            path = storage.absolute(instance.file_path)
            read = path.stat()
            data, declared = corrected(instance, at=at, cache=cache)
            if data is None:
                _update_index(instance, path)
                results[instance_id] = (False, "")
                continue
            dest = storage.write_atomic(instance.file_path, [data], group=group, replacing=read)
            started[dest] = (instance, len(data), hashlib.sha256(data).hexdigest(), declared)
            del data
        except Exception as exc:  # one bad file never stops the others
            results[instance_id] = (False, _failure(job_id, instance_id, exc))
    for dest, exc in group.wait().items():
        instance, size, checksum, declared = started[dest]
        try:
            if isinstance(exc, storage.Replaced):
                results[instance.pk] = (rewrite_instance(instance, at=at, cache=cache), "")
                continue
            if exc is not None:
                raise exc
            Instance.objects.filter(pk=instance.pk).update(
                file_size=size, checksum=checksum, specific_character_set=declared
            )
            results[instance.pk] = (True, "")
        except Exception as failure:
            results[instance.pk] = (False, _failure(job_id, instance.pk, failure))
    return results


def pending(instance_ids) -> dict[int, dt.datetime]:
    """{instance pk: correction time} of the given instances whose file a job has not rewritten yet.

    What a sender asks before sending files as stored: those listed go out as
    ``corrected_bytes(instance, at=...)`` (until a file is rewritten, what we send out
    carries the corrected values). One query; the todo index serves it.
    """
    rows = (
        RewriteItem.objects.filter(instance_id__in=list(instance_ids), done_at__isnull=True)
        .values_list("instance_id", "job__correction__at")
        .order_by("job_id")
    )
    return dict(rows)  # the latest job's correction last, so it wins


def header_uid(instance: Instance, keyword: str) -> str:
    return {
        "StudyInstanceUID": instance.series.study.study_instance_uid,
        "SeriesInstanceUID": instance.series.series_instance_uid,
        "SOPInstanceUID": instance.sop_instance_uid,
    }[keyword]


def _declared_after(path) -> str:
    return "\\".join(charsets.declared(pydicom.dcmread(path, stop_before_pixels=True)))[:128]


def _update_index(instance: Instance, path) -> None:
    size = path.stat().st_size
    if size != instance.file_size or ingest.sha256_file(path) != instance.checksum:
        Instance.objects.filter(pk=instance.pk).update(
            file_size=size, checksum=ingest.sha256_file(path), specific_character_set=_declared_after(path)
        )


def run_job(job_id: int, *, on_file=None) -> RewriteJob:
    """Rewrite the job's files not done yet, in order; safe to run again after a crash.

    ``on_file(item_pk)`` is called after each file is in place and before it is
    marked done (the crash test kills the process there).
    """
    job = RewriteJob.objects.select_related("correction").get(pk=job_id)
    if job.state == State.DONE:
        return job
    try:
        with leases.held(lease_name(job.pk), settings.REWRITE_LEASE_SECONDS, take_from_dead=True) as renew:
            return _run(job, renew, on_file)
    except leases.Busy:
        # Another worker runs it (a redelivered or resumed task): this copy has nothing to do.
        log.info("rewrite job %s: already running elsewhere", job.pk)
        job.refresh_from_db()
        return job


def lease_name(job_id: int) -> str:
    return f"rewrite-job:{job_id}"


def _run(job: RewriteJob, renew, on_file) -> RewriteJob:
    RewriteJob.objects.filter(pk=job.pk).update(state=State.RUNNING, started_at=job.started_at or timezone.now())
    renewed = time.monotonic()
    at = job.correction.at
    cache = ingest.RowCache()  # the nodes' fallback character sets, read once a job
    while True:
        todo = list(
            RewriteItem.objects.filter(job=job, done_at__isnull=True)
            .order_by("pk")
            .values_list("pk", "instance_id")[:_BATCH]
        )
        if not todo:
            break
        rows = Instance.objects.select_related("series__study__patient").in_bulk([i for _pk, i in todo])
        for start in range(0, len(todo), settings.REWRITE_GROUP_FILES):
            group = todo[start : start + settings.REWRITE_GROUP_FILES]
            results = _rewrite_group(job.pk, {i: rows.get(i) for _pk, i in group}, at=at, cache=cache)
            for item_pk, instance_id in group:
                changed, error = results[instance_id]
                renewed = _mark(job, item_pk, changed, error, renew, renewed, on_file)
    RewriteJob.objects.filter(pk=job.pk).update(
        state=State.FAILED if RewriteItem.objects.filter(job=job).exclude(error="").exists() else State.DONE,
        finished_at=timezone.now(),
    )
    job.refresh_from_db()
    return job


def _mark(job: RewriteJob, item_pk: int, changed: bool, error: str, renew, renewed: float, on_file) -> float:
    """Mark one item done (its file in place), renewing the job's lease now and then; returns when it was renewed."""
    if on_file is not None:
        on_file(item_pk)
    if time.monotonic() - renewed > settings.REWRITE_LEASE_SECONDS / 4:
        renew()  # Busy if the lease was lost: another worker carries on from the marks
        renewed = time.monotonic()
    with transaction.atomic():
        # Counted once even if two workers ran the job at once (a redelivered task).
        marked = RewriteItem.objects.filter(pk=item_pk, done_at__isnull=True).update(
            done_at=timezone.now(), changed=changed, error=error
        )
        counts = {"failed": F("failed") + 1, "error": error} if error else {"done": F("done") + 1}
        if marked:
            RewriteJob.objects.filter(pk=job.pk).update(**counts)
    return renewed


def progress(job: RewriteJob) -> dict:
    """What a page or the API shows of a job."""
    return {
        "id": job.pk,
        "correction": job.correction_id,
        "state": job.state,
        "total": job.total,
        "done": job.done,
        "failed": job.failed,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "error": job.error,
    }


def resume_pending(*, queued_before: dt.datetime | None = None) -> list[int]:
    """Queue the unfinished jobs that no live worker holds; returns their ids.

    A job whose worker was killed is ``running`` with a lease that expires (or whose
    holder is gone, on this host); one never queued (the broker was down) is
    ``pending``. ``queued_before``: leave alone the pending jobs created since (their
    task is most likely still waiting in the queue).
    """
    unfinished = RewriteJob.objects.filter(state__in=[State.PENDING, State.RUNNING])
    if queued_before is not None:
        unfinished = unfinished.exclude(state=State.PENDING, created_at__gte=queued_before)
    ids = list(unfinished.order_by("pk").values_list("pk", flat=True))
    busy = leases.taken([lease_name(job_id) for job_id in ids])
    ids = [job_id for job_id in ids if lease_name(job_id) not in busy]
    for job_id in ids:
        queue(job_id)
    return ids


# --- What the senders send until a file is rewritten (ZIP, C-MOVE, C-GET, Send to node, WADO-RS) ---


def mark_pending(instances) -> list:
    """Set ``corrected_at`` on each instance: its correction's time while its rewrite is pending, else None.

    Made where a sender lists what it sends; ``outgoing_file`` then serves the instances
    marked. Returns the instances. One query when no job is pending or running (the
    usual case: a file waits for its rewrite only in a job not finished, as ``run_job``
    marks every item before it ends a job), on the small jobs table: 0.45 ms, where
    asking ``pending`` for 300 instances takes 3.3 ms (SQLite, this machine); two otherwise.
    """
    instances = list(instances)
    open_jobs = instances and RewriteJob.objects.filter(state__in=[State.PENDING, State.RUNNING]).exists()
    waiting = pending(instance.pk for instance in instances) if open_jobs else {}
    for instance in instances:
        instance.corrected_at = waiting.get(instance.pk)
    return instances


def outgoing_file(instance_id: int, *, at: dt.datetime) -> memoryview | None:
    """The whole Part 10 file to send instead of the stored one while the instance's rewrite is pending.

    None when the stored file is to go out: it carries the index's values already (the
    job got there first), the instance is gone, or it cannot be corrected (logged; the
    job records the same failure). Loads the instance with what ``corrected_bytes``
    needs (one query): only instances marked pending pay for it.
    """
    instance = Instance.objects.select_related("series__study__patient").filter(pk=instance_id).first()
    if instance is None:
        return None
    try:
        return corrected_bytes(instance, at=at)
    except Exception:
        log.warning("%s sent as stored: its correction failed", instance.file_path, exc_info=True)
        return None
