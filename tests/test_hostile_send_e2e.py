"""Our own sends to peers that cannot or will not take them: C-GET requesters, C-MOVE destinations, send jobs.

A peer that announces a maximum PDU of a few bytes, stops reading, or answers
our C-STORE requests with something else gets an A-ABORT (or a closed
connection) and failed sub-operations, in bounded time and memory; afterwards
the server still serves a registered node. Each runs against a runscp of its
own with short timeouts, with DICOM_FAST_SEND on and off.
"""

import socket
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from network.models import AssociationLog, ModalityNode, SendJob
from network.scp import SPARE_NAME
from records.models import Study
from tests import dicomgen, procs
from tests.conftest import start_scp
from tests.storescp import storescp
from tests.test_move_e2e import archive, identifier, movescu, pynetdicom_move, received

pytestmark = pytest.mark.e2e

SEND_TIMEOUT = 2  # DICOM_SEND_TIMEOUT of our runscp and of the send jobs
DIMSE_TIMEOUT = 5
ACSE_TIMEOUT = 5
# Long enough for every wait above to run out once, on a loaded two-core machine.
BOUND = 45
# 8 MiB each: more than the kernel buffers on both sides of a loopback connection
# hold (4 MiB to send at most, tcp_wmem), so a peer that stops reading blocks the write.
LARGE = 2048
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

both_senders = pytest.mark.parametrize("fast_send", [True, False], ids=["fastsend", "pynetdicom"])


@dataclass
class Server:
    proc: object
    port: int
    name: str
    logs: Path

    def log(self) -> str:
        return (self.logs / f"{self.name}.log").read_text(errors="replace")


@pytest.fixture(scope="module", params=[True, False], ids=["fastsend", "pynetdicom"])
def hostile_scp(request, pipeline):
    name = f"runscp-hostile-{request.param_index}"
    env = {
        **pipeline.env,
        "DICOM_FAST_SEND": "1" if request.param else "0",
        "DICOM_SEND_TIMEOUT": str(SEND_TIMEOUT),
        "DICOM_DIMSE_TIMEOUT": str(DIMSE_TIMEOUT),
        "DICOM_ACSE_TIMEOUT": str(ACSE_TIMEOUT),
    }
    proc, port = start_scp(env, pipeline.logs, name=name)
    yield Server(proc, port, name, pipeline.logs)
    procs.stop(proc)


@pytest.fixture
def scp(system, hostile_scp):
    """Our runscp with short timeouts; MODALITY (127.0.0.1) is a node. Its associations end before the next test."""
    yield hostile_scp
    procs.wait_for(
        lambda: not procs.children(hostile_scp.proc.pid, but=SPARE_NAME), 60, "the hostile runscp's associations to end"
    )


@pytest.fixture
def small_study(tmp_path):
    uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    return uid, archive(*dicomgen.ct_series(tmp_path / "small", 2, size=32, study_uid=uid, patient_id="SMALL"))


def assert_still_serves(scp, small_study, tmp_path) -> None:
    """The registered node echoes, and moves a small study to a DCMTK storescp."""
    echo = procs.dcmtk("echoscu", "-aet", "MODALITY", "-aec", "IMAGING", "127.0.0.1", str(scp.port), timeout=30)
    assert echo.returncode == 0, echo.stderr
    study_uid, stored = small_study
    out = tmp_path / "after"
    with storescp(out, tmp_path / "after-storescp.log", ae_title="AFTER") as port:
        ModalityNode.objects.create(ae_title="AFTER", host="127.0.0.1", port=port)
        result = movescu(
            scp.port, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}", destination="AFTER"
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert set(received(out)) == set(stored)


