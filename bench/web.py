"""The doctors' web pages, measured as a signed-in browser session meets them.

    .venv/bin/python bench/web.py [--lines search] [--studies 100000] [--runs 40]
    tests/with_postgres.sh sh -c '.venv/bin/python bench/web.py --database-url "$DATABASE_URL"'

One archive for every line: a fresh SQLite database in a temporary VAR_DIR (or
the empty database of ``--database-url``),
filled with ``--studies`` studies of patients with Chinese names (sent in
characters only, in characters and pinyin, or in pinyin only; single,
compound and polyphonic surnames), gunicorn with 2 workers and imaging/gunicorn_conf.py
on a free port of 127.0.0.1 (as `make run` and docker/ serve), and a requests session
signed in as a doctor.

Lines (``--lines a,b``), one function each taking the ``Site`` and the number
of runs and returning table rows:

- ``search``: the study list ``/studies/`` (the whole page: search, count,
  50 rows, thumbnails' series) for a name substring in characters, pinyin
  initials, full pinyin (with and without a space), a patient ID, a date range,
  and the first page unfiltered and by name; median and 95th percentile of
  ``--runs`` requests each, the queries taking turns.

The viewer's lines (first image on screen, all slices in the browser, beside OHIF on
the same study) need a CT and chromium rather than 100,000 studies: bench/web_viewer.py.
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import query as query_bench  # noqa: E402 - bench/query.py

from tests import procs  # noqa: E402

# (characters, pinyin) of surnames as the department sees them: the common ones, compound
# ones, and those whose surname reading is not the character's common one.
SURNAMES = [
    ("王", "Wang"), ("李", "Li"), ("张", "Zhang"), ("刘", "Liu"), ("陈", "Chen"), ("杨", "Yang"), ("黄", "Huang"),
    ("赵", "Zhao"), ("吴", "Wu"), ("周", "Zhou"), ("徐", "Xu"), ("孙", "Sun"), ("马", "Ma"), ("朱", "Zhu"),
    ("胡", "Hu"), ("郭", "Guo"), ("何", "He"), ("林", "Lin"), ("罗", "Luo"), ("高", "Gao"), ("曾", "Zeng"),
    ("单", "Shan"), ("解", "Xie"), ("仇", "Qiu"), ("区", "Ou"), ("查", "Zha"), ("翟", "Zhai"), ("覃", "Qin"),
    ("欧阳", "Ouyang"), ("司马", "Sima"), ("诸葛", "Zhuge"), ("上官", "Shangguan"), ("东方", "Dongfang"),
]  # fmt: skip
GIVEN = [
    ("伟", "Wei"), ("芳", "Fang"), ("娜", "Na"), ("敏", "Min"), ("静", "Jing"), ("丽", "Li"), ("强", "Qiang"),
    ("磊", "Lei"), ("军", "Jun"), ("洋", "Yang"), ("勇", "Yong"), ("艳", "Yan"), ("杰", "Jie"), ("涛", "Tao"),
    ("明", "Ming"), ("超", "Chao"), ("秀", "Xiu"), ("霞", "Xia"), ("平", "Ping"), ("刚", "Gang"), ("桂", "Gui"),
    ("小", "Xiao"), ("建", "Jian"), ("国", "Guo"), ("华", "Hua"), ("文", "Wen"), ("海", "Hai"), ("玉", "Yu"),
]  # fmt: skip
MODALITIES = ["CT"] * 30 + ["MR"] * 20 + ["CR"] * 20 + ["DX"] * 10 + ["US"] * 12 + ["MG"] * 5 + ["PT", "NM", "XA"]
USER, PASSWORD = "bench-doctor", "unused-bench-password-123"


def fill(studies: int, seed: int = 10) -> None:
    """Runs in a child process whose environment points Django at the fresh database."""
    import datetime as dt

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imaging.settings")
    django.setup()
    from records.models import Patient, name_keys

    rng = random.Random(seed)
    patients = []
    for i in range(max(studies * 2 // 5, 1)):  # 2.5 studies per patient on average
        surname = rng.choice(SURNAMES)
        given = [rng.choice(GIVEN) for _ in range(rng.choice((1, 2, 2)))]
        characters = f"{surname[0]}^{''.join(g[0] for g in given)}"
        letters = f"{surname[1].upper()}^{''.join(g[1] for g in given).upper()}"
        kind = i % 3  # characters only (in the first group, as many modalities send them), both, pinyin only
        alphabetic, ideographic = [(characters.replace("^", ""), ""), (letters, characters), (letters, "")][kind]
        patients.append(
            Patient(
                patient_id=f"{1000000 + i * 7919 % 9000000}",
                name="=".join(g for g in (alphabetic, ideographic) if g),
                name_alphabetic=alphabetic,
                name_ideographic=ideographic,
                **name_keys(alphabetic, ideographic),  # bulk_create does not call save()
                birth_date=dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(90 * 365)),
                sex=rng.choice("MF"),
            )
        )
    Patient.objects.bulk_create(patients, batch_size=2000)
    query_bench.add_studies(rng, studies, dt.date(2016, 1, 1), MODALITIES)


SETUP = """
import django; django.setup()
import sys
from django.contrib.auth.models import Group, User
from django.test import Client
from records.models import Patient, Study

