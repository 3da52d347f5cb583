"""Access control in runscp: known nodes only, each service as allowed, every association logged."""

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from network.models import AssociationLog, ModalityNode
from tests import dicomgen, procs
from tests.conftest import RECEIVE_PATHS

pytestmark = pytest.mark.e2e


@pytest.fixture(**RECEIVE_PATHS)
def fast_receive(request) -> str:
    """Access checks and the association log hold on our receive path (network/fastrecv.py) and on pynetdicom's."""
    return request.param


def storescu(port, *files, calling="MODALITY", called="IMAGING"):
    return procs.dcmtk("storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files))


def echoscu(port, calling="MODALITY", called="IMAGING"):
    return procs.dcmtk("echoscu", "-aet", calling, "-aec", called, "127.0.0.1", str(port))


def last_log(calling_ae) -> AssociationLog:
    return procs.wait_for(
        lambda: AssociationLog.objects.filter(calling_ae=calling_ae).first(),
        20,
        f"the association of {calling_ae} to be logged",
    )


def rejection(calling="MODALITY", called="IMAGING", port=None, or_closed=False):
    """Associate with pynetdicom and return the A-ASSOCIATE-RJ (result, source, reason), or None if accepted.

    ``or_closed``: "closed" if the server closed the connection without an answer.
    """
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if assoc.is_established:
        assoc.release()
        return None
    if or_closed and assoc.is_aborted:
        return "closed"
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    return rj.result, rj.result_source, rj.diagnostic


def test_a_known_node_stores_and_its_association_is_logged(system, tmp_path):
    files = dicomgen.ct_series(tmp_path, 3, size=32)
    result = storescu(system.port, *files)
    assert result.returncode == 0, result.stderr
    entry = last_log("MODALITY")
    assert entry.outcome == "released"
    assert entry.images_received == 3 and entry.failures == 0
    assert "C-STORE" in entry.services
    assert entry.node.ae_title == "MODALITY" and entry.peer_host == "127.0.0.1"
    assert entry.called_ae == "IMAGING" and entry.ended_at >= entry.started_at


def test_an_unknown_calling_ae_is_rejected_and_logged(system, tmp_path):
    assert rejection(calling="STRANGER", port=system.port) == (1, 1, 3)
    result = storescu(system.port, *dicomgen.ct_series(tmp_path, 1, size=16), calling="STRANGER")
    assert result.returncode != 0
    entry = last_log("STRANGER")
    assert entry.outcome == "rejected" and "unknown calling AE title" in entry.reason
    assert entry.node is None


def test_a_wrong_called_ae_is_rejected(system):
    assert rejection(called="NOTUS", port=system.port) == (1, 1, 7)
    assert "is not ours" in last_log("MODALITY").reason


def test_a_known_ae_title_from_another_address_is_rejected(system):
    ModalityNode.objects.create(ae_title="CT_ROOM_2", host="192.0.2.10", port=104)
    assert rejection(calling="CT_ROOM_2", port=system.port) == (1, 1, 3)
    assert "not from 192.0.2.10" in last_log("CT_ROOM_2").reason


def test_a_node_given_by_host_name_is_recognised(system):
    ModalityNode.objects.create(ae_title="BY_NAME", host="localhost", port=104)
    assert rejection(calling="BY_NAME", port=system.port) is None


def test_a_node_that_may_not_store_is_refused_storage_at_association_time(system, tmp_path):
    ModalityNode.objects.create(ae_title="QUERY_ONLY", host="127.0.0.1", port=104, may_store=False)
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="QUERY_ONLY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", system.port, ae_title="IMAGING")
    assert assoc.is_established
    [refused] = assoc.rejected_contexts
    accepted = [cx.abstract_syntax for cx in assoc.accepted_contexts]
    assert refused.abstract_syntax == ds.SOPClassUID and refused.result == 0x03  # abstract syntax not supported
    assert accepted == [Verification]
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    entry = last_log("QUERY_ONLY")
    assert entry.failures == 1 and entry.images_received == 0 and "C-STORE" in entry.services
    assert "storage from QUERY_ONLY refused at association time: the node lacks may_store" in system.log("runscp")
    assert echoscu(system.port, calling="QUERY_ONLY").returncode == 0


def test_an_admin_change_applies_to_the_next_association_without_restart(system):
    assert echoscu(system.port).returncode == 0
    ModalityNode.objects.filter(ae_title="MODALITY").update(active=False)
    # Rejected by the association's check at once; within DICOM_PEER_CACHE_SECONDS
    # 127.0.0.1 is no active node's address and the connection is closed at accept().
    assert rejection(port=system.port, or_closed=True) in ((1, 1, 3), "closed")
    ModalityNode.objects.filter(ae_title="MODALITY").update(active=True)
    assert echoscu(system.port).returncode == 0


def test_storescu_is_refused_for_a_wrong_called_ae_a_wrong_address_and_a_missing_permission(system, tmp_path):
    ModalityNode.objects.create(ae_title="ELSEWHERE", host="192.0.2.10", port=104)
    ModalityNode.objects.create(ae_title="NO_STORE", host="127.0.0.1", port=104, may_store=False)
    [path] = dicomgen.ct_series(tmp_path, 1, size=16)

    wrong_called = storescu(system.port, path, called="NOTUS")
    assert wrong_called.returncode != 0 and "Called AE Title Not Recognized" in wrong_called.stderr
    wrong_address = storescu(system.port, path, calling="ELSEWHERE")
    assert wrong_address.returncode != 0 and "Calling AE Title Not Recognized" in wrong_address.stderr
    not_allowed = storescu(system.port, path, calling="NO_STORE")
    # Refused at association time: the storage presentation context is rejected.
    assert not_allowed.returncode != 0 and "No Acceptable Presentation Contexts" in not_allowed.stderr, (
        not_allowed.stderr
    )

    assert last_log("ELSEWHERE").outcome == "rejected"
    assert last_log("NO_STORE").failures == 1
    assert AssociationLog.objects.filter(called_ae="NOTUS", outcome="rejected").exists()
