"""A doctor reads our studies in the OHIF Viewer, in Debian's chromium driven by Playwright.

A real ``runserver`` over the test database and store serves /ohif/ and /dicomweb/;
any request to another host than 127.0.0.1 fails the test.
"""

import io
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from django.contrib.auth.models import Group
from django.core.management import call_command
from PIL import Image, ImageStat
from pydicom.uid import CTImageStorage, generate_uid

from imaging import ingest, storage
from records.roles import DOCTOR, FRONT_DESK
from tests import dicomgen, procs
from tests.dicomweb_data import PASSWORD, fresh_uids, make_user, pydicom_file, store

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SHOTS = Path("/tmp/ohif-shots")
SLICES = 300


@pytest.fixture(scope="module")
def ohif_installed():
    # Fetched once with npm (make test does it before the suite); a no-op when installed.
    call_command("ohif_install")


@pytest.fixture
def web_server(transactional_db, logs_dir, ohif_installed):
    """``manage.py runserver`` on a free 127.0.0.1 port, over the test database, store and OHIF."""
    from django.conf import settings

    from tests.conftest import runserver

    with runserver(logs_dir, "runserver-ohif", OHIF_DIR=str(settings.OHIF_DIR)) as url:
        yield url


def signed_ct(slices: int, size: int = 512) -> str:
    """A CT series of ``slices`` signed 16-bit slices (Hounsfield units, no rescale) in the store; its study UID."""
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    series_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    relpaths = []
    for i in range(slices):
        ds = dicomgen.base_dataset(
            CTImageStorage, study_uid, series_uid, patient_id="OHIF-CT", patient_name="PHANTOM^CT"
        )
        ds.Modality = "CT"
        ds.StudyDescription = "OHIF phantom"
        ds.SeriesDescription = f"{slices} slices"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [-250.0, -250.0, -i * 1.25]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = -i * 1.25
        ds.SliceThickness = 1.25
        ds.PixelSpacing = [500 / size, 500 / size]
        hounsfield = dicomgen.phantom(size, i).astype(np.int16) - 1024
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.PixelData = hounsfield.astype("<i2").tobytes()
        relpath = storage.instance_relpath(ds.SOPInstanceUID)
        path = storage.absolute(relpath)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        relpaths.append(relpath)
    _done, failed = ingest.index_files(relpaths)
    assert not failed, failed
    return study_uid


@pytest.fixture
def archive(web_server):
    """Our studies: a GB18030 name as pydicom's file has it (Wang^XiaoDong=王^小东), a GB18030 name in Chinese
    characters only (as many Chinese modalities write it), and the 300-slice CT."""
    wang = fresh_uids(pydicom_file("chrX2.dcm"))
    store(wang)
    zhang = fresh_uids(pydicom_file("chrX2.dcm", PatientName="张^伟", PatientID="OHIF-ZH"))
    store(zhang)
    return {"wang": wang.StudyInstanceUID, "zhang": zhang.StudyInstanceUID, "ct": signed_ct(SLICES)}


class Watched:
    """A browser context whose requests to any other host are refused and recorded, with the console kept."""

    def __init__(self, browser, server: str):
        self.foreign: list[str] = []
        self.console: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 900})
        self.context.route("**/*", self._only_ours)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.server = server

    def _only_ours(self, route):
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).hostname != "127.0.0.1":
            self.foreign.append(url)
            route.abort()
        else:
            route.continue_()

    def sign_in(self, username: str, next_url: str):
        self.page.goto(f"{self.server}/accounts/login/?next={next_url}")
        self.page.fill("#id_username", username)
        self.page.fill("#id_password", PASSWORD)
        self.page.click("button[type=submit]")

    def errors(self) -> list[str]:
        return [line for line in self.console if line.startswith(("error", "pageerror"))]


def role_user(username: str, role: str):
    # A transactional test's flush empties the groups the data migration made: made again here.
    Group.objects.get_or_create(name=role)
    return make_user(username, role)


def shot(page, tmp_path: Path, name: str, locator=None, *, keep: bool = True) -> Path:
    """A screenshot in the test's folder, and in /tmp/ohif-shots/ (``keep``) to be looked at."""
    path = tmp_path / name
    (locator or page).screenshot(path=path)
    if keep:
        SHOTS.mkdir(exist_ok=True)
        shutil.copy(path, SHOTS / name)
    return path


def not_uniform(png: bytes) -> bool:
    """An image with something drawn on it: spread-out grey levels, not one flat colour."""
    image = Image.open(io.BytesIO(png)).convert("L")
    low, high = image.getextrema()
    return high - low > 100 and ImageStat.Stat(image).stddev[0] > 20


def test_a_doctor_finds_our_studies_in_ohif_and_opens_the_ct(browser, web_server, archive, tmp_path):
    from playwright.sync_api import expect

    role_user("ohif-doctor", DOCTOR)
    watched = Watched(browser, web_server)
    page = watched.page

    watched.sign_in("ohif-doctor", "/ohif/")
    page.wait_for_url(f"{web_server}/ohif/**")
    # OHIF's study list shows the Alphabetic group of a name (as "Family, Given").
    for name in ("Wang, XiaoDong", "张, 伟", "PHANTOM, CT"):
        expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=60_000)
    assert page.evaluate("window.crossOriginIsolated") is True
    shot(page, tmp_path, "1-ohif-study-list.png")

    # The study list's link opens the CT in OHIF.
    page.goto(f"{web_server}/studies/")
    page.locator("tr", has_text="PHANTOM").get_by_role("link", name="Open in OHIF").click()
    page.wait_for_url(f"{web_server}/ohif/viewer?StudyInstanceUIDs={archive['ct']}")
    canvas = page.locator("canvas.cornerstone-canvas").first
    expect(canvas).to_be_visible(timeout=90_000)
    procs.wait_for(lambda: not_uniform(canvas.screenshot()), 90, "an image in OHIF's viewport", interval=1)
    # OHIF's own first-visit notices (its investigational-use banner, its tour), out of the picture.
    for button in ("Skip all", "Confirm and hide"):
        if page.get_by_text(button, exact=True).is_visible():
            page.get_by_text(button, exact=True).click()
    expect(page.get_by_text(f"(1/{SLICES})")).to_be_visible()  # the first of the series' slices
    shot(page, tmp_path, "2-ohif-viewer-ct.png")
    viewport = shot(page, tmp_path, "3-ohif-viewport.png", canvas, keep=False)
    assert not_uniform(viewport.read_bytes())

    assert watched.foreign == [], f"requests to other hosts: {watched.foreign}"
    blocked = [line for line in watched.console if "Content Security Policy" in line or "Refused to" in line]
    assert blocked == [], blocked
    assert watched.errors() == []


@pytest.mark.parametrize("who", ["front desk", "anonymous"])
def test_ohif_is_refused_to_the_front_desk_and_to_anonymous_users(browser, web_server, who, tmp_path):
    watched = Watched(browser, web_server)
    page = watched.page
    if who == "front desk":
        role_user("ohif-desk", FRONT_DESK)
        watched.sign_in("ohif-desk", "/")
        page.wait_for_url(f"{web_server}/patients/**")
    for path in ("/ohif/", "/ohif/viewer?StudyInstanceUIDs=1.2.3", "/ohif/app-config.js"):
        response = page.goto(web_server + path)
        if who == "anonymous":
            assert urlsplit(page.url).path == "/accounts/login/", page.url
        else:
            assert response.status == 403, (path, response.status)
        assert "window.config" not in page.content()
    assert watched.foreign == []
