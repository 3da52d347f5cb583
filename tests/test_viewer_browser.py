"""A doctor reads images in the built-in viewer (/viewer/), in Debian's chromium driven by Playwright.

A real ``runserver`` over the test database and store serves the page, its scripts
(collected static files, as WhiteNoise serves them in production) and /dicomweb/.
The images are generated with pydicom or are pydicom's own test files; what the
canvas shows is compared with pydicom's decoding of the same file.
"""

import io
import shutil
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pydicom
import pytest
from django.core.management import call_command
from PIL import Image, ImageStat
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_modality_lut

from records.roles import ADMINISTRATOR, DOCTOR, FRONT_DESK
from tests import dicomgen, procs
from tests.dicomweb_data import PASSWORD, fresh_uids, make_user, store

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

SHOTS = Path("/tmp/viewer-shots")
SLICES = 12


@pytest.fixture(scope="module")
def static_files():
    # The page's scripts are static files: collected as `make run` and the image do.
    call_command("collectstatic", interactive=False, verbosity=0)


@pytest.fixture
def web_server(transactional_db, logs_dir, static_files):
    from tests.conftest import runserver

    with runserver(logs_dir, "runserver-viewer") as url:
        yield url


@pytest.fixture
def ct(web_server, tmp_path):
    """A generated CT series (stored values + rescale intercept -1024) in the store and the index."""
    paths = dicomgen.ct_series(tmp_path / "ct", SLICES, 256, patient_id="VIEW-CT", patient_name="PHANTOM^VIEWER")
    datasets = [pydicom.dcmread(p) for p in paths]
    for ds in datasets:
        store(ds)
    return datasets


def shot(page, tmp_path: Path, name: str, locator=None) -> bytes:
    """A screenshot in the test's folder and in /tmp/viewer-shots/, to be looked at."""
    path = tmp_path / name
    (locator or page).screenshot(path=path)
    SHOTS.mkdir(exist_ok=True)
    shutil.copy(path, SHOTS / name)
    return path.read_bytes()


def not_uniform(png: bytes) -> bool:
    image = Image.open(io.BytesIO(png)).convert("L")
    low, high = image.getextrema()
    return high - low > 100 and ImageStat.Stat(image).stddev[0] > 20


def sign_in(page, server: str, username: str):
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")


def open_viewer(browser, server: str, query: str, username: str, **context):
    """Open /viewer/?query signed out, sign in on the login page it sends us to, land back on it."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 860}, **context)
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # Our login page has no favicon: the browser's own request for it is no error of the viewer.
    page.on("response", lambda r: r.status >= 400 and "favicon" not in r.url and errors.append(f"{r.status} {r.url}"))
    page.on("console", lambda m: m.type == "error" and "Failed to load" not in m.text and errors.append(m.text))
    page.goto(f"{server}/viewer/?{query}")
    assert urlsplit(page.url).path == "/accounts/login/", page.url
    sign_in(page, server, username)
    page.wait_for_url(f"{server}/viewer/?{query}")
    page.wait_for_selector("body[data-first-image=shown]")
    return page, errors


def until(page, expression: str, timeout: float = 30):
    """Poll a JavaScript expression from here: the page's CSP (no eval) rules out wait_for_function."""
    return procs.wait_for(lambda: page.evaluate(expression), timeout, expression)


def rendered(page, x: int, y: int) -> list[int]:
    """The RGBA the viewer rendered for image pixel (x, y) (before zoom and pan)."""
    return page.evaluate("([x, y]) => window.imagingViewer.renderedPixel(x, y)", [x, y])


def overlay(page, field: str) -> str:
    return page.locator(f"#stage [data-field={field}]").inner_text()


