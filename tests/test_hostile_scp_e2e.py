"""The SCP against hostile and broken peers: the test is the attacker, against a real runscp.

After every attack a registered node (MODALITY on 127.0.0.1) must still echo and
store at once. The attacker's second address is 127.0.0.2, which no node has.
"""

import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, StudyRootQueryRetrieveInformationModelGet, Verification

from imaging import storage
from network.models import AssociationLog, ModalityNode
from network.scp import ASSOCIATION_NAME, SPARE_NAME
from tests import dicomgen, procs
from tests.conftest import RECEIVE_PATHS, start_scp

pytestmark = pytest.mark.e2e

ATTACKER = "127.0.0.2"
FOUR_GIB = 0xFFFFFFFF
JUNK = 200 * 1024 * 1024
MAX_PDU = 16384  # what the guarded runscp announces
MAX_DATASET = 4 * 1024 * 1024
# A spare is Django + pynetdicom, some tens of MB; the process serving the attacker may
# grow by a few PDUs and buffers beyond that. The bug took 1 GB at once.
MEMORY_GROWTH_KB = 32 * 1024


@dataclass
class Server:
    proc: object
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def associations(self) -> list[int]:
        return [pid for pid in procs.children(self.proc.pid) if procs.name(pid) == ASSOCIATION_NAME]

    def spares(self) -> list[int]:
        return [pid for pid in procs.children(self.proc.pid) if procs.name(pid) == SPARE_NAME]

    def idle(self) -> bool:
        return not procs.children(self.proc.pid, but=SPARE_NAME)


@pytest.fixture(**RECEIVE_PATHS)
def fast_receive(request) -> str:
    """Every attack here is made on our receive path (network/fastrecv.py) and on pynetdicom's."""
    return request.param


def _server(pipeline, name, fast_receive, **env) -> Server:
    name = f"{name}-fastrecv{fast_receive}"
    proc, port = start_scp({**pipeline.env, "DICOM_FAST_RECEIVE": fast_receive, **env}, pipeline.logs, name=name)
    return Server(proc, port, pipeline.logs / f"{name}.log")


@pytest.fixture(scope="module")
def guarded(pipeline, fast_receive):
    """Host checks on; a short A-ASSOCIATE timeout, a small maximum PDU and data set, streaming past 1 MiB."""
    server = _server(
        pipeline,
        "runscp-guarded",
        fast_receive,
        DICOM_ASSOCIATE_TIMEOUT="2",
        DICOM_MAX_PDU=str(MAX_PDU),
        DICOM_MAX_DATASET_BYTES=str(MAX_DATASET),
        DICOM_STREAM_TO_DISK_BYTES=str(1024 * 1024),
    )
    yield server
    procs.stop(server.proc)


@pytest.fixture(scope="module")
def unchecked(pipeline, fast_receive):
    """DICOM_CHECK_HOST=0, 6 associations at most, 2 per peer, a long A-ASSOCIATE timeout."""
    server = _server(
        pipeline,
        "runscp-unchecked",
        fast_receive,
        DICOM_CHECK_HOST="0",
        DICOM_MAX_ASSOCIATIONS="6",
        DICOM_MAX_ASSOCIATIONS_PER_PEER="2",
        DICOM_ASSOCIATE_TIMEOUT="10",
    )
    yield server
    procs.stop(server.proc)


@pytest.fixture(scope="module")
def polling(pipeline, fast_receive):
    """As guarded, with pynetdicom's own loops and reads (DICOM_EVENT_DRIVEN_LOOPS=0)."""
    server = _server(
        pipeline,
        "runscp-polling",
        fast_receive,
        DICOM_EVENT_DRIVEN_LOOPS="0",
        DICOM_ASSOCIATE_TIMEOUT="2",
        DICOM_MAX_PDU=str(MAX_PDU),
        DICOM_MAX_DATASET_BYTES=str(MAX_DATASET),
    )
    yield server
    procs.stop(server.proc)


