"""C-FIND STUDY-level latency at 1,000 and 100,000 studies, measured with DCMTK's findscu.

    .venv/bin/python bench/query.py [--sizes 1000,100000] [--runs 40]

For each size: a fresh SQLite database in a temporary VAR_DIR, filled with
bulk_create (realistic names, IDs, dates over ten years, modalities), runscp on
a free port, one registered node. Then findscu (process start included,
TCP_NODELAY=1) for three queries that each match fewer than 100 studies: an
exact PatientID, a name prefix wildcard, one StudyDate; the sizes take turns
query by query, so that the machine's drift over the run weighs on each alike.
Prints median and 95th percentile per query and the ratio of the largest size
to the smallest.
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import procs  # noqa: E402

SURNAMES = ["WANG", "LI", "ZHANG", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "WU", "ZHOU", "XU", "SUN", "MA", "ZHU"]
SURNAMES += ["SMITH", "JONES", "MULLER", "GARCIA", "NGUYEN", "KIM", "SATO", "ROSSI", "DUBOIS", "SILVA"]
SYLLABLES = (
    "AN BAO BIN CHENG DAN FANG FEI GANG HAO HONG HUA JIAN JIE JING JUN KAI LAN LEI LI LIN LING MEI MIN NA".split()
)
SYLLABLES += (
    "NING PING QIANG QING RONG RUI SHAN TAO TING WEI WEN XIA XIAO XIN XIU YAN YING YONG YU YUN ZHEN ZHI".split()
)
MODALITIES = ["CT"] * 30 + ["MR"] * 20 + ["CR"] * 20 + ["DX"] * 10 + ["US"] * 12 + ["MG"] * 5 + ["PT", "NM", "XA"]
REQUESTED = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]


def fill(studies: int, seed: int = 4) -> None:
    """Runs in a child process whose environment points Django at the fresh database."""
    import datetime as dt

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaging.settings")
    django.setup()
    from records.models import Patient

    rng = random.Random(seed)
    n_patients = max(studies * 2 // 5, 1)  # 2.5 studies per patient on average
    patients = []
    for i in range(n_patients):
        name = f"{rng.choice(SURNAMES)}^{rng.choice(SYLLABLES)}{rng.choice(SYLLABLES)}"
        patients.append(
            Patient(
                patient_id=f"{1000000 + i * 7919 % 9000000}",
                name=name,
                name_alphabetic=name,
                birth_date=dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(90 * 365)),
                sex=rng.choice("MF"),
            )
        )
    Patient.objects.bulk_create(patients, batch_size=2000)
    add_studies(rng, studies, dt.date(2015, 1, 1), MODALITIES)


def add_studies(rng, studies: int, start, modalities: list[str]) -> None:
    """``studies`` studies over ten years from ``start``, each of a random patient already in the database.

    For the fill of this benchmark and of bench/web.py (inside their child process, Django set up).
    """
    import datetime as dt

    from records.models import Patient, Study

    pks = list(Patient.objects.values_list("pk", flat=True))
    rows = []
    for i in range(studies):
        modality = rng.choice(modalities)
        rows.append(
            Study(
                patient_id=rng.choice(pks),
                study_instance_uid=f"1.2.826.0.1.3680043.8.498.{i + 1}",
                accession_number=f"A{i + 1:08d}",
                study_date=start + dt.timedelta(days=rng.randrange(3650)),
                study_time=dt.time(rng.randrange(7, 20), rng.randrange(60), rng.randrange(60)),
                description=f"{modality} examination",
                modalities_in_study=modality,
                number_of_series=rng.randint(1, 6),
                number_of_instances=rng.randint(1, 600),
            )
        )
        if len(rows) == 5000:
            Study.objects.bulk_create(rows)
            rows = []
    Study.objects.bulk_create(rows)


def findscu(port: int, keys: list[str], called: str = "IMAGING") -> tuple[float, int]:
    args = ["findscu", "-v", "-S", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port)]
    given = {key.partition("=")[0] for key in keys}  # a later empty -k would replace a matching key
    for key in ["QueryRetrieveLevel=STUDY", *keys, *(k for k in REQUESTED if k not in given)]:
        args += ["-k", key]
    env = {**os.environ, "TCP_NODELAY": "1"}
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, env=env, check=False, timeout=60)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return elapsed * 1000, result.stderr.count("Find Response") - 1


def probes(env: dict) -> dict[str, list[str]]:
    """The three query values, chosen from the data so each matches fewer than 100 studies."""
    code = (
        "import django; django.setup()\n"
        "from records.models import Study\n"
        "s = Study.objects.select_related('patient').order_by('pk')[Study.objects.count() // 2]\n"
        "p = s.patient\n"
        "print(p.patient_id); print(p.name_alphabetic[:-1]); "
        "print(s.study_date.strftime('%Y%m%d'))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return {
        "exact PatientID": [f"PatientID={out[0]}"],
        "name prefix wildcard": [f"PatientName={out[1]}*"],
        "one StudyDate": [f"StudyDate={out[2]}"],
    }


def prepare(size: int, var: Path) -> tuple[dict, dict[str, list[str]]]:
    """A fresh database of ``size`` studies with one node; returns (environment, probes)."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "imaging.settings",
        "VAR_DIR": str(var),
        "STORAGE_DIR": str(var / "storage"),
        "DATABASE_URL": f"sqlite:///{var / 'db.sqlite3'}",
        "PYTHONPATH": str(ROOT),
        "LOG_LEVEL": "WARNING",
    }
    subprocess.run(procs.manage("migrate", "-v0"), env=env, cwd=ROOT, check=True)
    # As runscp does at its first start (STORAGE_PREPARE_FOLDERS), before the clock.
    subprocess.run(procs.manage("preparestorage"), env=env, cwd=ROOT, check=True, capture_output=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--fill", str(size)], env=env, cwd=ROOT, check=True)
    print(f"  filled {size:,} studies in {time.perf_counter() - t:.0f} s", flush=True)
    subprocess.run(procs.manage("modality", "add", "BENCH", "127.0.0.1", "0"), env=env, cwd=ROOT, check=True)
    return env, probes(env)


def measure(sizes: list[int], runs: int, root: Path) -> dict[int, dict[str, tuple[float, float, int]]]:
    """Every size's runscp at once, the queries taking turns: drift of the machine hits each size alike."""
    servers, scps = {}, []
    try:
        for size in sizes:
            var = root / str(size)
            var.mkdir()
            print(f"{size:,} studies ({var})", flush=True)
            env, queries = prepare(size, var)
            port = procs.free_port()
            scps.append(
                procs.start(procs.manage("runscp", "--port", str(port), "--host", "127.0.0.1"), env, var / "runscp.log")
            )
            procs.wait_for(lambda port=port: procs.port_open(port), 30, "runscp")
            servers[size] = (port, queries)
        times = {size: {name: [] for name in queries} for size, (_port, queries) in servers.items()}
        matches: dict[int, dict[str, int]] = {size: {} for size in sizes}
        for port, queries in servers.values():
            for keys in queries.values():
                findscu(port, keys)  # warm up
        for _ in range(runs):
            for size, (port, queries) in servers.items():
                for name, keys in queries.items():
                    ms, matches[size][name] = findscu(port, keys)
                    times[size][name].append(ms)
        results = {}
        for size in sizes:
            results[size] = {}
            for name, series in times[size].items():
                series.sort()
                p95 = series[min(len(series) - 1, round(0.95 * (len(series) - 1)))]
                results[size][name] = (statistics.median(series), p95, matches[size][name])
        return results
    finally:
        for scp in scps:
            procs.stop(scp)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,100000")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--fill", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:
        fill(args.fill)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench-query-"))
    try:
        table = measure(sizes, args.runs, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print("| query | " + " | ".join(f"{s:,} studies: median / p95 ms (matches)" for s in sizes) + " | ratio |")
    print("|---|" + "---|" * (len(sizes) + 1))
    for name in table[sizes[0]]:
        cells = [f"{table[s][name][0]:.1f} / {table[s][name][1]:.1f} ({table[s][name][2]})" for s in sizes]
        ratio = table[sizes[-1]][name][0] / table[sizes[0]][name][0]
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f} |")


if __name__ == "__main__":
    main()