user = User.objects.create_user(sys.argv[1], password=sys.argv[2])
user.groups.add(Group.objects.get(name="Doctor"))
client = Client()
client.force_login(user)
print(client.cookies["sessionid"].value)
from records import pinyin
# Probes from the middle study of a patient sent in characters and pinyin.
studies = Study.objects.exclude(patient__name_ideographic="").select_related("patient").order_by("pk")
s = studies[studies.count() // 2]
p = s.patient
family = "".join(pinyin.han_syllables(p.name_ideographic.split("^")[0] + "^"))
print(p.name_ideographic.replace("^", ""), p.name_initials.split()[0], p.name_pinyin.split()[0], family, p.patient_id)
print(s.study_date.isoformat())
"""


@dataclass
class Site:
    """Our archive for the lines: database and store in ``var``, gunicorn at ``url``, a signed-in ``http``."""

    var: Path
    env: dict
    url: str = ""
    http: object = None
    probe: dict = field(default_factory=dict)
    proc: object = None

    @classmethod
    def start(cls, var: Path, studies: int, database_url: str = "") -> "Site":
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "imaging.settings",
            "VAR_DIR": str(var),
            "STORAGE_DIR": str(var / "storage"),
            "DATABASE_URL": database_url or f"sqlite:///{var / 'db.sqlite3'}",
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "WARNING",
            "ALLOWED_HOSTS": "127.0.0.1",
            "STORAGE_MIN_FREE_MB": "1",
            "CELERY_BROKER_URL": "redis://127.0.0.1:1/0",  # none: the pages do not queue work
        }
        var.mkdir(parents=True)
        site = cls(var=var, env=env)
        subprocess.run(procs.manage("migrate", "-v0"), env=env, cwd=ROOT, check=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--fill", str(studies)], env=env, cwd=ROOT, check=True)
        print(f"filled {studies:,} studies in {time.perf_counter() - t:.0f} s", flush=True)
        out = subprocess.run(
            [sys.executable, "-c", SETUP, USER, PASSWORD], env=env, cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout.split("\n")
        session_id = out[-4].strip()
        characters, initials, full, family, patient_id = out[-3].split()
        site.probe = {"characters": characters, "initials": initials, "pinyin": full, "date": out[-2].strip()}
        site.probe["spaced"] = f"{family} {full.removeprefix(family)}"  # "zhang wei"
        site.probe["patient_id"] = patient_id
        port = procs.free_port()
        command = [sys.executable, "-m", "gunicorn", "-w", "2", "-c", "python:imaging.gunicorn_conf"]
        command += ["-b", f"127.0.0.1:{port}", "imaging.wsgi:application"]
        site.proc = procs.start(command, env, var / "gunicorn.log")
        procs.wait_for(lambda: procs.port_open(port), 60, "gunicorn")
        site.url = f"http://127.0.0.1:{port}"

        import requests

        site.http = requests.Session()
        site.http.cookies.set("sessionid", session_id)
        return site

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)


def stats(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def count_of(html: str) -> str:
    """The total the page shows ("1,234 studies")."""
    marker = html.find(" stud")
    start = html.rfind(">", 0, marker) + 1
    return html[start:marker].strip()


def line_search(site: Site, runs: int) -> list[tuple[str, str, float, float, str]]:
    """The study list for each kind of search; rows of (line, query, median ms, p95 ms, matches)."""
    import datetime as dt

    day = dt.date.fromisoformat(site.probe["date"])
    queries = {
        "name substring (characters)": {"name": site.probe["characters"][-2:]},
        "pinyin initials": {"name": site.probe["initials"]},
        "full pinyin": {"name": site.probe["pinyin"]},
        "full pinyin with a space": {"name": site.probe["spaced"]},
        "patient ID": {"patient_id": site.probe["patient_id"]},
        "date range (7 days)": {"date_from": str(day - dt.timedelta(days=6)), "date_to": str(day)},
        "first page, newest first": {},
        "first page by name": {"sort": "name"},
        "initials, by name": {"name": site.probe["initials"], "sort": "name"},
    }
    times: dict[str, list[float]] = {name: [] for name in queries}
    counts = {}
    for params in queries.values():  # warm up: each gunicorn worker, each query
        for _ in range(2):
            site.http.get(f"{site.url}/studies/", params=params).raise_for_status()
    for _ in range(runs):
        for name, params in queries.items():
            t = time.perf_counter()
            response = site.http.get(f"{site.url}/studies/", params=params)
            times[name].append((time.perf_counter() - t) * 1000)
            response.raise_for_status()
            assert "/accounts/login/" not in response.url, "the session is not signed in"
            counts[name] = count_of(response.text)
    rows = []
    for name, params in queries.items():
        median, p95 = stats(times[name])
        shown = "&".join(f"{k}={v}" for k, v in params.items()) or "(none)"
        rows.append(("search", f"{name}: {shown}", median, p95, counts[name]))
    return rows


LINES = {"search": line_search}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", default=",".join(LINES), help=f"comma-separated, of: {', '.join(LINES)}")
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument(
        "--database-url",
        default="",
        help="an empty database to fill instead of a fresh SQLite file (tests/with_postgres.sh sets DATABASE_URL)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (and print it)")
    parser.add_argument("--fill", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fill:
        fill(args.fill)
        return
    lines = [name.strip() for name in args.lines.split(",") if name.strip()]
    unknown = [name for name in lines if name not in LINES]
    if unknown:
        parser.error(f"unknown lines: {', '.join(unknown)}")
    root = Path(tempfile.mkdtemp(prefix="bench-web-"))
    site = None
    try:
        site = Site.start(root / "site", args.studies, args.database_url)
        rows = []
        for name in lines:
            rows += LINES[name](site, args.runs)
    finally:
        if site is not None:
            site.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    database = args.database_url.partition(":")[0] if args.database_url else "sqlite"
    print(f"{args.studies:,} studies, {args.runs} runs each, {database}, gunicorn -w 2 (gthread)")
    print()
    print("| line | query | median ms | p95 ms | matches |")
    print("|---|---|---|---|---|")
    for line, query, median, p95, matches in rows:
        print(f"| {line} | {query} | {median:.1f} | {p95:.1f} | {matches} |")


if __name__ == "__main__":
    main()