@pytest.fixture(params=["guarded", "polling"])
def either(request):
    """The guarded server, with our event-driven loops and with pynetdicom's."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def node(system):
    """MODALITY (127.0.0.1) exists; after the test, no association of any server is still being logged."""
    servers = []
    yield servers
    for server in servers:
        procs.wait_for(server.idle, 30, "the associations to end")


def echoscu(port, calling="MODALITY"):
    return procs.dcmtk("echoscu", "-aet", calling, "-aec", "IMAGING", "127.0.0.1", str(port), timeout=30)


def storescu(port, *files, calling="MODALITY"):
    return procs.dcmtk(
        "storescu", "-aet", calling, "-aec", "IMAGING", "127.0.0.1", str(port), *map(str, files), timeout=60
    )


def assert_serves_a_node(port, tmp_path, within=5.0):
    """MODALITY echoes and stores one image, each in less than ``within`` seconds."""
    started = time.monotonic()
    echo = echoscu(port)
    assert echo.returncode == 0, echo.stderr
    assert time.monotonic() - started < within
    [path] = dicomgen.ct_series(tmp_path / f"serves-{time.monotonic_ns()}", 1, size=32)
    started = time.monotonic()
    stored = storescu(port, path)
    assert stored.returncode == 0, stored.stderr
    assert time.monotonic() - started < within
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    assert storage.absolute(storage.instance_relpath(uid)).exists()


def connect(port, source="127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def send_junk(sock, total=JUNK) -> int:
    """Send up to ``total`` bytes of junk; returns how many the kernel took before the server closed."""
    chunk = b"\xa5" * (1024 * 1024)
    sent = 0
    try:
        while sent < total:
            sent += sock.send(chunk)
    except OSError:  # reset or broken pipe: the server closed the connection
        pass
    return sent


def vm_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Samples the VmHWM (peak resident memory) of every child of a server until stopped."""

    def __init__(self, server: Server):
        self.server = server
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for pid in procs.children(self.server.proc.pid):
                hwm = vm_kb(pid, "VmHWM")
                if hwm is not None:
                    self.peaks[pid] = max(hwm, self.peaks.get(pid, 0))
            self._stop.wait(0.002)

    def __enter__(self):
        self._thread.start()
        procs.wait_for(lambda: self.peaks, 5, "a first sample")
        self.bound = max(self.peaks.values()) + MEMORY_GROWTH_KB
        return self

    def assert_bounded(self):
        assert max(self.peaks.values()) < self.bound, (self.peaks, self.bound)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)


def read_abort(sock) -> tuple[int, int]:
    """The (source, reason) of the A-ABORT the server sent, then its close."""
    data = b""
    while len(data) < 10:
        piece = sock.recv(10 - len(data))
        assert piece, f"closed after {data!r}, without an A-ABORT"
        data += piece
    assert data[0] == 0x07 and struct.unpack(">L", data[2:6])[0] == 4, data
    return data[8], data[9]


def wait_log(server, text, timeout=10):
    procs.wait_for(lambda: text in server.log(), timeout, f"{text!r} in the log")


# --- PDU lengths -----------------------------------------------------------------------


def test_a_4_gib_pdu_header_from_an_unknown_address_is_closed_at_accept_without_a_process(guarded, node, tmp_path):
    node.append(guarded)
    procs.wait_for(guarded.idle, 30, "the server to be idle")
    spares = set(guarded.spares())
    with PeakMemory(guarded) as memory:
        sock = connect(guarded.port, source=ATTACKER)
        sock.sendall(b"\x01\x00" + struct.pack(">L", FOUR_GIB))
        sent = send_junk(sock)
        sock.close()
    assert sent < JUNK, "the connection was closed"
    wait_log(guarded, f"connection from {ATTACKER} refused at accept: not the address of any active node")
    # The spares refused it and went back to accept(): none became an association process.
    assert set(guarded.spares()) == spares and not guarded.associations()
    memory.assert_bounded()
    assert_serves_a_node(guarded.port, tmp_path)


