"""The index spool: stored paths the SCP could not hand to the broker, kept on disk until indexed.

When publishing ``index_instances`` fails (the broker is down), the SCP appends
the paths to a spool file of its own process under INDEX_SPOOL_DIR (one
``<host>-<pid>.spool`` per process, so writers never interleave), fsynced before
it moves on. The worker drains the spool every INDEX_SPOOL_INTERVAL_SECONDS and
``reindex`` drains it first: what was stored during an outage is indexed soon
after the broker is back, by reading a list as long as the outage, never by
walking the whole archive.

Draining claims a file by renaming it (a writer then starts a new file), takes
its lock (a writer that opened it before the rename finishes its line first; see
``append``), indexes, and deletes it. A drainer that dies leaves its claimed file
behind, unlocked: the next drain takes it over. Indexing is idempotent, so a
path indexed twice costs only time.
"""

import fcntl
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from imaging import storage

log = logging.getLogger(__name__)

SUFFIX = ".spool"
CLAIMED = ".draining"
BATCH = 500  # paths per index call: a long outage's spool is indexed in batches like reindex's


def folder() -> Path:
    return Path(settings.INDEX_SPOOL_DIR)


def _own_file() -> Path:
    return folder() / f"{socket.gethostname()}-{os.getpid()}{SUFFIX}"


def append(paths: list[str], source_ae: str) -> Path:
    """Add ``paths`` (sent by ``source_ae``) to this process's spool file, durably.

    One line per path, "AE<TAB>path". Returns the spool file. Raises OSError if the
    spool cannot be written (the caller logs it: the files are still on disk and
    ``reindex`` finds them by walking).
    """
    folder().mkdir(parents=True, exist_ok=True)
    target = _own_file()
    data = "".join(f"{source_ae}\t{p}\n" for p in paths if "\n" not in p and "\t" not in p).encode()
    while True:
        created = not target.exists()
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            try:
                # Only a drainer holds the lock of our file for long, and only after
                # claiming (renaming) it: then the file is no longer ours.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            # A drainer may have claimed the file between our open and our lock:
            # then we hold an orphan, and write to a new file instead.
            try:
                same = os.stat(target).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            storage.fsync_folder(folder())  # the new file's name must survive a power cut too
        return target


def _exists(relpath: str) -> bool:
    from imaging import storage

    try:
        return storage.absolute(relpath).is_file()
    except ValueError:
        return False  # not a path inside the store: never ours to index


@dataclass
class DrainResult:
    files: int = 0
    paths: int = 0
    indexed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"files": self.files, "paths": self.paths, "indexed": self.indexed, "failed": self.failed}


def _read_lines(fd: int) -> dict[str, list[str]]:
    by_ae: dict[str, list[str]] = {}
    with os.fdopen(os.dup(fd), "rb") as f:
        for line in f.read().decode("utf-8", errors="replace").splitlines():
            ae, sep, path = line.partition("\t")
            if sep and path:
                by_ae.setdefault(ae, []).append(path)
    return by_ae


def drain(index: Callable[[list[str], str], tuple[int, int]]) -> DrainResult:
    """Index every spooled path with ``index(paths, source_ae) -> (indexed, failed)``.

    A spool file is deleted only after ``index`` returned for all its paths: if it
    raises (the database is down), the claimed file stays and the next drain
    takes it over.
    """
    result = DrainResult()
    base = folder()
    if not base.is_dir():
        return result
    candidates: list[tuple[Path, bool]] = []  # (claimed file, claimed by us)
    for entry in sorted(base.iterdir()):
        if entry.name.endswith(SUFFIX):
            claimed = entry.with_name(f"{entry.name}.{uuid.uuid4().hex[:8]}{CLAIMED}")
            try:
                os.rename(entry, claimed)
            except FileNotFoundError:
                continue  # another drainer took it
            candidates.append((claimed, True))
        elif entry.name.endswith(CLAIMED):
            # Claimed by another drainer: ours to take over only if it died (the
            # lock it held went with it).
            candidates.append((entry, False))
    for path, ours in candidates:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                # On a file we claimed, this waits only for a writer finishing its
                # line. A live drainer holds its file's lock for the whole drain.
                fcntl.flock(fd, fcntl.LOCK_EX if ours else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            if not path.exists():
                continue  # finished and deleted by the drainer we waited for
            by_ae = _read_lines(fd)
            result.files += 1
            for ae, paths in by_ae.items():
                result.paths += len(paths)
                # A file removed since it was spooled (a test, an administrator) is no failure.
                present = [p for p in paths if _exists(p)]
                if len(present) < len(paths):
                    log.info("index spool: %d spooled file(s) no longer exist", len(paths) - len(present))
                paths = present
                for start in range(0, len(paths), BATCH):
                    indexed, failed = index(paths[start : start + BATCH], ae)
                    result.indexed += indexed
                    result.failed += failed
            path.unlink()
        finally:
            os.close(fd)
    if result.files:
        log.info(
            "index spool: %d path(s) read from %d file(s), %d indexed, %d failed",
            result.paths,
            result.files,
            result.indexed,
            result.failed,
        )
    return result
