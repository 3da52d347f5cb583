"""WADO-RS frames (PS3.18 10.4.1.1.4): ``.../instances/{sop}/frames/1,3,5``, 1-based.

``multipart/related; type="application/octet-stream"``: uncompressed frames as raw
little-endian bytes (read straight from the file when stored so, decoded by
``imaging.render`` when compressed); a compressed frame goes out as stored when
the client accepts its media type (``image/jpeg``, ``image/jls``, ``image/jp2``,
``image/dicom-rle``...) or ``transfer-syntax=*``. Every part carries its own
Content-Type with the transfer-syntax.
"""

import numpy as np
from django.http import StreamingHttpResponse
from pydicom.encaps import get_frame
from pydicom.uid import UID

from imaging import dicomfile, render
from network.dicomweb import base, multipart

OCTET_STREAM = "application/octet-stream"
# The media type of each compressed transfer syntax's frames (PS3.18 Table 8.7.3-2).
MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
# Names some clients (dicomweb-client) still accept.
_ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}
RAW, STORED = "raw", "stored"


def parse_frames(text: str, count: int) -> list[int]:
    """ "1,3,5" -> [1, 3, 5]; 400 for anything else, 404 for a frame the instance does not have."""
    numbers = []
    for part in text.replace("%2C", ",").split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise base.BadRequest(f"frame list {text!r}: frames are numbered from 1, comma-separated")
        numbers.append(int(part))
    for number in numbers:
        if number > count:
            raise base.NotFound(f"frame {number} does not exist: the instance has {count} frame(s)")
    return numbers


def negotiate(accept: str | None, stored: str) -> str:
    """RAW (uncompressed, little endian) or STORED (as in the file); 406 when the Accept allows neither."""
    compressed = UID(stored).is_compressed
    for r in multipart.parse_accept(accept):
        if r.type == "*/*" or r.type == "multipart/*":
            return STORED
        if r.type != "multipart/related":
            continue
        part, syntax = r.part_type or OCTET_STREAM, r.transfer_syntax
        if part in ("*/*", "*"):
            return STORED
        if part == OCTET_STREAM:
            if syntax == "*":
                return STORED
            if syntax in (None, base.EXPLICIT_VR_LITTLE_ENDIAN):
                return RAW
            continue
        media = MEDIA_TYPES.get(stored)
        part = _ALIASES.get(part, part)
        if compressed and media and multipart.matches(media, part) and syntax in (None, "*", stored):
            return STORED
    raise base.not_acceptable(
        accept,
        'multipart/related; type="application/octet-stream"'
        + (f' or type="{MEDIA_TYPES[stored]}"; transfer-syntax={stored}' if stored in MEDIA_TYPES else ""),
    )


def _raw_frame_from_file(path, offset: int, header, index: int) -> bytes | None:
    """A native little-endian frame read straight from the file; None when it must be decoded."""
    bits = int(header.get("BitsAllocated") or 0)
    if bits % 8 or not header.get("Rows"):
        return None  # 1-bit frames are not byte-aligned
    size = dicomfile.expected_pixel_bytes(header, frames=1)
    with open(path, "rb") as f:
        f.seek(offset + index * size)
        data = f.read(size)
    return data if len(data) == size else None


def _decoded(path, index: int) -> bytes:
    try:
        arr, _properties = render.decoded_frame(path, index)
    except render.CannotRender as exc:
        raise base.NotAcceptable(f"the frame cannot be decoded: {exc}") from exc
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _frame_parts(instance, numbers, mode, span):
    """The parts, one frame read (or decoded) at a time as the response is written."""
    path = base.path_of(instance)
    stored = instance.transfer_syntax_uid
    uid = UID(stored)
    header, offset, _length = span
    count = instance.number_of_frames or 1
    raw_type = f"{OCTET_STREAM}; transfer-syntax={base.EXPLICIT_VR_LITTLE_ENDIAN}"
    for number in numbers:
        index = number - 1
        if not uid.is_compressed:
            data = None
            if offset is not None and stored in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
                data = _raw_frame_from_file(path, offset, header, index)
            yield multipart.Part(raw_type, [data if data is not None else _decoded(path, index)])
        elif mode == STORED and offset is not None:
            with open(path, "rb") as f:
                f.seek(offset)
                data = get_frame(f, index, number_of_frames=count)
            media = MEDIA_TYPES.get(stored, OCTET_STREAM)
            yield multipart.Part(f"{media}; transfer-syntax={stored}", [data])
        else:
            yield multipart.Part(raw_type, [_decoded(path, index)])


def frames_response(request, instance, numbers):
    mode = negotiate(request.headers.get("Accept"), instance.transfer_syntax_uid)
    boundary = multipart.new_boundary()
    stored = instance.transfer_syntax_uid
    if mode == STORED and UID(stored).is_compressed:
        part_type, syntax = MEDIA_TYPES.get(stored, OCTET_STREAM), stored
    else:
        part_type, syntax = OCTET_STREAM, base.EXPLICIT_VR_LITTLE_ENDIAN
    # The header is read now: a file that cannot be read is a status, not a broken stream.
    try:
        span = dicomfile.pixel_data_span(base.stored_file(instance))
    except dicomfile.Unreadable as exc:
        raise base.NotAcceptable(f"the stored file cannot be read: {exc}") from exc
    if span[1] is None and span[0].get("Rows") is None:
        raise base.NotFound("the instance has no pixel data")
    # A frame that fails to decode here is checked before the first byte goes out.
    first = next(iter(_frame_parts(instance, numbers[:1], mode, span)))
    first.chunks = list(first.chunks)
    parts = _chain(first, _frame_parts(instance, numbers[1:], mode, span))
    return StreamingHttpResponse(
        multipart.stream(boundary, parts), content_type=multipart.content_type(boundary, part_type, syntax)
    )


def _chain(first, rest):
    yield first
    yield from rest


class Frames(base.DicomWebView):
    def get(self, request, study, series, sop, frames):
        [instance] = base.instances(study, series, sop)
        base.record(request, study, base.Action.WADO_FRAMES)
        numbers = parse_frames(frames, instance.number_of_frames or 1)
        return frames_response(request, instance, numbers)
