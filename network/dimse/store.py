"""C-STORE SCP: write the data set as received, then hand it to the indexer.

The hot path does as little as possible: it never decodes pixel data and never
touches the database. It reads the few header attributes it must check, writes
the encoded bytes (preamble + file meta + data set exactly as sent) atomically,
answers Success only once the file is on disk, and queues the path for indexing.

A data set larger than DICOM_STREAM_TO_DISK_BYTES is not held in memory: its
fragments go to its file's temporary twin as they arrive (``open_spool``, called
by network/guard.py when the C-STORE request's command set is complete), and the
handler checks and commits that file (``store_spooled``). Either way the file is
the same, byte for byte.
"""

import io
import logging
import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from django.conf import settings
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from imaging import dicomfile, integrity, storage
from network import access
from network.dimse.association import permitted, session_of

log = logging.getLogger(__name__)

# DICOM statuses used here (PS3.4 B.2.3 and PS3.7 C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the data set is larger than we accept, the disk is (nearly) full or failed
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # required identifiers missing or wrong
CANNOT_UNDERSTAND = 0xC000  # the data set cannot be parsed
# PS3.7 C.4 "Duplicate SOP Instance": the UID is held under another study or patient
# and DICOM_UID_CONFLICT_POLICY keeps it (imaging/integrity.py). dcm4chee-arc answers
# its own 0xA778 "conflicting patient ID", but A7xx means "out of resources", which
# SCUs retry; this is a failure a person must look at, with the standard's name.
DUPLICATE_SOP_INSTANCE = 0x0111

_LAST_TAG_NEEDED = 0x0020000E  # Series Instance UID; the UIDs we check all come before it
_IDENTIFIERS = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
}


class Rejected(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _stop_after_uids(tag, vr, length) -> bool:
    return tag > _LAST_TAG_NEEDED


# Only the start of a deflated data set is needed: at most this much is inflated (and read from a file).
_INFLATED_PREFIX = 1024 * 1024
# Values longer than this are skipped, not read, on the way to the UIDs.
_DEFER_SIZE = 64 * 1024


def header_identifiers(stream, transfer_syntax: str) -> dict[str, str]:
    """Read SOP Class/Instance, Study and Series UIDs from an encoded data set (bytes, or a file at its start).

    Reads only up to (0020,000E): the pixel data and most of the header are
    never parsed on the hot path.
    """
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            if not isinstance(stream, bytes | bytearray | memoryview):
                stream = stream.read(2 * _INFLATED_PREFIX)
            stream = zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream, _INFLATED_PREFIX)
        in_memory = isinstance(stream, bytes | bytearray | memoryview)
        scan = settings.INGEST_SCAN_HEADER and in_memory and little
        ids = _scanned_identifiers(stream, implicit) if scan else None
        if ids is None:
            fp = io.BytesIO(stream) if in_memory else stream
            ds = read_dataset(fp, implicit, little, stop_when=_stop_after_uids, defer_size=_DEFER_SIZE)
            ids = {keyword: ds.get(keyword, "") for keyword in _IDENTIFIERS.values()}
    except Exception as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc}") from exc
    return {k: str(v).strip().rstrip("\x00") for k, v in ids.items()}


def _scanned_identifiers(stream, implicit: bool) -> dict[str, str] | None:
    """The identifiers read by our scan (imaging/dicomfile.scan_values), as pydicom reads them; None: ask pydicom.

    0.1 ms less per image than pydicom's reader and conversions, a fifth of the
    store's own work. INGEST_SCAN_HEADER=0 leaves it to pydicom, as for the index.
    """
    values = dicomfile.scan_values(stream, _LAST_TAG_NEEDED, implicit)
    if values is None:
        return None
    ids = {}
    for tag, keyword in _IDENTIFIERS.items():
        vr, value = values.get(tag, (None, b""))
        text = dicomfile.ui_value(value) if vr in (None, b"UI") else None
        if text is None:  # another VR, or several values: pydicom's reading says what they are
            return None
        ids[keyword] = text
    return ids


