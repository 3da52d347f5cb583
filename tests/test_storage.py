"""Where files live, and how they get there: strict about anything that could hurt the store."""

import os

import pytest

from imaging import storage


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "0.1", "1.2.03.4", "9" * 64])
def test_it_accepts_uids_that_real_devices_send(uid):
    assert storage.is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid", ["", "../etc/passwd", "1.2.3/4", "1..2", ".1.2", "1.2.", "1.2.3 ", "1.2.a", "9" * 65, None, "1.2\x00"]
)
def test_it_refuses_uids_that_could_become_paths(uid):
    assert not storage.is_valid_uid(uid)
    with pytest.raises(storage.InvalidUID):
        storage.instance_relpath(uid)


def test_an_instance_path_is_sharded_and_stable():
    path = storage.instance_relpath("1.2.3.4")
    assert path == storage.instance_relpath("1.2.3.4")
    assert path.startswith("instances/") and path.endswith("/1.2.3.4.dcm")
    assert len(path.split("/")) == 4
    assert storage.instance_relpath("1.2.3.5") != path


def test_absolute_refuses_a_path_outside_the_store():
    with pytest.raises(ValueError, match="outside"):
        storage.absolute("../../etc/passwd")


def test_write_atomic_replaces_the_file_whole_and_leaves_no_temporary_file():
    relpath = storage.instance_relpath("1.2.826.0.1.3680043.8.498.1")
    storage.write_atomic(relpath, [b"first"])
    storage.write_atomic(relpath, [b"second ", b"version"])
    assert storage.absolute(relpath).read_bytes() == b"second version"
    assert list(storage.absolute(relpath).parent.glob("*.part")) == []


def test_a_failed_write_keeps_the_old_file_and_cleans_up():
    relpath = storage.instance_relpath("1.2.826.0.1.3680043.8.498.2")
    storage.write_atomic(relpath, [b"safe"])

    def chunks():
        yield b"half"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        storage.write_atomic(relpath, chunks())
    assert storage.absolute(relpath).read_bytes() == b"safe"
    assert list(storage.absolute(relpath).parent.glob("*.part")) == []


def test_the_archive_walk_lists_instances_and_removes_only_stale_partial_files():
    relpath = storage.instance_relpath("1.2.826.0.1.3680043.8.498.3")
    storage.write_atomic(relpath, [b"x"])
    folder = storage.absolute(relpath).parent
    stale = folder / ".old.part"
    fresh = folder / ".new.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    os.utime(stale, (0, 0))
    listed = list(storage.iter_instance_files(remove_partials_older_than=60))
    assert relpath in listed and not any(p.endswith(".part") for p in listed)
    assert not stale.exists() and fresh.exists()
    fresh.unlink()
