"""Reading a stored file's header with bounded memory, whatever the file claims.

``pydicom.dcmread`` inflates a Deflated Explicit VR file whole in memory (a few
MB on disk can become gigabytes), and trusts every length it reads. Here:

- a deflated data set is inflated as a stream, in chunks, and never beyond
  ``DICOM_MAX_INFLATED_BYTES``: a file that inflates further is a deflate bomb;
- large values before the pixel data are not read (``defer_size``);
- the pixel data is never read: only its element header, to learn how many
  bytes it declares and how many the file really holds, so that an absurd
  Rows x Columns x Frames or a truncated file is found before anyone renders it.
"""

import functools
import io
import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass, field

import pydicom
from django.conf import settings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

# Float Pixel Data, Double Float Pixel Data, Pixel Data: where pydicom's
# stop_before_pixels stops too.
log = logging.getLogger(__name__)

PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
UNDEFINED_LENGTH = 0xFFFFFFFF
# Header values larger than this are skipped, not read (nothing we index is that long).
DEFER_SIZE = 256 * 1024
_CHUNK = 1024 * 1024


class Unreadable(ValueError):
    """The file cannot be read as DICOM (or it inflates past the limit)."""


class DeflateBomb(Unreadable):
    pass


@dataclass
class Header:
    ds: Dataset
    # The pixel data element, if the data set has one.
    pixel_tag: int | None = None
    pixel_length: int | None = None  # as declared; UNDEFINED_LENGTH when encapsulated
    pixel_available: int = 0  # bytes that follow the element header in the file
    inflated_size: int | None = None  # of a deflated data set
    # The file starts with a preamble and "DICM"; without, it may be a bare data set
    # (ACR-NEMA, an old archive) or anything at all.
    dicm: bool = True
    # Set by the scan (``scan_header``): the file's status when it was read, and its
    # whole content when it fitted in what was read (a small image: the indexer
    # digests these bytes instead of opening the file again).
    stat: os.stat_result | None = field(default=None, repr=False)
    content: bytes | None = field(default=None, repr=False)


def _at_pixels(tag, vr, length) -> bool:
    return tag in PIXEL_TAGS


class _Inflater(io.RawIOBase):
    """A deflated stream read as the inflated bytes, forward only, never beyond ``limit``.

    Holds one chunk of output at a time; ``seek`` forward (pydicom skipping a
    deferred value) inflates and discards. A short step back (pydicom rewinds the
    element header it peeked at) is served from the last bytes read.
    """

    def __init__(self, raw, limit: int):
        self._raw = raw
        self._limit = limit
        self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
        self._buffer = b""  # inflated, not yet read
        self._history = b""  # the last bytes read, for a short rewind
        self._pos = 0
        self.total = 0  # bytes inflated so far

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def _fill(self, wanted: int) -> None:
        while len(self._buffer) < wanted:
            if self._inflate.eof:
                return
            data = self._inflate.unconsumed_tail or self._raw.read(64 * 1024)
            if not data:
                return
            out = self._inflate.decompress(data, _CHUNK)
            self.total += len(out)
            if self.total > self._limit:
                raise DeflateBomb(f"the deflated data set inflates past {self._limit} bytes (DICOM_MAX_INFLATED_BYTES)")
            self._buffer += out

    def read(self, size=-1):
        if size is None or size < 0:
            size = self._limit
        self._fill(size)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        self._pos += len(out)
        self._history = (self._history + out)[-64:]
        return out

    def seek(self, offset, whence=os.SEEK_SET):
        target = offset if whence == os.SEEK_SET else self._pos + offset
        if target < self._pos:
            back = self._pos - target
            if back > len(self._history):
                raise io.UnsupportedOperation("cannot seek back that far in a deflated stream")
            self._buffer = self._history[-back:] + self._buffer
            self._history = self._history[:-back]
            self._pos = target
        while self._pos < target:
            if not self.read(min(target - self._pos, _CHUNK)):
                break
        return self._pos

    def drain(self) -> int:
        """Inflate (and discard) the rest; returns the inflated size of the whole data set."""
        while self.read(_CHUNK):
            pass
        return self.total


def _pixel_element(fp, ds: Dataset, implicit: bool, little: bool) -> tuple[int | None, int | None]:
    """Tag and declared length of the element at ``fp`` (where reading stopped), if it is pixel data."""
    head = fp.read(8)
    if len(head) < 8:
        return None, None
    endian = "<" if little else ">"
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = group << 16 | element
    if tag not in PIXEL_TAGS:
        return None, None
    if implicit:
        (length,) = struct.unpack(f"{endian}L", head[4:8])
    else:
        extra = fp.read(4)
        if len(extra) < 4:
            return tag, 0
        (length,) = struct.unpack(f"{endian}L", extra)
    return tag, length


