"""Parse a stored file and upsert its index rows. Pure functions, no Celery.

Indexing is idempotent: the same SOP Instance UID indexed twice leaves one row,
updated to the newest file. Counts on Study and Series are recomputed from the
rows, never incremented, so re-indexing can never make them drift.
"""

import dataclasses
import datetime as dt
import functools
import hashlib
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Count, F
from django.utils import timezone
from pydicom.dataset import Dataset

from imaging import charsets, dicomfile, integrity, storage
from records.models import IndexingFailure, Instance, InstanceConflict, Patient, Series, Study, name_keys

log = logging.getLogger(__name__)


Category = IndexingFailure.Category


class NotIndexable(ValueError):
    """The file is not a DICOM instance we can index (no UIDs, unreadable...)."""

    def __init__(self, where, reason: str, category: str = Category.UNREADABLE, sop_instance_uid: str = ""):
        super().__init__(f"{where}: {reason}")
        self.reason = reason  # without the path, for the IndexingFailure row
        self.category = category
        self.sop_instance_uid = sop_instance_uid


@dataclass(frozen=True)
class Indexed:
    instance_id: int
    series_id: int
    study_id: int
    created: bool
    # A re-sent instance that now belongs to another series leaves this one.
    moved_from_series_id: int | None = None
    # What is wrong with the file though its header is indexed: (category, reason).
    problem: tuple[str, str] | None = None
    sop_instance_uid: str = ""
    source_ae: str = ""
    # Indexed with corrected values the file does not carry yet (a late arrival): to rewrite.
    coerced: bool = False


def read_header(path, *, fallback_charset: str | None = None) -> Dataset:
    """The data set without pixel data, with a fallback character set applied."""
    return _read(path, [fallback_charset])[0].ds


def _read(path, fallbacks: list[str | None]) -> tuple[dicomfile.Header, str | None, str]:
    """The header (bounded memory, see dicomfile) with its character set settled.

    Returns the header; when its declared character set is unknown, what it was
    read as instead (to record and log once for the file); and the declaration as
    the file wrote it.
    """
    try:
        header = dicomfile.header(path)
    except dicomfile.DeflateBomb as exc:
        raise NotIndexable(path, str(exc), Category.DEFLATE_BOMB) from exc
    except dicomfile.Unreadable as exc:
        raise NotIndexable(path, str(exc), Category.UNREADABLE) from exc
    fallbacks = [*fallbacks, settings.DICOM_FALLBACK_CHARSET]
    declared = "\\".join(charsets.declared(header.ds))
    charset_problem = charsets.replace_unknown(header.ds, fallbacks)
    charsets.apply_fallback(header.ds, next((f for f in fallbacks if f), None))
    return header, charset_problem, declared


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
    """Index the file stored at ``relpath`` (relative to STORAGE_DIR).

    Without ``fallback_charset``, the fallback of the node that sent the file (the
    SCP writes the calling AE title into the file meta) applies, then the global one.
    Raises NotIndexable for a file that must stay out of the index; returns the
    rows written, with ``problem`` set when the header is indexed but something is
    wrong with the file (IndexingFailure's docstring lists which).
    """
    cache = cache or RowCache()
    parsed = parse_file(
        relpath, source_ae=source_ae, received_at=received_at, cache=cache, fallback_charset=fallback_charset
    )
    return parsed.finish(upsert(parsed.record, cache, source_ae=parsed.source_ae))


@dataclass
class Parsed:
    """A stored file read and turned into its index rows, not written yet."""

    record: "IndexRecord"
    source_ae: str
    problem: tuple[str, str] | None
    coerced: bool

    def finish(self, indexed: Indexed) -> Indexed:
        """``indexed`` (the rows written) with what the file itself told."""
        return dataclasses.replace(
            indexed,
            problem=self.problem,
            sop_instance_uid=self.record.sop_uid,
            source_ae=self.source_ae,
            coerced=self.coerced,
        )


