"""STOW-RS (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]``, through the C-STORE store path.

The body (``multipart/related; type="application/dicom"``, with a Content-Length
or chunked) is read as a stream, never whole: each part is a DICOM file
(preamble, file meta, data set). A part stays in memory up to
DICOM_STREAM_TO_DISK_BYTES and then goes to its file's temporary twin beside its
destination, as a large C-STORE does. Every part is checked and written by
network/dimse/store.py (``store``, or ``open_spool`` + ``store_spooled``): the same
UID checks, UID-conflict policy, free-space watermark and atomic fsynced write,
with our own file meta built from the part's three UIDs as pynetdicom builds it
for a C-STORE. Stored paths go to the indexer through one ``IndexHandoff`` per
web process.

The answer is PS3.18 Table 10.5.3-1 in dicom+json: 200 when every instance was
stored, 202 when some were and others failed (or were stored with a warning),
409 when none was; each failure with its reason (the C-STORE status, Table
I.2-2) and a log line naming the user.
"""

import atexit
import io
import json
import logging

from django.conf import settings
from django.http import HttpResponse
from django.utils.http import parse_header_parameters
from pydicom.filereader import _read_file_meta_info
from rest_framework.exceptions import APIException, UnsupportedMediaType

from imaging import storage
from network.dicomweb import base, formatter, qido, wado
from network.dicomweb.multipart import matches, parse_accept
from network.dimse import store as dimse_store
from network.handoff import IndexHandoff

log = logging.getLogger(__name__)

# Failure reasons (PS3.18 10.5.3, the C-STORE statuses of PS3.4 B.2.3 / PS3.7 C).
PROCESSING_FAILURE = 0x0110
# PS3.18 10.5.3: an instance whose Study Instance UID differs from the one in the target URL.
STUDY_MISMATCH = dimse_store.DATASET_DOES_NOT_MATCH_SOP_CLASS
# PS3.18 Table I.2-1: stored although the data set does not match its SOP Class.
DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007

_READ_CHUNK = 256 * 1024
# The Warning header names the reasons of at most this many failed parts (all are logged).
_WARNINGS = 20
# Enough of a part to hold its preamble and any sane file meta.
_META_WINDOW = 64 * 1024

_TAG = {
    "FailedSOPSequence": 0x00081198,
    "ReferencedSOPSequence": 0x00081199,
    "ReferencedSOPClassUID": 0x00081150,
    "ReferencedSOPInstanceUID": 0x00081155,
    "FailureReason": 0x00081197,
    "WarningReason": 0x00081196,
    "RetrieveURL": 0x00081190,
}


class PayloadTooLarge(APIException):
    status_code = 413
    default_detail = "Request body too large."


class LengthRequired(APIException):
    status_code = 411
    default_detail = "Length required."


_handoff: IndexHandoff | None = None


