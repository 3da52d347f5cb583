"""The C-STORE hot path as a plain function: what it checks and what it refuses."""

import io
import zlib

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from imaging import storage
from network.dimse import store
from tests import dicomgen


def encoded(ds, transfer_syntax=None):
    """The data set as a modality would put it on the wire: no preamble, no meta."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    fp = io.BytesIO(buffer.getvalue())
    meta = pydicom.filereader.read_preamble(fp, False) and pydicom.filereader._read_file_meta_info(fp)
    return meta, fp.read()


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "MR_small_RLE.dcm",
        "JPEG2000.dcm",
    ],
)
def test_it_reads_the_identifiers_of_every_transfer_syntax(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    meta, stream = encoded(ds)
    ids = store.header_identifiers(stream, str(meta.TransferSyntaxUID))
    assert ids["SOPInstanceUID"] == ds.SOPInstanceUID
    assert ids["StudyInstanceUID"] == ds.StudyInstanceUID
    assert ids["SeriesInstanceUID"] == ds.SeriesInstanceUID


def test_store_writes_the_bytes_as_received_with_the_calling_ae(tmp_path):
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)
    meta, stream = encoded(pydicom.dcmread(path))
    relpath = store.store(meta, stream, "CT_ROOM_1")
    written = storage.absolute(relpath).read_bytes()
    assert written.endswith(stream)
    assert pydicom.dcmread(storage.absolute(relpath)).file_meta.SourceApplicationEntityTitle == "CT_ROOM_1"


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_store_refuses_a_data_set_without_its_identifiers(tmp_path, missing):
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)
    ds = pydicom.dcmread(path)
    meta, _ = encoded(ds)
    delattr(ds, missing)
    _, stream = encoded(ds)
    with pytest.raises(store.Rejected) as refused:
        store.store(meta, stream, "CT1")
    assert refused.value.status == 0xA900


def test_store_refuses_a_data_set_whose_uid_differs_from_the_request(tmp_path):
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)
    meta, stream = encoded(pydicom.dcmread(path))
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    with pytest.raises(store.Rejected) as refused:
        store.store(meta, stream, "CT1")
    assert refused.value.status == 0xA900


def test_store_refuses_a_stream_that_cannot_be_inflated_with_cannot_understand(tmp_path):
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)
    meta, _ = encoded(pydicom.dcmread(path))
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with pytest.raises(store.Rejected) as refused:
        store.store(meta, b"this is not deflate data at all", "CT1")
    assert refused.value.status == 0xC000


def test_store_refuses_a_truncated_element_with_a_failure_status(tmp_path):
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)
    meta, _ = encoded(pydicom.dcmread(path))
    with pytest.raises(store.Rejected) as refused:
        store.store(meta, b"\x08\x00\x18\x00UI\xff\x7f1.2.3", "CT1")
    assert refused.value.status in (0xA900, 0xC000)


def test_store_refuses_a_data_set_over_the_size_limit(tmp_path, settings):
    settings.DICOM_MAX_DATASET_BYTES = 1000
    [path] = dicomgen.ct_series(tmp_path, 1, size=64)
    meta, stream = encoded(pydicom.dcmread(path))
    with pytest.raises(store.Rejected) as refused:
        store.store(meta, stream, "CT1")
    assert refused.value.status == 0xA700


def test_a_deflated_stream_is_inflated_only_as_far_as_needed():
    ds = pydicom.dcmread(get_testdata_file("image_dfl.dcm"))
    _, stream = encoded(ds)
    assert zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream)  # really deflated
    ids = store.header_identifiers(stream, DeflatedExplicitVRLittleEndian)
    assert ids["SOPInstanceUID"] == ds.SOPInstanceUID
