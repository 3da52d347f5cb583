"""The front desk corrects a Chinese name and a birth date in a real browser (Debian's chromium via
Playwright): the preview, the save, the audit record on the patient's page, undo; the same in Chinese."""

import pytest
from django.conf import settings as django_settings
from django.test import Client

from records import pinyin
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


# --- Finding the patient, pinyin in one click, merging after a preview ---------------------------


def _store_patient(tmp_path, patient_id: str, name: str, slices: int) -> Patient:
    store_generated(
        dicomgen.ct_series(tmp_path / patient_id, slices, 32, patient_id=patient_id),
        SpecificCharacterSet="ISO_IR 192",
        PatientName=name,
        PatientBirthDate="19800101",
        PatientSex="M",
    )
    return Patient.objects.get(patient_id=patient_id)


@pytest.mark.parametrize(
    ("family", "given", "alphabetic"),
    [
        ("张", "伟", ("Zhang", "Wei")),
        ("单", "田芳", ("Shan", "Tianfang")),  # the surname's reading, not dan
        ("曾", "国藩", ("Zeng", "Guofan")),  # not ceng
        ("欧阳", "娜娜", ("Ouyang", "Nana")),  # a compound surname is one component
        ("王", "乐乐", ("Wang", "Lele")),  # the given name read as a phrase
        ("李", "西安", ("Li", "Xi'an")),  # an apostrophe where the syllables would run together
        ("吕", "布", ("Lv", "Bu")),  # ü as DICOM's letters can carry it
    ],
)
def test_pinyin_is_written_as_dicom_names_usually_are(family, given, alphabetic):
    assert pinyin.romanise(family, given) == alphabetic


def test_the_pinyin_button_fills_the_pinyin_from_the_characters_and_saves_nothing(zhang):
    clerk = client_for("Front desk")
    url = f"/patients/{zhang.pk}/correct/"
    form = {"patient_id": "FD0001", "alphabetic_family": "ZHANG", "alphabetic_given": "WEI", "sex": "M"}
    filled = clerk.post(url, {**form, "ideographic_family": "单", "ideographic_given": "田芳", "action": "fill_pinyin"})
    data = filled.context["form"].data
    assert (data["alphabetic_family"], data["alphabetic_given"]) == ("Shan", "Tianfang")
    assert data["sex"] == "M"  # what was typed is kept
    # The whole name typed as the family name is split at the (compound) surname.
    whole = clerk.post(url, {**form, "ideographic_family": "欧阳娜娜", "action": "fill_pinyin"}).context["form"].data
    assert [whole[f] for f in ("alphabetic_family", "alphabetic_given", "ideographic_family", "ideographic_given")] == [
        "Ouyang",
        "Nana",
        "欧阳",
        "娜娜",
    ]
    empty = clerk.post(url, {**form, "action": "fill_pinyin"})
    assert "Type the name in characters first." in empty.content.decode()
    assert empty.context["form"].data["alphabetic_family"] == "ZHANG"
    assert not Correction.objects.exists()
    assert Patient.objects.get(pk=zhang.pk).name == "ZHANG^WEI"


def test_a_merge_shows_its_preview_and_merges_only_the_patient_it_showed(zhang, tmp_path):
    duplicate = _store_patient(tmp_path, "TMP0042", "ZHANG^WEI", 2)
    other = _store_patient(tmp_path, "TMP0099", "LI^NA", 1)
    clerk = client_for("Front desk")
    url = f"/patients/{zhang.pk}/merge/"
    no_reason = clerk.post(url, {"duplicate_patient_id": "TMP0042", "action": "preview"})
    assert "a reason is required" in no_reason.content.decode()
    assert (
        "No patient has this patient ID."
        in clerk.post(url, {"duplicate_patient_id": "NOPE", "reason": "r"}).content.decode()
    )
    itself = clerk.post(url, {"duplicate_patient_id": "FD0001", "reason": "r", "action": "preview"}).content.decode()
    assert "a patient cannot be merged into itself" in itself

    preview = clerk.post(url, {"duplicate_patient_id": "TMP0042", "reason": "ER", "action": "preview"})
    html = preview.content.decode()
    assert "1 study with 2 images moves to the patient who stays." in html
    assert preview.context["preview"]["other_ids"] == [("TMP0042", "")]
    assert f'name="duplicate" value="{duplicate.pk}"' in html
    assert Patient.objects.filter(pk=duplicate.pk).exists() and not Correction.objects.exists()

    # A confirmation whose ID is not the previewed patient's merges nothing.
    wrong = {"duplicate_patient_id": "TMP0099", "duplicate": duplicate.pk, "reason": "ER", "action": "save"}
    assert "No patient has this patient ID." in clerk.post(url, wrong).content.decode()
    assert Patient.objects.filter(pk=other.pk).exists() and not Correction.objects.exists()
    # Back on the form, another ID typed is previewed afresh (the previewed patient is for confirming only).
    again = clerk.post(url, {**wrong, "action": "preview"})
    assert again.context["preview"]["duplicate"]["patient_id"] == "TMP0099"

    confirmed = clerk.post(url, {**wrong, "duplicate_patient_id": "TMP0042"})
    assert confirmed.status_code == 302
    assert not Patient.objects.filter(pk=duplicate.pk).exists()
    assert Correction.objects.get().kind == "merge"
    assert [p.patient_id for p in clerk.get("/patients/", {"name": "zhangwei"}).context["page"]] == ["FD0001"]


