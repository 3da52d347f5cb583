"""Our receive path (network/fastrecv.py) against pynetdicom's, byte for byte, with real runscp processes.

The same A-ASSOCIATE-RQ (captured from pynetdicom's SCU and from DCMTK's storescu
and echoscu) goes to a runscp with DICOM_FAST_RECEIVE=1 and to one with =0: the
A-ASSOCIATE-AC, the C-ECHO and C-STORE responses, the A-RELEASE-RP and the stored
file must be the same bytes.
"""

import socket
import struct
import threading
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, build_role
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation
from pynetdicom.presentation import negotiate_as_acceptor
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from imaging import storage
from network import fastrecv, fastsend
from network.scp import ASSOCIATION_NAME
from tests import dicomgen, procs
from tests.conftest import start_scp

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def servers(pipeline):
    """{True: runscp with our receive path, False: runscp with pynetdicom's}."""
    started = {}
    try:
        for fast in (True, False):
            env = {**pipeline.env, "DICOM_FAST_RECEIVE": "1" if fast else "0"}
            started[fast] = start_scp(env, pipeline.logs, name=f"runscp-fastrecv-{int(fast)}")
            # Conversations count the threads of their association's process: not the readiness probe's.
            proc = started[fast][0]
            procs.wait_for(lambda p=proc: not associations(p), 20, "the readiness probe's process to end")
        yield {fast: port for fast, (_proc, port) in started.items()} | {"procs": started}
    finally:
        for proc, _port in started.values():
            procs.stop(proc)


def capture_request(send) -> bytes:
    """The first PDU an SCU sends: ``send(port)`` runs the SCU against a listener that only records it."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    captured = []

    def accept():
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            header = read_exactly(conn, 6)
            captured.append(header + read_exactly(conn, struct.unpack(">L", header[2:])[0]))

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        send(port)
    finally:
        thread.join(15)
        listener.close()
    [request] = captured
    return request


def read_exactly(sock, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = sock.recv(size - len(data))
        assert piece, f"closed after {len(data)} of {size} bytes"
        data += piece
    return data


def read_pdu(sock) -> bytes:
    header = read_exactly(sock, 6)
    return header + read_exactly(sock, struct.unpack(">L", header[2:])[0])


def pynetdicom_request(contexts, *, max_pdu=16384, ext_neg=None):
    def send(port):
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.network_timeout = 2
        ae.maximum_pdu_size = max_pdu
        for context in contexts:
            ae.add_requested_context(*context)
        ae.associate("127.0.0.1", port, ae_title="IMAGING", ext_neg=ext_neg, max_pdu=max_pdu)

    return send


def dcmtk_request(tool, *files):
    def send(port):
        procs.dcmtk(tool, "-aet", "MODALITY", "-aec", "IMAGING", "-to", "2", "-ta", "2", "127.0.0.1", str(port), *files)

    return send


def accepted(ac: bytes) -> dict[int, str]:
    """{context ID: transfer syntax} of the contexts an A-ASSOCIATE-AC accepts."""
    contexts, offset = {}, 74
    while offset < len(ac):
        item_type, _, length = struct.unpack(">BBH", ac[offset : offset + 4])
        body = ac[offset + 4 : offset + 4 + length]
        if item_type == 0x21 and body[2] == 0:
            contexts[body[0]] = body[8:].decode()
        offset += 4 + length
    return contexts


def proposed(rq: bytes) -> dict[int, str]:
    """{context ID: abstract syntax} of an A-ASSOCIATE-RQ."""
    return {cx.context_id: cx.abstract_syntax for cx in fastrecv.parse_request(rq).contexts}


def associations(server_proc) -> list[int]:
    return [p for p in procs.children(server_proc.pid) if procs.name(p) == ASSOCIATION_NAME]


def threads_of_association(server_proc) -> int:
    [pid] = procs.wait_for(lambda: associations(server_proc), 10, "its process")
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


RELEASE_RQ = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"


@contextmanager
def conversation(port, server_proc, rq: bytes, got: dict):
    """An association from ``rq``: (socket, {context ID: transfer syntax} accepted, {context ID: abstract syntax}).

    ``got`` receives the A-ASSOCIATE-AC, the threads of the association's process and the A-RELEASE-RP.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(rq)
        got["ac"] = read_pdu(sock)
        assert got["ac"][0] == 0x02, got["ac"]
        got["threads"] = threads_of_association(server_proc)
        yield sock, accepted(got["ac"]), proposed(rq)
        sock.sendall(RELEASE_RQ)
        got["rp"] = read_pdu(sock)
    # The next conversation counts the threads of its own association's process.
    procs.wait_for(lambda: not associations(server_proc), 20, "the association's process to end")