# The standard VRs: a file meta element with anything else is not the plain case.
_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT UV".split())
_SNIFF_BYTES = 4096


def plain_transfer_syntax(head: bytes) -> str | None:
    """The Transfer Syntax UID of a file that starts with ``head``, when its file meta is plain; else None.

    Plain: a preamble and "DICM", then group 0002 elements in Explicit VR Little
    Endian with standard VRs, all within ``head``, the Transfer Syntax UID once and not
    Deflated. Then pydicom's own reading finds the same transfer syntax, and the data
    set can be read in one pass; anything else (None) goes the careful way.
    """
    if head[128:132] != b"DICM":
        return None
    pos, found = 132, None
    while pos + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 2:
            break
        vr = head[pos + 4 : pos + 6]
        if vr not in _VRS:
            return None
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                return None
            (length,) = struct.unpack_from("<L", head, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        end = start + length
        if end > len(head):
            return None
        if element == 0x0010:
            value = head[start:end]
            if found is not None or DeflatedExplicitVRLittleEndian.encode() in value:
                return None
            try:
                found = value.decode("ascii").strip("\0 ")
            except UnicodeDecodeError:
                return None
        pos = end
    else:
        return None  # the file meta goes on past ``head`` (or the file ends within it)
    return found or None


def read_header(path) -> Header:
    """The data set without its pixel data, and what its pixel data element declares.

    ``path`` may also be a whole file in memory (bytes or a memoryview: a corrected
    file not written yet). Raises ``Unreadable`` (or ``DeflateBomb``) when the file
    cannot be read within bounds.
    """
    in_memory = isinstance(path, bytes | bytearray | memoryview)
    try:
        size = len(path) if in_memory else os.path.getsize(path)
        with io.BytesIO(path) if in_memory else open(path, "rb") as fp:
            if plain_transfer_syntax(fp.read(_SNIFF_BYTES)):
                # The common case, read in one pass (the file meta parsed once, by pydicom).
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True, defer_size=DEFER_SIZE)
                implicit, little = ds.original_encoding
                tag, length = _pixel_element(fp, ds, implicit, little)
                available = max(size - fp.tell(), 0)
                return Header(ds, tag, length, available if tag else 0, dicm=True)
            fp.seek(0)
            preamble = read_preamble(fp, True)
            meta = _read_file_meta_info(fp)
            transfer_syntax = str(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
            if transfer_syntax != DeflatedExplicitVRLittleEndian:
                fp.seek(0)
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True, defer_size=DEFER_SIZE)
                implicit, little = ds.original_encoding
                tag, length = _pixel_element(fp, ds, implicit, little)
                available = max(size - fp.tell(), 0)
                return Header(ds, tag, length, available if tag else 0, dicm=preamble is not None)
            inflater = _Inflater(fp, settings.DICOM_MAX_INFLATED_BYTES)
            dataset = read_dataset(inflater, False, True, stop_when=_at_pixels, defer_size=DEFER_SIZE)
            tag, length = _pixel_element(inflater, dataset, False, True)
            value_at = inflater.tell()
            # The whole stream is inflated (and thrown away) to know its size: a
            # bomb is found here, in bounded memory, not later by a renderer.
            total = inflater.drain()
            ds = FileDataset("<in memory>" if in_memory else str(path), dataset, preamble, meta, False, True)
            ds.set_original_encoding(False, True, dataset._character_set)
            return Header(ds, tag, length, max(total - value_at, 0) if tag else 0, total)
    except Unreadable:
        raise
    except (OSError, ValueError, EOFError, struct.error, zlib.error, TypeError, KeyError, AttributeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise Unreadable(f"cannot be parsed as DICOM: {exc}") from exc


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    try:
        value = quick_get(ds, keyword)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return None


def expected_pixel_bytes(ds: Dataset, *, frames: int | None = None) -> int | None:
    """Bytes of the decoded pixel data its header describes (None when it describes none).

    ``frames``: of that many frames instead of NumberOfFrames (1: one frame's size).
    """
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not columns:
        return None
    if frames is None:
        frames = max(_int(ds, "NumberOfFrames", 1) or 1, 1)
    samples = max(_int(ds, "SamplesPerPixel", 1) or 1, 1)
    bits = _int(ds, "BitsAllocated", 16) or 16
    return (rows * columns * frames * samples * bits + 7) // 8


def pixel_problem(header: Header) -> str | None:
    """Why this file's pixel data cannot be rendered safely, or None.

    Checked before anything decodes pixels: the decoded size must stay below
    DICOM_MAX_PIXEL_BYTES (a header claiming 65535 x 65535 would make a renderer
    allocate gigabytes), and uncompressed pixel data must be all there.
    """
    if header.pixel_tag is None:
        return None
    ds = header.ds
    expected = expected_pixel_bytes(ds)
    if expected is None:
        return "pixel data without Rows and Columns"
    if expected > settings.DICOM_MAX_PIXEL_BYTES:
        return (
            f"Rows x Columns x Frames x Samples x Bits ({_int(ds, 'Rows')} x {_int(ds, 'Columns')} x "
            f"{max(_int(ds, 'NumberOfFrames', 1) or 1, 1)} x {_int(ds, 'SamplesPerPixel', 1)} x "
            f"{_int(ds, 'BitsAllocated', 16)} bits) makes {expected} bytes, over DICOM_MAX_PIXEL_BYTES"
        )
    if header.pixel_length == UNDEFINED_LENGTH:
        if header.pixel_available < 8:
            return "encapsulated pixel data is truncated"
        return None
    declared = header.pixel_length or 0
    if header.pixel_available < declared:
        return f"pixel data truncated: the file holds {header.pixel_available} of its {declared} bytes"
    if header.pixel_tag == 0x7FE00010 and declared < expected:
        return f"pixel data holds {declared} bytes, its Rows x Columns x Frames need {expected}"
    return None


def check_inflated_size(path) -> int | None:
    """For a deflated file: inflate it as a stream (bounded memory) and return its inflated size.

    Raises DeflateBomb past DICOM_MAX_INFLATED_BYTES. Returns None at once for any
    other transfer syntax (or a file without file meta): only deflate inflates.
    """
    with open(path, "rb") as fp:
        try:
            read_preamble(fp, True)
            meta = _read_file_meta_info(fp)
        except Exception:
            return None  # the caller's own reader says what is wrong
        if str(meta.get("TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:
            return None
        try:
            return _Inflater(fp, settings.DICOM_MAX_INFLATED_BYTES).drain()
        except zlib.error as exc:
            raise Unreadable(f"the deflated data set cannot be inflated: {exc}") from exc


def pixel_data_span(path) -> tuple[Dataset, int | None, int | None]:
    """(the header without pixel data, where the pixel data value starts in the file, its declared length).

    For serving pixel data straight from the file (WADO-RS frames and bulk data):
    only the header is parsed, large values deferred. The offset is None when the
    file has no pixel data, or when it is deflated (no seeking into a zlib stream:
    the caller reads it whole, after ``check_inflated_size``). Raises ``Unreadable``.
    """
    try:
        with open(path, "rb") as fp:
            read_preamble(fp, True)
            meta = _read_file_meta_info(fp)
            if str(meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian:
                return read_header(path).ds, None, None
            fp.seek(0)
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True, defer_size=DEFER_SIZE)
            implicit, little = ds.original_encoding
            tag, length = _pixel_element(fp, ds, implicit, little)
            return ds, (fp.tell() if tag else None), length
    except Unreadable:
        raise
    except (OSError, ValueError, EOFError, struct.error, TypeError, KeyError, AttributeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise Unreadable(f"cannot be parsed as DICOM: {exc}") from exc


# --- The common case, scanned by us (INGEST_SCAN_HEADER) -----------------------------------
# How much of a file the scan reads: a header longer than this goes the pydicom way.
SCAN_BYTES = 64 * 1024
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_EXPLICIT_LE, _IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"


class _NotPlain(Exception):
    """The scan met something it leaves to pydicom (the caller reads the file the careful way)."""


def _element_at(head: bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, value offset) of the element at ``pos``."""
    if pos + 8 > len(head):
        raise _NotPlain
    group, element, length = struct.unpack_from("<HHL", head, pos)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:  # items and delimiters have no VR in any encoding
        return tag, None, length, pos + 8
    vr = head[pos + 4 : pos + 6]
    if vr not in _VRS:
        raise _NotPlain
    if vr in _LONG_VRS:
        if pos + 12 > len(head):
            raise _NotPlain
        (length,) = struct.unpack_from("<L", head, pos + 8)
        return tag, vr, length, pos + 12
    return tag, vr, length >> 16, pos + 8  # the 16-bit length after the VR


def _skip_sequence(head: bytes, pos: int, implicit: bool) -> int:
    """Where an undefined-length sequence whose items start at ``pos`` ends (after its delimiter)."""
    while True:
        tag, _, length, pos = _element_at(head, pos, implicit)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _NotPlain
        if length != UNDEFINED_LENGTH:
            pos += length
            continue
        while True:  # an undefined-length item: its elements, up to the item delimiter
            tag, vr, length, pos = _element_at(head, pos, implicit)
            if tag == _ITEM_END:
                break
            if length == UNDEFINED_LENGTH:
                if not (implicit or vr in (b"SQ", b"UN")):
                    raise _NotPlain
                pos = _skip_sequence(head, pos, implicit)
            else:
                pos += length


def _top_level(head: bytes, pos: int, end: int, implicit: bool, stop):
    """The top-level elements from ``pos`` to ``end``: (tag, VR or None, length, value offset, element offset).

    The first element whose tag ``stop`` accepts ends the walk: it is yielded with a
    length of None, its value unread. Undefined-length sequences are skipped; what the
    walk cannot follow (an item outside a sequence, a value past what was read, an
    undefined length on anything but SQ or UN) raises _NotPlain.
    """
    while pos < end:
        tag, vr, length, start = _element_at(head, pos, implicit)
        if stop(tag):
            yield tag, vr, None, start, pos
            return
        if tag >> 16 == 0xFFFE:
            raise _NotPlain  # an item or delimiter outside any sequence
        if length == UNDEFINED_LENGTH:
            if not (implicit or vr in (b"SQ", b"UN")):
                raise _NotPlain
            pos = _skip_sequence(head, start, implicit)
            continue
        if start + length > len(head):
            raise _NotPlain
        yield tag, vr, length, start, pos
        pos = start + length


def _raw_elements(head: bytes, pos: int, end: int, implicit: bool, stop_at_pixels: bool) -> tuple[dict, int, int]:
    """The top-level elements from ``pos`` as raw elements; (elements, stop, where the pixel data starts).

    ``stop`` is the tag of the pixel data element reached (0 when ``end`` came first).
    Sequences are skipped: nothing indexed is inside one.
    """
    elements = {}
    stop = PIXEL_TAGS.__contains__ if stop_at_pixels else _never
    for tag, vr, length, start, at in _top_level(head, pos, end, implicit, stop):
        if length is None:
            return elements, tag, at
        if vr == b"SQ" or (vr is None and _implicit_sequence(tag)):
            continue
        value = head[start : start + length]
        elements[tag] = RawDataElement(
            BaseTag(tag), None if vr is None else vr.decode(), length, value, start, implicit, True
        )
    return elements, 0, end


def _never(tag: int) -> bool:
    return False


def header(path) -> Header:
    """``read_header``, by our scan (``scan_header``) when INGEST_SCAN_HEADER is on and the file is its case.

    A scan that trips over odd bytes loses nothing: the careful way reads the file,
    and its bounds and errors apply. The indexer and the thumbnails read headers so.
    """
    if settings.INGEST_SCAN_HEADER and not isinstance(path, bytes | bytearray | memoryview):
        try:
            found = scan_header(path)
        except OSError:
            raise  # gone or unreadable: read_header would say the same
        except Exception:
            log.debug("header scan of %s failed; reading it with pydicom", path, exc_info=True)
            found = None
        if found is not None:
            return found
    return read_header(path)


def scan_values(data, last_tag: int, implicit: bool) -> dict[int, tuple[bytes | None, bytes]] | None:
    """The top-level elements of a Little Endian data set up to ``last_tag``: {tag: (VR or None, value bytes)}.

    What pydicom's ``read_dataset`` with ``stop_when`` past ``last_tag`` reads
    (the first element beyond it ends the scan, a later duplicate wins), without
    building a Dataset: for the few UIDs the C-STORE hot path checks. Sequences
    are skipped; only the first SCAN_BYTES are looked at. None when the scan
    cannot follow the data set (a length past its end or past SCAN_BYTES, an
    unknown VR, an item out of place): the caller reads it with pydicom.
    """
    head = bytes(data[:SCAN_BYTES])
    whole = len(data) <= SCAN_BYTES
    values = {}
    try:
        for tag, vr, length, start, _ in _top_level(head, 0, len(head), implicit, lambda tag: tag > last_tag):
            if length is None:
                return values
            values[tag] = (vr, head[start : start + length])
    except _NotPlain:
        return None
    return values if whole else None


def ui_value(value: bytes) -> str | None:
    """A UI element's one value as pydicom decodes it (without trailing NULs and spaces); None if several."""
    if b"\\" in value:
        return None
    return value.decode("latin-1").rstrip("\0 ")


def _implicit_sequence(tag: int) -> bool:
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False  # private or unknown: pydicom keeps it as it is too


def scan_header(path) -> Header | None:  # noqa: PLR0911 - each None is a case left to pydicom
    """``read_header`` for the common file, by a scan of ours; None when the file is not that case.

    The common file: a preamble and "DICM", a plain file meta (``plain_transfer_syntax``),
    an Explicit or Implicit VR Little Endian data set (the header of a compressed
    transfer syntax is Explicit VR Little Endian too) whose header ends within
    SCAN_BYTES. Its elements become pydicom raw elements (converted when asked, as
    pydicom's own reading leaves them), without the sequences; the pixel data's
    element header is read as ``read_header`` reads it. Anything else, or anything
    the scan cannot follow (a length past what it read, an unknown VR, an item out
    of place), is None: the caller reads the file the careful way, whose bounds and
    errors apply unchanged.
    """
    with open(path, "rb") as fp:
        stat = os.fstat(fp.fileno())
        size = stat.st_size
        head = fp.read(SCAN_BYTES)
    content = head if len(head) == size else None
    transfer_syntax = plain_transfer_syntax(head)
    if transfer_syntax is None:
        return None
    syntax = UID(transfer_syntax)
    if transfer_syntax != _IMPLICIT_LE and not (
        syntax.is_transfer_syntax and not syntax.is_implicit_VR and syntax.is_little_endian
    ):
        return None  # Big Endian, or one pydicom does not know (it guesses; so do we: the careful way)
    try:
        meta, _, at = _file_meta(head)
        implicit = transfer_syntax == _IMPLICIT_LE
        elements, pixel_tag, at = _raw_elements(head, at, min(size, len(head)), implicit, True)
    except _NotPlain:
        return None
    if not pixel_tag and size > len(head):
        return None  # the header goes on past what was read
    ds = Dataset(elements)
    ds.file_meta = FileMetaDataset(meta)
    ds.set_original_encoding(implicit, True, None)
    if not pixel_tag:
        return Header(ds, stat=stat, content=content)
    if implicit:
        length_at = at + 4
    elif head[at + 4 : at + 6] in _LONG_VRS:
        length_at = at + 8
    else:
        return None  # pixel data with a short VR: leave it to pydicom
    if length_at + 4 > len(head):
        return None
    (length,) = struct.unpack_from("<L", head, length_at)
    return Header(ds, pixel_tag, length, max(size - (length_at + 4), 0), stat=stat, content=content)


def _file_meta(head: bytes) -> tuple[dict, int, int]:
    """The file meta's raw elements (already found plain by ``plain_transfer_syntax``) and where it ends."""
    pos, elements = 132, {}
    while True:
        group, _ = struct.unpack_from("<HH", head, pos)
        if group != 2:
            return elements, 0, pos
        tag, vr, length, start = _element_at(head, pos, False)
        pos = start + length
        elements[tag] = RawDataElement(BaseTag(tag), vr.decode(), length, head[start:pos], start, False, True)


_WHOLE_NUMBER = re.compile(rb"[+-]?[0-9]{1,12}")


def quick_get(ds: Dataset, keyword: str, default=None):
    """``ds.get(keyword, default)``, sooner for an element still raw (as read) holding one UI, US or IS value.

    pydicom converts an element through its hooks and validators on first access:
    tens of microseconds, a good part of indexing a small image. These three cases
    are decoded here the way pydicom decodes them (UI: Latin-1 without trailing
    NULs and spaces; US: a little endian 16-bit number; IS: a whole number, as an
    int); anything else, and any value outside these shapes (several values, an
    empty US, "1.0"), is pydicom's ``get``. tests/test_header_scan.py checks both
    give the same on every file pydicom ships.
    """
    elem = ds.get_item(_tag(keyword))
    if elem is None:
        return default
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
        value = elem.value
        vr = elem.VR or _dictionary_vr(elem.tag)
        if vr == "UI" and b"\\" not in value:
            return ui_value(value)
        if vr == "US" and len(value) == 2 and elem.is_little_endian:
            return value[0] | value[1] << 8
        if vr == "IS" and _WHOLE_NUMBER.fullmatch(value.strip(b" \0")):
            return int(value.strip(b" \0"))
    return ds.get(keyword, default)


@functools.cache
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {keyword!r}")
    return tag


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None
