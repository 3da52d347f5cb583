"""What a peer can make an association process hold: only what it sent, read in bounded pieces, up to our limits.

pynetdicom reads each PDU whole, at whatever length its 6-byte header claims,
before anything looks at it, and collects a DIMSE message's fragments in memory
without limit. Here, on each association we accept (in its own process,
network/scp.py):

- the DUL's PDU reader checks the claimed length before reading the body:
  until the association is established no PDU may be longer than
  DICOM_MAX_ASSOCIATE_PDU (a generous A-ASSOCIATE-RQ); once it is, a P-DATA-TF
  no longer than the Maximum Length we announced (DICOM_MAX_PDU). A longer PDU,
  an unknown PDU type or a PDU that cannot be decoded gets an A-ABORT and the
  connection is closed at once: nothing more the peer sends is read;
- the DIMSE provider's receiver counts each message's fragments as they arrive:
  a command set may hold COMMAND_LIMIT bytes, a C-STORE data set
  DICOM_MAX_DATASET_BYTES, any other data set (a query identifier)
  IDENTIFIER_LIMIT; past its limit the association is aborted. A C-STORE data
  set that grows past DICOM_STREAM_TO_DISK_BYTES goes on to its file's temporary
  twin as it arrives (network/dimse/store.open_spool) instead of staying in memory;
- ``closed`` tells the association's process that the connection is closed.

Only pynetdicom's private API can do this (``DULServiceProvider._read_pdu_data``,
``DIMSEServiceProvider.receive_primitive`` and the DIMSE message classes); it is
installed only for the version it was written against (SUPPORTED_VERSIONS).
"""

import logging
import socket
import struct
import threading
from io import BytesIO

import pynetdicom
from pynetdicom import evt
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, N_EVENT_REPORT
from pynetdicom.dsutils import decode
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.utils import make_target

from network.dimse.store import discard_spools

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = {"3.0.4"}

# A command set is a few hundred bytes; a query identifier a few kilobytes (a list of UIDs
# at most a few megabytes). Neither has a setting: no device needs more.
COMMAND_LIMIT = 64 * 1024
IDENTIFIER_LIMIT = 16 * 1024 * 1024

# A-ABORT source and reason (PS3.8 9.3.8).
_SERVICE_USER = 0x00  # we abort, as the application: a DIMSE message over its limit
_SERVICE_PROVIDER = 0x02  # the UL aborts: a PDU we refuse to read
_UNRECOGNIZED_PDU = 0x01
_INVALID_PDU_PARAMETER = 0x06
_NOT_SPECIFIED = 0x00

_PDU_TYPES = range(0x01, 0x08)
_P_DATA_TF = 0x04
_BEFORE_ASSOCIATION = {"Sta1", "Sta2", "Sta3", "Sta4", "Sta5"}  # PS3.8 9.2: idle, connecting, negotiating
_NO_DATA_SET = 0x0101


def supported() -> bool:
    return pynetdicom.__version__ in SUPPORTED_VERSIONS