def echo_rq(context_id: int, message_id: int) -> bytes:
    command = fastsend.command_set(
        {"AffectedSOPClassUID": Verification, "CommandField": 0x0030, "MessageID": message_id}
        | {"CommandDataSetType": 0x0101}
    )
    return fastrecv.command_pdus(context_id, command, 16384)


def converse(port, server_proc, rq: bytes, image: Path | None) -> dict:
    """Associate with ``rq``, echo and store ``image`` where the contexts allow it, release; every PDU we got."""
    got = {}
    with conversation(port, server_proc, rq, got) as (sock, contexts, syntaxes):
        for context_id, transfer_syntax in contexts.items():
            if syntaxes[context_id] == Verification and "echo" not in got:
                sock.sendall(echo_rq(context_id, 7))
                got["echo"] = read_pdu(sock)
            elif syntaxes[context_id] == CTImageStorage and image is not None and "store" not in got:
                if transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                    continue
                ds = pydicom.dcmread(image)
                data_set = encode(ds, transfer_syntax == ImplicitVRLittleEndian, True, False)
                command = fastsend.c_store_rq(
                    sop_class=CTImageStorage, sop_instance=ds.SOPInstanceUID, message_id=9, priority=0
                )
                fastsend.send_all(sock, fastsend.p_data_pdus(context_id, command, data_set, 16384))
                got["store"] = read_pdu(sock)
                path = storage.absolute(storage.instance_relpath(ds.SOPInstanceUID))
                got["file"] = path.read_bytes()
                path.unlink()  # the other server stores it afresh
    return got


REQUESTS = {
    "pynetdicom-ct-echo": pynetdicom_request([(Verification,), (CTImageStorage,)]),
    "pynetdicom-implicit-first-unlimited-pdu": pynetdicom_request(
        [(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]), (MRImageStorage,), (Verification,)],
        max_pdu=0,
    ),
    "pynetdicom-unsupported-transfer-syntax": pynetdicom_request(
        [(MRImageStorage, ["1.2.3.4.5.6"]), (CTImageStorage, [ExplicitVRLittleEndian])], max_pdu=4096
    ),
    "pynetdicom-async-ops-window": pynetdicom_request(
        [(CTImageStorage,), (Verification,)], ext_neg=[AsynchronousOperationsWindowNegotiation()]
    ),
    "dcmtk-echoscu": dcmtk_request("echoscu"),
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_our_receive_path_answers_byte_for_byte_as_pynetdicom(system, servers, name, tmp_path):
    rq = capture_request(REQUESTS[name])
    assert fastrecv.servable(fastrecv.parse_request(rq)), fastrecv.parse_request(rq).odd
    [image] = dicomgen.ct_series(tmp_path, 1, size=32)
    fast = converse(servers[True], servers["procs"][True][0], rq, image)
    slow = converse(servers[False], servers["procs"][False][0], rq, image)
    assert fast["threads"] == 1  # served by our path: no DUL thread, no association thread
    assert slow["threads"] > 1
    for key in ("ac", "echo", "store", "file", "rp"):
        assert fast.get(key) == slow.get(key), key
    assert "echo" in fast or "store" in fast


def test_dcmtk_storescus_request_is_answered_byte_for_byte(system, servers, tmp_path):
    [image] = dicomgen.ct_series(tmp_path, 1, size=32)
    rq = capture_request(dcmtk_request("storescu", str(image)))
    assert fastrecv.servable(fastrecv.parse_request(rq))
    fast = converse(servers[True], servers["procs"][True][0], rq, image)
    slow = converse(servers[False], servers["procs"][False][0], rq, image)
    assert (fast["threads"], slow["threads"] > 1) == (1, True)
    assert [fast.get(k) for k in ("ac", "store", "file", "rp")] == [slow.get(k) for k in ("ac", "store", "file", "rp")]
    assert fast["store"][0] == 0x04 and fast["file"]  # stored, and answered


