"""DICOMweb figures, ours beside Orthanc's DICOMweb plugin, same files, same run, same client.

    .venv/bin/python bench/dicomweb.py [--studies 100000] [--orthanc-studies 5000] [--slices 300]
        [--runs 20] [--frames 300] [--stow-images 20] [--stow-rounds 5] [--ours-auth basic|token|session]

Self-contained and self-stopping, 127.0.0.1 only, free ports, temporary folders.

- ``--orthanc-studies`` one-image studies generated as bench/query_orthanc.py does, sent
  with storescu to Orthanc 1.10.1 (Debian's ``orthanc`` and ``orthanc-dicomweb``,
  installed here when missing; its own config, storage and index) and indexed in our
  "small" archive (a fresh SQLite database, gunicorn with 2 workers and imaging/gunicorn_conf.py,
  as `make run` and docker/ serve the web).
  100,000 studies in Orthanc would take about 30 minutes to generate and send (the
  timing is printed): Orthanc is measured at that smaller size, ours at that size too
  and, in a second fresh database filled like bench/query.py, at ``--studies``.
- The 300-slice 512x512 CT of tests/dicomgen.py, sent to Orthanc and stored and
  indexed in our ``--studies`` archive.

With one ``requests`` session per server (keep-alive), HTTP Basic on both by default
(``--ours-auth token|session`` changes ours only), the servers taking turns request by
request: three study searches that each match few studies (exact PatientID, a name
prefix wildcard, one StudyDate) and OHIF's first list (no filter, limit=101); the series
metadata; every frame of the CT one request each (frames/1, raw little endian); the
series retrieve; STOW-RS of ``--stow-images`` fresh CT slices per POST, ``--stow-rounds``
times (ours is skipped with ``--ours-auth session``: a POST would need the CSRF token).
Prints medians and ours/Orthanc ratios (a time ratio under 1 or a rate ratio over 1:
ours is better).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orthanc  # noqa: E402 - bench/orthanc.py
import query_orthanc  # noqa: E402 - bench/query_orthanc.py

from tests import dicomgen, procs  # noqa: E402

USER, PASSWORD = "bench-doctor", "unused-bench-password-123"
ORTHANC_AUTH = {"AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD}}

SETUP = """
import django; django.setup()
import sys
from pathlib import Path
from django.contrib.auth.models import Group, User
from django.test import Client
from rest_framework.authtoken.models import Token
from imaging import ingest, storage
from records.models import Instance, Study
import pydicom

relpaths = []
for p in sorted(Path(sys.argv[1]).glob("*.dcm")):
    ds = pydicom.dcmread(p, stop_before_pixels=True)
    rel = storage.instance_relpath(ds.SOPInstanceUID)
    storage.write_atomic(rel, [p.read_bytes()])
    relpaths.append(rel)
for i in range(0, len(relpaths), 50):
    ingest.index_files(relpaths[i : i + 50])
user = User.objects.create_user(sys.argv[2], password=sys.argv[3])
user.groups.add(Group.objects.get(name="Doctor"))
client = Client()
client.force_login(user)
s = Study.objects.select_related("patient").order_by("pk")[Study.objects.count() // 2]
print(client.cookies["sessionid"].value, Token.objects.create(user=user).key)
print(s.patient.patient_id, s.patient.name_alphabetic[:-1], s.study_date.strftime("%Y%m%d"))
"""

FRAME_ACCEPT = {"Accept": 'multipart/related; type="application/octet-stream"'}
JSON_ACCEPT = {"Accept": "application/dicom+json"}


def stats(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def archive_env(var: Path, **extra: str) -> dict[str, str]:
    """The environment of one of our archives kept in ``var``: its database, store and settings."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "imaging.settings",
        "VAR_DIR": str(var),
        "STORAGE_DIR": str(var / "storage"),
        "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "127.0.0.1",
        "STORAGE_MIN_FREE_MB": "1",
        "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",  # none: thumbnails are not the benchmarks' (made on request)
        **extra,
    }


