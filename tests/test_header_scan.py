"""Our header scan (dicomfile.scan_header, INGEST_SCAN_HEADER) reads what pydicom reads, or declines.

Checked on every file pydicom ships for its own tests (its test and character set
files, and pydicom-data's), and on files built here to be odd or hostile: the scan
gives the same elements, file meta and pixel data facts as ``read_header``, and the
index the same rows; whatever it declines goes pydicom's way unchanged.
"""

import copy
import shutil
import struct
from pathlib import Path

import pydicom.data
import pytest
from pydicom.uid import generate_uid

from imaging import dicomfile, ingest, storage
from tests import dicomgen

pytestmark = pytest.mark.filterwarnings("ignore")


def sample_files() -> list[Path]:
    """pydicom's bundled files and pydicom-data's (its data_store package), found on disk: nothing downloaded."""
    import data_store

    roots = [Path(pydicom.data.__file__).parent / d for d in ("test_files", "charset_files")]
    roots.append(Path(data_store.__file__).parent / "data")
    found = [p for root in roots for p in root.rglob("*")]
    return sorted(p for p in found if p.is_file() and p.suffix in ("", ".dcm"))


FILES = sample_files()


def comparable(ds) -> dict:
    """Every top-level element but the sequences, converted, as pydicom gives it."""
    return {tag: (ds[tag].VR, ds[tag].value) for tag in ds.keys() if ds[tag].VR != "SQ"}


def test_the_scan_reads_what_pydicom_reads_or_declines():
    scanned = declined = 0
    for path in FILES:
        fast = dicomfile.scan_header(path)
        if fast is None:
            declined += 1
            continue
        scanned += 1
        slow = dicomfile.read_header(path)  # the scan took it: pydicom reads it too
        where = path.name
        assert (fast.pixel_tag, fast.pixel_length, fast.pixel_available, fast.dicm) == (
            slow.pixel_tag,
            slow.pixel_length,
            slow.pixel_available,
            slow.dicm,
        ), where
        assert comparable(fast.ds) == comparable(slow.ds), where
        assert comparable(fast.ds.file_meta) == comparable(slow.ds.file_meta), where
        assert fast.ds.original_encoding[:2] == slow.ds.original_encoding[:2], where
    # Most of pydicom's files are the common case; the rest (big endian, deflated, no
    # preamble, headers longer than 64 KB...) are declined.
    assert scanned > 100 and declined > 10, (scanned, declined)


@pytest.fixture
def store(tmp_path, settings):
    settings.STORAGE_DIR = tmp_path / "storage"

    def put(path: Path) -> str:
        relpath = f"instances/t/{path.name}"
        target = storage.absolute(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return relpath

    return put


def parsed(relpath: str):
    try:
        p = ingest.parse_file(relpath, cache=ingest.RowCache(), correct=False)
    except ingest.NotIndexable as exc:
        return ("not indexable", exc.category, exc.reason)
    return (p.record, p.problem)


@pytest.mark.django_db
def test_the_index_rows_are_the_same_either_way(store, settings):
    for path in FILES:
        relpath = store(path)
        settings.INGEST_SCAN_HEADER = True
        fast = parsed(relpath)
        settings.INGEST_SCAN_HEADER = False
        assert fast == parsed(relpath), path.name


def odd_files(tmp_path) -> dict[str, bytes]:
    """Files the scan must decline (or read exactly as pydicom), each built from a good one."""
    [path] = dicomgen.ct_series(tmp_path / "ct", 1, size=16)
    good = path.read_bytes()
    ds = pydicom.dcmread(path)
    meta_end = 132 + 12 + struct.unpack_from("<L", good, 140)[0]  # after (0002,0000) and the group it counts
    body = good[meta_end:]
    files = {"good": good}
    # A claimed length past the end of the file, in the middle of the header.
    files["length past the end"] = good[:meta_end] + body[:8] + b"\x08\x00\x20\x00DA\xff\x7f" + body[8:40]
    # An item tag where an element belongs.
    files["stray item"] = good[:meta_end] + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + body
    # An undefined length on a text element.
    files["undefined text length"] = good[:meta_end] + b"\x10\x00\x10\x00LO\xff\xff" + body
    # An unknown VR.
    files["unknown VR"] = good[:meta_end] + b"\x10\x00\x10\x00ZZ\x02\x00AB" + body
    # A header longer than the scan reads (a large private value before the pixels).
    big = copy.deepcopy(ds)
    big.add_new(0x00091010, "LO", "x")
    big.add_new(0x00090010, "LO", "BIGCREATOR")
    big.add_new(0x00091011, "OB", b"\0" * (dicomfile.SCAN_BYTES + 10))
    big_path = tmp_path / "big.dcm"
    big.save_as(big_path, enforce_file_format=True)
    files["header past the scan"] = big_path.read_bytes()
    # Truncated inside the file meta, and inside the pixel data's element header.
    files["truncated meta"] = good[:150]
    pixel_at = good.rindex(b"\xe0\x7f\x10\x00")
    files["truncated at the pixels"] = good[: pixel_at + 6]
    # No preamble: a bare data set.
    files["no preamble"] = good[128:]
    # Undefined-length sequences, nested, before the pixels.
    seq = copy.deepcopy(ds)
    item = pydicom.Dataset()
    item.ReferencedSOPInstanceUID = generate_uid()
    inner = pydicom.Dataset()
    inner.CodeValue = "113691"
    item.PurposeOfReferenceCodeSequence = [inner]
    seq.ReferencedImageSequence = [item]
    seq_path = tmp_path / "seq.dcm"
    seq.save_as(seq_path, enforce_file_format=True)
    raw = seq_path.read_bytes()
    # Rewrite both sequences and their items to undefined lengths, as many modalities write them.
    files["undefined-length sequences"] = undefined_lengths(raw)
    return files


def undefined_lengths(data: bytes) -> bytes:
    """``data`` with every SQ and item length made undefined (delimiters added); Explicit VR LE."""
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    buffer = pydicom.filebase.DicomBytesIO()
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = True
            for item in elem.value:
                item.is_undefined_length_sequence_item = True
    ds.save_as(buffer, enforce_file_format=True)
    out = buffer.getvalue()
    assert b"\xfe\xff\xdd\xe0" in out  # a sequence delimiter: the lengths are undefined
    return out


@pytest.mark.django_db
def test_odd_and_hostile_files_are_declined_or_read_exactly_as_pydicom(tmp_path, store, settings):
    taken = set()
    for name, data in odd_files(tmp_path).items():
        path = tmp_path / "odd" / (name.replace(" ", "-") + ".dcm")
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        fast = dicomfile.scan_header(path)
        if fast is not None:
            taken.add(name)
            slow = dicomfile.read_header(path)
            assert comparable(fast.ds) == comparable(slow.ds), name
            assert (fast.pixel_tag, fast.pixel_length, fast.pixel_available) == (
                slow.pixel_tag,
                slow.pixel_length,
                slow.pixel_available,
            ), name
        relpath = store(path)
        settings.INGEST_SCAN_HEADER = True
        either = parsed(relpath)
        settings.INGEST_SCAN_HEADER = False
        assert either == parsed(relpath), name
    # The common cases are read by the scan; everything odd is left to pydicom.
    assert taken == {"good", "undefined-length sequences"}, taken


QUICK = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "SeriesNumber",
    "InstanceNumber",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "BitsAllocated",
)
QUICK_META = ("MediaStorageSOPClassUID", "TransferSyntaxUID", "SourceApplicationEntityTitle")


