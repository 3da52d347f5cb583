"""Our own encoding of DIMSE command sets and P-DATA-TF PDUs, checked against pynetdicom's."""

import struct
from io import BytesIO
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.tag import Tag
from pynetdicom.dimse import _RQ_TO_MESSAGE, _RSP_TO_MESSAGE
from pynetdicom.dimse_primitives import C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.pdu import P_DATA_TF

from network import fastsend

CT = "1.2.840.10008.5.1.4.1.1.2"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"


def pynetdicom_command_set(primitive) -> bytes:
    table = _RQ_TO_MESSAGE if primitive.MessageIDBeingRespondedTo is None else _RSP_TO_MESSAGE
    message = table[type(primitive)]()
    message.primitive_to_message(primitive)
    return encode(message.command_set, True, True)


def ours(primitive) -> bytes | None:
    encoded = fastsend.encode_message(primitive)
    return None if encoded is None else encoded[0]


def store_response(**extra):
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.3.4.5.6.7"
    rsp.Status = 0x0000
    for keyword, value in extra.items():
        setattr(rsp, keyword, value)
    return rsp


def retrieve_response(primitive_class, sop_class, status, *, identifier=None, counts=(3, 1, 0, 0), message_id=65535):
    rsp = primitive_class()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.Status = status
    rsp.Identifier = identifier
    (
        rsp.NumberOfRemainingSuboperations,
        rsp.NumberOfCompletedSuboperations,
        rsp.NumberOfFailedSuboperations,
        rsp.NumberOfWarningSuboperations,
    ) = counts
    return rsp


def move_response(status, *, identifier=None, counts=(3, 1, 0, 0)):
    return retrieve_response(C_MOVE, STUDY_MOVE, status, identifier=identifier, counts=counts)


def get_response():
    return retrieve_response(C_GET, "1.2.840.10008.5.1.4.1.2.2.3", 0xFF00, counts=(10, 290, 0, 0), message_id=2)


