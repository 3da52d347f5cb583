"""C-MOVE benchmark: a generated N-slice CT moved to DCMTK's storescp, from us and from Orthanc.

    .venv/bin/python bench/move.py [--slices 300] [--repeat 3] [--get] [--only ours]
    (BENCH_KEEP=1 keeps the temporary folder)

``--get``: the same study retrieved with DCMTK's getscu (C-GET, on the requester's
association, written to disk by getscu) instead of moved. ``--only ours``: Orthanc is
neither started nor measured. ``--pending``: the patient's name is corrected on ours
before the runs and its rewrite job left pending (no worker runs here), so that every
image goes out corrected on the way (imaging/rewrite.py ``outgoing_file``).

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
SPARE_NAME = "dicom-spare"  # network.scp.SPARE_NAME (importing it needs Django set up)
CORRECTED_NAME = "Zhang^Wei=张^伟"
CORRECT = f"""
from records import demographics
from records.models import Patient
demographics.correct_patient(
    patient=Patient.objects.get(), changes={{"name": "{CORRECTED_NAME}"}}, reason="bench", user=None, address=None
)
"""


def move(aet, port, study_uid, out: Path, get: bool = False) -> float:
    """Seconds of one movescu run (to storescp, which writes to ``out``), or of getscu's (``get``)."""
    for f in out.iterdir():
        f.unlink()
    keys = ["-S", "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}", "127.0.0.1", str(port)]
    tool = (
        ["getscu", "-aet", "BENCH", "-aec", aet, "-od", str(out)]
        if get
        else ["movescu", "-aet", "BENCH", "-aec", aet, "-aem", "DEST"]
    )
    started = time.perf_counter()
    result = subprocess.run([*tool, *keys], capture_output=True, text=True, env=NODELAY)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{tool[0]} from {aet} failed: {result.stderr}")
    return elapsed


def scp_cpu_seconds(pid: int, timeout: float = 30) -> float:
    """CPU time of runscp's finished association processes (each association is a forked child).

    Waits until no child but the spare waiting for the next connection is left, zombies
    included (a child's time is added to its parent's when the parent reaps it).
    """
    deadline = time.monotonic() + timeout
    while True:
        kids = [int(c) for task in Path(f"/proc/{pid}/task").glob("*") for c in (task / "children").read_text().split()]
        busy = [k for k in kids if Path(f"/proc/{k}/comm").exists() and _comm(k) != SPARE_NAME]
        if not busy:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"runscp's association processes did not end: {busy}")
        time.sleep(0.01)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--get", action="store_true", help="C-GET with getscu instead of C-MOVE")
    parser.add_argument("--only", choices=["ours"], help="measure only ours (Orthanc not started)")
    parser.add_argument("--pending", action="store_true", help="ours: a correction whose rewrite is pending")
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
        # As runscp does at its first start (STORAGE_PREPARE_FOLDERS), before the clock.
        subprocess.run([*manage, "preparestorage"], env=env, check=True, capture_output=True)
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

        servers = [("ours", "IMAGING", ours_port)]
        if args.only != "ours":
            # Orthanc: its defaults, its own folders, the destination declared.
            orthanc_proc, orthanc_port = orthanc.start(
                root / "orthanc", {"dest": ("DEST", dest_port), "bench": ("BENCH", 104)}
            )
            procs.append(orthanc_proc)
            servers.append(("orthanc", "ORTHANC", orthanc_port))

        for _name, aet, port in servers:
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
        if args.pending:
            # The broker named in env is not running: the job cannot be queued and stays pending.
            subprocess.run([*manage, "shell", "-c", CORRECT], env=env, check=True, stdout=subprocess.DEVNULL)

        rates: dict[str, list[float]] = {name: [] for name, _aet, _port in servers}
        cpu: list[float] = []  # ms of runscp's CPU per image, each run
        scp_pid = procs[1].pid
        for _ in range(args.repeat):
            for name, aet, port in servers:
                cpu_before = scp_cpu_seconds(scp_pid) if name == "ours" else 0
                elapsed = move(aet, port, study_uid, out, get=args.get)
                if name == "ours":
                    cpu.append((scp_cpu_seconds(scp_pid) - cpu_before) * 1000 / args.slices)
                received = len(list(out.iterdir()))
                if received != args.slices:
                    raise RuntimeError(f"{name}: {received} of {args.slices} images arrived")
                if args.pending and name == "ours":
                    sample = pydicom.dcmread(next(out.iterdir()), stop_before_pixels=True)
                    if str(sample.PatientName) != CORRECTED_NAME:
                        raise RuntimeError(f"ours sent {sample.PatientName}, not the corrected name")
                rates[name].append(args.slices / elapsed)
                ours_cpu = f"  (runscp CPU {cpu[-1]:.2f} ms/image)" if name == "ours" else ""
                print(f"  {name:8} {rates[name][-1]:6.0f} images/s{ours_cpu}", flush=True)
        what = "C-GET (getscu)" if args.get else "C-MOVE to storescp"
        ours = statistics.median(rates["ours"])
        line = f"\n{what} of a {args.slices}-slice 512x512 CT, median of {args.repeat} (images/s): ours {ours:.0f}"
        line += f" (runscp CPU {statistics.median(cpu):.2f} ms/image)"
        if "orthanc" in rates:
            theirs = statistics.median(rates["orthanc"])
            line += f", Orthanc {theirs:.0f}, ratio {ours / theirs:.2f}"
        print(line)
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