class Destination:
    """A pynetdicom Storage SCP on 127.0.0.1 that misbehaves as told.

    - ``max_pdu``: the maximum PDU length it announces;
    - ``stop_reading``: its DUL thread stops at the first P-DATA PDU, so its TCP
      window fills and the sender's write blocks;
    - ``answer``: its C-STORE responses answer another Message ID ("message-id"),
      name another instance ("instance"), or follow a P-DATA whose command set is
      garbage ("garbage").
    """

    def __init__(self, *, max_pdu: int = 16382, stop_reading: bool = False, answer: str = ""):
        self.stored: list[str] = []
        self.go_on = threading.Event()
        self._answer = answer
        ae = AE(ae_title="DEST")
        ae.maximum_pdu_size = max_pdu
        ae.add_supported_context(CTImageStorage, UNCOMPRESSED)
        handlers = [(evt.EVT_C_STORE, self._store)]
        if stop_reading:
            handlers.append((evt.EVT_PDU_RECV, self._stop_reading))
        if answer in ("message-id", "instance"):
            handlers.append((evt.EVT_DIMSE_SENT, self._tamper))
        self.port = procs.free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)

    def _stop_reading(self, event):
        if isinstance(event.pdu, P_DATA_TF):
            self.go_on.wait(120)  # the DUL thread reads no more until the test ends

    def _store(self, event):
        self.stored.append(event.request.AffectedSOPInstanceUID)
        if self._answer == "garbage":
            pdv = bytes([event.context.context_id, 0x03]) + b"\xff" * 16  # "last command fragment", no command set
            event.assoc.dul.socket.send(struct.pack(">BBLL", 0x04, 0, len(pdv) + 4, len(pdv)) + pdv)
        return 0x0000

    def _tamper(self, event):
        # Before pynetdicom encodes the message: same lengths, other values.
        command = event.message.command_set
        if type(event.message).__name__ != "C_STORE_RSP":
            return
        if self._answer == "message-id":
            command.MessageIDBeingRespondedTo = (command.MessageIDBeingRespondedTo + 1) % 65536
        else:
            uid = str(command.AffectedSOPInstanceUID)
            command.AffectedSOPInstanceUID = uid[:-1] + ("2" if uid[-1] == "1" else "1")

    def close(self):
        self.go_on.set()
        self.server.shutdown()


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class PeakMemory(threading.Thread):
    """The largest resident size of runscp's association processes while it runs (Linux /proc)."""

    def __init__(self, runscp_pid: int):
        super().__init__(daemon=True)
        self._pid, self._done, self.peak_mb = runscp_pid, threading.Event(), 0.0

    def run(self):
        while not self._done.is_set():
            for child in procs.children(self._pid, but=SPARE_NAME):
                self.peak_mb = max(self.peak_mb, rss_mb(child))
            self._done.wait(0.05)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self.join()


def move_to(scp, destination: Destination, study_uid: str):
    """C-MOVE ``study_uid`` to DEST at ``destination``: (responses, seconds, peak MB of the association process)."""
    ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=destination.port)
    started = time.monotonic()
    with PeakMemory(scp.proc.pid) as memory:
        responses = pynetdicom_move(scp.port, identifier("STUDY", StudyInstanceUID=study_uid))
    return responses, time.monotonic() - started, memory.peak_mb


def assert_all_failed(responses, stored) -> None:
    final, final_identifier = responses[-1]
    assert final.Status == 0xA702, final  # all sub-operations failed
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (0, len(stored))
    failed = final_identifier.FailedSOPInstanceUIDList
    assert set([failed] if isinstance(failed, str) else failed) == set(stored)


def series(tmp_path, name: str, count: int, size: int) -> tuple[str, dict]:
    uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    return uid, archive(*dicomgen.ct_series(tmp_path / name, count, size=size, study_uid=uid, patient_id=name.upper()))


# --- C-GET: the requester is the peer ---------------------------------------------------------


@pytest.mark.parametrize("max_pdu", [1, 6, 512])
def test_a_c_get_requester_announcing_a_tiny_maximum_pdu_is_aborted_not_sent_images(
    scp, small_study, tmp_path, max_pdu
):
    study_uid, stored = series(tmp_path, "get", 3, 64)
    log_from = len(scp.log())
    got = []
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, UNCOMPRESSED)
    started = time.monotonic()
    assoc = ae.associate(
        "127.0.0.1",
        scp.port,
        ae_title="IMAGING",
        max_pdu=max_pdu,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, lambda event: got.append(event.request.AffectedSOPInstanceUID) or 0x0000)],
    )
    assert assoc.is_established
    query = identifier("STUDY", StudyInstanceUID=study_uid)
    statuses = [s for s, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet) if "Status" in s]
    procs.wait_for(lambda: not assoc.is_alive(), BOUND, "the association to end")
    assert time.monotonic() - started < BOUND
    assert assoc.is_aborted and not statuses and not got
    entry = procs.wait_for(
        lambda: AssociationLog.objects.filter(calling_ae="MODALITY", outcome="aborted").first(), 20, "the log"
    )
    # The first sub-operation failed, and ended the association: pynetdicom tries no other.
    assert "C-GET" in entry.services and entry.images_sent == 0 and entry.failures == 1
    lines = [line for line in scp.log()[log_from:].splitlines() if "aborting the association" in line]
    assert len(lines) == 1 and f"maximum PDU length of {max_pdu} bytes" in lines[0], lines
    assert "Traceback" not in scp.log()[log_from:]
    assert_still_serves(scp, small_study, tmp_path)