@pytest.mark.parametrize(
    "contexts, ext_neg",
    [
        ([(CTImageStorage,), (StudyRootQueryRetrieveInformationModelMove,)], None),
        ([(StudyRootQueryRetrieveInformationModelFind,)], [build_role(CTImageStorage, scp_role=True)]),
        ([(CTImageStorage,)], [build_role(CTImageStorage, scp_role=True)]),
    ],
    ids=["a-move-context", "find-with-a-role-selection-item", "a-role-selection-item"],
)
def test_anything_but_storage_verification_and_find_is_left_to_pynetdicom(system, servers, contexts, ext_neg):
    rq = capture_request(pynetdicom_request(contexts, ext_neg=ext_neg))
    assert not fastrecv.servable(fastrecv.parse_request(rq))
    fast = converse(servers[True], servers["procs"][True][0], rq, None)
    slow = converse(servers[False], servers["procs"][False][0], rq, None)
    assert fast["threads"] > 1 and slow["threads"] > 1
    assert fast["ac"] == slow["ac"]


@pytest.mark.parametrize(
    "contexts, served",
    [
        ([StudyRootQueryRetrieveInformationModelFind], True),
        ([PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind], True),
        ([StudyRootQueryRetrieveInformationModelFind, CTImageStorage, Verification], True),
        ([StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove], False),
        ([StudyRootQueryRetrieveInformationModelMove], False),
        (["1.2.840.10008.5.1.4.1.2.2.3"], False),  # Study Root Get
    ],
    ids=["find", "both-finds", "find-storage-echo", "find-and-move", "move", "get"],
)
def test_it_serves_find_alone_or_with_storage_and_leaves_retrieves_to_pynetdicom(settings, contexts, served):
    settings.DICOM_FAST_RECEIVE = True
    request = fastrecv.parse_request(capture_request(pynetdicom_request([(uid,) for uid in contexts])))
    assert [cx.abstract_syntax for cx in request.contexts] == contexts
    assert fastrecv.servable(request) is served, request.odd


def test_dcmtk_findscus_request_is_served_here():
    for model in ("-S", "-P"):
        rq = capture_request(dcmtk_request("findscu", model, "-k", "QueryRetrieveLevel=STUDY"))
        request = fastrecv.parse_request(rq)
        assert fastrecv.servable(request), request.odd
        assert {cx.abstract_syntax for cx in request.contexts} <= {
            StudyRootQueryRetrieveInformationModelFind,
            PatientRootQueryRetrieveInformationModelFind,
        }


def test_a_spares_warm_up_sets_up_a_verification_association_without_a_peer():
    from network.scp import build_ae

    ac = fastrecv.warm_up(build_ae())
    assert ac[0] == 0x02  # an A-ASSOCIATE-AC
    assert accepted(ac) == {1: ImplicitVRLittleEndian}


@pytest.mark.parametrize(
    "contexts",
    [
        [(Verification,)],
        [(CTImageStorage, ExplicitVRLittleEndian), (CTImageStorage, ImplicitVRLittleEndian), (Verification,)],
        [("1.2.3.4.5",), ("1.2.3.4.6",)],
        [("1.2.3.4.5",), (CTImageStorage, "1.2.840.10008.1.2.4.999"), (StudyRootQueryRetrieveInformationModelFind,)],
    ],
    ids=["echo", "storage-twice-and-echo", "none-supported", "unknown-and-unsupported-syntax"],
)
def test_negotiating_over_the_proposed_abstract_syntaxes_answers_as_over_all_of_them(contexts):
    from network.scp import build_ae

    ae = build_ae()
    request = fastrecv.Request(0, "IMAGING", "MODALITY")
    for index, context in enumerate(contexts):
        proposed_context = build_context(*context)
        proposed_context.context_id = 2 * (len(contexts) - index) - 1  # IDs falling: the answer sorts them
        request.contexts.append(proposed_context)

    def answer(supported):
        results, _roles = negotiate_as_acceptor(request.contexts, supported, {})
        return fastrecv.associate_ac(request, results, max_length=16384, implementation=("1.2.3.4", "OURS"))

    assert answer(fastrecv.supported_for(ae, request.contexts)) == answer(ae.supported_contexts)
    supported = fastrecv.supported_for(ae, request.contexts)
    proposed = {cx.abstract_syntax for cx in request.contexts}
    if proposed & {cx.abstract_syntax for cx in ae.supported_contexts}:
        assert {cx.abstract_syntax for cx in supported} <= proposed
    else:
        assert supported == ae.supported_contexts


