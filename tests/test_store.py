"""The C-STORE hot path as a plain function: what it checks and what it refuses."""

import io
import warnings
import zlib
from pathlib import Path

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


def _spool_and_memory_meta(path):
    """What the SCP knows of a C-STORE request: the file meta pynetdicom builds, and the data set as sent."""
    from pynetdicom.dsutils import create_file_meta

    meta, stream = encoded(pydicom.dcmread(path))
    uids = dict(
        sop_class_uid=meta.MediaStorageSOPClassUID,
        sop_instance_uid=meta.MediaStorageSOPInstanceUID,
        transfer_syntax=meta.TransferSyntaxUID,
    )
    return (lambda: create_file_meta(**uids)), stream


def _spool(meta, calling_ae="CT_ROOM_1", may_store=True):
    return store.open_spool(
        sop_class=meta.MediaStorageSOPClassUID,
        sop_instance=meta.MediaStorageSOPInstanceUID,
        transfer_syntax=meta.TransferSyntaxUID,
        calling_ae=calling_ae,
        may_store=may_store,
    )


@pytest.mark.parametrize("name", ["CT_small.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm"])
def test_a_data_set_received_to_disk_is_the_same_file_as_one_held_in_memory(name):
    make_meta, stream = _spool_and_memory_meta(get_testdata_file(name))
    relpath = store.store(make_meta(), stream, "CT_ROOM_1")
    in_memory = storage.absolute(relpath).read_bytes()
    storage.absolute(relpath).unlink()
    spool = _spool(make_meta())
    for start in range(0, len(stream), 1000):  # as fragments arrive
        spool.write(stream[start : start + 1000])
    assert store.store_spooled(spool) == relpath
    assert storage.absolute(relpath).read_bytes() == in_memory
    assert not [p for p in storage.absolute(relpath).parent.iterdir() if p.name.endswith(storage.PARTIAL_SUFFIX)]


def test_a_spooled_data_set_that_is_refused_leaves_no_file(tmp_path):
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)
    make_meta, stream = _spool_and_memory_meta(path)
    meta = make_meta()
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"  # the data set says another UID
    spool = _spool(meta)
    spool.write(stream)
    with pytest.raises(store.Rejected) as refused:
        store.store_spooled(spool)
    assert refused.value.status == 0xA900
    folder = storage.absolute(storage.instance_relpath("1.2.3.4")).parent
    assert not list(folder.iterdir())


def test_a_spool_for_an_invalid_uid_or_a_node_that_may_not_store_writes_nothing(tmp_path):
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)
    make_meta, stream = _spool_and_memory_meta(path)
    meta = make_meta()
    meta.MediaStorageSOPInstanceUID = "../../etc"
    spool = _spool(meta)
    spool.write(stream)
    assert spool.partial is None and spool.refusal[0] == 0xA900
    not_allowed = _spool(make_meta(), may_store=False)
    assert not_allowed.partial is None and not_allowed.refusal[0] == 0x0124


def test_below_the_free_space_watermark_store_answers_out_of_resources(tmp_path, settings):
    settings.STORAGE_MIN_FREE_MB = 1024**4
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)
    make_meta, stream = _spool_and_memory_meta(path)
    with pytest.raises(store.Rejected) as refused:
        store.store(make_meta(), stream, "CT1")
    assert refused.value.status == 0xA700 and "below STORAGE_MIN_FREE_MB" in refused.value.reason
    assert _spool(make_meta()).refusal[0] == 0xA700


def test_a_spool_whose_disk_fails_answers_out_of_resources_and_leaves_no_file(tmp_path, monkeypatch):
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)
    make_meta, stream = _spool_and_memory_meta(path)
    spool = _spool(make_meta())
    partial_path = spool.partial.path

    def disk_full(data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool.partial, "write", disk_full)
    spool.write(stream)  # in the DUL thread: must not raise
    assert spool.partial is None and spool.refusal[0] == 0xA700
    assert not Path(partial_path).exists()
    with pytest.raises(store.Rejected) as refused:
        store.store_spooled(spool)
    assert refused.value.status == 0xA700


def _pydicoms_header(sop_class, sop_instance, transfer_syntax, calling_ae):
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    meta = create_file_meta(sop_class_uid=sop_class, sop_instance_uid=sop_instance, transfer_syntax=transfer_syntax)
    if calling_ae:
        meta.SourceApplicationEntityTitle = calling_ae
    return b"\x00" * 128 + b"DICM" + encode_file_meta(meta)


@pytest.mark.parametrize(
    "uids",
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"),  # even, even, odd lengths
        ("1.2.840.10008.5.1.4.1.1.7", "1.2.3.45", "1.2.840.10008.1.2"),  # odd, odd, even
        ("1.2.840.10008.5.1.4.1.1.4", "1." + "2" * 62, "1.2.840.10008.1.2.4.50"),  # a 64-character UID
        ("1.2.840.10008.5.1.4.1.1.2", "2.25.339023904629870712463123406427125409876", "1.2.840.10008.1.2.5"),
    ],
)
@pytest.mark.parametrize("calling_ae", ["", "CT_ROOM_1", "MR", "A" * 16, "DR 7", "US-1 ", "A" * 15])
def test_our_file_meta_is_pydicoms_byte_for_byte(uids, calling_ae):
    ours = store.file_header(store.Meta(*uids), calling_ae)
    assert ours == _pydicoms_header(*uids, calling_ae)
    read = pydicom.filereader._read_file_meta_info(io.BytesIO(ours[132:]))
    assert read.MediaStorageSOPInstanceUID == uids[1]
    assert read.get("SourceApplicationEntityTitle", "") == calling_ae.rstrip()


@pytest.mark.parametrize(
    "uids, calling_ae",
    [
        (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"), "CT\\ROOM"),  # a backslash: two values
        (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"), "CT_ROOM_ONE_TWO_3"),  # 17 characters
        (("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"), "CT\x07"),  # a control character
        (("1.2.840.10008.5.1.4.1.1.2 ", "1.2.3.4", "1.2.840.10008.1.2.1"), "CT"),  # a UID with a space
        (("1.2.840.10008.5.1.4.1.1.02", "1.2.3.4", "1.2.840.10008.1.2.1"), "CT"),  # a leading zero
    ],
)
def test_a_file_meta_value_we_do_not_encode_ourselves_is_left_to_pydicom(uids, calling_ae):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of the invalid values, and writes them
        expected = _pydicoms_header(*uids, calling_ae)
        assert store.file_header(store.Meta(*uids), calling_ae) == expected
