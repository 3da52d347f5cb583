"""Text from data sets as proper Unicode, whatever character set the modality used.

We decode text elements from their raw bytes ourselves instead of trusting
pydicom 3.0's lazy decoding, which gets several cases wrong that our Chinese
and Japanese/Korean modalities produce:

- ISO 2022 IR 58 (GB2312): the ``ESC $ ) A`` designations are left in the text,
  and pydicom's encoder writes GB2312 bytes without them.
- IR 58 declared but its escape sequence omitted: decoded as Latin-1.
- One invalid byte turns a whole fragment, escape sequence included, into
  Latin-1 mojibake.
- A fallback character set declared after reading is ignored: pydicom decodes
  with the character set it saw when it read the file.

Decoding follows ISO 2022 as used by DICOM (PS3.5 6.1.2.5): G0 is ASCII (or
JIS X 0201 Roman, or a 94x94 set such as JIS X 0208), G1 holds a single-byte
upper half (Latin-1...) or a multi-byte set (KS X 1001, GB2312). The
Specific Character Set's first value gives the initial state, which comes back
after each delimiter. UTF-8, GB18030 and GBK stand alone, without escapes.

Invalid bytes never raise: they become U+FFFD and one warning is logged per
element, naming the element and the character set but never the value (PHI).
"""

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import charset as pydicom_charset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

log = logging.getLogger(__name__)

SPECIFIC_CHARACTER_SET = BaseTag(0x00080005)

# Python codecs for the G0 94x94 sets: each 7-bit byte pair, with the high bit
# set and after the prefix, is one character in that EUC codec.
_G0_MULTIBYTE = {
    "jis_x_0208": ("euc_jp", b""),
    "jis_x_0212": ("euc_jp", b"\x8f"),
    "gb2312": ("gb2312", b""),
}

# IR 58 text is decoded with GB18030, a superset that decodes every GB2312 byte
# pair identically and also the GBK characters some modalities slip in. It is
# encoded with strict GB2312.
_IR58_DECODE = "gb18030"
_ENCODE_CODEC = {_IR58_DECODE: "gb2312"}

# Escape sequences: which register they designate (0 = G0, 1 = G1) and what to.
# G0 None is ASCII; JIS X 0201 Roman only differs from it in 0x5C/0x7E.
_ESCAPES: dict[bytes, tuple[int, str | None]] = {
    b"\x1b(B": (0, None),
    b"\x1b(J": (0, None),
    b"\x1b$B": (0, "jis_x_0208"),
    b"\x1b$@": (0, "jis_x_0208"),
    b"\x1b$(D": (0, "jis_x_0212"),
    b"\x1b$A": (0, "gb2312"),
    b"\x1b)I": (1, "shift_jis"),
    b"\x1b-A": (1, "latin_1"),
    b"\x1b-B": (1, "iso8859_2"),
    b"\x1b-C": (1, "iso8859_3"),
    b"\x1b-D": (1, "iso8859_4"),
    b"\x1b-F": (1, "iso8859_7"),
    b"\x1b-G": (1, "iso8859_6"),
    b"\x1b-H": (1, "iso8859_8"),
    b"\x1b-L": (1, "iso8859_5"),
    b"\x1b-M": (1, "iso8859_9"),
    b"\x1b-T": (1, "tis_620"),
    b"\x1b-b": (1, "iso8859_15"),
    b"\x1b$)C": (1, "euc_kr"),
    b"\x1b$)A": (1, _IR58_DECODE),
}
_DESIGNATE = {(0, None): b"\x1b(B", (0, "jis_x_0208"): b"\x1b$B"}
_DESIGNATE.update({key: seq for seq, key in _ESCAPES.items() if key not in _DESIGNATE})

# An escape sequence in decoded text: ESC, intermediate bytes, final byte.
_ESCAPE_TEXT = re.compile("\x1b[\x20-\x2f]*[\x30-\x7e]?")


@dataclass(frozen=True)
class _Charset:
    term: str  # the DICOM defined term
    g0: str | None = None  # the G0 set it designates, None for ASCII
    g1: str | None = None  # the Python codec for bytes 0x80-0xFF
    standalone: str | None = None  # the Python codec for the whole value


