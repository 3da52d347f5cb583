"""Pixel data -> display image.

The one place that turns a DICOM frame into pixels for a screen: series thumbnails
(`thumbnail`) and the web viewer (`render_frame`) both go through `_render`, so
they always agree on how an image looks.

Grayscale follows the DICOM display pipeline (PS3.4 N.2): stored values ->
Modality LUT (rescale or LUT) -> VOI (window or VOI LUT from the file, else a
robust window from the data) -> 8 bits -> MONOCHROME1 shown inverted.
Color: RGB (deeper samples scaled to 8 bits), YCbCr converted to RGB, PALETTE
COLOR through its palette.

Only the frame that is shown is read and decoded: rendering a 1000-frame cine
costs one frame, not a thousand.
"""

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from django.conf import settings
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, as_pixel_options, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from imaging import dicomfile

Source = str | os.PathLike[str] | Dataset

_PIXEL_KEYWORDS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_PIXEL_VRS = {b"OB", b"OW", b"OF", b"OD", b"UN"}

# What pydicom and its decoding plugins raise for pixel data they cannot turn
# into an array (missing Image Pixel elements, no plugin for the transfer syntax,
# a plugin failing on a corrupt codestream, too few bytes for the frames).
_DECODE_ERRORS = (
    AttributeError,
    KeyError,
    IndexError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    struct.error,
    InvalidDicomError,
)

# Functional group macros of enhanced multi-frame objects (PS3.3 C.7.6.16) whose
# contents replace the top-level attributes of the same name for one frame.
_FRAME_MACROS = ("PixelMeasuresSequence", "PixelValueTransformationSequence", "FrameVOILUTSequence")

# A percentile window: a few hot or dead pixels must not wash the image out.
_AUTO_WINDOW_PERCENTILES = (0.5, 99.5)
# Percentiles of a million samples are as good as of all of a 40-megapixel mammogram.
_AUTO_WINDOW_SAMPLES = 1_000_000


class CannotRender(ValueError):
    """The data set has no pixel data we can turn into a display image."""


def frame_count(ds: Dataset) -> int:
    """Number of frames in `ds` (1 when Number of Frames is absent, empty or invalid)."""
    try:
        count = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return max(count, 1)


def render_frame(
    path_or_ds: Source, frame: int | None = None, window: tuple[float, float] | None = None
) -> Image.Image:
    """Full-size display image (mode "L" or "RGB") of one frame.

    `frame` counts from 0; None means the middle frame. `window` is (center, width)
    in modality units (Hounsfield units for CT) and overrides the file's window;
    it is ignored for color images. Raises CannotRender for data sets without
    displayable pixel data.
    """
    image, _ = _render(path_or_ds, frame, window)
    return image


def render_with_header(
    path_or_ds: Source, frame: int | None = None, window: tuple | None = None
) -> tuple[Image.Image, Dataset]:
    """``render_frame`` and the attributes of that frame (pixel spacing for a fit that keeps the aspect)."""
    return _render(path_or_ds, frame, window)


def decoded_frame(path_or_ds: Source, frame: int) -> tuple[np.ndarray, dict]:
    """The stored values of one frame (counted from 0), decoded, and the pixel properties after decoding.

    For WADO-RS frames a client cannot take compressed: the same bounded reading as
    rendering (one frame's bytes, size checks). Raises CannotRender.
    """
    _header, arr, properties = _decode(path_or_ds, frame)
    return arr, properties


def fit(
    image: Image.Image, width: int, height: int, header: Dataset | None = None, *, enlarge: bool = True
) -> Image.Image:
    """``image`` scaled to fit within ``width`` x ``height``, its displayed aspect ratio kept.

    ``enlarge=False``: never larger than it is (thumbnails, as ``thumbnail`` does).
    """
    w, h = float(image.width), float(image.height)
    aspect = pixel_aspect(header) if header is not None else 1.0
    if aspect > 1:
        h *= aspect
    else:
        w /= aspect
    scale = min(width / w, height / h)
    if not enlarge:
        scale = min(scale, 1.0)
    target = (max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale))))
    if target == image.size:
        return image
    return image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)


