"""C-FIND latency of ours and Orthanc's on the same studies, sent to both over DICOM.

    .venv/bin/python bench/query_orthanc.py [--studies 2000] [--runs 30] [--fast-receive 0]

Self-contained and self-stopping, 127.0.0.1 only, free ports, temporary folders.
Generates ``--studies`` one-image studies with pydicom (the names, IDs and dates
of bench/query.py: 2.5 studies a patient, ten years of dates), sends them with
storescu to our runscp (indexed by ``manage.py reindex``) and to Orthanc 1.10.1,
then times the same three STUDY-level queries as bench/query.py with DCMTK's
findscu against both, and a C-ECHO with DCMTK's echoscu (process start included,
as for findscu), the two taking turns query by query. bench/query.py measures
ours alone at 100,000 studies, which would take hours to send to Orthanc.
``--env KEY=VALUE`` (repeatable) sets more of our runscp's environment.
"""

import argparse
import datetime as dt
import os
import random
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
from query import MODALITIES, SURNAMES, SYLLABLES, findscu  # noqa: E402 - bench/query.py

from tests import dicomgen, procs  # noqa: E402


def make_studies(folder: Path, count: int, seed: int = 4) -> tuple[list[Path], dict[str, list[str]]]:
    """One small image per study; returns the files and the three probes (as bench/query.py chooses them)."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    patients = []
    for i in range(max(count * 2 // 5, 1)):
        patients.append((f"{1000000 + i * 7919 % 9000000}", f"{rng.choice(SURNAMES)}^{rng.choice(SYLLABLES)}"))
    files, middle = [], None
    for i in range(count):
        patient_id, name = rng.choice(patients)
        study_uid = pydicom.uid.generate_uid(dicomgen.PYNETDICOM_ROOT)
        series_uid = pydicom.uid.generate_uid(dicomgen.PYNETDICOM_ROOT)
        path = dicomgen.small_image(folder, f"{i:06d}.dcm", study_uid, series_uid, 1, patient_id=patient_id)
        ds = pydicom.dcmread(path)
        ds.PatientName = name
        ds.StudyDate = (dt.date(2015, 1, 1) + dt.timedelta(days=rng.randrange(3650))).strftime("%Y%m%d")
        ds.StudyTime = f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        ds.Modality = rng.choice(MODALITIES)
        ds.AccessionNumber = f"A{i + 1:08d}"
        ds.StudyDescription = f"{ds.Modality} examination"
        ds.save_as(path)
        files.append(path)
        if i == count // 2:
            middle = (patient_id, name, ds.StudyDate)
    patient_id, name, date = middle
    probes = {
        "exact PatientID": [f"PatientID={patient_id}"],
        "name prefix wildcard": [f"PatientName={name[:-1]}*"],
        "one StudyDate": [f"StudyDate={date}"],
    }
    return files, probes


def send(aet: str, port: int, folder: Path) -> None:
    result = subprocess.run(
        ["storescu", "-aet", "BENCH", "-aec", aet, "+sd", "127.0.0.1", str(port), str(folder)],
        capture_output=True,
        text=True,
        env=orthanc.NODELAY,
    )
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {aet} failed: {result.stderr}")


ECHO = "C-ECHO (echoscu)"


def echoscu(port: int, called: str) -> tuple[float, int]:
    """One echoscu run, process start included: (ms, 1)."""
    started = time.perf_counter()
    result = subprocess.run(
        ["echoscu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return (time.perf_counter() - started) * 1000, 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--fast-receive", choices=["0", "1"], default="1", help="our runscp's DICOM_FAST_RECEIVE (0: pynetdicom's path)"
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for our runscp (repeatable)")
    args = parser.parse_args()
    orthanc.ensure_installed()
    root = Path(tempfile.mkdtemp(prefix="bench-query-orthanc-"))
    running = []
    try:
        files, probes = make_studies(root / "data", args.studies)
        print(f"{len(files):,} studies generated", flush=True)
        var = root / "ours"
        var.mkdir()
        env = {
            **orthanc.NODELAY,
            "DJANGO_SETTINGS_MODULE": "imaging.settings",
            "VAR_DIR": str(var),
            "STORAGE_DIR": str(var / "storage"),
            "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{orthanc.free_port()}/0",  # none: reindex does the index
            "LOG_LEVEL": "WARNING",
            "DICOM_FAST_RECEIVE": args.fast_receive,
            **dict(item.split("=", 1) for item in args.env),
        }
        subprocess.run(procs.manage("migrate", "-v0"), env=env, cwd=REPO, check=True)
        # As runscp does at its first start (STORAGE_PREPARE_FOLDERS), before the clock.
        subprocess.run(procs.manage("preparestorage"), env=env, cwd=REPO, check=True, capture_output=True)
        subprocess.run(
            procs.manage("modality", "add", "BENCH", "127.0.0.1", "0"),
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        ours_port = orthanc.free_port()
        command = procs.manage("runscp", "--port", str(ours_port), "--host", "127.0.0.1")
        running.append(procs.start(command, env, var / "runscp.log"))
        orthanc.wait_for("runscp", lambda: orthanc.echo_ok("IMAGING", ours_port))
        theirs, theirs_port = orthanc.start(root / "orthanc", {"bench": ("BENCH", 104)})
        running.append(theirs)
        for aet, port in (("IMAGING", ours_port), (orthanc.AE_TITLE, theirs_port)):
            send(aet, port, root / "data")
        subprocess.run(procs.manage("reindex"), env=env, cwd=REPO, check=True, capture_output=True)

        servers = {"ours": ("IMAGING", ours_port), "Orthanc": (orthanc.AE_TITLE, theirs_port)}
        probes[ECHO] = None
        times = {name: {query: [] for query in probes} for name in servers}
        matches = {name: {} for name in servers}
        for _ in range(args.runs + 1):  # the first round warms up
            for name, (aet, port) in servers.items():
                for query, keys in probes.items():
                    if keys is None:
                        ms, matches[name][query] = echoscu(port, aet)
                    else:
                        ms, matches[name][query] = findscu(port, keys, called=aet)
                    times[name][query].append(ms)
        print(f"\nDICOM_FAST_RECEIVE={args.fast_receive}")
        print(f"\n| query, {args.studies:,} studies | ours: median / p95 ms (matches) | Orthanc 1.10.1 | ratio |")
        print("|---|---|---|---|")
        for query in probes:
            cells, medians = [], []
            for name in servers:
                series = sorted(times[name][query][1:])
                p95 = series[min(len(series) - 1, round(0.95 * (len(series) - 1)))]
                medians.append(statistics.median(series))
                cells.append(f"{medians[-1]:.1f} / {p95:.1f} ({matches[name][query]})")
            print(f"| {query} | " + " | ".join(cells) + f" | {medians[0] / medians[1]:.2f} |")
        return 0
    finally:
        for proc in running:
            procs.stop(proc)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
