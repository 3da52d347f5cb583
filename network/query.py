"""The one translator from a DICOM query identifier to an ORM query, and back.

C-FIND (``network/dimse/find.py``) and QIDO-RS share it. PS3.4 Annex C:

- Levels PATIENT, STUDY, SERIES, IMAGE of the Patient Root and Study Root
  information models, searched hierarchically: the unique keys of the levels
  above the query level must be given (C.4.1.2.1). Harmless departures real
  SCUs rely on are accepted: patient attributes as matching keys in a Study
  Root query, and a Patient Root SERIES/IMAGE query without PatientID when the
  Study Instance UID (globally unique) is given.
- Matching (C.2.2.2): universal (empty), single value, wildcard ``*`` and
  ``?``, list of UIDs, date/time ranges (open-ended too), StudyDate and
  StudyTime combined into one date-time range (C.2.2.2.5.2), Person Names
  case-insensitive (``DICOM_PN_CASE_INSENSITIVE``) on any name group.
- Responses carry every requested key: what the index knows, counts computed
  from it, and an empty (zero-length) element for anything else.

C-MOVE and C-GET (``network/dimse/move.py``, ``get.py``) read their identifier
here too, with the retrieve rules (C.4.2.2.1, C.4.3.2.1): ``retrieve_instances``.
"""

import datetime as dt
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Q, Subquery, Sum, Value
from django.db.models.functions import Coalesce, Upper
from django.db.models.lookups import Lookup
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from imaging import charsets, storage
from records import search
from records.models import Instance, Patient, Series, Study

log = logging.getLogger(__name__)

PATIENT_ROOT = "patient"
STUDY_ROOT = "study"
LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")

# Failure statuses of C-FIND, C-MOVE and C-GET (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # no or bad QueryRetrieveLevel, missing or invalid unique keys
UNABLE_TO_PROCESS = 0xC000  # a value we cannot read (a date range such as 20241301-, a broken identifier)


class QueryError(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Attr:
    """A DICOM attribute the index knows: its level, its column, how it matches."""

    level: str
    column: str | None  # relative to the level's model; None: computed or constant
    kind: str  # uid, text, pn, date, time, int, modalities, computed


_ATTRS: dict[str, Attr] = {
    # Patient
    "PatientName": Attr("PATIENT", "name", "pn"),
    "PatientID": Attr("PATIENT", "patient_id", "text"),
    "IssuerOfPatientID": Attr("PATIENT", "issuer", "text"),
    "PatientBirthDate": Attr("PATIENT", "birth_date", "date"),
    "PatientSex": Attr("PATIENT", "sex", "text"),
    "NumberOfPatientRelatedStudies": Attr("PATIENT", None, "computed"),
    "NumberOfPatientRelatedSeries": Attr("PATIENT", None, "computed"),
    "NumberOfPatientRelatedInstances": Attr("PATIENT", None, "computed"),
    # Study
    "StudyInstanceUID": Attr("STUDY", "study_instance_uid", "uid"),
    "StudyDate": Attr("STUDY", "study_date", "date"),
    "StudyTime": Attr("STUDY", "study_time", "time"),
    "AccessionNumber": Attr("STUDY", "accession_number", "text"),
    "StudyID": Attr("STUDY", "study_id", "text"),
    "StudyDescription": Attr("STUDY", "description", "text"),
    "ReferringPhysicianName": Attr("STUDY", "referring_physician", "pn_full"),
    "ModalitiesInStudy": Attr("STUDY", "modalities_in_study", "modalities"),
    "NumberOfStudyRelatedSeries": Attr("STUDY", "number_of_series", "computed"),
    "NumberOfStudyRelatedInstances": Attr("STUDY", "number_of_instances", "computed"),
    # Series
    "SeriesInstanceUID": Attr("SERIES", "series_instance_uid", "uid"),
    "Modality": Attr("SERIES", "modality", "text"),
    "SeriesNumber": Attr("SERIES", "series_number", "int"),
    "SeriesDescription": Attr("SERIES", "description", "text"),
    "BodyPartExamined": Attr("SERIES", "body_part", "text"),
    "NumberOfSeriesRelatedInstances": Attr("SERIES", "number_of_instances", "computed"),
    # Image
    "SOPInstanceUID": Attr("IMAGE", "sop_instance_uid", "uid"),
    "SOPClassUID": Attr("IMAGE", "sop_class_uid", "uid"),
    "InstanceNumber": Attr("IMAGE", "instance_number", "int"),
    "Rows": Attr("IMAGE", "rows", "int"),
    "Columns": Attr("IMAGE", "columns", "int"),
    "NumberOfFrames": Attr("IMAGE", "number_of_frames", "int"),
}

# From the query level's model to each level at or above it.
_ATTR_TAGS = {keyword: Tag(keyword) for keyword in _ATTRS}
_PATHS = {
    "PATIENT": {"PATIENT": ""},
    "STUDY": {"PATIENT": "patient__", "STUDY": ""},
    "SERIES": {"PATIENT": "study__patient__", "STUDY": "study__", "SERIES": ""},
    "IMAGE": {"PATIENT": "series__study__patient__", "STUDY": "series__study__", "SERIES": "series__", "IMAGE": ""},
}
_MODELS = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series, "IMAGE": Instance}
# Newest studies first; series and images in their acquisition order.
_ORDER = {
    "PATIENT": ("name_alphabetic", "patient_id"),
    "STUDY": ("-study_date", "-study_time", "-pk"),
    "SERIES": ("series_number", "pk"),
    "IMAGE": ("instance_number", "pk"),
}
_UNIQUE_KEYS = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
_NAME_GROUPS = ("name_alphabetic", "name_ideographic", "name_phonetic")
# Keys of the identifier that are not requested attributes.
_NOT_RETURNED = {"QueryRetrieveLevel", "SpecificCharacterSet"}


