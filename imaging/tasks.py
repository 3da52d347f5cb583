"""Thin Celery tasks over the plain functions in ingest, render and reindex."""

import logging

from celery import shared_task

from imaging import ingest, thumbnails

log = logging.getLogger(__name__)


@shared_task(name="imaging.tasks.index_instances", acks_late=True)
def index_instances(relpaths: list[str], source_ae: str = "") -> dict:
    """Index stored files, then bring the thumbnail of every touched series up to date."""
    done, failed = ingest.index_files(relpaths, source_ae=source_ae)
    for series_id in sorted({i.series_id for i in done}):
        make_thumbnail.delay(series_id)
    return {"indexed": len(done), "failed": len(failed)}


@shared_task(name="imaging.tasks.make_thumbnail", acks_late=True)
def make_thumbnail(series_id: int) -> str:
    return thumbnails.update_series_thumbnail(series_id)


@shared_task(name="imaging.tasks.reindex_missing")
def reindex_missing() -> dict:
    from imaging import reindex

    return reindex.reindex(missing_only=True).as_dict()