class Guard:
    """The bounds of one association we accept; ``install`` puts them in place."""

    def __init__(self, assoc, *, associate_pdu: int, dataset_bytes: int, stream_to_disk: int, open_spool):
        self.assoc = assoc
        self.associate_pdu = associate_pdu
        self.dataset_bytes = dataset_bytes
        self.stream_to_disk = stream_to_disk
        self.open_spool = open_spool  # (assoc, C-STORE request primitive, transfer syntax) -> store.Spool
        self.closed = threading.Event()  # the connection is closed: we aborted, or the peer went
        self.reason = ""
        self.spools: list = []  # every spool opened, to remove what no handler committed
        self._received = 0  # data set bytes of the message being received
        self._spool = None  # where they go, when not in memory

    # --- PDUs ------------------------------------------------------------------------
    def pdu_limit(self, pdu_type: int) -> tuple[int, str]:
        # The DUL's own state, not is_established: the peer may send its first P-DATA-TF
        # before the association thread has recorded the A-ASSOCIATE-AC the DUL sent.
        if pdu_type == _P_DATA_TF and self.assoc.dul.state_machine.current_state not in _BEFORE_ASSOCIATION:
            announced = self.assoc.acceptor.maximum_length
            if announced:
                return announced, "the Maximum Length we announced (DICOM_MAX_PDU)"
            return self.dataset_bytes + COMMAND_LIMIT, "DICOM_MAX_DATASET_BYTES (DICOM_MAX_PDU is unlimited)"
        return self.associate_pdu, "DICOM_MAX_ASSOCIATE_PDU"

    def read_pdu(self) -> None:
        """Stands in for ``DULServiceProvider._read_pdu_data``: the same events, bounded."""
        dul = self.assoc.dul
        transport = dul.socket
        try:
            header = transport.recv(6)
            if len(header) < 6:
                self._peer_closed()
                return
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in _PDU_TYPES:
                self.abort(_SERVICE_PROVIDER, _UNRECOGNIZED_PDU, f"unknown PDU type 0x{pdu_type:02X}")
                return
            limit, name = self.pdu_limit(pdu_type)
            if length > limit:
                self.abort(
                    _SERVICE_PROVIDER,
                    _INVALID_PDU_PARAMETER,
                    f"a PDU of type 0x{pdu_type:02X} claims {length} bytes, more than {name} ({limit})",
                )
                return
            body = transport.recv(length)
        except (OSError, TimeoutError):
            self._peer_closed()
            return
        if len(body) != length:
            self._peer_closed()  # before the whole PDU came
            return
        header += body
        del body
        try:
            pdu, event = dul._decode_pdu(header)
        except Exception as exc:
            self.abort(_SERVICE_PROVIDER, _INVALID_PDU_PARAMETER, f"a PDU of type 0x{pdu_type:02X} is invalid: {exc}")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)

    def _peer_closed(self) -> None:
        self.assoc.dul.event_queue.put("Evt17")
        self.closed.set()

    def abort(self, source: int, reason: int, why: str) -> None:
        """Send an A-ABORT and close the connection (in the DUL thread): nothing more is read."""
        if self.closed.is_set():
            return
        self.reason = why
        log.warning("association from %s aborted: %s", self.peer, why)
        transport = self.assoc.dul.socket
        raw = getattr(transport, "socket", None)
        if raw is not None:
            abort = A_ABORT_RQ()
            abort.source = source
            abort.reason_diagnostic = reason
            try:
                raw.send(abort.encode(), socket.MSG_DONTWAIT)  # best effort: a peer that does not read gets a close
            except OSError:
                pass
            transport.close()  # Evt17: the state machine ends the association
        self.discard_spools()
        self.closed.set()

    @property
    def peer(self) -> str:
        requestor = self.assoc.requestor
        request = requestor.primitive
        calling = getattr(request, "calling_ae_title", "").strip() if request is not None else ""
        return f"{calling} ({requestor.address})" if calling else str(requestor.address)

    # --- DIMSE messages ------------------------------------------------------------------
    def receive_primitive(self, primitive) -> None:
        """Stands in for ``DIMSEServiceProvider.receive_primitive``: messages assembled under their limits."""
        dimse = self.assoc.dimse
        for context_id, data in primitive.presentation_data_value_list:
            if self.closed.is_set():
                return
            message = dimse.message
            if message is None:
                message = dimse.message = DIMSEMessage()
                self._received, self._spool = 0, None
            control = data[0]
            fragment = memoryview(data)[1:]
            if control & 1:  # command set
                if message.encoded_command_set.tell() + len(fragment) > COMMAND_LIMIT:
                    self.abort(_SERVICE_USER, _NOT_SPECIFIED, f"a command set longer than {COMMAND_LIMIT} bytes")
                    return
                message.encoded_command_set.write(fragment)
                if control & 2 and self._command_complete(message, context_id):
                    self._deliver(message)
                continue
            if type(message) is DIMSEMessage:
                self.abort(_SERVICE_USER, _NOT_SPECIFIED, "a data set fragment before its command set")
                return
            storing = isinstance(message, C_STORE_RQ)
            limit = self.dataset_bytes if storing else IDENTIFIER_LIMIT
            self._received += len(fragment)
            if self._received > limit:
                name = "DICOM_MAX_DATASET_BYTES" if storing else "the limit of a query identifier"
                self.abort(_SERVICE_USER, _NOT_SPECIFIED, f"a data set longer than {name} ({limit} bytes)")
                return
            if self._spool is not None:
                self._spool.write(fragment)
            else:
                message.data_set.write(fragment)
                if storing and self._received > self.stream_to_disk and not self._start_spool(message, context_id):
                    return
            if control & 2:
                self._deliver(message)

    def _command_complete(self, message, context_id: int) -> bool:
        """Decode the command set as pynetdicom does; True if the message has no data set to wait for."""
        message.context_id = context_id
        try:
            message.command_set = decode(message.encoded_command_set, True, True)
            message.__class__ = _MESSAGE_TYPES[message.command_set.CommandField][1]
            return message.command_set.CommandDataSetType == _NO_DATA_SET
        except Exception as exc:
            self.abort(_SERVICE_USER, _NOT_SPECIFIED, f"a command set that cannot be decoded: {exc}")
            return False

    def _start_spool(self, message, context_id: int) -> bool:
        context = self.assoc._accepted_cx.get(context_id)
        if context is None:
            self.abort(_SERVICE_USER, _NOT_SPECIFIED, f"a C-STORE on presentation context {context_id}, not accepted")
            return False
        request = message.message_to_primitive()  # the UIDs as the handler will see them
        spool = self.open_spool(self.assoc, request, context.transfer_syntax[0])
        self.spools = [s for s in self.spools if s.partial is not None and not s.partial.done]
        self.spools.append(spool)
        spool.write(message.data_set.getbuffer())
        message.data_set = BytesIO()
        self._spool = spool
        return True

    def _deliver(self, message) -> None:
        """Hand a whole message on, as pynetdicom's receive_primitive does."""
        dimse = self.assoc.dimse
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        context_id = message.context_id
        try:
            primitive = message.message_to_primitive()
        except Exception as exc:
            self.abort(_SERVICE_USER, _NOT_SPECIFIED, f"an invalid DIMSE message: {exc}")
            return
        if self._spool is not None:
            primitive.imaging_spool = self._spool  # network/dimse/store.handle_store commits or removes it
        dimse.message = None
        self._received, self._spool = 0, None
        if isinstance(primitive, C_CANCEL) and len(dimse.cancel_req) < 10:
            dimse.cancel_req[primitive.MessageIDBeingRespondedTo] = primitive
        elif isinstance(primitive, N_EVENT_REPORT) and primitive.is_valid_request:
            threading.Thread(target=make_target(self.assoc._serve_request), args=(primitive, context_id)).start()
        else:
            dimse.msg_queue.put((context_id, primitive))

    def discard_spools(self) -> None:
        """Remove every temporary file no handler committed (an association that ended mid-message)."""
        discard_spools(self.spools)


def install(assoc, **limits) -> Guard | None:
    """Bound what ``assoc`` (an association we accept, not started yet) can make us hold."""
    if not supported():  # network/scp.serve said so once, at start
        return None
    guard = Guard(assoc, **limits)
    assoc.dul._read_pdu_data = guard.read_pdu
    assoc.dimse.receive_primitive = guard.receive_primitive
    assoc.imaging_guard = guard
    return guard


def guard_of(assoc) -> Guard | None:
    return getattr(assoc, "imaging_guard", None)
