"""Event-driven waits for pynetdicom's polling loops, in an association's own process.

pynetdicom runs two loops per association: the DUL thread (socket <-> PDUs) and
the association thread (PDUs <-> DIMSE handlers). When idle, each sleeps for a
fixed millisecond before looking again, so every C-STORE waits on average about
half a millisecond in each direction for a loop to notice it: up to a third of
the time a small image takes. Here each of those sleeps becomes a wait that
ends as soon as there is work (data on the socket, a PDU to send, a DIMSE
message to handle) and otherwise lasts as long as the sleep would have, so an
idle association costs no more CPU than before.

It also makes the DUL read a whole PDU in as few ``recv`` calls as the kernel
allows instead of 4 KiB at a time.

This replaces the ``time`` module seen by ``pynetdicom.association`` and
``pynetdicom.dul`` with a stand-in whose ``sleep`` is changed only when called
from those two loops. It is installed in the forked process that serves one
association (network/scp.py), and only for the pynetdicom version it was
written against; anything else keeps pynetdicom's own behaviour.
"""

import logging
import os
import select
import socket
import sys
import time

import pynetdicom
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = {"3.0.4"}


class _Clock:
    """Stands in for the ``time`` module; only ``sleep`` from one loop of one object is changed.

    Other associations in the process (the outgoing one a C-MOVE opens) keep
    pynetdicom's own sleeps.
    """

    def __init__(self, loop_code, owner, wait):
        self._loop_code = loop_code
        self._owner = owner
        self._wait = wait

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        frame = sys._getframe(1)
        if frame.f_code is self._loop_code and frame.f_locals.get("self") is self._owner:
            self._wait(seconds)
        else:
            time.sleep(seconds)


def _wait_for_message(msg_queue, seconds: float) -> None:
    """Until the DIMSE queue has a message, at most ``seconds``."""
    with msg_queue.not_empty:
        if not msg_queue._qsize():
            msg_queue.not_empty.wait(seconds)


class _DULWaiter:
    """Until the socket has data or a PDU is queued to be sent, at most ``seconds``."""

    def __init__(self, dul):
        self._dul = dul
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        outgoing = dul.to_provider_queue
        put = outgoing.put

        def put_and_wake(item, *args, **kwargs):
            put(item, *args, **kwargs)
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full: the loop is about to wake anyway

        outgoing.put = put_and_wake

    def __call__(self, seconds: float) -> None:
        transport = getattr(self._dul, "socket", None)
        sock = getattr(transport, "socket", None)
        if sock is None or sock.fileno() < 0:
            time.sleep(seconds)
            return
        if self._dul.to_provider_queue.qsize():
            return
        try:
            ready, _, _ = select.select([sock, self._wake_r], [], [], seconds)
        except (OSError, ValueError):
            return
        if self._wake_r in ready:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass


def _recv_whole(sock, nr_bytes: int) -> bytearray:
    """Read exactly ``nr_bytes`` (fewer only if the peer closes), in as few calls as the kernel allows.

    pynetdicom reads 4 KiB per call and appends each piece: a 128 KiB PDU costs
    32 calls and as many copies. Reading into one buffer costs a few calls.
    """
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    read = 0
    while read < nr_bytes:
        count = sock.recv_into(view[read:], nr_bytes - read)
        if not count:
            del view
            return buffer[:read]
        read += count
    return buffer


_original_create_socket = AssociationSocket._create_socket


def _create_socket_without_nagle(self, address):
    # Outgoing associations (C-MOVE sub-operations): without TCP_NODELAY a small
    # PDU can wait for the peer's delayed ACK, 40 ms a time.
    sock = _original_create_socket(self, address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def install(assoc) -> bool:
    """Make ``assoc``'s loops event-driven; call once, in the association's own process."""
    if pynetdicom.__version__ not in SUPPORTED_VERSIONS:
        log.debug("pynetdicom %s: keeping its polling loops", pynetdicom.__version__)
        return False
    _association.time = _Clock(
        _association.Association._run_reactor.__code__,
        assoc,
        lambda seconds: _wait_for_message(assoc.dimse.msg_queue, seconds),
    )
    _dul.time = _Clock(_dul.DULServiceProvider.run_reactor.__code__, assoc.dul, _DULWaiter(assoc.dul))
    AssociationSocket._create_socket = _create_socket_without_nagle
    transport = assoc.dul.socket
    if transport is not None and transport.socket is not None and transport.tls_args is None:
        raw = transport.socket
        transport.recv = lambda nr_bytes: _recv_whole(raw, nr_bytes)
    return True
