"""Where a stored file lives on disk, and how it gets there safely.

Layout: ``STORAGE_DIR/instances/ab/cd/<SOP Instance UID>.dcm``, where ``abcd`` are
the first hex digits of the SHA-1 of the UID: two levels of 256 folders keep any
folder small, and a re-sent instance lands on the same path and replaces the old
file atomically. A UID is validated before it comes anywhere near a path.
"""

import hashlib
import itertools
import logging
import os
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from django.conf import settings

# PS3.5 9.1: components of digits separated by ".", at most 64 characters.
# Checked before any path is built. Leading zeros in a component ("1.2.03")
# break the standard but not our paths: devices send them, so we store them.
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
INSTANCES = "instances"
THUMBNAILS = "thumbnails"
log = logging.getLogger(__name__)
PARTIAL_SUFFIX = ".part"


class InvalidUID(ValueError):
    pass


def is_valid_uid(uid: object) -> bool:
    return isinstance(uid, str) and 0 < len(uid) <= 64 and bool(_UID_RE.match(uid))


def check_uid(uid: object, what: str = "UID") -> str:
    if not is_valid_uid(uid):
        raise InvalidUID(f"{what} {uid!r} is not a valid DICOM UID")
    return uid  # type: ignore[return-value]


def root() -> Path:
    return Path(settings.STORAGE_DIR)


def _shard(uid: str) -> str:
    digest = hashlib.sha1(uid.encode("ascii"), usedforsecurity=False).hexdigest()
    return f"{digest[:2]}/{digest[2:4]}"


def instance_relpath(sop_instance_uid: str) -> str:
    """The path, relative to STORAGE_DIR, where an instance is stored."""
    uid = check_uid(sop_instance_uid, "SOP Instance UID")
    return f"{INSTANCES}/{_shard(uid)}/{uid}.dcm"


def thumbnail_relpath(series_instance_uid: str) -> str:
    uid = check_uid(series_instance_uid, "Series Instance UID")
    return f"{THUMBNAILS}/{_shard(uid)}/{uid}.png"


# Paths this module builds itself: nothing but hex shards and a validated UID.
_OWN_LAYOUT = re.compile(r"^(instances|thumbnails)/[0-9a-f]{2}/[0-9a-f]{2}/[0-9.]+\.(dcm|png)$")


def absolute(relpath: str) -> Path:
    """The absolute path of a stored relative path, refusing anything outside STORAGE_DIR."""
    if _OWN_LAYOUT.match(relpath):
        # Built by instance_relpath/thumbnail_relpath: it cannot leave the store,
        # and resolving symlinks on every C-STORE would cost several syscalls.
        return root() / relpath
    base = root().resolve()
    path = (base / relpath).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"{relpath!r} is outside the storage directory")
    return path


_counter = itertools.count()


class Replaced(Exception):
    """The file a rewrite read was replaced by another before the rewrite could take its place."""


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_dev, a.st_size, a.st_mtime_ns) == (b.st_ino, b.st_dev, b.st_size, b.st_mtime_ns)


def _make_folder(folder: str) -> None:
    """``os.makedirs(folder, exist_ok=True)`` that tries the folder itself first.

    A shard's folder is usually the one missing (its parent is one of 256): a
    mkdir, not makedirs' stat of each parent before it.
    """
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)


