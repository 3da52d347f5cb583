"""A real DCMTK storescp on 127.0.0.1, the remote node our SCU talks to in tests."""

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import procs


@contextmanager
def storescp(out_dir: Path, log_path: Path, *options: str, ae_title: str = "TARGET"):
    """Run ``storescp -aet <ae_title> [options] -od <out_dir> <port>``; yields the port."""
    if not shutil.which("storescp"):
        pytest.fail("DCMTK's storescp is not installed (make test installs it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    port = procs.free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = procs.start(["storescp", "-aet", ae_title, *options, "-od", str(out_dir), str(port)], env, log_path)
    try:
        procs.wait_for(lambda: procs.port_open(port) or proc.poll() is not None, 20, "storescp to listen")
        assert proc.poll() is None, log_path.read_text(errors="replace")
        yield port
    finally:
        procs.stop(proc)