def test_a_4_gib_pdu_header_from_a_registered_node_is_aborted_in_bounded_memory(either, node, tmp_path):
    node.append(either)
    procs.wait_for(either.idle, 30, "the server to be idle")
    with PeakMemory(either) as memory:
        sock = connect(either.port)
        sock.sendall(b"\x01\x00" + struct.pack(">L", FOUR_GIB))
        source, reason = read_abort(sock)
        sent = send_junk(sock)
        sock.close()
        procs.wait_for(either.idle, 10, "the association process to end")
    assert (source, reason) == (0x02, 0x06)  # service provider, invalid PDU parameter value
    assert sent < JUNK, "the connection was closed"
    memory.assert_bounded()
    wait_log(either, "aborted: a PDU of type 0x01 claims 4294967295 bytes, more than DICOM_MAX_ASSOCIATE_PDU")
    assert_serves_a_node(either.port, tmp_path)


def test_a_p_data_pdu_longer_than_the_announced_maximum_is_aborted(guarded, node, tmp_path):
    node.append(guarded)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", guarded.port, ae_title="IMAGING")
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == MAX_PDU  # announced, and finite
    raw = assoc.dul.socket.socket
    raw.sendall(b"\x04\x00" + struct.pack(">L", MAX_PDU + 1) + b"\0" * (MAX_PDU + 1))
    procs.wait_for(lambda: assoc.is_aborted, 10, "the association to be aborted")
    wait_log(guarded, f"claims {MAX_PDU + 1} bytes, more than the Maximum Length we announced")
    entry = procs.wait_for(
        lambda: AssociationLog.objects.filter(calling_ae="MODALITY", outcome="aborted").first(), 20, "the log"
    )
    assert "Maximum Length" in entry.reason
    assert_serves_a_node(guarded.port, tmp_path)


def test_storescu_stores_under_the_announced_maximum(guarded, node, tmp_path):
    node.append(guarded)
    files = dicomgen.ct_series(tmp_path, 3, size=256)  # 128 KB each: many PDUs of at most MAX_PDU
    result = storescu(guarded.port, *files)
    assert result.returncode == 0, result.stderr
    for path in files:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert storage.absolute(storage.instance_relpath(uid)).exists()


# --- DIMSE messages and data sets ------------------------------------------------------------


def _c_store_command(sop_instance: str, context_id: int) -> bytes:
    """A P-DATA-TF PDU holding a whole C-STORE-RQ command set (Implicit VR Little Endian)."""
    from pydicom.dataset import Dataset
    from pynetdicom.dsutils import encode

    cs = Dataset()
    cs.AffectedSOPClassUID = CTImageStorage
    cs.CommandField = 0x0001
    cs.MessageID = 1
    cs.Priority = 0
    cs.CommandDataSetType = 0x0000
    cs.AffectedSOPInstanceUID = sop_instance
    body = encode(cs, True, True)
    group = b"\x00\x00\x00\x00\x04\x00\x00\x00" + struct.pack("<L", len(body))
    command = group + body
    pdv = struct.pack(">LBB", len(command) + 2, context_id, 0x03) + command
    return b"\x04\x00" + struct.pack(">L", len(pdv)) + pdv


