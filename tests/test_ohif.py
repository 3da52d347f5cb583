"""The OHIF Viewer under /ohif/: installing the pinned package, serving it to the right roles, its config.

A small fake of @ohif/app's tarball stands in for the real one (tests/test_ohif_browser.py
runs the real viewer).
"""

import gzip
import io
import json
import re
import tarfile
from pathlib import Path

import pytest
from django.test import Client

from imaging.ohif import install
from records.models import Patient, Study
from tests.dicomweb_data import client_for

VERSION = "3.99.0"
APP_BUNDLE = "app.bundle.0123456789abcdef.js"
INDEX = (
    '<!doctype html><html lang="en"><head><meta charset="UTF-8">'
    '<script>console.time("scriptToView"),window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json"><link rel="icon" href="/assets/favicon.ico">'
    '<script rel="preload" as="script" src="/app-config.js"></script>'
    '<script rel="preload" as="script" type="module" src="/init-service-worker.js"></script>'
    "<title>OHIF Viewer</title>"
    '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
    f'<script defer src="/{APP_BUNDLE}"></script><link href="/app.bundle.css" rel="stylesheet"></head>'
    '<body><div id="root"></div></body></html>'
)
FILES = {
    "package/package.json": b'{"name": "@ohif/app"}',
    "package/dist/index.html": INDEX.encode(),
    f"package/dist/{APP_BUNDLE}": b'(() => {\n__webpack_require__.p = "/";\n})();\n',
    "package/dist/compute.bundle.fedcba9876543210.js": b'__webpack_require__.p = "/";',
    "package/dist/app.bundle.css": b"@font-face{src:url(/a34f9d1faa5f3315.woff2)}a{b:url(//keep.invalid/x)}",
    "package/dist/0ddf166f7a343eda.wasm": b"\0asm\1\0\0\0" + bytes(4096),
    "package/dist/assets/favicon.ico": b"icon",
    "package/dist/app-config.js": b"window.config = {dataSources: ['https://d14fa38qiwhyfd.cloudfront.net']};",
}


def tarball(path: Path, files: dict[str, bytes] = FILES) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 499162500  # what npm pack stamps on every file (1985-10-26)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def package(tmp_path, settings, monkeypatch):
    """A fake @ohif/app tarball, pinned (version and integrity) as package.json would pin it."""
    settings.OHIF_DIR = tmp_path / "ohif"
    path = tarball(tmp_path / "ohif-app.tgz")
    monkeypatch.setattr(install, "pinned", lambda: (VERSION, install.integrity_of(path)))
    return path


@pytest.fixture
def installed(package):
    return install.install(tarball=package)


# Installing


def test_the_pin_is_an_exact_version_with_its_integrity():
    version, integrity = install.pinned()
    assert re.fullmatch(r"3\.\d+\.\d+", version)
    assert integrity.startswith("sha512-") and len(integrity) == 95


def test_the_dist_is_unpacked_and_made_relocatable(installed, settings):
    assert installed == settings.OHIF_DIR / VERSION
    assert install.is_installed()
    bundle = (installed / APP_BUNDLE).read_bytes()
    assert install.PUBLIC_PATH not in bundle and install.RELOCATABLE_PUBLIC_PATH in bundle
    assert install.RELOCATABLE_PUBLIC_PATH in (installed / "compute.bundle.fedcba9876543210.js").read_bytes()
    css = (installed / "app.bundle.css").read_bytes()
    assert b"url(a34f9d1faa5f3315.woff2)" in css and b"url(//keep.invalid/x)" in css
    assert (installed / "index.html").read_text() == INDEX  # rewritten per request
    assert not (installed / "package.json").exists()
    assert json.loads((installed / install.MARKER).read_text())["version"] == VERSION


