"""Our own receive path for associations that store, verify and find, in one thread of the association's process.

pynetdicom runs two threads per association (its DUL and the association's
loop), a state machine, a pydicom decoding of every command set and an event
dispatch per message: about 9 ms per association and a share of every image's
CPU. A modality's storescu and a workstation's findscu need none of it. In the
spare child, once it has a connection (network/scp.py), ``peek_request`` looks
at the A-ASSOCIATE-RQ without taking it off the socket; ``servable`` says
whether we serve it:

- every proposed abstract syntax is a storage SOP class, Verification, or
  Patient Root / Study Root Query/Retrieve FIND;
- no SCP/SCU role selection, extended negotiation or user identity item, an
  application context and protocol version as DICOM's, every UID decodable.

Anything else (a MOVE or GET context, a PDU that is odd in any way, one longer
than DICOM_MAX_ASSOCIATE_PDU or not complete within DICOM_ASSOCIATE_TIMEOUT) is
left on the socket for pynetdicom, exactly as before. ``serve`` then does what
pynetdicom and our modules around it do, with the same functions:

- the access check and association log (network/access.py), the presentation
  contexts negotiated by pynetdicom's public ``negotiate_as_acceptor`` over the
  AE's contexts, the A-ASSOCIATE-AC/RJ encoded as pynetdicom encodes them;
- PDUs read under network/guard.py's bounds: the claimed length checked before
  the body is read, P-DATA-TF no longer than the Maximum Length we announced,
  unknown PDU types aborted; a command set up to guard.COMMAND_LIMIT, a C-STORE
  data set up to DICOM_MAX_DATASET_BYTES, streamed to its file's temporary twin
  past DICOM_STREAM_TO_DISK_BYTES (network/dimse/store.open_spool), a C-FIND
  identifier up to guard.IDENTIFIER_LIMIT, in memory;
- C-ECHO answered Success, C-STORE stored by network/dimse/store.store_received
  (the same checks, fsync and rename before Success, hand-off); C-FIND answered
  by network/dimse/find.find_responses, the responses pynetdicom's handler
  yields (access check, matching, failure statuses), the identifier decoded by
  pynetdicom's public ``dsutils.decode`` and each match encoded by
  fastsend.encode_identifier, sent as it is made (one PDU of two PDVs when it
  fits, fastsend.message_pdus); responses encoded by network/fastsend.command_set;
- while a C-FIND is answered, before each match, a PDU that came is read without
  waiting: its C-CANCEL-RQ ends it with 0xFE00, an A-ABORT or a closed connection
  ends the association, anything else aborts it; so does SIGTERM's grace;
- a C-CANCEL with nothing running is ignored; any other message aborts the
  association (pynetdicom has no service for it on these contexts);
- A-RELEASE-RQ answered A-RELEASE-RP, A-ABORT and a closed connection end the
  association, DICOM_NETWORK_TIMEOUT without a PDU (or without the peer taking
  what we send) aborts it, and SIGTERM (network/scp._Shutdown) aborts it after
  DICOM_SHUTDOWN_GRACE.

The A-ASSOCIATE-AC, the responses (C-FIND's too) and the stored files are
checked byte for byte against pynetdicom's in tests/test_fastrecv.py. Nothing
here touches pynetdicom's internals.
"""

import functools
import logging
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from io import BytesIO

from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.uid import UID, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor
from pynetdicom.sop_class import Verification

from network import access, fastsend
from network.dimse import find, store
from network.dimse.association import REJECT_TRANSIENT, log_refused_storage, session_permits
from network.guard import COMMAND_LIMIT, IDENTIFIER_LIMIT
from network.models import AssociationLog

log = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
_SERVABLE = access.STORAGE_SOP_CLASSES | {Verification} | set(find.MODELS)

# PDU types (PS3.8 9.3) and the A-ABORT sources and reasons we send (9.3.8), as network/guard.py.
_ASSOCIATE_RQ, _P_DATA_TF, _RELEASE_RQ, _ABORT = 0x01, 0x04, 0x05, 0x07
_PDU_TYPES = range(0x01, 0x08)
_SERVICE_USER, _SERVICE_PROVIDER = 0x00, 0x02
_NOT_SPECIFIED, _UNRECOGNIZED_PDU, _UNEXPECTED_PDU, _INVALID_PDU_PARAMETER = 0x00, 0x01, 0x02, 0x06
# Bytes an association reads past the PDU it needs, for the PDUs that follow (_read_exact).
_READ_AHEAD = 64 * 1024