_DEFAULT = _Charset("ISO_IR 6")
_BY_IR = {
    6: _DEFAULT,
    13: _Charset("ISO_IR 13", g1="shift_jis"),
    58: _Charset("ISO 2022 IR 58", g1=_IR58_DECODE),
    87: _Charset("ISO 2022 IR 87", g0="jis_x_0208"),
    149: _Charset("ISO 2022 IR 149", g1="euc_kr"),
    159: _Charset("ISO 2022 IR 159", g0="jis_x_0212"),
    192: _Charset("ISO_IR 192", standalone="utf_8"),
}
for _ir, _codec in {
    100: "latin_1",
    101: "iso8859_2",
    109: "iso8859_3",
    110: "iso8859_4",
    126: "iso8859_7",
    127: "iso8859_6",
    138: "iso8859_8",
    144: "iso8859_5",
    148: "iso8859_9",
    166: "tis_620",
    203: "iso8859_15",
}.items():
    _BY_IR[_ir] = _Charset(f"ISO_IR {_ir}", g1=_codec)
_GB18030 = _Charset("GB18030", standalone="gb18030")
# GBK is read as GB18030, its superset: modalities that declare GBK often
# write the odd GB18030-only character of a rare name.
_GBK = _Charset("GBK", standalone="gb18030")

# What devices and pydicom write instead of a defined term, normalised as
# ``_lookup`` does (upper case, letters and digits only). Python codec names come
# from pydicom's ``original_character_set`` of sequence items. Nothing else is
# accepted: Python's codec registry also knows "hex", "base64" or "rot13", which
# are no character sets and which a device once declared.
_ALIASES: dict[str, int | _Charset] = {
    "ASCII": 6,
    "USASCII": 6,
    "LATIN1": 100,
    "ISO88591": 100,
    "ISO88592": 101,
    "ISO88593": 109,
    "ISO88594": 110,
    "ISO88597": 126,
    "ISO88596": 127,
    "ISO88598": 138,
    "ISO88595": 144,
    "ISO88599": 148,
    "TIS620": 166,
    "ISO885915": 203,
    "SHIFTJIS": 13,
    "ISO2022JP": 87,
    "ISO2022JP2": 159,
    "EUCKR": 149,
    "GB2312": 58,
    "EUCCN": 58,
    "UTF8": 192,
    "UTF": 192,
    "GB18030": _GB18030,
    "GBK": _GBK,
    "CP936": _GBK,
    "ISO2022GBK": _GBK,  # "ISO 2022 GBK" as written in CP 1234
}

