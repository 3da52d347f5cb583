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
import struct
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


# Fast path: raw values of these VRs turned into JSON here, without pydicom's conversion
# into its value types and back (most of the cost of a header's metadata).
_ASCII_VRS = {"AE", "AS", "CS", "DA", "DT", "TM", "UI", "IS", "DS", "UR"}
_CHARSET_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_UNSPLIT = {"LT", "ST", "UT", "UR"}
_STRUCTS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
# Single-byte or stateless character sets decoded in one step; ISO 2022 ones go through pydicom.
_CODECS = {"": "latin-1", "ISO_IR 6": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_CODECS |= {"GB18030": "gb18030", "GBK": "gbk"}


def _codec(ds: Dataset) -> str | None:
    raw = ds._dict.get(0x00080005)
    if raw is None:
        return "latin-1"
    value = ds.get("SpecificCharacterSet") or ""
    if not isinstance(value, str):
        return None  # several: code extensions (ISO 2022)
    return _CODECS.get(value.strip().upper())


def _fast(raw, vr: str, codec: str | None, little: bool) -> dict | None:
    """The JSON of a raw element of a common VR, or None to let pydicom convert it."""
    if not isinstance(raw, RawDataElement) or raw.value is None:
        return None
    value = raw.value
    if raw.VR is None and vr in ("US", "SS"):
        return None  # implicit VR "US or SS": pydicom decides by Pixel Representation
    if vr in _STRUCTS:
        code = _STRUCTS[vr]
        size = struct.calcsize("<" + code)
        if not little or len(value) % size:
            return None
        numbers = list(struct.unpack(f"<{len(value) // size}{code}", value))
        if vr in ("FL", "FD"):
            numbers = [_finite(n) for n in numbers]
        return {"vr": vr, "Value": numbers} if numbers else {"vr": vr}
    if vr in _ASCII_VRS:
        text = value.decode("latin-1")
    elif vr in _CHARSET_VRS and codec is not None:
        try:
            text = value.decode(codec)
        except UnicodeDecodeError:
            return None
    else:
        return None
    text = text.rstrip("\x00 ")
    if not text:
        return {"vr": vr}
    parts = [text] if vr in _UNSPLIT else [p.strip() for p in text.split("\\")]
    if vr == "PN":
        return {"vr": vr, "Value": [_person_name(p) if p else None for p in parts]}
    if vr in ("IS", "DS"):
        try:
            return {"vr": vr, "Value": [_number(p, vr) for p in parts]}
        except ValueError:
            return None
    return {"vr": vr, "Value": [p if p else None for p in parts]}


def dataset(ds: Dataset, bulk_uri: BulkURI, path: list[int] | None = None, codec: str | None | bool = False) -> dict:
    """A data set's dicom+json, large binary values as BulkDataURI; values never read for those.

    Walks the raw elements: a deferred or encapsulated pixel data element is
    referenced by its length alone, never loaded. Common VRs are formatted from
    their raw bytes (``_fast``); the rest, and anything in an ISO 2022 character set,
    through pydicom.
    """
    path = path or []
    if codec is False:
        codec = _codec(ds)
    little = ds.original_encoding[1] is not False
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
        fast = _fast(raw, vr, codec, little)
        if fast is not None:
            out[tag_key(tag)] = fast
            continue
        try:
            element = ds[tag]
        except Exception:  # a value pydicom cannot convert: present, empty
            out[tag_key(tag)] = {"vr": vr}
            continue
        if element.VR == "SQ":
            items = [dataset(item, bulk_uri, [*path, tag, i], codec) for i, item in enumerate(element.value or [])]
            out[tag_key(tag)] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        try:
            out[tag_key(tag)] = _element_json(element)
        except (ValueError, TypeError, OverflowError):  # "1A" as an IS: present, empty
            out[tag_key(tag)] = {"vr": vr}
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
