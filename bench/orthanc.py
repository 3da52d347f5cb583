"""Orthanc for the benchmarks: Debian's package, its defaults, its own folders, 127.0.0.1 only."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

AE_TITLE = "ORTHANC"
NODELAY = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def echo_ok(aet: str, port: int, calling: str = "BENCH") -> bool:
    result = subprocess.run(
        ["echoscu", "-to", "2", "-aet", calling, "-aec", aet, "127.0.0.1", str(port)], capture_output=True, env=NODELAY
    )
    return result.returncode == 0


def wait_for(what: str, condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def start(home: Path, modalities: dict[str, tuple[str, int]]) -> tuple[subprocess.Popen, int]:
    """Start Orthanc in ``home`` knowing ``modalities`` (name -> (AE title, port)); returns (process, DICOM port).

    Waits until its REST API and its C-ECHO answer. The caller stops the process.
    """
    home.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(home / "storage"),
        "IndexDirectory": str(home / "index"),
        "DicomAet": AE_TITLE,
        "DicomPort": port,
        "HttpPort": http_port,
        "DicomCheckCalledAet": False,
        "RemoteAccessAllowed": False,
        "DicomModalities": {name: [aet, "127.0.0.1", p] for name, (aet, p) in modalities.items()},
    }
    (home / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        ["Orthanc", str(home / "orthanc.json")],
        env=NODELAY,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("Orthanc exited")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=1)  # noqa: S310 - ours, 127.0.0.1
        except OSError:
            return False
        return echo_ok(AE_TITLE, port)

    wait_for("Orthanc", up)
    return proc, port
