"""application/dicom+json (PS3.18 F.2) of a stored file's header or of an index row.

The one formatter of every DICOMweb answer in JSON, like Orthanc's
DicomWebFormatter: QIDO-RS results (from ``network.query.row_values``) and WADO-RS
metadata (from the file header, read with ``imaging.dicomfile``'s bounds).
Person names carry their Alphabetic, Ideographic and Phonetic groups; large
binary values (pixel data, > BULKDATA_THRESHOLD bytes of OB/OW/UN...) become a
``BulkDataURI`` that the caller builds, pointing back to the server as the
client sees it.
"""

import base64
import math
from collections.abc import Callable, Iterable

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

# Binary values above this many bytes are served by reference (BulkDataURI), below inline.
BULKDATA_THRESHOLD = 1024
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_NUMBER_VRS = {"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"}
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)

# (tag path, e.g. [0x00540016, 0, 0x00181072]) -> the BulkDataURI of that value.
BulkURI = Callable[[list[int]], str]


def tag_key(tag: int) -> str:
    return f"{tag:08X}"


def _person_name(value: str) -> dict:
    groups = value.split("=")
    out = {}
    for name, group in zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False):
        if group:
            out[name] = group
    return out


def _number(text: str, vr: str):
    text = text.strip()
    if not text:
        return None
    if vr == "IS":
        return int(float(text)) if ("." in text or "e" in text.lower()) else int(text)
    if vr == "DS":
        number = float(text)
        if not math.isfinite(number):
            return None
        return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number
    return float(text) if vr in ("FL", "FD") else int(text)


def text_element(vr: str, value: str | None) -> dict:
    """One element from its DICOM text form (backslash between values): an index row's value."""
    vr = vr[:2]
    element: dict = {"vr": vr}
    if value is None or value == "":
        return element
    if vr == "SQ":
        return element
    parts = value.split("\\") if vr not in ("LT", "ST", "UT", "UR") else [value]
    if vr == "PN":
        element["Value"] = [_person_name(p) for p in parts]
    elif vr in ("IS", "DS") or vr in _NUMBER_VRS:
        try:
            element["Value"] = [_number(p, vr) for p in parts]
        except ValueError:
            return element  # a value the VR cannot hold: answered empty, as C-FIND does
    else:
        element["Value"] = parts
    return element


def row(values: Iterable[tuple[int, str, str | None]]) -> dict:
    """A QIDO-RS result from (tag, VR, text value or None) triples."""
    return {tag_key(tag): text_element(vr, value) for tag, vr, value in sorted(values, key=lambda v: v[0])}


def _is_bulk(raw, vr: str) -> bool:
    if vr not in BINARY_VRS:
        return False
    length = raw.length if isinstance(raw, RawDataElement) else len(raw.value or b"")
    return length == 0xFFFFFFFF or length > BULKDATA_THRESHOLD


def dataset(ds: Dataset, bulk_uri: BulkURI, path: list[int] | None = None) -> dict:
    """A data set's dicom+json, large binary values as BulkDataURI; values never read for those.

    Walks the raw elements: a deferred or encapsulated pixel data element is
    referenced by its length alone, never loaded.
    """
    path = path or []
    out: dict = {}
    for tag in sorted(ds._dict):
        raw = ds._dict[tag]
        tag = int(tag)
        if tag >> 16 in (0x0000, 0x0002) or tag & 0xFFFF == 0:
            continue  # command and file meta groups, group lengths
        vr = _vr_of(raw, tag)
        if tag in _PIXEL_TAGS or _is_bulk(raw, vr):
            out[tag_key(tag)] = {"vr": vr if vr != "OB or OW" else "OW", "BulkDataURI": bulk_uri([*path, tag])}
            continue
        try:
            element = ds[tag]
        except Exception:  # a value pydicom cannot convert: present, empty
            out[tag_key(tag)] = {"vr": vr}
            continue
        if element.VR == "SQ":
            items = [dataset(item, bulk_uri, [*path, tag, i]) for i, item in enumerate(element.value or [])]
            out[tag_key(tag)] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        out[tag_key(tag)] = _element_json(element)
    return out


def _vr_of(raw, tag: int) -> str:
    vr = raw.VR
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    vr = str(vr)
    if " or " in vr:
        vr = vr.split(" or ")[-1] if vr.startswith("OB") else vr.split(" or ")[0]
    return vr


def _element_json(element) -> dict:
    vr = str(element.VR)
    if " or " in vr:
        vr = "OW" if vr.startswith("OB") else vr.split(" or ")[0]
    out: dict = {"vr": vr}
    if element.is_empty:
        return out
    value = element.value
    if vr in BINARY_VRS:
        out["InlineBinary"] = base64.b64encode(bytes(value)).decode("ascii")
        return out
    values = list(value) if element.VM > 1 else [value]
    if vr == "PN":
        out["Value"] = [_person_name(str(v) if not isinstance(v, PersonName) else _pn_text(v)) for v in values]
    elif vr == "AT":
        out["Value"] = [tag_key(int(v)) for v in values]
    elif vr in ("IS", "DS"):
        out["Value"] = [_number(str(v), vr) if str(v).strip() else None for v in values]
    elif vr in _NUMBER_VRS:
        # JSON has no NaN or infinity: such a value is sent as null.
        out["Value"] = [(_finite(float(v)) if vr in ("FL", "FD") else int(v)) for v in values]
    else:
        out["Value"] = [str(v) if v is not None else None for v in values]
    return out


def _finite(number: float) -> float | None:
    return number if math.isfinite(number) else None


def _pn_text(name: PersonName) -> str:
    return "=".join(str(c) for c in name.components)