def as_used(value):
    """What the indexer makes of a value: text stripped, or the number (str(), then int() when it can)."""
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return text


def test_quick_get_gives_what_pydicom_gives():
    compared = 0
    for path in FILES:
        try:
            slow = dicomfile.read_header(path)
        except dicomfile.Unreadable:
            continue
        fast = dicomfile.scan_header(path)
        for header in filter(None, (slow, dicomfile.read_header(path), fast)):
            # A fresh pydicom read each time: pydicom's get converts the element in place.
            reference = dicomfile.read_header(path).ds
            for keyword in QUICK:
                quick = dicomfile.quick_get(header.ds, keyword, "")
                assert as_used(quick) == as_used(reference.get(keyword, "")), (path.name, keyword)
                compared += 1
            for keyword in QUICK_META:
                quick = dicomfile.quick_get(header.ds.file_meta, keyword, "")
                assert as_used(quick) == as_used(reference.file_meta.get(keyword, "")), (path.name, keyword)
    assert compared > 2000


def _data_set_bytes(path: Path) -> tuple[str, bytes] | None:
    """(transfer syntax, the data set as a modality would send it) of a Part 10 file, or None."""
    with open(path, "rb") as fp:
        try:
            pydicom.filereader.read_preamble(fp, False)
            meta = pydicom.filereader._read_file_meta_info(fp)
        except Exception:
            return None
        return str(meta.get("TransferSyntaxUID", "")), fp.read()


def test_the_c_store_checks_read_the_same_uids_either_way(settings):
    """network/dimse/store.header_identifiers: our scan (INGEST_SCAN_HEADER) or pydicom, the same UIDs or refusal."""
    from network.dimse import store as dimse_store

    def identifiers(transfer_syntax, data, scan):
        settings.INGEST_SCAN_HEADER = scan
        try:
            return dimse_store.header_identifiers(data, transfer_syntax)
        except dimse_store.Rejected as exc:
            return ("refused", exc.status)

    compared = scanned = 0
    for path in FILES:
        found = _data_set_bytes(path)
        if found is None or not found[0]:
            continue
        transfer_syntax, data = found
        cuts = [data, data[: len(data) // 2], data[:200]]  # whole, and cut short as a broken sender would
        for cut in cuts:
            assert identifiers(transfer_syntax, cut, True) == identifiers(transfer_syntax, cut, False), path.name
            compared += 1
        implicit = transfer_syntax == "1.2.840.10008.1.2"
        scanned += dicomfile.scan_values(data, 0x0020000E, implicit) is not None
    assert compared > 300 and scanned > 100, (compared, scanned)