def test_a_second_install_does_nothing_and_an_older_version_is_removed(package, settings):
    old = settings.OHIF_DIR / "3.0.0"
    old.mkdir(parents=True)
    (old / "index.html").write_text("old")
    first = install.install(tarball=package)
    assert not old.exists()
    stamp = (first / install.MARKER).stat().st_mtime_ns
    assert install.install(tarball=Path("/nonexistent.tgz")) == first
    assert (first / install.MARKER).stat().st_mtime_ns == stamp
    # One made by an earlier installer (another layout) is made again.
    marker = json.loads((first / install.MARKER).read_text())
    (first / install.MARKER).write_text(json.dumps({**marker, "layout": install.LAYOUT - 1}))
    assert not install.is_installed()
    install.install(tarball=package)
    assert install.is_installed()


def test_a_tarball_that_is_not_the_pinned_one_is_refused_and_nothing_is_installed(package, tmp_path, monkeypatch):
    monkeypatch.setattr(install, "pinned", lambda: (VERSION, "sha512-" + "A" * 86 + "=="))
    with pytest.raises(install.InstallError, match="integrity"):
        install.install(tarball=package)
    assert not install.is_installed()
    assert [p for p in install.dist_dir().parent.glob("*")] == []


def test_a_tarball_escaping_its_folder_or_without_the_known_layout_is_refused(tmp_path, settings, monkeypatch):
    settings.OHIF_DIR = tmp_path / "ohif"
    for files in (
        {**FILES, "package/dist/../../../escaped.txt": b"x"},
        {k: v for k, v in FILES.items() if "bundle" not in k},
    ):
        path = tarball(tmp_path / "bad.tgz", files)
        monkeypatch.setattr(install, "pinned", lambda path=path: (VERSION, install.integrity_of(path)))
        with pytest.raises((install.InstallError, tarfile.TarError)):
            install.install(tarball=path)
        assert not install.is_installed()
    assert not (tmp_path / "escaped.txt").exists()


# Serving


@pytest.fixture
def doctor(db):
    return client_for("Doctor")


def test_index_html_names_our_prefix_has_no_service_worker_and_a_nonce(doctor, installed):
    for url in ("/ohif/", "/ohif/index.html", "/ohif/viewer?StudyInstanceUIDs=1.2.840.1", "/ohif/viewer/dicomweb"):
        response = doctor.get(url)
        assert response.status_code == 200, url
        assert response["Content-Type"] == "text/html; charset=utf-8"
        html = response.content.decode()
        assert '<head><base href="/ohif/">' in html
        assert html.count('window.PUBLIC_URL="/ohif/"') == 2
        assert f'src="/ohif/{APP_BUNDLE}"' in html and 'src="/ohif/app-config.js"' in html
        assert 'href="/ohif/app.bundle.css"' in html and 'href="/ohif/assets/favicon.ico"' in html
        assert "init-service-worker" not in html
        assert response["Cache-Control"] == "no-store"
        nonces = set(re.findall(r'<script nonce="([^"]+)">', html))
        assert len(nonces) == 1
        csp = response["Content-Security-Policy"]
        assert f"'nonce-{nonces.pop()}'" in csp and "connect-src 'self' blob: data:;" in csp
        assert response["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"
    assert doctor.get("/ohif/").content != doctor.get("/ohif/").content  # a fresh nonce each time


def test_app_config_points_at_our_dicomweb_as_the_browser_sees_it(doctor, installed, settings):
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "pacs.example"]
    response = doctor.get("/ohif/app-config.js", HTTP_HOST="pacs.example:8443")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/javascript; charset=utf-8"
    assert response["Cache-Control"] == "no-store"
    body = response.content.decode()
    config = json.loads(body.split("window.config = ", 1)[1].split(";\n", 1)[0])
    assert config["routerBasename"] == "/ohif"
    [source] = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"]
    options = source["configuration"]
    for root in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert options[root] == "http://pacs.example:8443/dicomweb"
    assert options["supportsFuzzyMatching"] is False and options["dicomUploadEnabled"] is False
    assert options["thumbnailRendering"] == "thumbnail" and options["imageRendering"] == "wadors"
    # No other host anywhere: not the package's demo server, no telemetry.
    assert set(re.findall(r"https?://[^/\"']+", body)) == {"http://pacs.example:8443"}
    assert '"/accounts/login/"' in body  # where an ended session signs in again


