"""Parse a stored file and upsert its index rows. Pure functions, no Celery.

Indexing is idempotent: the same SOP Instance UID indexed twice leaves one row,
updated to the newest file. Counts on Study and Series are recomputed from the
rows, never incremented, so re-indexing can never make them drift.
"""

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

import pydicom
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone
from pydicom.dataset import Dataset

from imaging import charsets, storage
from records.models import Instance, Patient, Series, Study

log = logging.getLogger(__name__)


class NotIndexable(ValueError):
    """The file is not a DICOM instance we can index (no UIDs, unreadable...)."""


@dataclass(frozen=True)
class Indexed:
    instance_id: int
    series_id: int
    study_id: int
    created: bool
    # A re-sent instance that now belongs to another series leaves this one.
    moved_from_series_id: int | None = None


def read_header(path, *, fallback_charset: str | None = None) -> Dataset:
    """The data set without pixel data, with a fallback character set applied."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:
        raise NotIndexable(f"{path}: cannot be parsed as DICOM: {exc}") from exc
    charsets.apply_fallback(ds, fallback_charset or settings.DICOM_FALLBACK_CHARSET)
    return ds


def parse_date(value: str) -> dt.date | None:
    value = (value or "").strip().replace(".", "")  # ACR-NEMA wrote YYYY.MM.DD
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def parse_time(value: str) -> dt.time | None:
    value = (value or "").strip().replace(":", "")  # old style HH:MM:SS
    if not value:
        return None
    main, _, frac = value.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6):
        return None
    try:
        hour = int(main[0:2])
        minute = int(main[2:4] or 0)
        second = min(int(main[4:6] or 0), 59)  # DICOM allows a leap second 60
        micro = int((frac + "000000")[:6]) if frac.isdigit() else 0
        return dt.time(hour, minute, second, micro)
    except ValueError:
        return None


def _int(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _clip(value: str, length: int) -> str:
    return value[:length]


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def index_file(
    relpath: str,
    *,
    source_ae: str = "",
    received_at: dt.datetime | None = None,
    cache: "RowCache | None" = None,
    fallback_charset: str | None = None,
) -> Indexed:
    """Index the file stored at ``relpath`` (relative to STORAGE_DIR)."""
    path = storage.absolute(relpath)
    ds = read_header(path, fallback_charset=fallback_charset)

    study_uid = str(ds.get("StudyInstanceUID", "")).strip()
    series_uid = str(ds.get("SeriesInstanceUID", "")).strip()
    sop_uid = str(ds.get("SOPInstanceUID", "")).strip()
    for what, uid in (("Study", study_uid), ("Series", series_uid), ("SOP", sop_uid)):
        if not storage.is_valid_uid(uid):
            raise NotIndexable(f"{relpath}: missing or invalid {what} Instance UID {uid!r}")

    meta = getattr(ds, "file_meta", None) or Dataset()
    sop_class_uid = str(ds.get("SOPClassUID", "") or meta.get("MediaStorageSOPClassUID", "")).strip()
    transfer_syntax = str(meta.get("TransferSyntaxUID", "1.2.840.10008.1.2")).strip()
    if not source_ae:
        source_ae = str(meta.get("SourceApplicationEntityTitle", "") or "").strip()
    stat = path.stat()
    if received_at is None:
        received_at = dt.datetime.fromtimestamp(stat.st_mtime, tz=dt.UTC)

    full, alphabetic, ideographic, phonetic = charsets.person_name(ds, "PatientName")
    patient_fields = {
        "name": _clip(full, 200),
        "name_alphabetic": _clip(alphabetic, 200),
        "name_ideographic": _clip(ideographic, 200),
        "name_phonetic": _clip(phonetic, 200),
        "birth_date": parse_date(charsets.text(ds, "PatientBirthDate")),
        "sex": _clip(charsets.text(ds, "PatientSex"), 16),
    }
    study_fields = {
        "study_id": _clip(charsets.text(ds, "StudyID"), 16),
        "accession_number": _clip(charsets.text(ds, "AccessionNumber"), 64),
        "study_date": parse_date(charsets.text(ds, "StudyDate")),
        "study_time": parse_time(charsets.text(ds, "StudyTime")),
        "description": _clip(charsets.text(ds, "StudyDescription"), 200),
        "referring_physician": _clip(charsets.person_name(ds, "ReferringPhysicianName")[0], 200),
    }
    series_fields = {
        "modality": _clip(charsets.text(ds, "Modality"), 16),
        "series_number": _int(ds.get("SeriesNumber")),
        "description": _clip(charsets.text(ds, "SeriesDescription"), 200),
        "body_part": _clip(charsets.text(ds, "BodyPartExamined"), 64),
    }
    instance_fields = {
        "sop_class_uid": sop_class_uid[:64],
        "instance_number": _int(ds.get("InstanceNumber")),
        "transfer_syntax_uid": transfer_syntax[:64],
        "rows": _int(ds.get("Rows")),
        "columns": _int(ds.get("Columns")),
        "number_of_frames": max(_int(ds.get("NumberOfFrames")) or 1, 1),
        "specific_character_set": _clip(charsets.text(ds, "SpecificCharacterSet"), 128),
        "file_path": relpath,
        "file_size": stat.st_size,
        "checksum": sha256_file(path),
        "received_at": received_at,
        "source_ae": _clip(source_ae, 16),
    }
    patient_key = {
        "patient_id": _clip(charsets.text(ds, "PatientID"), 64),
        "issuer": _clip(charsets.text(ds, "IssuerOfPatientID"), 64),
    }

    return upsert(
        IndexRecord(
            patient_key, patient_fields, study_uid, study_fields, series_uid, series_fields, sop_uid, instance_fields
        ),
        cache,
    )


@dataclass
class IndexRecord:
    patient_key: dict
    patient_fields: dict
    study_uid: str
    study_fields: dict
    series_uid: str
    series_fields: dict
    sop_uid: str
    instance_fields: dict


class RowCache:
    """Rows already written in this batch: the 299 other slices of a CT need no query."""

    def __init__(self):
        self._rows: dict[tuple, tuple[int, dict]] = {}

    def get(self, key: tuple, fields: dict) -> int | None:
        hit = self._rows.get(key)
        return hit[0] if hit and hit[1] == fields else None

    def put(self, key: tuple, pk: int, fields: dict) -> None:
        self._rows[key] = (pk, fields)

    def clear(self) -> None:
        self._rows.clear()


def _upsert_row(model, cache: RowCache, key: dict, fields: dict) -> int:
    """Insert or update one row by its natural key; returns its pk.

    Writes only what changed: re-sending a study whose header did not change
    updates nothing, so concurrent workers indexing the same series do not
    contend for its row. Must run inside a transaction.
    """
    cache_key = (model.__name__, *key.values())
    pk = cache.get(cache_key, fields)
    if pk is not None:
        return pk
    row = model.objects.filter(**key).values("pk", *fields).first()
    if row is None:
        with transaction.atomic():  # a savepoint: a concurrent insert must not spoil the outer transaction
            pk = model.objects.create(**key, **fields).pk
    else:
        pk = row.pop("pk")
        changed = {name: value for name, value in fields.items() if row[name] != value}
        if changed:
            model.objects.filter(pk=pk).update(**changed, updated_at=timezone.now())
    cache.put(cache_key, pk, fields)
    return pk


def upsert(record: IndexRecord, cache: RowCache | None = None) -> Indexed:
    """Write the rows for one instance, parents first (always the same lock order)."""
    cache = cache or RowCache()
    for attempt in range(3):
        try:
            with transaction.atomic():
                patient_pk = _upsert_row(Patient, cache, record.patient_key, record.patient_fields)
                study_pk = _upsert_row(
                    Study,
                    cache,
                    {"study_instance_uid": record.study_uid},
                    {"patient_id": patient_pk, **record.study_fields},
                )
                series_pk = _upsert_row(
                    Series,
                    cache,
                    {"series_instance_uid": record.series_uid},
                    {"study_id": study_pk, **record.series_fields},
                )
                existing = Instance.objects.filter(sop_instance_uid=record.sop_uid).values("pk", "series_id").first()
                if existing is None:
                    with transaction.atomic():
                        pk = Instance.objects.create(
                            sop_instance_uid=record.sop_uid, series_id=series_pk, **record.instance_fields
                        ).pk
                    return Indexed(pk, series_pk, study_pk, True)
                Instance.objects.filter(pk=existing["pk"]).update(series_id=series_pk, **record.instance_fields)
                moved_from = existing["series_id"] if existing["series_id"] != series_pk else None
                return Indexed(existing["pk"], series_pk, study_pk, False, moved_from)
        except IntegrityError:
            # Another worker inserted the same patient/study/series/instance between
            # our read and our insert: forget what we cached and read its row.
            cache.clear()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def refresh_counts(*, series_ids=(), study_ids=()) -> None:
    """Recompute the derived counts of the given series and studies (and of their studies).

    One short transaction holds the row locks of the studies concerned (taken in
    pk order, so two refreshes cannot deadlock), so refreshes of one study run
    one after the other and the last one counts every committed instance. FOR NO
    KEY UPDATE does not block workers inserting rows that reference the studies.
    """
    study_ids = set(study_ids) | set(Series.objects.filter(pk__in=set(series_ids)).values_list("study_id", flat=True))
    if not study_ids:
        return
    with transaction.atomic():
        locked = list(
            Study.objects.select_for_update(no_key=True).filter(pk__in=study_ids).order_by("pk").values_list("pk")
        )
        rows = list(
            Series.objects.filter(study_id__in=[pk for (pk,) in locked])
            .annotate(n=Count("instances"))
            .values_list("pk", "study_id", "modality", "n", "number_of_instances")
        )
        per_study: dict[int, list] = {pk: [] for (pk,) in locked}
        for pk, study_id, modality, n, stored in rows:
            per_study[study_id].append((modality, n))
            if n != stored:
                Series.objects.filter(pk=pk).update(number_of_instances=n)
        current = {
            pk: (ns, ni, mods)
            for pk, ns, ni, mods in Study.objects.filter(pk__in=per_study).values_list(
                "pk", "number_of_series", "number_of_instances", "modalities_in_study"
            )
        }
        for study_id, series in per_study.items():
            counts = (
                len(series),
                sum(n for _, n in series),
                "\\".join(sorted({m for m, _ in series if m}))[:200],
            )
            if current.get(study_id) != counts:
                Study.objects.filter(pk=study_id).update(
                    number_of_series=counts[0],
                    number_of_instances=counts[1],
                    modalities_in_study=counts[2],
                    updated_at=timezone.now(),
                )


def index_files(
    relpaths, *, source_ae: str = "", fallback_charset: str | None = None
) -> tuple[list[Indexed], list[tuple[str, str]]]:
    """Index many files; returns (indexed, [(relpath, error)]) and refreshes counts.

    ``fallback_charset`` (the sending node's) applies to data sets that declare
    no Specific Character Set; without it, DICOM_FALLBACK_CHARSET does.
    """
    done: list[Indexed] = []
    failed: list[tuple[str, str]] = []
    cache = RowCache()
    for relpath in relpaths:
        try:
            done.append(index_file(relpath, source_ae=source_ae, cache=cache, fallback_charset=fallback_charset))
        except (NotIndexable, FileNotFoundError, ValueError) as exc:
            log.warning("not indexed: %s", exc)
            failed.append((relpath, str(exc)))
    touched = {i.series_id for i in done} | {i.moved_from_series_id for i in done if i.moved_from_series_id}
    refresh_counts(series_ids=touched)
    return done, failed