def handoff() -> IndexHandoff:
    """This web process's hand-off to the indexer (its thread is restarted in a forked gunicorn worker)."""
    global _handoff
    if _handoff is None:
        _handoff = IndexHandoff()
        # A worker that exits (gunicorn's max-requests, a restart) sends what it still holds;
        # anything lost anyway is on disk, and `manage.py reindex` indexes it.
        atexit.register(_handoff.flush)
    return _handoff


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/related; type=application/dicom`` body (quoted or not); 415 otherwise."""
    media, params = parse_header_parameters(content_type or "")
    params = {k.lower(): v for k, v in params.items()}
    if media.lower() != "multipart/related":
        raise UnsupportedMediaType(
            content_type or "(none)",
            f'STOW-RS takes multipart/related; type="application/dicom", not {content_type or "(no Content-Type)"}',
        )
    part_type = params.get("type", "").lower()
    if part_type != "application/dicom":
        raise UnsupportedMediaType(
            content_type,
            f"STOW-RS takes parts of type application/dicom, not {part_type or '(no type parameter)'}",
        )
    boundary = params.get("boundary", "")
    if not boundary or len(boundary) > 70:
        raise UnsupportedMediaType(content_type, "multipart/related without a valid boundary parameter (RFC 2046)")
    return boundary.encode("latin-1")


def body_reader(request):
    """``read(n)`` over the request body, bounded by DICOMWEB_STOW_MAX_BODY_BYTES (413 beyond it)."""
    meta = request.META
    limit = settings.DICOMWEB_STOW_MAX_BODY_BYTES
    chunked = "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower()
    if chunked:
        # Django reads CONTENT_LENGTH bytes, none for a chunked body: read the server's
        # de-chunked input (gunicorn marks it wsgi.input_terminated; runserver cannot).
        if not meta.get("wsgi.input_terminated"):
            raise LengthRequired("this server cannot read chunked bodies; send a Content-Length (or use gunicorn)")
        raw = meta["wsgi.input"].read
    else:
        try:
            length = int(meta.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            raise PayloadTooLarge(f"body of {length} bytes exceeds DICOMWEB_STOW_MAX_BODY_BYTES ({limit})")
        raw = request._request.read
    total = 0

    def read(n: int) -> bytes:
        nonlocal total
        try:
            data = raw(n)
        except Exception as exc:  # a broken chunked encoding, a client gone mid-body
            raise base.BadRequest(f"cannot read the request body: {exc.__class__.__name__} {exc}") from exc
        total += len(data)
        if total > limit:
            raise PayloadTooLarge(f"body exceeds DICOMWEB_STOW_MAX_BODY_BYTES ({limit} bytes)")
        return data

    return read


class Part:
    """One DICOM part on its way in: memory first, its file's temporary twin once large."""

    def __init__(self, number: int, headers: dict[str, str]):
        self.number = number
        self.headers = headers
        self.buffer = bytearray()
        self.size = 0
        self.meta = None
        self.data_offset = 0
        self.spool: dimse_store.Spool | None = None
        self.refusal: tuple[int, str] | None = None

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > settings.DICOM_MAX_DATASET_BYTES:
            raise PayloadTooLarge(
                f"part {self.number} exceeds DICOM_MAX_DATASET_BYTES ({settings.DICOM_MAX_DATASET_BYTES} bytes)"
            )
        if self.refusal is not None:
            return  # counted, not kept
        if self.spool is not None:
            self.spool.write(data)
            return
        self.buffer += data
        if self.meta is None and len(self.buffer) >= _META_WINDOW:
            self._read_meta()
        if self.meta is not None and len(self.buffer) > settings.DICOM_STREAM_TO_DISK_BYTES:
            self._to_disk()

    def _read_meta(self) -> None:
        type_ = self.headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if type_ != "application/dicom":
            self._refuse(dimse_store.CANNOT_UNDERSTAND, f"part of type {type_!r}, not application/dicom")
            return
        if len(self.buffer) < 132 or self.buffer[128:132] != b"DICM":
            self._refuse(
                dimse_store.CANNOT_UNDERSTAND,
                "not a DICOM file (PS3.10): no preamble and DICM prefix, so no file meta",
            )
            return
        fp = io.BytesIO(self.buffer)
        fp.seek(132)
        try:
            meta = _read_file_meta_info(fp)
            uids = {
                "transfer_syntax": str(meta.TransferSyntaxUID),
                "sop_class_uid": str(meta.MediaStorageSOPClassUID),
                "sop_instance_uid": str(meta.MediaStorageSOPInstanceUID),
            }
        except Exception as exc:
            self._refuse(dimse_store.CANNOT_UNDERSTAND, f"broken file meta: {exc}")
            return
        for name, uid in uids.items():
            if not storage.is_valid_uid(uid):
                self._refuse(
                    dimse_store.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    f"file meta {name} {uid[:80]!r} is not a valid UID",
                )
                return
        # Our file meta, from the part's UIDs: what pynetdicom builds for a C-STORE.
        self.meta = dimse_store.Meta(uids["sop_class_uid"], uids["sop_instance_uid"], uids["transfer_syntax"])
        self.data_offset = fp.tell()

    def _to_disk(self) -> None:
        self.spool = dimse_store.open_spool(
            sop_class=str(self.meta.MediaStorageSOPClassUID),
            sop_instance=str(self.meta.MediaStorageSOPInstanceUID),
            transfer_syntax=str(self.meta.TransferSyntaxUID),
            calling_ae="",
            may_store=True,
        )
        self.spool.write(memoryview(self.buffer)[self.data_offset :])
        self.buffer = bytearray()

    def _refuse(self, status: int, reason: str) -> None:
        self.refusal = status, reason
        self.buffer = bytearray()

    def discard(self) -> None:
        if self.spool is not None:
            self.spool.discard()

    @property
    def sop_class(self) -> str:
        return str(self.meta.MediaStorageSOPClassUID) if self.meta is not None else ""

    @property
    def sop_instance(self) -> str:
        return str(self.meta.MediaStorageSOPInstanceUID) if self.meta is not None else ""

    def commit(self, study: str | None, group: storage.GroupCommit) -> tuple[str, dict[str, str]]:
        """Check and write through the C-STORE store path; returns (relpath, identifiers). Raises Rejected.

        Stored once ``group.wait()`` says so.
        """
        if self.meta is None and self.refusal is None:
            self._read_meta()
        if self.refusal is not None:
            raise dimse_store.Rejected(*self.refusal)
        ts = str(self.meta.TransferSyntaxUID)
        if self.spool is None:
            stream = bytes(memoryview(self.buffer)[self.data_offset :])
            ids = dimse_store.header_identifiers(stream, ts)
            _check_study(ids, study)
            return dimse_store.store(self.meta, stream, "", group), ids
        if self.spool.refusal is None:
            with open(self.spool.partial.path, "rb") as fp:
                fp.seek(self.spool.data_offset)
                ids = dimse_store.header_identifiers(fp, ts)
            _check_study(ids, study)
        else:
            ids = {}
        return dimse_store.store_spooled(self.spool, "", group), ids