def find_response():
    rsp = C_FIND()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"
    rsp.Status = 0xFF00
    rsp.Identifier = BytesIO(b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY ")
    return rsp


def echo_response():
    rsp = C_ECHO()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = "1.2.840.10008.1.1"
    rsp.Status = 0x0000
    return rsp


def store_request(**extra):
    req = C_STORE()
    req.MessageID = 12
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = "1.2.3.4.5.6.7.8"
    req.Priority = 2
    req.DataSet = BytesIO(b"\x00" * 8)
    for keyword, value in extra.items():
        setattr(req, keyword, value)
    return req


@pytest.mark.parametrize(
    "primitive",
    [
        store_response(),
        store_response(Status=0xA700, ErrorComment="cannot write the file"),
        store_response(Status=0xB000, ErrorComment="odd"),  # an odd length is padded
        move_response(0xFF00),
        move_response(0x0000, counts=(None, 4, 0, 0)),
        move_response(0xA702, identifier=BytesIO(b"\x08\x00\x58\x00\x02\x00\x00\x001\x00")),
        get_response(),
        find_response(),
        echo_response(),
        store_request(),
        store_request(MoveOriginatorApplicationEntityTitle="MOVESCU", MoveOriginatorMessageID=3),
        store_request(MoveOriginatorApplicationEntityTitle="ODD"),
    ],
    ids=lambda p: f"{type(p).__name__}-{'rq' if p.MessageIDBeingRespondedTo is None else 'rsp'}",
)
def test_it_encodes_command_sets_exactly_as_pynetdicom_does(primitive):
    assert ours(primitive) == pynetdicom_command_set(primitive)


def test_it_leaves_to_pynetdicom_what_it_does_not_encode():
    offending = store_response(Status=0xC000)
    offending.OffendingElement = [Tag(0x0010, 0x0010)]
    assert ours(offending) is None
    assert ours(store_response(Status=0xA700, ErrorComment="王")) is None


def test_the_c_store_request_it_writes_is_pynetdicoms():
    req = store_request(Priority=0, MoveOriginatorApplicationEntityTitle="WS1", MoveOriginatorMessageID=9)
    assert fastsend.c_store_rq(
        sop_class=CT,
        sop_instance="1.2.3.4.5.6.7.8",
        message_id=12,
        priority=0,
        originator_aet="WS1",
        originator_id=9,
    ) == pynetdicom_command_set(req)


def decode_pdus(stream: bytes, max_pdu: int = 0) -> list[tuple[int, int, bytes]]:
    """(context ID, control header, fragment) of each PDV, decoded by pynetdicom."""
    pdvs = []
    while stream:
        (length,) = struct.unpack(">L", stream[2:6])
        assert not max_pdu or length <= max_pdu, "a PDU longer than the peer's maximum"
        pdu = P_DATA_TF()
        pdu.decode(stream[: 6 + length])
        primitive = pdu.to_primitive()
        pdvs += [(cx, data[0], data[1:]) for cx, data in primitive.presentation_data_value_list]
        stream = stream[6 + length :]
    return pdvs


def test_it_fragments_a_message_into_pdus_no_longer_than_the_peer_accepts():
    data_set = bytes(range(256)) * 200  # 51,200 bytes: four PDUs of 16 KB at most
    buffers = fastsend.p_data_pdus(5, b"COMMAND!", data_set, 16384)
    pdvs = decode_pdus(b"".join(bytes(b) for b in buffers), 16384)
    assert pdvs[0] == (5, 0x03, b"COMMAND!")  # command, last fragment
    assert [control for _cx, control, _f in pdvs[1:]] == [0x00, 0x00, 0x00, 0x02]
    assert all(len(f) <= 16384 - 6 for _cx, _c, f in pdvs)
    assert b"".join(f for _cx, _c, f in pdvs[1:]) == data_set


def test_without_a_limit_each_part_is_one_pdu():
    buffers = fastsend.p_data_pdus(1, b"CMD", b"DATA" * 10_000, 0)
    pdvs = decode_pdus(b"".join(bytes(b) for b in buffers))
    assert [(cx, control, len(f)) for cx, control, f in pdvs] == [(1, 0x03, 3), (1, 0x02, 40_000)]


def test_it_reads_the_data_set_of_a_stored_file_as_encoded():

    path = get_testdata_file("CT_small.dcm")
    _meta, offset = split_dataset(path)
    with open(path, "rb") as f:
        f.seek(offset)
        expected = f.read()
    assert bytes(fastsend.stored_data_set(Path(path))) == expected


def test_a_file_without_group_length_is_refused(tmp_path):
    path = tmp_path / "bad.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x01\x00OB\0\0\x02\x00\x00\x00\0\1")
    with pytest.raises(ValueError, match="Group Length"):
        fastsend.stored_data_set(path)


@pytest.mark.parametrize(
    "primitive",
    [store_response(), store_response(Status=0xA700, ErrorComment="disk full"), store_response(Status=0xB007)],
)
def test_it_decodes_a_store_response_as_pynetdicom_does(primitive):
    raw = pynetdicom_command_set(primitive)
    decoded = fastsend.store_response(raw)
    assert decoded is not None
    for keyword in ("MessageIDBeingRespondedTo", "Status", "AffectedSOPClassUID", "AffectedSOPInstanceUID"):
        assert getattr(decoded, keyword) == getattr(primitive, keyword)
    assert (decoded.ErrorComment or None) == primitive.ErrorComment
    assert decoded.is_valid_response


def test_it_leaves_other_responses_to_pynetdicom():
    offending = store_response(Status=0xC000)
    offending.OffendingElement = [Tag(0x0010, 0x0010)]
    assert fastsend.store_response(pynetdicom_command_set(offending)) is None
    assert fastsend.store_response(pynetdicom_command_set(find_response())) is None
    assert fastsend.store_response(pynetdicom_command_set(move_response(0xFF00))) is None
    assert fastsend.store_response(b"\x00\x00\x00\x00\x04\x00") is None  # truncated


