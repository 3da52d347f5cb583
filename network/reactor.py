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
allows instead of 4 KiB at a time (into a buffer that grows with what arrived;
the PDU's claimed length is bounded before, in network/guard.py), and read
what the peer sent between the PDUs it sends (a C-CANCEL in the middle of our
responses); ``wait_until_sent`` lets
a handler keep only a few responses ahead of the network. Associations we
request (a C-MOVE's, a study sent to a node) get event-driven DUL waits too
(``install_outgoing``).

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
import weakref

import pynetdicom
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = {"3.0.4"}


class _Clock:
    """Stands in for the ``time`` module; only ``sleep`` from one loop of the registered objects is changed.

    A process may run several associations (a C-MOVE opens one to the
    destination beside the one it serves): each registers its own loop object
    and wait; every other caller, and every loop that registered nothing, keeps
    pynetdicom's own sleep.
    """

    def __init__(self, loop_code):
        self._loop_code = loop_code
        self._waits = weakref.WeakKeyDictionary()

    def register(self, owner, wait) -> None:
        self._waits[owner] = wait

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        frame = sys._getframe(1)
        wait = self._waits.get(frame.f_locals.get("self")) if frame.f_code is self._loop_code else None
        if wait is None:
            time.sleep(seconds)
        else:
            wait(seconds)


def _wait_for_message(msg_queue, seconds: float) -> None:
    """Until the DIMSE queue has a message, at most ``seconds``."""
    with msg_queue.not_empty:
        if not msg_queue._qsize():
            msg_queue.not_empty.wait(seconds)
        if msg_queue._qsize():
            # Queue.put wakes one waiter. This one takes nothing off the queue, so pass
            # the wake-up on, or a thread blocked in get() (a send_* call waiting for
            # its response) would sleep until its timeout.
            msg_queue.not_empty.notify()


def _close_pipe(*fds) -> None:
    for fd in fds:
        os.close(fd)


class _DULWaiter:
    """Until the socket has data or a PDU is queued to be sent, at most ``seconds``."""

    def __init__(self, dul):
        self._dul = dul
        self._poll = self._polled = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # A long-lived process (the worker sending studies) opens many associations.
        weakref.finalize(self, _close_pipe, self._wake_r, self._wake_w)
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
        if self._poll is None or self._polled is not sock:
            # poll, not select: a long-lived process may hold descriptors beyond FD_SETSIZE.
            self._poll, self._polled = select.poll(), sock
            self._poll.register(sock, select.POLLIN | select.POLLPRI)
            self._poll.register(self._wake_r, select.POLLIN)
        try:
            ready = self._poll.poll(seconds * 1000)
        except (OSError, ValueError):
            return
        if any(fd == self._wake_r for fd, _ in ready):
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass


def _reading_between_sends(dul) -> None:
    """Let the DUL loop read what the peer sent between the PDUs it sends, not only once it has sent all.

    Each turn, pynetdicom's loop sends a queued PDU or, only if none is queued,
    reads one. A C-CANCEL arriving while we answer a query with hundreds of
    matches would wait until the last of them had left. Here, when data waits on
    the socket and the loop has just sent, it reads first: sends and reads take
    turns, and a peer that keeps sending cannot hold our responses back either.
    """
    process_recv_primitive = dul._process_recv_primitive
    poll = select.poll()
    polled = [None]
    read_last = [False]

    def send_or_read() -> bool:
        transport = dul.socket
        sock = getattr(transport, "socket", None)
        if not read_last[0] and sock is not None and dul.to_provider_queue.queue:
            if polled[0] is not sock:
                poll.register(sock, select.POLLIN)
                polled[0] = sock
            try:
                readable = bool(poll.poll(0))
            except (OSError, ValueError):
                readable = False
            if readable and dul.state_machine.current_state == "Sta6":
                read_last[0] = True
                return False  # the loop reads one PDU this turn
        read_last[0] = False
        return process_recv_primitive()

    dul._process_recv_primitive = send_or_read


def wait_until_sent(assoc, *, most: int, timeout: float) -> None:
    """Until at most ``most`` PDUs wait in ``assoc``'s send queue (or ``timeout`` seconds passed).

    A handler producing responses faster than they leave would otherwise queue
    them all: memory grows, and it is past its last result before it can see a C-CANCEL.
    """
    outgoing = assoc.dul.to_provider_queue
    deadline = time.monotonic() + timeout
    with outgoing.not_full:  # Queue.get, which the DUL calls as it sends, notifies it
        while outgoing._qsize() > most:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not assoc.is_established:
                return
            outgoing.not_full.wait(min(remaining, 0.05))


# The first read of a PDU body takes at most this much memory, and the buffer doubles
# only as bytes arrive: a header claiming more than the peer sends costs nothing.
_FIRST_READ = 64 * 1024


def _recv_whole(sock, nr_bytes: int) -> bytearray:
    """Read exactly ``nr_bytes`` (fewer only if the peer closes), in as few calls as the kernel allows.

    pynetdicom reads 4 KiB per call and appends each piece: a 128 KiB PDU costs
    32 calls and as many copies. Reading into one buffer costs a few calls. The
    buffer grows with what was received, never to the claimed length at once.
    """
    buffer = bytearray(min(nr_bytes, _FIRST_READ))
    read = 0
    while read < nr_bytes:
        if read == len(buffer):
            buffer.extend(bytes(min(len(buffer), nr_bytes - len(buffer))))
        with memoryview(buffer) as view:
            count = sock.recv_into(view[read:], len(buffer) - read)
        if not count:
            del buffer[read:]
            return buffer
        read += count
    return buffer


_original_create_socket = AssociationSocket._create_socket


def _create_socket_without_nagle(self, address):
    # Outgoing associations (C-MOVE sub-operations): without TCP_NODELAY a small
    # PDU can wait for the peer's delayed ACK, 40 ms a time.
    sock = _original_create_socket(self, address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _clocks() -> tuple[_Clock, _Clock]:
    """The clocks of pynetdicom's association and DUL loops, put in place on first use."""
    if not isinstance(_association.time, _Clock):
        _association.time = _Clock(_association.Association._run_reactor.__code__)
    if not isinstance(_dul.time, _Clock):
        _dul.time = _Clock(_dul.DULServiceProvider.run_reactor.__code__)
    return _association.time, _dul.time


def supported() -> bool:
    if pynetdicom.__version__ not in SUPPORTED_VERSIONS:
        log.debug("pynetdicom %s: keeping its polling loops", pynetdicom.__version__)
        return False
    return True


def install(assoc) -> bool:
    """Make ``assoc``'s loops event-driven; call once, in the association's own process."""
    if not supported():
        return False
    association_clock, dul_clock = _clocks()
    association_clock.register(assoc, lambda seconds: _wait_for_message(assoc.dimse.msg_queue, seconds))
    dul_clock.register(assoc.dul, _DULWaiter(assoc.dul))
    _reading_between_sends(assoc.dul)
    AssociationSocket._create_socket = _create_socket_without_nagle
    transport = assoc.dul.socket
    if transport is not None and transport.socket is not None and transport.tls_args is None:
        raw = transport.socket
        transport.recv = lambda nr_bytes: _recv_whole(raw, nr_bytes)
    return True


def install_outgoing(assoc) -> bool:
    """Make the DUL loop of an association we requested event-driven: its responses are read at once.

    Call once it is established (EVT_ESTABLISHED), from any thread. Its association
    loop is left alone: while we send, pynetdicom keeps it paused (and
    ``keep_responses`` covers the moment it does not).
    """
    if not supported():
        return False
    _association_clock, dul_clock = _clocks()
    dul_clock.register(assoc.dul, _DULWaiter(assoc.dul))
    keep_responses(assoc)
    return True


def keep_responses(assoc) -> None:
    """A response the association's loop takes off the DIMSE queue goes back on it, for the send_* call waiting.

    pynetdicom's ``send_c_store`` pauses the loop by clearing its checkpoint and waiting
    for ``_is_paused``; the flag is still True from the pause of the request before
    until the loop, woken, sets it False. A request sent in that moment can have its
    response taken by the loop, which drops it ("Received unexpected C-STORE service
    message") while ``send_c_store`` waits out DICOM_DIMSE_TIMEOUT: a sub-operation
    failed that the destination had stored (seen on a loaded CI machine with
    DICOM_FAST_SEND=0). A response with no send_* call under way (the checkpoint
    set) and requests from the peer are handled as before.
    """
    serve = assoc._serve_request

    def serve_or_keep(msg, context_id):
        # A send_* call is under way while the checkpoint is cleared: the response is its.
        if msg is not None and msg.is_valid_response and not assoc._reactor_checkpoint.is_set():
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_keep
