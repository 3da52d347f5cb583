"""Hand stored files to the Celery indexer without slowing the C-STORE hot path.

The store handler only appends the path to an in-memory queue; a background
thread sends what has accumulated as one ``index_instances`` task, so a burst of
300 images becomes a handful of messages. If the broker is down the files are
still safe on disk, and their paths go to the index spool (imaging/spool.py),
fsynced: the worker drains it soon after the broker is back, and
``manage.py reindex`` drains it too.
"""

import logging
import os
import threading
import time

from django.conf import settings

log = logging.getLogger(__name__)


class IndexHandoff:
    """Stored paths gathered in memory and published by a background thread, a batch at a time.

    A path's ``submit`` takes a lock and appends; it wakes the thread only for the
    first path of a batch and for the one that fills it, not for every image: a
    thread woken per image costs its process a few context switches (and a GIL
    hand-over) on the C-STORE hot path.
    """

    def __init__(self, send=None, spool_append=None):
        # ``send(paths, source_ae)`` publishes one batch, ``spool_append(paths,
        # source_ae)`` keeps a batch that could not be sent; tests may pass their own.
        self._send = send or _send_to_celery
        self._spool_append = spool_append or _spool_append
        self.spooled = 0
        self._pid = None
        self._pending: list[tuple[str, str]] = []
        self._stopping = False
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.lost = 0

    def _ensure_thread(self) -> None:
        # A forked child inherits the object but not the thread (nor a lock it may have held): start afresh.
        if self._pid == os.getpid() and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                if self._pid != os.getpid():
                    self._cond = threading.Condition(threading.Lock())
                    self._pending = []
                self._pid = os.getpid()
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="index-handoff", daemon=True)
                self._thread.start()

    def submit(self, relpath: str, source_ae: str) -> None:
        self._ensure_thread()
        with self._cond:
            self._pending.append((relpath, source_ae))
            waiting = len(self._pending)
            if waiting == 1 or waiting == max(settings.INDEX_HANDOFF_MAX_PATHS, 1):  # past it, it is not waiting
                self._cond.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Send everything queued and stop the thread; False if it did not finish in time."""
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            return True
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        finished = not self._thread.is_alive()
        if not finished:
            log.error("index hand-off did not finish within %.0fs; reindex will find the files", timeout)
        return finished

    def _next_batch(self) -> tuple[list[tuple[str, str]], bool]:
        """Wait for paths and gather them; (the batch, whether the thread is to stop after sending it)."""
        most = max(settings.INDEX_HANDOFF_MAX_PATHS, 1)
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            # Linger briefly after the first path so that a series streaming in
            # travels as a few dozen paths per message rather than one each: the
            # indexer pays per batch too (docs/fastindex.md: 5 paths cost it 6 ms
            # an image, 64 cost 3 ms). The association's end sends at once (flush).
            deadline = time.monotonic() + settings.INDEX_HANDOFF_LINGER_MS / 1000
            while not self._stopping and len(self._pending) < most:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, self._pending = self._pending[:most], self._pending[most:]
            return batch, self._stopping and not self._pending

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._next_batch()
            by_ae: dict[str, list[str]] = {}
            for relpath, ae in batch:
                by_ae.setdefault(ae, []).append(relpath)
            for ae, paths in by_ae.items():
                try:
                    self._send(paths, ae)
                    self.sent += len(paths)
                except Exception as exc:
                    self.lost += len(paths)
                    self._spool(paths, ae, exc)

    def _spool(self, paths: list[str], ae: str, exc: Exception) -> None:
        try:
            spooled = self._spool_append(paths, ae)
        except OSError as spool_exc:
            log.error(
                "cannot queue %d stored file(s) for indexing (%s) nor spool them (%s); they are safe on "
                "disk and `manage.py reindex` will index them",
                len(paths),
                exc,
                spool_exc,
            )
            return
        self.spooled += len(paths)
        log.error(
            "cannot queue %d stored file(s) for indexing (%s); they are safe on disk, spooled to %s: "
            "the worker indexes them when the broker is back, or `manage.py reindex` will index them",
            len(paths),
            exc,
            spooled,
        )


def warm_up() -> None:
    """Import and set up, once in the listening process, what every forked child needs to publish.

    Without this each association's process would spend a good part of a
    second importing Celery, kombu and the Redis transport on its first image.
    """
    import kombu.transport.redis  # noqa: F401 - imported for its side effect on sys.modules

    from imaging.tasks import index_instances

    index_instances.app.finalize(auto=True)
    index_instances.app.amqp.router  # noqa: B018 - builds the routing tables now, not in each child


def _send_to_celery(paths: list[str], source_ae: str) -> None:
    from imaging.tasks import index_instances

    index_instances.apply_async(args=[paths, source_ae], retry=False)


def _spool_append(paths: list[str], source_ae: str):
    from imaging import spool

    return spool.append(paths, source_ae)
