"""The bounds on hostile peers, as plain functions: PDU reads, slots per peer, known addresses, refusal logs."""

import logging
import socket
import struct

import pynetdicom
import pytest
from pynetdicom import build_role
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from network import access, admission, guard, reactor
from network.models import ModalityNode


def test_it_guards_the_pinned_pynetdicom():
    # If this fails after an upgrade, re-read pynetdicom's DULServiceProvider._read_pdu_data,
    # DIMSEServiceProvider.receive_primitive and DIMSEMessage.decode_msg before adding the
    # new version to SUPPORTED_VERSIONS: guard.py stands in for them.
    assert pynetdicom.__version__ in guard.SUPPORTED_VERSIONS
    assert guard.supported()


class Trickle:
    """A socket that hands out what it holds a few bytes at a time."""

    def __init__(self, data: bytes, per_call: int):
        self.data, self.per_call = data, per_call
        self.largest_buffer = 0

    def recv_into(self, view, size):
        self.largest_buffer = max(self.largest_buffer, len(view.obj) if hasattr(view, "obj") else size)
        piece, self.data = self.data[: min(size, self.per_call)], self.data[min(size, self.per_call) :]
        view[: len(piece)] = piece
        return len(piece)


def test_a_pdu_body_is_read_into_a_buffer_that_grows_only_with_what_arrived():
    sock = Trickle(b"x" * 1000, per_call=100)
    data = reactor._recv_whole(sock, 4 * 1024**3)  # claimed 4 GiB, sent 1000 bytes, then closed
    assert bytes(data) == b"x" * 1000
    assert sock.largest_buffer <= reactor._FIRST_READ


def test_a_pdu_body_longer_than_the_first_read_is_read_whole():
    payload = bytes(range(256)) * 1024  # 256 KiB, four times the first read
    data = reactor._recv_whole(Trickle(payload, per_call=50_000), len(payload))
    assert bytes(data) == payload


def test_the_peer_table_caps_each_address_and_frees_a_slot_on_release():
    table = admission.PeerTable(4)
    assert table.claim(0, "127.0.0.2", limit=2)
    assert table.claim(1, "127.0.0.2", limit=2)
    assert not table.claim(2, "127.0.0.2", limit=2)  # the third from that address
    assert table.claim(2, "127.0.0.1", limit=2)  # another address is not counted with it
    assert table.count("127.0.0.2") == 2
    table.release(0)  # what the listener does when it reaps a child, however it died
    assert table.claim(3, "127.0.0.2", limit=2)
    assert table.count("::ffff:127.0.0.2") == 2  # IPv4-mapped IPv6 is the same peer


def test_the_peer_table_without_a_limit_admits_everyone():
    table = admission.PeerTable(3)
    assert all(table.claim(slot, "10.0.0.1", limit=0) for slot in range(3))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.django_db
def test_known_peers_learn_a_new_node_at_once_and_forget_a_removed_one_within_the_ttl():
    clock = Clock()
    known = admission.KnownPeers(ttl=5, clock=clock)
    assert not known.knows("127.0.0.9")
    node = ModalityNode.objects.create(ae_title="NEW", host="127.0.0.9", port=104)
    assert known.knows("127.0.0.9")  # an address not known makes it read again
    node.active = False
    node.save()
    clock.now = 4
    assert known.knows("127.0.0.9")  # still cached
    clock.now = 5
    assert not known.knows("127.0.0.9")


@pytest.mark.django_db
def test_known_peers_resolve_host_names_and_cache_the_resolution():
    clock = Clock()
    calls = []

    def resolve(host, port, proto):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, proto, "", ("192.0.2.7", 0))]

    ModalityNode.objects.create(ae_title="BY_NAME", host="ct-room.example", port=104)
    known = admission.KnownPeers(ttl=5, clock=clock, resolve=resolve)
    assert known.knows("192.0.2.7")
    assert not known.knows("192.0.2.8")  # read again, the name not resolved again
    assert calls == ["ct-room.example"]
    clock.now = 6
    assert known.knows("192.0.2.7")
    assert calls == ["ct-room.example"] * 2


def test_a_flood_of_refusals_writes_a_few_lines_with_counts(caplog):
    clock = Clock()
    refusals = admission.RefusalLog(interval=10, immediate=5, clock=clock)
    with caplog.at_level(logging.WARNING, logger="network.admission"):
        for i in range(5000):
            clock.now = i / 1000
            refusals.refused("127.0.0.2", admission.NOT_A_NODE)
        refusals.refused("127.0.0.3", admission.PEER_LIMIT)
        clock.now = 11
        refusals.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert (
        lines[0] == "connection from 127.0.0.2 refused at accept: not the address of any active node (DICOM_CHECK_HOST)"
    )
    assert "127.0.0.3 refused at accept: too many associations" in lines[1]
    assert lines[2].startswith("4999 more connection(s) refused at accept in the last 11 s: 4999 from 127.0.0.2")


def _contexts():
    return [
        build_context(Verification),
        build_context(CTImageStorage),
        build_context(MRImageStorage),
    ]


def test_a_node_that_may_store_negotiates_every_context():
    node = ModalityNode(ae_title="CT", host="127.0.0.1", may_store=True)
    assert access.contexts_for(node, _contexts(), {}) is None


def test_a_node_that_may_not_store_keeps_no_storage_context_unless_it_receives_what_it_retrieves():
    node = ModalityNode(ae_title="VIEWER", host="127.0.0.1", may_store=False, may_retrieve=True)
    roles = {CTImageStorage: build_role(CTImageStorage, scp_role=True)}
    contexts = access.contexts_for(node, _contexts(), roles)
    assert [cx.abstract_syntax for cx in contexts] == [Verification, CTImageStorage]
    assert (contexts[1].scu_role, contexts[1].scp_role) == (False, True)
    node.may_retrieve = False
    assert [cx.abstract_syntax for cx in access.contexts_for(node, _contexts(), roles)] == [Verification]


def test_an_oversized_pdu_header_is_aborted_before_its_body_is_read():
    class Transport:
        def __init__(self, data):
            self.data = data
            self.asked = []
            self.socket = self

        def recv(self, n):
            self.asked.append(n)
            piece, self.data = self.data[:n], self.data[n:]
            return bytearray(piece)

        def send(self, data, flags=0):
            self.sent = data

        def close(self):
            self.closed = True

    class Events(list):
        put = list.append

    transport = Transport(b"\x01\x00" + struct.pack(">L", 0xFFFFFFFF) + b"junk")
    assoc = type("Assoc", (), {})()
    assoc.dul = type("DUL", (), {"socket": transport, "event_queue": Events()})()
    assoc.requestor = type("Requestor", (), {"primitive": None, "address": "127.0.0.2"})()
    bounds = guard.Guard(assoc, associate_pdu=1024**2, dataset_bytes=1024**3, stream_to_disk=0, open_spool=None)
    assoc.dul.state_machine = type("FSM", (), {"current_state": "Sta2"})()
    bounds.read_pdu()
    assert transport.asked == [6]  # the 4 GiB body was never asked for
    assert transport.sent[:1] == b"\x07" and transport.closed
    assert bounds.closed.is_set() and "claims 4294967295 bytes" in bounds.reason