def parse_file(
    relpath: str,
    *,
    source_ae: str = "",
    received_at: dt.datetime | None = None,
    cache: "RowCache",
    fallback_charset: str | None = None,
    correct: bool = True,
) -> Parsed:
    """Read the file stored at ``relpath`` into its index rows (see ``index_file``).

    With ``correct``, the front desk's corrections are applied (``apply_corrections``);
    without, the caller applies them (to a whole batch, after ``prefetch_corrections``).
    """
    path = storage.absolute(relpath)
    fallbacks = [fallback_charset]
    if fallback_charset is None:
        meta_ae = source_ae or _meta_ae(path)
        fallbacks = [cache.node_fallback(meta_ae)] if meta_ae else []
    header, charset_problem, declared_charset = _read(path, fallbacks)
    ds = header.ds

    # Our own decoding of the few UIDs and numbers with the scan, pydicom's without.
    get = dicomfile.quick_get if settings.INGEST_SCAN_HEADER else Dataset.get
    study_uid = str(get(ds, "StudyInstanceUID", "")).strip()
    series_uid = str(get(ds, "SeriesInstanceUID", "")).strip()
    sop_uid = str(get(ds, "SOPInstanceUID", "")).strip()
    for what, uid in (("Study", study_uid), ("Series", series_uid), ("SOP", sop_uid)):
        if not storage.is_valid_uid(uid):
            if not header.dicm:
                raise NotIndexable(relpath, f"not a DICOM file (no DICM prefix, no {what} Instance UID)")
            raise NotIndexable(
                relpath,
                f"missing or invalid {what} Instance UID {uid!r}",
                Category.NO_UIDS,
                sop_uid if storage.is_valid_uid(sop_uid) else "",
            )

    meta = getattr(ds, "file_meta", None) or Dataset()
    sop_class_uid = str(get(ds, "SOPClassUID", "") or get(meta, "MediaStorageSOPClassUID", "")).strip()
    transfer_syntax = str(get(meta, "TransferSyntaxUID", "1.2.840.10008.1.2")).strip()
    if not source_ae:
        source_ae = str(get(meta, "SourceApplicationEntityTitle", "") or "").strip()
    stat = header.stat or path.stat()
    if received_at is None:
        received_at = dt.datetime.fromtimestamp(stat.st_mtime, tz=dt.UTC)
    problem = None
    pixel_problem = dicomfile.pixel_problem(header)
    if pixel_problem:
        # One row per file: the pixel problem (no thumbnail) first, the character set's after.
        problem = (Category.PIXELS, "; ".join(filter(None, [pixel_problem, charset_problem])))
    elif charset_problem:
        problem = (Category.CHARSET, charset_problem)
    if charset_problem:
        log.warning("%s: %s", relpath, charset_problem)

    # declared_charset: as the file declares it, even when we read it as something else.
    full, alphabetic, ideographic, phonetic = charsets.person_name(ds, "PatientName")
    patient_fields = {
        "name": _clip(full, 200),
        "name_alphabetic": _clip(alphabetic, 200),
        "name_ideographic": _clip(ideographic, 200),
        "name_phonetic": _clip(phonetic, 200),
        # Search keys (pinyin, initials) computed here, so a re-index keeps them right too.
        **name_keys(_clip(alphabetic, 200), _clip(ideographic, 200), _clip(phonetic, 200)),
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
        "series_number": _int(get(ds, "SeriesNumber")),
        "description": _clip(charsets.text(ds, "SeriesDescription"), 200),
        "body_part": _clip(charsets.text(ds, "BodyPartExamined"), 64),
    }
    instance_fields = {
        "sop_class_uid": sop_class_uid[:64],
        "instance_number": _int(get(ds, "InstanceNumber")),
        "transfer_syntax_uid": transfer_syntax[:64],
        "rows": _int(get(ds, "Rows")),
        "columns": _int(get(ds, "Columns")),
        "number_of_frames": max(_int(get(ds, "NumberOfFrames")) or 1, 1),
        "specific_character_set": _clip(declared_charset, 128),
        "file_path": relpath,
        "file_size": stat.st_size,
        "checksum": hashlib.sha256(header.content).hexdigest() if header.content is not None else sha256_file(path),
        "received_at": received_at,
        "source_ae": _clip(source_ae, 16),
    }
    patient_key = {
        "patient_id": _clip(charsets.text(ds, "PatientID"), 64),
        "issuer": _clip(charsets.text(ds, "IssuerOfPatientID"), 64),
    }

    record = IndexRecord(
        patient_key, patient_fields, study_uid, study_fields, series_uid, series_fields, sop_uid, instance_fields
    )
    coerced = apply_corrections(record, cache) if correct else False
    return Parsed(record, source_ae, problem, coerced)


def apply_corrections(record: "IndexRecord", cache: "RowCache") -> bool:
    """Index a late arrival under what the front desk corrected (records/demographics.py); True if it did.

    A file whose (PatientID, issuer) the front desk ruled on (a PatientAlias: an old
    ID, a merged duplicate's, or the corrected patient's own) goes to that patient and
    leaves the patient's values as they are; a study's corrected fields are kept too.
    A re-send never undoes a correction. One query per key and per study in a batch.
    """
    coerced = False
    target = cache.alias(record.patient_key["patient_id"], record.patient_key["issuer"])
    if target is not None:
        _pk, key, values = target
        if {"patient_id": key[0], "issuer": key[1]} != record.patient_key or any(
            record.patient_fields[f] != v for f, v in values.items()
        ):
            coerced = True
        record.patient_key = {"patient_id": key[0], "issuer": key[1]}
        record.patient_fields = {}
    pinned = cache.corrected_study(record.study_uid)
    if pinned:
        if any(record.study_fields[f] != v for f, v in pinned.items()):
            coerced = True
        for field in pinned:
            record.study_fields.pop(field, None)
    return coerced