def test_files_come_with_their_type_and_hashed_ones_are_kept_for_a_year(doctor, installed):
    bundle = doctor.get(f"/ohif/{APP_BUNDLE}")
    assert bundle.status_code == 200
    assert bundle["Content-Type"] == "text/javascript; charset=utf-8"
    assert bundle["Cache-Control"] == "private, max-age=31536000, immutable"
    assert install.RELOCATABLE_PUBLIC_PATH in b"".join(bundle.streaming_content)
    wasm = doctor.get("/ohif/0ddf166f7a343eda.wasm")
    assert wasm["Content-Type"] == "application/wasm"
    assert wasm["Cross-Origin-Embedder-Policy"] == "require-corp"
    icon = doctor.get("/ohif/assets/favicon.ico")
    assert icon["Cache-Control"] == "private, no-cache"
    again = doctor.get("/ohif/assets/favicon.ico", HTTP_IF_MODIFIED_SINCE=icon["Last-Modified"])
    assert again.status_code == 304


def test_big_files_go_gzipped_to_browsers_that_take_it(doctor, installed):
    wasm = (installed / "0ddf166f7a343eda.wasm").read_bytes()
    assert (installed / "0ddf166f7a343eda.wasm.gz").is_file()
    assert not (installed / "assets" / "favicon.ico.gz").exists()  # not worth it
    for accept in ("gzip, deflate, br, zstd", "br;q=1.0, gzip;q=0.5"):
        response = doctor.get("/ohif/0ddf166f7a343eda.wasm", HTTP_ACCEPT_ENCODING=accept)
        assert response["Content-Encoding"] == "gzip" and response["Content-Type"] == "application/wasm"
        assert "Accept-Encoding" in response["Vary"]
        assert gzip.decompress(b"".join(response.streaming_content)) == wasm
    for accept in ("", "br", "gzip;q=0"):
        response = doctor.get("/ohif/0ddf166f7a343eda.wasm", HTTP_ACCEPT_ENCODING=accept)
        assert not response.has_header("Content-Encoding")
        assert b"".join(response.streaming_content) == wasm


def test_missing_files_are_404_and_nothing_outside_the_dist_is_served(doctor, installed):
    assert doctor.get("/ohif/1234.bundle.0123456789abcdef.js").status_code == 404
    assert doctor.get("/ohif/assets/missing.png").status_code == 404
    for url in ("/ohif/.installed", "/ohif/../../imaging/settings.py", "/ohif/%2e%2e/%2e%2e/manage.py"):
        response = doctor.get(url)
        assert response.status_code in (200, 404), url
        assert b"integrity" not in response.content and b"import" not in response.content.replace(b"import(n)", b"")


def test_ohif_is_for_doctors_and_administrators_only(db, installed):
    assert client_for("Administrator").get("/ohif/").status_code == 200
    for url in ("/ohif/", "/ohif/app-config.js", f"/ohif/{APP_BUNDLE}", "/ohif/viewer"):
        assert client_for("Front desk", username=f"desk{len(url)}").get(url).status_code == 403
        assert client_for(username=f"nobody{len(url)}").get(url).status_code == 403
        anonymous = Client().get(url)
        assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/?next=/ohif/")
    assert client_for("Doctor", username="poster").post("/ohif/").status_code == 405


def test_turned_off_or_not_installed(doctor, package, settings):
    assert doctor.get("/ohif/").status_code == 503  # not installed yet
    install.install(tarball=package)
    settings.OHIF_ENABLED = False
    assert doctor.get("/ohif/").status_code == 404


def test_the_study_list_opens_a_study_in_ohif(doctor, settings):
    patient = Patient.objects.create(patient_id="P1", name_alphabetic="Doe^Jane")
    Study.objects.create(patient=patient, study_instance_uid="1.2.840.99.1")
    link = 'href="/ohif/viewer?StudyInstanceUIDs=1.2.840.99.1"'
    assert link in doctor.get("/studies/").content.decode()
    settings.OHIF_ENABLED = False
    assert link not in doctor.get("/studies/").content.decode()
