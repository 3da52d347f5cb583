"""The built-in viewer in chromium: first image on screen, all slices in the browser, beside OHIF.

    OHIF_DIR=var/ohif .venv/bin/python bench/web_viewer.py [--slices 300] [--runs 5] [--workers 2] [--threads 4]

Self-contained and self-stopping, 127.0.0.1 only, free ports, a temporary folder: a
fresh SQLite database with the 512x512 CT of tests/dicomgen.py (``--slices``) stored
and indexed, the static files collected, gunicorn (``--workers`` as bench/dicomweb.py,
``--threads``: with sync workers chromium's idle preconnected sockets hold a worker each
until gunicorn's 30 s timeout) serving /viewer/, /ohif/ (from OHIF_DIR; ``manage.py ohif_install`` puts it there) and
/dicomweb/. Debian's chromium, headless, driven by Playwright, signed in as a Doctor.

Each run opens a new tab, our viewer and OHIF taking turns (the order swapping every
run), after one warm-up visit of each (so both have their scripts in the browser's
cache, as on a workstation used every day):

- **first image, mark**: from the navigation's start to the ``viewer-first-image``
  mark our viewer sets once the first frame is drawn on its canvas;
- **first image, pixels**: from the navigation's start until the canvas has an image
  on it (spread-out grey levels), read back with getImageData and polled from here
  every few ms: the same measure for ours and for OHIF (its
  ``canvas.cornerstone-canvas``). Checked against screenshots of OHIF's canvas (what
  tests/test_ohif_browser.py waits for): the same moment within one poll; a
  screenshot loop itself is no timer here, one screenshot took up to 1.7 s while
  OHIF's page was busy;
- **from the study list**: the study list's "Open" link clicked, until our mark
  (wall clock, both ends on this machine);
- **all slices**: from the navigation's start to the ``viewer-all-loaded`` mark (every
  frame of the series fetched and kept in the page).
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from dicomweb import archive_env, index_and_sign_in  # noqa: E402 - bench/dicomweb.py: one of our archives

from tests import dicomgen, procs  # noqa: E402

CHROMIUM = "/usr/bin/chromium"  # Debian's, as tests/conftest.py uses: Playwright never downloads one

# Has the canvas an image on it? (max - min of the grey levels of a sample of pixels > 100)
PAINTED = """(selector) => {
  const c = document.querySelector(selector);
  if (!c || !c.width || !c.height) return null;
  const ctx = c.getContext("2d");
  if (!ctx) return null;
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let lo = 255, hi = 0;
  for (let i = 0; i < d.length; i += 4 * 97) { const v = d[i + 1]; if (v < lo) lo = v; if (v > hi) hi = v; }
  return hi - lo > 100 ? performance.now() : null;
}"""
MARK = "(name) => { const m = performance.getEntriesByName(name)[0]; return m ? m.startTime : null; }"
OURS_CANVAS = "#image"
OHIF_CANVAS = "canvas.cornerstone-canvas"


class Archive:
    """A fresh database in ``var`` with the CT in it, the static files collected, gunicorn."""

    def __init__(self, var: Path, files: Path, workers: int, threads: int, ohif_dir: str):
        var.mkdir(parents=True)
        self.env = archive_env(var, OHIF_DIR=ohif_dir)
        subprocess.run(procs.manage("migrate", "-v0"), env=self.env, cwd=ROOT, check=True)
        subprocess.run(procs.manage("collectstatic", "--noinput", "-v0"), env=self.env, cwd=ROOT, check=True)
        self.session_id = index_and_sign_in(self.env, files)[0]
        port = procs.free_port()
        command = [sys.executable, "-m", "gunicorn", "-w", str(workers), "--threads", str(threads)]
        command += ["-b", f"127.0.0.1:{port}"]
        self.proc = procs.start([*command, "imaging.wsgi:application"], self.env, var / "gunicorn.log")
        procs.wait_for(lambda: procs.port_open(port), 60, "gunicorn")
        self.url = f"http://127.0.0.1:{port}"


def poll(page, expression: str, arg, timeout: float = 60.0):
    """``expression(arg)`` in the page until it returns a number; that number."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(expression, arg)
        if value is not None:
            return value
        time.sleep(0.005)
    raise TimeoutError(f"{expression[:40]}... {arg}: nothing after {timeout} s")


