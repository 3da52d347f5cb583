"""The DIMSE messages we send, encoded by us; our C-STORE requests written straight to the socket.

pynetdicom builds a pydicom Dataset for every command set it sends or
receives; it sends a C-STORE request as a queue of P-DATA primitives, one per
PDU of the peer's maximum length (16 KB for DCMTK's tools), that its DUL thread
takes, encodes and writes one at a time; and it pauses and resumes the
association's own loop around every request, which costs up to a millisecond
each time. For a 512 KB CT slice sent in a C-MOVE that was most of the time.

- ``send_c_store``: the whole request (command set, then the data set read from
  the file, fragmented into P-DATA-TF PDUs no longer than the peer accepts,
  PS3.8 9.3.5 and E.2) is written with ``sendmsg``, under a lock the DUL's own
  writes take too; its response is decoded by us into pynetdicom's primitive.
  The association's loop, which would otherwise take the response off the
  queue, is paused once and stays paused while we send (pynetdicom's
  ``release()`` and ``abort()`` resume it).
- ``install_messages``: every other message the association sends (C-STORE,
  C-FIND, C-MOVE, C-GET, C-ECHO responses) gets its command set from us, and
  still goes through the DUL as P-DATA primitives, in order.

What a peer that cannot or will not take our messages gets (a tiny maximum PDU,
a full TCP window, a response to another request) is network/sendguard.py's.

pynetdicom still negotiates, reads and decodes everything else and runs the
services. EVT_DIMSE_SENT/RECV are not triggered for these messages (nothing
here binds them). The encoders are checked byte for byte against pynetdicom's
in tests/test_fastsend.py. Used only where known to be right: the pynetdicom
versions this was written against, no TLS, ``DICOM_FAST_SEND`` on; anywhere
else pynetdicom does it all.
"""

import logging
import os
import queue
import struct
import threading
import time
from pathlib import Path

from django.conf import settings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import service_class
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_messages import _COMMAND_SET_KEYWORDS, _DATASET_KEYWORDS, _MESSAGE_TYPES
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA

from network import reactor, sendguard

log = logging.getLogger(__name__)

PRIORITY_MEDIUM = 0x0000  # PS3.7 9.3.1.1: 0 medium, 1 high, 2 low (pynetdicom's default is 2)


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

# The command elements we encode, by keyword: (element number in group 0000, VR).
_ELEMENTS = {
    "AffectedSOPClassUID": (0x0002, "UI"),
    "CommandField": (0x0100, "US"),
    "MessageID": (0x0110, "US"),
    "MessageIDBeingRespondedTo": (0x0120, "US"),
    "MoveDestination": (0x0600, "AE"),
    "Priority": (0x0700, "US"),
    "CommandDataSetType": (0x0800, "US"),
    "Status": (0x0900, "US"),
    "ErrorComment": (0x0902, "LO"),
    "AffectedSOPInstanceUID": (0x1000, "UI"),
    "NumberOfRemainingSuboperations": (0x1020, "US"),
    "NumberOfCompletedSuboperations": (0x1021, "US"),
    "NumberOfFailedSuboperations": (0x1022, "US"),
    "NumberOfWarningSuboperations": (0x1023, "US"),
    "MoveOriginatorApplicationEntityTitle": (0x1030, "AE"),
    "MoveOriginatorMessageID": (0x1031, "US"),
}
_NO_DATA_SET = 0x0101  # CommandDataSetType: anything else means a data set follows
_DATA_SET = 0x0001
_COMMAND_FIELDS = {name: field for field, (name, _cls) in _MESSAGE_TYPES.items()}


def _value(vr: str, value) -> bytes:
    if vr == "US":
        return struct.pack("<H", value)
    raw = str(value).encode("ascii")
    if vr in ("AE", "LO"):
        raw = raw.strip()
        return raw + b" " if len(raw) % 2 else raw
    return raw + b"\0" if len(raw) % 2 else raw  # UI