# DIMSE Command Field values (PS3.7 E.1).
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP, C_CANCEL_RQ = 0x0001, 0x8001, 0x0030, 0x8030, 0x0FFF
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
_NO_DATA_SET, _DATA_SET = 0x0101, 0x0001
# C-FIND statuses as pynetdicom's Q/R service class reads what a handler yields (PS3.4 C.4.1.1.4):
# a pending one carries a match; any other ends the C-FIND. 0xC311: the handler raised;
# 0xC312: a match could not be encoded.
_FIND_PENDING = {0xFF00, 0xFF01}
_HANDLER_FAILED, _MATCH_NOT_ENCODED = 0xC311, 0xC312

# User Information sub-items we can ignore or answer (PS3.7 D.3.3): maximum length,
# implementation class UID, asynchronous operations window (pynetdicom ignores it
# without an EVT_ASYNC_OPS handler, and we bind none), implementation version name.
_USER_ITEMS_SERVED = {0x51, 0x52, 0x53, 0x55}


# --- The A-ASSOCIATE-RQ ---------------------------------------------------------------------


@dataclass
class Request:
    """What we use of an A-ASSOCIATE-RQ (PS3.8 9.3.2)."""

    length: int  # of the whole PDU, header included
    called_ae: str
    calling_ae: str
    contexts: list = field(default_factory=list)  # PresentationContext, as pynetdicom builds them
    max_length: int = 0  # the requestor's Maximum Length (0: no limit)
    odd: str = ""  # why pynetdicom serves it instead, if it does