def _check_study(ids: dict[str, str], study: str | None) -> None:
    if study is not None and ids.get("StudyInstanceUID") != study:
        raise dimse_store.Rejected(
            STUDY_MISMATCH,
            f"StudyInstanceUID {ids.get('StudyInstanceUID', '')[:80]!r} is not the study {study} of the request URL",
        )


def parse(read, boundary: bytes, on_part) -> int:
    """Feed each part of a multipart body to ``on_part(number, headers)`` (a ``Part``); returns the part count.

    Streamed: at most one read chunk plus a delimiter's length is buffered. The
    parts' ``write`` gets their content; ``on_part`` returns the part and gets it
    back through ``part.finished`` once its closing delimiter is read.
    """
    delimiter = b"\r\n--" + boundary
    buf = b"\r\n"  # the first delimiter has no CRLF before it
    eof = False

    def fill() -> bool:
        nonlocal buf, eof
        if eof:
            return False
        data = read(_READ_CHUNK)
        if not data:
            eof = True
            return False
        buf += data
        return True

    # Preamble: up to the first delimiter.
    while (at := buf.find(delimiter)) < 0:
        if len(buf) > 64 * 1024:
            raise base.BadRequest("multipart body without its boundary")
        if not fill():
            raise base.BadRequest("multipart body without its boundary")
    buf = buf[at + len(delimiter) :]
    count = 0
    while True:
        while len(buf) < 2 and fill():
            pass
        if buf[:2] == b"--":
            return count  # close delimiter
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > 16 * 1024:
                raise base.BadRequest(f"part {count + 1}: headers too long")
            if not fill():
                raise base.BadRequest(f"part {count + 1}: body ends inside its headers")
        first_line, _, header_block = buf[:end].partition(b"\r\n")  # rest of the delimiter line (padding)
        if first_line.strip():
            raise base.BadRequest(f"part {count + 1}: garbage after the boundary")
        headers = {}
        for line in header_block.split(b"\r\n"):
            name, sep, value = line.decode("latin-1").partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        buf = buf[end + 4 :]
        count += 1
        part = on_part(count, headers)
        keep = len(delimiter) - 1
        while True:
            at = buf.find(delimiter)
            if at >= 0:
                part.write(buf[:at])
                buf = buf[at + len(delimiter) :]
                break
            if len(buf) > keep:
                part.write(buf[:-keep])
                buf = buf[-keep:]
            if not fill():
                raise base.BadRequest(f"part {count}: body ends before its closing boundary")
        part.finished()


def _sequence_item(sop_class: str, sop_instance: str, **extra) -> dict:
    item = {}
    if sop_class:
        item[formatter.tag_key(_TAG["ReferencedSOPClassUID"])] = {"vr": "UI", "Value": [sop_class]}
    if sop_instance:
        item[formatter.tag_key(_TAG["ReferencedSOPInstanceUID"])] = {"vr": "UI", "Value": [sop_instance]}
    for keyword, (vr, value) in extra.items():
        item[formatter.tag_key(_TAG[keyword])] = {"vr": vr, "Value": [value]}
    return dict(sorted(item.items()))


def _warning(part: Part, ids: dict[str, str]) -> int | None:
    """PS3.18 I.2.1 Warning Reason of a stored instance, if any."""
    if ids.get("SOPClassUID") and ids["SOPClassUID"] != part.sop_class:
        # Stored as a C-STORE would be (the class named by the file meta differs from the
        # data set's): "Data Set does not match SOP Class", stored anyway.
        return DATA_SET_DOES_NOT_MATCH_SOP_CLASS_WARNING
    return None


def _referenced(request, part: Part, ids: dict[str, str]) -> dict:
    extra = {
        "RetrieveURL": (
            "UR",
            base.instance_url(request, ids["StudyInstanceUID"], ids["SeriesInstanceUID"], ids["SOPInstanceUID"]),
        )
    }
    warning = _warning(part, ids)
    if warning is not None:
        extra["WarningReason"] = ("US", warning)
    return _sequence_item(ids.get("SOPClassUID") or part.sop_class, ids["SOPInstanceUID"], **extra)