# Value Representations whose text may use the Specific Character Set; the
# others are in the default repertoire.
_CUSTOMIZABLE_VRS = {"SH", "LO", "ST", "LT", "UC", "UT", "PN"}
# Single-valued text VRs, where "\\" is text rather than a value separator.
_SINGLE_VALUE_VRS = {"ST", "LT", "UT", "UR"}
_STRING_VRS = _CUSTOMIZABLE_VRS | {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"}
# Delimiters after which the first character set is active again
# (PS3.5 6.1.2.5.3): TAB, LF, FF, CR, and "\\" between values, "^" and "=" in PN.
_TEXT_DELIMITERS = b"\t\n\f\r"


@functools.lru_cache(maxsize=256)
def _lookup(term: str) -> _Charset | None:
    """The character set a Specific Character Set value names, forgiving spelling; None if unknown.

    DICOM's defined terms ("ISO_IR 100", "ISO 2022 IR 58", "GB18030"...) in any
    case and punctuation ("ISO-IR 100", "ISO_IR100", "iso ir 192"), and the few
    aliases of ``_ALIASES`` ("UTF-8", "GB2312", "gbk", "latin_1").
    """
    key = re.sub(r"[^A-Z0-9]", "", term.upper())
    if not key or key == "ISO8859":  # "iso8859" is pydicom's name for the default
        return _DEFAULT
    match = re.fullmatch(r"ISO(?:2022)?(?:IR)?(\d+)", key)  # ISO_IR 100, ISO 2022 IR 58, ISO 2022 58
    if match and int(match.group(1)) in _BY_IR:
        return _BY_IR[int(match.group(1))]
    alias = _ALIASES.get(key)
    if isinstance(alias, int):
        return _BY_IR[alias]
    return alias


def is_known(term: str) -> bool:
    return _lookup(term) is not None


def _decode_codec(data: bytes, codec: str, problems: list[str]) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        if codec == "ascii":
            problems.append("bytes outside the declared character set")
        else:
            problems.append(f"bytes invalid in {codec}")
        return data.decode(codec, errors="replace")


def _decode_g0_multibyte(data: bytes, g0: str, problems: list[str]) -> str:
    codec, prefix = _G0_MULTIBYTE[g0]
    chars = []
    i = 0
    while i < len(data):
        byte = data[i]
        if 0x21 <= byte <= 0x7E:
            pair = data[i : i + 2]
            if len(pair) == 2 and 0x21 <= pair[1] <= 0x7E:
                chars.append(_decode_codec(prefix + bytes(b | 0x80 for b in pair), codec, problems))
                i += 2
                continue
            problems.append(f"truncated {g0} character")
            chars.append("\ufffd")
        else:  # SPACE and control characters stay single bytes
            chars.append(chr(byte))
        i += 1
    return "".join(chars)


def _decode_segment(data: bytes, g0: str | None, g1: str | None, problems: list[str]) -> str:
    """Bytes decoded under one G0/G1 designation."""
    if not data:
        return ""
    if g0 is None:
        # Every G1 codec we use is ASCII in its lower half, so it decodes the
        # whole segment; a GBK trail byte below 0x80 stays with its lead byte.
        return _decode_codec(data, g1 or "ascii", problems)
    parts = re.findall(rb"[\x00-\x7f]+|[\x80-\xff]+", data)
    return "".join(
        _decode_g0_multibyte(part, g0, problems) if part[0] < 0x80 else _decode_codec(part, g1 or "ascii", problems)
        for part in parts
    )


def _is_lead_byte(g1: str | None, byte: int) -> bool:
    """Whether ``byte`` starts a two-byte character of G1, whose second byte is no delimiter."""
    if g1 in (_IR58_DECODE, "gbk"):
        return 0x81 <= byte <= 0xFE
    if g1 == "euc_kr":
        return 0xA1 <= byte <= 0xFE
    if g1 == "shift_jis":
        return 0x81 <= byte <= 0x9F or 0xE0 <= byte <= 0xFC
    return False


def _read_escape(raw: bytes, start: int, problems: list[str]) -> tuple[tuple[int, str | None] | None, int]:
    """The designation of the escape sequence at ``start``, and where it ends."""
    end = start + 1
    while end < len(raw) and 0x20 <= raw[end] <= 0x2F:
        end += 1
    if end < len(raw) and 0x30 <= raw[end] <= 0x7E:
        end += 1
        designation = _ESCAPES.get(raw[start:end])
        if designation is None:
            problems.append("unknown escape sequence")
        return designation, end
    problems.append("truncated escape sequence")
    return None, end


def _decode_iso2022(
    raw: bytes, first: _Charset, declared: list[_Charset], delimiters: bytes, problems: list[str]
) -> str:
    initial_g0, initial_g1 = first.g0, first.g1
    # High bytes with no G1 designated: a modality that declares one G1 set and
    # omits its escape sequence still means that set.
    declared_g1 = {c.g1 for c in declared if c.g1}
    implied_g1 = declared_g1.pop() if len(declared_g1) == 1 else None
    g0, g1 = initial_g0, initial_g1
    out: list[str] = []
    segment = bytearray()

    def flush() -> None:
        out.append(_decode_segment(bytes(segment), g0, g1 or implied_g1, problems))
        segment.clear()

    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x1B:
            flush()
            designation, i = _read_escape(raw, i, problems)
            if designation is not None:
                register, target = designation
                if register == 0:
                    g0 = target
                else:
                    g1 = target
            continue
        # In a 94x94 G0 set, printable bytes are halves of characters: writers
        # must return to ASCII before a printable delimiter.
        if byte in delimiters and (g0 is None or byte < 0x20):
            flush()
            # The first value's sets are active again. When it has no G1, high
            # bytes after the delimiter can only mean the last designated G1:
            # keep it.
            g0, g1 = initial_g0, initial_g1 or g1
            segment.append(byte)
            i += 1
            continue
        if byte >= 0x80 and _is_lead_byte(g1 or implied_g1, byte) and i + 1 < len(raw) and raw[i + 1] != 0x1B:
            segment += raw[i : i + 2]
            i += 2
            continue
        segment.append(byte)
        i += 1
    flush()
    return "".join(out)


def _charsets(terms: Sequence[str], problems: list[str]) -> list[_Charset]:
    found = []
    for term in terms or [""]:
        charset = _lookup(term)
        if charset is None:
            problems.append(f"unknown character set {term!r}, read as the default")
            charset = _DEFAULT
        found.append(charset)
    return found


def _decode(raw: bytes, terms: Sequence[str], *, vr: str, problems: list[str]) -> str:
    charsets = _charsets(terms, problems) if vr in _CUSTOMIZABLE_VRS else [_DEFAULT]
    first, extensions = charsets[0], charsets[1:]
    standalone = [c for c in extensions if c.standalone]
    if first is _DEFAULT and len(standalone) == 1:
        # "\GB18030" is not a valid declaration (GB18030 has no code
        # extensions), but it cannot mean anything else.
        first = standalone[0]
    if first.g0 is None and raw.isascii() and b"\x1b" not in raw:
        # Most values: every set we decode is ASCII in its lower half, and with no escape
        # sequence the G0 stays ASCII; what the loops below would give, a tenth of an image's indexing.
        return raw.decode("ascii")
    if first.standalone:
        decoded = _decode_codec(raw, first.standalone, problems)
        if "\x1b" in decoded:
            problems.append(f"escape sequences in {first.term}, which has no code extensions")
            decoded = _ESCAPE_TEXT.sub("", decoded)
        return decoded
    delimiters = _TEXT_DELIMITERS
    if vr not in _SINGLE_VALUE_VRS:
        delimiters += b"\\"
    if vr == "PN":
        delimiters += b"^="
    return _decode_iso2022(raw, first, charsets, delimiters, problems)


def decode(raw: bytes, specific_character_set: str | Sequence[str] | None, *, vr: str = "LO") -> str:
    """Decode the raw value of a text element (all its values, "\\"-separated).

    Invalid bytes become U+FFFD; nothing is logged (see ``text()``).
    """
    if isinstance(specific_character_set, str):
        specific_character_set = specific_character_set.split("\\")
    return _decode(raw, specific_character_set or [""], vr=vr, problems=[])


def _declared(ds: Dataset) -> list[str]:
    """The data set's own Specific Character Set values, as written."""
    elem = ds.get_item(SPECIFIC_CHARACTER_SET)
    if elem is None or elem.value is None:
        return []
    value = elem.value
    if isinstance(value, bytes):
        values = value.decode("ascii", errors="replace").split("\\")
    elif isinstance(value, str):
        values = value.split("\\")
    else:
        values = [str(v) for v in value]
    return [v.strip(" \x00") for v in values]


def declared(ds: Dataset) -> list[str]:
    """The data set's own Specific Character Set values, as written (stripped)."""
    return _declared(ds)


def _terms(ds: Dataset) -> list[str]:
    declared = _declared(ds)
    if any(declared):
        return declared
    # A sequence item without its own declaration inherits its parent's, which
    # pydicom hands down as Python codec names.
    inherited = getattr(ds, "original_character_set", None) or ""
    if inherited == pydicom_charset.default_encoding:
        return [""]
    return [inherited] if isinstance(inherited, str) else list(inherited)


def apply_fallback(ds: Dataset, fallback: str | Sequence[str] | None) -> None:
    """Declare ``fallback`` on a data set that declares no character set.

    Call it right after reading, before any text element is read. A data set
    that declares a character set keeps it, even when its bytes do not fit:
    guessing would mangle the names that are right. ``fallback`` is a DICOM
    term (``"GB18030"``), or several separated by "\\" (``"\\ISO 2022 IR 58"``).

    Raises ValueError for a fallback that names no known character set, as a
    misconfiguration would otherwise turn every name into replacement characters.
    """
    if not fallback:
        return
    terms = fallback.split("\\") if isinstance(fallback, str) else list(fallback)
    terms = [t.strip() for t in terms]
    unknown = [t for t in terms if _lookup(t) is None]
    if unknown:
        raise ValueError(f"unknown fallback Specific Character Set {unknown!r}")
    if not any(terms) or any(_declared(ds)):
        return
    _declare(ds, terms)


def _declare(ds: Dataset, terms: list[str]) -> None:
    """Make ``terms`` (all known) the data set's Specific Character Set, for us and for pydicom."""
    ds.SpecificCharacterSet = terms[0] if len(terms) == 1 else terms
    # pydicom decodes lazily with the character set it saw when reading, not
    # with the element: tell it too, for code that reads ds.PatientName.
    python_encodings = [
        pydicom_charset.python_encoding.get(c.term) or c.standalone or c.g1 or pydicom_charset.default_encoding
        for c in (_lookup(t) or _DEFAULT for t in terms)
    ]
    is_implicit_vr, is_little_endian = ds.original_encoding
    ds.set_original_encoding(is_implicit_vr, is_little_endian, python_encodings)


def unknown_declared(ds: Dataset) -> list[str]:
    """The values of the data set's Specific Character Set that name no character set we know."""
    return [term for term in _declared(ds) if _lookup(term) is None]


def replace_unknown(ds: Dataset, fallbacks: Sequence[str | None]) -> str | None:
    """Read a data set that declares an unknown character set with the first usable fallback.

    A device that writes "hex" or a vendor name as its Specific Character Set
    still wrote its names in some character set: the sending node's fallback
    (then the global one) is the best guess we have, better than ASCII with
    every other byte replaced. Call it right after reading, like
    ``apply_fallback``. Returns what was done, for the caller to log once per
    file (None when the declaration is fine).
    """
    unknown = unknown_declared(ds)
    if not unknown:
        return None
    declared = "\\".join(_declared(ds))
    for fallback in fallbacks:
        terms = [t.strip() for t in (fallback or "").split("\\")]
        if any(terms) and all(_lookup(t) is not None for t in terms):
            _declare(ds, terms)
            return f"unknown Specific Character Set {declared!r}, read as {fallback!r}"
    _declare(ds, [""])
    return f"unknown Specific Character Set {declared!r}, read as the default repertoire"


@functools.cache
def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword!r}")
    return BaseTag(tag)