def peek_request(sock, *, limit: int, deadline: float) -> bytes | None:
    """The A-ASSOCIATE-RQ, left on the socket; None if not one, longer than ``limit``, late or cut short."""
    want = 6
    try:
        while True:
            # SO_RCVLOWAT: select says readable once ``want`` bytes are there (or the peer closed).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                return None
            data = sock.recv(want, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if len(data) < want:
                return None  # closed before the whole PDU came
            if want > 6:
                return data
            pdu_type, _, length = struct.unpack(">BBL", data)
            if pdu_type != _ASSOCIATE_RQ or length > limit:
                return None
            want = length + 6
    except OSError:
        return None
    finally:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        except OSError:
            pass


def parse_request(pdu: bytes) -> Request:
    """Decode an A-ASSOCIATE-RQ; ``odd`` says why we leave it to pynetdicom (never raises)."""
    request = Request(len(pdu), "", "")
    try:
        _parse(pdu, request)
    except Exception as exc:  # anything that does not decode: pynetdicom decides what to do with it
        request.odd = f"cannot be decoded here: {exc!r}"
    return request


def _parse(pdu: bytes, request: Request) -> None:
    (version,) = struct.unpack(">H", pdu[6:8])
    if version != 1:
        request.odd = f"protocol version {version}"
        return
    request.called_ae = pdu[10:26].decode("ascii").strip()
    request.calling_ae = pdu[26:42].decode("ascii").strip()
    application_context = None
    for item_type, body in _items(pdu[74:]):
        if item_type == 0x10:
            application_context = body.decode("ascii")
        elif item_type == 0x20:
            request.contexts.append(_context(body))
        elif item_type == 0x50:
            for sub_type, sub_body in _items(body):
                if sub_type not in _USER_ITEMS_SERVED:
                    request.odd = f"user information item 0x{sub_type:02X}"
                    return
                if sub_type == 0x51:
                    (request.max_length,) = struct.unpack(">L", sub_body)
        else:
            request.odd = f"item type 0x{item_type:02X}"
            return
    if application_context != APPLICATION_CONTEXT:
        request.odd = f"application context {application_context!r}"
    elif not request.contexts:
        request.odd = "no presentation context"
    else:
        others = {cx.abstract_syntax for cx in request.contexts} - _SERVABLE
        if others:
            request.odd = f"{len(others)} abstract syntax(es) other than storage, verification and find"


def _items(body: bytes):
    offset = 0
    while offset < len(body):
        item_type, _, length = struct.unpack(">BBH", body[offset : offset + 4])
        value = body[offset + 4 : offset + 4 + length]
        if len(value) != length:
            raise ValueError("an item longer than what holds it")
        offset += 4 + length
        yield item_type, value


@functools.lru_cache(maxsize=4096)
def _context(body: bytes) -> PresentationContext:
    """A proposed presentation context, by its bytes (context ID included); shared, so read only.

    A device proposes the same contexts at each association (storescu over a hundred),
    and building one validates each UID again and again (pynetdicom's
    ``add_transfer_syntax`` four times): 0.1-0.2 ms of an echoscu's A-ASSOCIATE-AC.
    What does not decode raises, and is not kept.
    """
    context = PresentationContext()
    context.context_id = body[0]
    abstract = None
    for sub_type, value in _items(body[4:]):
        uid = _uid(value)
        if sub_type == 0x30 and abstract is None:
            abstract = uid
        elif sub_type == 0x40:
            context.add_transfer_syntax(uid)
        else:
            raise ValueError(f"presentation context sub-item 0x{sub_type:02X}")
    if abstract is None or not context.transfer_syntax:
        raise ValueError("a presentation context without its syntaxes")
    context.abstract_syntax = abstract
    return context


def _uid(value: bytes) -> UID:
    uid = UID(value.decode("ascii").rstrip("\0 "))
    if not uid.is_valid:
        raise ValueError(f"invalid UID {uid!r}")
    return uid


def servable(request: Request) -> bool:
    return settings.DICOM_FAST_RECEIVE and not request.odd


# --- What we send ---------------------------------------------------------------------------


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


def associate_ac(request: Request, results: list, *, max_length: int, implementation: tuple[str, str]) -> bytes:
    """The A-ASSOCIATE-AC pynetdicom sends for ``results`` (negotiate_as_acceptor's): accepted contexts first."""
    accepted = sorted((cx for cx in results if cx.result == 0x00), key=lambda cx: cx.context_id)
    ordered = accepted + [cx for cx in results if cx.result != 0x00]
    items = [_item(0x10, APPLICATION_CONTEXT.encode())]
    for cx in ordered:
        syntax = _item(0x40, str(cx.transfer_syntax[0]).encode())
        items.append(_item(0x21, bytes((cx.context_id, 0, cx.result, 0)) + syntax))
    class_uid, version_name = implementation
    user = _item(0x51, struct.pack(">L", max_length)) + _item(0x52, class_uid.encode())
    if version_name:
        user += _item(0x55, version_name.encode())
    items.append(_item(0x50, user))
    header = struct.pack(">HH", 1, 0) + _ae(request.called_ae) + _ae(request.calling_ae) + bytes(32)
    return _pdu(0x02, header + b"".join(items))


def warm_up(ae) -> bytes:
    """An association set-up without a peer, so that a spare's first real one finds its code and objects ready.

    A Verification request is decoded, negotiated over the AE's contexts and answered,
    as ``Association.associate`` does; returns the A-ASSOCIATE-AC (the spare throws it away).
    """
    context = bytes((1, 0, 0, 0)) + _item(0x30, Verification.encode()) + _item(0x40, ImplicitVRLittleEndian.encode())
    header = struct.pack(">HH", 1, 0) + _ae("WARM-UP") + _ae("WARM-UP") + bytes(32)
    user = _item(0x50, _item(0x51, struct.pack(">L", settings.DICOM_MAX_PDU)))
    pdu = _pdu(_ASSOCIATE_RQ, header + _item(0x10, APPLICATION_CONTEXT.encode()) + _item(0x20, context) + user)
    request = parse_request(pdu)
    results, _roles = negotiate_as_acceptor(request.contexts, supported_for(ae, request.contexts), {})
    implementation = (ae.implementation_class_uid, "")
    return associate_ac(request, results, max_length=settings.DICOM_MAX_PDU, implementation=implementation)


@functools.cache
def _supported_by_syntax(ae) -> dict:
    """The AE's supported contexts by abstract syntax, once per process (the AE's do not change once built)."""
    return {cx.abstract_syntax: cx for cx in ae.supported_contexts}


def supported_for(ae, proposed: list) -> list:
    """The AE's supported contexts for the abstract syntaxes proposed, or all of them if it supports none.

    ``ae.supported_contexts`` sorts all of them (about 180) at each call, and
    ``negotiate_as_acceptor`` indexes what it is given: 0.2-0.3 ms before each
    A-ASSOCIATE-AC. It only looks up the proposed abstract syntaxes, so the result
    is the same; with none of them supported, it answers in another order, so it
    gets every context then.
    """
    by_syntax = _supported_by_syntax(ae)
    supported = [
        by_syntax[syntax] for syntax in dict.fromkeys(cx.abstract_syntax for cx in proposed) if syntax in by_syntax
    ]
    return supported or ae.supported_contexts


def _ae(title: str) -> bytes:
    return title.encode("ascii")[:16].ljust(16, b" ")


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(0x03, bytes((0, result, source, reason)))


def abort_pdu(source: int, reason: int) -> bytes:
    return _pdu(_ABORT, bytes((0, 0, source, reason)))


RELEASE_RP = _pdu(0x06, bytes(4))


def command_pdus(context_id: int, command: bytes, max_pdu: int, data: bytes = b"") -> bytes:
    """A message's P-DATA-TF PDUs, as pynetdicom's path sends them (fastsend.message_pdus); 0: no limit."""
    return fastsend.encode_pdus(fastsend.message_pdus(context_id, command, data, max_pdu))


def decode_command(raw) -> dict[int, bytes]:
    """A command set (Implicit VR Little Endian, PS3.7 6.3.1) as {element number: value}."""
    raw = bytes(raw)
    values = {}
    offset = 0
    while offset < len(raw):
        group, element, length = struct.unpack("<HHL", raw[offset : offset + 8])
        if group != 0x0000:
            raise ValueError(f"element ({group:04X},{element:04X}) in a command set")
        value = raw[offset + 8 : offset + 8 + length]
        if len(value) != length:
            raise ValueError("an element longer than the command set")
        values[element] = value
        offset += 8 + length
    return values


def _us(values: dict, element: int) -> int | None:
    value = values.get(element)
    return struct.unpack("<H", value)[0] if value is not None and len(value) == 2 else None


def _text(values: dict, element: int) -> str:
    return values.get(element, b"").decode("ascii").rstrip("\0 ").strip()


# --- Serving --------------------------------------------------------------------------------


class _Closed(Exception):
    """The connection is gone (the peer closed it, or we did)."""


class _Ended(Exception):
    """The association ended: ``outcome`` and ``reason`` for the log."""

    def __init__(self, outcome: str, reason: str = ""):
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass
class _Message:
    context_id: int
    command: bytearray = field(default_factory=bytearray)
    values: dict | None = None  # the command set, once complete
    data: bytearray = field(default_factory=bytearray)
    received: int = 0
    spool: store.Spool | None = None


class Association:
    """One association on our own path: ``run`` serves it to its end and returns (outcome, reason) or None."""

    def __init__(self, sock, address, request: Request, *, ae, handoff, shutdown):
        self.sock = sock
        self.address = address
        self.request = request
        self.ae = ae
        self.handoff = handoff
        self.shutdown = shutdown  # network/scp._Shutdown
        self.session: access.Session | None = None
        self.contexts: dict[int, PresentationContext] = {}
        self.message: _Message | None = None
        self.spools: list = []
        self.max_pdu = settings.DICOM_MAX_PDU
        self.peer_max = request.max_length
        self.finding: int | None = None  # the Message ID of the C-FIND being answered
        self.cancel_requested = False  # a C-CANCEL-RQ for it came
        self.interrupted: Exception | None = None  # how the association ended while answering it
        # Bytes received past the PDU being read (see _read_exact): [ahead_start, ahead_end) of ahead.
        self.ahead = memoryview(bytearray(_READ_AHEAD))
        self.ahead_start = self.ahead_end = 0

    @property
    def peer(self) -> str:
        return f"{self.request.calling_ae} ({self.address[0]})"

    @property
    def calling_ae(self) -> str:
        return self.request.calling_ae

    # --- Association set-up -----------------------------------------------------------------
    def associate(self) -> bool:
        """Take the A-ASSOCIATE-RQ off the socket, decide and answer; True once established."""
        self._read_exact(self.request.length)
        request = self.request
        try:
            decision, self.session = access.open_session(
                called_ae=request.called_ae,
                calling_ae=request.calling_ae,
                peer_address=self.address[0],
                peer_port=self.address[1],
            )
        except Exception:
            log.exception("cannot decide on the association from %s; rejecting it", request.calling_ae)
            self._reject(REJECT_TRANSIENT)
            return False
        if decision.reject:
            self._reject(decision.reject)
            return False
        supported = supported_for(self.ae, request.contexts)
        try:
            limited = access.contexts_for(decision.node, supported, {})
            if limited is not None:
                supported = limited
                log_refused_storage(self.session, request.contexts, limited)
        except Exception:
            log.exception("cannot limit the presentation contexts of %s; rejecting it", request.calling_ae)
            self._reject(REJECT_TRANSIENT)
            return False
        results, _roles = negotiate_as_acceptor(request.contexts, supported, {})
        self.contexts = {cx.context_id: cx for cx in results if cx.result == 0x00}
        implementation = (self.ae.implementation_class_uid, self.ae.implementation_version_name or "")
        self.sock.sendall(associate_ac(request, results, max_length=self.max_pdu, implementation=implementation))
        return True

    def _reject(self, reason: tuple[int, int, int]) -> None:
        try:
            self.sock.sendall(associate_rj(*reason))
        except OSError:
            pass
        self.session = None  # a rejection was logged when it was decided

    # --- Reading --------------------------------------------------------------------------------
    def _read_exact(self, size: int) -> bytearray:
        """The next ``size`` bytes of the association.

        Each read also takes up to _READ_AHEAD bytes past them (one ``recvmsg_into``
        filling the PDU and then the read-ahead buffer), kept for the next call: a PDU's
        6-byte header and a small image's command and data set PDUs then cost no read
        of their own, and a large PDU one read instead of two (docs/performance.md).
        """
        buffer = bytearray(size)
        view = memoryview(buffer)
        read = min(size, self.ahead_end - self.ahead_start)
        if read:
            view[:read] = self.ahead[self.ahead_start : self.ahead_start + read]
            self.ahead_start += read
        if read == size:  # a zero-length read too: what is read ahead stays for the next
            return buffer
        self.ahead_start = self.ahead_end = 0
        timeout = settings.DICOM_NETWORK_TIMEOUT or None
        if self.sock.gettimeout() != timeout:  # settimeout is an ioctl each time: twice an image if always called
            self.sock.settimeout(timeout)
        try:
            while read < size:
                count = self.sock.recvmsg_into([view[read:size], self.ahead])[0]
                if not count:
                    raise _Closed
                if count > size - read:
                    self.ahead_end = count - (size - read)
                read += min(count, size - read)
        except TimeoutError as exc:
            raise _Ended(
                AssociationLog.Outcome.ABORTED,
                self._abort(_SERVICE_PROVIDER, _NOT_SPECIFIED, "no data within DICOM_NETWORK_TIMEOUT"),
            ) from exc
        except OSError as exc:
            raise _Closed from exc
        return buffer

    def _has_input(self, timeout: float) -> bool:
        """Whether the next PDU has begun to arrive (read ahead already, or on the socket within ``timeout``)."""
        return self.ahead_end > self.ahead_start or bool(select.select([self.sock], [], [], timeout)[0])

    def _wait_for_pdu(self) -> None:
        """Until the next PDU starts to arrive; the network timeout and SIGTERM's grace apply meanwhile."""
        idle_since = time.monotonic()
        while True:
            self._check_shutdown()
            if settings.DICOM_NETWORK_TIMEOUT and time.monotonic() - idle_since > settings.DICOM_NETWORK_TIMEOUT:
                why = f"no PDU within DICOM_NETWORK_TIMEOUT ({settings.DICOM_NETWORK_TIMEOUT}s)"
                raise _Ended(AssociationLog.Outcome.ABORTED, self._abort(_SERVICE_PROVIDER, _NOT_SPECIFIED, why))
            # Short waits while shutting down; otherwise a signal ends the wait (select returns at once after it).
            if self._has_input(0.5):
                return

    def _check_shutdown(self) -> None:
        if self.shutdown.requested and time.monotonic() - self.shutdown.at > settings.DICOM_SHUTDOWN_GRACE:
            log.warning(
                "shutting down: aborting association from %s after %ss grace",
                self.address,
                settings.DICOM_SHUTDOWN_GRACE,
            )
            raise _Ended(AssociationLog.Outcome.ABORTED, self._abort(_SERVICE_USER, _NOT_SPECIFIED, ""))

    def _pdu_limit(self, pdu_type: int) -> tuple[int, str]:
        if pdu_type == _P_DATA_TF:
            if self.max_pdu:
                return self.max_pdu, "the Maximum Length we announced (DICOM_MAX_PDU)"
            return (
                settings.DICOM_MAX_DATASET_BYTES + COMMAND_LIMIT,
                "DICOM_MAX_DATASET_BYTES (DICOM_MAX_PDU is unlimited)",
            )
        return settings.DICOM_MAX_ASSOCIATE_PDU, "DICOM_MAX_ASSOCIATE_PDU"

    def _abort(self, source: int, reason: int, why: str) -> str:
        """Send an A-ABORT (best effort) and close: nothing more is read. Returns ``why``."""
        if why:
            log.warning("association from %s aborted: %s", self.peer, why)
        try:
            self.sock.send(abort_pdu(source, reason), socket.MSG_DONTWAIT)
        except OSError:
            pass
        self._close()
        return why

    def _close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def run(self) -> tuple[str, str] | None:
        """Serve the association to its end: (outcome, reason) to log, or None when rejected or never associated."""
        try:
            if not self.associate():
                return None
        except (_Closed, _Ended):
            return None
        try:
            while True:
                self._wait_for_pdu()
                ended = self._next_pdu()
                if ended is not None:
                    return ended
        except _Closed:
            return AssociationLog.Outcome.ABORTED, ""
        except _Ended as ended:
            return ended.outcome, ended.reason
        finally:
            self.discard_spools()

    def _next_pdu(self) -> tuple[str, str] | None:
        """Read one PDU and act on it; (outcome, reason) when it ends the association."""
        header = self._read_exact(6)
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type not in _PDU_TYPES:
            why = f"unknown PDU type 0x{pdu_type:02X}"
            raise _Ended(AssociationLog.Outcome.ABORTED, self._abort(_SERVICE_PROVIDER, _UNRECOGNIZED_PDU, why))
        limit, name = self._pdu_limit(pdu_type)
        if length > limit:
            why = f"a PDU of type 0x{pdu_type:02X} claims {length} bytes, more than {name} ({limit})"
            raise _Ended(AssociationLog.Outcome.ABORTED, self._abort(_SERVICE_PROVIDER, _INVALID_PDU_PARAMETER, why))
        body = self._read_exact(length)
        if pdu_type == _P_DATA_TF:
            self._p_data(body)
        elif pdu_type == _RELEASE_RQ and self.finding is None:
            self._send(RELEASE_RP)
            self._close()
            return AssociationLog.Outcome.RELEASED, ""
        elif pdu_type == _ABORT:
            self._close()
            return AssociationLog.Outcome.ABORTED, ""
        else:  # another A-ASSOCIATE-RQ, an AC, an RJ, an RP, a release amid a C-FIND: not now (PS3.8 9.2, Sta6)
            why = f"an unexpected PDU of type 0x{pdu_type:02X}"
            raise _Ended(AssociationLog.Outcome.ABORTED, self._abort(_SERVICE_PROVIDER, _UNEXPECTED_PDU, why))
        return None

    # --- DIMSE messages -------------------------------------------------------------------------
    def _fail(self, why: str):
        return _Ended(AssociationLog.Outcome.ABORTED, self._abort(_SERVICE_USER, _NOT_SPECIFIED, why))

    def _p_data(self, body: bytearray) -> None:
        view = memoryview(body)
        offset = 0
        while offset < len(view):
            if len(view) - offset < 6:
                raise self._fail("a P-DATA-TF PDU with a truncated PDV")
            (item_length,) = struct.unpack(">L", view[offset : offset + 4])
            if item_length < 2 or offset + 4 + item_length > len(view):
                raise self._fail("a PDV longer than its P-DATA-TF PDU")
            context_id, control = view[offset + 4], view[offset + 5]
            self._fragment(context_id, control, view[offset + 6 : offset + 4 + item_length])
            offset += 4 + item_length

    def _fragment(self, context_id: int, control: int, fragment: memoryview) -> None:
        message = self.message
        if message is None:
            if context_id not in self.contexts:
                raise self._fail(f"a message on presentation context {context_id}, not accepted")
            message = self.message = _Message(context_id)
        elif context_id != message.context_id:
            raise self._fail("a message whose fragments change presentation context")
        if control & 1:  # command set
            if message.values is not None:
                raise self._fail("a command set fragment after its command set")
            if len(message.command) + len(fragment) > COMMAND_LIMIT:
                raise self._fail(f"a command set longer than {COMMAND_LIMIT} bytes")
            message.command += fragment
            if control & 2:
                self._command_complete(message)
            return
        if message.values is None:
            raise self._fail("a data set fragment before its command set")
        storing = _us(message.values, 0x0100) == C_STORE_RQ  # else a C-FIND's identifier, as network/guard.py
        limit = settings.DICOM_MAX_DATASET_BYTES if storing else IDENTIFIER_LIMIT
        message.received += len(fragment)
        if message.received > limit:
            name = "DICOM_MAX_DATASET_BYTES" if storing else "the limit of a query identifier"
            raise self._fail(f"a data set longer than {name} ({limit} bytes)")
        if message.spool is not None:
            message.spool.write(fragment)
        else:
            message.data += fragment
            if storing and message.received > settings.DICOM_STREAM_TO_DISK_BYTES:
                self._start_spool(message)
        if control & 2:
            self.message = None
            if storing:
                self._c_store(message)
            else:
                self._c_find(message)

    def _command_complete(self, message: _Message) -> None:
        try:
            values = decode_command(message.command)
            command_field = _us(values, 0x0100)
            data_set_type = _us(values, 0x0800)
            if command_field is None or data_set_type is None:
                raise ValueError("no Command Field or Command Data Set Type")
        except (ValueError, UnicodeDecodeError, struct.error) as exc:
            raise self._fail(f"a command set that cannot be decoded: {exc}") from exc
        message.values = values
        has_data_set = data_set_type != _NO_DATA_SET
        abstract_syntax = self.contexts[message.context_id].abstract_syntax
        storing = command_field == C_STORE_RQ and abstract_syntax in access.STORAGE_SOP_CLASSES
        finding = command_field == C_FIND_RQ and abstract_syntax in find.MODELS
        echoing = command_field == C_ECHO_RQ and abstract_syntax == Verification and not has_data_set
        if self.finding is not None:
            # While a C-FIND is answered, only its C-CANCEL: we negotiate no asynchronous operations.
            storing = finding = echoing = False
        if (storing or finding) and has_data_set:
            return  # its data set (a C-FIND's identifier) follows
        self.message = None
        if command_field == C_CANCEL_RQ:
            # As pynetdicom: one for another Message ID, or with nothing running, changes nothing.
            self.cancel_requested |= self.finding is not None and _us(values, 0x0120) == self.finding
        elif finding:
            self._c_find(message)  # no identifier: answered as an empty one, as pynetdicom does
        elif echoing:
            self._c_echo(values, message.context_id)
        else:
            name = f"0x{command_field:04X}" + (" with a data set" if has_data_set else "")
            log.warning(
                "DIMSE message %s from %s on presentation context %d (%s) is not served here",
                name,
                self.peer,
                message.context_id,
                abstract_syntax,
            )
            raise self._fail(f"a DIMSE message {name} we do not serve")

    def _respond(self, context_id: int, values: dict, data: bytes = b"") -> None:
        try:
            pdus = command_pdus(context_id, fastsend.command_set(values), self.peer_max, data)
        except ValueError as exc:  # a maximum PDU length of 1 to 6 bytes: no room for a message
            raise self._fail(f"the peer's maximum PDU length ({self.peer_max}) leaves no room for a message") from exc
        self._send(pdus)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            why = f"the peer took nothing we sent within DICOM_NETWORK_TIMEOUT ({settings.DICOM_NETWORK_TIMEOUT}s)"
            raise _Ended(AssociationLog.Outcome.ABORTED, self._abort(_SERVICE_PROVIDER, _NOT_SPECIFIED, why)) from exc
        except OSError as exc:
            raise _Closed from exc

    def _c_echo(self, values: dict, context_id: int) -> None:
        if self.session is not None:
            self.session.services.add("C-ECHO")
        response = {
            "AffectedSOPClassUID": _text(values, 0x0002),
            "CommandField": C_ECHO_RSP,
            "MessageIDBeingRespondedTo": _us(values, 0x0110) or 0,
            "CommandDataSetType": _NO_DATA_SET,
            "Status": store.SUCCESS,
        }
        self._respond(context_id, response)

    def _start_spool(self, message: _Message) -> None:
        values = message.values
        spool = store.open_spool(
            sop_class=_text(values, 0x0002),
            sop_instance=_text(values, 0x1000),
            transfer_syntax=str(self.contexts[message.context_id].transfer_syntax[0]),
            calling_ae=self.calling_ae,
            may_store=self.session is None or self.session.allows("may_store"),
        )
        self.spools = [s for s in self.spools if s.partial is not None and not s.partial.done]
        self.spools.append(spool)
        spool.write(message.data)
        message.data = bytearray()
        message.spool = spool

    def _c_store(self, message: _Message) -> None:
        values = message.values
        sop_class, sop_instance = _text(values, 0x0002), _text(values, 0x1000)
        transfer_syntax = self.contexts[message.context_id].transfer_syntax[0]
        if not session_permits(self.session, self.calling_ae, "C-STORE", "may_store"):
            if message.spool is not None:
                message.spool.discard()
            status = access.NOT_AUTHORIZED
        else:
            status = store.store_received(
                session=self.session,
                calling_ae=self.calling_ae,
                sop_instance=sop_instance,
                handoff=self.handoff,
                spool=message.spool,
                received=lambda: (store.Meta(sop_class, sop_instance, transfer_syntax), message.data),
            )
        response = {
            "AffectedSOPClassUID": sop_class,
            "CommandField": C_STORE_RSP,
            "MessageIDBeingRespondedTo": _us(values, 0x0110) or 0,
            "CommandDataSetType": _NO_DATA_SET,
            "Status": status,
            "AffectedSOPInstanceUID": sop_instance,
        }
        self._respond(message.context_id, response)

    def _c_find(self, message: _Message) -> None:
        """Answer a C-FIND as pynetdicom's Q/R service class does with network/dimse/find.py's responses."""
        values = message.values
        transfer_syntax = self.contexts[message.context_id].transfer_syntax[0]
        message_id = _us(values, 0x0110) or 0
        response = {
            "AffectedSOPClassUID": _text(values, 0x0002),
            "CommandField": C_FIND_RSP,
            "MessageIDBeingRespondedTo": message_id,
        }
        responses = find.find_responses(
            session=self.session,
            calling_ae=self.calling_ae,
            sop_class=response["AffectedSOPClassUID"],
            identifier=lambda: decode_identifier(message.data, transfer_syntax),
            implicit_vr=transfer_syntax.is_implicit_VR,
            cancelled=self._find_interrupted,
        )
        self.finding, self.cancel_requested, self.interrupted = message_id, False, None
        try:
            for status, match in _never_raising(responses, self.calling_ae):
                if self.interrupted is not None:
                    raise self.interrupted  # an A-ABORT, a closed connection, SIGTERM's grace over
                data = b""
                if status in _FIND_PENDING:
                    data = fastsend.encode_identifier(match, transfer_syntax.is_implicit_VR)
                    if not data:
                        log.error("C-FIND from %s: a match cannot be encoded", self.calling_ae)
                        status = _MATCH_NOT_ENCODED
                data_set_type = _DATA_SET if data else _NO_DATA_SET
                self._respond(
                    message.context_id, response | {"CommandDataSetType": data_set_type, "Status": status}, data
                )
                if not data:
                    return  # a final status
            # A generator that ends without one: pynetdicom's service class answers Success.
            self._respond(message.context_id, response | {"CommandDataSetType": _NO_DATA_SET, "Status": find.SUCCESS})
        finally:
            responses.close()
            self.finding = None

    def _find_interrupted(self) -> bool:
        """``cancelled`` for find.find_responses: reads a PDU that came meanwhile, without waiting for one.

        Never raises (the responses would take it for a failure): how the association
        ended is kept in ``interrupted`` for ``_c_find``.
        """
        if self.interrupted is None and not self.cancel_requested:
            try:
                self._check_shutdown()
                if self._has_input(0):
                    ended = self._next_pdu()
                    if ended is not None:
                        self.interrupted = _Ended(*ended)
            except (_Closed, _Ended) as exc:
                self.interrupted = exc
        return self.interrupted is not None or self.cancel_requested

    def discard_spools(self) -> None:
        """Remove every temporary file no C-STORE committed (an association that ended mid-message)."""
        store.discard_spools(self.spools)


def decode_identifier(data: bytes, transfer_syntax: UID) -> Dataset:
    """A request's identifier as pynetdicom's ``event.identifier`` gives it: an empty one for none."""
    if not data:
        return Dataset()
    implicit, little = transfer_syntax.is_implicit_VR, transfer_syntax.is_little_endian
    ds = decode(BytesIO(data), implicit, little, transfer_syntax.is_deflated)
    ds.set_original_encoding(implicit, little)
    return ds


def _never_raising(responses, calling_ae: str):
    """A handler's responses, as pynetdicom's service class takes them: one that raises ends them with 0xC311."""
    try:
        yield from responses
    except Exception:
        log.exception("C-FIND from %s: the responses failed", calling_ae)
        yield _HANDLER_FAILED, None


def serve(sock, address, request: Request, *, ae, handoff, shutdown) -> None:
    """Serve one association on our own path, flush the hand-off and log it (network/scp.py calls it)."""
    association = Association(sock, address, request, ae=ae, handoff=handoff, shutdown=shutdown)
    ended = association.run()
    handoff.flush()
    if ended is None or association.session is None:
        return
    outcome, reason = ended
    try:
        access.close_session(association.session, outcome, reason=reason)
    except Exception:
        log.exception("cannot log the association from %s", association.session.calling_ae)
