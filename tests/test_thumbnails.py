"""Thumbnails of many series at once: the middle image of each, a few queries in all, one bad file alone."""

import pydicom
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom.uid import generate_uid

from imaging import ingest, storage, thumbnails
from records.models import Instance, Series
from tests import dicomgen

pytestmark = pytest.mark.django_db


def stored_series(tmp_path, numbers, study_uid=None) -> tuple[str, dict[int, str]]:
    """(series UID, {instance number: SOP Instance UID}) of a series stored and indexed with these numbers."""
    study_uid, series_uid = study_uid or generate_uid(), generate_uid()
    relpaths, uids = [], {}
    for number in numbers:
        path = dicomgen.small_image(tmp_path, f"{series_uid}-{number}.dcm", study_uid, series_uid, number)
        ds = pydicom.dcmread(path)
        relpath = storage.instance_relpath(ds.SOPInstanceUID)
        storage.absolute(relpath).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(storage.absolute(relpath), enforce_file_format=True)
        relpaths.append(relpath)
        uids[number] = ds.SOPInstanceUID
    done, failed = ingest.index_files(relpaths)
    assert not failed and len(done) == len(numbers)
    return series_uid, uids


def test_each_series_gets_its_middle_image_with_three_queries_for_them_all(tmp_path):
    # Instance numbers sent out of order; the middle by number, the lower one of an even count.
    cases = {1: [7], 4: [4, 2, 1, 3], 5: [5, 3, 1, 2, 4], 6: [12, 2, 6, 4, 8, 10]}
    expected = {}
    for count, numbers in cases.items():
        series_uid, uids = stored_series(tmp_path, numbers)
        middle = sorted(numbers)[(count - 1) // 2]
        expected[Series.objects.get(series_instance_uid=series_uid).pk] = uids[middle]
    empty = Series.objects.create(series_instance_uid=generate_uid(), study=Series.objects.first().study, modality="MR")

    with CaptureQueriesContext(connection) as queries:
        made = thumbnails.update_series_thumbnails([*expected, empty.pk])
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("SELECT")]
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")]
    assert len(selects) == 2, selects  # the series, and the middle images of them all
    assert len(updates) == len(expected)

    assert made[empty.pk] == ""
    for pk, sop_uid in expected.items():
        series = Series.objects.get(pk=pk)
        assert made[pk] == series.thumbnail == storage.thumbnail_relpath(series.series_instance_uid)
        assert series.thumbnail_sop_instance_uid == sop_uid
        assert storage.absolute(series.thumbnail).read_bytes().startswith(b"\x89PNG")
        assert thumbnails.representative_instance(series).sop_instance_uid == sop_uid

    # Nothing changed: no render, no update.
    with CaptureQueriesContext(connection) as queries:
        assert thumbnails.update_series_thumbnails(list(expected)) == {pk: made[pk] for pk in expected}
    assert not [q for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")]


def test_a_series_whose_image_cannot_be_rendered_does_not_stop_the_others(tmp_path, caplog):
    bad_uid, bad_uids = stored_series(tmp_path, [1])
    good_uid, _ = stored_series(tmp_path, [1, 2, 3])
    bad = Series.objects.get(series_instance_uid=bad_uid)
    good = Series.objects.get(series_instance_uid=good_uid)
    # The file's pixel data cut short after indexing: no thumbnail for that series.
    path = storage.absolute(Instance.objects.get(sop_instance_uid=bad_uids[1]).file_path)
    path.write_bytes(path.read_bytes()[:-2000])

    made = thumbnails.update_series_thumbnails([bad.pk, good.pk])

    assert made[bad.pk] == "" and Series.objects.get(pk=bad.pk).thumbnail == ""
    assert made[good.pk] and Series.objects.get(pk=good.pk).thumbnail == made[good.pk]
    assert bad_uid in caplog.text