def settle(page):
    """Let the page finish what it loads (no request for 500 ms) before the next measurement starts,
    so that no run pays for the server still answering the one before."""
    page.wait_for_load_state("networkidle", timeout=120_000)
    page.close()


def ours(context, url: str) -> dict:
    page = context.new_page()
    page.goto(url, wait_until="commit")
    painted = poll(page, PAINTED, OURS_CANVAS)
    first = poll(page, MARK, "viewer-first-image")
    everything = poll(page, MARK, "viewer-all-loaded")
    settle(page)
    return {"mark": first, "pixels": painted, "all": everything}


def ohif(context, url: str) -> dict:
    page = context.new_page()
    page.goto(url, wait_until="commit")
    painted = poll(page, PAINTED, OHIF_CANVAS, timeout=120)
    settle(page)
    return {"pixels": painted}


def from_study_list(context, server: str) -> float:
    page = context.new_page()
    page.goto(f"{server}/studies/")
    link = page.get_by_role("link", name="Open", exact=True).first
    link.wait_for()
    clicked = time.time() * 1000
    link.click()
    page.wait_for_url("**/viewer/**")
    at = poll(
        page,
        "(n) => { const m = performance.getEntriesByName(n)[0]; "
        "return m ? performance.timeOrigin + m.startTime : null; }",
        "viewer-first-image",
    )
    page.close()
    return at - clicked


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ms (min {min(values):.0f}, max {max(values):.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker (1: sync workers)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    ohif_dir = os.environ.get("OHIF_DIR") or str(ROOT / "var" / "ohif")
    if not Path(ohif_dir).is_dir():
        print(f"no OHIF in {ohif_dir}: run `manage.py ohif_install` or set OHIF_DIR", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="bench-viewer-"))
    archive = None
    try:
        ct = dicomgen.ct_series(root / "ct", args.slices, 512, patient_id="BENCH-CT", patient_name="BENCH^CT")
        import pydicom

        study = pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID
        archive = Archive(root / "var", root / "ct", args.workers, args.threads, ohif_dir)
        from playwright.sync_api import sync_playwright

        viewer_url = f"{archive.url}/viewer/?study={study}"
        ohif_url = f"{archive.url}/ohif/viewer?StudyInstanceUIDs={study}"
        results = {"ours": [], "ohif": [], "list": []}
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
            )
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            context.add_cookies([{"name": "sessionid", "value": archive.session_id, "url": archive.url}])
            ours(context, viewer_url)  # warm-up: scripts into the browser's cache
            ohif(context, ohif_url)
            for i in range(args.runs):
                order = [("ours", ours, viewer_url), ("ohif", ohif, ohif_url)]
                for name, run, url in order if i % 2 == 0 else order[::-1]:
                    results[name].append(run(context, url))
                results["list"].append(from_study_list(context, archive.url))
            browser.close()
        n = args.slices
        server = f"gunicorn -w {args.workers} --threads {args.threads}"
        print(f"\nViewer, {n}-slice 512x512 CT, chromium headless, {server}, {args.runs} runs:")
        print(f"  ours, first image (mark)          {median([r['mark'] for r in results['ours']])}")
        print(f"  ours, first image (pixels)        {median([r['pixels'] for r in results['ours']])}")
        print(f"  OHIF, first image (pixels)        {median([r['pixels'] for r in results['ohif']])}")
        print(f"  ours, study list click -> image   {median(results['list'])}")
        print(f"  ours, all {n} slices in the page  {median([r['all'] for r in results['ours']])}")
        print("  each run (ours mark / ours pixels / OHIF pixels / list click / all slices):")
        for i in range(args.runs):
            o, h = results["ours"][i], results["ohif"][i]
            cells = (o["mark"], o["pixels"], h["pixels"], results["list"][i], o["all"])
            print("    " + " / ".join(f"{v:.0f}" for v in cells))
        return 0
    finally:
        if archive is not None:
            procs.stop(archive.proc)
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
