"""runscp's spare processes: served associations come back as spares; spares are replaced out of the way.

The real runscp, DCMTK's clients and pynetdicom as SCU; which process serves an
association is read from /proc (the children's names, network/scp.py).
"""

import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove, Verification

from network.admission import SpareBoard
from network.models import AssociationLog
from network.scp import ASSOCIATION_NAME, SPARE_NAME, ForkingAssociationServer
from tests import dicomgen, procs
from tests.conftest import start_scp
from tests.test_ingest_e2e import echoscu, storescu

pytestmark = pytest.mark.e2e


def spares_of(scp) -> set[int]:
    return {pid for pid in procs.children(scp.pid) if procs.name(pid) == SPARE_NAME}


def serving(scp) -> int:
    """The one child serving an association now."""
    found = procs.wait_for(
        lambda: [pid for pid in procs.children(scp.pid) if procs.name(pid) == ASSOCIATION_NAME] or None,
        30,
        "the association's process",
    )
    assert len(found) == 1
    return found[0]


def left_and_replaced(scp, pid: int) -> None:
    procs.wait_for(lambda: pid not in procs.children(scp.pid) or None, 30, "the process to leave")
    procs.wait_for(lambda: len(spares_of(scp)) == 2, 30, "a spare in its place")


def associate(port, *contexts):
    ae = AE(ae_title="MODALITY")
    for context in contexts or (Verification,):
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMAGING")
    assert assoc.is_established
    return assoc


def started(system, name, **env):
    scp, port = start_scp({**system.env, **env}, system.logs, name=name)
    # start_scp's readiness probe was an association: wait until its process is a spare
    # again, or gone and replaced.
    procs.wait_for(
        lambda: set(procs.children(scp.pid)) == spares_of(scp) and len(spares_of(scp)) == 2, 30, "two spares alone"
    )
    return scp, port


def stopped(scp, port) -> None:
    scp.terminate()
    assert scp.wait(60) == 0
    assert not procs.children(scp.pid)
    assert not procs.port_open(port), "the spares, served before, do not keep the port open"


def test_the_processes_that_served_dcmtk_clients_wait_for_the_next_associations(system, tmp_path):
    scp, port = started(system, "runscp-reuse", DICOM_SPARE_REFILL_AFTER_MS="60000")
    try:
        before = spares_of(scp)
        assert len(before) == 2
        for _ in range(3):
            assert echoscu(port).returncode == 0
            procs.wait_for(lambda: set(procs.children(scp.pid)) == spares_of(scp) == before, 30, "the same spares")
        result = storescu(port, *dicomgen.ct_series(tmp_path / "ct", 3, size=32, patient_id="REUSE"))
        assert result.returncode == 0, result.stderr
        procs.wait_for(lambda: set(procs.children(scp.pid)) == spares_of(scp) == before, 30, "the same spares")
        # Each association was served and logged as if by a process of its own.
        logged = AssociationLog.objects.filter(calling_ae="MODALITY", outcome=AssociationLog.Outcome.RELEASED)
        procs.wait_for(lambda: logged.count() == 4 or None, 30, "the associations logged")
        assert logged.filter(images_received=3).count() == 1
    finally:
        stopped(scp, port)


def test_a_process_serves_at_most_its_share_of_associations(system):
    scp, port = started(system, "runscp-share", DICOM_SPARE_REFILL_AFTER_MS="60000", DICOM_ASSOCIATIONS_PER_PROCESS="2")
    try:
        served = []
        for _ in range(6):
            assoc = associate(port)
            pid = serving(scp)
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
            served.append(pid)
            procs.wait_for(lambda p=pid: procs.name(p) in (SPARE_NAME, ""), 30, "the process to leave its association")
        counts = {pid: served.count(pid) for pid in served}
        assert max(counts.values()) == 2, served  # served again
        assert len(counts) >= 3, served  # and left after its second
        procs.wait_for(lambda: len(spares_of(scp)) == 2, 30, "two spares")
    finally:
        stopped(scp, port)


def test_a_process_that_served_pynetdicoms_path_leaves(system):
    scp, port = started(system, "runscp-leave", DICOM_SPARE_REFILL_AFTER_MS="60000")
    try:
        # A C-MOVE context: pynetdicom serves the association, with its threads.
        assoc = associate(port, Verification, StudyRootQueryRetrieveInformationModelMove)
        pid = serving(scp)
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        left_and_replaced(scp, pid)
        assert echoscu(port).returncode == 0
    finally:
        stopped(scp, port)


def test_a_spare_taken_is_replaced_once_its_association_ends(system):
    scp, port = started(
        system, "runscp-refill", DICOM_SPARE_REFILL_AFTER_MS="60000", DICOM_ASSOCIATIONS_PER_PROCESS="1"
    )
    try:
        assoc = associate(port)
        pid = serving(scp)
        assert len(spares_of(scp)) == 1
        assoc.release()
        left_and_replaced(scp, pid)
    finally:
        stopped(scp, port)


def test_a_spare_taken_is_replaced_after_refill_after_while_its_association_lasts(system):
    scp, port = started(system, "runscp-refill-late", DICOM_SPARE_REFILL_AFTER_MS="300")
    try:
        assoc = associate(port)
        pid = serving(scp)
        procs.wait_for(lambda: len(spares_of(scp)) == 2, 30, "a spare in its place")
        assert assoc.is_established and procs.name(pid) == ASSOCIATION_NAME
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        # Back from its association with two spares waiting, the process leaves.
        procs.wait_for(lambda: pid not in procs.children(scp.pid) or None, 30, "the process to leave")
        assert len(spares_of(scp)) == 2
    finally:
        stopped(scp, port)


def test_the_listener_keeps_fewer_spares_while_taken_ones_are_not_replaced(settings):
    server = object.__new__(ForkingAssociationServer)  # the bookkeeping alone, no socket
    server.unreplaced = {}
    now = time.monotonic()
    assert server._spares_wanted(2, now) == 2
    server.unreplaced = {101: now + 1.0}
    assert server._spares_wanted(2, now) == 1
    server.unreplaced = {101: now + 1.0, 102: now + 1.0}
    assert server._spares_wanted(2, now) == 1, "never fewer than one"
    assert server._spares_wanted(3, now) == 1
    assert server._spares_wanted(2, now + 2.0) == 2, "replaced after DICOM_SPARE_REFILL_AFTER_MS"
    assert server.unreplaced == {}


def test_a_process_back_from_its_association_stays_a_spare_only_if_fewer_wait():
    board = SpareBoard(4)
    board.mark(0, True)
    assert board.rejoin(1, wanted=2)
    assert board.count() == 2
    assert not board.rejoin(2, wanted=2)
    assert board.count() == 2
    board.mark(0, False)  # took a connection
    assert board.rejoin(2, wanted=2)
    assert board.rejoin(2, wanted=2), "its own mark does not count against it"
    assert board.count() == 2
