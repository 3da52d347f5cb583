"""Thin Celery tasks over the plain functions in ingest, thumbnails, reindex, rewrite and the access record."""

import contextlib
import datetime as dt
import functools
import logging
import os
import socket
import time

import redis
from celery import shared_task
from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from imaging import ingest, rewrite, spool, thumbnails
from records import access

log = logging.getLogger(__name__)

# A deadlock or a locked SQLite file is transient: the whole batch is simply
# indexed again (indexing is idempotent).
_RETRY = {"autoretry_for": (OperationalError,), "retry_backoff": 0.5, "retry_jitter": True, "max_retries": 8}


@functools.cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=5)


def _pending_key(series_id: int) -> str:
    return f"imaging:thumbnail-pending:{series_id}"


def schedule_thumbnails(series_ids) -> list[int]:
    """Queue one thumbnail render per series, a moment after its latest images; one task for them all.

    While a CT streams in, every indexed batch changes the series' middle image;
    rendering after each would waste the worker. One render is pending per series
    at a time; a batch indexed after it started schedules the next. The series of a
    batch not pending yet go in one task (a batch of small studies names a dozen);
    returns them.
    """
    series_ids = sorted(set(series_ids))
    due = series_ids
    try:
        pipe = _redis().pipeline(transaction=False)
        for series_id in series_ids:
            pipe.set(_pending_key(series_id), 1, nx=True, ex=300)
        due = [series_id for series_id, fresh in zip(series_ids, pipe.execute(), strict=True) if fresh]
    except redis.RedisError:
        log.warning("cannot debounce thumbnails (Redis unreachable); rendering anyway")
    if due:
        make_thumbnails.apply_async((due,), countdown=settings.THUMBNAIL_DELAY_SECONDS)
    return due


# The worker processes indexing a batch now, each a member scored with when it stops
# counting (a process killed mid-batch leaves a member that expires on its own).
_INDEXING = "imaging:indexing"
_INDEXING_EXPIRY_SECONDS = 300


@contextlib.contextmanager
def _indexing():
    """Say in Redis that this process is indexing until the block ends (``_index_backlog`` counts it)."""
    member = f"{socket.gethostname()}:{os.getpid()}"
    try:
        _redis().zadd(_INDEXING, {member: time.time() + _INDEXING_EXPIRY_SECONDS})
    except redis.RedisError:
        member = None
    try:
        yield
    finally:
        if member is not None:
            with contextlib.suppress(redis.RedisError):
                _redis().zrem(_INDEXING, member)


def _index_backlog() -> int:
    """Indexing batches queued (the default queue's tasks, mostly) or running; 0 if Redis cannot say.

    Running ones count too: with two worker processes, a thumbnail rendered while the
    other process indexes takes half the core the index needs (py-spy: thumbnails
    were 41 % of the worker's samples while small studies streamed in).
    """
    try:
        pipe = _redis().pipeline(transaction=False)
        pipe.llen(make_thumbnails.app.conf.task_default_queue)
        pipe.zcount(_INDEXING, time.time(), "+inf")
        queued, running = pipe.execute()
        return queued + running
    except redis.RedisError:
        return 0


def _index(relpaths: list[str], source_ae: str) -> tuple[int, int]:
    # The node of ``source_ae`` gives the fallback character set (ingest looks it up).
    with _indexing():
        done, failed = ingest.index_files(relpaths, source_ae=source_ae)
    schedule_thumbnails(i.series_id for i in done)
    late = [i.instance_id for i in done if i.coerced]
    if late:  # indexed with a correction the files do not carry yet
        rewrite.plan_late(late)
    return len(done), len(failed)


@shared_task(name="imaging.tasks.index_instances", acks_late=True, **_RETRY)
def index_instances(relpaths: list[str], source_ae: str = "") -> dict:
    """Index stored files, then bring the thumbnail of every touched series up to date."""
    indexed, failed = _index(relpaths, source_ae)
    return {"indexed": indexed, "failed": failed}


@shared_task(name="imaging.tasks.drain_index_spool")
def drain_index_spool() -> dict:
    """Index what the SCP spooled while the broker was down; returns what was read (never a walk)."""
    return spool.drain(_index).as_dict()


@shared_task(name="imaging.tasks.make_thumbnails", acks_late=True, **_RETRY)
def make_thumbnails(series_ids: list[int], deferred: float = 0) -> dict:
    """Bring these series' thumbnails up to date; later while stored files wait to be indexed.

    Findable first: a thumbnail waits (THUMBNAIL_DELAY_SECONDS at a time, up to
    THUMBNAIL_MAX_DEFER_SECONDS in all) while indexing tasks are queued, so that it
    never takes the CPU from them.
    """
    if deferred < settings.THUMBNAIL_MAX_DEFER_SECONDS and _index_backlog():
        delay = max(settings.THUMBNAIL_DELAY_SECONDS, 1)
        make_thumbnails.apply_async((series_ids, deferred + delay), countdown=delay)
        return {"deferred": len(series_ids)}
    try:
        _redis().delete(*[_pending_key(series_id) for series_id in series_ids])
    except redis.RedisError:
        pass
    # An OperationalError (the database) retries them all: rendering again is harmless.
    made = thumbnails.update_series_thumbnails(series_ids)
    return {"made": sum(bool(relpath) for relpath in made.values())}


@shared_task(name="imaging.tasks.make_thumbnail", acks_late=True, **_RETRY)
def make_thumbnail(series_id: int) -> str:
    """One series' thumbnail (tasks queued before make_thumbnails existed, and by hand)."""
    try:
        _redis().delete(_pending_key(series_id))
    except redis.RedisError:
        pass
    return thumbnails.update_series_thumbnail(series_id)


@shared_task(name="imaging.tasks.reindex_missing")
def reindex_missing() -> dict:
    from imaging import reindex

    try:
        return reindex.reindex(missing_only=True).as_dict()
    except reindex.Busy as exc:
        log.info("periodic reindex skipped: %s", exc)
        return {"skipped": str(exc)}


@shared_task(name="imaging.tasks.prune_access_records")
def prune_access_records() -> int:
    return access.prune(older_than_days=settings.ACCESS_RECORD_RETENTION_DAYS)


@shared_task(name="imaging.tasks.rewrite_files", acks_late=True, **_RETRY)
def rewrite_files(job_id: int) -> dict:
    """Rewrite the files of a correction's job (resumable: run again after a crash)."""
    return rewrite.progress(rewrite.run_job(job_id))


@shared_task(name="imaging.tasks.resume_rewrite_jobs")
def resume_rewrite_jobs(pending_older_than_seconds: float | None = None) -> list[int]:
    """Queue the rewrite jobs no live worker runs: at a worker's start, and periodically (beat)."""
    before = None
    if pending_older_than_seconds is not None:
        before = timezone.now() - dt.timedelta(seconds=pending_older_than_seconds)
    return rewrite.resume_pending(queued_before=before)