def stow(request, study: str | None = None) -> HttpResponse:
    base.check_uids(study_instance_uid=study)
    accept = request.META.get("HTTP_ACCEPT", "")
    if accept and not any(
        matches("application/dicom+json", r.type) or matches("application/json", r.type) for r in parse_accept(accept)
    ):
        raise base.not_acceptable(accept, "application/dicom+json")
    boundary = boundary_of(request.META.get("CONTENT_TYPE"))
    read = body_reader(request)
    user = request.user.get_username()
    written, stored, failed, study_uids = [], [], [], []
    hand = handoff()
    # The parts' fsyncs overlap (storage.GroupCommit); a part is stored, reported and
    # handed to the indexer only once its file is durable.
    group = storage.GroupCommit()

    class _Tracked(Part):
        def finished(self) -> None:
            try:
                relpath, ids = self.commit(study, group)
            except dimse_store.Rejected as exc:
                failed.append((self, exc.status, exc.reason))
                log.warning(
                    "STOW-RS from %s: part %d (%s) refused (0x%04X): %s",
                    user,
                    self.number,
                    self.sop_instance or "no SOP Instance UID",
                    exc.status,
                    exc.reason,
                )
                return
            except Exception as exc:
                failed.append((self, PROCESSING_FAILURE, f"cannot store: {exc}"))
                log.exception("STOW-RS from %s: part %d failed", user, self.number)
                return
            finally:
                self.discard()
            written.append((self, ids, relpath))

    def settle() -> None:
        """Wait for the files written; the durable ones are stored, the others failed."""
        outcomes = group.wait()
        for part, ids, relpath in written:
            problem = outcomes.get(storage.absolute(relpath))
            if problem is not None:
                failed.append((part, dimse_store.OUT_OF_RESOURCES, f"cannot write {relpath}: {problem}"))
                log.warning("STOW-RS from %s: part %d not stored: %s", user, part.number, problem)
                continue
            hand.submit(relpath, "")
            stored.append((part, ids))
            if ids.get("StudyInstanceUID") and ids["StudyInstanceUID"] not in study_uids:
                study_uids.append(ids["StudyInstanceUID"])
            log.info("STOW-RS from %s: stored %s as %s", user, part.sop_instance, relpath)
        written.clear()

    current: list[Part] = []

    def on_part(number, headers):
        current[:] = [_Tracked(number, headers)]
        return current[0]

    try:
        try:
            parts = parse(read, boundary, on_part)
        finally:
            settle()  # what was written before a refusal is stored all the same, and said so
    except (PayloadTooLarge, base.BadRequest) as exc:
        log.warning(
            "STOW-RS from %s refused after %d stored: %s",
            user,
            len(stored),
            exc.detail,
        )
        if stored:
            exc.detail = f"{exc.detail} ({len(stored)} instance(s) before it were stored)"
        raise
    finally:
        for part in current:  # a part cut off by a refusal or an error: its temporary file goes
            part.discard()
    if not parts:
        raise base.BadRequest("multipart body without any part")

    out = {}
    target = study or (study_uids[0] if len(study_uids) == 1 else None)
    if target:
        out[formatter.tag_key(_TAG["RetrieveURL"])] = {"vr": "UR", "Value": [base.study_url(request, target)]}
    if stored:
        out[formatter.tag_key(_TAG["ReferencedSOPSequence"])] = {
            "vr": "SQ",
            "Value": [_referenced(request, part, ids) for part, ids in stored],
        }
    if failed:
        out[formatter.tag_key(_TAG["FailedSOPSequence"])] = {
            "vr": "SQ",
            "Value": [
                _sequence_item(part.sop_class, part.sop_instance, FailureReason=("US", status))
                for part, status, _reason in failed
            ],
        }
    warned = any(_warning(part, ids) for part, ids in stored)
    status = 409 if not stored else 202 if failed or warned else 200
    log.info(
        "STOW-RS from %s: %d part(s), %d stored, %d refused%s",
        user,
        parts,
        len(stored),
        len(failed),
        "".join(f"; part {p.number}: {reason}" for p, _s, reason in failed),
    )
    response = HttpResponse(
        formatter_json(dict(sorted(out.items()))),
        status=status,
        content_type="application/dicom+json",
    )
    if failed:
        # The reasons in words (FailureReason carries only the status): one Warning header per failure.
        response["Warning"] = ", ".join(
            f'299 {request.get_host()} "part {p.number}: {_quoted(reason)}"' for p, _s, reason in failed[:_WARNINGS]
        )
    return response


def _quoted(text: str) -> str:
    text = " ".join(text.split())  # no CR/LF in a header
    return text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii", "replace").decode()[:300]


def formatter_json(out: dict) -> bytes:
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode()


class _StowMixin:
    """POST is STOW-RS, for Doctors and Administrators (GET keeps its own roles)."""

    def get_permissions(self):
        if self.request.method == "POST":
            return [base.ImageRoles()]
        return super().get_permissions()

    def post(self, request, study=None):
        return stow(request, study)


class Studies(_StowMixin, qido.SearchStudies):
    pass


class Study(_StowMixin, wado.Retrieve):
    pass
