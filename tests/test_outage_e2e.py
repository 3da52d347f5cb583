"""A broker outage: what runscp stored meanwhile is indexed soon after, from the spool, without a walk.

Real processes: a redis-server of this test's own (so that it can be stopped),
runscp, and a Celery worker with beat, driven by DCMTK's storescu.
"""

import re
import shutil
import time

import pydicom
import pytest

from imaging import storage
from network.models import ModalityNode
from records.models import Instance
from tests import dicomgen, procs
from tests.conftest import service_env, start_scp, start_worker

pytestmark = pytest.mark.e2e

IMAGES = 50


def start_redis(port, logs):
    proc = procs.start(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        {},
        logs / f"redis-{port}.log",
    )
    procs.wait_for(lambda: procs.port_open(port), 20, "redis-server")
    return proc


def drained(worker_log) -> list[int]:
    """Paths each drain of the spool read, from the worker's log (imaging.spool's line)."""
    return [
        int(n) for n in re.findall(r"index spool: (\d+) path\(s\) read from", worker_log.read_text(errors="replace"))
    ]


def spooled_lines(folder) -> int:
    return sum(len(p.read_text().splitlines()) for p in folder.glob("*.spool*")) if folder.is_dir() else 0


def test_images_stored_during_a_broker_outage_are_indexed_from_the_spool(transactional_db, tmp_path, logs_dir):
    for tool in ("storescu", "redis-server"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (make test installs it)")
    ModalityNode.objects.create(ae_title="MODALITY", host="127.0.0.1", port=procs.free_port())
    port = procs.free_port()
    spool_dir = tmp_path / "spool"
    env = service_env(
        f"redis://127.0.0.1:{port}/0",
        INDEX_SPOOL_DIR=str(spool_dir),
        INDEX_SPOOL_INTERVAL_SECONDS="10",
        REINDEX_INTERVAL_SECONDS="0",  # no periodic walk: only the spool may find the files
    )
    worker_log = logs_dir / "worker-outage.log"
    redis = start_redis(port, logs_dir)
    started = [redis]
    try:
        worker = start_worker(env, worker_log, "outage", concurrency=1, beat_schedule=tmp_path / "celerybeat-schedule")
        started.append(worker)
        scp, scp_port = start_scp(env, logs_dir, name="runscp-outage")
        started.append(scp)

        procs.stop(redis)  # the outage begins
        files = dicomgen.ct_series(tmp_path / "ct", IMAGES, size=64, patient_id="OUTAGE")
        uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
        result = procs.dcmtk(
            "storescu", "-aet", "MODALITY", "-aec", "IMAGING", "127.0.0.1", str(scp_port), *map(str, files)
        )
        assert result.returncode == 0, result.stderr
        assert all(storage.absolute(storage.instance_relpath(u)).exists() for u in uids)
        # Every path the SCP could not publish is in the spool, on disk, before the broker is
        # back (a drain task the worker received just before the outage may have read some).
        procs.wait_for(
            lambda: spooled_lines(spool_dir) + sum(drained(worker_log)) == IMAGES, 30, f"{IMAGES} spooled paths"
        )
        assert spooled_lines(spool_dir) > 0
        assert Instance.objects.filter(sop_instance_uid__in=uids).count() < IMAGES

        redis = start_redis(port, logs_dir)  # the outage ends
        started.append(redis)
        back = time.monotonic()
        try:
            procs.wait_for(
                lambda: Instance.objects.filter(sop_instance_uid__in=uids).count() == IMAGES,
                120,
                f"the {IMAGES} images stored during the outage to be indexed",
            )
        except TimeoutError as exc:
            tail = "\n".join(worker_log.read_text(errors="replace").splitlines()[-60:])
            pytest.fail(f"{exc}; worker log:\n{tail}")
        assert time.monotonic() - back < 120
        procs.wait_for(lambda: spooled_lines(spool_dir) == 0, 30, "the drained spool files to be removed")

        # What was read is exactly what was spooled: no walk of the archive.
        # The worker logs what it drained once the batch is done: wait for the line, not for luck.
        procs.wait_for(lambda: sum(drained(worker_log)) >= IMAGES, 30, "the worker's line about the drained spool")
        assert sum(drained(worker_log)) == IMAGES, drained(worker_log)
        assert "reindex:" not in worker_log.read_text(errors="replace")
        assert Instance.objects.filter(sop_instance_uid__in=uids, source_ae="MODALITY").count() == IMAGES
    finally:
        for proc in reversed(started):
            procs.stop(proc)
        for folder in ("instances", "thumbnails"):
            shutil.rmtree(storage.root() / folder, ignore_errors=True)