def test_a_c_get_requester_that_stops_reading_loses_its_association_in_bounded_time_and_memory(
    scp, small_study, tmp_path
):
    study_uid, _stored = series(tmp_path, "getstop", 2, LARGE)
    log_from = len(scp.log())
    go_on = threading.Event()

    def stop_reading(event):
        if isinstance(event.pdu, P_DATA_TF):
            go_on.wait(120)  # its DUL thread reads no more: our writes fill the TCP window

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, UNCOMPRESSED)
    assoc = ae.associate(
        "127.0.0.1",
        scp.port,
        ae_title="IMAGING",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_PDU_RECV, stop_reading)],
    )
    assert assoc.is_established
    query = identifier("STUDY", StudyInstanceUID=study_uid)
    getter = threading.Thread(
        target=lambda: list(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)), daemon=True
    )
    started = time.monotonic()
    try:
        with PeakMemory(scp.proc.pid) as memory:
            getter.start()
            entry = procs.wait_for(
                lambda: AssociationLog.objects.filter(calling_ae="MODALITY", outcome="aborted").first(),
                BOUND,
                "runscp to end the association",
            )
    finally:
        go_on.set()
    assert time.monotonic() - started < BOUND
    assert entry.images_sent == 0 and entry.failures == 1
    assert 0 < memory.peak_mb < 250, memory.peak_mb
    assert "aborting the association with MODALITY" in scp.log()[log_from:]
    getter.join(30)
    assert_still_serves(scp, small_study, tmp_path)


def test_a_c_cancel_between_sub_operations_is_no_wrong_response(scp, tmp_path):
    # The response check must not take the requester's C-CANCEL for an answer to our C-STORE.
    from tests.test_get_e2e import Getter

    study_uid, _stored = series(tmp_path, "cancel", 30, 16)
    log_from = len(scp.log())
    getter = Getter(scp.port)
    try:
        responses = getter.get(identifier("STUDY", StudyInstanceUID=study_uid), cancel_after=1)
    finally:
        getter.release()
    final = responses[-1][0]
    assert final.Status == 0xFE00 and final.NumberOfFailedSuboperations == 0
    assert len(getter.stored) == final.NumberOfCompletedSuboperations < 30
    assert "aborting the association" not in scp.log()[log_from:]


# --- C-MOVE: the destination is the peer ------------------------------------------------------


def test_a_c_move_destination_that_stops_reading_ends_with_failures_in_bounded_time_and_memory(
    scp, small_study, tmp_path
):
    study_uid, stored = series(tmp_path, "stop", 3, LARGE)
    destination = Destination(stop_reading=True)
    try:
        responses, seconds, peak_mb = move_to(scp, destination, study_uid)
    finally:
        destination.close()
    assert_all_failed(responses, stored)
    assert seconds < BOUND
    # An association process is some 100 MB (Django, pydicom, pynetdicom); one 8 MiB
    # image in flight at most, never the study, nor buffers that keep growing.
    assert 0 < peak_mb < 250, peak_mb
    assert "aborting the association with DEST" in scp.log()
    assert_still_serves(scp, small_study, tmp_path)


@pytest.mark.parametrize("answer", ["message-id", "instance", "garbage"])
def test_a_c_move_destination_answering_something_else_is_aborted_and_every_image_failed(
    scp, small_study, tmp_path, answer
):
    study_uid, stored = series(tmp_path, "answer", 3, 32)
    destination = Destination(answer=answer)
    try:
        responses, seconds, _peak = move_to(scp, destination, study_uid)
    finally:
        destination.close()
    assert_all_failed(responses, stored)
    assert seconds < BOUND
    assert len(destination.stored) == 1  # the first image went; its answer ended the association
    assert_still_serves(scp, small_study, tmp_path)


def test_a_c_move_destination_announcing_a_6_byte_maximum_pdu_gets_no_image(scp, small_study, tmp_path):
    study_uid, stored = series(tmp_path, "tiny", 3, 32)
    destination = Destination(max_pdu=6)
    try:
        responses, seconds, _peak = move_to(scp, destination, study_uid)
    finally:
        destination.close()
    assert_all_failed(responses, stored)
    assert seconds < BOUND and destination.stored == []
    assert "maximum PDU length of 6 bytes" in scp.log()
    assert_still_serves(scp, small_study, tmp_path)