def _meta_ae(path) -> str:
    """The calling AE title the SCP wrote into the file meta, read without the data set."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        with open(path, "rb") as fp:
            read_preamble(fp, True)
            return str(_read_file_meta_info(fp).get("SourceApplicationEntityTitle", "") or "").strip()
    except Exception:
        return ""  # the full read that follows says what is wrong with the file


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
        self._studies: dict[str, tuple[int, int, tuple[str, str]] | None] = {}
        self._fallbacks: dict[str, str | None] = {}
        self._corrections: dict[tuple, object] = {}
        self._held: dict[tuple, dict | None] = {}

    def get(self, key: tuple, fields: dict) -> int | None:
        hit = self._rows.get(key)
        return hit[0] if hit and hit[1] == fields else None

    def put(self, key: tuple, pk: int, fields: dict) -> None:
        self._rows[key] = (pk, fields)

    def study(self, study_uid: str) -> tuple[int, int, tuple[str, str]] | None:
        """(study pk, patient pk, (patient ID, issuer)) of a study we hold, or None."""
        if study_uid not in self._studies:
            row = (
                Study.objects.filter(study_instance_uid=study_uid)
                .values_list("pk", "patient_id", "patient__patient_id", "patient__issuer")
                .first()
            )
            self._studies[study_uid] = (row[0], row[1], (row[2], row[3])) if row else None
        return self._studies[study_uid]

    def put_study(self, study_uid: str, study_pk: int, patient_pk: int, patient_key: tuple[str, str]) -> None:
        self._studies[study_uid] = (study_pk, patient_pk, patient_key)

    _ALIAS = (
        "patient_id",
        "patient__patient_id",
        "patient__issuer",
        "patient__name",
        "patient__name_alphabetic",
        "patient__name_ideographic",
        "patient__name_phonetic",
        "patient__birth_date",
        "patient__sex",
    )
    _CORRECTED = ("fields", "study__accession_number", "study__description", "study__referring_physician")

    def alias(self, patient_id: str, issuer: str) -> tuple[int, tuple[str, str], dict] | None:
        """(pk, (patient ID, issuer), corrected values) of the patient a corrected key leads to, or None."""
        key = ("alias", patient_id, issuer)
        if key not in self._corrections:
            from records.models import PatientAlias

            row = (
                PatientAlias.objects.filter(dicom_patient_id=patient_id, dicom_issuer=issuer)
                .values_list(*self._ALIAS)
                .first()
            )
            self._corrections[key] = self._alias(row)
        return self._corrections[key]

    @staticmethod
    def _alias(row) -> tuple[int, tuple[str, str], dict] | None:
        names = ("name", "name_alphabetic", "name_ideographic", "name_phonetic", "birth_date", "sex")
        return (row[0], (row[1], row[2]), dict(zip(names, row[3:], strict=True))) if row else None

    def corrected_study(self, study_uid: str) -> dict:
        """{field: value} of a study's corrected fields, as the index holds them ({} for most studies)."""
        key = ("study", study_uid)
        if key not in self._corrections:
            from records.models import CorrectedStudy

            row = CorrectedStudy.objects.filter(study_instance_uid=study_uid).values_list(*self._CORRECTED).first()
            self._corrections[key] = self._corrected(row)
        return self._corrections[key]

    @staticmethod
    def _corrected(row) -> dict:
        if not row:
            return {}
        current = dict(zip(("accession_number", "description", "referring_physician"), row[1:], strict=True))
        return {field: current[field] for field in row[0] if field in current}

    def prefetch_corrections(self, records: list["IndexRecord"]) -> None:
        """Read what ``alias`` and ``corrected_study`` answer for a whole batch in two queries."""
        from records.models import CorrectedStudy, PatientAlias

        keys = {("alias", r.patient_key["patient_id"], r.patient_key["issuer"]) for r in records}
        keys = [key for key in keys if key not in self._corrections]
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            for key in chunk:
                self._corrections[key] = None
            rows = PatientAlias.objects.filter(dicom_patient_id__in={k[1] for k in chunk}).values_list(
                "dicom_patient_id", "dicom_issuer", *self._ALIAS
            )
            for patient_id, issuer, *row in rows:
                if ("alias", patient_id, issuer) in self._corrections:
                    self._corrections[("alias", patient_id, issuer)] = self._alias(row)
        uids = list({r.study_uid for r in records if ("study", r.study_uid) not in self._corrections})
        for start in range(0, len(uids), 500):
            chunk = uids[start : start + 500]
            for uid in chunk:
                self._corrections[("study", uid)] = {}
            rows = CorrectedStudy.objects.filter(study_instance_uid__in=chunk).values_list(
                "study_instance_uid", *self._CORRECTED
            )
            for uid, *row in rows:
                self._corrections[("study", uid)] = self._corrected(row)

    def prefetch_rows(self, records: list["IndexRecord"]) -> None:
        """Read the patients, studies and series a batch names in three queries (``_upsert_row`` uses them).

        Call inside the transaction that writes them: a row read here is used once, by the
        first upsert of its key; after that the cache holds what was written.
        """
        wanted = [
            (
                Patient,
                ("patient_id", "issuer"),
                {(r.patient_key["patient_id"], r.patient_key["issuer"]) for r in records},
            ),
            (Study, ("study_instance_uid",), {(r.study_uid,) for r in records}),
            (Series, ("series_instance_uid",), {(r.series_uid,) for r in records}),
        ]
        for model, key_fields, keys in wanted:
            keys = [key for key in keys if (model.__name__, *key) not in self._rows]
            columns = [f.attname for f in model._meta.concrete_fields]
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                for key in chunk:
                    self._held[(model.__name__, *key)] = None
                lookup = {f"{key_fields[0]}__in": {key[0] for key in chunk}}
                for row in model.objects.filter(**lookup).values(*columns):
                    cache_key = (model.__name__, *(row[f] for f in key_fields))
                    if cache_key in self._held:
                        row["pk"] = row.pop("id")
                        self._held[cache_key] = row
        study_keys = [uid for (uid,) in {(r.study_uid,) for r in records} if uid not in self._studies]
        patients = {row["pk"]: key[1:] for key, row in self._held.items() if key[0] == "Patient" and row}
        for uid in study_keys:
            row = self._held.get(("Study", uid))
            if row is not None and row["patient_id"] not in patients:
                continue  # a study of a patient the batch does not name: study() asks
            self._studies[uid] = (row["pk"], row["patient_id"], patients[row["patient_id"]]) if row else None

    def absent(self, key: tuple) -> bool:
        """True if ``prefetch_rows`` read this key and the database holds no such row (yet)."""
        return key in self._held and self._held[key] is None and key not in self._rows

    def hold(self, key: tuple, row: dict) -> None:
        """Keep ``row`` as if ``prefetch_rows`` had read it (a row the batch has just inserted)."""
        self._held[key] = row

    def pk(self, key: tuple) -> int:
        """The pk of a row written in this batch or read by ``prefetch_rows``."""
        if key in self._rows:
            return self._rows[key][0]
        return self._held[key]["pk"]

    def held(self, key: tuple) -> tuple[bool, dict | None]:
        """(True, the row as read by ``prefetch_rows`` or None if absent), once; (False, None) if not read."""
        if key in self._held:
            return True, self._held.pop(key)
        return False, None

    def node_fallback(self, ae_title: str) -> str | None:
        """The fallback character set of the node with this AE title ('' or None: none)."""
        if ae_title not in self._fallbacks:
            from network.models import ModalityNode

            self._fallbacks[ae_title] = (
                ModalityNode.objects.filter(ae_title=ae_title).values_list("fallback_charset", flat=True).first()
            )
        return self._fallbacks[ae_title] or None

    def clear(self) -> None:
        self._rows.clear()
        self._studies.clear()
        self._corrections.clear()
        self._held.clear()


