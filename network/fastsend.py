"""C-STORE requests of ours written straight to the socket: C-MOVE and C-GET sub-operations, sends to nodes.

pynetdicom sends a C-STORE request as a queue of P-DATA primitives, one per
PDU of the peer's maximum length (16 KB for DCMTK's tools), that its DUL thread
takes, encodes and writes one at a time; and it pauses and resumes the
association's own loop around every request, which costs up to a millisecond
each time. For a 512 KB CT slice that is most of the time an image takes.

Here the whole request (command set, then the data set, fragmented into
P-DATA-TF PDUs no longer than the peer accepts, PS3.8 9.3.5 and E.2) is built
in one buffer and written with one ``sendall``, under a lock that the DUL's own
writes take too. pynetdicom still negotiates the association, reads and
decodes the response, and runs the C-MOVE/C-GET protocol; the association's
loop, which would otherwise take the response off the queue, is paused once
and stays paused while we send (pynetdicom's ``release()`` resumes it).

Used only where it is known to be right: pynetdicom versions this was written
against, no TLS, ``DICOM_FAST_SEND`` on. Anywhere else ``send_c_store`` is
pynetdicom's own.
"""

import logging
import os
import struct
import threading
import time
from pathlib import Path

from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import encode

from network import reactor

log = logging.getLogger(__name__)

PRIORITY_MEDIUM = 0x0000  # PS3.7 9.3.1.1: 0 medium, 1 high, 2 low (pynetdicom's default is 2)
_C_STORE_RQ = 0x0001
_DATA_SET_PRESENT = 0x0000  # anything but 0x0101


def usable(assoc) -> bool:
    transport = assoc.dul.socket if assoc.dul is not None else None
    return (
        settings.DICOM_FAST_SEND
        and reactor.supported()
        and transport is not None
        and transport.socket is not None
        and transport.tls_args is None
    )