def check_identifiers(ids: dict[str, str], affected_sop_class: str, affected_sop_instance: str) -> None:
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if not ids[keyword]:
            raise Rejected(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing")
        if not storage.is_valid_uid(ids[keyword]):
            raise Rejected(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} {ids[keyword]!r} is not a valid UID")
    if ids["SOPInstanceUID"] != affected_sop_instance:
        # The file would say one UID in its meta and another in its data set.
        raise Rejected(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"SOPInstanceUID {ids['SOPInstanceUID']!r} differs from the request's {affected_sop_instance!r}",
        )
    if ids["SOPClassUID"] and ids["SOPClassUID"] != affected_sop_class:
        # Harmless for storage (some devices send a legacy class in the request):
        # keep the image and say so.
        log.warning(
            "SOP Class UID %s in the data set differs from %s in the request (instance %s); stored anyway",
            ids["SOPClassUID"],
            affected_sop_class,
            affected_sop_instance,
        )


class Meta(NamedTuple):
    """What a stored file's meta says of its data set: pynetdicom's file meta for a C-STORE, from the request.

    The names are pynetdicom's ``FileMetaDataset`` attributes; building that
    Dataset and encoding it with pydicom's writer took 0.5 ms, half of what the
    store function costs per image (``file_header`` encodes the same bytes).
    """

    MediaStorageSOPClassUID: str
    MediaStorageSOPInstanceUID: str
    TransferSyntaxUID: str


_PREAMBLE = b"\x00" * 128 + b"DICM"


def _short_element(element: int, vr: bytes, value: bytes, pad: bytes) -> bytes:
    """An Explicit VR Little Endian element of group 0002 with a 2-byte length, padded to even length."""
    if len(value) % 2:
        value += pad
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _plain_text(value: str) -> bool:
    """Printable ASCII without a backslash (one value), at most 16 characters: an AE or SH as pydicom writes it."""
    return len(value) <= 16 and value.isascii() and value.isprintable() and "\\" not in value


def file_header(meta: Meta, calling_ae: str) -> bytes:
    """Preamble, prefix and our file meta (with the calling AE as Source Application Entity Title).

    The bytes pydicom writes for pynetdicom's file meta (tests/test_store.py
    compares them), encoded here when every value is one pydicom writes as it is:
    valid UIDs and a plain AE title; anything else is left to pydicom's writer.
    """
    uids = (meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID)
    uids = tuple(str(uid) for uid in uids)
    if all(storage.is_valid_uid(uid) for uid in uids) and _plain_text(calling_ae):
        sop_class, sop_instance, transfer_syntax = (uid.encode() for uid in uids)
        elements = b"".join(
            (
                struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
                _short_element(0x0002, b"UI", sop_class, b"\x00"),
                _short_element(0x0003, b"UI", sop_instance, b"\x00"),
                _short_element(0x0010, b"UI", transfer_syntax, b"\x00"),
                _short_element(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode(), b"\x00"),
                _short_element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode(), b" "),
                _short_element(0x0016, b"AE", calling_ae.encode(), b" ") if calling_ae else b"",
            )
        )
        return _PREAMBLE + struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(elements)) + elements
    file_meta = create_file_meta(sop_class_uid=uids[0], sop_instance_uid=uids[1], transfer_syntax=uids[2])
    if calling_ae:
        file_meta.SourceApplicationEntityTitle = calling_ae
    return _PREAMBLE + encode_file_meta(file_meta)


def check_conflict(relpath: str, stream, transfer_syntax: str, sop_instance_uid: str, calling_ae: str) -> None:
    """DICOM_UID_CONFLICT_POLICY against the instance already stored at ``relpath`` (imaging/integrity.py)."""
    try:
        integrity.check_before_store(relpath, stream, transfer_syntax, sop_instance_uid, calling_ae)
    except integrity.Refused as exc:
        raise Rejected(DUPLICATE_SOP_INSTANCE, str(exc)) from exc