def windowed(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (linear) to 0..255, rounded as the viewer rounds."""
    y = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.floor(np.clip(y, 0, 255) + 0.5).astype(int)


def canvas_hash(page) -> str:
    return page.evaluate(
        """() => { const c = document.getElementById('image');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let h = 0; for (let i = 0; i < d.length; i += 97) h = (h * 31 + d[i]) | 0; return String(h); }"""
    )


def test_a_doctor_reads_a_ct_in_the_viewer(browser, web_server, ct, tmp_path):
    from playwright.sync_api import expect

    make_user("viewer-doctor", DOCTOR)
    study = ct[0].StudyInstanceUID
    page, errors = open_viewer(browser, web_server, f"study={study}", "viewer-doctor")
    canvas = page.locator("#image")
    assert not_uniform(shot(page, tmp_path, "1-viewer-ct.png", canvas))
    shot(page, tmp_path, "1-viewer-page.png")

    # The file's window (40/400) on the real values: stored - 1024.
    expect(page.locator("[data-field=window]")).to_have_text("W/L 400/40")
    hu = ct[0].pixel_array.astype(float) - 1024
    for x, y in [(128, 128), (40, 128), (128, 60), (60, 120), (200, 130)]:
        assert rendered(page, x, y)[:3] == [windowed(hu[y, x], 40, 400)] * 3, (x, y)
    assert overlay(page, "image") == f"Image 1/{SLICES}"
    assert "PHANTOM" in overlay(page, "patient")
    assert overlay(page, "patient-id") == "VIEW-CT"

    # A drag to the right widens the window, downwards raises the level: values and pixels change.
    before = canvas_hash(page)
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.down()
    page.mouse.move(box["x"] + 420, box["y"] + 360, steps=5)
    page.mouse.up()
    width, center = (int(v) for v in overlay(page, "window").removeprefix("W/L ").split("/"))
    assert width > 400 and center > 40, (width, center)
    assert canvas_hash(page) != before
    assert (
        rendered(page, 60, 120)[0] == windowed(hu[120, 60], center, width)
        or abs(rendered(page, 60, 120)[0] - windowed(hu[120, 60], center, width)) <= 1
    )  # the overlay shows rounded values

    # The wheel goes to the next slice: its number and its pixels.
    before = canvas_hash(page)
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.wheel(0, 120)
    expect(page.locator("[data-field=image]")).to_have_text(f"Image 2/{SLICES}")
    until(page, "window.imagingViewer.state.drawn?.index === 1")
    assert canvas_hash(page) != before
    expect(page.locator("[data-field=slice]")).to_have_text("Slice -1.25 mm")

    # The lung preset: -600/1500, and the pixels follow.
    before = canvas_hash(page)
    page.click("#preset-lung")
    expect(page.locator("[data-field=window]")).to_have_text("W/L 1500/-600")
    assert canvas_hash(page) != before
    hu2 = ct[1].pixel_array.astype(float) - 1024
    for x, y in [(128, 128), (60, 120), (200, 130)]:
        assert rendered(page, x, y)[:3] == [windowed(hu2[y, x], -600, 1500)] * 3, (x, y)
    shot(page, tmp_path, "2-viewer-lung.png")

    # The keys: 5 is the brain preset, the arrow goes back to slice 1.
    page.keyboard.press("5")
    expect(page.locator("[data-field=window]")).to_have_text("W/L 80/40")
    page.keyboard.press("ArrowUp")
    expect(page.locator("[data-field=image]")).to_have_text(f"Image 1/{SLICES}")
    page.keyboard.press("ArrowDown")
    expect(page.locator("[data-field=image]")).to_have_text(f"Image 2/{SLICES}")

    # A 200-pixel line across the image measures 200 x Pixel Spacing.
    page.click("#tool-measure")
    spacing = float(ct[1].PixelSpacing[1])
    a = page.evaluate("window.imagingViewer.imageToClient(28, 200)")
    b = page.evaluate("window.imagingViewer.imageToClient(228, 200)")
    page.mouse.move(*a)
    page.mouse.down()
    page.mouse.move(*b, steps=4)
    page.mouse.up()
    expect(page.locator("#measurements")).to_have_text(f"{200 * spacing:.1f} mm")
    shot(page, tmp_path, "3-viewer-measure.png")

    # Zoom in, pan, fit: the overlay follows.
    page.click("#tool-zoom")
    page.mouse.move(box["x"] + 300, box["y"] + 300)
    page.mouse.down()
    page.mouse.move(box["x"] + 300, box["y"] + 200, steps=4)
    page.mouse.up()
    zoomed = int(overlay(page, "zoom").removeprefix("Zoom ").removesuffix("%"))
    page.click("#fit")
    fitted = int(overlay(page, "zoom").removeprefix("Zoom ").removesuffix("%"))
    assert zoomed > fitted * 1.3, (zoomed, fitted)

    # The tag browser shows every attribute of the image on screen, its SOP Instance UID too.
    page.click("#show-tags")
    row = page.locator("#tag-rows tr[data-tag='00080018']")
    expect(row).to_contain_text(ct[1].SOPInstanceUID)
    expect(row).to_contain_text("SOPInstanceUID")
    expect(page.locator("#tag-rows tr[data-tag='00280030']")).to_contain_text("PixelSpacing")
    shot(page, tmp_path, "4-viewer-tags.png")

    # In the background, every slice arrives.
    until(page, f"document.body.dataset.loaded === '{SLICES}'")
    expect(page.locator("#progress")).to_have_text(f"{SLICES}/{SLICES} loaded")
    assert errors == []


def test_the_viewer_speaks_chinese(browser, web_server, ct, tmp_path):
    from playwright.sync_api import expect

    make_user("viewer-zh", DOCTOR)
    page, errors = open_viewer(
        browser,
        web_server,
        f"study={ct[0].StudyInstanceUID}",
        "viewer-zh",
        locale="zh-CN",
        extra_http_headers={"Accept-Language": "zh-Hans"},
    )
    expect(page.locator("#preset-lung")).to_have_text("肺窗")
    expect(page.locator("#tool-measure")).to_have_text("测量")
    expect(page.locator("[data-field=image]")).to_have_text(f"图像 1/{SLICES}")
    expect(page.locator("a.back")).to_have_text("检查")
    assert page.locator("html").get_attribute("lang") == "zh-hans"
    shot(page, tmp_path, "5-viewer-zh.png")
    assert errors == []


def test_the_viewer_opens_by_accession_number_and_on_a_named_series(browser, web_server, ct, tmp_path):
    from playwright.sync_api import expect

    other = fresh_uids(pydicom.dcmread(get_testdata_file("CT_small.dcm")), study=ct[0].StudyInstanceUID)
    other.SeriesNumber = 7
    for keyword in ("AccessionNumber", "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate"):
        setattr(other, keyword, ct[0].data_element(keyword).value)
    store(other)
    make_user("viewer-ris", DOCTOR)
    page, _errors = open_viewer(browser, web_server, f"accession={quote(ct[0].AccessionNumber)}", "viewer-ris")
    expect(page.locator("[data-field=patient-id]")).to_have_text("VIEW-CT")
    expect(page.locator("#strip button.series")).to_have_count(2)
    expect(page.locator("#strip button.series[aria-current=true]")).to_contain_text("CT 1")
    # A click on the other thumbnail switches series.
    page.locator("#strip button.series", has_text="CT 7").click()
    expect(page.locator("[data-field=image]")).to_have_text("Image 1/1")
    until(page, "window.imagingViewer.state.drawn?.frame.width === 128")
    shot(page, tmp_path, "6-viewer-series-strip.png")

    query = f"study={other.StudyInstanceUID}&series={other.SeriesInstanceUID}"
    page.goto(f"{web_server}/viewer/?{query}")
    page.wait_for_selector("body[data-first-image=shown]")
    expect(page.locator("[data-field=image]")).to_have_text("Image 1/1")
    expect(page.locator("#strip button.series[aria-current=true]")).to_contain_text("CT 7")

    # The study list opens the viewer on the study.
    page.goto(f"{web_server}/studies/")
    page.locator("tr", has_text="VIEW-CT").get_by_role("link", name="Open", exact=True).click()
    page.wait_for_url(f"{web_server}/viewer/?study={ct[0].StudyInstanceUID}")
    page.wait_for_selector("body[data-first-image=shown]")
    expect(page.locator("[data-field=image]")).to_have_text(f"Image 1/{SLICES}")


# Each case: a pydicom test file, the window set (None: colour), and pixels to compare.
CASES = {
    "monochrome1": ("RG3_UNCR.dcm", (550, 1024)),
    "signed": ("CT_small.dcm", (40, 400)),
    "rle-signed": ("MR_small_RLE.dcm", (600, 1600)),
    "jpeg-lossless": ("JPEG-LL.dcm", (40, 80)),
    "jpeg2000-monochrome1": ("RG1_J2KR.dcm", (2000, 3000)),
    "rgb": ("SC_rgb.dcm", None),
    "rgb-planar": ("color-pl.dcm", None),
    "ybr-full": ("SC_ybr_full_uncompressed.dcm", None),
    "ybr-full-422": ("SC_ybr_full_422_uncompressed.dcm", None),
    "jpeg-ybr": ("SC_rgb_dcmtk_+eb+cy+np.dcm", None),
    "rle-rgb": ("SC_rgb_rle.dcm", None),
    "palette": ("OBXXXX1A.dcm", None),
    "palette-rle": ("OBXXXX1A_rle.dcm", None),
    "palette-segmented-16": ("gdcm-US-ALOKA-16.dcm", None),  # its tables come by BulkDataURI
}


def expected_pixels(ds, window) -> np.ndarray:
    """What the viewer must show for frame 1: pydicom's decoding, then the window (or colours)."""
    arr = ds.pixel_array
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        arr = arr[0]
    photometric = ds.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)[..., :3]
        return np.rint(rgb * (255 / 65535)).astype(int) if rgb.max() > 255 else rgb.astype(int)
    if ds.SamplesPerPixel == 3:
        return arr.astype(int)  # pydicom hands YCbCr back as RGB
    values = apply_modality_lut(arr, ds).astype(float)
    out = windowed(values, *window)
    return 255 - out if photometric == "MONOCHROME1" else out