@dataclass
class Query:
    model: str
    level: str
    queryset: object
    requested: list[tuple[int, str, str]] = field(default_factory=list)  # (tag, keyword, VR)
    columns: dict[str, str] = field(default_factory=dict)  # keyword -> values() name


# --- Matching ----------------------------------------------------------------------


class _Pattern(Lookup):
    """``lhs LIKE pattern ESCAPE '\\'``, or on SQLite ``lhs GLOB pattern`` (case-sensitive, as DICOM is)."""

    lookup_name = "dicom_pattern"
    prepare_rhs = False

    def as_sql(self, compiler, conn):
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        if conn.vendor == "sqlite":
            return f"{lhs} GLOB {rhs}", [*lhs_params, *rhs_params]
        return f"{lhs} LIKE {rhs} ESCAPE '\\'", [*lhs_params, *rhs_params]


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern: %, _ and \\ are literal, * and ? are not."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def glob_pattern(value: str) -> str:
    """A DICOM wildcard value as an SQLite GLOB pattern: [ and ] are literal, * and ? stay."""
    return "".join("[[]" if c == "[" else "[]]" if c == "]" else c for c in value)


def _wildcard_q(expression, value: str) -> Q:
    """Match ``expression`` (a column or Upper(column)) against a value with * or ?."""
    if connection.vendor == "sqlite":
        q = Q(_Pattern(expression, glob_pattern(value)))
        # GLOB on an expression cannot use an index by itself; the literal prefix
        # as a range can (BINARY order is code point order in SQLite).
        prefix = value[: min(i for i in (value.find("*"), value.find("?"), len(value)) if i >= 0)]
        if prefix:
            upper_bound = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            q &= Q(_Range(expression, (prefix, upper_bound)))
        return q
    return Q(_Pattern(expression, like_pattern(value)))


class _Range(Lookup):
    """``lo <= lhs < hi`` (half-open), for prefix ranges on expressions."""

    lookup_name = "dicom_prefix_range"
    prepare_rhs = False

    def get_db_prep_lookup(self, value, conn):
        return "%s AND %s", list(value)

    def as_sql(self, compiler, conn):
        lhs, lhs_params = self.process_lhs(compiler, conn)
        _, rhs_params = self.process_rhs(compiler, conn)
        return f"{lhs} >= %s AND {lhs} < %s", [*lhs_params, *rhs_params]


def _fold(value: str) -> str:
    """Upper-case a value the way the database's UPPER() does (SQLite: ASCII letters only)."""
    if connection.vendor == "sqlite":
        return value.translate(_ASCII_UPPER)
    return value.upper()


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _string_q(column: str, value: str, *, fold: bool = False) -> Q:
    if fold:
        expression, value = Upper(column), _fold(value)
    else:
        expression = F(column)
    if set(value) <= {"*"}:
        return Q()  # "*" matches everything, empty values included
    if has_wildcard(value):
        return _wildcard_q(expression, value)
    if fold:
        return Q(_Exact(expression, value))
    return Q(**{column: value})