def _values(ds: Dataset, keyword: str) -> tuple[list[str], str] | None:
    """The element's decoded values and VR, or None when absent or not text."""
    tag = _tag(keyword)
    elem = ds.get_item(tag)
    if elem is None:
        return None
    vr = elem.VR
    if vr in (None, "UN") or " or " in str(vr):
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
    value = elem.value
    if value is None or value == b"" or value == "":
        return [], vr
    if vr not in _STRING_VRS:
        return None
    if isinstance(value, bytes):
        problems: list[str] = []
        # Dates, codes and UIDs are read in the default repertoire whatever the data set declares.
        terms = _terms(ds) if vr in _CUSTOMIZABLE_VRS else []
        decoded = _decode(value, terms, vr=vr, problems=problems)
        if problems:
            log.warning(
                "%s (%04X,%04X): %s; Specific Character Set %r; bad bytes replaced, escape sequences dropped",
                keyword,
                tag >> 16,
                tag & 0xFFFF,
                "; ".join(dict.fromkeys(problems)),
                "\\".join(terms or _terms(ds)) or "none",
            )
        values = [decoded] if vr in _SINGLE_VALUE_VRS else decoded.split("\\")
    else:
        # Already converted by pydicom (someone read it before us): keep its
        # text, minus any escape sequences it left in.
        items = value if isinstance(value, MultiValue | list | tuple) else [value]
        values = [_ESCAPE_TEXT.sub("", str(v)) for v in items]
    if vr in _SINGLE_VALUE_VRS:
        return [v.rstrip(" \x00") for v in values], vr
    return [v.strip(" \x00") for v in values], vr


