"""Rebuild the index from the files on disk (the files are the source of truth).

Two runs never overlap, whether started by ``manage.py reindex`` or the periodic
task, on one host or on two sharing the storage and the database: a run holds
the "reindex" lease (imaging/leases.py), renewed after each batch, which expires
REINDEX_LOCK_SECONDS after a holder that crashed.
"""

import logging
from dataclasses import asdict, dataclass, field

from django.conf import settings

from imaging import ingest, leases, spool, storage
from records.models import Instance

log = logging.getLogger(__name__)

BATCH = 500
# A write takes milliseconds; a partial file this old was left by a process that died.
PARTIAL_MAX_AGE = 3600
LEASE = "reindex"

Busy = leases.Busy


@dataclass
class ReindexResult:
    seen: int = 0
    indexed: int = 0
    failed: int = 0
    spooled: int = 0  # paths read from the index spool
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self) | {"errors": self.errors[:20]}


def _index_now(relpaths: list[str], source_ae: str = "") -> tuple[list, list]:
    # Each file's own node (its meta's calling AE title) gives its fallback character set.
    done, failed = ingest.index_files(relpaths, source_ae=source_ae)
    if done:
        from imaging.thumbnails import update_series_thumbnails

        update_series_thumbnails({i.series_id for i in done})
    return done, failed


def reindex(*, missing_only: bool = True) -> ReindexResult:
    """Index stored files; with ``missing_only``, only those that have no row yet.

    The index spool is drained first (cheap, and the likeliest files to be
    missing). Raises ``Busy`` when another run holds the lease.
    """
    result = ReindexResult()
    batch: list[str] = []
    with leases.held(LEASE, settings.REINDEX_LOCK_SECONDS) as renew:

        def index_spooled(paths, ae):
            done, failed = _index_now(paths, ae)
            renew()
            result.errors.extend(f"{p}: {e}" for p, e in failed)
            return len(done), len(failed)

        drained = spool.drain(index_spooled)
        result.spooled, result.indexed, result.failed = drained.paths, drained.indexed, drained.failed

        def flush():
            todo = batch
            if missing_only:
                known = set(Instance.objects.filter(file_path__in=todo).values_list("file_path", flat=True))
                todo = [p for p in todo if p not in known]
            done, failed = _index_now(todo)
            result.indexed += len(done)
            result.failed += len(failed)
            result.errors.extend(f"{p}: {e}" for p, e in failed)
            batch.clear()
            renew()

        for relpath in storage.iter_instance_files(remove_partials_older_than=PARTIAL_MAX_AGE):
            result.seen += 1
            batch.append(relpath)
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
    log.info(
        "reindex: %d path(s) from the spool, %d file(s) seen, %d indexed, %d failed",
        result.spooled,
        result.seen,
        result.indexed,
        result.failed,
    )
    return result
