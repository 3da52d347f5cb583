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


# --- Shard folders made ahead of need (STORAGE_PREPARE_FOLDERS) ---------------------------------


@pytest.fixture
def fresh_store(tmp_path, settings):
    settings.STORAGE_DIR = tmp_path / "storage"
    settings.STORAGE_MIN_FREE_MB = 1
    return settings.STORAGE_DIR


def test_prepare_folders_makes_every_shard_folder_once_and_syncs_each_level(fresh_store, monkeypatch):
    synced = []
    real_fsync_folder = storage.fsync_folder
    monkeypatch.setattr(storage, "fsync_folder", lambda folder: synced.append(folder) or real_fsync_folder(folder))
    assert not storage.folders_prepared()

    assert storage.prepare_folders(fsync=True) == storage.SHARD_FOLDERS
    base = fresh_store / storage.INSTANCES
    tops = sorted(p.name for p in base.iterdir() if p.is_dir())
    assert tops == [f"{i:02x}" for i in range(256)]
    assert all(len(os.listdir(base / top)) == 256 for top in tops)
    assert storage.folders_prepared()
    # Each first level after its 256 folders, then instances/ and the storage itself,
    # then the marker's own folder (write_atomic): nothing made is left unsynced.
    assert synced[:256] == [str(base / top) for top in tops]
    assert synced[256:] == [str(base), str(fresh_store), str(base)]

    # Once prepared, nothing more to do; a folder lost since is made by its first file.
    assert storage.prepare_folders() == 0
    relpath = storage.instance_relpath("1.2.826.0.1.3680043.8.498.77")
    leaf = storage.absolute(relpath).parent
    leaf.rmdir()
    storage.write_atomic(relpath, [b"x"])
    assert storage.absolute(relpath).read_bytes() == b"x"
    # The walk lists instances only: not the marker, not the empty folders.
    assert list(storage.iter_instance_files()) == [relpath]


def test_an_interrupted_preparation_is_finished_by_the_next(fresh_store):
    storage.prepare_folders(fsync=False)
    base = fresh_store / storage.INSTANCES
    (base / storage.FOLDERS_READY).unlink()  # as if it had been stopped before the end
    for second in ("00", "ab", "ff"):
        (base / "7f" / second).rmdir()
    assert not storage.folders_prepared()
    assert storage.prepare_folders(fsync=False) == 3
    assert storage.folders_prepared() and len(os.listdir(base / "7f")) == 256


def test_a_store_into_prepared_folders_makes_no_folder(fresh_store, monkeypatch):
    storage.prepare_folders(fsync=False)

    def no_mkdir(folder):
        raise AssertionError(f"{folder} was made by a store")

    monkeypatch.setattr(storage, "_make_folder", no_mkdir)
    for n in range(20):
        relpath = storage.instance_relpath(f"1.2.826.0.1.3680043.8.498.9.{n}")
        storage.write_atomic(relpath, [b"image %d" % n], fsync=True)
        assert storage.absolute(relpath).read_bytes() == b"image %d" % n


def test_without_preparation_a_store_makes_its_folder(fresh_store, monkeypatch):
    made = []
    real_make_folder = storage._make_folder
    monkeypatch.setattr(storage, "_make_folder", lambda folder: made.append(folder) or real_make_folder(folder))
    relpath = storage.instance_relpath("1.2.826.0.1.3680043.8.498.78")
    storage.write_atomic(relpath, [b"x"])
    assert made == [str(storage.absolute(relpath).parent)]
    assert storage.absolute(relpath).read_bytes() == b"x"


def test_prepare_folders_refuses_to_eat_into_the_free_space_kept_for_images(fresh_store, settings):
    free_mb = storage.free_bytes() // (1024 * 1024)
    settings.STORAGE_MIN_FREE_MB = max(free_mb - 10, 1)  # 10 MB to spare: far less than 65,536 folders take
    with pytest.raises(OSError, match="STORAGE_MIN_FREE_MB"):
        storage.prepare_folders()
    assert not storage.folders_prepared()
    assert list((fresh_store / storage.INSTANCES).iterdir()) == []


def test_the_preparestorage_command_says_what_it_made(fresh_store):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("preparestorage", stdout=out)
    assert out.getvalue().startswith(f"{storage.SHARD_FOLDERS} folders made")
    out = StringIO()
    call_command("preparestorage", stdout=out)
    assert out.getvalue().startswith("0 folders made")
    assert storage.folders_prepared()
