"""What /health checks: the database, the broker, the image store and the indexing failures.

Each check runs in a thread of its own and is given ``settings.HEALTH_CHECK_TIMEOUT``
seconds: a broker that accepts connections and never answers, a database server
that hangs or an NFS store that blocks a write all become a failed check, never a
hung health request. The checks run side by side, so the whole answer takes at most
one timeout.

/health is public (load balancers and monitors ask without signing in), so what
it says stays at what an operator acts on: which check failed and the kind of
error. The full error, with host names and paths, goes to the log.
"""

import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import redis
from django.conf import settings
from django.db import connections
from redis.backoff import NoBackoff
from redis.retry import Retry

from imaging import storage

log = logging.getLogger(__name__)


@dataclass
class Result:
    ok: bool
    error: str = ""
    details: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"ok": self.ok, **({"error": self.error} if self.error else {}), **self.details}


def _redacted(exc: BaseException) -> str:
    """The kind of error only: its message may name hosts, users or paths, and the log has it."""
    return f"{type(exc).__name__} (details in the web server's log)"


def check_database() -> Result:
    # A connection of this thread's own, closed afterwards: Django's connections are per thread.
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connections.close_all()
    return Result(True)


def check_broker() -> Result:
    url = settings.CELERY_BROKER_URL
    if urlparse(url).scheme not in ("redis", "rediss", "unix"):
        return Result(True, details={"checked": False})
    timeout = settings.HEALTH_CHECK_TIMEOUT
    client = redis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    finally:
        client.close()
    return Result(True)


def check_storage() -> Result:
    """STORAGE_DIR takes a new file (written and removed), as every C-STORE needs.

    Made if missing, as the first store would make it: a fresh install is healthy.
    """
    storage.root().mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=storage.root(), prefix=".health-") as probe:
        probe.write(b"ok")
        probe.flush()
    return Result(True)


def check_free_space() -> Result:
    details = {"free_mb": storage.free_bytes() // (1024 * 1024), "min_free_mb": settings.STORAGE_MIN_FREE_MB}
    reason = storage.low_space_reason()
    if reason:
        return Result(False, reason.replace(str(storage.root()), "STORAGE_DIR"), details)
    return Result(True, details=details)


def check_indexing_failures() -> Result:
    from records.models import IndexingFailure

    try:
        count = IndexingFailure.objects.count()
    finally:
        connections.close_all()
    limit = settings.HEALTH_MAX_INDEXING_FAILURES
    details = {"count": count, **({"max": limit} if limit >= 0 else {})}
    if 0 <= limit < count:
        return Result(False, f"{count} stored files could not be indexed (see Indexing failures in the admin)", details)
    return Result(True, details=details)


CHECKS: dict[str, Callable[[], Result]] = {
    "database": check_database,
    "broker": check_broker,
    "storage": check_storage,
    "free_space": check_free_space,
    "indexing_failures": check_indexing_failures,
}


def run_checks(checks: dict[str, Callable[[], Result]] | None = None, timeout: float | None = None) -> dict:
    """Every check at once, each in a daemon thread; those not done within ``timeout`` count as failed.

    Daemon threads, not a thread pool: a check stuck in a system call must not keep
    a gunicorn worker from exiting.
    """
    checks = CHECKS if checks is None else checks
    timeout = settings.HEALTH_CHECK_TIMEOUT if timeout is None else timeout
    results: dict[str, Result] = {}

    def run(name: str, check: Callable[[], Result]) -> None:
        try:
            results[name] = check()
        except Exception as exc:
            log.warning("health check %s failed: %s", name, exc)
            results[name] = Result(False, _redacted(exc))

    threads = [threading.Thread(target=run, args=(n, c), name=f"health-{n}", daemon=True) for n, c in checks.items()]
    for thread in threads:
        thread.start()
    # One deadline for all: they run side by side.
    end = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    answer = {}
    for name in checks:
        result = results.get(name)
        if result is None:
            log.warning("health check %s gave no answer within %s s", name, timeout)
            result = Result(False, f"no answer within {timeout} s")
        elif not result.ok and name in ("free_space", "indexing_failures"):
            log.warning("health check %s failed: %s", name, result.error)
        answer[name] = result
    return answer