def check_space() -> None:
    reason = storage.low_space_reason()
    if reason:
        raise Rejected(OUT_OF_RESOURCES, reason)


def store(meta: Meta, stream: bytes, calling_ae: str, group: storage.GroupCommit | None = None) -> str:
    """Check and write one received data set; returns its path relative to STORAGE_DIR.

    Raises ``Rejected`` with the DICOM status to answer when the data set must not
    be stored. Nothing already stored is touched unless this write fully succeeds.
    With ``group``, the file is stored only once ``group.wait()`` says so.
    """
    if len(stream) > settings.DICOM_MAX_DATASET_BYTES:
        raise Rejected(OUT_OF_RESOURCES, f"data set of {len(stream)} bytes exceeds DICOM_MAX_DATASET_BYTES")
    check_space()
    ids = header_identifiers(stream, str(meta.TransferSyntaxUID))
    check_identifiers(ids, str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID))
    relpath = storage.instance_relpath(ids["SOPInstanceUID"])
    if group is not None:
        group.settle(storage.absolute(relpath))  # the same instance twice in one request: the first is there
    check_conflict(relpath, stream, str(meta.TransferSyntaxUID), ids["SOPInstanceUID"], calling_ae)
    try:
        storage.write_atomic(relpath, (file_header(meta, calling_ae), stream), group=group)
    except OSError as exc:
        raise Rejected(OUT_OF_RESOURCES, f"cannot write {relpath}: {exc}") from exc
    return relpath


@dataclass
class Spool:
    """A C-STORE data set on its way to disk: the file's temporary twin, header written, fragments appended.

    ``refusal`` (status, reason) when it is not written at all: the fragments are
    only counted, and the handler answers that status.
    """

    partial: storage.PartialFile | None
    transfer_syntax: str
    sop_class: str
    sop_instance: str
    data_offset: int = 0
    refusal: tuple[int, str] | None = None

    def write(self, data) -> None:
        if self.partial is None:
            return
        try:
            self.partial.write(data)
        except OSError as exc:  # the disk failed or filled up: count the rest, answer 0xA700
            self.partial.discard()
            self.partial = None
            self.refusal = OUT_OF_RESOURCES, f"cannot write the data set to disk: {exc}"

    def discard(self) -> None:
        if self.partial is not None:
            self.partial.discard()


def discard_spools(spools: list) -> None:
    """Remove the temporary file of every spool in ``spools`` not committed, and empty the list."""
    for spool in spools:
        try:
            spool.discard()
        except OSError:
            log.exception("cannot remove a partly received data set")
    spools.clear()


def open_spool(*, sop_class: str, sop_instance: str, transfer_syntax: str, calling_ae: str, may_store: bool) -> Spool:
    """Where the fragments of a large C-STORE data set go as they arrive; never raises."""
    spool = Spool(None, str(transfer_syntax), str(sop_class), str(sop_instance))
    try:
        if not may_store:
            raise Rejected(access.NOT_AUTHORIZED, "the node lacks may_store")
        check_space()
        try:
            relpath = storage.instance_relpath(spool.sop_instance)
        except storage.InvalidUID as exc:
            raise Rejected(DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc)) from exc
        header = file_header(Meta(sop_class, sop_instance, transfer_syntax), calling_ae)
        try:
            spool.partial = storage.PartialFile(relpath)
            spool.partial.write(header)
        except OSError as exc:
            spool.discard()
            spool.partial = None
            raise Rejected(OUT_OF_RESOURCES, f"cannot write {relpath}: {exc}") from exc
        spool.data_offset = len(header)
    except Rejected as exc:
        spool.refusal = exc.status, exc.reason
    except Exception as exc:
        log.exception("cannot receive the data set of %s to disk", sop_instance)
        spool.refusal = OUT_OF_RESOURCES, f"cannot receive the data set to disk: {exc}"
    return spool


