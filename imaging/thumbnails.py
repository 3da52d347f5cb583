"""One thumbnail per series, made from its representative image."""

import io
import logging

from django.conf import settings
from django.db import transaction

from imaging import dicomfile, render, storage
from records.models import Instance, Series

log = logging.getLogger(__name__)


def representative_instance(series: Series) -> Instance | None:
    """The middle image of the series by instance number (what a doctor scrolls to first)."""
    # Not ``series.instances``: the related manager would set each row's series, loading
    # the deferred series_id with one more query per thumbnail.
    instances = Instance.objects.filter(series_id=series.pk).order_by("instance_number", "sop_instance_uid")
    middle = (instances.count() - 1) // 2
    if middle < 0:
        return None
    return next(iter(instances.only("id", "sop_instance_uid", "file_path")[middle : middle + 1]), None)


def pixel_problem(path) -> str | None:
    """Why the file's pixel data must not be rendered (dicomfile.pixel_problem), or None."""
    try:
        return dicomfile.pixel_problem(dicomfile.header(path))
    except (dicomfile.Unreadable, OSError) as exc:
        return f"an unreadable file ({exc})"


def update_series_thumbnail(series_id: int) -> str:
    """Render the series' thumbnail if its representative image changed.

    Returns the thumbnail path relative to STORAGE_DIR ('' if none could be made).
    Called again after more images arrived, it replaces the thumbnail only when
    another image has become the middle one.
    """
    series = Series.objects.filter(pk=series_id).first()
    if series is None:
        return ""
    instance = representative_instance(series)
    if instance is None:
        return ""
    relpath = storage.thumbnail_relpath(series.series_instance_uid)
    if series.thumbnail_sop_instance_uid == instance.sop_instance_uid and series.thumbnail:
        if storage.absolute(series.thumbnail).exists():
            return series.thumbnail
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
    with transaction.atomic():
        Series.objects.filter(pk=series.pk).update(
            thumbnail=relpath, thumbnail_sop_instance_uid=instance.sop_instance_uid
        )
    return relpath