class _Exact(Lookup):
    lookup_name = "dicom_exact"
    prepare_rhs = False

    def as_sql(self, compiler, conn):
        lhs, lhs_params = self.process_lhs(compiler, conn)
        rhs, rhs_params = self.process_rhs(compiler, conn)
        return f"{lhs} = {rhs}", [*lhs_params, *rhs_params]


def _strip_name(value: str) -> str:
    """A Person Name group without padding and trailing empty components, as the index stores it."""
    components = [c.strip() for c in value.split("^")]
    while components and not components[-1]:
        components.pop()
    return "^".join(components)


def person_name_q(prefix: str, value: str) -> Q:
    """Match a Person Name on the index's name groups.

    "WANG^XI*" matches any group (alphabetic, ideographic or phonetic); a value
    with groups ("WANG^XIAOMING=王^小明") matches each given group on its own column.
    """
    fold = settings.DICOM_PN_CASE_INSENSITIVE
    groups = [_strip_name(g) for g in value.split("=")[:3]]
    if len(groups) == 1:
        if set(groups[0]) <= {"*"}:
            return Q()
        q = Q()
        for column in _NAME_GROUPS:
            q |= _string_q(prefix + column, groups[0], fold=fold)
        return q
    q = Q()
    for column, group in zip(_NAME_GROUPS, groups, strict=False):
        if group:
            q &= _string_q(prefix + column, group, fold=fold)
    return q


def parse_date(value: str, *, upper: bool = False) -> dt.date:
    value = value.strip().replace(".", "")
    if len(value) != 8 or not value.isdigit():
        raise ValueError(value)
    return dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def parse_time(value: str, *, upper: bool = False) -> dt.time:
    """A TM value; a truncated upper bound ("17") means the end of that hour."""
    value = value.strip().replace(":", "")
    main, _, frac = value.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6) or (frac and not frac.isdigit()):
        raise ValueError(value)
    fill = "5959" if upper else "0000"
    main = main + fill[len(main) - 2 :]
    hour, minute, second = int(main[0:2]), int(main[2:4]), min(int(main[4:6]), 59)
    if frac:
        micro = int((frac + ("9" if upper else "0") * 6)[:6])
    else:
        micro = 999999 if upper else 0
    return dt.time(hour, minute, second, micro)


def parse_range(value: str, parse, *, ordered: bool = True) -> tuple:
    """ "A-B", "-B", "A-" or "A" as (low, high); None for an open end."""
    value = value.strip()
    if "-" in value:
        low, _, high = value.partition("-")
        if not low.strip() and not high.strip():
            raise ValueError(value)
    else:
        low = high = value
    lo = parse(low) if low.strip() else None
    hi = parse(high, upper=True) if high.strip() else None
    if ordered and lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{value}: the range ends before it starts")
    return lo, hi


def _range_q(column: str, lo, hi) -> Q:
    q = Q()
    if lo is not None:
        q &= Q(**{f"{column}__gte": lo})
    if hi is not None:
        q &= Q(**{f"{column}__lte": hi})
    return q


def date_time_q(prefix: str, date_value: str, time_value: str) -> Q:
    """StudyDate and StudyTime as one date-time range (PS3.4 C.2.2.2.5.2).

    "20240101-20240102" with "2200-0600" is from 1 January 22:00 to 2 January
    06:00, not 22:00-06:00 on each day. A single date or no time is matched on
    its own.
    """
    date_column, time_column = prefix + "study_date", prefix + "study_time"
    d_lo, d_hi = parse_range(date_value, parse_date) if date_value else (None, None)
    if not time_value:
        return _range_q(date_column, d_lo, d_hi)
    # 2200-0600 is a valid time range across midnight when the dates differ.
    t_lo, t_hi = parse_range(time_value, parse_time, ordered=not date_value or d_lo == d_hi)
    if not date_value:
        return _range_q(time_column, t_lo, t_hi)
    q = _range_q(date_column, d_lo, d_hi)
    if d_lo is not None and t_lo is not None:
        q &= Q(**{f"{date_column}__gt": d_lo}) | Q(**{date_column: d_lo, f"{time_column}__gte": t_lo})
    if d_hi is not None and t_hi is not None:
        q &= Q(**{f"{date_column}__lt": d_hi}) | Q(**{date_column: d_hi, f"{time_column}__lte": t_hi})
    return q


def uid_list(value: str) -> list[str]:
    """The UIDs of a UID key: one, or a list ("1.2.3\\1.2.4", C.2.2.2.2)."""
    return [u.strip() for u in value.split("\\") if u.strip()]


