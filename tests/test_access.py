"""Access decisions as plain functions, and the modality command."""

import datetime as dt
import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from network import access
from network.models import AssociationLog, ModalityNode

pytestmark = pytest.mark.django_db


@pytest.fixture
def ct(db):
    return ModalityNode.objects.create(ae_title="CT1", host="10.0.0.5", port=104)


def test_a_known_active_node_from_its_host_is_accepted(ct):
    decision = access.decide(called_ae="IMAGING", calling_ae="CT1", peer_address="10.0.0.5")
    assert decision.reject is None and decision.node == ct


def test_a_node_is_read_by_its_title_in_one_query_as_the_orm_reads_it(ct, django_assert_num_queries):
    ModalityNode.objects.create(ae_title="ct1", host="10.0.0.6", port=104, may_store=False)
    for title in ("CT1", "ct1", "CT2", "", "CT1' OR '1'='1"):
        with django_assert_num_queries(1):
            node = access.node_titled(title)
        expected = ModalityNode.objects.filter(ae_title=title).first()
        assert node == expected
        if node is not None:  # every field as the ORM converts it (SQLite's booleans and datetimes too)
            fields = [field.attname for field in ModalityNode._meta.concrete_fields]
            values = [(getattr(node, f), type(getattr(node, f))) for f in fields]
            assert values == [(getattr(expected, f), type(getattr(expected, f))) for f in fields]
            assert not node._state.adding and node._state.db == "default"


def test_ae_titles_are_compared_without_padding(ct):
    assert access.decide(called_ae="IMAGING ", calling_ae=" CT1  ", peer_address="10.0.0.5").reject is None


@pytest.mark.parametrize(
    ("called", "calling", "peer", "reject"),
    [
        ("OTHER", "CT1", "10.0.0.5", access.REJECT_CALLED_AE),
        ("IMAGING", "MR9", "10.0.0.5", access.REJECT_CALLING_AE),
        ("IMAGING", "CT1", "10.0.0.6", access.REJECT_CALLING_AE),
        ("IMAGING", "ct1", "10.0.0.5", access.REJECT_CALLING_AE),  # AE titles are case-sensitive
    ],
)
def test_it_rejects_what_does_not_match(ct, called, calling, peer, reject):
    assert access.decide(called_ae=called, calling_ae=calling, peer_address=peer).reject == reject


def test_an_inactive_node_is_rejected(ct):
    ct.active = False
    ct.save()
    decision = access.decide(called_ae="IMAGING", calling_ae="CT1", peer_address="10.0.0.5")
    assert decision.reject == access.REJECT_CALLING_AE and "inactive" in decision.reason


def test_the_checks_can_be_relaxed(ct, settings):
    settings.DICOM_CHECK_HOST = False
    settings.DICOM_CHECK_CALLED_AE = False
    assert access.decide(called_ae="ANY", calling_ae="CT1", peer_address="192.0.2.1").reject is None


@pytest.mark.parametrize(
    ("host", "peer", "matches"),
    [
        ("10.0.0.5", "10.0.0.5", True),
        ("10.0.0.5", "::ffff:10.0.0.5", True),
        ("localhost", "127.0.0.1", True),
        ("10.0.0.5", "10.0.0.50", False),
        ("no-such-host.invalid", "127.0.0.1", False),
        ("10.0.0.5", "not an address", False),
    ],
)
def test_host_matching(host, peer, matches):
    assert access.host_matches(host, peer) is matches


def test_open_and_close_session_write_the_log(ct):
    decision, session = access.open_session(
        called_ae="IMAGING", calling_ae="CT1", peer_address="10.0.0.5", peer_port=40000
    )
    session.services.update({"C-STORE", "C-ECHO"})
    session.images_received = 12
    access.close_session(session, AssociationLog.Outcome.RELEASED)
    entry = AssociationLog.objects.get()
    assert (entry.outcome, entry.services, entry.images_received) == ("released", "C-ECHO,C-STORE", 12)
    assert entry.node == ct and entry.ended_at is not None


def test_a_rejected_request_is_logged_with_its_reason(ct):
    decision, session = access.open_session(
        called_ae="IMAGING", calling_ae="STRANGER", peer_address="10.9.9.9", peer_port=None
    )
    assert decision.reject and not session.allows("may_store")
    entry = AssociationLog.objects.get()
    assert entry.outcome == "rejected" and "unknown calling AE title" in entry.reason


def test_old_log_entries_are_pruned():
    now = timezone.now()
    for days in (1, 89, 91, 400):
        AssociationLog.objects.create(
            started_at=now - dt.timedelta(days=days), calling_ae="X", called_ae="Y", peer_host="10.0.0.1"
        )
    assert access.prune_log(older_than_days=90) == 2
    assert AssociationLog.objects.count() == 2


def run(*args) -> str:
    out = io.StringIO()
    call_command("modality", *args, stdout=out)
    return out.getvalue()


def test_the_modality_command_adds_lists_updates_and_removes_nodes():
    assert "added DR1" in run("add", "DR1", "10.1.1.1", "104", "--no-query", "--charset", "GB18030")
    node = ModalityNode.objects.get(ae_title="DR1")
    assert (node.may_store, node.may_query, node.may_retrieve, node.fallback_charset) == (True, False, True, "GB18030")
    assert "updated DR1" in run("add", "DR1", "10.1.1.2", "11112", "--no-store")
    node.refresh_from_db()
    assert (node.host, node.port, node.may_store, node.may_query) == ("10.1.1.2", 11112, False, True)
    assert "DR1" in run("list") and "10.1.1.2:11112" in run("list")
    assert "removed DR1" in run("remove", "DR1")
    assert not ModalityNode.objects.exists()
    assert "no nodes" in run("list")


@pytest.mark.parametrize("title", ["THIS_TITLE_IS_TOO_LONG", "BAD\\TITLE", "   "])
def test_the_modality_command_refuses_an_invalid_ae_title(title):
    with pytest.raises(CommandError, match="ae_title"):
        run("add", title, "10.1.1.1", "104")
    assert not ModalityNode.objects.exists()


def test_removing_an_unknown_node_says_so():
    with pytest.raises(CommandError, match="no node"):
        run("remove", "NOPE")
