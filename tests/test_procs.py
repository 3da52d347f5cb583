"""The test harness's own helpers: a port it hands out must stay free for the server it is meant for."""

import socket

from tests import procs


def test_a_free_port_is_below_the_range_outgoing_connections_take_and_can_be_bound():
    ephemeral = procs.ephemeral_ports()
    with socket.socket() as client_side:
        client_side.bind(("127.0.0.1", 0))  # what an outgoing connection is given
        assert client_side.getsockname()[1] in ephemeral
    for _ in range(20):
        port = procs.free_port()
        assert port not in ephemeral
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_a_free_port_is_never_one_a_server_already_listens_on(monkeypatch):
    listener = socket.socket()
    listener.bind(("127.0.0.1", procs.free_port()))
    listener.listen()
    taken = listener.getsockname()[1]
    # The taken port comes first among the candidates: free_port must try it and pass it by.
    monkeypatch.setattr(procs.random, "sample", lambda ports, _k: sorted(ports, key=lambda p: p != taken))
    try:
        port = procs.free_port()
        assert port != taken and port not in procs.ephemeral_ports()
    finally:
        listener.close()
