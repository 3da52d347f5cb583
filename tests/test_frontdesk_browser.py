"""The front desk corrects a Chinese name and a birth date in a real browser (Debian's chromium via
Playwright): the preview, the save, the audit record on the patient's page, undo; the same in Chinese."""

import pytest
from django.conf import settings as django_settings
from django.test import Client

from records.models import Correction, Patient
from tests import dicomgen
from tests.dicomweb_data import client_for, make_user, store_generated

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def zhang(tmp_path, rewrites_run_here):
    store_generated(
        dicomgen.ct_series(tmp_path, 3, 32, patient_id="FD0001"),
        PatientName="ZHANG^WEI",
        PatientBirthDate="19800101",
        PatientSex="M",
    )
    return Patient.objects.get(patient_id="FD0001")


def test_doctors_do_not_get_the_front_desk_pages(zhang):
    doctor = client_for("Doctor")
    assert doctor.get(f"/patients/{zhang.pk}/").status_code == 403
    assert doctor.post(f"/patients/{zhang.pk}/correct/", {"action": "save"}).status_code == 403
    assert not Correction.objects.exists()


def test_a_save_without_a_reason_shows_the_error_and_changes_nothing(zhang):
    clerk = client_for("Front desk")
    form = {"patient_id": "FD0001", "alphabetic_family": "Zhang", "alphabetic_given": "Wei", "sex": "M"}
    response = clerk.post(f"/patients/{zhang.pk}/correct/", {**form, "birth_date": "1980-01-01", "action": "save"})
    assert response.status_code == 200
    assert "a reason is required" in response.content.decode()
    assert Patient.objects.get(pk=zhang.pk).name == "ZHANG^WEI"


@pytest.mark.browser
def test_the_front_desk_corrects_previews_saves_and_undoes_in_a_browser(zhang, live_server, browser, tmp_path):
    from playwright.sync_api import expect

    client = Client()
    client.force_login(make_user("clerk-li", "Front desk"))
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.set_default_timeout(15_000)
    page.context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])

    page.goto(f"{live_server.url}/patients/?patient_id=FD0001")
    page.click("a.patient-link")
    page.wait_for_url(f"**/patients/{zhang.pk}/")
    page.click("a.correct-link")
    page.fill("#id_alphabetic_family", "Zhang")
    page.fill("#id_alphabetic_given", "Wei")
    page.fill("#id_ideographic_family", "张")
    page.fill("#id_ideographic_given", "伟")
    page.fill("#id_birth_date", "1979-03-08")
    page.fill("#id_reason", "typed wrongly at the CT")
    page.click("button.preview-button")
    preview = page.locator(".preview")
    expect(preview).to_contain_text("ZHANG^WEI")
    expect(preview).to_contain_text("Zhang^Wei=张^伟")
    expect(preview).to_contain_text("1980-01-01")
    expect(preview).to_contain_text("1979-03-08")
    expect(preview.locator(".affected")).to_have_text("1 studies and 3 images are affected.")
    assert not Correction.objects.exists()  # a preview saves nothing
    page.screenshot(path=tmp_path / "correct-preview.png", full_page=True)
    page.screenshot(path=django_settings.VAR_DIR / "frontdesk-correct-preview.png", full_page=True)

    page.click("button.save")
    page.wait_for_url(f"**/patients/{zhang.pk}/")
    expect(page.locator("h1")).to_have_text("ZHANG Wei (张伟)")
    record = page.locator("tr.record").first
    expect(record).to_contain_text("clerk-li")
    expect(record).to_contain_text("typed wrongly at the CT")
    expect(record).to_contain_text("Zhang^Wei=张^伟")
    expect(record).to_contain_text("1 / 3")
    page.screenshot(path=django_settings.VAR_DIR / "frontdesk-patient.png", full_page=True)

    record.locator("input[name=reason]").fill("wrong patient")
    record.locator("button.undo").click()
    expect(page.locator("h1")).to_have_text("ZHANG WEI")
    expect(page.locator("tr.record")).to_have_count(2)
    corrected = Patient.objects.get(pk=zhang.pk)
    assert (corrected.name, corrected.birth_date.isoformat()) == ("ZHANG^WEI", "1980-01-01")

    # The same in Chinese, as a browser set to Chinese asks for it.
    chinese = browser.new_context(locale="zh-CN", viewport={"width": 1300, "height": 900})
    chinese.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    page = chinese.new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/patients/{zhang.pk}/correct/")
    page.fill("#id_ideographic_family", "张")
    page.fill("#id_ideographic_given", "伟")
    page.fill("#id_reason", "录入错误")
    page.click("button.preview-button")
    expect(page.locator(".preview")).to_contain_text("将要更改的内容")
    expect(page.locator(".preview .affected")).to_have_text("涉及 1 个检查、3 幅图像。")
    page.click("button.save")
    page.wait_for_url(f"**/patients/{zhang.pk}/")
    expect(page.locator("h1")).to_have_text("张伟 (ZHANG WEI)")
    expect(page.locator("tr.record").first).to_contain_text("患者更正")
    expect(page.locator("tr.record").first).to_contain_text("录入错误")
    page.screenshot(path=tmp_path / "patient-zh.png", full_page=True)
    page.screenshot(path=django_settings.VAR_DIR / "frontdesk-patient-zh.png", full_page=True)


def test_the_front_desk_corrects_a_study_after_the_preview(zhang):
    clerk = client_for("Administrator", username="admin-wu")
    study = zhang.studies.get()
    url = f"/patients/studies/{study.pk}/correct/"
    form = {"accession_number": "A2026-77", "description": study.description, "referring_physician": "Li^Na=李^娜"}
    preview = clerk.post(url, {**form, "reason": "wrong order", "action": "preview"})
    html = preview.content.decode()
    assert "A2026-77" in html and "1 studies and 3 images are affected." in html
    assert not Correction.objects.exists()
    bad = clerk.post(url, {**form, "referring_physician": "A=B=C=D", "reason": "r", "action": "save"})
    assert "has more than three groups" in bad.content.decode()
    saved = clerk.post(url, {**form, "reason": "wrong order", "action": "save"})
    assert saved.status_code == 302
    study.refresh_from_db()
    assert (study.accession_number, study.referring_physician) == ("A2026-77", "Li^Na=李^娜")
    assert Correction.objects.get().kind == "study"