def _upsert_row(model, cache: RowCache, key: dict, fields: dict, *, savepoint: bool = True) -> int:
    """Insert or update one row by its natural key; returns its pk.

    Writes only what changed: re-sending a study whose header did not change
    updates nothing, so concurrent workers indexing the same series do not
    contend for its row. Must run inside a transaction. Without ``savepoint``, a
    concurrent insert spoils the caller's transaction (``upsert_batch``: it starts over).
    """
    cache_key = (model.__name__, *key.values())
    pk = cache.get(cache_key, fields)
    if pk is not None:
        return pk
    read, row = cache.held(cache_key)
    if not read:
        row = model.objects.filter(**key).values("pk", *fields).first()
    if row is None:
        if savepoint:
            with transaction.atomic():  # a savepoint: a concurrent insert must not spoil the outer transaction
                pk = model.objects.create(**key, **fields).pk
        else:
            pk = model.objects.create(**key, **fields).pk
    else:
        pk = row["pk"]
        changed = {name: value for name, value in fields.items() if row[name] != value}
        if changed and model in (Patient, Study):
            changed = _unprotected(model, pk, changed)
        if changed:
            model.objects.filter(pk=pk).update(**changed, updated_at=timezone.now())
    cache.put(cache_key, pk, fields)
    return pk


