"""The index spool: paths the SCP could not hand to the broker, drained by the worker and by reindex."""

import fcntl
import os
import threading

import pydicom
import pytest

from imaging import spool, storage
from network.handoff import IndexHandoff
from tests import dicomgen


@pytest.fixture(autouse=True)
def spool_dir(tmp_path, settings):
    settings.INDEX_SPOOL_DIR = tmp_path / "spool"
    return settings.INDEX_SPOOL_DIR


def stored_paths(tmp_path, n):
    relpaths = []
    for path in dicomgen.ct_series(tmp_path / "ct", n, size=16, patient_id="SPOOL"):
        ds = pydicom.dcmread(path)
        relpath = storage.instance_relpath(ds.SOPInstanceUID)
        storage.write_atomic(relpath, [path.read_bytes()])
        relpaths.append(relpath)
    return relpaths


def recorder():
    calls = []

    def index(paths, ae):
        calls.append((ae, list(paths)))
        return len(paths), 0

    return calls, index


def test_a_failed_hand_off_is_spooled_durably_and_drained_once(tmp_path, spool_dir, caplog):
    relpaths = stored_paths(tmp_path, 4)

    def refuse(paths, ae):
        raise ConnectionError("broker down")

    handoff = IndexHandoff(send=refuse)
    for relpath in relpaths[:3]:
        handoff.submit(relpath, "CT1")
    handoff.submit(relpaths[3], "MR1")
    assert handoff.flush(5)
    assert handoff.spooled == 4
    assert "spooled to" in caplog.text and "manage.py reindex" in caplog.text
    [spool_file] = spool_dir.iterdir()
    assert spool_file.name.endswith(f"-{os.getpid()}.spool")

    calls, index = recorder()
    result = spool.drain(index)

    assert result.as_dict() == {"files": 1, "paths": 4, "indexed": 4, "failed": 0}
    assert sorted((ae, sorted(p)) for ae, p in calls) == [("CT1", sorted(relpaths[:3])), ("MR1", [relpaths[3]])]
    assert list(spool_dir.iterdir()) == []
    assert spool.drain(index).paths == 0, "drained paths are not read again"


def test_a_spooled_file_that_no_longer_exists_is_skipped(tmp_path):
    [relpath] = stored_paths(tmp_path, 1)
    spool.append([relpath, "instances/00/00/1.2.3.dcm"], "CT1")
    calls, index = recorder()
    assert spool.drain(index).indexed == 1
    assert calls == [("CT1", [relpath])]


def test_a_path_appended_while_the_spool_is_drained_is_not_lost(tmp_path, spool_dir):
    relpaths = stored_paths(tmp_path, 3)
    spool.append(relpaths[:1], "CT1")
    indexed = []
    draining = threading.Event()
    appended = threading.Event()

    def slow_index(paths, ae):
        draining.set()
        assert appended.wait(10)
        indexed.extend(paths)
        return len(paths), 0

    def writer():
        assert draining.wait(10)
        spool.append(relpaths[1:], "CT1")  # the drained file is claimed: this goes to a new one
        appended.set()

    thread = threading.Thread(target=writer)
    thread.start()
    spool.drain(slow_index)
    thread.join(10)
    assert indexed == relpaths[:1]
    calls, index = recorder()
    spool.drain(index)
    assert calls == [("CT1", relpaths[1:])]


def test_a_crashed_drainers_claimed_file_is_taken_over_but_a_live_ones_is_not(tmp_path, spool_dir):
    relpaths = stored_paths(tmp_path, 2)
    spool_dir.mkdir(parents=True, exist_ok=True)
    dead = spool_dir / "host-1.spool.dead0001.draining"
    dead.write_text(f"CT1\t{relpaths[0]}\n")
    live = spool_dir / "host-2.spool.live0001.draining"
    live.write_text(f"CT1\t{relpaths[1]}\n")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a drainer at work holds its file's lock
    try:
        calls, index = recorder()
        spool.drain(index)
    finally:
        os.close(fd)
    assert calls == [("CT1", [relpaths[0]])]
    assert not dead.exists() and live.exists()