def test_a_proposed_context_is_decoded_once_and_one_that_does_not_decode_each_time():
    body = bytes((1, 0, 0, 0)) + fastrecv._item(0x30, Verification.encode())
    body += fastrecv._item(0x40, ImplicitVRLittleEndian.encode())
    first = fastrecv._context(body)
    assert first.context_id == 1 and first.abstract_syntax == Verification
    assert first.transfer_syntax == [ImplicitVRLittleEndian]
    assert fastrecv._context(body) is first
    bad = bytes((3, 0, 0, 0)) + fastrecv._item(0x30, b"1.2.x") + fastrecv._item(0x40, ImplicitVRLittleEndian.encode())
    for _ in range(2):
        with pytest.raises(ValueError, match="invalid UID"):
            fastrecv._context(bad)


def test_the_fast_path_is_off_with_its_setting(settings):
    settings.DICOM_FAST_RECEIVE = False
    request = fastrecv.Request(0, "IMAGING", "MODALITY", contexts=[build_context(CTImageStorage)])
    assert not fastrecv.servable(request)
    settings.DICOM_FAST_RECEIVE = True
    assert fastrecv.servable(request)


def test_a_message_our_path_does_not_serve_aborts_the_association_and_is_logged(system, servers):
    from network.models import AssociationLog

    rq = capture_request(pynetdicom_request([(CTImageStorage,), (Verification,)]))
    with socket.create_connection(("127.0.0.1", servers[True]), timeout=10) as sock:
        sock.sendall(rq)
        ac = read_pdu(sock)
        [ct_context] = [cx for cx, syntax in proposed(rq).items() if syntax == CTImageStorage and cx in accepted(ac)]
        find = fastsend.command_set(
            {"AffectedSOPClassUID": CTImageStorage, "CommandField": 0x0020, "MessageID": 3, "Priority": 0}
            | {"CommandDataSetType": 0x0101}
        )
        sock.sendall(fastrecv.command_pdus(ct_context, find, 16384))
        abort = read_pdu(sock)
        assert abort[0] == 0x07 and abort[8:10] == b"\x00\x00"  # A-ABORT by the service user
        assert sock.recv(1) == b""  # and closed
    entry = procs.wait_for(lambda: AssociationLog.objects.filter(calling_ae="MODALITY").first(), 20, "the log")
    assert entry.outcome == AssociationLog.Outcome.ABORTED
    assert "0x0020" in entry.reason and "we do not serve" in entry.reason


def test_an_association_idle_past_the_network_timeout_is_aborted_and_logged(system, pipeline):
    from network.models import AssociationLog

    env = {**pipeline.env, "DICOM_FAST_RECEIVE": "1", "DICOM_NETWORK_TIMEOUT": "1"}
    scp, port = start_scp(env, pipeline.logs, name="runscp-fastrecv-idle")
    try:
        rq = capture_request(pynetdicom_request([(CTImageStorage,), (Verification,)]))
        procs.wait_for(lambda: not associations(scp), 20, "the readiness probe's process to end")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(rq)
            assert read_pdu(sock)[0] == 0x02
            assert threads_of_association(scp) == 1  # our path
            abort = read_pdu(sock)  # nothing sent: within a few seconds, an A-ABORT
            assert abort[0] == 0x07 and abort[8] == 0x02  # by the service provider
        entry = procs.wait_for(
            lambda: AssociationLog.objects.filter(
                calling_ae="MODALITY", outcome=AssociationLog.Outcome.ABORTED
            ).first(),
            20,
            "the log",
        )
        assert "DICOM_NETWORK_TIMEOUT" in entry.reason
    finally:
        procs.stop(scp)


# --- C-FIND ------------------------------------------------------------------------------------


def find_rq(context_id: int, model: str, identifier: bytes, message_id: int) -> list:
    command = fastsend.command_set(
        {"AffectedSOPClassUID": model, "CommandField": 0x0020, "MessageID": message_id, "Priority": 0}
        | {"CommandDataSetType": 0x0001}
    )
    return fastsend.p_data_pdus(context_id, command, identifier, 16384)