def test_a_data_set_that_never_ends_is_aborted_at_the_size_limit_and_leaves_no_file(guarded, node, tmp_path):
    node.append(guarded)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", guarded.port, ae_title="IMAGING")
    assert assoc.is_established
    context_id = assoc.accepted_contexts[0].context_id
    uid = "1.2.826.0.1.3680043.8.498.99999"
    raw = assoc.dul.socket.socket
    raw.sendall(_c_store_command(uid, context_id))
    fragment = b"\0" * (MAX_PDU - 6)
    pdu = b"\x04\x00" + struct.pack(">L", MAX_PDU) + struct.pack(">LBB", len(fragment) + 2, context_id, 0x00)
    sent = 0
    with PeakMemory(guarded) as memory:
        try:
            while sent < 16 * MAX_DATASET and not assoc.is_aborted:
                raw.sendall(pdu + fragment)  # data set fragments, never the last one
                sent += len(fragment)
        except OSError:
            pass
        procs.wait_for(lambda: assoc.is_aborted, 10, "the association to be aborted")
    assert sent < 8 * MAX_DATASET  # the limit, and what the kernel's socket buffers took meanwhile
    memory.assert_bounded()
    wait_log(guarded, f"a data set longer than DICOM_MAX_DATASET_BYTES ({MAX_DATASET} bytes)")
    procs.wait_for(guarded.idle, 10, "the association process to end")
    folder = storage.absolute(storage.instance_relpath(uid)).parent
    assert not folder.exists() or not list(folder.iterdir()), "the partial file was removed"
    assert_serves_a_node(guarded.port, tmp_path)


def test_a_data_set_streamed_to_disk_is_stored_byte_for_byte_as_one_held_in_memory(pipeline, guarded, node, tmp_path):
    node.append(guarded)
    [path] = dicomgen.ct_series(tmp_path, 1, size=1024)  # 2 MiB: streamed by guarded, in memory by the other
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    stored = storage.absolute(storage.instance_relpath(uid))
    assert storescu(pipeline.port, path).returncode == 0
    in_memory = stored.read_bytes()
    stored.unlink()
    result = storescu(guarded.port, path)
    assert result.returncode == 0, result.stderr
    assert stored.read_bytes() == in_memory
    assert pydicom.dcmread(stored).file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert not [p for p in stored.parent.iterdir() if p.name.endswith(storage.PARTIAL_SUFFIX)]


# --- Slots -------------------------------------------------------------------------------------


def _idle_connections(port, count, source=ATTACKER) -> list[socket.socket]:
    return [connect(port, source=source) for _ in range(count)]


def test_100_idle_connections_from_an_unknown_address_take_no_slot(system, node, tmp_path):
    server = Server(system.procs["runscp"], system.port, system.logs / f"{system.scp_log}.log")
    node.append(server)
    lines_before = server.log().count("refused at accept")
    idle = _idle_connections(system.port, 100)
    try:
        assert_serves_a_node(system.port, tmp_path, within=3)

        # Every one was closed by a spare at accept().
        def closed(sock):
            try:
                return sock.recv(1) == b""
            except ConnectionResetError:
                return True

        assert all(closed(sock) for sock in idle)
    finally:
        for sock in idle:
            sock.close()
    lines = server.log().count("refused at accept") - lines_before
    assert 1 <= lines <= 5, f"{lines} log lines for 100 refusals"


def test_with_host_checks_off_the_per_peer_cap_keeps_slots_for_others(unchecked, node, tmp_path):
    node.append(unchecked)
    procs.wait_for(unchecked.idle, 30, "the server to be idle")
    idle = _idle_connections(unchecked.port, 100)
    try:
        wait_log(unchecked, f"connection from {ATTACKER} refused at accept: too many associations from this address")
        attacker = procs.wait_for(lambda: len(unchecked.associations()) >= 2 and unchecked.associations(), 10, "two")
        # Of 6 slots the attacker holds 2 (the cap), waiting for requests that never come.
        assert len(attacker) == 2
        assert_serves_a_node(unchecked.port, tmp_path, within=3)
        assert set(attacker) <= set(unchecked.associations()), "the attacker's processes were not what made room"
    finally:
        for sock in idle:
            sock.close()