class FakeDIMSE:
    def __init__(self):
        self.sent = []

    def send_msg(self, primitive, context_id):
        self.sent.append((primitive.Status, primitive.NumberOfRemainingSuboperations))


class FakeAssociation:
    def __init__(self):
        self.dimse = FakeDIMSE()


def test_pending_retrieve_responses_leave_at_most_every_interval(settings, monkeypatch):
    from network import retrieve

    settings.DICOM_RETRIEVE_PENDING_INTERVAL_MS = 200
    clock = [1000.0]
    monkeypatch.setattr(retrieve.time, "monotonic", lambda: clock[0])
    assoc = FakeAssociation()
    dimse = assoc.dimse
    responses = retrieve.responses(assoc)
    assert retrieve.responses(assoc) is responses  # installed once
    for remaining, at in ((9, 0.0), (8, 0.05), (7, 0.19), (6, 0.21), (5, 0.3), (4, 0.45)):
        clock[0] = 1000.0 + at
        dimse.send_msg(move_response(0xFF00, counts=(remaining, 9 - remaining, 0, 0)), 1)
    dimse.send_msg(move_response(0x0000, counts=(None, 10, 0, 0)), 1)
    assert [r for _s, r in dimse.sent] == [9, 6, 4, None]  # 0 ms, 210 ms, 450 ms, then the final one


def test_with_no_interval_every_pending_response_leaves(settings):
    from network import retrieve

    settings.DICOM_RETRIEVE_PENDING_INTERVAL_MS = 0
    assoc = FakeAssociation()
    retrieve.responses(assoc)
    for remaining in (3, 2, 1, 0):
        assoc.dimse.send_msg(move_response(0xFF00, counts=(remaining, 3 - remaining, 0, 0)), 1)
    assert [r for _s, r in assoc.dimse.sent] == [3, 2, 1, 0]


def test_a_refused_request_gets_its_status_in_the_one_final_response(settings):
    from network import retrieve

    assoc = FakeAssociation()
    retrieve.responses(assoc).refuse(65535, 0x0124)
    assoc.dimse.send_msg(move_response(0x0000, counts=(None, 0, 0, 0)), 1)
    assert assoc.dimse.sent == [(0x0124, None)]


def test_a_reused_buffer_reads_each_file_whole(tmp_path):
    small, large = tmp_path / "small.dcm", tmp_path / "large.dcm"
    for path, n in ((small, 2), (large, 50)):
        ds = dicomgen_dataset(n)
        ds.save_as(path, enforce_file_format=True)
    buffer = bytearray()
    first = bytes(fastsend.stored_data_set(large, buffer))
    second = bytes(fastsend.stored_data_set(small, buffer))  # shorter than what the buffer holds
    assert first == bytes(fastsend.stored_data_set(large))
    assert second == bytes(fastsend.stored_data_set(small))
    assert len(second) < len(first)


def dicomgen_dataset(n: int):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = CT
    ds.PatientName = "BUFFER^" + "X" * n
    return ds