def read_find_responses(sock) -> tuple[list[bytes], list[int]]:
    """Every PDU of a C-FIND's responses, up to its final status; and the statuses."""
    pdus, statuses, command = [], [], b""
    while not statuses or statuses[-1] in (0xFF00, 0xFF01):
        pdu = read_pdu(sock)
        assert pdu[0] == 0x04, pdu
        pdus.append(pdu)
        offset = 6
        while offset < len(pdu):
            (length,) = struct.unpack(">L", pdu[offset : offset + 4])
            control, value = pdu[offset + 5], pdu[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if control & 1:
                command += value
                if control & 2:
                    statuses.append(struct.unpack("<H", fastrecv.decode_command(command)[0x0900])[0])
                    command = b""
    return pdus, statuses


def query(level: str, charset: str = "", **keys) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def converse_find(port, server_proc, rq: bytes, queries: list) -> dict:
    """Associate with ``rq``, send each (model, identifier bytes) as a C-FIND, release: the PDUs and statuses."""
    got = {"responses": [], "statuses": []}
    with conversation(port, server_proc, rq, got) as (sock, contexts, syntaxes):
        for n, (model, identifier) in enumerate(queries):
            [(context_id, transfer_syntax)] = [(cx, ts) for cx, ts in contexts.items() if syntaxes[cx] == model][:1]
            raw = (
                identifier
                if isinstance(identifier, bytes)
                else encode(identifier, transfer_syntax == ImplicitVRLittleEndian, True, False)
            )
            fastsend.send_all(sock, find_rq(context_id, model, raw, message_id=n + 1))
            pdus, statuses = read_find_responses(sock)
            got["responses"].append(pdus)
            got["statuses"].append(statuses)
    return got


@pytest.fixture
def find_archive(system, tmp_path):
    from records.models import Patient
    from tests.test_find_e2e import index

    Patient.objects.bulk_create(Patient(patient_id=f"MANY{n:03d}", name=f"MANY^{n}") for n in range(40))
    return {
        "wang": index(
            tmp_path, patient_id="P-WANG", patient_name="WANG^XIAOMING=王^小明", study_date="20240301", images=3
        ),
        "li": index(tmp_path, patient_id="P-LI", patient_name="LI^NA", study_date="20240302", modality="CT"),
    }


STUDY, PATIENT = StudyRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelFind
UNREADABLE = (
    b"\x08\x00\x52\x00CS\x06\x00STUDY \x20\x00\x0d\x00UI\x00\x00"
    b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\x08\x00\x00\x00abcdefgh"
)


def find_queries(archive) -> list:
    study_uid, series_uid = archive["wang"]
    return [
        (PATIENT, query("PATIENT", PatientID="P-WANG", PatientName="", NumberOfPatientRelatedStudies="")),
        (STUDY, query("STUDY", StudyInstanceUID="", PatientName="wang^xi*", StudyDate="", ModalitiesInStudy="")),
        (STUDY, query("STUDY", "ISO_IR 192", StudyInstanceUID="", PatientName="王*", PatientAge="")),
        (STUDY, query("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="", NumberOfSeriesRelatedInstances="")),
        (STUDY, query("IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, SOPInstanceUID="")),
        (STUDY, query("STUDY", StudyInstanceUID="", PatientID="NOBODY")),  # zero matches
        (STUDY, query("SOMEWHERE", StudyInstanceUID="")),  # a bad level: a failure status
        (STUDY, query("STUDY", StudyInstanceUID="", StudyDate="20241399")),  # 0xC000
        # A sequence item that cannot be read (pydicom reads it when the query does): a failure status.
        (STUDY, UNREADABLE),
        (PATIENT, query("PATIENT", PatientID="MANY*", PatientName="")),  # many matches
    ]


FIND_REQUESTS = {
    "pynetdicom-both-models": pynetdicom_request([(STUDY,), (PATIENT,)]),
    "pynetdicom-implicit-small-pdu": pynetdicom_request(
        [(STUDY, [ImplicitVRLittleEndian]), (PATIENT, [ImplicitVRLittleEndian]), (CTImageStorage,)], max_pdu=100
    ),
    "pynetdicom-unlimited-pdu": pynetdicom_request([(PATIENT,), (STUDY,), (Verification,)], max_pdu=0),
}


@pytest.mark.parametrize("name", sorted(FIND_REQUESTS))
def test_our_receive_path_answers_c_find_byte_for_byte_as_pynetdicom(system, servers, find_archive, name):
    rq = capture_request(FIND_REQUESTS[name])
    assert fastrecv.servable(fastrecv.parse_request(rq))
    queries = find_queries(find_archive)
    fast = converse_find(servers[True], servers["procs"][True][0], rq, queries)
    slow = converse_find(servers[False], servers["procs"][False][0], rq, queries)
    assert (fast["threads"], slow["threads"] > 1) == (1, True)
    assert fast["statuses"] == slow["statuses"]
    for n, (ours, theirs) in enumerate(zip(fast["responses"], slow["responses"], strict=True)):
        assert ours == theirs, (n, queries[n])
    assert (fast["ac"], fast["rp"]) == (slow["ac"], slow["rp"])
    finals = [statuses[-1] for statuses in fast["statuses"]]
    assert finals[:6] == [0x0000] * 6 and finals[7] == 0xC000 and finals[9] == 0x0000
    assert finals[6] >> 12 in (0xA, 0xC) and finals[8] >> 12 in (0xA, 0xC)  # failures, and it went on serving
    assert [len(statuses) - 1 for statuses in fast["statuses"]] == [1, 1, 1, 1, 3, 0, 0, 0, 0, 40]
    if name.endswith("small-pdu"):
        sizes = {len(pdu) for pdus in fast["responses"] for pdu in pdus}
        assert max(sizes) == 106, sorted(sizes)  # the peer's 100 bytes of PDVs, and the PDU header


@pytest.mark.parametrize("interruption", ["c-cancel", "c-echo", "a-release-rq", "a-abort"])
def test_while_a_c_find_is_answered_only_its_c_cancel_is_served(system, servers, interruption):
    from network.models import AssociationLog
    from records.models import Patient

    Patient.objects.bulk_create(Patient(patient_id=f"C{n:04d}", name=f"CANCEL^{n}") for n in range(990))
    rq = capture_request(pynetdicom_request([(PATIENT,), (Verification,)]))
    with socket.socket() as sock:
        # A small receive window: the server blocks in its sends, mid-result, until we read.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", servers[True]))
        sock.sendall(rq)
        contexts = accepted(read_pdu(sock))
        syntaxes = proposed(rq)
        [find_context] = [cx for cx in contexts if syntaxes[cx] == PATIENT]
        [echo_context] = [cx for cx in contexts if syntaxes[cx] == Verification]
        identifier = encode(query("PATIENT", PatientID="C*", PatientName=""), False, True, False)
        fastsend.send_all(sock, find_rq(find_context, PATIENT, identifier, message_id=4))
        assert read_pdu(sock)[0] == 0x04  # the first match: the C-FIND is being answered
        if interruption == "c-cancel":
            cancel = fastsend.command_set(
                {"CommandField": 0x0FFF, "MessageIDBeingRespondedTo": 4} | {"CommandDataSetType": 0x0101}
            )
            sock.sendall(fastrecv.command_pdus(echo_context, cancel, 16384))
            _pdus, statuses = read_find_responses(sock)
            assert statuses[-1] == 0xFE00 and len(statuses) < 990
            # The association goes on.
            sock.sendall(echo_rq(echo_context, 5))
            assert read_pdu(sock)[0] == 0x04
            sock.sendall(RELEASE_RQ)
            assert read_pdu(sock)[0] == 0x06
            outcome = AssociationLog.Outcome.RELEASED
        else:
            if interruption == "c-echo":
                sock.sendall(echo_rq(echo_context, 5))
            elif interruption == "a-release-rq":
                sock.sendall(RELEASE_RQ)
            else:
                sock.sendall(fastrecv.abort_pdu(0x00, 0x00))
            matches, last = 0, None
            while (header := sock.recv(6, socket.MSG_WAITALL)) and header[0] == 0x04:
                read_exactly(sock, struct.unpack(">L", header[2:])[0])
                matches += 1
            last = header[:1]
            assert matches < 989, "the interruption came after the last match"
            # We abort the association for a C-ECHO or a release; after the peer's A-ABORT, we close.
            assert last == (b"" if interruption == "a-abort" else b"\x07")
            outcome = AssociationLog.Outcome.ABORTED
    entry = procs.wait_for(lambda: AssociationLog.objects.filter(calling_ae="MODALITY").first(), 20, "the log")
    assert entry.outcome == outcome and "C-FIND" in entry.services
    reasons = {"c-echo": "0x0030 we do not serve", "a-release-rq": "unexpected PDU of type 0x05"}
    assert reasons.get(interruption, "") in entry.reason


def test_an_identifier_that_cannot_be_decoded_is_answered_unable_to_process_and_counted():
    from network import access
    from network.dimse import find
    from network.models import ModalityNode

    def undecodable():
        raise ValueError("not a data set")

    session = access.Session(ModalityNode(ae_title="MODALITY", may_query=True), "MODALITY", "IMAGING", "127.0.0.1", 1)
    responses = find.find_responses(
        session=session,
        calling_ae="MODALITY",
        sop_class=STUDY,
        identifier=undecodable,
        implicit_vr=False,
        cancelled=lambda: False,
    )
    assert list(responses) == [(0xC000, None)]
    assert session.failures == 1 and session.services == {"C-FIND"}


def test_an_identifier_is_decoded_as_pynetdicom_decodes_it():
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds = query("STUDY", "ISO_IR 192", PatientName="王*", StudyInstanceUID="")
        decoded = fastrecv.decode_identifier(encode(ds, syntax == ImplicitVRLittleEndian, True, False), syntax)
        assert decoded == ds and decoded.original_encoding == (syntax == ImplicitVRLittleEndian, True)
    assert fastrecv.decode_identifier(b"", ExplicitVRLittleEndian) == pydicom.Dataset()


class _CountingSocket:
    """A socket whose reads are counted: what the read-ahead saves is reads."""

    def __init__(self, sock):
        self.sock = sock
        self.reads = 0

    def gettimeout(self):
        return self.sock.gettimeout()

    def settimeout(self, timeout):
        self.sock.settimeout(timeout)

    def recvmsg_into(self, buffers):
        self.reads += 1
        return self.sock.recvmsg_into(buffers)

    def fileno(self):
        return self.sock.fileno()


def _reader(sock) -> fastrecv.Association:
    request = fastrecv.Request(length=0, called_ae="IMAGING", calling_ae="MODALITY")
    return fastrecv.Association(sock, ("127.0.0.1", 0), request, ae=None, handoff=None, shutdown=None)


def test_a_small_images_two_pdus_arrived_together_take_one_read():
    ours, peer = socket.socketpair()
    with ours, peer:
        counted = _CountingSocket(ours)
        association = _reader(counted)
        command, data = b"\x04\x00\x00\x00\x00\x05hello", b"\x04\x00\x00\x00\x00\x03abc"
        peer.sendall(command + data)
        assert association._read_exact(6) == command[:6]
        assert association._read_exact(5) == b"hello"
        assert association._has_input(0)  # the next PDU is already here: no wait on the socket
        assert association._read_exact(6) == data[:6]
        assert association._read_exact(3) == b"abc"
        assert counted.reads == 1
        assert not association._has_input(0)


def test_pdus_of_every_size_split_anywhere_are_read_byte_for_byte():
    """PDU bodies around the read-ahead's size, sent in pieces that cut headers and bodies anywhere."""
    import random

    rng = random.Random(12)
    sizes = [0, 1, 5, 6, 7, 4096, fastrecv._READ_AHEAD - 6, fastrecv._READ_AHEAD, fastrecv._READ_AHEAD + 1, 300_000]
    sizes += [rng.randrange(0, 200_000) for _ in range(20)]
    pdus = [struct.pack(">BBL", 4, 0, size) + rng.randbytes(size) for size in sizes]
    stream = b"".join(pdus)
    ours, peer = socket.socketpair()

    def send():
        offset = 0
        while offset < len(stream):
            piece = rng.choice([1, 3, 6, 100, 5000, 70_000, 250_000])
            peer.sendall(stream[offset : offset + piece])
            offset += piece

    with ours, peer:
        sender = threading.Thread(target=send)
        sender.start()
        association = _reader(ours)
        for pdu in pdus:
            header = association._read_exact(6)
            (length,) = struct.unpack(">L", header[2:])
            assert header + association._read_exact(length) == pdu
        sender.join(10)
        assert not sender.is_alive()