def command_set(values: dict) -> bytes:
    """A command set from element keywords and values, Implicit VR Little Endian, group length first.

    Raises ``KeyError`` for an element we do not encode and ``UnicodeEncodeError``
    for a text value that is not ASCII (the command set has no character set).
    """
    elements = []
    for keyword, value in values.items():
        number, vr = _ELEMENTS[keyword]
        raw = _value(vr, value)
        elements.append((number, struct.pack("<HHL", 0x0000, number, len(raw)) + raw))
    body = b"".join(encoded for _number, encoded in sorted(elements))
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def message_command_set(primitive, message_name: str, data_set) -> bytes | None:
    """The command set pynetdicom would encode for ``primitive`` as ``message_name`` ("C-MOVE-RSP").

    Every element of that message the primitive has a value for, as pynetdicom's
    ``primitive_to_message`` takes them; None when one of them is not ours to encode
    (an Offending Element, a non-ASCII comment): pynetdicom encodes that message.
    """
    values = {}
    for keyword in _COMMAND_SET_KEYWORDS[message_name]:
        if keyword in ("CommandGroupLength", "CommandField", "CommandDataSetType"):
            continue
        value = getattr(primitive, keyword, None)
        if value is None:
            continue
        if keyword not in _ELEMENTS:
            return None
        values[keyword] = value
    values["CommandField"] = _COMMAND_FIELDS[message_name]
    values["CommandDataSetType"] = _DATA_SET if data_set else _NO_DATA_SET
    try:
        return command_set(values)
    except (UnicodeEncodeError, struct.error):
        return None


def encode_message(primitive) -> tuple[bytes, object] | None:
    """A DIMSE primitive's (command set, data set BytesIO or None), as pynetdicom would send them.

    None for what we leave to pynetdicom: a data set sent from a file, an element we
    do not encode, a primitive pynetdicom has no message for.
    """
    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE
    message_class = table.get(type(primitive))
    if message_class is None or getattr(primitive, "_dataset_path", None):
        return None
    data_set = getattr(primitive, _DATASET_KEYWORDS.get(message_class.__name__, ""), None)
    command = message_command_set(primitive, message_class.__name__.replace("_", "-"), data_set)
    return None if command is None else (command, data_set)