def thumbnail(path: Path, size: int) -> Image.Image:
    """The middle frame of the file at `path`, fitted within `size` x `size`.

    Keeps the displayed aspect ratio, including that of non-square pixels, and
    never enlarges: a 64 x 64 MR stays 64 x 64.
    """
    if size < 1:
        raise ValueError(f"thumbnail size must be at least 1, not {size}")
    image, header = _render(path, None, None)
    width, height = float(image.width), float(image.height)
    aspect = pixel_aspect(header)
    # Stretch rather than squeeze, so that no detail is dropped before the fit.
    if aspect > 1:
        height *= aspect
    else:
        width /= aspect
    scale = min(1.0, size / width, size / height)
    target = (max(1, min(size, round(width * scale))), max(1, min(size, round(height * scale))))
    if target != image.size:
        # reducing_gap: shrink a 4000-pixel radiograph in steps, as fast as and no worse than at once.
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def pixel_aspect(ds: Dataset) -> float:
    """Physical height / width of one pixel; 1.0 when unknown or within 1% of square."""
    ratio = 1.0
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "PixelAspectRatio"):
        # Pixel Spacing is (row spacing, column spacing): the vertical distance first,
        # as is Pixel Aspect Ratio (vertical size, horizontal size).
        value = ds.get(keyword)
        try:
            vertical, horizontal = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if vertical > 0 and horizontal > 0:
            ratio = vertical / horizontal
            break
    return 1.0 if abs(ratio - 1.0) < 0.01 else ratio


def _render(src: Source, frame: int | None, window: tuple[float, float] | None) -> tuple[Image.Image, Dataset]:
    header, arr, properties = _decode(src, frame)
    photometric = str(properties.get("photometric_interpretation", "")).strip()
    bits_stored = int(properties.get("bits_stored") or properties.get("bits_allocated") or 8)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        if arr.ndim != 2:
            raise CannotRender(f"{photometric} pixel data with {arr.shape[-1]} samples per pixel")
        pixels = _grayscale(arr, header, photometric, window)
    elif photometric == "PALETTE COLOR":
        if arr.ndim != 2:
            raise CannotRender(f"PALETTE COLOR pixel data with {arr.shape[-1]} samples per pixel")
        pixels = _palette(arr, header)
    elif photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise CannotRender(f"{photometric} pixel data without 3 samples per pixel")
        pixels = _color(arr, photometric, bits_stored)
    else:
        raise CannotRender(f"unsupported Photometric Interpretation {photometric!r}")
    return Image.fromarray(np.ascontiguousarray(pixels)), header


# Reading and decoding one frame


def _decode(src: Source, frame: int | None) -> tuple[Dataset, np.ndarray, dict]:
    """(attributes for the frame, its decoded pixels, pixel properties after decoding).

    The properties matter: decoders may hand back RGB for pixel data described as
    YBR_FULL_422, YBR_ICT or YBR_RCT, and say so only there.
    """
    if isinstance(src, Dataset):
        _check_frame_size(src)
        index = _frame_index(src, frame)
        arr, properties = _decode_dataset(src, index)
        return _frame_attributes(src, index), arr, properties

    try:
        # pydicom inflates a deflated data set whole, even to stop before its pixels:
        # make sure first, in bounded memory, that it is no deflate bomb.
        dicomfile.check_inflated_size(src)
    except dicomfile.Unreadable as exc:
        raise CannotRender(str(exc)) from exc
    with open(src, "rb") as f:
        try:
            # force: files written without a File Meta header (old ACR-NEMA style) are still images.
            header = dcmread(f, stop_before_pixels=True, force=True)
        except _DECODE_ERRORS as exc:
            raise CannotRender(f"not a readable DICOM file: {exc}") from exc
        _check_frame_size(header)
        index = _frame_index(header, frame)
        tsyntax = _transfer_syntax(header)
        if tsyntax.is_deflated:
            # The whole data set is one zlib stream: no seeking to a frame, read it all.
            full = _read_whole(src)
            arr, properties = _decode_dataset(full, index)
            return _frame_attributes(full, index), arr, properties
        # dcmread stopped in front of the pixel data element: decode from the file
        # so that only the one frame's bytes are read, not the whole element.
        try:
            options = as_pixel_options(header, **_pixel_element_header(f, header, tsyntax))
            arr, properties = get_decoder(tsyntax).as_array(f, index=index, **options)
        except CannotRender:
            raise
        except _DECODE_ERRORS as exc:
            frame_only_error = exc
        else:
            return _frame_attributes(header, index), arr, properties
    # pydicom's full reader copes with more oddities than decoding straight from the
    # file (e.g. a pixel data element written in another VR encoding than the rest).
    full = _read_whole(src)
    try:
        arr, properties = _decode_dataset(full, index)
    except CannotRender as exc:
        if str(frame_only_error) in str(exc):
            raise
        raise CannotRender(f"{exc} (reading only the frame: {frame_only_error})") from exc
    return _frame_attributes(full, index), arr, properties