@pytest.mark.parametrize("case", list(CASES))
def test_the_viewer_shows_each_kind_of_pixel_data_as_pydicom_decodes_it(browser, web_server, case, tmp_path):
    name, window = CASES[case]
    ds = fresh_uids(pydicom.dcmread(get_testdata_file(name)))
    store(ds)
    make_user("viewer-kinds", DOCTOR)
    page, errors = open_viewer(browser, web_server, f"study={ds.StudyInstanceUID}", "viewer-kinds")
    until(page, "window.imagingViewer.state.drawn || document.getElementById('message').textContent")
    assert errors == []
    if window:
        page.evaluate("([c, w]) => window.imagingViewer.setWindow(c, w)", list(window))
    canvas = page.locator("#image")
    assert not_uniform(shot(page, tmp_path, f"7-viewer-{case}.png", canvas))
    expected = expected_pixels(ds, window)
    rows, columns = expected.shape[:2]
    points = [(columns // 2, rows // 2), (columns // 4, rows // 3), (3 * columns // 4, 2 * rows // 3), (5, 5)]
    points += [(columns - 3, rows // 5), (columns // 3, rows - 4)]
    for x, y in points:
        got = rendered(page, x, y)
        want = expected[y, x]
        want = [int(v) for v in want] if np.ndim(want) else [int(want)] * 3
        # Orientation and colours: every sample within 1 (YCbCr -> RGB rounding).
        assert max(abs(g - w) for g, w in zip(got[:3], want, strict=True)) <= 1, (case, (x, y), got, want)
    assert errors == []


@pytest.mark.parametrize("who", ["front desk", "anonymous", "administrator"])
def test_only_doctors_and_administrators_open_the_viewer(client, db, who):
    study = fresh_uids(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    store(study)
    url = f"/viewer/?study={study.StudyInstanceUID}"
    if who == "front desk":
        client.force_login(make_user("viewer-desk", FRONT_DESK))
        assert client.get(url).status_code == 403
        assert client.get("/viewer/tag-names.json").status_code == 403
    elif who == "anonymous":
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={quote(url, safe='/')}"
        assert client.get("/viewer/tag-names.json").status_code == 302
    else:
        client.force_login(make_user("viewer-admin", ADMINISTRATOR))
        response = client.get(url)
        assert response.status_code == 200
        assert "script-src 'self'" in response["Content-Security-Policy"]
        assert client.get("/viewer/tag-names.json").json()["00080018"] == "SOPInstanceUID"


def test_the_viewer_answers_404_for_a_study_it_does_not_have(client, db):
    client.force_login(make_user("viewer-404", DOCTOR))
    assert client.get("/viewer/?study=1.2.3.4").status_code == 404
    assert client.get("/viewer/?study=../../etc").status_code == 404
    assert client.get("/viewer/?accession=NOPE").status_code == 404
    assert client.get("/viewer/").status_code == 404


def test_cine_plays_the_frames_of_a_multi_frame_image(browser, web_server, tmp_path):
    from playwright.sync_api import expect

    ds = fresh_uids(pydicom.dcmread(get_testdata_file("emri_small.dcm")))  # 10 frames
    store(ds)
    make_user("viewer-cine", DOCTOR)
    page, errors = open_viewer(browser, web_server, f"study={ds.StudyInstanceUID}", "viewer-cine")
    expect(page.locator("[data-field=image]")).to_have_text("Image 1/10")
    expect(page.locator("[data-field=frame]")).to_have_text("1/10")
    until(page, "document.body.dataset.loaded === '10'")
    first_frame = canvas_hash(page)
    page.click("#cine")
    expect(page.locator("#cine")).to_have_attribute("aria-pressed", "true")
    until(page, "window.imagingViewer.state.drawn?.index >= 3")
    page.click("#cine")
    expect(page.locator("#cine")).to_have_attribute("aria-pressed", "false")
    stopped = overlay(page, "image")
    assert stopped != "Image 1/10"
    assert canvas_hash(page) != first_frame
    frame = int(stopped.removeprefix("Image ").split("/")[0]) - 1
    expected = windowed(apply_modality_lut(ds.pixel_array[frame], ds).astype(float), 100, 200)
    page.evaluate("([c, w]) => window.imagingViewer.setWindow(c, w)", [100, 200])
    assert rendered(page, 32, 30)[0] == expected[30, 32]
    shot(page, tmp_path, "8-viewer-cine.png")
    assert errors == []


def test_the_viewer_opens_the_first_series_when_the_named_one_is_not_in_the_study(db):
    from imaging import viewer

    first = fresh_uids(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    first.SeriesNumber = 1
    store(first)
    second = fresh_uids(pydicom.dcmread(get_testdata_file("CT_small.dcm")), study=first.StudyInstanceUID)
    second.SeriesNumber = 2
    store(second)
    elsewhere = fresh_uids(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    store(elsewhere)
    study = viewer.study_to_view(study_uid=first.StudyInstanceUID)
    assert viewer.series_to_open(study, second.SeriesInstanceUID) == second.SeriesInstanceUID
    assert viewer.series_to_open(study, elsewhere.SeriesInstanceUID) == first.SeriesInstanceUID
    assert viewer.series_to_open(study, "not a uid") == first.SeriesInstanceUID
    assert viewer.instance_list(second.SeriesInstanceUID) == [[second.SOPInstanceUID, second.InstanceNumber, 1]]


@pytest.mark.parametrize("syntax", ["implicit", "rle"])
def test_the_rest_of_a_series_streams_in_as_one_retrieve(browser, web_server, syntax, tmp_path):
    """Implicit VR files go as stored, compressed ones transcoded by the server; the viewer finds their pixels."""
    from playwright.sync_api import expect
    from pydicom.dataset import Dataset
    from pydicom.uid import ImplicitVRLittleEndian, RLELossless

    slices = 16
    paths = dicomgen.ct_series(tmp_path / "series", slices, 128, patient_id=f"STREAM-{syntax}")
    datasets = []
    for path in paths:
        ds = pydicom.dcmread(path)
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        ds.ReferencedImageSequence = [item]  # a sequence before the pixels, for the parser to step over
        if syntax == "rle":
            ds.compress(RLELossless)
        else:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        store(ds)
        datasets.append(ds)
    make_user("viewer-stream", DOCTOR)
    page, errors = open_viewer(browser, web_server, f"study={datasets[0].StudyInstanceUID}", "viewer-stream")
    until(page, f"document.body.dataset.loaded === '{slices}'")
    assert page.evaluate("window.imagingViewer.state.current.streamed") >= slices - 10  # most came in the stream
    page.locator("#image").click()
    page.keyboard.press("End")
    expect(page.locator("[data-field=image]")).to_have_text(f"Image {slices}/{slices}")
    until(page, f"window.imagingViewer.state.drawn?.index === {slices - 1}")
    hu = pydicom.dcmread(paths[-1]).pixel_array.astype(float) - 1024
    for x, y in [(64, 64), (30, 64), (96, 70), (20, 20)]:
        assert rendered(page, x, y)[:3] == [windowed(hu[y, x], 40, 400)] * 3, (x, y)
    # The tag browser shows the sequence's item and what is inside it.
    page.click("#show-tags")
    expect(page.locator("#tag-rows tr[data-tag='00081140']")).to_contain_text("ReferencedImageSequence")
    expect(page.locator("#tag-rows tr", has_text="Item 1")).to_have_count(1)
    expect(page.locator("#tag-rows tr[data-tag='00081155']")).to_contain_text(
        datasets[-1].ReferencedImageSequence[0].ReferencedSOPInstanceUID
    )
    shot(page, tmp_path, f"9-viewer-streamed-{syntax}.png")
    assert errors == []
