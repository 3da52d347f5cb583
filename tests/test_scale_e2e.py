"""Scaling out: two runscp sharing one address and port (DICOM_REUSE_PORT) and two Celery
workers, fed at once over associations the kernel spread over both servers; every image
is stored and indexed exactly once, the same images re-sent through the other server too."""

import os
import shutil
import threading

import pytest
from django.conf import settings
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage, Verification

from network.models import ModalityNode
from network.scp import ASSOCIATION_NAME
from records.models import Instance, Series, Study
from tests import dicomgen, procs
from tests.conftest import service_env, start_scp, start_worker

pytestmark = pytest.mark.e2e

IMAGES = 80
RESENT = 20  # of them, sent again at the same time through an association on the other server
MAX_TRIES = 30  # associations opened until both servers hold one: 2**-29 that the kernel never spreads them


def held_by(scp) -> int:
    """How many associations a runscp's children serve (a spare renames itself when it takes one)."""
    return sum(procs.name(child) == ASSOCIATION_NAME for child in procs.children(scp.pid))


def open_association(port: int):
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMAGING")
    assert assoc.is_established
    return assoc


def spread_associations(port: int, servers: list) -> dict:
    """Open associations until each server serves at least one; ``{server index: [associations]}``."""
    held: dict[int, list] = {i: [] for i in range(len(servers))}
    before = [held_by(s) for s in servers]
    for _ in range(MAX_TRIES):
        assoc = open_association(port)
        expected = sum(before) + 1
        counts = procs.wait_for(
            lambda expected=expected: (now := [held_by(s) for s in servers]) and sum(now) == expected and now,
            10,
            "the new association's process",
        )
        served = next(i for i, (n, b) in enumerate(zip(counts, before, strict=True)) if n > b)
        held[served].append(assoc)
        before = counts
        if all(held.values()):
            return held
    raise AssertionError(f"the kernel sent {MAX_TRIES} associations to one server: {before}")


@pytest.mark.django_db(transaction=True)
def test_two_scps_on_one_port_and_two_workers_index_every_image_once(redis_url, tmp_path):
    ModalityNode.objects.create(ae_title="MODALITY", host="127.0.0.1", port=procs.free_port())
    # A broker of their own (another Redis database): the session's worker takes none of these tasks.
    env = service_env(redis_url.rsplit("/", 1)[0] + "/4", DICOM_REUSE_PORT="1", DICOM_MAX_ASSOCIATIONS_PER_PEER="0")
    port = procs.free_port()
    started = []
    try:
        for name in ("a", "b"):
            started.append(
                start_worker(env, tmp_path / f"worker-{name}.log", f"scale-{name}-{os.getpid()}", concurrency=1)
            )
        servers = []
        for name in ("a", "b"):
            scp, _ = start_scp(env, tmp_path, name=f"runscp-{name}", port=port)
            started.append(scp)
            servers.append(scp)

        # Without the switch a third server cannot take the port: it says so and exits.
        lone = procs.start(
            procs.manage("runscp", "--port", str(port), "--host", "127.0.0.1"),
            {**env, "DICOM_REUSE_PORT": "0"},
            tmp_path / "runscp-lone.log",
        )
        assert lone.wait(60) != 0
        assert "Address already in use" in (tmp_path / "runscp-lone.log").read_text()

        study_uid = "1.2.826.0.1.3680043.8.498.4242"
        series_uid = study_uid + ".1"
        files = [
            dicomgen.small_image(tmp_path, f"im{i:03d}.dcm", study_uid, series_uid, i + 1, patient_id="SCALE-1")
            for i in range(IMAGES)
        ]
        held = spread_associations(port, servers)
        first, second = held[0][0], held[1][0]
        # Every association sends its share; the first RESENT images go through both servers at once.
        plan = {id(first): files[:RESENT] + files[RESENT::2], id(second): files[:RESENT] + files[RESENT + 1 :: 2]}
        statuses: list[int] = []

        def send(assoc):
            for path in plan[id(assoc)]:
                statuses.append(assoc.send_c_store(str(path)).Status)

        threads = [threading.Thread(target=send, args=(a,)) for a in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for assocs in held.values():
            for assoc in assocs:
                assoc.release()
        assert statuses == [0] * (IMAGES + RESENT)

        procs.wait_for(
            lambda: (
                Instance.objects.filter(series__series_instance_uid=series_uid).count() == IMAGES
                and Series.objects.get(series_instance_uid=series_uid).number_of_instances == IMAGES
            ),
            60,
            "both workers to index every image",
        )
        assert Instance.objects.count() == IMAGES  # nothing indexed twice
        assert (
            Series.objects.count() == 1
            and Study.objects.get(study_instance_uid=study_uid).number_of_instances == IMAGES
        )
        for scp in servers:
            assert scp.poll() is None
    finally:
        for proc in reversed(started):
            procs.stop(proc)
        for folder in ("instances", "thumbnails"):
            shutil.rmtree(settings.STORAGE_DIR / folder, ignore_errors=True)
    for name in ("a", "b"):
        assert "Traceback" not in (tmp_path / f"worker-{name}.log").read_text()
