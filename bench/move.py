"""C-MOVE benchmark: a generated N-slice CT moved to DCMTK's storescp, from us and from Orthanc.

    .venv/bin/python bench/move.py [--slices 300] [--repeat 3]     (BENCH_KEEP=1 keeps the temporary folder)

Self-contained and self-stopping, 127.0.0.1 only, free ports, temporary folders.
Both servers hold the same study (sent with storescu); each run moves it with
DCMTK's movescu to a storescp that writes it to disk, and counts images / wall time
of the movescu run. Every DCMTK tool and Orthanc run with TCP_NODELAY=1.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import orthanc  # noqa: E402 - bench/orthanc.py

PYTHON = sys.executable
NODELAY = orthanc.NODELAY


def move(aet, port, study_uid, out: Path) -> float:
    for f in out.iterdir():
        f.unlink()
    started = time.perf_counter()
    result = subprocess.run(
        [
            "movescu",
            "-aet",
            "BENCH",
            "-aec",
            aet,
            "-aem",
            "DEST",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(port),
        ],
        capture_output=True,
        text=True,
        env=NODELAY,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"movescu from {aet} failed: {result.stderr}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from tests import dicomgen

    root = Path(tempfile.mkdtemp(prefix="bench-move-"))
    procs: list[subprocess.Popen] = []
    try:
        files = dicomgen.ct_series(root / "data", args.slices)
        import pydicom

        study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
        out = root / "received"
        out.mkdir()
        dest_port = orthanc.free_port()
        procs.append(
            subprocess.Popen(
                ["storescp", "-aet", "DEST", "-od", str(out), str(dest_port)],
                env=NODELAY,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

        # Ours: runscp on a fresh SQLite database, the sender and the destination registered.
        env = {
            **os.environ,
            "VAR_DIR": str(root / "ours"),
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{orthanc.free_port()}/0",
        }
        (root / "ours").mkdir()
        manage = [PYTHON, str(REPO / "manage.py")]
        subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True)
        subprocess.run(
            [*manage, "modality", "add", "BENCH", "127.0.0.1", "0"], env=env, check=True, stdout=subprocess.DEVNULL
        )
        subprocess.run(
            [*manage, "modality", "add", "DEST", "127.0.0.1", str(dest_port)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        ours_port = orthanc.free_port()
        scp_log = (root / "ours" / "runscp.log").open("wb")  # noqa: SIM115 - open as long as the process
        procs.append(
            subprocess.Popen(
                [*manage, "runscp", "--port", str(ours_port), "--host", "127.0.0.1"],
                env=env,
                stdout=scp_log,
                stderr=subprocess.STDOUT,
            )
        )
        orthanc.wait_for("runscp", lambda: orthanc.echo_ok("IMAGING", ours_port))

        # Orthanc: its defaults, its own folders, the destination declared.
        orthanc_proc, orthanc_port = orthanc.start(
            root / "orthanc", {"dest": ("DEST", dest_port), "bench": ("BENCH", 104)}
        )
        procs.append(orthanc_proc)

        for aet, port in (("IMAGING", ours_port), ("ORTHANC", orthanc_port)):
            sent = subprocess.run(
                ["storescu", "-aet", "BENCH", "-aec", aet, "127.0.0.1", str(port), *map(str, files)],
                capture_output=True,
                text=True,
                env=NODELAY,
            )
            if sent.returncode != 0:
                raise RuntimeError(f"storescu to {aet} failed: {sent.stderr}")
        # Our index is filled by the worker; without one running here, reindex does it.
        subprocess.run([*manage, "reindex"], env=env, check=True, stdout=subprocess.DEVNULL)

        rates: dict[str, list[float]] = {"ours": [], "orthanc": []}
        for _ in range(args.repeat):
            for name, aet, port in (("ours", "IMAGING", ours_port), ("orthanc", "ORTHANC", orthanc_port)):
                elapsed = move(aet, port, study_uid, out)
                received = len(list(out.iterdir()))
                if received != args.slices:
                    raise RuntimeError(f"{name}: {received} of {args.slices} images arrived")
                rates[name].append(args.slices / elapsed)
                print(f"  {name:8} {rates[name][-1]:6.0f} images/s", flush=True)
        ours, theirs = statistics.median(rates["ours"]), statistics.median(rates["orthanc"])
        print(
            f"\nC-MOVE of a {args.slices}-slice 512x512 CT to storescp, median of {args.repeat} (images/s): "
            f"ours {ours:.0f}, Orthanc {theirs:.0f}, ratio {ours / theirs:.2f}"
        )
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
