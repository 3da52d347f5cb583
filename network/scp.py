"""Build the pynetdicom AE and serve it, each association in a forked process of its own.

Python's interpreter lock caps one process at roughly one core, so each
association gets its own process (as DCMTK's ``storescp --fork`` does): several
modalities sending at once use every core, and a crash while handling one
association cannot take the listener down. The parent only forks: a few spare
children (DICOM_SPARE_PROCESSES) wait in accept() for the next connections,
already warmed up; each tells the parent when it has one, and the parent forks
another spare in its place, once that association has ended if another spare
still waits. A process whose association our own receive path served
(network/fastrecv.py) waits for the next as a spare again, up to
DICOM_ASSOCIATIONS_PER_PROCESS associations, one at a time. A spare refuses, at
accept(), a connection from an address that is no node's or that has its share
of associations already (network/admission.py), and goes back to accept(); a
connection that has not sent its A-ASSOCIATE-RQ within DICOM_ASSOCIATE_TIMEOUT
is dropped, and what an association may make its process hold is bounded
(network/guard.py).
"""

import errno
import logging
import os
import select
import signal
import socket
import threading
import time

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, _config, evt, transport
from pynetdicom import __version__ as pynetdicom_version
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import AssociationServer, RequestHandler

from imaging import storage
from network import access, admission, fastrecv, fastsend, guard, reactor
from network.dimse.association import handle_requested, session_of
from network.dimse.echo import handle_echo
from network.dimse.find import handle_find
from network.dimse.get import handle_get
from network.dimse.move import handle_move
from network.dimse.store import handle_store, spool_for
from network.handoff import IndexHandoff
from network.handoff import warm_up as handoff_warm_up
from network.models import AssociationLog, ModalityNode

log = logging.getLogger(__name__)

# Stored as received, never re-encoded: every transfer syntax modalities really send.
STORAGE_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
]

RETRIEVE_MODELS = [
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
]

# pynetdicom's per-PDU logging handlers cost time on every fragment of every image.
_config.LOG_HANDLER_LEVEL = "none"
# ... and its pretty-printing of every C-FIND/C-MOVE/C-GET identifier, even unlogged.
_config.LOG_RESPONSE_IDENTIFIERS = False
_config.LOG_REQUEST_IDENTIFIERS = False
# C-FIND matches, built encoded already (network/query.py), are sent as they are.
fastsend.install_identifier_encoding()