def fuzzy_person_name_q(prefix: str, value: str) -> Q:
    """QIDO-RS ``fuzzymatching=true`` on a Person Name: the study list's search (records/search.py).

    "zw", "zhangwei", "Zhang Wei" and "张" find 张^伟; wildcards and group
    separators are ignored, as the words of a name typed into the study list.
    """
    text = " ".join(g for g in (value.replace("*", " ").replace("?", " ").split("=")) if g.strip())
    return search.name_q(text, prefix=prefix)


def _match_q(prefix: str, keyword: str, attr: Attr, value: str, *, fuzzy: bool = False) -> Q:
    column = prefix + (attr.column or "")
    if attr.kind == "pn" and fuzzy:
        return fuzzy_person_name_q(prefix, value)
    if attr.kind == "uid":
        uids = uid_list(value)
        return Q(**{column: uids[0]}) if len(uids) == 1 else Q(**{f"{column}__in": uids})
    if attr.kind == "pn":
        return person_name_q(prefix, value)
    if attr.kind == "pn_full":
        return _string_q(column, _strip_name(value), fold=settings.DICOM_PN_CASE_INSENSITIVE)
    if attr.kind == "date":
        return _range_q(column, *parse_range(value, parse_date))
    if attr.kind == "int":
        return Q(**{column: int(value)})
    if attr.kind == "modalities":
        # Any of the listed modalities among the study's series.
        study = prefix.removesuffix("__") or None
        q = Q()
        for modality in (m.strip() for m in value.split("\\") if m.strip()):
            q |= _string_q("modality", modality)
        return Q(Exists(Series.objects.filter(q, study=OuterRef(f"{study}__pk" if study else "pk"))))
    if attr.kind == "computed":
        return Q()  # return keys only
    return _string_q(column, value)


# --- Identifier -> query -------------------------------------------------------------


def _requested(identifier: Dataset) -> list[tuple[int, str, str]]:
    requested = []
    for element in identifier:
        if element.keyword in _NOT_RETURNED or element.tag.group in (0x0000, 0x0002):
            continue
        requested.append((int(element.tag), element.keyword, element.VR))
    return requested


def parse(
    identifier: Dataset,
    *,
    model: str,
    fallback_charset: str | None = None,
    relational: bool = False,
    fuzzy: bool = False,
) -> Query:
    """Turn a C-FIND identifier into a Query; raises QueryError with the status to answer.

    ``relational``: the unique keys of the levels above are not required (PS3.4
    C.4.1.2.2 relational queries; QIDO-RS ``/series`` and ``/instances`` search
    across studies). C-FIND stays hierarchical.
    ``fuzzy``: PatientName matches as on the study list (pinyin, initials,
    substrings: QIDO-RS ``fuzzymatching=true``) instead of C-FIND's matching.
    """
    if fallback_charset:
        charsets.apply_fallback(identifier, fallback_charset)
    level = _level(identifier, model)
    depth = LEVELS.index(level)
    values = {}
    present = set(identifier.keys())  # tags: "keyword in identifier" looks each keyword up again
    for keyword, attr in _ATTRS.items():
        if _ATTR_TAGS[keyword] in present and LEVELS.index(attr.level) <= depth:
            try:
                values[keyword] = charsets.text(identifier, keyword)
            except Exception as exc:
                raise QueryError(UNABLE_TO_PROCESS, f"{keyword} cannot be read: {exc}") from exc
    if not relational:
        _check_unique_keys(model, level, values)

    paths = _PATHS[level]
    q = Q()
    if values.get("StudyDate") or values.get("StudyTime"):
        try:
            q &= date_time_q(paths["STUDY"], values.pop("StudyDate", ""), values.pop("StudyTime", ""))
        except ValueError as exc:
            raise QueryError(UNABLE_TO_PROCESS, f"bad StudyDate/StudyTime range: {exc}") from exc
    for keyword, value in values.items():
        if not value:
            continue  # universal matching
        attr = _ATTRS[keyword]
        try:
            q &= _match_q(paths[attr.level], keyword, attr, value, fuzzy=fuzzy)
        except ValueError as exc:
            raise QueryError(UNABLE_TO_PROCESS, f"{keyword} {value!r} cannot be matched: {exc}") from exc

    requested = _requested(identifier)
    queryset = _MODELS[level].objects.filter(q).order_by(*_ORDER[level])
    queryset, columns = _select(queryset, level, {kw for _, kw, _ in requested})
    return Query(model=model, level=level, queryset=queryset, requested=requested, columns=columns)