def _check_frame_size(header: Dataset) -> None:
    """Refuse a frame whose decoded size (Rows x Columns x Samples x Bits) is absurd.

    A decoder allocates what the header says before it finds the data missing: a
    header claiming 65535 x 65535 would cost gigabytes per request.
    """
    frame = dicomfile.expected_pixel_bytes(header, frames=1)
    if frame is not None and frame > settings.DICOM_MAX_PIXEL_BYTES:
        raise CannotRender(f"a frame of {frame} bytes (Rows x Columns x Samples x Bits) is over DICOM_MAX_PIXEL_BYTES")


def _read_whole(path: str | os.PathLike[str]) -> Dataset:
    try:
        return dcmread(path, force=True)
    except _DECODE_ERRORS as exc:
        raise CannotRender(f"not a readable DICOM file: {exc}") from exc


def _decode_dataset(ds: Dataset, index: int) -> tuple[np.ndarray, dict]:
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS.values()):
        raise CannotRender("the data set has no pixel data")
    tsyntax = _transfer_syntax(ds)
    try:
        return get_decoder(tsyntax).as_array(ds, index=index, **as_pixel_options(ds))
    except _DECODE_ERRORS as exc:
        raise CannotRender(f"cannot decode {tsyntax.name} pixel data: {exc}") from exc


def _transfer_syntax(ds: Dataset) -> UID:
    tsyntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
    if tsyntax:
        return UID(tsyntax)
    # Without File Meta the pixel data cannot be compressed, and the encoding
    # dcmread found for the data set is the one of its pixel data too.
    is_implicit, is_little = ds.original_encoding
    if is_implicit is None or is_little is None:
        raise CannotRender("the data set has no Transfer Syntax UID")
    if is_implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if is_little else ExplicitVRBigEndian


def _pixel_element_header(f, header: Dataset, tsyntax: UID) -> dict:
    """Read the pixel data element's tag, VR and length: leaves `f` at its value."""
    is_implicit, is_little = header.original_encoding
    if is_implicit is None:
        is_implicit, is_little = tsyntax.is_implicit_VR, tsyntax.is_little_endian
    endian = "<" if is_little else ">"
    data = f.read(8)
    if len(data) < 8:
        raise CannotRender("the data set has no pixel data")
    group, element = struct.unpack(f"{endian}HH", data[:4])
    keyword = _PIXEL_KEYWORDS.get(group << 16 | element)
    if keyword is None:
        raise CannotRender("the data set has no pixel data")
    vr = data[4:6]
    # Some writers put the pixel data element in implicit VR into an explicit VR
    # data set; pydicom's reader guesses the same way from the bytes.
    if is_implicit or vr not in _PIXEL_VRS:
        return {"pixel_keyword": keyword}
    f.read(4)  # pixel data VRs have a 2-byte reserved field and a 4-byte length
    return {"pixel_keyword": keyword, "pixel_vr": vr.decode("ascii")}


def _frame_index(ds: Dataset, frame: int | None) -> int:
    count = frame_count(ds)
    if frame is None:
        # The middle frame, the one before the middle for an even count, as for series.
        return (count - 1) // 2
    if not 0 <= frame < count:
        raise CannotRender(f"frame {frame} does not exist: the data set has {count} frame(s)")
    return frame


def _frame_attributes(ds: Dataset, index: int) -> Dataset:
    """`ds`, with the rescale, window and spacing of frame `index` of an enhanced multi-frame object."""
    groups = []
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        sequence = ds.get(keyword) or []
        position = 0 if keyword.startswith("Shared") else index
        if len(sequence) > position:
            groups.append(sequence[position])
    if not groups:
        return ds
    frame = Dataset()
    frame.update(ds)  # a new top level; the elements themselves are shared, not copied
    frame.file_meta = getattr(ds, "file_meta", Dataset())
    frame.set_original_encoding(*ds.original_encoding, ds.original_character_set)
    for group in groups:  # per-frame values override shared ones
        for macro in _FRAME_MACROS:
            items = group.get(macro)
            if items:
                for element in items[0]:
                    frame[element.tag] = element
    return frame


# Grayscale


