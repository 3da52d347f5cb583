"""Orthanc for the benchmarks: Debian's package, its defaults, its own folders, 127.0.0.1 only."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

AE_TITLE = "ORTHANC"
NODELAY = {**os.environ, "TCP_NODELAY": "1"}
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
# Orthanc's DICOMweb plugin (orthanc-dicomweb 1.7): its root, here as in its defaults.
DICOMWEB = {"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}


def ensure_installed(dicomweb: bool = False) -> None:
    """Install Debian's orthanc (and orthanc-dicomweb) when missing; for benchmarks only, never at test time.

    Debian starts its own service on 8042/4242 after installing: it is stopped, since
    every benchmark starts its own Orthanc with its own config on free ports.
    """
    wanted = [] if shutil.which("Orthanc") else ["orthanc"]
    if dicomweb and not DICOMWEB_PLUGIN.exists():
        wanted.append("orthanc-dicomweb")
    if not wanted:
        return
    print(f"installing {' '.join(wanted)} (apt-get)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", *wanted], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["service", "orthanc", "stop"], capture_output=True, check=False)


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


def start(
    home: Path, modalities: dict[str, tuple[str, int]], extra: dict | None = None, http_port: int | None = None
) -> tuple[subprocess.Popen, int]:
    """Start Orthanc in ``home`` knowing ``modalities`` (name -> (AE title, port)); returns (process, DICOM port).

    ``extra``: more configuration (e.g. DICOMWEB); ``http_port``: its REST port, a free one
    if not given. Waits until its REST API and its C-ECHO answer. The caller stops the process.
    """
    home.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), http_port or free_port()
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
        **(extra or {}),
    }
    (home / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(
        ["Orthanc", str(home / "orthanc.json")],
        env=NODELAY,
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    headers = {}
    if config.get("RegisteredUsers"):
        import base64

        user, password = next(iter(config["RegisteredUsers"].items()))
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError("Orthanc exited")
        try:
            request = urllib.request.Request(f"http://127.0.0.1:{http_port}/system", headers=headers)
            urllib.request.urlopen(request, timeout=1)  # noqa: S310 - ours, 127.0.0.1
        except OSError:
            return False
        return echo_ok(AE_TITLE, port)

    wait_for("Orthanc", up)
    return proc, port