def _level(identifier: Dataset, model: str) -> str:
    """The identifier's QueryRetrieveLevel, one the information model has."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"QueryRetrieveLevel {level!r} is not one of {LEVELS}")
    if model == STUDY_ROOT and level == "PATIENT":
        raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "the Study Root model has no PATIENT level")
    return level


def _check_unique_keys(model: str, level: str, values: dict[str, str]) -> None:
    """PS3.4 C.4.1.2.1: the unique keys of the levels above, each one value."""
    top = 0 if model == PATIENT_ROOT else 1
    needed = [_UNIQUE_KEYS[upper] for upper in LEVELS[top : LEVELS.index(level)]]
    if model == PATIENT_ROOT and level in ("SERIES", "IMAGE") and values.get("StudyInstanceUID"):
        needed.remove("PatientID")  # a Study Instance UID is unique on its own
    for keyword in needed:
        value = values.get(keyword, "")
        if not value or has_wildcard(value):
            raise QueryError(
                IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"a {level} query needs {keyword} (the unique key of the level above) as a single value",
            )


def _patient_counts(pk_path: str) -> dict[str, object]:
    studies = Study.objects.filter(patient=OuterRef(pk_path)).order_by().values("patient")
    zero = Value(0, output_field=IntegerField())
    return {
        "NumberOfPatientRelatedStudies": Coalesce(Subquery(studies.annotate(n=Count("pk")).values("n")), zero),
        "NumberOfPatientRelatedSeries": Coalesce(
            Subquery(studies.annotate(n=Sum("number_of_series")).values("n")), zero
        ),
        "NumberOfPatientRelatedInstances": Coalesce(
            Subquery(studies.annotate(n=Sum("number_of_instances")).values("n")), zero
        ),
    }


def _select(queryset, level: str, keywords: set[str]):
    """values() with the columns the requested keys need; returns (queryset, keyword -> name)."""
    paths = _PATHS[level]
    depth = LEVELS.index(level)
    columns: dict[str, str] = {}
    annotations = {}
    for keyword in keywords:
        attr = _ATTRS.get(keyword)
        if attr is None or LEVELS.index(attr.level) > depth:
            continue  # unknown here: answered empty
        if attr.column:
            columns[keyword] = paths[attr.level] + attr.column
        elif keyword.startswith("NumberOfPatientRelated"):
            pk_path = paths["PATIENT"] + "pk" if level != "PATIENT" else "pk"
            annotations[f"_{keyword}"] = _patient_counts(pk_path)[keyword]
            columns[keyword] = f"_{keyword}"
    queryset = queryset.annotate(**annotations) if annotations else queryset
    return queryset.values(*sorted(set(columns.values()))), columns


# --- Retrieve identifier -> instances (C-MOVE, C-GET) -------------------------------


def retrieve_instances(identifier: Dataset, *, model: str) -> list[Instance]:
    """The stored instances a C-MOVE/C-GET identifier names, in study, series then instance order.

    Only unique keys count (PS3.4 C.4.2.2.1): the retrieve level's is required
    (PatientID; or Study, Series, SOP Instance UIDs, one or a list); those of the
    levels above narrow the selection when present (relational-retrieve SCUs send
    only the level's key, hierarchical ones all of them); keys below the level are
    ignored; IssuerOfPatientID narrows a PatientID. Each is matched as a value,
    never as a wildcard. Raises ``QueryError`` with the status to answer. The rows
    carry only what sending needs.
    """
    try:
        level = _level(identifier, model)
        q = Q()
        for upper in LEVELS[: LEVELS.index(level) + 1]:
            keyword = _UNIQUE_KEYS[upper]
            values = _unique_key(identifier, keyword)
            if not values:
                if upper == level:
                    raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is required at the {level} level")
                continue
            column = _PATHS["IMAGE"][upper] + _ATTRS[keyword].column
            q &= Q(**{column: values[0]}) if len(values) == 1 else Q(**{f"{column}__in": values})
            if upper == "PATIENT" and (issuer := charsets.text(identifier, "IssuerOfPatientID")):
                q &= Q(**{_PATHS["IMAGE"]["PATIENT"] + _ATTRS["IssuerOfPatientID"].column: issuer})
    except QueryError:
        raise
    except Exception as exc:  # pydicom decodes the identifier lazily: a broken one fails here
        raise QueryError(UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}") from exc
    return list(
        Instance.objects.filter(q)
        .only("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "file_path")
        .order_by("series__study_id", "series__series_number", "series_id", "instance_number", "id")
    )


def _unique_key(identifier: Dataset, keyword: str) -> list[str]:
    """A unique key's values in a retrieve identifier: the PatientID, or its UIDs, each a valid one."""
    value = charsets.text(identifier, keyword)
    if keyword == "PatientID":
        return [value] if value else []
    uids = uid_list(value)
    for uid in uids:
        if not storage.is_valid_uid(uid):
            raise QueryError(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} {uid!r} is not a valid UID")
    return uids


# --- Rows -> responses ---------------------------------------------------------------


def _format(value, vr: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, dt.time):
        return value.strftime("%H%M%S.%f" if value.microsecond else "%H%M%S")
    return str(value)


_BINARY = {"US": "<H", "SS": "<h", "UL": "<L", "SL": "<l", "FL": "<f", "FD": "<d"}


def _element(tag: int, vr: str, value: str | None) -> RawDataElement:
    """A response element already encoded (Little Endian; text in ASCII or UTF-8).

    pydicom writes such an element as it is: no validation and no conversion of
    each value into pydicom's types and back, which were most of the cost of a match.
    """
    if value is None:
        raw = b""
    elif vr in _BINARY:
        number = float if vr in ("FL", "FD") else int
        raw = b"".join(struct.pack(_BINARY[vr], number(v)) for v in value.split("\\"))
    else:
        raw = value.encode("utf-8")
        if len(raw) % 2:
            raw += b"\0" if vr == "UI" else b" "
    return RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)