def fsync_folder(folder: "str | os.PathLike") -> None:
    """Make a folder's entries (files made, renamed or removed in it) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartialFile:
    """A file being written beside its destination: it becomes the destination whole (``commit``) or not at all.

    The bytes go to a temporary file in the destination folder, which is fsynced
    and then renamed over the destination; the folder is fsynced too so that the
    rename itself survives a power cut. Only when ``commit`` returns may a caller
    report the file as stored. The temporary file sits beside its destination: a
    rename within one folder does not take the file system's cross-folder rename
    lock, so processes storing at once do not queue behind each other. A C-STORE
    receiving a large data set writes its fragments here as they arrive.
    """

    def __init__(self, relpath: str, fsync: bool | None = None):
        self.fsync = settings.STORAGE_FSYNC if fsync is None else fsync
        self.dest = absolute(relpath)
        self.folder = str(self.dest.parent)
        self.path = (
            f"{self.folder}/.{self.dest.name}.{os.getpid()}.{threading.get_ident()}.{next(_counter)}{PARTIAL_SUFFIX}"
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            self._fd: int | None = os.open(self.path, flags, 0o640)
        except FileNotFoundError:  # the folder's first file: make it (a tenth of the store's work if always asked)
            _make_folder(self.folder)
            self._fd = os.open(self.path, flags, 0o640)
        self.size = 0
        self.done = False

    def write(self, data) -> None:
        view = memoryview(data)
        self.size += len(view)
        while view:
            view = view[os.write(self._fd, view) :]

    def commit(self, *, replacing: "os.stat_result | None" = None) -> Path:
        """Make the bytes written the destination file, durably if ``fsync``; discard them if that fails.

        ``replacing``: the destination as the caller read it; if another file has taken
        its place since (a re-store), the bytes are discarded and ``Replaced`` is raised.
        """
        try:
            if self.fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            if replacing is not None and not same_file(os.stat(self.dest), replacing):
                raise Replaced(f"{self.dest} was replaced while it was being rewritten")
            os.replace(self.path, self.dest)
        except BaseException:
            self.discard()
            raise
        self.done = True
        if self.fsync:
            fsync_folder(self.folder)
        return self.dest

    def discard(self) -> None:
        """Remove the temporary file; nothing once committed or discarded."""
        if self.done:
            return
        self.done = True
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class GroupCommit:
    """Files committed together, their fsyncs overlapping; each counts as stored only after ``wait``.

    One fsync after another costs a journal commit each; fsyncs issued at once are
    folded into a few (see STORAGE_FSYNC_THREADS). The durability is the same as
    ``PartialFile.commit``: a caller reports a file stored only once ``wait`` says so.
    Used where one answer covers several files (a STOW-RS request).
    """

    _executor: ThreadPoolExecutor | None = None
    _executor_lock = threading.Lock()

    def __init__(self):
        self._pending: dict[Path, Future] = {}

    @classmethod
    def _pool(cls) -> ThreadPoolExecutor:
        with cls._executor_lock:
            if cls._executor is None:
                cls._executor = ThreadPoolExecutor(settings.STORAGE_FSYNC_THREADS, thread_name_prefix="fsync")
            return cls._executor

    def commit(self, partial: "PartialFile", replacing: os.stat_result | None = None) -> None:
        """Start ``partial.commit()``; the file is the group's from now on (``wait`` gives its fate)."""
        self.settle(partial.dest)
        self._pending[partial.dest] = self._pool().submit(partial.commit, replacing=replacing)

    def settle(self, dest: Path) -> None:
        """Wait for a pending commit to ``dest``: what is already there is looked at before a new write."""
        pending = self._pending.get(dest)
        if pending is not None:
            pending.exception()

    def wait(self) -> dict[Path, BaseException | None]:
        """Each file's outcome: None when it is durably in place, else why not (it was discarded)."""
        return {dest: future.exception() for dest, future in self._pending.items()}


def write_atomic(
    relpath: str,
    chunks,
    fsync: bool | None = None,
    group: GroupCommit | None = None,
    *,
    replacing: os.stat_result | None = None,
) -> Path:
    """Write ``chunks`` (bytes-like) to ``relpath`` so that the file is either whole or absent (``PartialFile``).

    With ``group``, the commit is only started: the group's ``wait`` says when it is done.
    ``replacing``: see ``PartialFile.commit``.
    """
    partial = PartialFile(relpath, fsync)
    try:
        for chunk in chunks:
            partial.write(chunk)
    except BaseException:
        partial.discard()
        raise
    if group is not None:
        group.commit(partial, replacing)
        return partial.dest
    return partial.commit(replacing=replacing)


# Written into instances/ once every shard folder exists (prepare_folders).
FOLDERS_READY = ".folders-ready"
SHARD_FOLDERS = 256 * 256


