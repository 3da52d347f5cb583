"""Who may hold an association process: decided in the spare at accept(), before anything is read.

A spare (network/scp.py) that accepts a connection asks ``admit``:

- with DICOM_CHECK_HOST, the peer's address must be an active node's host
  (``KnownPeers``: the nodes read from the database, host names resolved, both
  cached for DICOM_PEER_CACHE_SECONDS so that an administrator's change applies
  within seconds, without a restart, and a flood costs no query per connection);
- the peer may hold at most DICOM_MAX_ASSOCIATIONS_PER_PEER associations
  (``PeerTable``: one slot per child process in memory shared by the listener
  and its children; the listener frees a child's slot when it reaps it, so a
  crashed child never keeps its peer's count up).

A refused connection is closed and the spare goes back to accept(): it costs no
process. The listener logs refusals (``RefusalLog``): the first from an address
at once, then counts, so a flood writes a few lines, not one per connection.
"""

import fcntl
import ipaddress
import logging
import mmap
import os
import socket
import time
from collections import Counter

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

log = logging.getLogger(__name__)

# Why a connection was refused at accept(), as the spare tells the listener.
NOT_A_NODE = "not-a-node"
PEER_LIMIT = "peer-limit"
REASONS = {
    NOT_A_NODE: "not the address of any active node (DICOM_CHECK_HOST)",
    PEER_LIMIT: "too many associations from this address (DICOM_MAX_ASSOCIATIONS_PER_PEER)",
}