def test_a_crashed_association_process_gives_its_peer_slot_back(unchecked, node, tmp_path):
    import os
    import signal

    node.append(unchecked)
    procs.wait_for(unchecked.idle, 30, "the server to be idle")
    first = _idle_connections(unchecked.port, 2)
    try:
        held = procs.wait_for(lambda: len(unchecked.associations()) == 2 and unchecked.associations(), 10, "two")
        for pid in held:
            os.kill(pid, signal.SIGKILL)  # no chance to release its slot itself
        # Reaped by the listener (a zombie still has its /proc entry): only then is its slot free.
        procs.wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in held), 10, "them to be reaped")
        again = _idle_connections(unchecked.port, 2)
        try:
            procs.wait_for(lambda: len(unchecked.associations()) == 2, 10, "two new associations from the same peer")
        finally:
            for sock in again:
                sock.close()
    finally:
        for sock in first:
            sock.close()
    assert_serves_a_node(unchecked.port, tmp_path)


def test_a_slow_sender_that_never_finishes_its_a_associate_rq_is_dropped(guarded, node, tmp_path):
    node.append(guarded)
    sock = connect(guarded.port)
    sock.sendall(b"\x01\x00" + struct.pack(">L", 200))
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 15 and not closed:
        try:
            sock.send(b"\x00")  # one byte at a time, never the whole request
        except OSError:
            closed = True
            break
        readable, _, _ = select.select([sock], [], [], 0.3)
        if readable:
            try:
                closed = sock.recv(1) == b""
            except ConnectionResetError:
                closed = True
    elapsed = time.monotonic() - started
    sock.close()
    assert closed, "the server kept the connection"
    assert 1.5 <= elapsed < 6, elapsed  # DICOM_ASSOCIATE_TIMEOUT=2
    wait_log(guarded, "connection from 127.0.0.1 dropped: no A-ASSOCIATE-RQ within DICOM_ASSOCIATE_TIMEOUT (2s)")
    assert_serves_a_node(guarded.port, tmp_path)


# --- Permissions and disk ----------------------------------------------------------------------


def test_a_retrieving_node_that_may_not_store_keeps_only_the_scp_role_for_c_get(system, node, tmp_path):
    ModalityNode.objects.create(ae_title="VIEWER", host="127.0.0.1", port=104, may_store=False)
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate(
        "127.0.0.1", system.port, ae_title="IMAGING", ext_neg=[build_role(CTImageStorage, scp_role=True)]
    )
    assert assoc.is_established
    accepted = {cx.abstract_syntax: cx for cx in assoc.accepted_contexts}
    rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
    assoc.release()
    assert StudyRootQueryRetrieveInformationModelGet in accepted
    assert accepted[CTImageStorage].as_scp and not accepted[CTImageStorage].as_scu  # VIEWER receives, never sends
    assert rejected == {MRImageStorage}  # proposed to send us MR images: refused


def test_below_the_free_space_watermark_c_store_answers_out_of_resources_and_keeps_what_is_stored(
    pipeline, system, node, tmp_path, fast_receive
):
    full = _server(pipeline, "runscp-full", fast_receive, STORAGE_MIN_FREE_MB=str(1024**4))
    node.append(full)
    try:
        [path] = dicomgen.ct_series(tmp_path, 1, size=32)
        assert storescu(system.port, path).returncode == 0
        ds = pydicom.dcmread(path)
        stored = storage.absolute(storage.instance_relpath(ds.SOPInstanceUID))
        before = stored.read_bytes()
        ds.PatientName = "CHANGED^NAME"
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", full.port, ae_title="IMAGING")
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == 0xA700
        assert stored.read_bytes() == before
        wait_log(full, "refused (0xA700)")
        line = [line for line in full.log().splitlines() if ds.SOPInstanceUID in line]
        assert len(line) == 1 and "below STORAGE_MIN_FREE_MB" in line[0], line
        assert echoscu(full.port).returncode == 0
    finally:
        procs.wait_for(full.idle, 30, "the associations to end")
        procs.stop(full.proc)
