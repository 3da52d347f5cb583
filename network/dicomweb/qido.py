"""QIDO-RS (PS3.18 chapter 10): searches through network/query.py, the translator C-FIND uses.

The query parameters become a C-FIND identifier (keywords or tags, matching
values, ``includefield`` as empty return keys), which ``query.parse`` turns into
one ORM query: the same matching as C-FIND (wildcards, ranges, UID lists,
names in any group, case-insensitive). ``/series`` and ``/instances`` across
studies are relational queries. One SQL query answers a search, counts included.
"""

import functools
import json

from django.conf import settings
from django.http import HttpResponse
from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from network import query
from network.dicomweb import base, formatter
from network.dicomweb.multipart import matches, parse_accept

# Default return attributes, PS3.18 Tables 10.6.3-3 (study), -4 (series), -5 (instance);
# the unique keys of the levels above come along, so that a result can be retrieved.
_DEFAULTS = {
    "STUDY": (
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    "SERIES": (
        "StudyInstanceUID",
        "Modality",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    ),
    "IMAGE": (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "InstanceNumber",
        "Rows",
        "Columns",
        "NumberOfFrames",
    ),
}
# includefield=all: everything the index knows at the level and above.
_ALL = {
    level: tuple(k for k, a in query._ATTRS.items() if query.LEVELS.index(a.level) <= query.LEVELS.index(level))
    for level in ("STUDY", "SERIES", "IMAGE")
}
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching"}
_RETRIEVE_URL = 0x00081190
_CHARSET = 0x00080005
_BINARY_NUMBERS = {"US": int, "SS": int, "UL": int, "SL": int, "UV": int, "SV": int, "FL": float, "FD": float}


def _keyword(name: str) -> str:
    """A parameter's attribute keyword: given as a keyword or as a tag (00100010)."""
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise base.BadRequest(f"{name} is not an attribute we know (private or retired tags are not searchable)")
        return keyword
    if "." in name:
        raise base.BadRequest(f"{name}: matching within sequences is not supported")
    if tag_for_keyword(name) is None:
        raise base.BadRequest(f"{name!r} is neither a QIDO-RS parameter nor a DICOM attribute keyword or tag")
    return name


def _int_param(params, name: str, default: int | None) -> int | None:
    values = params.getlist(name)
    if not values:
        return default
    if len(values) > 1 or not values[-1].isdigit():
        raise base.BadRequest(f"{name} must be one non-negative integer, not {values!r}")
    return int(values[-1])


@functools.lru_cache(maxsize=4096)
def _tag_vr(keyword: str) -> tuple[int, str]:
    """(tag, VR) of a keyword (the first VR of "US or SS"), asked once per keyword and process."""
    return tag_for_keyword(keyword), dictionary_VR(keyword).split(" or ")[0]


def identifier(params, level: str, **uids: str) -> Dataset:
    """The C-FIND identifier of a QIDO-RS request at ``level`` with the path's ``uids`` (keyword -> UID).

    Matching keys carry their value, ``includefield`` and the level's defaults are
    empty return keys; RetrieveURL, which the index does not hold, is added by ``search``.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # values are Unicode already
    ds.QueryRetrieveLevel = level
    requested = list(_DEFAULTS[level])
    for value in params.getlist("includefield"):
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if name.lower() == "all":
                requested += _ALL[level]
            else:
                requested.append(_keyword(name))
    fuzzy = params.getlist("fuzzymatching")
    if fuzzy and fuzzy[-1].lower() not in ("true", "false"):
        raise base.BadRequest(f"fuzzymatching must be true or false, not {fuzzy[-1]!r}")
    matching: dict[str, str] = {}
    for name in params:
        if name in _CONTROL:
            continue
        keyword = _keyword(name)
        values = params.getlist(name)
        vr = _tag_vr(keyword)[1]
        if vr == "UI":
            # UID list matching: "1.2.3,1.2.4" or repeated parameters (PS3.18 8.3.4.1).
            value = "\\".join(u.strip() for v in values for u in v.split(",") if u.strip())
        elif len(values) > 1:
            raise base.BadRequest(f"{name} is given {len(values)} times; one value per attribute")
        else:
            value = values[0]
        if vr == "SQ":
            raise base.BadRequest(f"{name}: matching on sequences is not supported")
        matching[keyword] = value
    for keyword, uid in uids.items():
        if keyword in matching and matching[keyword] != uid:
            raise base.BadRequest(f"{keyword} in the query differs from the one in the path")
        matching[keyword] = uid
    for keyword in dict.fromkeys([*requested, *matching]):
        if keyword in ("RetrieveURL", "SpecificCharacterSet", "QueryRetrieveLevel"):
            continue
        tag, vr = _tag_vr(keyword)
        value = matching.get(keyword, "")
        if vr in _BINARY_NUMBERS:
            try:
                value = _BINARY_NUMBERS[vr](value) if value else None
            except ValueError as exc:
                raise base.BadRequest(f"{keyword}={value!r} is not a number") from exc
        # Matching values ("20240101-", "WANG*") are no valid values of their VR: not validated.
        ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
    return ds


def _fuzzy(params) -> bool:
    """``fuzzymatching=true`` (the last one given; ``identifier`` refused other values)."""
    values = params.getlist("fuzzymatching")
    return bool(values) and values[-1].lower() == "true"


def search(request, level: str, **uids: str) -> HttpResponse:
    """Answer a QIDO-RS search at ``level`` ("STUDY", "SERIES", "IMAGE") within the path's UIDs."""
    accept = request.headers.get("Accept")
    if not any(matches(base.DICOM_JSON, r.type) or r.type == "application/json" for r in parse_accept(accept)):
        raise base.not_acceptable(accept, base.DICOM_JSON)
    base.check_uids(**{_snake(k): v for k, v in uids.items()})
    params = request.GET
    limit_max = settings.DICOM_FIND_MAX_RESULTS
    limit = _int_param(params, "limit", limit_max) or limit_max
    offset = _int_param(params, "offset", 0)
    ds = identifier(params, level, **uids)
    try:
        # Relational (PS3.4 C.4.1.2.2): /series and /instances search across studies; the
        # path's UIDs, when given, are matching keys like any other.
        parsed = query.parse(ds, model=query.STUDY_ROOT, relational=True, fuzzy=_fuzzy(params))
    except query.QueryError as exc:
        raise base.BadRequest(exc.reason) from exc
    cap = min(limit, limit_max)
    rows = list(parsed.queryset[offset : offset + cap + 1])
    cut = len(rows) > cap
    rows = rows[:cap]
    root = base.root_url(request)
    results = []
    for row in rows:
        values = [(tag, vr, value) for tag, _kw, vr, value in query.row_values(parsed, row)]
        values.append((_CHARSET, "CS", "ISO_IR 192"))
        values.append((_RETRIEVE_URL, "UR", _retrieve_url(root, level, parsed, row)))
        results.append(formatter.row(values))
    response = HttpResponse(json.dumps(results, ensure_ascii=False), content_type=base.DICOM_JSON)
    if cut:
        why = "limit" if limit < limit_max else "DICOM_FIND_MAX_RESULTS"
        response["Warning"] = (
            f'299 {request.get_host()} "The number of results exceeded the maximum supported by the server '
            f'({cap}, {why}). Additional results can be requested with offset={offset + cap}."'
        )
    return response


def _snake(keyword: str) -> str:
    return {"StudyInstanceUID": "study_instance_uid", "SeriesInstanceUID": "series_instance_uid"}.get(keyword, keyword)


def _retrieve_url(root: str, level: str, parsed: query.Query, row: dict) -> str:
    study = row[parsed.columns["StudyInstanceUID"]]
    url = f"{root}studies/{study}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{row[parsed.columns['SeriesInstanceUID']]}"
    if level == "IMAGE":
        url += f"/instances/{row[parsed.columns['SOPInstanceUID']]}"
    return url


class SearchStudies(base.DicomWebView):
    permission_classes = [base.StudySearchRoles]

    def get(self, request):
        return search(request, "STUDY")


class SearchSeries(base.DicomWebView):
    def get(self, request, study=None):
        return search(request, "SERIES", **({"StudyInstanceUID": study} if study else {}))


class SearchInstances(base.DicomWebView):
    def get(self, request, study=None, series=None):
        uids = {}
        if study:
            uids["StudyInstanceUID"] = study
        if series:
            uids["SeriesInstanceUID"] = series
        return search(request, "IMAGE", **uids)