def _unprotected(model, pk: int, changed: dict) -> dict:
    """``changed`` without the fields the front desk corrected since this batch looked (records/demographics.py).

    The batch's RowCache read the corrections once; a correction committed since must
    not be overwritten by a file with the old values. Only asked when a patient's or a
    study's values would change (rare: a re-send normally changes nothing); the row is
    locked first, so a correction cannot commit between the check and the update.
    """
    from records.models import CorrectedStudy, PatientAlias

    list(model.objects.select_for_update().filter(pk=pk).values_list("pk"))
    if model is Patient:
        return {} if PatientAlias.objects.filter(patient_id=pk).exists() else changed
    pinned = CorrectedStudy.objects.filter(study_id=pk).values_list("fields", flat=True).first() or []
    return {name: value for name, value in changed.items() if name not in pinned}


def _conflict(record: IndexRecord, source_ae: str, stored, resolution: str, detail: str) -> None:
    incoming = integrity.Identity(record.study_uid, record.patient_key["patient_id"], record.patient_key["issuer"])
    conflict = integrity.record_conflict(
        sop_instance_uid=record.sop_uid,
        source_ae=source_ae,
        stored=stored,
        incoming=incoming,
        resolution=resolution,
        detail=detail,
    )
    if conflict.detail == detail[:500]:
        log.warning("%s", detail)


def _parents(record: IndexRecord, cache: RowCache, source_ae: str, *, savepoint: bool = True) -> tuple[int, int]:
    """Upsert the patient, study and series of one instance, in that order; returns (series pk, study pk).

    Must run inside a transaction (``savepoint``: see ``_upsert_row``).
    """
    incoming_key = (record.patient_key["patient_id"], record.patient_key["issuer"])
    study = cache.study(record.study_uid)
    if study is not None and study[2] != incoming_key:
        # Never move a study (and every instance in it) because one instance
        # names another patient: keep the study's patient, record it.
        patient_pk = study[1]
        stored = integrity.Identity(record.study_uid, *study[2])
        _conflict(
            record,
            source_ae,
            stored,
            InstanceConflict.Resolution.KEPT_STUDY_PATIENT,
            f"instance {record.sop_uid} names patient {incoming_key[0]!r} but its study "
            f"{record.study_uid} belongs to {study[2][0]!r}: indexed in the study, which keeps its patient",
        )
    else:
        patient_pk = _upsert_row(Patient, cache, record.patient_key, record.patient_fields, savepoint=savepoint)
    study_pk = _upsert_row(
        Study,
        cache,
        {"study_instance_uid": record.study_uid},
        {"patient_id": patient_pk, **record.study_fields},
        savepoint=savepoint,
    )
    if study is None:
        cache.put_study(record.study_uid, study_pk, patient_pk, incoming_key)
    series_pk = _upsert_row(
        Series,
        cache,
        {"series_instance_uid": record.series_uid},
        {"study_id": study_pk, **record.series_fields},
        savepoint=savepoint,
    )
    return series_pk, study_pk


