"""Leases: named locks in the database that expire, for work that must not run twice at once."""

import contextlib
import datetime as dt
import os
import socket
import uuid
from pathlib import Path

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from imaging.models import Lease


class Busy(Exception):
    """Another process holds the lease."""


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_gone(holder: str) -> bool:
    """True when ``holder`` names a process of this host that no longer runs (it was killed).

    What a restarted worker asks of a lease its killed predecessor left: waiting for
    the lease to expire is needed only when the holder may be alive on another host.
    """
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it runs, as another user
    return _zombie(int(pid))


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has ended and only waits to be reaped (Linux /proc): a pool process killed with
    its worker stays so, still answering signal 0, where PID 1 of a container reaps nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def acquire(name: str, holder: str, seconds: float, *, take_from_dead: bool = False) -> bool:
    """Take (or extend) the lease if it is free, expired, or already ours; True if we hold it now.

    One conditional UPDATE decides, so two processes racing for it cannot both win.
    With ``take_from_dead``, a lease whose holder is a dead process of this host
    (``holder_gone``) is taken before it expires.
    """
    now = timezone.now()
    expires = now + dt.timedelta(seconds=seconds)
    if not Lease.objects.filter(name=name).exists():
        try:
            with transaction.atomic():
                Lease.objects.create(name=name, holder=holder, expires_at=expires)
            return True
        except IntegrityError:
            pass  # someone created it first: compete below
    free = Q(expires_at__lt=now) | Q(holder=holder) | Q(holder="")
    if take_from_dead:
        lease = current(name)
        if lease is not None and lease.holder and holder_gone(lease.holder):
            free |= Q(holder=lease.holder)  # still conditional: a live process that took it since keeps it
    taken = Lease.objects.filter(name=name).filter(free).update(holder=holder, expires_at=expires)
    return taken == 1


def release(name: str, holder: str) -> None:
    Lease.objects.filter(name=name, holder=holder).update(holder="", expires_at=timezone.now())


def current(name: str) -> Lease | None:
    return Lease.objects.filter(name=name).first()


def taken(names: list[str]) -> set[str]:
    """Those of ``names`` whose lease a process may still be holding (not expired, holder not gone)."""
    now = timezone.now()
    rows = Lease.objects.filter(name__in=names, expires_at__gte=now).exclude(holder="").values_list("name", "holder")
    return {name for name, holder in rows if not holder_gone(holder)}


@contextlib.contextmanager
def held(name: str, seconds: float, *, take_from_dead: bool = False):
    """Hold the lease for the block; yields a ``renew()`` to call while working. Raises Busy."""
    holder = new_holder()
    if not acquire(name, holder, seconds, take_from_dead=take_from_dead):
        lease = current(name)
        raise Busy(f"{name} is held by {lease.holder} until {lease.expires_at:%Y-%m-%d %H:%M:%S}" if lease else name)

    def renew() -> None:
        if not acquire(name, holder, seconds):
            raise Busy(f"lost the {name} lease (it expired and another process took it)")

    try:
        yield renew
    finally:
        release(name, holder)
