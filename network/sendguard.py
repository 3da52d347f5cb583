"""Bounds on what we send: a peer's tiny maximum PDU, a peer that stops reading, a response to something else.

Our sends are C-STORE requests (C-MOVE and C-GET sub-operations, studies sent
to a node) and the responses of the associations we serve. Whatever the peer
does, each ends in bounded time and memory, with one log line and an A-ABORT
where one can still be sent:

- ``refusal``: a peer whose maximum PDU length is below ``DICOM_MIN_PEER_PDU``
  is sent no image (pynetdicom would queue a CT slice as thousands of PDUs at
  once, ours would loop), and one of 1 to 6 bytes nothing at all: a PDV has 6
  bytes of header, so not one byte of a message fits (PS3.8 9.3.5.1).
- ``bound_writes``: a write that makes no progress for ``DICOM_SEND_TIMEOUT``
  fails (SO_SNDTIMEO). pynetdicom's socket has no timeout once connected, so a
  peer that stops reading would block its DUL thread, and ``abort()``, which
  waits for that thread, forever; a failed write tells its state machine the
  connection is gone, and ours ends the association.
- ``watch_responses`` and ``unexpected``: pynetdicom takes the first message
  that comes as the response to its C-STORE request, whatever its Message ID
  Being Responded To; we check it answers ours (fastsend checks its own).
- ``refuse``: one log line, then the A-ABORT (once per association).

``bound_writes`` reads pynetdicom's socket (``assoc.dul.socket``), as
network/reactor.py does, and only for the versions that module supports.
"""

import logging
import socket
import struct
from collections import deque

from django.conf import settings
from pynetdicom import evt

from network import reactor

log = logging.getLogger(__name__)

PDV_HEADER = 6  # PS3.8 9.3.5.1: item length (4), presentation context ID (1), message control header (1)


def peer_max_pdu(assoc) -> int:
    """The maximum PDU length (of P-DATA-TF variable fields) the peer announced; 0: no limit."""
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    return peer.maximum_length or 0


def peer_name(assoc) -> str:
    peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
    return f"{(peer.ae_title or '').strip() or '?'} at {peer.address}:{peer.port}"


def cannot_carry(assoc) -> bool:
    """True when not one byte of a message fits in the peer's PDUs (a maximum of 1 to 6 bytes)."""
    return 0 < peer_max_pdu(assoc) <= PDV_HEADER


def refusal(assoc) -> str:
    """Why we send ``assoc``'s peer no image, or "" when we may."""
    max_pdu = peer_max_pdu(assoc)
    if 0 < max_pdu < settings.DICOM_MIN_PEER_PDU:
        return (
            f"it announced a maximum PDU length of {max_pdu} bytes, "
            f"below DICOM_MIN_PEER_PDU ({settings.DICOM_MIN_PEER_PDU})"
        )
    return ""


def refuse(assoc, why: str, *, connection_lost: bool = False) -> None:
    """End ``assoc`` with one log line saying ``why`` (the first time): an A-ABORT, or none if it cannot leave.

    ``connection_lost``: a write failed (the DUL was told, Evt17), so the stream may
    end inside a PDU and an A-ABORT would only be more garbage: the association's
    threads are stopped and the socket closed instead. The same when pynetdicom
    already saw the connection go (its state machine idle again, Sta1) or sent an
    A-ABORT itself (Sta13): another one queued then only makes its DUL thread log
    an invalid event.
    """
    if not getattr(assoc, "imaging_refused", ""):
        assoc.imaging_refused = why
        log.warning("aborting the association with %s: %s", peer_name(assoc), why)
    if not assoc.is_established:
        return
    if connection_lost or _connection_gone(assoc):
        assoc.kill()  # returns once the DUL's state machine is idle (Sta1) and its thread stopped
        _close(assoc)
    else:
        assoc.abort()


def _connection_gone(assoc) -> bool:
    if not reactor.supported():
        return False
    transport = getattr(assoc.dul, "socket", None)
    return getattr(transport, "socket", None) is None or assoc.dul.state_machine.current_state in ("Sta1", "Sta13")


def _close(assoc) -> None:
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def refused(assoc) -> str:
    """Why ``refuse`` aborted ``assoc``, or ""."""
    return getattr(assoc, "imaging_refused", "")


def bound_writes(assoc) -> bool:
    """Make each write on ``assoc``'s socket fail after ``DICOM_SEND_TIMEOUT`` seconds without progress.

    A socket with a Python timeout has one bound already (``network_timeout``);
    pynetdicom's are blocking (no timeout) once connected or accepted.
    """
    if not reactor.supported():
        return False
    transport = getattr(assoc.dul, "socket", None)
    sock = getattr(transport, "socket", None)
    if sock is None or sock.gettimeout() is not None:
        return False
    seconds = settings.DICOM_SEND_TIMEOUT
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, 0))
    except OSError:  # closed meanwhile: nothing left to bound
        return False
    return True


def watch_responses(assoc) -> deque:
    """The (message, Message ID Being Responded To, Affected SOP Instance UID) of what ``assoc`` receives.

    For pynetdicom's own C-STORE (``DICOM_FAST_SEND=0``): EVT_DIMSE_RECV is
    triggered before the message is queued for the request waiting for it.
    Bounded: only the latest few are kept.
    """
    received = getattr(assoc, "imaging_received", None)
    if received is None:
        received = assoc.imaging_received = deque(maxlen=8)

        def on_receive(event):
            summary = received_message(event.message)
            if summary is not None:
                received.append(summary)

        assoc.bind(evt.EVT_DIMSE_RECV, on_receive)
    return received


def received_message(message) -> tuple[str, int | None, str] | None:
    """(message, Message ID Being Responded To, Affected SOP Instance UID) of a received DIMSE message.

    None for a C-CANCEL: pynetdicom keeps those apart (a C-GET requester may send
    one between our sub-operations), never as the response a request waits for.
    """
    name = type(message).__name__
    if name == "C_CANCEL_RQ":
        return None
    command = message.command_set
    return name, command.get("MessageIDBeingRespondedTo"), str(command.get("AffectedSOPInstanceUID", "") or "")


def unexpected(message: str, responded_to, sop_instance: str, *, msg_id: int, expected_instance: str) -> str:
    """What is wrong with a response to our C-STORE request ``msg_id`` for ``expected_instance``, or ""."""
    if message not in ("C_STORE_RSP", "C_STORE"):
        return f"a {message} came in answer to the C-STORE request {msg_id}"
    if responded_to != msg_id:
        return f"the C-STORE response answers Message ID {responded_to}, not {msg_id}"
    if sop_instance and sop_instance != expected_instance:
        return f"the C-STORE response to {msg_id} is for another instance ({sop_instance})"
    return ""
