"""One thumbnail per series, made from its representative image."""

import io
import logging

from django.conf import settings
from django.db import OperationalError, transaction
from django.db.models import Count, F, Window
from django.db.models.functions import RowNumber

from imaging import dicomfile, render, storage
from records.models import Instance, Series

log = logging.getLogger(__name__)


def representative_instances(series_ids) -> dict[int, Instance]:
    """The middle image of each series by instance number (what a doctor scrolls to first), in one query.

    Series without images are absent. The order is the database's for instance
    numbers (NULLs first on SQLite, last on PostgreSQL), then the SOP Instance UID.
    """
    series_ids = sorted(set(series_ids))
    if not series_ids:
        return {}
    partition = {"partition_by": F("series_id")}
    rows = (
        Instance.objects.filter(series_id__in=series_ids)
        .annotate(
            position=Window(
                RowNumber(), order_by=[F("instance_number").asc(), F("sop_instance_uid").asc()], **partition
            ),
            images=Window(Count("id"), **partition),
        )
        .filter(position=(F("images") - 1) / 2 + 1)
        .only("id", "series_id", "sop_instance_uid", "file_path")
    )
    return {instance.series_id: instance for instance in rows}


def representative_instance(series: Series) -> Instance | None:
    """The middle image of one series (``representative_instances``)."""
    return representative_instances([series.pk]).get(series.pk)


def pixel_problem(path) -> str | None:
    """Why the file's pixel data must not be rendered (dicomfile.pixel_problem), or None."""
    try:
        return dicomfile.pixel_problem(dicomfile.header(path))
    except (dicomfile.Unreadable, OSError) as exc:
        return f"an unreadable file ({exc})"


def update_series_thumbnail(series_id: int) -> str:
    """Render the series' thumbnail if its representative image changed (``update_series_thumbnails``).

    Returns the thumbnail path relative to STORAGE_DIR ('' if none could be made).
    """
    return update_series_thumbnails([series_id]).get(series_id, "")


def update_series_thumbnails(series_ids) -> dict[int, str]:
    """Bring the thumbnails of these series up to date: {series pk: thumbnail path, '' if none}.

    A series' thumbnail is rendered again only when another image has become its
    middle one (more images arrived) or the file is gone. Three queries for the
    whole lot, however many series (a batch of small studies names dozens), and
    the rows updated in one transaction. One series' bad image never stops the
    others: it is logged and that series goes without a thumbnail.
    """
    series_rows = list(
        Series.objects.filter(pk__in=set(series_ids)).only(
            "id", "series_instance_uid", "thumbnail", "thumbnail_sop_instance_uid"
        )
    )
    middles = representative_instances([s.pk for s in series_rows])
    made: dict[int, str] = {}
    changed: list[tuple[int, str, str]] = []
    for series in series_rows:
        instance = middles.get(series.pk)
        if instance is None:
            made[series.pk] = ""
            continue
        if series.thumbnail_sop_instance_uid == instance.sop_instance_uid and series.thumbnail:
            if storage.absolute(series.thumbnail).exists():
                made[series.pk] = series.thumbnail
                continue
        try:
            made[series.pk] = _render(series, instance)
        except OperationalError:
            raise
        except Exception:
            log.exception("thumbnail of series %s failed", series.series_instance_uid)
            made[series.pk] = ""
        if made[series.pk]:
            changed.append((series.pk, made[series.pk], instance.sop_instance_uid))
    if changed:
        with transaction.atomic():
            for pk, relpath, sop_uid in changed:
                Series.objects.filter(pk=pk).update(thumbnail=relpath, thumbnail_sop_instance_uid=sop_uid)
    return made


def _render(series: Series, instance: Instance) -> str:
    """Render and write the thumbnail of ``series`` from ``instance``; its path, or '' if it cannot be made."""
    relpath = storage.thumbnail_relpath(series.series_instance_uid)
    problem = pixel_problem(storage.absolute(instance.file_path))
    if problem:
        # Rendering it could allocate gigabytes or fail half-way: the series goes
        # without a thumbnail, its images stay findable and retrievable.
        log.warning(
            "thumbnail of series %s skipped: %s has %s", series.series_instance_uid, instance.file_path, problem
        )
        return ""
    try:
        image = render.thumbnail(storage.absolute(instance.file_path), settings.THUMBNAIL_SIZE)
    except Exception:
        # A thumbnail is a convenience: an image we cannot render is still stored and indexed.
        log.exception("cannot render a thumbnail for series %s from %s", series.series_instance_uid, instance.file_path)
        return ""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    storage.write_atomic(relpath, [buffer.getvalue()], fsync=False)
    return relpath