@pytest.mark.parametrize("implicit_vr", [False, True], ids=["explicit", "implicit"])
@pytest.mark.parametrize("name", ["WANG^XIAOMING=王^小明", "LI^NA", "ODD^"])
def test_a_c_find_match_is_encoded_as_pydicom_encodes_it(implicit_vr, name):
    from network import query

    requested = [
        (0x00100010, "PatientName", "PN"),
        (0x00100020, "PatientID", "LO"),
        (0x0020000D, "StudyInstanceUID", "UI"),
        (0x00080061, "ModalitiesInStudy", "CS"),
        (0x00201208, "NumberOfStudyRelatedInstances", "IS"),
        (0x00280010, "Rows", "US"),
        (0x00081110, "ReferencedStudySequence", "SQ"),
        (0x00081030, "StudyDescription", "LO"),
    ]
    columns = {kw: kw for _tag, kw, _vr in requested[:6]}
    row = {
        "PatientName": name,
        "PatientID": "P1",
        "StudyInstanceUID": "1.2.3",
        "ModalitiesInStudy": "CT\\MR",
        "NumberOfStudyRelatedInstances": 300,
        "Rows": 512,
    }
    match = query.response(query.Query("study", "STUDY", None, requested, columns), row, implicit_vr=implicit_vr)
    ours = fastsend.encode_raw_dataset(match, implicit_vr)
    assert ours is not None
    assert ours == encode(match, implicit_vr, True)
    decoded = read_dataset(DicomBytesIO(ours), implicit_vr, True)
    decoded.SpecificCharacterSet = match.get("SpecificCharacterSet", "ISO_IR 6")
    assert str(decoded.PatientName) == name.rstrip("^") or str(decoded.PatientName) == name
    assert decoded.Rows == 512 and decoded.ReferencedStudySequence == []


def test_a_decoded_element_leaves_the_encoding_to_pydicom():
    ds = Dataset()
    ds.PatientName = "DECODED^ELEMENT"
    assert fastsend.encode_raw_dataset(ds, False) is None


# --- Peers that cannot take what we send (network/sendguard.py) --------------------------------


@pytest.mark.parametrize("max_pdu", [1, 2, 5, 6])
def test_a_maximum_pdu_with_no_room_for_data_is_refused_not_looped_on(max_pdu):
    # Before: a step of max_pdu - 6 <= 0 never reached the end of the data set.
    with pytest.raises(ValueError, match="no room"):
        fastsend.p_data_pdus(1, b"CMD", b"DATA", max_pdu)
    with pytest.raises(ValueError, match="no room"):
        fastsend._fragments(b"CMD", max_pdu)


def test_seven_bytes_carry_one_byte_a_pdu():
    buffers = fastsend.p_data_pdus(3, b"CMD", b"DATA", 7)
    pdvs = decode_pdus(b"".join(bytes(b) for b in buffers), 7)
    assert [(control, f) for _cx, control, f in pdvs] == [
        (0x01, b"C"), (0x01, b"M"), (0x03, b"D"), (0x00, b"D"), (0x00, b"A"), (0x00, b"T"), (0x02, b"A")
    ]  # fmt: skip


class Peer:
    ae_title, address, port = "DEST", "127.0.0.1", 104

    def __init__(self, maximum_length):
        self.maximum_length = maximum_length


class Requested:
    """An association we requested, as sendguard reads it."""

    is_requestor = True

    def __init__(self, maximum_length):
        self.acceptor = Peer(maximum_length)


@pytest.mark.parametrize(
    ("max_pdu", "refused"), [(0, False), (1, True), (6, True), (7, True), (1023, True), (1024, False), (16382, False)]
)
def test_it_sends_no_image_to_a_peer_announcing_less_than_the_minimum(settings, max_pdu, refused):
    from network import sendguard

    settings.DICOM_MIN_PEER_PDU = 1024
    why = sendguard.refusal(Requested(max_pdu))
    assert bool(why) == refused
    if refused:
        assert f"maximum PDU length of {max_pdu} bytes" in why
    assert sendguard.cannot_carry(Requested(max_pdu)) == (0 < max_pdu <= 6)