# --- Encoding (PS3.7 6.3.1 and E.1: command sets are always Implicit VR Little Endian) --------


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHL", group, element, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def command_set(
    *,
    sop_class: str,
    sop_instance: str,
    message_id: int,
    priority: int,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1), Implicit VR Little Endian, group length first."""
    body = [
        _element(0x0000, 0x0002, _ui(sop_class)),
        _element(0x0000, 0x0100, _us(_C_STORE_RQ)),
        _element(0x0000, 0x0110, _us(message_id)),
        _element(0x0000, 0x0700, _us(priority)),
        _element(0x0000, 0x0800, _us(_DATA_SET_PRESENT)),
        _element(0x0000, 0x1000, _ui(sop_instance)),
    ]
    if originator_aet:
        aet = originator_aet.strip().encode("ascii")
        body.append(_element(0x0000, 0x1030, aet + b" " if len(aet) % 2 else aet))
    if originator_id is not None:
        body.append(_element(0x0000, 0x1031, _us(originator_id)))
    elements = b"".join(body)
    return _element(0x0000, 0x0000, struct.pack("<L", len(elements))) + elements


def p_data_pdus(context_id: int, command: bytes, data_set, max_pdu: int) -> list:
    """The P-DATA-TF PDUs of one message, as buffers for ``sendmsg``: headers and views, no copies.

    Each PDU carries one PDV, at most ``max_pdu`` long (0: no limit); the Message
    Control Header (PS3.8 E.2) says command or data set, and last fragment or not.
    """
    buffers = []
    for payload, more, last in ((command, 0x01, 0x03), (data_set, 0x00, 0x02)):
        view = memoryview(payload)
        size = len(view)
        step = max_pdu - 6 if max_pdu else max(size, 1)
        offset = 0
        while True:
            chunk = view[offset : offset + step]
            offset += step
            header = last if offset >= size else more
            # PDU type 04, reserved, PDU length; PDV item length, context ID, control header.
            buffers.append(struct.pack(">BBLLBB", 0x04, 0x00, len(chunk) + 6, len(chunk) + 2, context_id, header))
            buffers.append(chunk)
            if offset >= size:
                break
    return buffers


def send_all(sock, buffers: list) -> None:
    """``sendall`` for a list of buffers: ``sendmsg`` until every byte is written."""
    buffers = [memoryview(b).cast("B") for b in buffers]
    while buffers:
        sent = sock.sendmsg(buffers[:_IOV_MAX])
        while sent:
            head = buffers[0]
            if sent >= len(head):
                sent -= len(head)
                buffers.pop(0)
            else:
                buffers[0] = head[sent:]
                sent = 0


_IOV_MAX = 1024  # Linux: the most buffers one sendmsg takes


def stored_data_set(path: Path) -> memoryview:
    """The data set of a stored file as it is encoded there: what follows the preamble and file meta."""
    with path.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buffer = bytearray(size)
        view = memoryview(buffer)
        read = 0
        while read < size:
            count = f.readinto(view[read:])
            if not count:
                break
            read += count
    raw = view[:read]
    if raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00" or raw[136:138] != b"UL":
        raise ValueError(f"{path.name}: no File Meta Information Group Length")
    (group_length,) = struct.unpack("<L", raw[140:144])
    return raw[144 + group_length :]


# --- Sending --------------------------------------------------------------------------------


def _context_id(assoc, sop_class: str, transfer_syntax: str) -> int | None:
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == sop_class and cx.transfer_syntax[0] == transfer_syntax and cx.as_scu:
            return cx.context_id
    return None


def _transport_lock(assoc) -> threading.Lock:
    """One writer at a time on the association's socket: the DUL's own sends take the lock too."""
    transport = assoc.dul.socket
    lock = getattr(transport, "imaging_send_lock", None)
    if lock is None:
        lock = threading.Lock()
        send = transport.send

        def locked_send(bytestream):
            with lock:
                send(bytestream)

        transport.send = locked_send
        transport.imaging_send_lock = lock
    return lock


def _pause_loop(assoc) -> None:
    """Keep the association's loop from taking our responses off the DIMSE queue.

    Inside a service (C-GET) we run in that loop, which is paused already. An
    association we requested is paused once and stays so: pynetdicom's
    ``release()`` and ``abort()`` resume it.
    """
    if threading.current_thread() is assoc:
        return
    if assoc._is_paused and not assoc._reactor_checkpoint.is_set():
        return  # paused by an earlier request
    assoc._reactor_checkpoint.clear()
    deadline = time.monotonic() + 5
    while not assoc._is_paused:
        if time.monotonic() > deadline or not assoc.is_alive():
            assoc._reactor_checkpoint.set()
            raise RuntimeError("the association's loop did not pause")
        time.sleep(0.0001)


def send_c_store(
    assoc,
    payload: Path | Dataset,
    *,
    transfer_syntax: str,
    sop_class: str,
    sop_instance: str,
    msg_id: int = 1,
    priority: int = PRIORITY_MEDIUM,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    """Send a stored file as it is encoded (a Path) or a data set encoded in ``transfer_syntax``.

    Returns the response's status elements as pynetdicom's ``send_c_store`` does (an
    empty Dataset when no response came, the association then aborted). Raises
    ``ValueError`` when no accepted context fits and ``OSError`` when the connection fails.
    """
    if not assoc.is_established:
        raise RuntimeError("the association is not established")
    context_id = _context_id(assoc, sop_class, transfer_syntax)
    if context_id is None:
        raise ValueError(f"no accepted presentation context for {sop_class} in {transfer_syntax}")
    if isinstance(payload, Dataset):
        ts = UID(transfer_syntax)
        data_set = encode(payload, ts.is_implicit_VR, ts.is_little_endian, ts.is_deflated)
        if data_set is None:
            raise ValueError(f"{sop_instance} cannot be encoded in {ts.name}")
    else:
        data_set = stored_data_set(payload)
    command = command_set(
        sop_class=sop_class,
        sop_instance=sop_instance,
        message_id=msg_id,
        priority=priority,
        originator_aet=originator_aet,
        originator_id=originator_id,
    )
    pdus = p_data_pdus(context_id, command, data_set, assoc.dimse.maximum_pdu_size or 0)
    _pause_loop(assoc)
    lock = _transport_lock(assoc)
    raw = assoc.dul.socket.socket
    with lock:
        try:
            send_all(raw, pdus)
        except OSError:
            # As pynetdicom's own send does: the DUL's state machine learns the connection is gone.
            assoc.dul.event_queue.put("Evt17")
            raise
    _context, rsp = assoc.dimse.get_msg(block=True)
    if rsp is None:
        assoc._reactor_checkpoint.set()
        assoc._handle_no_response()
        return Dataset()
    return assoc._check_received_status(rsp)