def _grayscale(arr: np.ndarray, ds: Dataset, photometric: str, window: tuple[float, float] | None) -> np.ndarray:
    values = _modality(arr, ds)
    if window is not None:
        # (center, width) or (center, width, VOI LUT Function), as WADO-RS's window= gives it.
        center, width = (float(v) for v in window[:2])
        function = str(window[2]).upper() if len(window) > 2 else "LINEAR"
        if not width > 0:
            raise ValueError(f"window width must be positive, not {width}")
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise ValueError(f"unknown VOI LUT Function {function!r}")
        shown = _apply_window(values, center, width, function)
    elif (file_window := _file_window(ds)) is not None:
        # With both a window and a VOI LUT in the file (alternative views, PS3.3
        # C.11.2), the window: it is what a viewer's window/level then adjusts.
        shown = _apply_window(values, *file_window)
    elif ds.get("VOILUTSequence"):
        shown = _apply_voi_lut(values, ds)
    else:
        shown = _auto_window(values, arr, ds)
    pixels = np.rint(shown * 255).astype(np.uint8)
    # MONOCHROME1 means the lowest value is shown white (CR, DX, MG). Presentation
    # LUT Shape INVERSE says the same; a MONOCHROME1 image carrying it (as the DX
    # IOD asks) is still inverted only once.
    if photometric == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        pixels = 255 - pixels
    return pixels


