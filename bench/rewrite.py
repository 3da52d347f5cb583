"""Correction benchmark: how long a correction takes in the index, and to rewrite every file.

    .venv/bin/python bench/rewrite.py [--slices 300] [--studies 20] [--per-study 30] [--json out.json]

Self-contained: a temporary STORAGE_DIR and SQLite database (migrated here), test
data generated with pydicom (tests/dicomgen.py: a 512x512 CT of ``--slices`` slices;
a patient with ``--studies`` studies of ``--per-study`` 64x64 images), indexed with
imaging/ingest.py. Then for each case:

- "correct": records.demographics.correct_patient (name and birth date), the one
  transaction after which C-FIND and QIDO-RS (which read the index) answer the new
  values;
- "rewrite": imaging.rewrite.run_job in this process (what the Celery task runs),
  every file read, rewritten and renamed into place with fsync (STORAGE_FSYNC);
  wall time and this process's CPU time (the figure that other load on the machine
  changes least).

The issue's target: the 300 slices rewritten in under 10 s on this machine.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--per-study", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-rewrite-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "imaging.settings",
            "DATABASE_URL": f"sqlite:///{work / 'db.sqlite3'}",
            "STORAGE_DIR": str(work / "storage"),
            "STORAGE_MIN_FREE_MB": "1",
            # No broker: the job is run here; the correction's attempt to queue it fails at once.
            "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",
        }
    )
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    import pydicom

    from imaging import ingest, rewrite, storage
    from records import demographics
    from records.models import Patient, RewriteJob
    from tests import dicomgen

    def put(paths) -> None:
        relpaths = []
        for path in paths:
            ds = pydicom.dcmread(path)
            relpath = storage.instance_relpath(ds.SOPInstanceUID)
            storage.absolute(relpath).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, storage.absolute(relpath))
            relpaths.append(relpath)
        ingest.index_files(relpaths)

    def case(name: str, patient_id: str) -> dict:
        started = time.perf_counter()
        record = demographics.correct_patient(
            patient=Patient.objects.get(patient_id=patient_id),
            changes={"name": "Zhang^Wei=张^伟", "birth_date": "1979-03-08"},
            reason="benchmark",
            user=None,
            address=None,
        )
        corrected = time.perf_counter() - started
        job = RewriteJob.objects.get(correction=record)
        started, cpu = time.perf_counter(), time.process_time()
        job = rewrite.run_job(job.pk)
        rewritten, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert (job.state, job.done) == ("done", job.total), rewrite.progress(job)
        result = {
            "case": name,
            "files": job.total,
            "correct_s": round(corrected, 3),
            "rewrite_s": round(rewritten, 2),
            "rewrite_cpu_s": round(cpu, 2),
            "files_per_s": round(job.total / rewritten, 1),
        }
        print(
            f"{name:24} {job.total:6} files  correct {corrected * 1000:7.1f} ms  rewrite {rewritten:6.2f} s"
            f" (CPU {cpu:5.2f} s, {job.total / rewritten:.0f} files/s)",
            flush=True,
        )
        return result

    print(f"generating in {work} ...", flush=True)
    put(dicomgen.ct_series(work / "ct", args.slices, 512, patient_id="BENCH-CT"))
    for study in range(args.studies):
        put(dicomgen.ct_series(work / f"s{study}", args.per_study, 64, patient_id="BENCH-20", seed=study))
    results = [
        case(f"CT {args.slices} x 512^2", "BENCH-CT"),
        case(f"{args.studies} studies x {args.per_study}", "BENCH-20"),
    ]
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