def build_ae(ae_title: str | None = None) -> AE:
    ae = AE(ae_title=ae_title or settings.DICOM_AE_TITLE)
    ae.maximum_pdu_size = settings.DICOM_MAX_PDU
    ae.network_timeout = settings.DICOM_NETWORK_TIMEOUT
    ae.acse_timeout = settings.DICOM_ACSE_TIMEOUT
    ae.dimse_timeout = settings.DICOM_DIMSE_TIMEOUT
    # One association per process: the limit on concurrent associations is the
    # server's (DICOM_MAX_ASSOCIATIONS), not the AE's.
    ae.maximum_associations = max(settings.DICOM_MAX_ASSOCIATIONS, 1)
    ae.add_supported_context(Verification)
    for find_model in (PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind):
        ae.add_supported_context(find_model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for retrieve_model in RETRIEVE_MODELS:
        ae.add_supported_context(retrieve_model, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for context in AllStoragePresentationContexts:
        # Both roles: a C-GET requester proposes to be the Storage SCP for what it retrieves.
        ae.add_supported_context(context.abstract_syntax, STORAGE_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    return ae


def handlers(handoff: IndexHandoff) -> list:
    return [
        (evt.EVT_REQUESTED, _handle_requested),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_FIND, handle_find),
        (evt.EVT_C_STORE, handle_store, [handoff]),
        (evt.EVT_C_MOVE, handle_move),
        (evt.EVT_C_GET, handle_get),
    ]


class _Shutdown:
    """Per-process shutdown state shared by the signal handler and the server loop."""

    requested = False
    at = 0.0


def _request_shutdown(signum, frame) -> None:
    if not _Shutdown.requested:
        _Shutdown.requested = True
        _Shutdown.at = time.monotonic()


class AssociationProcessHandler(RequestHandler):
    """Runs in the forked child: serve the association to its end, then flush."""

    def handle(self) -> None:
        try:
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        accepted_at = time.monotonic()
        if settings.DICOM_FAST_RECEIVE and self._serve_fast(accepted_at):
            return
        assoc = self._create_association()
        bounds = guard.install(
            assoc,
            associate_pdu=settings.DICOM_MAX_ASSOCIATE_PDU,
            dataset_bytes=settings.DICOM_MAX_DATASET_BYTES,
            stream_to_disk=settings.DICOM_STREAM_TO_DISK_BYTES,
            open_spool=spool_for,
        )
        if settings.DICOM_EVENT_DRIVEN_LOOPS:
            reactor.install(assoc)
        fastsend.install_messages(assoc)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()
        try:
            ended = self._serve(assoc, bounds, accepted_at)
        finally:
            self.server.release_slot()
            if bounds is not None:
                bounds.discard_spools()
        if ended:
            self._finish(assoc, bounds)

    def _serve_fast(self, accepted_at: float) -> bool:
        """Serve the association on our own receive path (network/fastrecv.py) if it is one for it."""
        pdu = fastrecv.peek_request(
            self.request,
            limit=settings.DICOM_MAX_ASSOCIATE_PDU,
            deadline=accepted_at + settings.DICOM_ASSOCIATE_TIMEOUT,
        )
        if pdu is None:
            return False  # pynetdicom's path drops, aborts or times it out as before
        request = fastrecv.parse_request(pdu)
        if not fastrecv.servable(request):
            log.debug("association from %s left to pynetdicom: %s", self.client_address[0], request.odd)
            return False
        _adopt_connection()
        self.server.served_fast = True
        try:
            fastrecv.serve(
                self.request,
                self.client_address,
                request,
                ae=self.server.ae,
                handoff=self.server.handoff,
                shutdown=_Shutdown,
            )
        finally:
            self.server.release_slot()
        return True

    def _serve(self, assoc, bounds, accepted_at: float) -> bool:
        """Until the association ends (True), or there is none to wait for (False)."""
        while assoc.is_alive():
            assoc.join(0.2)
            if assoc.requestor.primitive is None:
                if bounds is not None and bounds.closed.is_set():
                    return False  # closed before any association (by the peer, or aborted: guard.py logged why)
                if time.monotonic() - accepted_at > settings.DICOM_ASSOCIATE_TIMEOUT:
                    # A port probe, a device that connects and says nothing, or one that
                    # trickles its request: its process is wanted for others.
                    log.warning(
                        "connection from %s dropped: no A-ASSOCIATE-RQ within DICOM_ASSOCIATE_TIMEOUT (%ss)",
                        self.client_address[0],
                        settings.DICOM_ASSOCIATE_TIMEOUT,
                    )
                    return False
            if not _Shutdown.requested:
                continue
            if not assoc.is_established:
                # A connection that never asked for an association (a port probe,
                # a half-open socket) has nothing in flight: the process just exits.
                return False
            if time.monotonic() - _Shutdown.at > settings.DICOM_SHUTDOWN_GRACE:
                log.warning(
                    "shutting down: aborting association from %s after %ss grace",
                    self.client_address,
                    settings.DICOM_SHUTDOWN_GRACE,
                )
                assoc.abort()
        return True

    def _finish(self, assoc, bounds) -> None:
        self.server.handoff.flush()
        session = session_of(assoc)
        if session is not None and not assoc.is_rejected:  # a rejection was logged when it was sent
            outcome = AssociationLog.Outcome.RELEASED if assoc.is_released else AssociationLog.Outcome.ABORTED
            try:
                access.close_session(session, outcome, reason=bounds.reason if bounds is not None else "")
            except Exception:
                log.exception("cannot log the association from %s", session.calling_ae)


class ForkingAssociationServer(AssociationServer):
    """An AssociationServer whose associations each run in a forked process, forked ahead of time."""

    def __init__(self, ae, address, ae_title, contexts, evt_handlers, handoff, max_children):
        self.handoff = handoff
        self.max_children = max_children
        self.children: set[int] = set()
        self.spares: set[int] = set()  # the children waiting in accept() for the next connections
        self.helpers: dict[int, str] = {}  # children doing background work (fork_helper): pid -> name
        # Associations whose spare is not replaced yet (pid: until when at most), see serve_until_stopped.
        self.unreplaced: dict[int, float] = {}
        # A spare writes "T <pid>" here when it takes a connection, "R <address> <reason>" when it
        # refuses one; after its association, "S <pid>" when it is a spare again, "E <pid>" when it leaves.
        self._accepted_r, self._accepted_w = os.pipe()
        self._pending = b""
        # Each child's slot in the table of peers (admission.PeerTable); ``slot`` is this process's own.
        self.peers = admission.PeerTable(max_children)
        self.slot_of: dict[int, int] = {}
        self.slot: int | None = None
        self.refusals = admission.RefusalLog()
        # Which children are spares, for a child back from its association to see (SpareBoard).
        self.board = admission.SpareBoard(max_children)
        self.served_fast = False  # in a child: whether network/fastrecv.py served its association
        # socketserver's default backlog (5) is smaller than one CT room's burst of associations.
        self.request_queue_size = max(settings.DICOM_LISTEN_BACKLOG, 1)
        super().__init__(
            ae, address, ae_title, contexts, evt_handlers=evt_handlers, request_handler=AssociationProcessHandler
        )

    def server_bind(self) -> None:
        if settings.DICOM_REUSE_PORT:
            # Before bind: a second runscp bound with it too shares the port.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()
        # Accepted sockets inherit nothing useful from the listener's timeout.
        self.socket.settimeout(None)

    def reap(self, block: bool = False) -> None:
        while self.children or self.helpers:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                self.helpers.clear()
                return
            if pid == 0:
                return
            helper = self.helpers.pop(pid, None)
            if helper is not None:
                if status and not _Shutdown.requested:
                    log.warning("%s (pid %d) ended with status %#x", helper, pid, status)
                if block:
                    return
                continue
            self.children.discard(pid)
            self.spares.discard(pid)  # a spare that died before a connection came: fork another
            self.unreplaced.pop(pid, None)
            slot = self.slot_of.pop(pid, None)
            if slot is not None:
                self.peers.release(slot)  # whatever the child did (or did not do) before it died
                self.board.mark(slot, False)
            if block:
                return

    def fork_helper(self, name: str, work) -> int:
        """Run ``work()`` in a child of its own at the lowest CPU priority; reaped like the associations.

        For one-off background work of the SCP's (storage.prepare_folders) that must
        not delay listening nor take CPU from associations. The child holds nothing of
        the listener's and dies of SIGTERM or SIGINT as is (its work is safe to redo).
        """
        pid = os.fork()
        if pid:
            self.helpers[pid] = name
            return pid
        status = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            self.socket.close()
            os.close(self._accepted_r)
            os.close(self._accepted_w)
            _name_process(name)
            os.nice(19)
            work()
            status = 0
        except Exception:
            log.exception("%s failed", name)
        finally:
            logging.shutdown()
            os._exit(status)

    def _fork_spare(self) -> None:
        """Fork the process that takes the next connection, and let it get ready before it comes.

        A fresh child pays for fork and for its first touch of each page it shares
        with the listener (copy on write) on its first queries and objects: about
        20 ms of CPU. The spare pays that while it waits; more than one spare lets
        a modality's parallel associations all find one.
        """
        slot = min(set(range(self.max_children)) - set(self.slot_of.values()))
        self.board.mark(slot, True)
        pid = os.fork()
        if pid:
            self.children.add(pid)
            self.spares.add(pid)
            self.slot_of[pid] = slot
            return
        self.slot = slot
        status = 1
        request = None
        served = 0
        try:
            os.close(self._accepted_r)
            self._wait_as_spare()
            known = admission.KnownPeers(settings.DICOM_PEER_CACHE_SECONDS)
            _warm_up_child(self, known)
            while True:
                accepted = self._accept_admitted(known)
                if accepted is None:  # the listener is stopping
                    break
                request, client_address = accepted
                self.board.mark(slot, False)
                _name_process(ASSOCIATION_NAME)
                signal.signal(signal.SIGTERM, _request_shutdown)
                signal.signal(signal.SIGINT, _request_shutdown)
                os.write(self._accepted_w, b"T %d\n" % os.getpid())  # the listener may fork another spare
                served += 1
                if settings.DICOM_ASSOCIATIONS_PER_PROCESS <= 1:
                    # Keep nothing of the listener, so a stopped server frees its port (it
                    # shuts its socket down for every process that holds it, too).
                    self.socket.close()
                self.served_fast = False
                self.finish_request(request, client_address)
                self.shutdown_request(request)
                request = None
                if not self._serve_again(served):
                    break
                os.write(self._accepted_w, b"S %d\n" % os.getpid())  # a spare again
            status = 0
        except Exception:
            log.exception("association process failed")
        finally:
            try:
                if request is not None:
                    self.shutdown_request(request)
                if served:
                    os.write(self._accepted_w, b"E %d\n" % os.getpid())  # its replacement may be forked now
            finally:
                logging.shutdown()
                os._exit(status)

    def _wait_as_spare(self) -> None:
        _name_process(SPARE_NAME)
        # Idle, a spare has nothing to finish: SIGTERM ends it at once (accept() would
        # otherwise resume after the handler, and the port stay open).
        signal.signal(signal.SIGTERM, _exit_idle)
        signal.signal(signal.SIGINT, _exit_idle)

    def _serve_again(self, served: int) -> bool:
        """After an association: wait for the next as a spare (True), or leave (False).

        A process whose association our own receive path served (network/fastrecv.py:
        one thread, nothing of pynetdicom's left running) serves up to
        DICOM_ASSOCIATIONS_PER_PROCESS associations, as long as fewer than
        DICOM_SPARE_PROCESSES others wait: the next echoscu or findscu then costs
        no fork, warm-up and exit (about 20 ms of CPU, which on two cores delays
        the association that follows). Any other association, or a shutdown, ends
        the process.
        """
        if not self.served_fast or served >= settings.DICOM_ASSOCIATIONS_PER_PROCESS or _Shutdown.requested:
            return False
        if not self.board.rejoin(self.slot, max(settings.DICOM_SPARE_PROCESSES, 1)):
            return False
        self._wait_as_spare()
        return not _Shutdown.requested  # a SIGTERM that came before the spare's handler

    def _accept_admitted(self, known: admission.KnownPeers):
        """In a spare: accept connections until one may have this process; close the others at once."""
        while True:
            try:
                request, client_address = self.socket.accept()
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # the listener shut its socket down on its way out
                    return None
                raise
            address = client_address[0]
            try:
                if settings.DICOM_CHECK_HOST and not known.knows(address):
                    refusal = admission.NOT_A_NODE
                elif not self.peers.claim(self.slot, address, settings.DICOM_MAX_ASSOCIATIONS_PER_PEER):
                    refusal = admission.PEER_LIMIT
                else:
                    return request, client_address
            except Exception:  # deciding failed: the association's own checks still apply
                log.exception("cannot decide on the connection from %s; letting it through", address)
                return request, client_address
            if refusal == admission.PEER_LIMIT:
                # A-ASSOCIATE-RJ, rejected-transient by the service provider (presentation):
                # local-limit-exceeded (PS3.8 9.3.4). Best effort: the peer may read it.
                try:
                    request.send(b"\x03\x00\x00\x00\x00\x04\x00\x02\x03\x02", socket.MSG_DONTWAIT)
                except OSError:
                    pass
            request.close()
            os.write(self._accepted_w, b"R %s %s\n" % (address.encode(), refusal.encode()))

    def release_slot(self) -> None:
        """In an association's process, once it has ended: its peer no longer counts against the limit."""
        if self.slot is not None:
            self.peers.release(self.slot)

    def _read_messages(self) -> None:
        """In the listener: what the spares wrote (connections taken and refused)."""
        self._pending += os.read(self._accepted_r, 65536)
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            kind, _, rest = line.partition(b" ")
            if kind == b"T":
                pid = int(rest)
                self.spares.discard(pid)
                self.unreplaced[pid] = time.monotonic() + settings.DICOM_SPARE_REFILL_AFTER_MS / 1000
            elif kind == b"S":
                pid = int(rest)
                self.spares.add(pid)
                self.unreplaced.pop(pid, None)
            elif kind == b"E":
                self.unreplaced.pop(int(rest), None)
            elif kind == b"R":
                address, _, reason = rest.partition(b" ")
                self.refusals.refused(address.decode(), reason.decode())

    def _spares_wanted(self, wanted: int, now: float) -> int:
        """How many spares to keep now: one fewer for each association that has just taken its spare.

        A fork and a new spare's warm-up take the CPU (tens of ms) from the association
        that has just begun: on two cores they make a C-ECHO or a C-FIND wait for its
        A-ASSOCIATE-AC. While another spare is still waiting, the one taken is replaced
        only once its association has ended, or DICOM_SPARE_REFILL_AFTER_MS later; with
        none left, at once.
        """
        for pid, until in list(self.unreplaced.items()):
            if until <= now:
                del self.unreplaced[pid]
        return max(wanted - len(self.unreplaced), 1)

    def serve_until_stopped(self) -> None:
        """Keep spare processes waiting for the next connections until SIGTERM/SIGINT, then let the children finish."""
        wanted = max(settings.DICOM_SPARE_PROCESSES, 1)
        while not _Shutdown.requested:
            self.reap()
            now = time.monotonic()
            while len(self.spares) < self._spares_wanted(wanted, now) and len(self.children) < self.max_children:
                self._fork_spare()
            # Beyond the limit new connections wait in the listen backlog until a child
            # ends: then look for that often.
            timeout = 0.5 if self.spares else 0.05
            if self.unreplaced:
                timeout = max(min(timeout, min(self.unreplaced.values()) - now), 0.0)
            ready, _, _ = select.select([self._accepted_r], [], [], timeout)
            if ready:
                self._read_messages()
            self.refusals.flush()
        self.server_close()
        log.info("stopping: waiting for %d association(s) to finish", len(self.children - self.spares))
        for pid in [*self.children, *self.helpers]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        while self.children or self.helpers:
            self.reap(block=True)

    def handle_timeout(self) -> None:
        pass


# What ps and /proc show of a child: waiting for a connection, or serving one;
# the one making the storage's folders at the first start.
SPARE_NAME = "dicom-spare"
ASSOCIATION_NAME = "dicom-assoc"
PREPARE_NAME = "storage-prepare"


def prepare_storage_folders() -> None:
    """storage.prepare_folders, logged: run by the SCP's helper at its first start (STORAGE_PREPARE_FOLDERS)."""
    started = time.monotonic()
    try:
        made = storage.prepare_folders()
    except OSError as exc:
        log.warning("storage folders not made ahead of need: %s", exc)
        return
    log.info("made %d storage folders ahead of need in %.1f s", made, time.monotonic() - started)


def _name_process(name: str) -> None:
    try:
        fd = os.open("/proc/self/comm", os.O_WRONLY)
    except OSError:
        return  # not Linux: the name is only for people and tests
    try:
        os.write(fd, name.encode())
    finally:
        os.close(fd)


def _exit_idle(signum, frame) -> None:
    os._exit(0)


def _warm_up_child(server, known: admission.KnownPeers) -> None:
    """In a spare, before its connection comes: what every association does first, done once.

    It touches the code and objects it will need (copying the pages it shares with the
    listener while nobody waits), connects to the database (the connection the
    association will use), reads the nodes' addresses for accept() (``known``) and a
    node the way an association request will, sets up an association on our receive
    path without a peer, and builds a query the way a C-FIND will. Each costs a
    first association 0.3-2 ms when left to it.
    """
    from pydicom.dataset import Dataset
    from pynetdicom._globals import MODE_ACCEPTOR
    from pynetdicom.association import Association

    from network import query

    # pynetdicom deep-copies the server's presentation contexts (about 180 here, with
    # 2,700 transfer syntaxes) for every association, so that associations running
    # as threads of one process cannot share them: 25 ms before each A-ASSOCIATE-AC.
    # This process serves one association, and after fork the contexts are its own.
    transport.deepcopy = list
    try:
        Association(server.ae, MODE_ACCEPTOR)
        known.read()
        node = ModalityNode.objects.filter(active=True).first()
        calling_ae = node.ae_title if node is not None else "WARM-UP"
        access.decide(called_ae=settings.DICOM_AE_TITLE, calling_ae=calling_ae, peer_address="127.0.0.1")
        if settings.DICOM_FAST_RECEIVE:
            fastrecv.warm_up(server.ae)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.PatientName = "WARM^UP*"
        identifier.StudyDate = ""
        str(query.parse(identifier, model=query.STUDY_ROOT).queryset.query)
        # The connection stays open for the association's thread (_adopt_connection).
        connection = connections[DEFAULT_DB_ALIAS]
        connection.inc_thread_sharing()
        _Warm.connection = connection
    except Exception:  # a warm-up: whatever fails here fails again, and is handled, for real
        log.debug("warm-up failed", exc_info=True)
        connections.close_all()


class _Warm:
    """What a spare prepared for the association it will serve."""

    connection = None


def _adopt_connection() -> None:
    """In the association's thread: use the database connection the spare opened, not a new one.

    Django's connections belong to a thread; this one is shared (inc_thread_sharing)
    between the process's main thread, which logs the association at its end, and
    the association's, which uses it until then: never both at once.
    """
    connection = _Warm.connection
    if connection is None:
        return
    if connection.connection is not None and not connection.is_usable():  # closed by the server meanwhile
        connection.close()
    connections[DEFAULT_DB_ALIAS] = connection


def _handle_requested(event) -> None:
    _adopt_connection()
    handle_requested(event)


def _warm_up_database() -> None:
    """Import, once before forking, what each association's first queries need.

    Django imports its SQL compiler and the backend's operations on the first
    query; done here, every forked child starts with them in memory.
    """
    from records.models import Instance

    try:
        ModalityNode.objects.filter(ae_title="").exists()
        Instance.objects.filter(sop_instance_uid="").values("pk").first()
    except DatabaseError:
        # The SCP listens all the same: each association is refused transiently until it is back.
        log.exception("the database cannot be read at start-up")


def serve(
    port: int | None = None, ae_title: str | None = None, host: str | None = None, ready: threading.Event | None = None
) -> None:
    """Run the SCP in this process until SIGTERM or SIGINT."""
    ae = build_ae(ae_title)
    if not guard.supported():
        log.warning(
            "pynetdicom %s is not the version network/guard.py was written for: PDU lengths and "
            "data set sizes are NOT bounded while receiving",
            pynetdicom_version,
        )
    handoff = IndexHandoff()
    handoff_warm_up()
    _warm_up_database()
    address = (host or settings.DICOM_HOST, settings.DICOM_PORT if port is None else port)
    # The parent must hold no database connection that children would share.
    connections.close_all()
    _Shutdown.requested = False
    signal.signal(signal.SIGTERM, _request_shutdown)
    signal.signal(signal.SIGINT, _request_shutdown)
    server = ForkingAssociationServer(
        ae,
        address,
        ae.ae_title,
        ae.supported_contexts,
        handlers(handoff),
        handoff,
        max(settings.DICOM_MAX_ASSOCIATIONS, 1),
    )
    log.info(
        "DICOM SCP %s listening on %s:%s (a process per association at a time, at most %d%s)",
        ae.ae_title,
        *server.server_address[:2],
        server.max_children,
        "; port shared with other instances" if settings.DICOM_REUSE_PORT else "",
    )
    if settings.STORAGE_PREPARE_FOLDERS and not storage.folders_prepared():
        server.fork_helper(PREPARE_NAME, prepare_storage_folders)
    if ready is not None:
        ready.set()
    server.serve_until_stopped()
    log.info("DICOM SCP stopped")
