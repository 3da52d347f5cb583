"""Pixel data -> display image. First version; see tests/test_render.py."""

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut


def frame_array(ds, frame: int | None = None) -> np.ndarray:
    nframes = int(ds.get("NumberOfFrames", 1) or 1)
    if frame is None:
        frame = nframes // 2
    arr = ds.pixel_array
    if nframes > 1:
        arr = arr[frame]
    return arr


def to_image(ds, frame: int | None = None) -> Image.Image:
    arr = frame_array(ds, frame)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric.startswith("MONOCHROME"):
        arr = apply_modality_lut(arr, ds)
        if "WindowCenter" in ds:
            arr = apply_voi_lut(arr, ds)
        arr = arr.astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
        out = scaled.astype(np.uint8)
        if photometric == "MONOCHROME1":
            out = 255 - out
        return Image.fromarray(out, "L")
    return Image.fromarray(arr.astype(np.uint8)).convert("RGB")


def thumbnail(path: Path, size: int) -> Image.Image:
    ds = pydicom.dcmread(path)
    image = to_image(ds)
    image.thumbnail((size, size))
    return image
