"""CPU the indexer spends per image, in-process: ``ingest.index_files`` on generated small files.

    nice -n 19 .venv/bin/python bench/index_cpu.py [--small 1000 | --ct 300] [--batch 64] [--rounds 3] \
        [--profile out.prof] [--env VAR=value ...] [--thumbnails]

In a temporary directory (its own STORAGE_DIR and a fresh SQLite database,
``manage.py migrate``) it writes ``--small`` 64x64 MR images as bench/ingest.py
generates them (studies of 2 series of 5), or with ``--ct`` a series of that many
512x512 CT slices (512 KB each) as it generates them, stored where the SCP would store them,
and indexes them in batches of ``--batch`` paths (the SCP's hand-off sends at most
64 per task), as the worker's task does, without Celery. Each round uses fresh
UIDs (new rows, as in the benchmark), and a second pass over the same files
(re-sends: nothing changes). It prints CPU seconds (process time: this process
does the SQLite work too) and wall milliseconds per image, the median of the rounds.
With ``--profile``, the last round runs under cProfile and the stats are written
there (``python -m pstats out.prof``). ``--env`` sets settings before Django starts
(e.g. ``--env INGEST_BULK=0`` for the slow path). ``--against SETTING=value`` (a
setting read at call time, such as ``INGEST_BULK_PARENTS=0``) indexes a second set
of fresh files in each round with that setting, the two taking turns (ABBA), and
prints both medians and the median of the rounds' differences: on a machine whose
speed drifts by tens of percent, pairs taken seconds apart compare better than runs.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--small", type=int, default=1000)
    p.add_argument("--ct", type=int, default=0, help="slices of one CT series instead of small images")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile")
    p.add_argument("--env", action="append", default=[], help="VAR=value, set before Django starts")
    p.add_argument("--thumbnails", action="store_true", help="then time the thumbnails of the series indexed")
    p.add_argument("--against", help="SETTING=value: index a second set each round with it, taking turns")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="index-cpu-"))
    try:
        os.environ.update(
            DJANGO_SETTINGS_MODULE="imaging.settings",
            VAR_DIR=str(work / "var"),
            STORAGE_DIR=str(work / "storage"),
            DATABASE_URL=f"sqlite:///{work / 'db.sqlite3'}",
            STORAGE_MIN_FREE_MB="1",
        )
        for item in args.env:
            name, _, value = item.partition("=")
            os.environ[name] = value
        (work / "var").mkdir()
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def generate(work: Path, count: int, tag: str, ct: bool = False) -> list[str]:
    """``count`` small images (or CT slices) stored at their instance paths; returns the relative paths."""
    import numpy as np
    import pydicom

    from bench import ingest as bench_ingest
    from imaging import storage

    src = work / f"gen-{tag}"
    rng = np.random.default_rng(0)
    if ct:
        bench_ingest.write_ct(src, bench_ingest.ct_phantom(count, rng), 1, tag)
    else:
        bench_ingest.write_small(src, bench_ingest.mr_images(count, 64, rng), count, 64, 1, tag, 5, 2)
    relpaths = []
    for path in sorted(src.rglob("*.dcm")):
        uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
        relpath = storage.instance_relpath(uid)
        dest = storage.absolute(relpath)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, dest)
        relpaths.append(relpath)
    shutil.rmtree(src)
    return relpaths


def index_all(relpaths: list[str], batch: int) -> tuple[float, float, int]:
    from imaging import ingest

    cpu, wall = time.process_time(), time.perf_counter()
    done = 0
    for start in range(0, len(relpaths), batch):
        indexed, failed = ingest.index_files(relpaths[start : start + batch], source_ae="MODALITY")
        assert not failed, failed
        done += len(indexed)
    return time.process_time() - cpu, time.perf_counter() - wall, done


def against(work: Path, args) -> None:
    """Each round, fresh files indexed with the defaults and fresh files with ``--against``, in turns."""
    import json

    from django.conf import settings
    from django.test import override_settings

    name, _, raw = args.against.partition("=")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    count = args.ct or args.small
    pairs = []
    for r in range(args.rounds):
        spent = {}
        for which in ("default", "against") if r % 2 == 0 else ("against", "default"):
            relpaths = generate(work, count, f"r{r}{which[0]}", ct=bool(args.ct))
            # Both arms under override_settings: Django's settings object is slower to read inside it.
            with override_settings(**{name: value if which == "against" else getattr(settings, name)}):
                cpu, _, n = index_all(relpaths, args.batch)
            spent[which] = cpu / n
        pairs.append((spent["default"], spent["against"]))
        print(
            f"round {r + 1}: default {spent['default'] * 1e3:.2f}, {args.against} {spent['against'] * 1e3:.2f} ms CPU"
        )
    default, other = statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)
    change = statistics.median(b - a for a, b in pairs)
    print(
        f"median new: default {default * 1e3:.2f}, {args.against} {other * 1e3:.2f} ms CPU per image; "
        f"median difference {change * 1e3:+.2f} ms"
    )


def run(work: Path, args) -> None:
    from django.conf import settings

    if args.against:
        against(work, args)
        return

    from imaging import thumbnails
    from records.models import Instance

    count = args.ct or args.small
    what = f"{count} CT slices" if args.ct else f"{count} small images"
    print(f"database {settings.DATABASES['default']['ENGINE']}, {what}, batches of {args.batch}")
    new, again, thumbs = [], [], []
    for r in range(args.rounds):
        relpaths = generate(work, count, f"r{r}", ct=bool(args.ct))
        profiler = None
        if args.profile and r == args.rounds - 1:
            import cProfile

            profiler = cProfile.Profile()
            profiler.enable()
        cpu, wall, n = index_all(relpaths, args.batch)
        if profiler:
            profiler.disable()
            profiler.dump_stats(args.profile)
        assert n == len(relpaths) and Instance.objects.filter(file_path__in=relpaths[:500]).count() == min(500, n)
        cpu2, wall2, _ = index_all(relpaths, args.batch)
        new.append((cpu / n, wall / n))
        again.append((cpu2 / n, wall2 / n))
        print(
            f"round {r + 1}: new {cpu / n * 1e3:.2f} ms CPU, {wall / n * 1e3:.2f} ms wall per image "
            f"({n / wall:.0f}/s); re-sent {cpu2 / n * 1e3:.2f} ms CPU, {wall2 / n * 1e3:.2f} ms wall"
        )
        if args.thumbnails:
            series = sorted(set(Instance.objects.filter(file_path__in=relpaths).values_list("series_id", flat=True)))
            started = time.process_time()
            profiler = None
            if args.profile and r == args.rounds - 1:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            for start in range(0, len(series), args.batch):  # as make_thumbnails takes a batch's series
                thumbnails.update_series_thumbnails(series[start : start + args.batch])
            if profiler:
                profiler.disable()
                profiler.dump_stats(args.profile + ".thumbnails")
            spent = time.process_time() - started
            thumbs.append(spent / n)
            print(f"  thumbnails: {spent / len(series) * 1e3:.2f} ms CPU per series, {spent / n * 1e3:.2f} per image")
    for label, rows in (("new", new), ("re-sent", again)):
        cpu = statistics.median(c for c, _ in rows)
        wall = statistics.median(w for _, w in rows)
        print(f"median {label}: {cpu * 1e3:.2f} ms CPU per image, {wall * 1e3:.2f} ms wall, {1 / wall:.0f} images/s")
    if thumbs:
        print(f"median thumbnails: {statistics.median(thumbs) * 1e3:.2f} ms CPU per image")


if __name__ == "__main__":
    main()