@pytest.mark.parametrize(
    ("message", "responded_to", "instance", "problem"),
    [
        ("C_STORE_RSP", 5, "1.2.3", ""),
        ("C_STORE", 5, "", ""),  # the Affected SOP Instance UID is optional in a response
        ("C_STORE_RSP", 6, "1.2.3", "answers Message ID 6, not 5"),
        ("C_STORE", None, "1.2.3", "answers Message ID None, not 5"),  # a request, not a response
        ("C_STORE_RSP", 5, "1.2.4", "for another instance (1.2.4)"),
        ("C_ECHO_RSP", 5, "", "a C_ECHO_RSP came in answer to the C-STORE request 5"),
    ],
)
def test_a_response_must_answer_our_request(message, responded_to, instance, problem):
    from network import sendguard

    found = sendguard.unexpected(message, responded_to, instance, msg_id=5, expected_instance="1.2.3")
    assert (problem in found) if problem else found == ""
    assert bool(found) == bool(problem)


class Transport:
    def __init__(self, sock):
        self.socket = sock


class WithSocket:
    def __init__(self, sock):
        self.dul = type("DUL", (), {"socket": Transport(sock)})()


def test_a_write_the_peer_never_reads_fails_after_the_send_timeout(settings):
    import socket
    import time

    from network import sendguard

    settings.DICOM_SEND_TIMEOUT = 1
    ours, theirs = socket.socketpair()
    try:
        assert sendguard.bound_writes(WithSocket(ours))
        started = time.monotonic()
        with pytest.raises(BlockingIOError):
            while time.monotonic() - started < 30:  # theirs never reads: the buffers fill, then a send blocks
                ours.send(b"\0" * 65536)
        assert time.monotonic() - started < 10
    finally:
        ours.close()
        theirs.close()


def test_a_socket_with_a_timeout_of_its_own_is_left_alone(settings):
    import socket

    from network import sendguard

    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    try:
        assert not sendguard.bound_writes(WithSocket(ours))
    finally:
        ours.close()
        theirs.close()


def test_waiting_for_a_response_ends_when_the_association_does():
    import queue
    import time

    class Ended:
        is_established = False
        is_aborted = True
        dimse = type("DIMSE", (), {"dimse_timeout": 60, "msg_queue": queue.Queue()})()

    started = time.monotonic()
    assert fastsend._response(Ended()) is None
    assert time.monotonic() - started < 2  # not pynetdicom's whole DIMSE timeout


def test_the_guards_rely_on_this_pynetdicom_and_stand_down_for_another(monkeypatch):
    """Fails when pynetdicom changes: check sendguard's and fastsend's use of its internals, then add the version.

    ``sendguard.refuse`` stops the association's threads instead of queuing an
    A-ABORT once the state machine is idle (Sta1) or has sent one (Sta13): there an
    A-ABORT request is an invalid event. ``bound_writes`` and ``_response`` read
    ``assoc.dul.socket`` and ``assoc.dimse.msg_queue``.
    """
    import socket

    import pynetdicom
    from pynetdicom.fsm import TRANSITION_TABLE

    from network import reactor, sendguard

    assert pynetdicom.__version__ in reactor.SUPPORTED_VERSIONS == {"3.0.4"}
    assert ("Evt15", "Sta6") in TRANSITION_TABLE
    assert ("Evt15", "Sta1") not in TRANSITION_TABLE and ("Evt15", "Sta13") not in TRANSITION_TABLE
    monkeypatch.setattr(reactor, "SUPPORTED_VERSIONS", set())
    ours, theirs = socket.socketpair()
    try:
        assert not sendguard.bound_writes(WithSocket(ours))
    finally:
        ours.close()
        theirs.close()


def test_a_c_cancel_between_sub_operations_is_not_taken_for_their_response():
    from pynetdicom.dimse_messages import C_CANCEL_RQ, C_STORE_RSP

    from network import sendguard

    cancel = C_CANCEL_RQ()
    cancel.command_set.MessageIDBeingRespondedTo = 7
    assert sendguard.received_message(cancel) is None
    rsp = C_STORE_RSP()
    rsp.command_set.MessageIDBeingRespondedTo = 8
    rsp.command_set.AffectedSOPInstanceUID = "1.2.3"
    assert sendguard.received_message(rsp) == ("C_STORE_RSP", 8, "1.2.3")