def c_store_rq(
    *,
    sop_class: str,
    sop_instance: str,
    message_id: int,
    priority: int,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> bytes:
    """The C-STORE-RQ command set (PS3.7 9.3.1.1)."""
    values = {
        "AffectedSOPClassUID": sop_class,
        "CommandField": _COMMAND_FIELDS["C-STORE-RQ"],
        "MessageID": message_id,
        "Priority": priority,
        "CommandDataSetType": _DATA_SET,
        "AffectedSOPInstanceUID": sop_instance,
    }
    if originator_aet:
        values["MoveOriginatorApplicationEntityTitle"] = originator_aet
    if originator_id is not None:
        values["MoveOriginatorMessageID"] = originator_id
    return command_set(values)


def p_data_pdus(context_id: int, command: bytes, data_set, max_pdu: int) -> list:
    """The P-DATA-TF PDUs of one message, as buffers for ``sendmsg``: headers and views, no copies.

    Each PDU carries one PDV, at most ``max_pdu`` long (0: no limit); the Message
    Control Header (PS3.8 E.2) says command or data set, and last fragment or not.
    Raises ``ValueError`` for a ``max_pdu`` of 1 to 6, which has no room for a byte of it.
    """
    _check_room(max_pdu)
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


def _check_room(max_pdu: int) -> None:
    # Each PDV has 6 bytes of header: a step of 0 (or less) would never end.
    if 0 < max_pdu <= sendguard.PDV_HEADER:
        raise ValueError(f"a maximum PDU length of {max_pdu} bytes leaves no room for data")


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


def stored_data_set(path: Path, buffer: bytearray | None = None) -> memoryview:
    """The data set of a stored file as it is encoded there: what follows the preamble and file meta.

    Read into ``buffer`` (grown as needed) when given: the same memory for each image
    of a retrieve, not half a megabyte allocated and faulted in for every CT slice.
    The view is valid until the buffer is used again.
    """
    with path.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        if buffer is None:
            buffer = bytearray(size)
        elif len(buffer) < size:
            buffer.extend(bytes(size - len(buffer)))
        view = memoryview(buffer)[:size]
        read = 0
        while read < size:
            count = f.readinto(view[read:])
            if not count:
                break
            read += count
    return data_set_of(view[:read], path.name)


def data_set_of(part10, name: str = "the file") -> memoryview:
    """What follows the preamble and file meta of a whole Part 10 file in memory (a view, no copy)."""
    raw = memoryview(part10)
    if raw[128:132] != b"DICM" or raw[132:136] != b"\x02\x00\x00\x00" or raw[136:138] != b"UL":
        raise ValueError(f"{name}: no File Meta Information Group Length")
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
    payload: Path | Dataset | memoryview,
    *,
    transfer_syntax: str,
    sop_class: str,
    sop_instance: str,
    msg_id: int = 1,
    priority: int = PRIORITY_MEDIUM,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> tuple[int | None, str]:
    """Send a stored file as it is encoded (a Path), a whole Part 10 file in memory (bytes, a memoryview:
    its data set as encoded there) or a data set encoded in ``transfer_syntax``.

    Returns the response's (Status, Error Comment); (None, "") when no valid response
    came (none within the DIMSE timeout, or one that answers another request), the
    association then aborted. Raises ``ValueError`` when no accepted context fits and
    ``OSError`` when the connection fails (a write without progress for
    ``DICOM_SEND_TIMEOUT`` too), the association then ended.
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
    elif isinstance(payload, bytes | bytearray | memoryview):
        data_set = data_set_of(payload, sop_instance)
    else:
        buffer = getattr(assoc, "imaging_read_buffer", None)
        if buffer is None:
            buffer = assoc.imaging_read_buffer = bytearray()
        data_set = stored_data_set(payload, buffer)
    command = c_store_rq(
        sop_class=sop_class,
        sop_instance=sop_instance,
        message_id=msg_id,
        priority=priority,
        originator_aet=originator_aet,
        originator_id=originator_id,
    )
    pdus = p_data_pdus(context_id, command, data_set, assoc.dimse.maximum_pdu_size or 0)
    _decode_store_responses(assoc)
    _pause_loop(assoc)
    lock = _transport_lock(assoc)
    raw = assoc.dul.socket.socket
    with lock:
        try:
            send_all(raw, pdus)
        except OSError as exc:
            # As pynetdicom's own send does: the DUL's state machine learns the connection is gone.
            assoc.dul.event_queue.put("Evt17")
            why = "it took no data for DICOM_SEND_TIMEOUT seconds" if isinstance(exc, BlockingIOError) else str(exc)
            sendguard.refuse(assoc, f"cannot send {sop_instance}: {why}", connection_lost=True)
            raise
    rsp = _response(assoc)
    if rsp is None and getattr(assoc, "imaging_garbage", False):
        sendguard.refuse(assoc, f"what came in answer to the C-STORE request {msg_id} is no command set")
        return None, ""
    if rsp is None:
        assoc._reactor_checkpoint.set()
        assoc._handle_no_response()
        return None, ""
    wrong = sendguard.unexpected(
        type(rsp).__name__,
        rsp.MessageIDBeingRespondedTo,
        getattr(rsp, "AffectedSOPInstanceUID", None) or "",
        msg_id=msg_id,
        expected_instance=sop_instance,
    )
    if wrong or not rsp.is_valid_response:
        sendguard.refuse(assoc, wrong or "invalid C-STORE response")
        return None, ""
    return rsp.Status, rsp.ErrorComment or ""


def _response(assoc):
    """The next message ``assoc`` receives, within its DIMSE timeout; None sooner if the association ends.

    pynetdicom's ``get_msg`` would wait the whole timeout for a peer that has
    aborted, or sent what its DUL could not decode (which aborts too).
    """
    dimse = assoc.dimse
    timeout = dimse.dimse_timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
        if wait <= 0:
            return None
        try:
            return dimse.msg_queue.get(timeout=wait)[1]
        except queue.Empty:
            pass
        if not assoc.is_established or assoc.is_aborted or not assoc.dul.is_alive():
            return None
        if getattr(assoc, "imaging_garbage", False):
            return None


# --- The responses to them ------------------------------------------------------------------

_C_STORE_RSP = _COMMAND_FIELDS["C-STORE-RSP"]
# Group length, Affected SOP Class, Command Field, Message ID Being Responded To, Command
# Data Set Type, Status, Error Comment, Affected SOP Instance: a C-STORE-RSP but an Offending Element.
_STORE_RSP_ELEMENTS = {0x0000, 0x0002, 0x0100, 0x0120, 0x0800, 0x0900, 0x0902, 0x1000}


def decode_command_set(raw: bytes) -> dict[int, bytes] | None:
    """Element number -> value bytes of an Implicit VR Little Endian command set; None if it is not one."""
    values = {}
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 8 > end:
            return None
        group, number, length = struct.unpack_from("<HHL", raw, offset)
        offset += 8
        if group != 0x0000 or offset + length > end:
            return None
        values[number] = raw[offset : offset + length]
        offset += length
    return values


def store_response(raw: bytes) -> C_STORE | None:
    """A complete C-STORE-RSP command set as pynetdicom's primitive; None for anything else.

    Only the elements a C-STORE response has without an Offending Element; any
    other message, or one with elements we do not read, is left to pynetdicom.
    """
    values = decode_command_set(raw)
    if values is None or not set(values) <= _STORE_RSP_ELEMENTS:
        return None
    if values.get(0x0100) != struct.pack("<H", _C_STORE_RSP) or values.get(0x0800) != struct.pack("<H", _NO_DATA_SET):
        return None
    try:
        (message_id,) = struct.unpack("<H", values[0x0120])
        (status,) = struct.unpack("<H", values[0x0900])
    except (KeyError, struct.error):
        return None
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.Status = status
    try:
        for number, keyword in ((0x0002, "AffectedSOPClassUID"), (0x1000, "AffectedSOPInstanceUID")):
            if number in values:
                setattr(rsp, keyword, values[number].rstrip(b"\0 ").decode("ascii"))
        if 0x0902 in values:
            rsp.ErrorComment = values[0x0902].rstrip(b"\0 ").decode("ascii")
    except (UnicodeDecodeError, ValueError, TypeError):
        return None
    return rsp


def _decode_store_responses(assoc) -> None:
    """Decode the C-STORE responses ``assoc`` receives ourselves, instead of through pydicom.

    pynetdicom's DUL thread decodes every incoming command set into a pydicom
    Dataset, then into a primitive: a few hundred microseconds for each image we
    send, while we wait for that very response. A response that comes in one
    P-DATA with one PDV (every SCP sends a command set that small so) becomes
    the same primitive on the same queue; anything else is pynetdicom's.
    """
    dimse = assoc.dimse
    if getattr(dimse, "imaging_store_responses", False):
        return
    receive_primitive = dimse.receive_primitive

    def receive(primitive):
        pdvs = primitive.presentation_data_value_list
        pending = dimse.message is not None and (
            dimse.message.encoded_command_set.tell() or dimse.message.data_set.tell()
        )
        if len(pdvs) == 1 and not pending and pdvs[0][1][:1] == b"\x03":
            context_id, data = pdvs[0]
            rsp = store_response(data[1:])
            if rsp is not None:
                dimse.msg_queue.put((context_id, rsp))
                return
            if decode_command_set(data[1:]) is None:
                # Not a command set at all: pynetdicom's decoder would raise in (and end)
                # the DUL thread. An invalid PDU (Evt19) instead: the DUL sends the A-ABORT.
                assoc.imaging_garbage = True
                assoc.dul.event_queue.put("Evt19")
                return
        receive_primitive(primitive)

    dimse.receive_primitive = receive
    dimse.imaging_store_responses = True


# --- Identifiers our handlers yield (C-FIND matches) -------------------------------------------

# Explicit VR: these VRs have a 4-byte length after two reserved bytes (PS3.5 7.1.2).
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def encode_raw_dataset(ds: Dataset, implicit_vr: bool) -> bytes | None:
    """A data set of raw, Little Endian, VR-bearing elements in Implicit or Explicit VR Little Endian.

    None for anything else (a decoded element, Big Endian, a missing VR): pydicom encodes that.
    """
    out = []
    for tag in sorted(ds._dict):
        element = ds._dict[tag]
        if not isinstance(element, RawDataElement) or not element.is_little_endian or not element.VR:
            return None
        value = element.value or b""
        if len(value) % 2:
            return None
        if implicit_vr:
            out.append(struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)))
        elif element.VR in _LONG_VRS:
            out.append(struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, element.VR.encode(), 0, len(value)))
        elif len(value) > 0xFFFF:
            return None
        else:
            out.append(struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, element.VR.encode(), len(value)))
        out.append(value)
    return b"".join(out)


def encode_identifier(ds: Dataset, is_implicit_vr: bool, is_little_endian: bool = True, deflated: bool = False):
    """An identifier we send (a C-FIND match), as pynetdicom's ``encode``: raw ones encoded by us.

    pydicom's writer costs about 40 microseconds an element even for raw elements it
    only copies: half a millisecond for each C-FIND match. Every other data set is
    pydicom's; all of them are when ``DICOM_FAST_SEND`` is off. None or b"" when it
    cannot be encoded.
    """
    if settings.DICOM_FAST_SEND and is_little_endian and not deflated:
        encoded = encode_raw_dataset(ds, is_implicit_vr)
        if encoded is not None:
            return encoded
    return encode(ds, is_implicit_vr, is_little_endian, deflated)


def install_identifier_encoding() -> bool:
    """Let pynetdicom's services send the identifiers we yield with ``encode_identifier``.

    Once per process; follows ``DICOM_FAST_SEND`` at each call.
    """
    if not reactor.supported() or getattr(service_class.encode, "imaging_raw", False):
        return False

    def encode_with_ours(ds, is_implicit_vr, is_little_endian, deflated=False):
        return encode_identifier(ds, is_implicit_vr, is_little_endian, deflated)

    encode_with_ours.imaging_raw = True
    service_class.encode = encode_with_ours
    return True


# --- Every other message we send (responses above all), still through the DUL --------------


def _fragments(payload: bytes, max_pdu: int):
    _check_room(max_pdu)
    step = max_pdu - 6 if max_pdu else max(len(payload), 1)
    return [payload[i : i + step] for i in range(0, max(len(payload), 1), step)]


def message_pdus(context_id: int, command: bytes, data: bytes, max_pdu: int) -> list[list[tuple[int, bytes]]]:
    """The P-DATA-TF PDUs of a message we answer with, each a list of (context ID, control header + fragment).

    A small message (a C-FIND match) goes in one PDU of two PDVs, command then data
    set (PS3.8 9.3.5, E.2): half the work for the DUL and the network. Otherwise
    each fragment, at most ``max_pdu`` long (0: no limit), has a PDU of its own.
    Raises ``ValueError`` for a ``max_pdu`` of 1 to 6.
    """
    if data and (not max_pdu or len(command) + len(data) + 12 <= max_pdu):
        return [[(context_id, b"\x03" + command), (context_id, b"\x02" + data)]]
    pdus = []
    for control_more, control_last, payload in ((1, 3, command), (0, 2, data)):
        if control_more == 0 and not payload:
            break
        fragments = _fragments(payload, max_pdu)
        for n, fragment in enumerate(fragments):
            header = control_last if n == len(fragments) - 1 else control_more
            pdus.append([(context_id, bytes((header,)) + fragment)])
    return pdus


def encode_pdus(pdus: list[list[tuple[int, bytes]]]) -> bytes:
    """``message_pdus`` as the bytes of P-DATA-TF PDUs (PS3.8 9.3.5), as pynetdicom's P_DATA encodes them."""
    out = []
    for pdvs in pdus:
        items = b"".join(struct.pack(">LB", len(value) + 1, context_id) + value for context_id, value in pdvs)
        out.append(struct.pack(">BBL", 0x04, 0x00, len(items)) + items)
    return b"".join(out)


def install_messages(assoc) -> bool:
    """Encode the command sets of the messages ``assoc`` sends ourselves, instead of through pydicom.

    pynetdicom builds a pydicom Dataset for each command set and encodes it twice
    (once to learn the group length): about half a millisecond, for every C-STORE
    response, C-FIND match and C-MOVE/C-GET pending response. The P-DATA
    primitives still go through the DUL, in order, as pynetdicom's would. A
    message we cannot encode (a data set sent from a file, an Offending Element)
    is left to pynetdicom.

    Whatever ``DICOM_FAST_SEND`` says, writes on the association are bounded
    (``sendguard.bound_writes``), and a peer whose maximum PDU cannot carry a byte
    of a message gets an A-ABORT instead of it (pynetdicom would raise while
    fragmenting it, inside the service).
    """
    if not reactor.supported():
        return False
    sendguard.bound_writes(assoc)
    dimse = assoc.dimse
    send_msg = dimse.send_msg

    def guarded(primitive, context_id):
        if sendguard.cannot_carry(assoc):
            sendguard.refuse(assoc, f"{sendguard.refusal(assoc)}: no message fits in it")
            return
        if not assoc.is_established:
            return  # aborted (by us, say) while the service was running: nothing can leave
        send_msg(primitive, context_id)

    dimse.send_msg = guarded
    if not usable(assoc):
        return False

    def send(primitive, context_id):
        if sendguard.cannot_carry(assoc):
            sendguard.refuse(assoc, f"{sendguard.refusal(assoc)}: no message fits in it")
            return
        if not assoc.is_established:
            return
        encoded = encode_message(primitive)
        if encoded is None:
            return send_msg(primitive, context_id)
        command, data_set = encoded
        data = data_set.getvalue() if data_set else b""
        for pdvs in message_pdus(context_id, command, data, dimse.maximum_pdu_size or 0):
            pdata = P_DATA()
            pdata.presentation_data_value_list.extend(pdvs)
            assoc.dul.send_pdu(pdata)

    dimse.send_msg = send
    return True