def _person_name_groups(value: str) -> tuple[str, str, str]:
    groups = (value.split("=", 2) + ["", ""])[:3]
    cleaned = []
    for group in groups:
        components = [c.strip(" \x00") for c in _ESCAPE_TEXT.sub("", group).split("^")]
        while components and not components[-1]:
            components.pop()
        cleaned.append("^".join(components))
    return cleaned[0], cleaned[1], cleaned[2]


def _join_groups(groups: Sequence[str]) -> str:
    groups = list(groups)
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def text(ds: Dataset, keyword: str) -> str:
    """A string element's value as a str, values joined by "\\" ('' when absent or empty).

    Leading and trailing spaces are dropped (only trailing ones for ST, LT, UT).
    Non-string elements (numbers...) are given as pydicom formats them.
    """
    found = _values(ds, keyword)
    if found is None:
        value = ds.get(keyword)
        if value is None:
            return ""
        if isinstance(value, MultiValue | list | tuple):
            return "\\".join(str(v) for v in value)
        return str(value).strip()
    values, vr = found
    if vr == "PN":
        values = [_join_groups(_person_name_groups(v)) for v in values]
    return "\\".join(values)


def person_name(ds: Dataset, keyword: str) -> tuple[str, str, str, str]:
    """(full, alphabetic, ideographic, phonetic) groups of a Person Name element.

    Each group without escape sequences, padding or trailing empty components;
    ``full`` is the groups joined by "=" without trailing empty groups. Of a
    multi-valued element, the first value.
    """
    found = _values(ds, keyword)
    if not found or not found[0]:
        return "", "", "", ""
    alphabetic, ideographic, phonetic = _person_name_groups(found[0][0])
    return _join_groups([alphabetic, ideographic, phonetic]), alphabetic, ideographic, phonetic