def connects(address, keep: list) -> bool:
    """Does a TCP connection to ``address`` complete within half a second? (Kept open, in ``keep``.)"""
    probe = socket.socket()
    keep.append(probe)
    probe.settimeout(0.5)
    try:
        probe.connect(address)
    except OSError:
        return False
    return True


def test_a_c_move_destination_that_never_completes_the_connection_gets_a801_in_bounded_time(scp, small_study, tmp_path):
    study_uid, _stored = series(tmp_path, "syn", 1, 16)
    # A listener that never accepts, its backlog full: the kernel drops further SYNs,
    # as a firewall or a powered-off host behind a router does.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        procs.wait_for(lambda: not connects(listener.getsockname(), fillers), 20, "the listener to drop SYNs")
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=listener.getsockname()[1])
        started = time.monotonic()
        responses = pynetdicom_move(scp.port, identifier("STUDY", StudyInstanceUID=study_uid))
        seconds = time.monotonic() - started
    finally:
        for s in (*fillers, listener):
            s.close()
    # pynetdicom's own connection timeout is none: the kernel's, over two minutes.
    assert seconds < ACSE_TIMEOUT + 15
    assert [s.Status for s, _ in responses] == [0xA801]
    assert_still_serves(scp, small_study, tmp_path)


# --- Send jobs: the node is the peer (network.scu.send_study, in this process) -----------------


def send_job(study_uid: str, port: int) -> SendJob:
    from network import scu

    study = Study.objects.get(study_instance_uid=study_uid)
    node = ModalityNode.objects.get_or_create(ae_title="DEST", defaults={"host": "127.0.0.1", "port": port})[0]
    node.port = port
    node.save()
    job = SendJob.objects.create(study=study, study_instance_uid=study_uid, node=node, destination=str(node))
    return scu.send_study(study.pk, node.pk, job.pk, timeout=DIMSE_TIMEOUT)


@both_senders
@pytest.mark.parametrize(
    "misbehaviour",
    [{"max_pdu": 6}, {"max_pdu": 100}, {"stop_reading": True}, {"answer": "message-id"}, {"answer": "garbage"}],
    ids=["max-pdu-6", "max-pdu-100", "stops-reading", "wrong-message-id", "garbage"],
)
def test_a_send_job_to_a_hostile_node_fails_in_bounded_time(
    transactional_db, tmp_path, settings, fast_send, misbehaviour
):
    settings.DICOM_FAST_SEND = fast_send
    settings.DICOM_SEND_TIMEOUT = SEND_TIMEOUT
    study_uid, stored = series(tmp_path, "job", 2, LARGE if misbehaviour.get("stop_reading") else 32)
    destination = Destination(**misbehaviour)
    started = time.monotonic()
    try:
        job = send_job(study_uid, destination.port)
    finally:
        destination.close()
    assert time.monotonic() - started < BOUND
    assert (job.state, job.sent, job.failed) == ("failed", 0, 2), job.failures
    assert {f["sop_instance_uid"] for f in job.failures} == set(stored)
    if "max_pdu" in misbehaviour:
        assert f"maximum PDU length of {misbehaviour['max_pdu']} bytes" in job.error
        assert destination.stored == []
    # The same sender sends the same study to a node that behaves.
    with storescp(tmp_path / "in", tmp_path / "storescp.log", ae_title="DEST") as port:
        job = send_job(study_uid, port)
    assert (job.state, job.sent) == ("succeeded", 2)
    assert set(received(tmp_path / "in")) == set(stored)


def test_it_announces_what_it_refuses_in_the_log_once(transactional_db, tmp_path, settings, caplog):
    settings.DICOM_FAST_SEND = True
    study_uid, _stored = series(tmp_path, "once", 3, 32)
    destination = Destination(max_pdu=100)
    try:
        with caplog.at_level("WARNING", logger="network"):
            job = send_job(study_uid, destination.port)
    finally:
        destination.close()
    assert job.state == "failed" and job.failed == 3
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("network")]
    assert lines == [
        f"aborting the association with DEST at 127.0.0.1:{destination.port}: it announced a maximum PDU "
        "length of 100 bytes, below DICOM_MIN_PEER_PDU (1024)"
    ]


def test_a_study_of_large_images_really_exceeds_the_socket_buffers(tmp_path):
    path = dicomgen.ct_series(tmp_path, 1, size=LARGE)[0]
    # More than the send buffer at its largest (4 MiB, tcp_wmem) and what the receiver takes before it stops.
    assert path.stat().st_size > 6 * 1024 * 1024
    assert pydicom.dcmread(path).Rows == LARGE