def upsert(record: IndexRecord, cache: RowCache | None = None, *, source_ae: str = "") -> Indexed:
    """Write the rows for one instance, parents first (always the same lock order).

    Integrity (imaging/integrity.py): an instance never moves its study to another
    patient (the study keeps its patient, the conflict is recorded), and an
    instance we hold under another study moves only if DICOM_UID_CONFLICT_POLICY
    is "replace" (recorded either way).
    """
    cache = cache or RowCache()
    incoming_key = (record.patient_key["patient_id"], record.patient_key["issuer"])
    for attempt in range(3):
        try:
            with transaction.atomic():
                existing = (
                    Instance.objects.filter(sop_instance_uid=record.sop_uid)
                    .values(
                        "pk",
                        "series_id",
                        "series__study_id",
                        "series__study__study_instance_uid",
                        "series__study__patient__patient_id",
                        "series__study__patient__issuer",
                    )
                    .first()
                )
                if existing and existing["series__study__study_instance_uid"] != record.study_uid:
                    stored = integrity.Identity(
                        existing["series__study__study_instance_uid"],
                        existing["series__study__patient__patient_id"],
                        existing["series__study__patient__issuer"],
                    )
                    reason = integrity.describe(
                        record.sop_uid, stored, integrity.Identity(record.study_uid, *incoming_key)
                    )
                    if settings.DICOM_UID_CONFLICT_POLICY != "replace":
                        _conflict(
                            record,
                            source_ae,
                            stored,
                            InstanceConflict.Resolution.KEPT_STORED,
                            f"{reason}; the file now names the other study, the index keeps the instance where it "
                            "was (DICOM_UID_CONFLICT_POLICY=reject)",
                        )
                        return Indexed(existing["pk"], existing["series_id"], existing["series__study_id"], False)
                    _conflict(
                        record,
                        source_ae,
                        stored,
                        InstanceConflict.Resolution.REPLACED,
                        f"{reason}; replaced (DICOM_UID_CONFLICT_POLICY=replace)",
                    )
                series_pk, study_pk = _parents(record, cache, source_ae)
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
        # The locks and the counts as they stand, in one query.
        current = {
            pk: (ns, ni, mods)
            for pk, ns, ni, mods in Study.objects.select_for_update(no_key=True)
            .filter(pk__in=study_ids)
            .order_by("pk")
            .values_list("pk", "number_of_series", "number_of_instances", "modalities_in_study")
        }
        rows = list(
            Series.objects.filter(study_id__in=list(current))
            .annotate(n=Count("instances"))
            .values_list("pk", "study_id", "modality", "n", "number_of_instances")
        )
        per_study: dict[int, list] = {pk: [] for pk in current}
        # One UPDATE per distinct new value, not per row: a batch of small studies changes
        # a dozen series at once, most of them to the same count (bulk_update's CASE costs more).
        drifted: dict[int, list[int]] = {}
        for pk, study_id, modality, n, stored in rows:
            per_study[study_id].append((modality, n))
            if n != stored:
                drifted.setdefault(n, []).append(pk)
        for n, pks in drifted.items():
            Series.objects.filter(pk__in=pks).update(number_of_instances=n)
        changed: dict[tuple, list[int]] = {}
        for study_id, series in per_study.items():
            counts = (
                len(series),
                sum(n for _, n in series),
                "\\".join(sorted({m for m, _ in series if m}))[:200],
            )
            if current.get(study_id) != counts:
                changed.setdefault(counts, []).append(study_id)
        now = timezone.now()
        for counts, pks in changed.items():
            Study.objects.filter(pk__in=pks).update(
                number_of_series=counts[0],
                number_of_instances=counts[1],
                modalities_in_study=counts[2],
                updated_at=now,
            )


# What upsert and upsert_batch read of an instance already held.
_HELD = (
    "pk",
    "sop_instance_uid",
    "series_id",
    "series__study_id",
    "series__study__study_instance_uid",
    "series__study__patient__patient_id",
    "series__study__patient__issuer",
)


def _insert_new_parents(records: list[IndexRecord], cache: RowCache) -> None:
    """Insert the patients, studies and series ``_parents`` would create one at a time: three bulk inserts.

    Walks the batch as ``_parents`` will: a new study goes to the patient of its first
    instance, and an instance naming another patient for a study already taken does not
    write its patient. Each new row gets the values of the first instance that writes
    it, and stays in the cache as if ``prefetch_rows`` had read it, so that ``_parents``
    finds it and updates it only where a later instance differs, as after its own
    insert. Must run inside ``upsert_batch``'s transaction, after ``prefetch_rows``.
    """
    patients: dict[tuple, dict] = {}
    studies: dict[str, tuple[tuple, dict]] = {}  # study UID -> (its patient's key, fields)
    series: dict[str, tuple[str, dict]] = {}  # series UID -> (its study's UID, fields)
    owner: dict[str, tuple] = {}  # study UID -> the patient key _parents will see it under
    for record in records:
        incoming = (record.patient_key["patient_id"], record.patient_key["issuer"])
        if record.study_uid not in owner:
            study = cache.study(record.study_uid)
            owner[record.study_uid] = study[2] if study is not None else incoming
        if owner[record.study_uid] == incoming and cache.absent(("Patient", *incoming)):
            patients.setdefault(incoming, record.patient_fields)
        if cache.absent(("Study", record.study_uid)):
            studies.setdefault(record.study_uid, (incoming, record.study_fields))
        if cache.absent(("Series", record.series_uid)):
            series.setdefault(record.series_uid, (record.study_uid, record.series_fields))

    def insert(model, rows: list[tuple[tuple, dict, dict]]) -> None:
        # (cache key, natural key, fields) each; fields as _upsert_row compares them.
        created = model.objects.bulk_create([model(**key, **fields) for _, key, fields in rows])
        for (cache_key, key, fields), obj in zip(rows, created, strict=True):
            cache.hold(cache_key, {"pk": obj.pk, **key, **fields})

    insert(
        Patient,
        [(("Patient", *key), {"patient_id": key[0], "issuer": key[1]}, fields) for key, fields in patients.items()],
    )
    insert(
        Study,
        [
            (
                ("Study", uid),
                {"study_instance_uid": uid},
                {"patient_id": cache.pk(("Patient", *patient)), **fields},
            )
            for uid, (patient, fields) in studies.items()
        ],
    )
    insert(
        Series,
        [
            (
                ("Series", uid),
                {"series_instance_uid": uid},
                {"study_id": cache.pk(("Study", study_uid)), **fields},
            )
            for uid, (study_uid, fields) in series.items()
        ],
    )