def index_and_sign_in(env: dict, files: Path) -> tuple[str, str, list[str]]:
    """``files`` stored and indexed in the archive of ``env``, a Doctor signed in:
    (session id, API token, [patient ID, name prefix, date] of the middle study)."""
    out = subprocess.run(
        [sys.executable, "-c", SETUP, str(files), USER, PASSWORD],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    session_id, token = out[-3].split()
    return session_id, token, out[-2].split()


class Ours:
    """One of our archives: a fresh database in ``var`` with ``files`` indexed, gunicorn, a session."""

    def __init__(self, var: Path, studies: int, files: Path, auth: str):
        self.var, self.proc = var, None
        var.mkdir(parents=True)
        self.env = archive_env(var)
        subprocess.run(procs.manage("migrate", "-v0"), env=self.env, cwd=ROOT, check=True)
        if studies:
            fill = [sys.executable, str(ROOT / "bench" / "query.py"), "--fill", str(studies)]
            subprocess.run(fill, env=self.env, cwd=ROOT, check=True)
        session_id, token, self.probe = index_and_sign_in(self.env, files)
        port = procs.free_port()
        command = [sys.executable, "-m", "gunicorn", "-w", "2", "-c", "python:imaging.gunicorn_conf"]
        command += ["-b", f"127.0.0.1:{port}", "imaging.wsgi:application"]
        self.proc = procs.start(command, self.env, var / "gunicorn.log")
        procs.wait_for(lambda: procs.port_open(port), 60, "gunicorn")
        self.base = f"http://127.0.0.1:{port}/dicomweb"
        self.http = session(auth, session_id, token)


def session(auth: str, session_id: str = "", token: str = ""):
    import requests

    http = requests.Session()
    if auth == "basic":
        http.auth = (USER, PASSWORD)
    elif auth == "token":
        http.headers["Authorization"] = f"Token {token}"
    else:
        http.cookies.set("sessionid", session_id)
    return http


def timed(http, method: str, url: str, **kwargs) -> tuple[float, object]:
    t = time.perf_counter()
    r = http.request(method, url, **kwargs)
    if kwargs.get("stream"):
        r.size = sum(len(c) for c in r.iter_content(1024 * 1024))
    elapsed = time.perf_counter() - t
    r.raise_for_status()
    return elapsed, r


def turns(servers: dict, i: int) -> list:
    """The servers in an order that swaps every turn, so that neither always goes first."""
    items = list(servers.items())
    return items if i % 2 == 0 else items[::-1]


def row(name: str, ours: float, theirs: float | None, unit: str, fmt: str = ".1f") -> str:
    ratio = f"{ours / theirs:.2f}" if theirs else "-"
    theirs_cell = f"{theirs:{fmt}} {unit}" if theirs is not None else "-"
    return f"| {name} | {ours:{fmt}} {unit} | {theirs_cell} | {ratio} |"


def searches(probe: list[str]) -> dict[str, dict]:
    patient_id, name_prefix, date = probe
    return {
        "exact PatientID": {"PatientID": patient_id},
        "name prefix wildcard": {"PatientName": name_prefix + "*"},
        "one StudyDate": {"StudyDate": date},
        # OHIF's first study list: no filter, newest 101, with its includefields.
        "OHIF's list (limit=101)": {
            "limit": "101",
            "offset": "0",
            "fuzzymatching": "false",
            "includefield": "00081030,00080060",
        },
    }


def qido(servers: dict, runs: int, title: str) -> None:
    """servers: label -> (session, base URL, probe); the same four searches of each one's probe, taking turns."""
    queries = searches(["", "", ""])
    times = {label: {q: [] for q in queries} for label in servers}
    matches = {label: {} for label in servers}
    for i in range(runs + 1):  # the first round warms up
        for query in queries:
            for label, (http, base, probe) in turns(servers, i):
                params = searches(probe)[query]
                elapsed, r = timed(http, "GET", f"{base}/studies", params=params, headers=JSON_ACCEPT)
                if i:
                    times[label][query].append(elapsed * 1000)
                matches[label][query] = len(r.json())
    labels = list(servers)
    print(f"\n| QIDO-RS, {title} | " + " | ".join(f"{lb}: median / p95 ms (matches)" for lb in labels) + " | ratio |")
    print("|---|" + "---|" * (len(labels) + 1))
    for query in queries:
        cells, medians = [], []
        for label in labels:
            median, p95 = stats(times[label][query])
            medians.append(median)
            cells.append(f"{median:.1f} / {p95:.1f} ({matches[label][query]})")
        ratio = f"{medians[0] / medians[-1]:.2f}" if len(labels) > 1 else "-"
        print(f"| {query} | " + " | ".join(cells) + f" | {ratio} |", flush=True)


def stow_body(paths: list[Path]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n" for p in paths
    ]
    return b"".join(
        parts
    ) + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--orthanc-studies", type=int, default=5000)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--frames", type=int, default=0, help="frames asked of each server (default: every slice)")
    parser.add_argument("--stow-images", type=int, default=20)
    parser.add_argument("--stow-rounds", type=int, default=5)
    parser.add_argument("--ours-auth", choices=["basic", "token", "session"], default="basic")
    args = parser.parse_args()
    orthanc.ensure_installed(dicomweb=True)
    root = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    running = []
    try:
        t = time.perf_counter()
        _, small_probes = query_orthanc.make_studies(root / "small", args.orthanc_studies)
        generated = time.perf_counter() - t
        ct = dicomgen.ct_series(root / "ct", args.slices, 512, patient_id="BENCH-CT", patient_name="BENCH^CT")
        http_port = orthanc.free_port()
        extra = {**orthanc.DICOMWEB, **ORTHANC_AUTH}
        theirs, dicom_port = orthanc.start(root / "orthanc", {}, extra=extra, http_port=http_port)
        running.append(theirs)
        t = time.perf_counter()
        query_orthanc.send(orthanc.AE_TITLE, dicom_port, root / "small")
        sent = time.perf_counter() - t
        query_orthanc.send(orthanc.AE_TITLE, dicom_port, root / "ct")
        per_study = (generated + sent) / args.orthanc_studies
        print(
            f"{args.orthanc_studies:,} studies generated in {generated:.0f} s, sent to Orthanc in {sent:.0f} s: "
            f"100,000 would take ~{per_study * 100_000 / 60:.0f} min; Orthanc is measured at "
            f"{args.orthanc_studies:,} studies, ours at {args.orthanc_studies:,} and {args.studies:,}",
            flush=True,
        )
        small = Ours(root / "ours-small", 0, root / "small", args.ours_auth)
        running.append(small.proc)
        t = time.perf_counter()
        big = Ours(root / "ours-big", args.studies, root / "ct", args.ours_auth)
        running.append(big.proc)
        print(f"ours filled with {args.studies:,} studies and the CT in {time.perf_counter() - t:.0f} s", flush=True)
        them = (session("basic"), f"http://127.0.0.1:{http_port}/dicom-web")
        auth = f"ours: {args.ours_auth}, Orthanc: basic"

        probe = [small_probes[q][0].split("=", 1)[1] for q in ("exact PatientID", "name prefix wildcard")]
        probe[1] = probe[1].rstrip("*")
        probe.append(small_probes["one StudyDate"][0].split("=", 1)[1])
        qido(
            {"ours": (small.http, small.base, probe), "Orthanc": (*them, probe)},
            args.runs,
            f"{args.orthanc_studies:,} studies in both ({auth})",
        )
        qido(
            {
                f"ours, {args.studies:,}": (big.http, big.base, big.probe),
                f"Orthanc, {args.orthanc_studies:,}": (*them, probe),
            },
            args.runs,
            f"ours at {args.studies:,} studies, Orthanc at {args.orthanc_studies:,} ({auth})",
        )

        servers = {"ours": (big.http, big.base), "Orthanc": them}
        r = big.http.get(f"{big.base}/studies", params={"PatientID": "BENCH-CT"}, headers=JSON_ACCEPT)
        study = r.json()[0]["0020000D"]["Value"][0]
        r = big.http.get(f"{big.base}/studies/{study}/series", headers=JSON_ACCEPT)
        series = r.json()[0]["0020000E"]["Value"][0]
        path = f"/studies/{study}/series/{series}"
        meta, first_meta = {label: [] for label in servers}, {}
        for i in range(6):  # the first is the first ever (ours: metadata cache empty), then 5 measured
            for label, (http, base) in turns(servers, i):
                elapsed, r = timed(http, "GET", f"{base}{path}/metadata", headers=JSON_ACCEPT)
                if i:
                    meta[label].append(elapsed * 1000)
                else:
                    first_meta[label] = elapsed * 1000
                sops = sorted(m["00080018"]["Value"][0] for m in r.json())
        described = len(sops)
        sops = sops[: args.frames or None]
        frames = {label: 0.0 for label in servers}
        for i, sop in enumerate(sops):
            for label, (http, base) in turns(servers, i):
                frames[label] += timed(http, "GET", f"{base}{path}/instances/{sop}/frames/1", headers=FRAME_ACCEPT)[0]
        retrieve, size = {label: [] for label in servers}, {}
        for i in range(3):
            for label, (http, base) in turns(servers, i):
                accept = {"Accept": 'multipart/related; type="application/dicom"'}
                elapsed, r = timed(http, "GET", f"{base}{path}", headers=accept, stream=True)
                retrieve[label].append(elapsed)
                size[label] = r.size

        stow = {label: [] for label in servers}
        body, ctype = stow_body(ct[:1])
        r = big.http.post(f"{big.base}/studies", data=body, headers={"Content-Type": ctype, **JSON_ACCEPT})
        stow_skip = r.status_code in (404, 405) or args.ours_auth == "session"
        if args.ours_auth == "session":
            print("\nSTOW-RS: not measured for ours with --ours-auth session (a POST needs CSRF): use basic or token")
        elif stow_skip:
            print(f"\nSTOW-RS: ours answers {r.status_code} to POST /dicomweb/studies: not measured (not there yet)")
        for i in range(args.stow_rounds):
            batch = dicomgen.ct_series(root / f"stow{i}", args.stow_images, 512, patient_id="BENCH-STOW", seed=i)
            body, ctype = stow_body(batch)
            for label, (http, base) in turns(servers, i):
                if label == "ours" and stow_skip:
                    continue
                headers = {"Content-Type": ctype, **JSON_ACCEPT}
                stow[label].append(
                    args.stow_images / timed(http, "POST", f"{base}/studies", data=body, headers=headers)[0]
                )
            shutil.rmtree(root / f"stow{i}")

        print(f"\n| {args.slices}-slice 512x512 CT ({auth}) | ours | Orthanc 1.10.1 + DICOMweb 1.7 | ratio |")
        print("|---|---|---|---|")
        m = {label: statistics.median(v) for label, v in meta.items()}
        print(
            row(f"WADO-RS series metadata ({described} instances), median of 5", m["ours"], m["Orthanc"], "ms", ".0f")
        )
        name = "WADO-RS series metadata, first request (ours: cache empty)"
        print(row(name, first_meta["ours"], first_meta["Orthanc"], "ms", ".0f"))
        f = {label: len(sops) / v for label, v in frames.items()}
        print(
            row(
                f"WADO-RS frames, one request each, {len(sops)} frames, 1 client",
                f["ours"],
                f["Orthanc"],
                "frames/s",
                ".1f",
            )
        )
        rt = {label: statistics.median(v) for label, v in retrieve.items()}
        mb = {label: f"{v / 1e6:.0f} MB" for label, v in size.items()}
        name = f"WADO-RS series retrieve (multipart, {mb['ours']}; Orthanc {mb['Orthanc']}), median of 3"
        print(row(name, rt["ours"], rt["Orthanc"], "s", ".2f"))
        st = {label: statistics.median(v) if v else None for label, v in stow.items()}
        name = f"STOW-RS, {args.stow_images} slices per POST, median of {args.stow_rounds}"
        if stow_skip:
            why = "not measured (session: CSRF)" if args.ours_auth == "session" else f"not there yet ({r.status_code})"
            print(f"| {name} | {why} | {st['Orthanc']:.0f} images/s | - |")
        else:
            print(row(name, st["ours"], st["Orthanc"], "images/s", ".0f"))
        return 0
    finally:
        for proc in running:
            procs.stop(proc)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
