"""Index integrity: a SOP Instance UID is one instance, of one study, of one patient.

An instance that arrives again under another study or patient than the one we
hold is not silently moved or overwritten: DICOM_UID_CONFLICT_POLICY decides
("reject" keeps what we hold, "replace" takes the new one) and every conflict is
recorded as an InstanceConflict an administrator reads in the admin.

Checked where it can be seen: at store time (C-STORE and STOW-RS, through
``check_before_store``) against the file already on disk, and at index time
(``ingest.upsert``) against the index, for files that reached the disk by other
ways (reindex of an archive, a replaced file).
"""

import io
import logging
import zlib
from dataclasses import dataclass

from django.conf import settings
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from imaging import charsets, storage
from records.models import InstanceConflict

log = logging.getLogger(__name__)

# Patient ID (0010,0020), Issuer (0010,0021) and the Study and Series UIDs all
# come before (0020,000E): nothing after it is read.
_LAST_TAG_NEEDED = 0x0020000E
# A header this long holds every element we compare, even with long private groups before them.
HEADER_PREFIX = 256 * 1024


class Refused(Exception):
    """The policy keeps the stored instance: the new one must not be stored."""


@dataclass(frozen=True)
class Identity:
    study_uid: str
    patient_id: str
    issuer: str


def _identity_of(ds) -> Identity:
    return Identity(
        str(ds.get("StudyInstanceUID", "") or "").strip().rstrip("\x00"),
        charsets.text(ds, "PatientID"),
        charsets.text(ds, "IssuerOfPatientID"),
    )


def _stop(tag, vr, length) -> bool:
    return tag > _LAST_TAG_NEEDED


def identity_of_stream(stream: bytes, transfer_syntax: str) -> Identity:
    """Study UID and patient of an encoded data set (no preamble, no file meta), reading only its start."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        stream = zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream, HEADER_PREFIX)
    implicit = transfer_syntax == ImplicitVRLittleEndian
    little = transfer_syntax != ExplicitVRBigEndian
    return _identity_of(read_dataset(io.BytesIO(stream), implicit, little, stop_when=_stop))


def identity_of_file(path) -> Identity:
    """The same for a stored file: its preamble and file meta, then the start of its data set."""
    with open(path, "rb") as fp:
        read_preamble(fp, True)
        meta = _read_file_meta_info(fp)
        transfer_syntax = str(meta.get("TransferSyntaxUID", ImplicitVRLittleEndian))
        prefix = fp.read(HEADER_PREFIX)
    # A prefix of a deflated stream inflates to the start of the data set: enough.
    return identity_of_stream(prefix, transfer_syntax)


def differs(stored: Identity, incoming: Identity) -> bool:
    return stored.study_uid != incoming.study_uid or (stored.patient_id, stored.issuer) != (
        incoming.patient_id,
        incoming.issuer,
    )


def record_conflict(
    *,
    sop_instance_uid: str,
    source_ae: str,
    stored: Identity,
    incoming: Identity,
    resolution: str,
    detail: str = "",
) -> InstanceConflict:
    """Write the conflict once: the same conflict seen again (re-index, the worker after the
    store path) does not add a row."""
    fields = {
        "sop_instance_uid": sop_instance_uid[:64],
        "stored_study_uid": stored.study_uid[:64],
        "incoming_study_uid": incoming.study_uid[:64],
        "stored_patient_id": stored.patient_id[:64],
        "incoming_patient_id": incoming.patient_id[:64],
        "resolution": resolution,
    }
    existing = InstanceConflict.objects.filter(**fields).first()
    if existing is not None:
        return existing
    return InstanceConflict.objects.create(**fields, source_ae=source_ae[:16], detail=detail[:500])


def describe(sop_instance_uid: str, stored: Identity, incoming: Identity) -> str:
    parts = []
    if stored.study_uid != incoming.study_uid:
        parts.append(f"study {stored.study_uid} -> {incoming.study_uid}")
    if (stored.patient_id, stored.issuer) != (incoming.patient_id, incoming.issuer):
        parts.append(f"patient {stored.patient_id!r} -> {incoming.patient_id!r}")
    return f"SOP Instance {sop_instance_uid} is held under another " + ", ".join(parts)


def check_before_store(relpath: str, stream: bytes, transfer_syntax: str, sop_instance_uid: str, source_ae: str):
    """Before writing ``stream`` over a stored instance: apply DICOM_UID_CONFLICT_POLICY.

    Costs one stat when the instance is new (the common case). When a file is
    already there, its header is read up to the Series UID and compared with the
    incoming one; a re-send of the same instance (same study and patient) passes.
    Raises ``Refused`` when the policy keeps the stored instance; the caller answers
    a failure status and logs it. With "replace", the conflict is recorded and
    logged here and the caller stores the new file.
    """
    path = storage.absolute(relpath)
    if not path.exists():
        return
    try:
        stored = identity_of_file(path)
    except Exception as exc:
        # What we hold cannot be read: the new file can only be better.
        log.warning("stored %s cannot be read (%s); storing the new one over it", relpath, exc)
        return
    try:
        incoming = identity_of_stream(stream, transfer_syntax)
    except Exception:
        return  # the store path refuses what it cannot parse on its own
    if not differs(stored, incoming):
        return
    reason = describe(sop_instance_uid, stored, incoming)
    if settings.DICOM_UID_CONFLICT_POLICY == "replace":
        record_conflict(
            sop_instance_uid=sop_instance_uid,
            source_ae=source_ae,
            stored=stored,
            incoming=incoming,
            resolution=InstanceConflict.Resolution.REPLACED,
            detail=f"{reason}; replaced (DICOM_UID_CONFLICT_POLICY=replace)",
        )
        log.warning("%s; replaced by the one from %s (DICOM_UID_CONFLICT_POLICY=replace)", reason, source_ae)
        return
    record_conflict(
        sop_instance_uid=sop_instance_uid,
        source_ae=source_ae,
        stored=stored,
        incoming=incoming,
        resolution=InstanceConflict.Resolution.KEPT_STORED,
        detail=f"{reason}; the stored instance was kept (DICOM_UID_CONFLICT_POLICY=reject)",
    )
    raise Refused(f"{reason}; the stored instance is kept (DICOM_UID_CONFLICT_POLICY=reject)")
