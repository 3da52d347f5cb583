"""Indexing a stored file: rows, idempotency, counts, character sets."""

import datetime as dt
import time

import pydicom
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom.uid import generate_uid

from imaging import dicomfile, ingest, storage
from records.models import IndexingFailure, Instance, Patient, Series, Study, name_keys
from tests import dicomgen

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("ingest_bulk")]


def stored(ds) -> str:
    """Put a data set in the store as the SCP would, and return its relative path."""
    relpath = storage.instance_relpath(ds.SOPInstanceUID)
    path = storage.absolute(relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return relpath


def make(tmp_path, **changes):
    [path] = dicomgen.ct_series(tmp_path / generate_uid()[-8:], 1, size=16)
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def test_it_indexes_every_level_of_the_information_model(tmp_path):
    ds = make(
        tmp_path,
        PatientID="P42",
        PatientName="Doe^Jane",
        AccessionNumber="A123",
        StudyTime="101500.25",
        BodyPartExamined="CHEST",
        SeriesNumber=3,
    )
    result = ingest.index_file(stored(ds), source_ae="CT1")

    instance = Instance.objects.select_related("series__study__patient").get(pk=result.instance_id)
    assert result.created
    assert instance.sop_instance_uid == ds.SOPInstanceUID and instance.source_ae == "CT1"
    assert (instance.rows, instance.columns, instance.number_of_frames) == (16, 16, 1)
    assert instance.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert len(instance.checksum) == 64 and instance.file_size > 0
    series = instance.series
    assert (series.modality, series.series_number, series.body_part) == ("CT", 3, "CHEST")
    study = series.study
    assert study.accession_number == "A123"
    assert study.study_time == dt.time(10, 15, 0, 250000)
    assert study.patient.patient_id == "P42" and study.patient.name == "Doe^Jane"
    assert study.patient.birth_date == dt.date(1970, 1, 1)


def test_indexing_the_same_file_twice_leaves_one_row(tmp_path):
    relpath = stored(make(tmp_path))
    first = ingest.index_file(relpath)
    second = ingest.index_file(relpath)
    assert first.instance_id == second.instance_id and not second.created
    assert Instance.objects.count() == 1 and Series.objects.count() == 1 and Patient.objects.count() == 1


def test_counts_are_recomputed_from_the_rows(tmp_path):
    study_uid = generate_uid()
    paths = dicomgen.ct_series(tmp_path / "a", 4, size=16, study_uid=study_uid)
    paths += dicomgen.ct_series(
        tmp_path / "b", 2, size=16, study_uid=study_uid, modality_sop=pydicom.uid.MRImageStorage
    )
    relpaths = [stored(pydicom.dcmread(p)) for p in paths]
    done, failed = ingest.index_files(relpaths)
    ingest.index_files(relpaths)  # again: the counts must not drift
    assert len(done) == 6 and failed == []
    study = Study.objects.get(study_instance_uid=study_uid)
    assert (study.number_of_series, study.number_of_instances, study.modalities_in_study) == (2, 6, "CT\\MR")
    assert sorted(Series.objects.values_list("number_of_instances", flat=True)) == [2, 4]


def test_an_instance_re_sent_in_another_series_leaves_the_old_one(tmp_path):
    ds = make(tmp_path)
    old_series = ds.SeriesInstanceUID
    ingest.index_files([stored(ds)])
    ds.SeriesInstanceUID = generate_uid()
    ingest.index_files([stored(ds)])
    assert Series.objects.get(series_instance_uid=old_series).number_of_instances == 0
    assert Series.objects.get(series_instance_uid=ds.SeriesInstanceUID).number_of_instances == 1
    assert Instance.objects.count() == 1


def test_a_changed_header_updates_the_row(tmp_path):
    ds = make(tmp_path, StudyDescription="CT HEAD")
    ingest.index_files([stored(ds)])
    ds.StudyDescription = "CT HEAD WITH CONTRAST"
    ingest.index_files([stored(ds)])
    assert Study.objects.get().description == "CT HEAD WITH CONTRAST"


def small_batch(tmp_path, studies: int, per_series: int = 5, patient_id: str = "P1") -> list[str]:
    """Stored paths of ``studies`` studies of 2 series of ``per_series`` 8x8 images, one patient."""
    relpaths = []
    for s in range(studies):
        study_uid = generate_uid()
        for k in range(2):
            series_uid = generate_uid()
            for j in range(per_series):
                path = dicomgen.small_image(
                    tmp_path, f"{s}-{k}-{j}.dcm", study_uid, series_uid, j, patient_id=patient_id
                )
                relpaths.append(stored(pydicom.dcmread(path)))
    return relpaths


def test_a_batch_of_new_and_re_sent_instances_writes_the_rows_of_each(tmp_path, settings):
    relpaths = small_batch(tmp_path, 2)
    first = ingest.index_files(relpaths[:7])[0]
    # A re-send of 3 (one of them now in another series), the 13 others new, one of them twice.
    moved = pydicom.dcmread(storage.absolute(relpaths[0]))
    old_series, moved.SeriesInstanceUID = moved.SeriesInstanceUID, generate_uid()
    stored(moved)
    batch = relpaths[:3] + relpaths[7:] + [relpaths[12]]

    done, failed = ingest.index_files(batch)

    assert failed == [] and len(done) == len(batch)
    assert [i.created for i in done] == [False] * 3 + [True] * 13 + [False]
    assert [i.instance_id for i in done[:3]] == [i.instance_id for i in first[:3]]
    assert done[-1].instance_id == done[batch.index(relpaths[12])].instance_id
    assert done[0].moved_from_series_id == first[0].series_id and done[1].moved_from_series_id is None
    assert all(i.sop_instance_uid and i.source_ae == "" and i.problem is None for i in done)
    assert Instance.objects.count() == 20 and Series.objects.count() == 5 and Study.objects.count() == 2
    assert Series.objects.get(series_instance_uid=old_series).number_of_instances == 4
    assert Series.objects.get(series_instance_uid=moved.SeriesInstanceUID).number_of_instances == 1
    assert sorted(Study.objects.values_list("number_of_instances", flat=True)) == [10, 10]
    instance = Instance.objects.get(sop_instance_uid=moved.SOPInstanceUID)
    assert instance.file_path == relpaths[0] and instance.checksum == ingest.sha256_file(storage.absolute(relpaths[0]))
    patient = Patient.objects.get()
    assert patient.name_search and patient.name_initials == name_keys(patient.name_alphabetic)["name_initials"]


def test_a_file_whose_path_another_row_holds_is_recorded_and_the_batch_indexed(tmp_path):
    relpaths = small_batch(tmp_path, 1)
    ingest.index_files(relpaths[:1])
    # An index row claims the path of the next file (a hand-edited database, an old bug):
    # its insert fails, which the bulk insert finds out only for the batch as a whole.
    Instance.objects.update(file_path=relpaths[1])

    done, failed = ingest.index_files(relpaths[1:])

    assert [relpath for relpath, _ in failed] == [relpaths[1]]
    assert len(done) == 8 and Instance.objects.count() == 9
    assert IndexingFailure.objects.get().file_path == relpaths[1]


def test_a_batch_takes_a_handful_of_queries_in_bulk(tmp_path, ingest_bulk):
    relpaths = small_batch(tmp_path, 4)  # 40 images, 8 series, 4 studies, 1 patient
    ingest.index_files(relpaths[:1])
    with CaptureQueriesContext(connection) as new:
        done, _ = ingest.index_files(relpaths)
    with CaptureQueriesContext(connection) as again:
        ingest.index_files(relpaths)  # re-sent: nothing changes
    assert len(done) == 40
    if ingest_bulk:
        # One insert per table for the new studies and series (2 here), the rest per batch:
        # corrections (2), rows held (4), the instances' inserts (2), failures (1), counts (3),
        # savepoints in this test (4): none per instance, study or series.
        assert len(new) <= 19 and len(again) <= 14
    else:
        # A transaction (a savepoint here) and a query or more of each instance.
        assert len(new) > 4 * 40 and len(again) > 3 * 40


@pytest.mark.parametrize("size", [16, 256], ids=["whole-file-scanned", "larger-than-the-scan"])
def test_the_checksum_and_size_are_the_stored_files_whichever_way_the_header_is_read(tmp_path, header_scan, size):
    import hashlib

    [path] = dicomgen.ct_series(tmp_path / "ct", 1, size=size)
    relpath = stored(pydicom.dcmread(path))
    data = storage.absolute(relpath).read_bytes()
    assert (len(data) <= dicomfile.SCAN_BYTES) == (size == 16)

    instance = Instance.objects.get(pk=ingest.index_file(relpath).instance_id)

    assert instance.checksum == hashlib.sha256(data).hexdigest()
    assert instance.file_size == len(data)


def _index_rows() -> dict:
    """What the index holds, without pks and times: the same for every way of writing it."""
    from records.models import InstanceConflict

    return {
        "patients": sorted(Patient.objects.values_list("patient_id", "issuer", "name", "sex", "birth_date")),
        "studies": sorted(
            Study.objects.values_list("study_instance_uid", "patient__patient_id", "accession_number", "description")
        ),
        "series": sorted(Series.objects.values_list("series_instance_uid", "study__study_instance_uid", "modality")),
        "instances": sorted(Instance.objects.values_list("sop_instance_uid", "series__series_instance_uid")),
        "conflicts": sorted(InstanceConflict.objects.values_list("sop_instance_uid", "resolution")),
    }


def _forget_index() -> None:
    from records.models import InstanceConflict

    Instance.objects.all().delete()
    Series.objects.all().delete()
    Study.objects.all().delete()
    Patient.objects.all().delete()
    InstanceConflict.objects.all().delete()


def test_a_batch_inserts_its_new_parents_in_bulk_and_writes_what_one_insert_each_writes(
    tmp_path, settings, ingest_bulk
):
    held_study = generate_uid()
    paths = [dicomgen.small_image(tmp_path, "held.dcm", held_study, generate_uid(), 1, patient_id="HELD")]
    studies = [generate_uid() for _ in range(3)]
    for s, study_uid in enumerate(studies):
        series_uids = [generate_uid(), generate_uid()]
        for j in range(4):
            # Patients P0-P2, the first study's patient renamed by its later images.
            name = "First^Name" if s == 0 and j < 2 else "Later^Name"
            paths.append(
                dicomgen.small_image(
                    tmp_path, f"{s}-{j}.dcm", study_uid, series_uids[j % 2], j, patient_id=f"P{s}", patient_name=name
                )
            )
    # An image of study 1 naming a new patient: the study keeps P1, and "STRAY" is not written.
    paths.append(dicomgen.small_image(tmp_path, "stray.dcm", studies[1], generate_uid(), 9, patient_id="STRAY"))
    # An image of the study already held naming another patient, and a new series of it.
    paths.append(dicomgen.small_image(tmp_path, "other.dcm", held_study, generate_uid(), 2, patient_id="OTHER"))

    outcomes = {}
    for bulk_parents in (True, False):
        settings.INGEST_BULK_PARENTS = bulk_parents
        relpaths = [stored(pydicom.dcmread(path)) for path in paths]
        ingest.index_files(relpaths[:1])
        with CaptureQueriesContext(connection) as queries:
            done, failed = ingest.index_files(relpaths[1:])
        assert len(done) == len(paths) - 1 and not failed
        inserts = [
            q["sql"]
            for q in queries.captured_queries
            if q["sql"].startswith("INSERT INTO")
            and any(t in q["sql"] for t in ('"records_patient"', '"records_study"', '"records_series"'))
        ]
        outcomes[bulk_parents] = (_index_rows(), len(inserts))
        _forget_index()

    rows, inserts = outcomes[True]
    assert rows == outcomes[False][0]
    assert [p[:3] for p in rows["patients"]] == [("HELD", "", "TEST^PATIENT")] + [
        (f"P{s}", "", "Later^Name") for s in range(3)
    ]
    assert not [p for p in rows["patients"] if p[0] in ("STRAY", "OTHER")]
    assert {s[1] for s in rows["studies"] if s[0] == studies[1]} == {"P1"}
    assert len(rows["series"]) == 3 * 2 + 3 and len(rows["conflicts"]) == 2
    # Three new patients, three studies, eight series: one insert per table in bulk, else 14.
    assert inserts == (3 if ingest_bulk else 3 + 3 + 8) and outcomes[False][1] == 3 + 3 + 8


@pytest.fixture
def own_redis_db(settings, redis_url):
    """tasks._redis() on a database of the session's Redis that no test worker reads (Celery still publishes on 0)."""
    from imaging import tasks

    settings.CELERY_BROKER_URL = redis_url.rsplit("/", 1)[0] + "/7"
    tasks._redis.cache_clear()
    tasks._redis().flushdb()
    yield tasks._redis()
    tasks._redis().flushdb()
    tasks._redis.cache_clear()


def test_a_batch_queues_one_thumbnail_task_and_it_waits_while_indexing_is_queued(tmp_path, settings, own_redis_db):
    from imaging import tasks

    done, _ = ingest.index_files(small_batch(tmp_path, 1))
    series_ids = sorted({i.series_id for i in done})

    assert tasks.schedule_thumbnails(i.series_id for i in done) == series_ids  # one task for both
    assert tasks.schedule_thumbnails(i.series_id for i in done) == []  # still pending: nothing more

    # An indexing batch waits in the queue: the thumbnails wait too (queued again).
    own_redis_db.lpush(tasks.make_thumbnails.app.conf.task_default_queue, "an indexing batch")
    assert tasks.make_thumbnails(series_ids) == {"deferred": 2}
    assert not Series.objects.exclude(thumbnail="").exists()
    # Waited THUMBNAIL_MAX_DEFER_SECONDS in all: rendered anyway, no longer pending.
    assert tasks.make_thumbnails(series_ids, settings.THUMBNAIL_MAX_DEFER_SECONDS) == {"made": 2}
    assert Series.objects.exclude(thumbnail="").count() == 2
    assert not own_redis_db.exists(*[tasks._pending_key(pk) for pk in series_ids])
    own_redis_db.delete(tasks.make_thumbnails.app.conf.task_default_queue)
    assert tasks.make_thumbnails(series_ids) == {"made": 2}  # nothing queued: at once


def test_thumbnails_wait_while_a_batch_is_indexed_but_not_for_a_worker_that_died(tmp_path, own_redis_db):
    from imaging import tasks

    done, _ = ingest.index_files(small_batch(tmp_path, 1))
    series_ids = sorted({i.series_id for i in done})
    with tasks._indexing():  # as a worker process does around its batch
        assert own_redis_db.zcard(tasks._INDEXING) == 1
        assert tasks.make_thumbnails(series_ids) == {"deferred": 2}
    assert own_redis_db.zcard(tasks._INDEXING) == 0
    # A process killed mid-batch leaves its member behind: it stops counting when it expires.
    own_redis_db.zadd(tasks._INDEXING, {"elsewhere:4242": time.time() - 1})
    assert tasks.make_thumbnails(series_ids) == {"made": 2}
    assert Series.objects.exclude(thumbnail="").count() == 2


def test_a_plain_file_meta_is_read_in_one_pass_and_anything_else_goes_the_careful_way(tmp_path):
    ds = make(tmp_path)
    data = storage.absolute(stored(ds)).read_bytes()
    assert dicomfile.plain_transfer_syntax(data[:4096]) == ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    # Deflated (inflated in bounded memory by dicomfile, never by pydicom), no preamble,
    # a file meta longer than what was read, a non-standard VR: not plain.
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    assert dicomfile.plain_transfer_syntax((tmp_path / "deflated.dcm").read_bytes()[:4096]) is None
    assert dicomfile.read_header(tmp_path / "deflated.dcm").inflated_size > 0  # inflated by dicomfile
    assert dicomfile.plain_transfer_syntax(data[132:4096]) is None
    assert dicomfile.plain_transfer_syntax(data[:150]) is None
    assert dicomfile.plain_transfer_syntax(data[:136] + b"ZZ" + data[138:4096]) is None
    header = dicomfile.read_header(storage.absolute(storage.instance_relpath(ds.SOPInstanceUID)))
    assert header.dicm and header.pixel_tag == 0x7FE00010 and header.ds.SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_a_file_without_its_uids_is_reported_not_indexed(tmp_path, missing):
    ds = make(tmp_path)
    relpath = stored(ds)
    path = storage.absolute(relpath)
    delattr(ds, missing)
    ds.save_as(path, enforce_file_format=True)
    done, failed = ingest.index_files([relpath])
    assert done == [] and failed and missing.replace("InstanceUID", "") in failed[0][1]
    assert Instance.objects.count() == 0


def test_a_file_that_is_not_dicom_is_reported_not_indexed():
    relpath = storage.instance_relpath("1.2.3.999")
    storage.write_atomic(relpath, [b"not dicom at all"])
    done, failed = ingest.index_files([relpath])
    assert done == [] and len(failed) == 1


def test_a_chinese_name_without_a_declared_charset_uses_the_fallback(tmp_path, settings):
    settings.DICOM_FALLBACK_CHARSET = "GB18030"
    ds = make(tmp_path, SpecificCharacterSet=None)
    ds["PatientName"].value = "王^小明".encode("gb18030")
    ingest.index_files([stored(ds)])
    assert Patient.objects.get().name == "王^小明"


def test_a_name_in_iso_2022_ir_58_is_indexed_without_escape_sequences(tmp_path):
    ds = make(tmp_path, SpecificCharacterSet=["", "ISO 2022 IR 58"])
    ideographic = b"\x1b$)A" + "王^小明".encode("gb2312")
    ds["PatientName"].value = b"Wang^XiaoMing=" + ideographic
    ingest.index_files([stored(ds)])
    patient = Patient.objects.get()
    assert (patient.name_alphabetic, patient.name_ideographic) == ("Wang^XiaoMing", "王^小明")
    assert patient.name == "Wang^XiaoMing=王^小明"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("20240229", dt.date(2024, 2, 29)), ("2024.02.29", dt.date(2024, 2, 29)), ("20240230", None), ("", None)],
)
def test_dates_are_parsed_leniently(raw, expected):
    assert ingest.parse_date(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1015", dt.time(10, 15)), ("10:15:30", dt.time(10, 15, 30)), ("235960", dt.time(23, 59, 59)), ("x", None)],
)
def test_times_are_parsed_leniently(raw, expected):
    assert ingest.parse_time(raw) == expected
