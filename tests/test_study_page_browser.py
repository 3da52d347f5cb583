"""A doctor opens a study from the study list in a real browser (Debian's chromium, driven by Playwright)."""

import pytest
from django.conf import settings as django_settings
from django.test import Client

from imaging import thumbnails
from records.models import Series
from tests import dicomgen
from tests.dicomweb_data import make_user, store_generated

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_doctor_clicks_a_study_and_sees_its_header_and_thumbnails(live_server, browser, tmp_path):
    from playwright.sync_api import expect

    common = {"PatientName": "Zhang^Wei=张^伟", "PatientSex": "M", "PatientBirthDate": "19800215"}
    first = store_generated(
        dicomgen.ct_series(tmp_path / "a", 5, 128, patient_id="BR0001"),
        SeriesNumber=1,
        SeriesDescription="Chest 1.25mm",
        StudyDescription="CT chest",
        **common,
    )
    store_generated(
        dicomgen.ct_series(tmp_path / "b", 3, 128, patient_id="BR0001", study_uid=first[0].StudyInstanceUID, seed=5),
        SeriesNumber=2,
        SeriesDescription="Lung 5mm",
        StudyDescription="CT chest",
        **common,
    )
    for series in Series.objects.all():
        thumbnails.update_series_thumbnail(series.pk)
    # Signed in through a session cookie: the sign-in page is another test's business.
    client = Client()
    client.force_login(make_user("dr-wang", "Doctor"))
    page = browser.new_page(viewport={"width": 1300, "height": 850})
    page.set_default_timeout(15_000)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])

    page.goto(f"{live_server.url}/studies/")
    page.click("a.study-link")
    page.wait_for_url(f"**/studies/{first[0].StudyInstanceUID}/")
    expect(page.locator("h1")).to_have_text("ZHANG Wei (张伟)")  # records/names.py, in English
    head = page.locator(".study-head")
    for text in ("BR0001", "1980-02-15", "CT chest", "Zhang^Wei", "张^伟"):
        expect(head).to_contain_text(text)
    cards = page.locator(".series-card")
    expect(cards).to_have_count(2)
    expect(cards.nth(0)).to_contain_text("Chest 1.25mm")
    expect(cards.nth(0)).to_contain_text("5 images")
    expect(cards.nth(1)).to_contain_text("3 images")
    images = page.locator(".series-card img")
    expect(images).to_have_count(2)
    page.wait_for_function("[...document.querySelectorAll('.series-card img')].every(i => i.complete)")
    widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
    assert all(width > 0 for width in widths), widths
    assert "/viewer/?study=" in cards.nth(1).get_attribute("href")
    page.screenshot(path=tmp_path / "study-page.png", full_page=True)
    page.screenshot(path=django_settings.VAR_DIR / "study-page.png", full_page=True)

    # The same page in Chinese, as a browser set to Chinese asks for it.
    chinese = browser.new_context(locale="zh-CN", viewport={"width": 1300, "height": 850})
    chinese.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    page = chinese.new_page()
    page.goto(f"{live_server.url}/studies/{first[0].StudyInstanceUID}/")
    expect(page.locator("h1")).to_have_text("张伟 (ZHANG Wei)")  # Chinese: the characters first
    expect(page.locator(".actions")).to_contain_text("下载 ZIP")
    expect(page.locator(".study-head")).to_contain_text("检查时年龄")
    expect(page.locator(".series-card").nth(0)).to_contain_text("5 幅图像")
    page.screenshot(path=tmp_path / "study-page-zh.png", full_page=True)
    page.screenshot(path=django_settings.VAR_DIR / "study-page-zh.png", full_page=True)
