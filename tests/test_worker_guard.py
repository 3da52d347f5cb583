"""One bad file never hides another: each is recorded as an IndexingFailure, the rest of the batch is indexed.

Every file is built here with pydicom (tests/dicomgen.py); each bad one is
followed, in the same batch, by good ones that must be indexed.
"""

import logging
import os
import struct
import tracemalloc

import pydicom
import pytest
from django.core.management import call_command
from pydicom.uid import generate_uid

from imaging import ingest, reindex, storage, thumbnails
from network.models import ModalityNode
from records.models import IndexingFailure, Instance, Patient, Series, Study
from tests import dicomgen

pytestmark = pytest.mark.django_db

Category = IndexingFailure.Category


@pytest.fixture(autouse=True)
def _empty_store(header_scan):
    """The archive this test walks holds only what it stored; each test reads headers both ways."""
    import shutil

    for folder in (storage.INSTANCES, storage.THUMBNAILS, "spool"):
        shutil.rmtree(storage.root() / folder, ignore_errors=True)
    yield


def stored(ds, *, source_ae: str | None = None, declared: str | None = None) -> str:
    """Put a data set in the store as the SCP would, and return its relative path.

    ``declared``: the Specific Character Set to write as is, which pydicom itself
    refuses to encode with ("hex" is a Python codec, not a text encoding).
    """
    if source_ae:
        ds.file_meta.SourceApplicationEntityTitle = source_ae
    relpath = storage.instance_relpath(ds.SOPInstanceUID)
    path = storage.absolute(relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    if declared is None:
        ds.save_as(path, enforce_file_format=True)
        return relpath
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.save_as(path, enforce_file_format=True)
    value = declared.encode("ascii")
    value += b" " * (len(value) % 2)
    original = b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 192"
    data = path.read_bytes()
    assert data.count(original) == 1
    path.write_bytes(data.replace(original, b"\x08\x00\x05\x00CS" + struct.pack("<H", len(value)) + value))
    return relpath


def image(tmp_path, **changes) -> pydicom.Dataset:
    [path] = dicomgen.ct_series(tmp_path / generate_uid()[-8:], 1, size=16)
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def good_files(tmp_path, n=3) -> list[str]:
    return [stored(image(tmp_path, PatientID=f"GOOD{i}")) for i in range(n)]


def assert_indexed(relpaths):
    assert set(Instance.objects.filter(file_path__in=relpaths).values_list("file_path", flat=True)) == set(relpaths)


# --- character sets -------------------------------------------------------------


@pytest.mark.usefixtures("ingest_bulk")
@pytest.mark.parametrize("declared", ["hex", "base64", "NO-SUCH-CHARSET"])
def test_a_bogus_character_set_is_read_with_the_fallback_and_hides_no_other_file(tmp_path, settings, declared, caplog):
    settings.DICOM_FALLBACK_CHARSET = "GB18030"
    bad = image(tmp_path, PatientID="BOGUS")
    bad["PatientName"].value = "王^小明".encode("gb18030")
    batch = [stored(bad, declared=declared), *good_files(tmp_path)]

    done, failed = ingest.index_files(batch)

    assert failed == [] and len(done) == 4
    assert_indexed(batch)
    assert Patient.objects.get(patient_id="BOGUS").name == "王^小明"
    failure = IndexingFailure.objects.get()
    assert (failure.file_path, failure.category, failure.indexed) == (batch[0], Category.CHARSET, True)
    assert declared in failure.reason and "GB18030" in failure.reason
    assert Instance.objects.get(file_path=batch[0]).specific_character_set == declared
    # We log it once for the file, not once per text element (pydicom has its own say when reading).
    ours = [r for r in caplog.records if r.name.startswith("imaging") and declared in r.getMessage()]
    assert len(ours) == 1 and batch[0] in ours[0].getMessage()


def test_an_unknown_character_set_uses_the_sending_nodes_fallback_first(tmp_path, settings):
    settings.DICOM_FALLBACK_CHARSET = "ISO_IR 100"
    ModalityNode.objects.create(ae_title="CT_CN", host="127.0.0.1", port=104, fallback_charset="GB18030")
    bad = image(tmp_path, PatientID="NODEFB")
    bad["PatientName"].value = "王^小明".encode("gb18030")
    relpath = stored(bad, source_ae="CT_CN", declared="hex")

    ingest.index_files([relpath])  # no AE given: reindex's case, the file meta names the node

    assert Patient.objects.get(patient_id="NODEFB").name == "王^小明"


@pytest.mark.parametrize("alias", ["GB2312", "gb18030", "gbk", "ISO-IR 100", "ISO_IR100", "UTF-8", "utf8", "latin_1"])
def test_the_aliases_devices_write_are_accepted(tmp_path, alias):
    from imaging import charsets

    assert charsets.is_known(alias)
    ds = image(tmp_path)
    ingest.index_files([stored(ds, declared=alias)])
    assert not IndexingFailure.objects.exists()


@pytest.mark.usefixtures("ingest_bulk")
def test_a_failure_row_goes_once_the_file_is_indexed_cleanly(tmp_path):
    ds = image(tmp_path)
    relpath = stored(ds, declared="hex")
    ingest.index_files([relpath])
    ingest.index_files([relpath])
    assert IndexingFailure.objects.get(file_path=relpath).attempts == 2

    ds.SpecificCharacterSet = "ISO_IR 192"
    stored(ds)
    ingest.index_files([relpath])

    assert not IndexingFailure.objects.exists()


# --- what stays unindexed -------------------------------------------------------------


def test_a_deflate_bomb_is_not_indexed_and_memory_stays_bounded(tmp_path, settings):
    settings.DICOM_MAX_INFLATED_BYTES = 64 * 1024**2
    header = dicomgen.deflate_bomb(tmp_path / "bomb.dcm", inflated_gib=3)
    relpath = storage.instance_relpath(header.SOPInstanceUID)
    storage.write_atomic(relpath, [(tmp_path / "bomb.dcm").read_bytes()])
    assert storage.absolute(relpath).stat().st_size < 4 * 1024**2, "a few MB on disk"
    batch = [relpath, *good_files(tmp_path)]

    tracemalloc.start()
    try:
        done, failed = ingest.index_files(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # pydicom alone would hold the 3 GiB inflated data set at once.
    assert peak < 32 * 1024**2, f"indexing peaked at {peak} bytes"
    assert len(done) == 3 and [p for p, _ in failed] == [relpath]
    assert_indexed(batch[1:])
    failure = IndexingFailure.objects.get()
    assert (failure.category, failure.indexed) == (Category.DEFLATE_BOMB, False)
    assert "DICOM_MAX_INFLATED_BYTES" in failure.reason
    assert not Instance.objects.filter(sop_instance_uid=header.SOPInstanceUID).exists()


@pytest.mark.usefixtures("ingest_bulk")
def test_a_file_pydicom_cannot_parse_is_recorded_and_the_batch_goes_on(tmp_path):
    relpath = storage.instance_relpath("1.2.3.4.999")
    storage.write_atomic(relpath, [b"\0" * 128 + b"DICM" + os.urandom(64) + b"\x02\x00\x10\x00UI\xff\xff"])
    batch = [relpath, *good_files(tmp_path)]

    done, failed = ingest.index_files(batch)

    assert len(done) == 3 and [p for p, _ in failed] == [relpath]
    assert_indexed(batch[1:])
    failure = IndexingFailure.objects.get()
    assert failure.file_path == relpath and not failure.indexed
    assert failure.category in (Category.UNREADABLE, Category.NO_UIDS)


@pytest.mark.usefixtures("ingest_bulk")
def test_a_file_without_uids_is_recorded_as_such(tmp_path):
    ds = image(tmp_path)
    relpath = stored(ds)
    del ds.StudyInstanceUID
    ds.save_as(storage.absolute(relpath), enforce_file_format=True)

    ingest.index_files([relpath, *good_files(tmp_path)])

    failure = IndexingFailure.objects.get()
    assert (failure.category, failure.sop_instance_uid) == (Category.NO_UIDS, ds.SOPInstanceUID)
    assert Instance.objects.count() == 3


# --- pixel data: the header is indexed, the problem recorded, no thumbnail ---------------


@pytest.mark.usefixtures("ingest_bulk")
@pytest.mark.parametrize("kind", ["65535x65535", "truncated"])
def test_unusable_pixel_data_is_indexed_recorded_and_gets_no_thumbnail(tmp_path, kind, caplog):
    ds = image(tmp_path, PatientID="PIXELS")
    if kind == "65535x65535":
        ds.Rows = ds.Columns = 65535
    relpath = stored(ds)
    if kind == "truncated":
        path = storage.absolute(relpath)
        os.truncate(path, path.stat().st_size - 100)
    batch = [relpath, *good_files(tmp_path)]

    done, failed = ingest.index_files(batch)

    assert failed == [] and len(done) == 4
    assert_indexed(batch)
    failure = IndexingFailure.objects.get()
    assert (failure.file_path, failure.category, failure.indexed) == (relpath, Category.PIXELS, True)
    assert ("DICOM_MAX_PIXEL_BYTES" if kind == "65535x65535" else "truncated") in failure.reason
    series = Series.objects.get(study__patient__patient_id="PIXELS")
    with caplog.at_level(logging.WARNING, "imaging.thumbnails"):
        assert thumbnails.update_series_thumbnail(series.pk) == ""
    assert f"thumbnail of series {series.series_instance_uid} skipped" in caplog.text
    assert not Series.objects.get(pk=series.pk).thumbnail
    # A good series still gets its thumbnail.
    good_series = Series.objects.get(study__patient__patient_id="GOOD0")
    assert thumbnails.update_series_thumbnail(good_series.pk)


# --- reindex goes past them ---------------------------------------------------------------


def test_reindex_goes_past_every_kind_of_bad_file(tmp_path, settings):
    settings.DICOM_MAX_INFLATED_BYTES = 16 * 1024**2
    bomb = dicomgen.deflate_bomb(tmp_path / "bomb.dcm", inflated_gib=1)
    storage.write_atomic(storage.instance_relpath(bomb.SOPInstanceUID), [(tmp_path / "bomb.dcm").read_bytes()])
    storage.write_atomic(storage.instance_relpath("1.2.3.4.998"), [b"not dicom at all" * 10])
    stored(image(tmp_path), declared="hex")
    absurd = image(tmp_path)
    absurd.Rows = absurd.Columns = 65535
    stored(absurd)
    good = good_files(tmp_path, 4)

    result = reindex.reindex()

    assert result.seen == 8
    assert (result.indexed, result.failed) == (6, 2)
    assert_indexed(good)
    assert IndexingFailure.objects.count() == 4
    assert set(IndexingFailure.objects.values_list("category", flat=True)) == {
        Category.DEFLATE_BOMB,
        Category.UNREADABLE,
        Category.CHARSET,
        Category.PIXELS,
    }


def test_two_reindex_runs_never_overlap_and_a_crashed_holders_lease_expires(settings):
    from imaging import leases

    with leases.held(reindex.LEASE, 60):
        with pytest.raises(reindex.Busy):
            reindex.reindex()
        from django.core.management.base import CommandError

        with pytest.raises(CommandError, match="another reindex is running"):
            call_command("reindex")
    assert reindex.reindex().seen == 0  # released

    # A holder that died without releasing: its lease runs out.
    assert leases.acquire(reindex.LEASE, "dead-host:1:x", seconds=-1)
    assert reindex.reindex().seen == 0


def test_reindex_uses_the_sending_nodes_fallback(tmp_path, settings):
    settings.DICOM_FALLBACK_CHARSET = "ISO_IR 100"
    ModalityNode.objects.create(ae_title="US_CN", host="127.0.0.1", port=104, fallback_charset="GB18030")
    ds = image(tmp_path, PatientID="REINDEXFB")
    del ds.SpecificCharacterSet
    ds["PatientName"].value = "李^雷".encode("gb18030")
    stored(ds, source_ae="US_CN")

    reindex.reindex()

    assert Patient.objects.get(patient_id="REINDEXFB").name == "李^雷"
    assert Instance.objects.get().source_ae == "US_CN"


@pytest.mark.usefixtures("ingest_bulk")
def test_the_index_rows_never_move_a_study_for_one_instance_of_another_patient(tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    first = [
        stored(pydicom.dcmread(dicomgen.small_image(tmp_path, f"a{i}.dcm", study_uid, series_uid, i, patient_id="PA")))
        for i in range(3)
    ]
    ingest.index_files(first)
    odd = pydicom.dcmread(dicomgen.small_image(tmp_path, "b.dcm", study_uid, series_uid, 9, patient_id="PB"))

    ingest.index_files([stored(odd, source_ae="MR1")])

    study = Study.objects.get(study_instance_uid=study_uid)
    assert study.patient.patient_id == "PA"
    assert study.number_of_instances == 4
    assert not Patient.objects.filter(patient_id="PB").exists()
    from records.models import InstanceConflict

    conflict = InstanceConflict.objects.get()
    assert conflict.resolution == InstanceConflict.Resolution.KEPT_STUDY_PATIENT
    assert (conflict.stored_patient_id, conflict.incoming_patient_id) == ("PA", "PB")
    assert (conflict.sop_instance_uid, conflict.source_ae) == (odd.SOPInstanceUID, "MR1")
    ingest.index_files([stored(odd)])  # seen again: not recorded again
    assert InstanceConflict.objects.count() == 1


@pytest.mark.usefixtures("ingest_bulk")
@pytest.mark.parametrize("policy", ["reject", "replace"])
def test_a_re_indexed_instance_that_names_another_study_follows_the_policy(tmp_path, settings, policy):
    from records.models import InstanceConflict

    settings.DICOM_UID_CONFLICT_POLICY = policy
    ds = image(tmp_path, PatientID="P1")
    relpath = stored(ds)
    ingest.index_files([relpath])
    old_study = ds.StudyInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    stored(ds)  # the file on disk changed behind the index (copied in, restored from a backup)

    ingest.index_files([relpath])

    study_now = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID).series.study.study_instance_uid
    conflict = InstanceConflict.objects.get()
    assert (conflict.stored_study_uid, conflict.incoming_study_uid) == (old_study, ds.StudyInstanceUID)
    if policy == "reject":
        assert study_now == old_study
        assert conflict.resolution == InstanceConflict.Resolution.KEPT_STORED
    else:
        assert study_now == ds.StudyInstanceUID
        assert conflict.resolution == InstanceConflict.Resolution.REPLACED
        assert Study.objects.get(study_instance_uid=old_study).number_of_instances == 0


def test_the_renderer_refuses_an_absurd_frame_and_a_deflate_bomb_in_bounded_memory(tmp_path, settings):
    from imaging import render

    settings.DICOM_MAX_INFLATED_BYTES = 16 * 1024**2
    absurd = image(tmp_path)
    absurd.Rows = absurd.Columns = 65535
    bomb = dicomgen.deflate_bomb(tmp_path / "bomb.dcm", inflated_gib=1)
    bomb_path = storage.absolute(stored(bomb))
    storage.write_atomic(storage.instance_relpath(bomb.SOPInstanceUID), [(tmp_path / "bomb.dcm").read_bytes()])

    tracemalloc.start()
    try:
        with pytest.raises(render.CannotRender, match="DICOM_MAX_PIXEL_BYTES"):
            render.thumbnail(storage.absolute(stored(absurd)), 64)
        with pytest.raises(render.CannotRender, match="DICOM_MAX_INFLATED_BYTES"):
            render.thumbnail(bomb_path, 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024**2
