"""Test data made here with pydicom: never real patients."""

import datetime as dt
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

PYNETDICOM_ROOT = "1.2.826.0.1.3680043.8.498."


def phantom(size: int, index: int, seed: int = 0) -> np.ndarray:
    """A CT-like slice: body ellipse, two organs that move with the slice, noise."""
    rng = np.random.default_rng(seed + index)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    image = np.full((size, size), -1000.0, dtype=np.float32)  # air
    body = (x / 0.42) ** 2 + (y / 0.33) ** 2 < 1
    image[body] = 40.0  # soft tissue
    shift = 0.1 * np.sin(index / 20)
    image[((x - 0.15 - shift) / 0.08) ** 2 + (y / 0.12) ** 2 < 1] = 400.0  # bone-ish
    image[((x + 0.15) / 0.1) ** 2 + ((y - shift) / 0.15) ** 2 < 1] = -700.0  # lung-ish
    image += rng.normal(0, 12, image.shape)
    return np.clip(image + 1024, 0, 4095).astype(np.uint16)  # stored values, intercept -1024


def ct_series(
    directory: Path,
    slices: int,
    size: int = 512,
    *,
    patient_id: str = "CT0001",
    patient_name: str = "PHANTOM^CT",
    study_uid: str | None = None,
    modality_sop=CTImageStorage,
    seed: int = 0,
) -> list[Path]:
    """Write a series of ``slices`` images and return their paths, in slice order."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid(PYNETDICOM_ROOT)
    series_uid = generate_uid(PYNETDICOM_ROOT)
    paths = []
    for i in range(slices):
        ds = base_dataset(modality_sop, study_uid, series_uid, patient_id=patient_id, patient_name=patient_name)
        ds.Modality = "CT" if modality_sop == CTImageStorage else "MR"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-250.0, -250.0, -i * 1.25]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = -i * 1.25
        ds.SliceThickness = 1.25
        ds.PixelSpacing = [500 / size, 500 / size]
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        set_pixels(ds, phantom(size, i, seed))
        path = directory / f"slice{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def base_dataset(sop_class, study_uid, series_uid, *, patient_id="P1", patient_name="TEST^PATIENT") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    sop_uid = generate_uid(PYNETDICOM_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = dt.date.today().strftime("%Y%m%d")  # noqa: DTZ011 - a plausible date is all we need
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC" + study_uid[-6:]
    ds.StudyID = "1"
    ds.StudyDescription = "Generated test study"
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Generated series"
    ds.Modality = "OT"
    ds.InstanceNumber = 1
    return ds


def set_pixels(ds: Dataset, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> None:
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12 if pixels.max() < 4096 else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()


def small_image(directory: Path, name: str, study_uid: str, series_uid: str, number: int, **patient) -> Path:
    ds = base_dataset(MRImageStorage, study_uid, series_uid, **patient)
    ds.Modality = "MR"
    ds.InstanceNumber = number
    set_pixels(ds, phantom(64, number))
    path = directory / name
    ds.save_as(path, enforce_file_format=True)
    return path


def _deflated(data: bytes) -> bytes:
    """``data`` as a raw deflate segment that ends byte-aligned with an empty history.

    Such segments can be concatenated: repeating one compressed run of zeros makes
    gigabytes of inflated data in megabytes, without compressing gigabytes here.
    """
    import zlib

    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def deflate_bomb(path: Path, *, inflated_gib: int = 3, study_uid=None, series_uid=None) -> Dataset:
    """Write a Deflated Explicit VR file of a few MB whose data set inflates to ``inflated_gib`` GiB.

    The header is an ordinary small image's; its Pixel Data value is gigabytes of
    zeros. Returns the header data set (without pixels).
    """
    import io
    import struct
    import zlib

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = base_dataset(MRImageStorage, study_uid or generate_uid(PYNETDICOM_ROOT), series_uid or generate_uid())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    set_pixels(ds, np.zeros((64, 64), dtype=np.uint16))
    del ds.PixelData
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    write_dataset(header, ds)
    zeros = 16 * 1024**2
    count = inflated_gib * 64
    element = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, zeros * count)
    meta = io.BytesIO()
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    stream = _deflated(header.getvalue() + element) + _deflated(bytes(zeros)) * count
    stream += zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS).flush()  # the final, empty block
    path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + stream)
    return ds
