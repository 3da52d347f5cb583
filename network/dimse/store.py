"""C-STORE SCP: write the data set as received, then hand it to the indexer.

The hot path does as little as possible: it never decodes pixel data and never
touches the database. It reads the few header attributes it must check, writes
the encoded bytes (preamble + file meta + data set exactly as sent) atomically,
answers Success only once the file is on disk, and queues the path for indexing.
"""

import io
import logging
import zlib

from django.conf import settings
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import encode_file_meta

from imaging import integrity, storage
from network import access
from network.dimse.association import permitted, session_of

log = logging.getLogger(__name__)

# DICOM statuses used here (PS3.4 B.2.3 and PS3.7 C).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the data set is larger than we accept, or the disk failed
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # required identifiers missing or wrong
CANNOT_UNDERSTAND = 0xC000  # the data set cannot be parsed
# PS3.7 C.4 "Duplicate SOP Instance": the UID is held under another study or patient
# and DICOM_UID_CONFLICT_POLICY keeps it (imaging/integrity.py). dcm4chee-arc answers
# its own 0xA778 "conflicting patient ID", but A7xx means "out of resources", which
# SCUs retry; this is a failure a person must look at, with the standard's name.
DUPLICATE_SOP_INSTANCE = 0x0111

_LAST_TAG_NEEDED = 0x0020000E  # Series Instance UID; the UIDs we check all come before it


class Rejected(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _stop_after_uids(tag, vr, length) -> bool:
    return tag > _LAST_TAG_NEEDED


def header_identifiers(stream: bytes, transfer_syntax: str) -> dict[str, str]:
    """Read SOP Class/Instance, Study and Series UIDs from an encoded data set.

    Reads only up to (0020,000E): the pixel data and most of the header are
    never parsed on the hot path.
    """
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    try:
        if transfer_syntax == DeflatedExplicitVRLittleEndian:
            # Only the start of the data set is needed; inflate a bounded prefix.
            stream = zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream, 1024 * 1024)
        ds = read_dataset(io.BytesIO(stream), implicit, little, stop_when=_stop_after_uids)
        ids = {
            "SOPClassUID": ds.get("SOPClassUID", ""),
            "SOPInstanceUID": ds.get("SOPInstanceUID", ""),
            "StudyInstanceUID": ds.get("StudyInstanceUID", ""),
            "SeriesInstanceUID": ds.get("SeriesInstanceUID", ""),
        }
    except Exception as exc:
        raise Rejected(CANNOT_UNDERSTAND, f"data set cannot be parsed: {exc}") from exc
    return {k: str(v).strip().rstrip("\x00") for k, v in ids.items()}


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


def store(file_meta, stream: bytes, calling_ae: str) -> str:
    """Check and write one received data set; returns its path relative to STORAGE_DIR.

    Raises ``Rejected`` with the DICOM status to answer when the data set must not
    be stored. Nothing already stored is touched unless this write fully succeeds.
    """
    if len(stream) > settings.DICOM_MAX_DATASET_BYTES:
        raise Rejected(OUT_OF_RESOURCES, f"data set of {len(stream)} bytes exceeds DICOM_MAX_DATASET_BYTES")
    ids = header_identifiers(stream, str(file_meta.TransferSyntaxUID))
    check_identifiers(ids, str(file_meta.MediaStorageSOPClassUID), str(file_meta.MediaStorageSOPInstanceUID))
    if calling_ae:
        file_meta.SourceApplicationEntityTitle = calling_ae
    relpath = storage.instance_relpath(ids["SOPInstanceUID"])
    try:
        integrity.check_before_store(
            relpath, stream, str(file_meta.TransferSyntaxUID), ids["SOPInstanceUID"], calling_ae
        )
    except integrity.Refused as exc:
        raise Rejected(DUPLICATE_SOP_INSTANCE, str(exc)) from exc
    try:
        storage.write_atomic(relpath, (b"\x00" * 128 + b"DICM" + encode_file_meta(file_meta), stream))
    except OSError as exc:
        raise Rejected(OUT_OF_RESOURCES, f"cannot write {relpath}: {exc}") from exc
    return relpath


def handle_store(event, handoff) -> int:
    """EVT_C_STORE handler: never raises, every failure is a DICOM status."""
    calling_ae = event.assoc.requestor.ae_title.strip()
    request = event.request
    if not permitted(event, "C-STORE", "may_store"):
        return access.NOT_AUTHORIZED
    session = session_of(event.assoc)
    try:
        stream = event.encoded_dataset(include_meta=False)
        relpath = store(event.file_meta, stream, calling_ae)
    except Rejected as exc:
        if session is not None:
            session.failures += 1
        log.warning(
            "C-STORE from %s of %s refused (0x%04X): %s",
            calling_ae,
            request.AffectedSOPInstanceUID,
            exc.status,
            exc.reason,
        )
        return exc.status
    except Exception:
        if session is not None:
            session.failures += 1
        log.exception("C-STORE from %s of %s failed", calling_ae, request.AffectedSOPInstanceUID)
        return OUT_OF_RESOURCES
    handoff.submit(relpath, calling_ae)
    if session is not None:
        session.images_received += 1
    return SUCCESS