def upsert_batch(items: list[Parsed], cache: RowCache) -> list[Indexed | None] | None:
    """Write the rows of many instances in one transaction: the rows ``upsert`` writes for each in turn.

    Parents go through the same checks as ``upsert``'s, in the batch's order; then the
    new instances are inserted in one bulk insert, the re-sent ones updated in another
    (an upsert on the SOP Instance UID). A batch costs one query for the instances
    already held, the parents the cache does not hold, and two inserts, instead of a
    transaction and three or four statements per instance. Returns each item's rows,
    None for an instance held under another study or one already in the batch: those
    (rare) go through ``upsert`` after this, as the caller does. Returns None with
    nothing written when the batch cannot be written as a whole (another worker
    inserted one of its rows meanwhile, or a value the database refuses): the caller
    then indexes the batch one instance at a time, which says which file is at fault.
    """
    if not connection.features.can_return_rows_from_bulk_insert:
        return None  # the new rows' pks are needed (SQLite 3.35+ and PostgreSQL give them)
    results: list[Indexed | None] = [None] * len(items)
    try:
        with transaction.atomic():
            uids = [item.record.sop_uid for item in items]
            cache.prefetch_rows([item.record for item in items])
            held = {}
            for start in range(0, len(uids), 500):
                for row in Instance.objects.filter(sop_instance_uid__in=uids[start : start + 500]).values(*_HELD):
                    held[row["sop_instance_uid"]] = row
            new: list[tuple[int, Instance, int]] = []
            resent: list[tuple[int, Instance, int, dict]] = []
            seen: set[str] = set()
            taken: list[tuple[int, Parsed]] = []
            for n, item in enumerate(items):
                record = item.record
                row = held.get(record.sop_uid)
                if record.sop_uid in seen or (row and row["series__study__study_instance_uid"] != record.study_uid):
                    continue  # upsert's: a conflict to record, or the second copy in this batch
                seen.add(record.sop_uid)
                taken.append((n, item))
            if settings.INGEST_BULK_PARENTS:
                _insert_new_parents([item.record for _, item in taken], cache)
            for n, item in taken:
                record = item.record
                row = held.get(record.sop_uid)
                series_pk, study_pk = _parents(record, cache, item.source_ae, savepoint=False)
                instance = Instance(sop_instance_uid=record.sop_uid, series_id=series_pk, **record.instance_fields)
                if row is None:
                    new.append((n, instance, study_pk))
                else:
                    resent.append((n, instance, study_pk, row))
            Instance.objects.bulk_create([instance for _, instance, _ in new])
            if resent:
                # As upsert's update: the same fields, indexed_at left as it was.
                Instance.objects.bulk_create(
                    [instance for _, instance, _, _ in resent],
                    update_conflicts=True,
                    unique_fields=["sop_instance_uid"],
                    update_fields=["series", *items[resent[0][0]].record.instance_fields],
                )
    except OperationalError:
        cache.clear()
        raise  # the database, not a file: the task retries the batch
    except Exception as exc:
        # IntegrityError: a concurrent insert (upsert's retry handles it), anything
        # else: one file's values; either way, one instance at a time.
        cache.clear()
        level = logging.INFO if isinstance(exc, IntegrityError) else logging.WARNING
        log.log(level, "batch of %d indexed one by one: %s: %s", len(items), exc.__class__.__name__, exc)
        return None
    for n, instance, study_pk in new:
        results[n] = Indexed(instance.pk, instance.series_id, study_pk, True)
    for n, instance, study_pk, row in resent:
        moved_from = row["series_id"] if row["series_id"] != instance.series_id else None
        results[n] = Indexed(row["pk"], instance.series_id, study_pk, False, moved_from)
    return results