def encode_person_name(value: str, specific_character_set: str | Sequence[str] | None) -> bytes:
    """Encode a Person Name the way ``person_name()`` reads it back.

    With code extensions, each component starts in the first value's character
    set and each multi-byte run is designated by its escape sequence (pydicom
    writes ISO 2022 IR 58 without any). Raises UnicodeEncodeError for a
    character none of the character sets can encode.
    """
    if isinstance(specific_character_set, str):
        specific_character_set = specific_character_set.split("\\")
    terms = list(specific_character_set or [""])
    unknown = [t for t in terms if _lookup(t) is None]
    if unknown:
        raise ValueError(f"unknown Specific Character Set {unknown!r}")
    charsets = [_lookup(t) or _DEFAULT for t in terms]
    first = charsets[0]
    if first.standalone:
        return value.encode(first.standalone)
    # The sets a character may come from, in declaration order.
    sets = [(1, c.g1) if c.g1 else (0, c.g0) for c in charsets if c.g1 or c.g0]
    # JIS X 0201 Roman is the single-byte G0 of ISO_IR 13; ASCII of the others.
    to_ascii = b"\x1b(J" if first.g1 == "shift_jis" else _DESIGNATE[(0, None)]
    to_first_g0 = to_ascii if first.g0 is None else _DESIGNATE[(0, first.g0)]

    def encode_char(char: str, register: int, target: str) -> bytes | None:
        if register == 0:
            codec, prefix = _G0_MULTIBYTE[target]
            try:
                encoded = char.encode(codec)
            except UnicodeEncodeError:
                return None
            if not encoded.startswith(prefix) or len(encoded) != len(prefix) + 2:
                return None
            return bytes(b & 0x7F for b in encoded[len(prefix) :])
        try:
            encoded = char.encode(_ENCODE_CODEC.get(target, target))
        except UnicodeEncodeError:
            return None
        # A single-byte set's character is one byte, a multi-byte set's two.
        width = 2 if target in ("euc_kr", _IR58_DECODE) else 1
        if len(encoded) != width or not all(b >= 0x80 for b in encoded):
            return None
        return encoded

    out = bytearray()
    for i, group in enumerate(value.split("=")):
        if i:
            out += b"="
        for j, component in enumerate(group.split("^")):
            if j:
                out += b"^"
            g0, g1 = first.g0, first.g1
            for char in component:
                if ord(char) < 0x80:
                    if g0 is not None:
                        out += to_ascii
                        g0 = None
                    out += char.encode("ascii")
                    continue
                for register, target in sets:
                    encoded = encode_char(char, register, target)
                    if encoded is not None:
                        break
                else:
                    raise UnicodeEncodeError("iso2022", char, 0, 1, f"not in {', '.join(terms)}")
                current = g0 if register == 0 else g1
                if current != target:
                    out += _DESIGNATE[(register, target)]
                    if register == 0:
                        g0 = target
                    else:
                        g1 = target
                out += encoded
            if g0 != first.g0:  # back to the first set before the delimiter
                out += to_first_g0
    return bytes(out)