def _signed_in(browser, live_server, username: str, **context):
    client = Client()
    client.force_login(make_user(username, "Front desk"))
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    context = browser.new_context(viewport={"width": 1300, "height": 900}, **context)
    context.add_cookies([{"name": django_settings.SESSION_COOKIE_NAME, "value": cookie, "url": live_server.url}])
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


@pytest.mark.browser
def test_the_front_desk_finds_by_pinyin_fills_pinyin_and_merges_in_a_browser(
    live_server, browser, tmp_path, rewrites_run_here
):
    from playwright.sync_api import expect

    zhang = _store_patient(tmp_path, "FD0001", "=张^伟", 3)  # sent in characters only
    _store_patient(tmp_path, "TMP0042", "ZHANG^WEI", 2)  # the day after, under a temporary ID
    shan = _store_patient(tmp_path, "FD0002", "=单^田芳", 2)
    _store_patient(tmp_path, "TMP0043", "SHAN^TIANFANG", 1)
    shots = django_settings.VAR_DIR

    for lang, patient, typed, characters, pinyin_fields, duplicate_id, texts in (
        (
            "en",
            zhang,
            ["zhangwei", "zw"],
            "张伟",
            ("Zhang", "Wei"),
            "TMP0042",
            {
                "affected": "1 study with 2 images moves to the patient who stays.",
                "reason": "temporary ID at the ER",
                "merged": "Merged; the files are being rewritten.",
                "no reason": "a reason is required",
            },
        ),
        (
            "zh",
            shan,
            ["stf", "shantianfang"],
            "单田芳",
            ("Shan", "Tianfang"),
            "TMP0043",
            {
                "affected": "1 个检查（1 幅图像）将移到保留的患者名下。",
                "reason": "急诊临时号",
                "merged": "已合并；正在重写文件。",
                "no reason": "必须填写原因",
            },
        ),
    ):
        page = _signed_in(browser, live_server, f"clerk-{lang}", **({"locale": "zh-CN"} if lang == "zh" else {}))
        # Find the patient as the study list does: by pinyin, initials, characters.
        for text in typed:
            page.goto(f"{live_server.url}/patients/")
            page.fill("#id_name", text)
            page.press("#id_name", "Enter")
            expect(page.locator("a.patient-link")).to_have_count(2)  # the temporary one too
        page.fill("#id_name", characters)
        page.press("#id_name", "Enter")
        expect(page.locator("a.patient-link")).to_have_count(1)
        page.screenshot(path=shots / f"frontdesk-search-{lang}.png", full_page=True)
        page.click("a.patient-link")
        page.wait_for_url(f"**/patients/{patient.pk}/")

        # Pinyin in one click, then the correction's preview (Enter previews) and save.
        page.click("a.correct-link")
        page.click("button.fill-pinyin")
        expect(page.locator("#id_alphabetic_family")).to_have_value(pinyin_fields[0])
        expect(page.locator("#id_alphabetic_given")).to_have_value(pinyin_fields[1])
        page.screenshot(path=shots / f"frontdesk-pinyin-{lang}.png", full_page=True)
        page.fill("#id_reason", texts["reason"])
        page.press("#id_reason", "Enter")
        expect(page.locator(".preview")).to_contain_text("^".join(pinyin_fields))
        assert not Correction.objects.filter(patient=patient).exists()
        page.click("button.save")
        page.wait_for_url(f"**/patients/{patient.pk}/")

        # The merge: its preview first, nothing merged yet, then the confirmation.
        page.fill("#id_duplicate_patient_id", duplicate_id)
        page.click("button.merge-preview")  # no reason yet: said beside the field, on the merge's own page
        expect(page.locator(".field-error")).to_have_text(texts["no reason"])
        page.screenshot(path=shots / f"frontdesk-merge-no-reason-{lang}.png", full_page=True)
        page.fill("#id_reason", texts["reason"])
        page.click("button.merge-preview")
        preview = page.locator(".preview")
        expect(preview.locator(".affected")).to_have_text(texts["affected"])
        expect(preview.locator(".new-other-ids")).to_have_text(duplicate_id)
        expect(preview.locator("table.compare")).to_contain_text(duplicate_id)
        expect(preview.locator("table.moving tbody tr")).to_have_count(1)
        assert Patient.objects.filter(patient_id=duplicate_id).exists()
        page.screenshot(path=tmp_path / f"merge-preview-{lang}.png", full_page=True)
        page.screenshot(path=shots / f"frontdesk-merge-preview-{lang}.png", full_page=True)
        page.click("button.confirm-merge")
        page.wait_for_url(f"**/patients/{patient.pk}/")
        expect(page.locator(".messages")).to_contain_text(texts["merged"])
        expect(page.locator(".other-ids")).to_contain_text(duplicate_id)
        page.screenshot(path=shots / f"frontdesk-merged-{lang}.png", full_page=True)
        assert not Patient.objects.filter(patient_id=duplicate_id).exists()

        # The duplicate is gone from the search: one patient left for the same words.
        page.goto(f"{live_server.url}/patients/?name={typed[0]}")
        expect(page.locator("a.patient-link")).to_have_count(1)
        expect(page.locator("a.patient-link")).to_have_text(
            f"{pinyin_fields[0].upper()} {pinyin_fields[1]} ({characters})"
            if lang == "en"
            else f"{characters} ({pinyin_fields[0].upper()} {pinyin_fields[1]})"
        )
        page.context.close()