def store_spooled(spool: Spool, calling_ae: str = "", group: storage.GroupCommit | None = None) -> str:
    """Check and commit a data set received to disk (``open_spool``); returns its path relative to STORAGE_DIR.

    Raises ``Rejected`` like ``store``; the temporary file is then removed. With
    ``group``, as for ``store``.
    """
    try:
        if spool.refusal:
            raise Rejected(*spool.refusal)
        size = spool.partial.size - spool.data_offset
        if size > settings.DICOM_MAX_DATASET_BYTES:
            raise Rejected(OUT_OF_RESOURCES, f"data set of {size} bytes exceeds DICOM_MAX_DATASET_BYTES")
        check_space()
        with open(spool.partial.path, "rb") as fp:
            fp.seek(spool.data_offset)
            ids = header_identifiers(fp, spool.transfer_syntax)
            fp.seek(spool.data_offset)
            start = fp.read(integrity.HEADER_PREFIX)
        check_identifiers(ids, spool.sop_class, spool.sop_instance)
        relpath = storage.instance_relpath(ids["SOPInstanceUID"])
        if group is not None:
            group.settle(spool.partial.dest)
        check_conflict(relpath, start, spool.transfer_syntax, ids["SOPInstanceUID"], calling_ae)
        if group is not None:
            group.commit(spool.partial)
            spool.partial = None  # the group's now: nothing for the discard below
            return relpath
        try:
            spool.partial.commit()
        except OSError as exc:
            raise Rejected(OUT_OF_RESOURCES, f"cannot write {relpath}: {exc}") from exc
        return relpath
    finally:
        spool.discard()


def handle_store(event, handoff) -> int:
    """EVT_C_STORE handler: never raises, every failure is a DICOM status."""
    calling_ae = event.assoc.requestor.ae_title.strip()
    request = event.request
    spool = getattr(request, "imaging_spool", None)  # set by network/guard.py for a data set received to disk
    if not permitted(event, "C-STORE", "may_store"):
        if spool is not None:
            spool.discard()
        return access.NOT_AUTHORIZED
    return store_received(
        session=session_of(event.assoc),
        calling_ae=calling_ae,
        sop_instance=request.AffectedSOPInstanceUID,
        handoff=handoff,
        spool=spool,
        received=lambda: (
            Meta(request.AffectedSOPClassUID, request.AffectedSOPInstanceUID, event.context.transfer_syntax),
            event.encoded_dataset(include_meta=False),
        ),
    )


def store_received(*, session, calling_ae: str, sop_instance: str, handoff, spool: Spool | None, received) -> int:
    """Store one C-STORE data set the node may store (pynetdicom's handler and network/fastrecv.py); its status.

    The data set is ``spool`` (received to disk) or, without one, ``received()``:
    (file meta, encoded data set). Never raises: a refusal is logged and counted in
    ``session``; a stored file is handed to the indexer.
    """
    try:
        if spool is not None:
            relpath = store_spooled(spool, calling_ae)
        else:
            meta, stream = received()
            relpath = store(meta, stream, calling_ae)
    except Rejected as exc:
        if session is not None:
            session.failures += 1
        log.warning("C-STORE from %s of %s refused (0x%04X): %s", calling_ae, sop_instance, exc.status, exc.reason)
        return exc.status
    except Exception:
        if session is not None:
            session.failures += 1
        log.exception("C-STORE from %s of %s failed", calling_ae, sop_instance)
        return OUT_OF_RESOURCES
    finally:
        if spool is not None:
            spool.discard()
    handoff.submit(relpath, calling_ae)
    if session is not None:
        session.images_received += 1
    return SUCCESS


def spool_for(assoc, request, transfer_syntax: str) -> Spool:
    """``open_spool`` for a C-STORE request on ``assoc`` (network/guard.py calls it)."""
    session = session_of(assoc)
    return open_spool(
        sop_class=request.AffectedSOPClassUID,
        sop_instance=request.AffectedSOPInstanceUID,
        transfer_syntax=transfer_syntax,
        calling_ae=assoc.requestor.ae_title.strip(),
        may_store=session is None or session.allows("may_store"),
    )