def packed(address: str) -> bytes:
    """16 bytes for an IPv4 or IPv6 address (IPv4 as IPv4-mapped IPv6), comparable as bytes."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return ip.packed


class PeerTable:
    """The peer address of each child process, in memory shared by the listener and its children.

    Slot ``i`` belongs to one child at a time (the listener hands it out at fork
    and takes it back at reap). A child writes its peer there and counts the
    slots that hold the same address, under a lock the kernel drops if the child
    dies (``lockf``), so two spares accepting the same peer at once count each other.
    """

    _SLOT = 17  # used flag + 16 bytes of address

    def __init__(self, slots: int):
        self.slots = slots
        self._fd = os.memfd_create("dicom-peers")
        os.ftruncate(self._fd, slots * self._SLOT)
        self._map = mmap.mmap(self._fd, slots * self._SLOT)

    def claim(self, slot: int, address: str, limit: int) -> bool:
        """Record ``address`` in ``slot``; False (and the slot left free) if it already has ``limit``."""
        key = b"\1" + packed(address)
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            taken = sum(
                1 for i in range(self.slots) if i != slot and self._map[i * self._SLOT : (i + 1) * self._SLOT] == key
            )
            if limit and taken >= limit:
                self.release(slot)
                return False
            self._map[slot * self._SLOT : (slot + 1) * self._SLOT] = key
            return True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def release(self, slot: int) -> None:
        self._map[slot * self._SLOT] = 0

    def count(self, address: str) -> int:
        key = b"\1" + packed(address)
        return sum(1 for i in range(self.slots) if self._map[i * self._SLOT : (i + 1) * self._SLOT] == key)


class SpareBoard:
    """Which child processes are spares (waiting for a connection), in memory shared by the listener and its children.

    Slot ``i`` is the child's slot of ``PeerTable``. The listener marks it when it
    forks the spare and clears it when it reaps the child; the child clears it when
    it takes a connection. A child whose association has ended may wait for the
    next (``rejoin``) if fewer than ``wanted`` others do: it counts them and marks
    itself under a lock, so two children ending at once do not both stay.
    """

    def __init__(self, slots: int):
        self._fd = os.memfd_create("dicom-spares")
        os.ftruncate(self._fd, slots)
        self._map = mmap.mmap(self._fd, slots)

    def mark(self, slot: int, spare: bool) -> None:
        self._map[slot] = 1 if spare else 0

    def rejoin(self, slot: int, wanted: int) -> bool:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            others = self._map[:].count(1) - (self._map[slot] == 1)
            if others >= wanted:
                return False
            self._map[slot] = 1
            return True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def count(self) -> int:
        return self._map[:].count(1)


class KnownPeers:
    """The addresses of active nodes, as the database says at most ``ttl`` seconds ago.

    An address not among them makes the hosts be read again (one small query:
    a refused connection costs that, and a node just added is known at once);
    a node removed is forgotten within ``ttl``. Host names are resolved at most
    every ``ttl`` seconds each;
    a name that does not resolve counts for nothing. If the database cannot be
    read, the last addresses read stand (or, before any, every peer is let
    through: the association's own check then rejects it, transiently).
    """

    def __init__(self, ttl: float, clock=time.monotonic, resolve=socket.getaddrinfo):
        self.ttl = ttl
        self._clock = clock
        self._resolve = resolve
        self._hosts: set[str] | None = None
        self._addresses: set[bytes] = set()
        self._read_at = float("-inf")
        self._names: dict[str, tuple[float, set[bytes]]] = {}  # host name -> (resolved at, addresses)

    def _read_hosts(self) -> set[str]:
        from network.models import ModalityNode

        query = ModalityNode.objects.filter(active=True).values_list("host", flat=True)
        try:
            return {host.strip() for host in query}
        except DatabaseError:
            # A connection the server closed while the spare waited: once more, on a new one.
            connections[DEFAULT_DB_ALIAS].close()
            return {host.strip() for host in query.all()}

    def _addresses_of(self, host: str, now: float) -> set[bytes]:
        try:
            return {packed(host)}
        except ValueError:
            pass
        resolved_at, addresses = self._names.get(host, (float("-inf"), set()))
        if now - resolved_at >= self.ttl:
            try:
                addresses = {packed(info[4][0]) for info in self._resolve(host, None, proto=socket.IPPROTO_TCP)}
            except (OSError, ValueError):
                addresses = set()
            self._names[host] = (now, addresses)
        return addresses

    def _refresh(self, now: float) -> None:
        self._read_at = now
        try:
            self._hosts = self._read_hosts()
        except DatabaseError:
            log.warning("cannot read the nodes to check a connection's address", exc_info=True)
        if self._hosts is not None:
            self._addresses = set().union(*(self._addresses_of(host, now) for host in self._hosts))

    def read(self) -> None:
        """Read the addresses now (a spare does, before its connection comes)."""
        self._refresh(self._clock())

    def knows(self, address: str) -> bool:
        try:
            key = packed(address)
        except ValueError:
            return False
        now = self._clock()
        if now - self._read_at >= self.ttl or key not in self._addresses:
            self._refresh(now)
        return self._hosts is None or key in self._addresses


class RefusalLog:
    """In the listener: one line at once for the first refusals of each window, then one line of counts."""

    def __init__(self, interval: float = 10.0, immediate: int = 5, clock=time.monotonic):
        self.interval = interval
        self.immediate = immediate  # lines written at once per window, for distinct (address, reason)
        self._clock = clock
        self._window_start = None
        self._logged: set[tuple[str, str]] = set()
        self._counts: Counter = Counter()

    def refused(self, address: str, reason: str) -> None:
        now = self._clock()
        if self._window_start is None:
            self._window_start = now
        key = (address, reason)
        if key not in self._logged and len(self._logged) < self.immediate:
            self._logged.add(key)
            log.warning("connection from %s refused at accept: %s", address, REASONS.get(reason, reason))
        else:
            self._counts[key] += 1
        self.flush(now)

    def flush(self, now: float | None = None) -> None:
        """Write the counts of a window that has ended."""
        now = self._clock() if now is None else now
        if self._window_start is None or now - self._window_start < self.interval:
            return
        if self._counts:
            total = sum(self._counts.values())
            top = ", ".join(
                f"{count} from {address} ({reason})" for (address, reason), count in self._counts.most_common(5)
            )
            addresses = len({address for address, _ in self._counts})
            log.warning(
                "%d more connection(s) refused at accept in the last %.0f s: %s%s",
                total,
                now - self._window_start,
                top,
                f" ({addresses} addresses in all)" if addresses > 5 else "",
            )
        self._window_start = None
        self._logged.clear()
        self._counts.clear()
