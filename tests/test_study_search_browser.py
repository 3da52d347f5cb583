"""A doctor signs in and finds 张伟's study by initials, full pinyin and characters, in Debian's chromium."""

import pytest

from records.roles import DOCTOR
from tests.dicomweb_data import PASSWORD, index_study, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_doctor_finds_zhang_weis_study_by_zw_zhangwei_and_zhang(live_server, browser, tmp_path):
    from playwright.sync_api import expect

    make_user("dr-li", DOCTOR)
    index_study(tmp_path, "张伟", "CT-ZW-1", modality="CT")  # sent only in characters
    index_study(tmp_path, "Wang^Fang=王^芳", "MR-WF-1")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(15_000)

    page.goto(f"{live_server.url}/studies/")
    page.fill("#id_username", "dr-li")
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{live_server.url}/studies/")

    rows = page.locator("table tbody tr")
    for n, text in enumerate(["zw", "zhangwei", "张"]):
        page.fill("#id_name", text)
        page.press("#id_name", "Enter")
        expect(page.locator("#id_name")).to_have_value(text)
        expect(rows).to_have_count(1)
        expect(rows.first).to_contain_text("张伟")
        expect(rows.first).to_contain_text("CT-ZW-1")
        expect(page.locator("main")).to_contain_text("1 study")
        page.screenshot(path=tmp_path / f"{n + 1}-search-{'zhang' if text == '张' else text}.png", full_page=True)
    assert "name=%E5%BC%A0" in page.url  # the search is in the URL, as people bookmark it
