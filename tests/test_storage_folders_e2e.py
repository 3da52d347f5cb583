"""runscp makes the storage's shard folders at its first start, in a low-priority process of its own
(STORAGE_PREPARE_FOLDERS=1, the default), or leaves each folder to its first file (0); it stores either way."""

import os

import pytest

from imaging import storage
from network.models import ModalityNode
from network.scp import PREPARE_NAME
from tests import dicomgen, procs
from tests.conftest import service_env, start_scp

pytestmark = pytest.mark.e2e


def helpers_of(scp) -> list[int]:
    return [child for child in procs.children(scp.pid) if procs.name(child) == PREPARE_NAME]


def store_one(tmp_path, port: int, n: int) -> str:
    uid = f"1.2.826.0.1.3680043.8.498.5151.{n}"
    path = dicomgen.small_image(tmp_path, f"{n}.dcm", uid, uid + ".1", n)
    done = procs.dcmtk("storescu", "-aet", "MODALITY", "-aec", "IMAGING", "127.0.0.1", str(port), str(path))
    assert done.returncode == 0, done.stderr
    from pydicom import dcmread

    return storage.instance_relpath(dcmread(path).SOPInstanceUID)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prepare", ["1", "0"], ids=["folders-ahead", "folder-per-first-file"])
def test_runscp_stores_whether_or_not_it_makes_the_folders_ahead(redis_url, tmp_path, prepare):
    ModalityNode.objects.create(ae_title="MODALITY", host="127.0.0.1", port=procs.free_port())
    store = tmp_path / "storage"
    # A broker database of its own: the session's worker takes none of these tasks.
    env = service_env(redis_url.rsplit("/", 1)[0] + "/5", STORAGE_DIR=str(store), STORAGE_PREPARE_FOLDERS=prepare)
    scp, port = start_scp(env, tmp_path, name=f"runscp-prepare-{prepare}")
    base = store / storage.INSTANCES
    marker = base / storage.FOLDERS_READY
    try:
        # Listening and storing do not wait for the folders.
        first = store_one(tmp_path, port, 1)
        assert (store / first).is_file()
        if prepare == "1":
            procs.wait_for(marker.exists, 120, "the storage's folders")
            procs.wait_for(lambda: not helpers_of(scp), 30, "the helper to end and be reaped")
            assert len(os.listdir(base)) == 256 + 1  # the first level and the marker
            assert all(len(os.listdir(base / f"{i:02x}")) == 256 for i in range(256))
            log = (tmp_path / "runscp-prepare-1.log").read_text()
            assert "storage folders ahead of need in" in log
        second = store_one(tmp_path, port, 2)
        assert (store / second).is_file() and (store / first).is_file()
        if prepare == "0":
            assert not helpers_of(scp) and not marker.exists()
            # Only the folders of the two files stored.
            assert sorted(os.listdir(base)) == sorted({first.split("/")[1], second.split("/")[1]})
    finally:
        assert procs.stop(scp) == 0
    # A second start of a prepared store has nothing to make: no helper at all.
    if prepare == "1":
        scp, port = start_scp(env, tmp_path, name="runscp-prepare-again")
        try:
            assert not helpers_of(scp)
            assert (store / store_one(tmp_path, port, 3)).is_file()
            assert "storage folders" not in (tmp_path / "runscp-prepare-again.log").read_text()
        finally:
            assert procs.stop(scp) == 0


@pytest.mark.django_db(transaction=True)
def test_stopping_runscp_while_it_makes_the_folders_stops_the_helper_too(redis_url, tmp_path):
    store = tmp_path / "storage"
    env = service_env(redis_url.rsplit("/", 1)[0] + "/5", STORAGE_DIR=str(store), STORAGE_PREPARE_FOLDERS="1")
    scp, _ = start_scp(env, tmp_path, name="runscp-prepare-stop")
    marker = store / storage.INSTANCES / storage.FOLDERS_READY
    helpers = helpers_of(scp)  # 65,536 folders take seconds; runscp listens at once
    assert len(helpers) == 1
    assert procs.stop(scp) == 0
    assert not os.path.exists(f"/proc/{helpers[0]}") or procs.name(helpers[0]) != PREPARE_NAME
    assert not marker.exists()
    assert "ended with status" not in (tmp_path / "runscp-prepare-stop.log").read_text()
    # Nothing half made is taken for done: the next start finishes it.
    scp, _ = start_scp(env, tmp_path, name="runscp-prepare-resume")
    try:
        procs.wait_for(marker.exists, 120, "the storage's folders")
    finally:
        procs.stop(scp)
    assert sum(len(os.listdir(store / storage.INSTANCES / f"{i:02x}")) for i in range(256)) == storage.SHARD_FOLDERS