def index_files(
    relpaths, *, source_ae: str = "", fallback_charset: str | None = None
) -> tuple[list[Indexed], list[tuple[str, str]]]:
    """Index many files; returns (indexed, [(relpath, error)]) and refreshes counts.

    One file never hides another: whatever is wrong with a file is recorded as an
    IndexingFailure for that file, and the others are indexed. ``fallback_charset``
    (the sending node's) applies to data sets that declare no Specific Character
    Set, or an unknown one; without it, the fallback of the node named in each
    file's meta, then DICOM_FALLBACK_CHARSET. With INGEST_BULK, every file is read
    first and the rows are written in one transaction (``upsert_batch``).
    """
    done: list[tuple[str, Indexed]] = []
    failed: list[tuple[str, str]] = []
    failures: list[tuple[str, str, str, str, bool]] = []  # relpath, uid, category, reason, indexed
    missing: list[str] = []
    cache = RowCache()

    def attempt(relpath, work):
        """``work()``, or None with what went wrong recorded against ``relpath``."""
        try:
            return work()
        except FileNotFoundError as exc:
            # Gone since it was queued (a spooled path, a rewrite): nothing to record.
            log.warning("not indexed: %s", exc)
            failed.append((relpath, str(exc)))
            missing.append(relpath)
        except NotIndexable as exc:
            log.warning("not indexed: %s", exc)
            failed.append((relpath, str(exc)))
            failures.append((relpath, exc.sop_instance_uid, exc.category, exc.reason, False))
        except Exception as exc:
            if isinstance(exc, OperationalError):
                raise  # the database, not the file: the task retries the batch
            # Anything else is this file's doing (a reader bug on odd bytes): it
            # must not stop the batch.
            log.exception("not indexed: %s", relpath)
            failed.append((relpath, f"{relpath}: {exc.__class__.__name__}: {exc}"))
            failures.append((relpath, "", Category.UNREADABLE, f"{exc.__class__.__name__}: {exc}", False))
        return None

    def read(relpath, correct=True):
        return parse_file(relpath, source_ae=source_ae, cache=cache, fallback_charset=fallback_charset, correct=correct)

    if settings.INGEST_BULK:
        parsed = [
            (relpath, p) for relpath in relpaths if (p := attempt(relpath, functools.partial(read, relpath, False)))
        ]
        cache.prefetch_corrections([p.record for _, p in parsed])
        for _, p in parsed:
            p.coerced = apply_corrections(p.record, cache)
        written = upsert_batch([p for _, p in parsed], cache) or [None] * len(parsed)
        for (relpath, p), indexed in zip(parsed, written, strict=True):
            if indexed is None:
                indexed = attempt(relpath, lambda p=p: upsert(p.record, cache, source_ae=p.source_ae))
            if indexed is not None:
                done.append((relpath, p.finish(indexed)))
    else:
        for relpath in relpaths:
            indexed = attempt(relpath, lambda relpath=relpath: read(relpath))
            if indexed is not None:
                indexed = attempt(relpath, lambda p=indexed: p.finish(upsert(p.record, cache, source_ae=p.source_ae)))
            if indexed is not None:
                done.append((relpath, indexed))
    for relpath, indexed in done:
        if indexed.problem:
            category, reason = indexed.problem
            failures.append((relpath, indexed.sop_instance_uid, category, reason, True))
    clean = [relpath for relpath in relpaths if relpath not in {f[0] for f in failures}]
    record_failures(failures, source_ae=source_ae, clean=clean + missing)
    indexed = [i for _, i in done]
    # The study of each instance, and the series a re-sent instance left (its study may be another).
    moved_from = {i.moved_from_series_id for i in indexed if i.moved_from_series_id}
    refresh_counts(series_ids=moved_from, study_ids={i.study_id for i in indexed})
    return indexed, failed


def record_failures(failures, *, source_ae: str = "", clean=()) -> None:
    """Write an IndexingFailure per problem file; delete those of files now indexed cleanly."""
    clean = list(clean)
    for start in range(0, len(clean), 500):
        IndexingFailure.objects.filter(file_path__in=clean[start : start + 500]).delete()
    for relpath, sop_uid, category, reason, indexed in failures:
        reason = reason[:500]
        updated = IndexingFailure.objects.filter(file_path=relpath).update(
            sop_instance_uid=sop_uid[:64],
            category=category,
            indexed=indexed,
            reason=reason,
            attempts=F("attempts") + 1,
            last_failed_at=timezone.now(),
        )
        if not updated:
            try:
                with transaction.atomic():
                    IndexingFailure.objects.create(
                        file_path=relpath[:255],
                        sop_instance_uid=sop_uid[:64],
                        source_ae=source_ae[:16],
                        category=category,
                        indexed=indexed,
                        reason=reason,
                    )
            except IntegrityError:
                pass  # another worker recorded the same file at the same moment