def _modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (e.g. Hounsfield units).

    float32 is exact for stored values of up to 24 bits, and halves the memory a
    50-megapixel mammogram takes on its way through the pipeline.
    """
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)  # Float Pixel Data has no Modality LUT
    if ds.get("ModalityLUTSequence"):
        lut, first = _lut(ds.ModalityLUTSequence[0], ds, "Modality LUT Sequence")
        return lut[np.clip(arr.astype(np.int64) - first, 0, len(lut) - 1)]
    slope = _number(ds.get("RescaleSlope"), 1.0) or 1.0
    intercept = _number(ds.get("RescaleIntercept"), 0.0)
    values = arr.astype(np.float32)
    if slope != 1.0 or intercept != 0.0:
        values = values * np.float32(slope) + np.float32(intercept)
    return values


def _file_window(ds: Dataset) -> tuple[float, float, str] | None:
    """The first window (center, width, VOI LUT Function) in the file, None if none is usable."""
    center = _number(_first(ds.get("WindowCenter")), None)
    width = _number(_first(ds.get("WindowWidth")), None)
    if center is None or width is None or width <= 0:
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    return center, width, function


def _apply_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window per PS3.3 C.11.2.1.2 and C.11.2.1.3, scaled to 0..1."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -80, 80)))
    if function == "LINEAR_EXACT":
        shown = (values - center) / width + 0.5
    else:
        # LINEAR: the standard's -0.5 and -1 place the window on discrete values;
        # a width of 1 is a threshold.
        shown = (values - (center - 0.5)) / max(width - 1, 1e-6) + 0.5
    return np.clip(shown, 0.0, 1.0)


def _apply_voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray:
    """The first VOI LUT of the VOI LUT Sequence, its output range scaled to 0..1."""
    lut, first = _lut(ds.VOILUTSequence[0], ds, "VOI LUT Sequence")
    # The output range is that of the LUT's own data: many LUTs declare 16 bits
    # and use 12, which would leave the image dark if scaled by the declaration.
    low, high = float(lut.min()), float(lut.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    shown = lut[np.clip(np.rint(values).astype(np.int64) - first, 0, len(lut) - 1)]
    return (shown - low) / (high - low)


def _lut(item: Dataset, ds: Dataset, name: str) -> tuple[np.ndarray, int]:
    """(the LUT's entries as float32, the first value it maps) of a Modality or VOI LUT item (PS3.3 C.11.1.1).

    Done here rather than with pydicom 3.0's apply_voi, which indexes 8-bit LUTs of
    more than 256 entries through a uint8 array and so maps wrapped-around values.
    """
    try:
        entries, first, _bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
        entries = entries or 2**16  # 0 means 65536
        if isinstance(data, bytes):  # OW: in the byte order of the data set
            if len(data) == entries:  # 8-bit entries, one a byte
                lut = np.frombuffer(data, np.uint8)
            else:
                order = "<" if _transfer_syntax(ds).is_little_endian else ">"
                lut = np.frombuffer(data, f"{order}u2", count=min(entries, len(data) // 2))
        else:
            lut = np.asarray(data if isinstance(data, Sequence) else [data], dtype=np.float64)
    except (*_DECODE_ERRORS, TypeError) as exc:
        raise CannotRender(f"unusable {name}: {exc}") from exc
    if lut.size == 0:
        raise CannotRender(f"unusable {name}: no LUT Data")
    # The descriptor's first value is US or SS: a first value of 32768 or more that
    # comes from signed data was read as unsigned.
    if first >= 2**15 and int(ds.get("PixelRepresentation") or 0) == 1:
        first -= 2**16
    return lut.astype(np.float32), first


def _auto_window(values: np.ndarray, stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """A window over the 0.5..99.5 percentiles of the image, padding excluded."""
    sample = values[~_padding_mask(stored, ds)]
    if sample.size == 0:
        sample = values.ravel()
    sample = sample[:: max(1, sample.size // _AUTO_WINDOW_SAMPLES)]
    low, high = (float(v) for v in np.percentile(sample, _AUTO_WINDOW_PERCENTILES))
    if high <= low:  # mostly one value (a mask, a mostly empty image): use the full range
        low, high = float(sample.min()), float(sample.max())
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _padding_mask(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    """Pixels that are Pixel Padding Value (e.g. the outside of a CT's circular field)."""
    padding = _number(_first(ds.get("PixelPaddingValue")), None)
    if padding is None or np.issubdtype(stored.dtype, np.floating):
        return np.zeros(stored.shape, dtype=bool)
    limit = _number(_first(ds.get("PixelPaddingRangeLimit")), None)
    if limit is None:
        return stored == padding
    return (stored >= min(padding, limit)) & (stored <= max(padding, limit))


# Color


def _palette(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    try:
        rgb = apply_color_lut(arr, _palette_in_native_byte_order(ds))[..., :3]  # no alpha
    except _DECODE_ERRORS as exc:
        raise CannotRender(f"unusable palette: {exc}") from exc
    # Palettes declared 16 bits but holding 8-bit values exist, and vice versa: the
    # values tell which they are (a true 16-bit palette whose brightest entry is
    # 255/65535 would be black anyway).
    if rgb.dtype != np.uint8 and int(rgb.max()) > 255:
        return _to_8bit(rgb, 16)
    return rgb.astype(np.uint8)


def _palette_in_native_byte_order(ds: Dataset) -> Dataset:
    """`ds`, with 16-bit palette data of a big endian file swapped to little endian.

    pydicom 3.0's apply_color_lut reads (non-segmented) palette data as little
    endian whatever the file's byte order, which shows big endian palettes black.
    """
    if "RedPaletteColorLookupTableData" not in ds or _transfer_syntax(ds).is_little_endian:
        return ds
    entries = int(ds.RedPaletteColorLookupTableDescriptor[0]) or 2**16
    swapped = Dataset()
    swapped.update(ds)  # a new top level; the elements themselves are shared, not copied
    for color in ("Red", "Green", "Blue", "Alpha"):
        keyword = f"{color}PaletteColorLookupTableData"
        data = ds.get(keyword)
        if data is not None and len(data) == 2 * entries:
            setattr(swapped, keyword, np.frombuffer(data, ">u2").astype("<u2").tobytes())
    return swapped


def _color(arr: np.ndarray, photometric: str, bits_stored: int) -> np.ndarray:
    # pydicom converts YBR_FULL(_422) to RGB; should a decoder not have, it is done
    # here. YBR_ICT and YBR_RCT name the color transform inside a JPEG 2000
    # codestream, which every JPEG 2000 decoder undoes: decoded, they are RGB.
    if photometric in ("YBR_FULL", "YBR_FULL_422"):
        arr = _ybr_full_to_rgb(arr, bits_stored)
    return _to_8bit(arr, bits_stored)


def _ybr_full_to_rgb(arr: np.ndarray, bits: int) -> np.ndarray:
    """YCbCr full range (PS3.3 C.7.6.3.1.2) -> RGB, for any bit depth."""
    offset = 2.0 ** (bits - 1)
    y, cb, cr = (arr[..., i].astype(np.float64) for i in range(3))
    cb -= offset
    cr -= offset
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(rgb, 0, 2**bits - 1)


def _to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    top = float(2**bits - 1) if bits > 0 else 255.0
    return np.rint(np.clip(arr.astype(np.float64) * (255.0 / top), 0, 255)).astype(np.uint8)


def _first(value):
    """The first of a multi-valued element's values (e.g. several windows)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return value[0] if len(value) else None
    return value


def _number(value, default):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default
