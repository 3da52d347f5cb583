"""A Chinese browser sees our pages and the admin in Simplified Chinese, and the switcher turns them to English.

Debian's chromium, driven by Playwright, asks for ``Accept-Language: zh-Hans``. On
each page a few of our labels are checked in Chinese, and no English msgid of ours
(locale/zh_Hans/LC_MESSAGES/django.po) may be left in the visible text. Screenshots
go to var/screenshots/i18n/.
"""

import datetime as dt
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model

from network.models import ModalityNode
from records.models import Patient, Study
from tests.test_translations import PO, parse_po

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "browser-i18n-pass-123"  # noqa: S105 - a throwaway test account
SHOTS = Path(settings.VAR_DIR) / "screenshots" / "i18n"


def our_english() -> list[re.Pattern]:
    """Our msgids as whole words (placeholders left out: their fixed parts are too short to tell)."""
    msgids = {entry.msgid for entry in parse_po(PO.read_text(encoding="utf-8")) if "%" not in entry.msgid}
    return [re.compile(rf"(?<![A-Za-z]){re.escape(m)}(?![A-Za-z])") for m in msgids if re.search("[A-Za-z]{2}", m)]


def assert_chinese(page, shot: str, *expected: str, patterns=None):
    """The page (screenshot first, to look at even when the checks fail) shows ``expected``, none of ``patterns``."""
    from playwright.sync_api import expect

    page.screenshot(path=SHOTS / f"{shot}.png", full_page=True)
    body = page.locator("body")
    for text in expected:
        expect(body).to_contain_text(text)
    visible = body.inner_text()
    english = sorted({p.pattern for p in patterns or [] if p.search(visible)})
    assert not english, f"{page.url} still shows our English: {english}\n{visible}"


@pytest.fixture
def zh_page(live_server, browser):
    context = browser.new_context(
        locale="zh-CN", extra_http_headers={"Accept-Language": "zh-Hans"}, viewport={"width": 1400, "height": 900}
    )
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def test_a_chinese_browser_sees_chinese_pages_and_switches_to_english(zh_page, live_server):
    from playwright.sync_api import expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    english = our_english()
    get_user_model().objects.create_superuser("wang", "wang@example.org", PASSWORD)
    patient = Patient.objects.create(patient_id="CN1", name_alphabetic="Zhang^Wei", name_ideographic="张^伟")
    Study.objects.create(
        patient=patient, study_instance_uid="1.2.3.4", study_date=dt.date(2026, 12, 1), description="胸部平扫"
    )
    node = ModalityNode.objects.create(
        ae_title="CT_ROOM_1",
        host="127.0.0.1",
        port=104,
        description="CT 一室",
        location="放射科",
        fallback_charset="GB18030",
    )
    page = zh_page

    page.goto(f"{live_server.url}/")
    assert_chinese(page, "1-login", "登录", "用户名", "密码", patterns=english)

    page.fill("input[name=username]", "wang")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/studies/$"))
    assert_chinese(
        page,
        "2-studies",
        "患者姓名",
        "检查号",
        "1 项检查",
        "张伟 (ZHANG Wei)",
        "2026-12-01",
        "退出登录",
        patterns=english,
    )

    page.goto(f"{live_server.url}/admin/")
    assert_chinese(
        page,
        "3-admin-index",
        "影像系统管理",
        "患者档案",
        "DICOM 网络",
        "设备节点",
        "索引失败",
        "发送任务",
        "修改",  # Django's own, which a plain "Change" of ours once turned into 切换
        patterns=english,
    )

    page.goto(f"{live_server.url}/admin/network/modalitynode/")
    expect(page.locator("select[name=action]")).to_contain_text("测试连接（C-ECHO）")
    assert_chinese(
        page, "4-node-list", "本服务器", "AE 标题", "允许向本机存储", "GB18030（中文）", "CT 一室", patterns=english
    )

    page.click("text=CT_ROOM_1")
    expect(page).to_have_url(re.compile(rf"/admin/network/modalitynode/{node.pk}/change/$"))
    assert_chinese(
        page, "5-node-change", "允许的操作", "字符集", "设备的 IP 地址或主机名。", "允许从本机获取", patterns=english
    )

    # The admin's switcher (templates/admin/base_site.html) reloads the same page in English.
    page.select_option("#user-tools form.language-switcher select", "en")
    expect(page.locator("body")).to_contain_text("What it may do")
    expect(page.locator("body")).to_contain_text("IP address or host name of the device.")
    assert re.search(rf"/admin/network/modalitynode/{node.pk}/change/$", page.url)
    assert page.locator("html").get_attribute("lang") == "en"
    page.screenshot(path=SHOTS / "6-node-change-english.png", full_page=True)

    page.goto(f"{live_server.url}/studies/")
    for text in ("Patient name", "1 study", "ZHANG Wei (张伟)", "Sign out"):
        expect(page.locator("body")).to_contain_text(text)
    page.screenshot(path=SHOTS / "7-studies-english.png", full_page=True)

    # And the pages' switcher (templates/base.html) back to Chinese.
    page.select_option("header form.language-switcher select", "zh-hans")
    expect(page.locator("body")).to_contain_text("患者姓名")
    assert_chinese(page, "8-studies-chinese-again", "张伟 (ZHANG Wei)", patterns=english)