def row_values(query: Query, row: dict) -> Iterator[tuple[int, str, str, str | None]]:
    """(tag, keyword, VR, value as DICOM text or None) of every requested key of a row.

    What C-FIND's responses and QIDO-RS's dicom+json both say: one source of values.
    """
    for tag, keyword, vr in query.requested:
        value = None
        if keyword in query.columns:
            value = _format(row[query.columns[keyword]], vr)
        elif keyword == "RetrieveAETitle":
            value = settings.DICOM_AE_TITLE
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        yield tag, keyword, vr, value


def response(query: Query, row: dict, *, implicit_vr: bool = False) -> Dataset:
    """One pending response: every requested key, empty when the index does not know it.

    Its elements are encoded already, raw: the C-FIND SCP sends them as they are
    (``fastsend.encode_raw_dataset``); ``implicit_vr``, the encoding it will be
    written in, lets pydicom too write them without decoding them first.
    """
    ds = Dataset()
    ds[0x00080052] = _element(0x00080052, "CS", query.level)  # QueryRetrieveLevel
    non_ascii = False
    for tag, _keyword, vr, value in row_values(query, row):
        if vr == "SQ":
            ds[tag] = _element(tag, vr, None)  # an empty sequence
            continue
        vr = vr[:2]  # "US or SS" from a dictionary: the first
        if value is not None and not value.isascii():
            non_ascii = True
        try:
            ds[tag] = _element(tag, vr, value)
        except (ValueError, struct.error):
            ds[tag] = _element(tag, vr, None)  # a value the VR cannot hold: answered empty
    charset = ds._character_set  # the default; read before the raw element is there, which reading converts
    if non_ascii:
        ds[0x00080005] = _element(0x00080005, "CS", "ISO_IR 192")  # SpecificCharacterSet
        charset = convert_encodings("ISO_IR 192")
    ds.set_original_encoding(implicit_vr, True, charset)
    return ds


def results(query: Query, *, limit: int | None = None, implicit_vr: bool = False) -> Iterator[Dataset]:
    """The responses of a query, at most ``limit`` (DICOM_FIND_MAX_RESULTS) of them.

    Beyond the limit the first ones are answered (newest studies first) and a
    warning is logged: a workstation shows a partial list rather than none.
    """
    limit = settings.DICOM_FIND_MAX_RESULTS if limit is None else limit
    rows = list(query.queryset[: limit + 1]) if limit else list(query.queryset)
    if limit and len(rows) > limit:
        log.warning("C-FIND %s query matched more than %d results; answering the first %d", query.level, limit, limit)
        rows = rows[:limit]
    for row in rows:
        yield response(query, row, implicit_vr=implicit_vr)


def find(identifier: Dataset, *, model: str, limit: int | None = None) -> list[Dataset]:
    """Convenience for tests and QIDO-RS: parse and answer at once."""
    return list(results(parse(identifier, model=model), limit=limit))
