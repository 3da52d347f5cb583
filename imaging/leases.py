"""Leases: named locks in the database that expire, for work that must not run twice at once."""

import contextlib
import datetime as dt
import os
import socket
import uuid

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from imaging.models import Lease


class Busy(Exception):
    """Another process holds the lease."""


def new_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def acquire(name: str, holder: str, seconds: float) -> bool:
    """Take (or extend) the lease if it is free, expired, or already ours; True if we hold it now.

    One conditional UPDATE decides, so two processes racing for it cannot both win.
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
    taken = (
        Lease.objects.filter(name=name)
        .filter(Q(expires_at__lt=now) | Q(holder=holder) | Q(holder=""))
        .update(holder=holder, expires_at=expires)
    )
    return taken == 1


def release(name: str, holder: str) -> None:
    Lease.objects.filter(name=name, holder=holder).update(holder="", expires_at=timezone.now())


def current(name: str) -> Lease | None:
    return Lease.objects.filter(name=name).first()


@contextlib.contextmanager
def held(name: str, seconds: float):
    """Hold the lease for the block; yields a ``renew()`` to call while working. Raises Busy."""
    holder = new_holder()
    if not acquire(name, holder, seconds):
        lease = current(name)
        raise Busy(f"{name} is held by {lease.holder} until {lease.expires_at:%Y-%m-%d %H:%M:%S}" if lease else name)

    def renew() -> None:
        if not acquire(name, holder, seconds):
            raise Busy(f"lost the {name} lease (it expired and another process took it)")

    try:
        yield renew
    finally:
        release(name, holder)
