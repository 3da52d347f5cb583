"""Fetch the pinned ``@ohif/app`` with npm and unpack its prebuilt ``dist/`` where views.py serves it.

Never built: the package's ``dist/`` is a ready web app, built for the site root.
Two things in it assume that root, and are made relative to where the files are
served, so the same files work under /ohif/ or any other prefix:

- the webpack runtime of the app bundle and of each worker bundle fetches chunks,
  workers and the wasm codecs from ``"/"``: replaced by the directory of the script
  that is running (the app bundle's ``<script>``, or the worker's own URL);
- ``app.bundle.css`` loads its font from ``url(/...)``: made relative to the stylesheet.

index.html, which names the prefix, is rewritten per request (views.py). An install
lands in a temporary folder renamed into place, with a marker written last, so a
broken download never serves half a viewer; older versions are removed.
"""

import base64
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from django.conf import settings

PACKAGE = "@ohif/app"
PACKAGE_JSON = Path(__file__).with_name("package.json")
MARKER = ".installed"
# What this installer does to the dist (relocatable, gzipped): an install made by an
# earlier one is made again.
LAYOUT = 2

PUBLIC_PATH = b'__webpack_require__.p = "/";'
RELOCATABLE_PUBLIC_PATH = (
    b"__webpack_require__.p = (function () {"
    b' var s = typeof document !== "undefined" && document.currentScript'
    b" ? document.currentScript.src : self.location.href;"
    b' return s.replace(/[?#].*$/, "").replace(/[^\\/]*$/, ""); })();'
)
ROOT_URL_IN_CSS = re.compile(rb"url\(/(?!/)")
# Served gzipped to browsers that take it (views.py): the app bundle alone is 17 MB, 4 MB gzipped.
COMPRESSIBLE = (".js", ".mjs", ".css", ".wasm", ".json", ".svg", ".map")
COMPRESS_MIN_BYTES = 1024


class InstallError(Exception):
    pass


def pinned() -> tuple[str, str]:
    """(version, integrity) of @ohif/app, as package.json pins them."""
    data = json.loads(PACKAGE_JSON.read_text())
    return data["dependencies"][PACKAGE], data["integrity"][PACKAGE]


def dist_dir(version: str | None = None) -> Path:
    return Path(settings.OHIF_DIR) / (version or pinned()[0])


def is_installed(version: str | None = None) -> bool:
    try:
        marker = json.loads((dist_dir(version) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("layout") == LAYOUT


def integrity_of(path: Path) -> str:
    """The npm (Subresource Integrity) form of a file's SHA-512."""
    digest = hashlib.sha512()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode()


def fetch(destination: Path, version: str, npm: str = "npm") -> Path:
    """``npm pack`` the package's tarball into ``destination`` (npm's cache and registry settings apply)."""
    done = subprocess.run(
        [npm, "pack", f"{PACKAGE}@{version}", "--json", "--pack-destination", str(destination)],
        cwd=destination,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise InstallError(f"npm pack {PACKAGE}@{version} failed: {done.stderr.strip()[-2000:]}")
    return destination / json.loads(done.stdout)[0]["filename"]


def make_relocatable(folder: Path) -> int:
    """Make the root-relative paths of the unpacked dist relative (see the module docstring); returns the count."""
    changed = 0
    for path in folder.glob("*.js"):
        data = path.read_bytes()
        if PUBLIC_PATH in data:
            path.write_bytes(data.replace(PUBLIC_PATH, RELOCATABLE_PUBLIC_PATH))
            changed += 1
    for path in folder.glob("*.css"):
        data = path.read_bytes()
        new, count = ROOT_URL_IN_CSS.subn(b"url(", data)
        if count:
            path.write_bytes(new)
    if not any(p.name.startswith("app.bundle.") and p.suffix == ".js" for p in folder.iterdir()):
        raise InstallError("no app.bundle.*.js in the package's dist/: not the layout this installer knows")
    if changed == 0:
        raise InstallError("the webpack public path was not found in the bundles: check this version's dist/")
    return changed


def compress(folder: Path) -> None:
    """A ``.gz`` beside each compressible file worth it, made once here instead of per request."""
    for path in folder.rglob("*"):
        if path.suffix in COMPRESSIBLE and path.is_file() and path.stat().st_size >= COMPRESS_MIN_BYTES:
            with path.open("rb") as source, gzip.open(path.with_name(path.name + ".gz"), "wb", compresslevel=6) as out:
                shutil.copyfileobj(source, out, 1 << 20)


def unpack(tarball: Path, version: str, integrity: str) -> Path:
    """Check ``tarball`` against the pinned integrity and unpack its dist/ as the installed ``version``."""
    actual = integrity_of(tarball)
    if actual != integrity:
        raise InstallError(f"{tarball.name}: integrity {actual} is not the pinned {integrity}")
    target = dist_dir(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version}-"))
    try:
        with tarfile.open(tarball) as tar:
            members = []
            for member in tar.getmembers():
                if member.name.startswith("package/dist/") and (member.isfile() or member.isdir()):
                    member.name = member.name.removeprefix("package/dist/")
                    members.append(member)
            tar.extractall(work, members=members, filter="data")
        if not (work / "index.html").is_file():
            raise InstallError(f"{tarball.name} has no dist/index.html")
        make_relocatable(work)
        compress(work)
        (work / MARKER).write_text(
            json.dumps({"package": PACKAGE, "version": version, "integrity": integrity, "layout": LAYOUT})
        )
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for other in target.parent.iterdir():
        if other.is_dir() and other != target and not other.name.startswith("."):
            shutil.rmtree(other, ignore_errors=True)  # an older version: 200 MB each
    return target


def install(*, tarball: Path | None = None, npm: str = "npm") -> Path:
    """Install the pinned version (from ``tarball``, or fetched with npm) unless it is installed already."""
    version, integrity = pinned()
    if is_installed(version):
        return dist_dir(version)
    if tarball is not None:
        return unpack(tarball, version, integrity)
    with tempfile.TemporaryDirectory(prefix="ohif-pack-") as folder:
        return unpack(fetch(Path(folder), version, npm), version, integrity)
