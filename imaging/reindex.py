"""Rebuild the index from the files on disk (the files are the source of truth)."""

import logging
from dataclasses import asdict, dataclass, field

from imaging import ingest, storage
from records.models import Instance

log = logging.getLogger(__name__)

BATCH = 500
# A write takes milliseconds; a partial file this old was left by a process that died.
PARTIAL_MAX_AGE = 3600


@dataclass
class ReindexResult:
    seen: int = 0
    indexed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self) | {"errors": self.errors[:20]}


def reindex(*, missing_only: bool = True) -> ReindexResult:
    """Index stored files; with ``missing_only``, only those that have no row yet."""
    result = ReindexResult()
    batch: list[str] = []

    def flush():
        todo = batch
        if missing_only:
            known = set(Instance.objects.filter(file_path__in=todo).values_list("file_path", flat=True))
            todo = [p for p in todo if p not in known]
        done, failed = ingest.index_files(todo)
        result.indexed += len(done)
        result.failed += len(failed)
        result.errors.extend(f"{p}: {e}" for p, e in failed)
        if done:
            from imaging.thumbnails import update_series_thumbnail

            for series_id in {i.series_id for i in done}:
                update_series_thumbnail(series_id)
        batch.clear()

    for relpath in storage.iter_instance_files(remove_partials_older_than=PARTIAL_MAX_AGE):
        result.seen += 1
        batch.append(relpath)
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    log.info("reindex: %d file(s) seen, %d indexed, %d failed", result.seen, result.indexed, result.failed)
    return result