def folders_prepared() -> bool:
    return (root() / INSTANCES / FOLDERS_READY).exists()


def prepare_folders(*, fsync: bool | None = None) -> int:
    """Make every shard folder of the instance layout that is missing; how many were made.

    In a young archive nearly every image is the first in its folder, and its C-STORE
    waits for a mkdir (on ext4 the biggest kernel cost of a small image: choosing the
    folder's inode). Made ahead of need, once, the folders are also durable before any
    file goes into one (each level fsynced after its children). They take one block
    each: 256 MB on ext4 with 4 KB blocks. Refused (OSError) when that would leave
    less than STORAGE_MIN_FREE_MB free; safe to run again, or by two processes at once.
    """
    fsync = settings.STORAGE_FSYNC if fsync is None else fsync
    base = root() / INSTANCES
    if (base / FOLDERS_READY).exists():
        return 0
    base.mkdir(parents=True, exist_ok=True)
    needed = SHARD_FOLDERS * os.statvfs(base).f_bsize
    if free_bytes() - needed < settings.STORAGE_MIN_FREE_MB * 1024 * 1024:
        raise OSError(
            f"not preparing {SHARD_FOLDERS} folders ({needed // (1024 * 1024)} MB) in {base}: "
            f"it would leave less than STORAGE_MIN_FREE_MB={settings.STORAGE_MIN_FREE_MB} free"
        )
    made = 0
    for first in range(256):
        top = f"{base}/{first:02x}"
        _make_folder(top)
        made_here = 0
        for second in range(256):
            try:
                os.mkdir(f"{top}/{second:02x}")
            except FileExistsError:
                continue
            made_here += 1
        if fsync and made_here:
            fsync_folder(top)
        made += made_here
    if fsync:
        fsync_folder(str(base))
        fsync_folder(str(root()))
    write_atomic(f"{INSTANCES}/{FOLDERS_READY}", [b"%d\n" % SHARD_FOLDERS], fsync)
    return made


def iter_instance_files(*, remove_partials_older_than: float | None = None):
    """Every stored instance file, as a path relative to STORAGE_DIR.

    With ``remove_partials_older_than`` (seconds), temporary files left by a
    process that died mid-write are removed on the way: the walk over the whole
    archive is the expensive part, so it is done once for both jobs.
    """
    base = root() / INSTANCES
    if not base.is_dir():
        return
    limit = None if remove_partials_older_than is None else time.time() - remove_partials_older_than
    for dirpath, _dirnames, filenames in os.walk(base):
        for name in filenames:
            if name.endswith(".dcm") and not name.startswith("."):
                yield os.path.relpath(os.path.join(dirpath, name), root())
            elif limit is not None and name.endswith(PARTIAL_SUFFIX):
                path = os.path.join(dirpath, name)
                try:
                    if os.stat(path).st_mtime < limit:
                        os.unlink(path)
                        log.info("removed %s, left by an interrupted write", path)
                except FileNotFoundError:
                    pass


def free_bytes() -> int:
    """Bytes available to us on the file system that holds STORAGE_DIR."""
    folder = root()
    while True:
        try:
            stat = os.statvfs(folder)
        except (FileNotFoundError, NotADirectoryError):
            if folder == folder.parent:
                raise
            folder = folder.parent  # a fresh install: STORAGE_DIR is made on the first store (or cannot be)
            continue
        return stat.f_bavail * stat.f_frsize


def low_space_reason() -> str | None:
    """Why nothing more should be stored (free space below STORAGE_MIN_FREE_MB), or None.

    Checked before every store: a full disk must be met with "out of resources"
    while the files already stored, the database and the logs still have room.
    """
    limit = settings.STORAGE_MIN_FREE_MB * 1024 * 1024
    try:
        free = free_bytes()
    except OSError as exc:
        return f"cannot read the free space of {root()}: {exc}"
    if free < limit:
        return f"{free // (1024 * 1024)} MB free on {root()}, below STORAGE_MIN_FREE_MB={settings.STORAGE_MIN_FREE_MB}"
    return None
