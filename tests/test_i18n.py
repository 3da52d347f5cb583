"""Simplified Chinese and English: names, dates, the admin's own pages, messages and validation errors."""

import datetime as dt
from html.parser import HTMLParser

import pytest
from django.template import Context, Template
from django.urls import reverse
from django.utils import timezone, translation

from network.models import AssociationLog, ModalityNode, SendJob
from records.models import IndexingFailure, Instance, InstanceConflict, Patient, Series, Study
from records.names import alphabetic_name, ideographic_name, person_name
from tests import procs

ZH = {"accept-language": "zh-hans"}


@pytest.mark.parametrize(
    ("groups", "chinese", "english"),
    [
        (("Zhang^Wei", "张^伟", ""), "张伟 (ZHANG Wei)", "ZHANG Wei (张伟)"),
        (("", "欧阳^娜娜", ""), "欧阳娜娜", "欧阳娜娜"),
        (("ZHANG^WEI", "", ""), "ZHANG WEI", "ZHANG WEI"),
        (("Smith^John^Paul^Dr^Jr", "", ""), "Dr SMITH John Paul, Jr", "Dr SMITH John Paul, Jr"),
        (("Yamada^Tarou", "山田^太郎", "やまだ^たろう"), "山田太郎 (YAMADA Tarou)", "YAMADA Tarou (山田太郎)"),
        (("", "", "やまだ^たろう"), "やまだたろう", "やまだたろう"),
        (("", "", ""), "", ""),
    ],
)
def test_a_name_is_shown_family_name_first_in_the_languages_way(groups, chinese, english):
    assert person_name(*groups, language="zh-hans") == chinese
    assert person_name(*groups, language="en") == english


def test_the_name_follows_the_active_language_in_pages_and_templates():
    patient = Patient(name_alphabetic="Zhang^Wei", name_ideographic="张^伟")
    template = Template("{% load names %}{{ patient|person_name }}|{{ nobody|person_name }}")
    with translation.override("zh-hans"):
        assert template.render(Context({"patient": patient})) == "张伟 (ZHANG Wei)|"
    with translation.override("en"):
        assert template.render(Context({"patient": patient})) == "ZHANG Wei (张伟)|"
        assert str(Patient(patient_id="P1")) == "(no name) [P1]"


def test_name_groups_lose_their_carets_and_stray_spaces():
    assert ideographic_name(" 诸葛 ^ 亮 ") == "诸葛亮"
    assert alphabetic_name("Zhuge^Liang^^") == "ZHUGE Liang"


@pytest.fixture
def zhang_study(db):
    patient = Patient.objects.create(patient_id="CN1", name_alphabetic="Zhang^Wei", name_ideographic="张^伟")
    return Study.objects.create(
        patient=patient, study_instance_uid="1.2.3.4", study_date=dt.date(2026, 12, 1), description="胸部 CT"
    )


def test_the_admin_writes_dates_as_chinese_pacs_do_in_chinese(admin_client, zhang_study):
    chinese = admin_client.get(reverse("admin:records_study_changelist"), headers=ZH).content.decode()
    assert "2026-12-01" in chinese and "2026年12月1日" not in chinese
    assert "张伟 (ZHANG Wei) [CN1]" in chinese and "检查日期" in chinese
    english = admin_client.get(reverse("admin:records_study_changelist")).content.decode()
    assert "Dec. 1, 2026" in english and "ZHANG Wei (张伟) [CN1]" in english


def test_a_browser_asking_for_zh_cn_gets_simplified_chinese(client):
    body = client.get(reverse("login"), headers={"accept-language": "zh-CN,zh;q=0.9,en;q=0.5"}).content.decode()
    assert 'lang="zh-hans"' in body and "用户名" in body


def test_node_validation_errors_are_in_chinese(admin_client, db):
    response = admin_client.post(
        reverse("admin:network_modalitynode_add"),
        {"ae_title": "BAD\\AE", "host": "10.0.0.5", "port": "70000", "fallback_charset": ""},
        headers=ZH,
    )
    body = response.content.decode()
    assert response.status_code == 200 and not ModalityNode.objects.exists()
    assert "AE 标题不能包含反斜杠。" in body and "TCP 端口应在 1 到 65535 之间。" in body


def test_the_test_connection_action_reports_in_chinese(admin_client, db):
    node = ModalityNode.objects.create(ae_title="NOBODY", host="127.0.0.1", port=procs.free_port())
    response = admin_client.post(
        reverse("admin:network_modalitynode_changelist"),
        {"action": "test_connection", "_selected_action": [node.pk]},
        headers=ZH,
        follow=True,
    )
    [message] = [str(m) for m in response.context["messages"]]
    assert message.startswith("NOBODY (127.0.0.1:") and "C-ECHO 失败" in message


def test_sending_studies_speaks_chinese(admin_client, zhang_study):
    response = admin_client.post(
        reverse("admin:records_study_changelist"),
        {"action": "send_to_node", "_selected_action": [zhang_study.pk]},
        headers=ZH,
    )
    body = response.content.decode()
    assert "要发送的检查：" in body and "2026-12-01" in body and "张伟 (ZHANG Wei)" in body
    assert "没有已启用的节点允许从本机获取图像" in body
    ModalityNode.objects.create(ae_title="WS_1", host="127.0.0.1", port=104)
    response = admin_client.post(
        reverse("admin:records_study_changelist"),
        {"action": "send_to_node", "_selected_action": [zhang_study.pk], "apply": "1", "node": ""},
        headers=ZH,
    )
    assert "请选择要发送到的节点。" in response.content.decode()


def test_this_server_speaks_chinese(admin_client, settings):
    settings.DICOM_CHECK_CALLED_AE, settings.DICOM_CHECK_HOST = True, False
    body = admin_client.get(reverse("admin:network_modalitynode_this_server"), headers=ZH).content.decode()
    assert "当前生效的访问控制" in body and "主叫 AE 标题" in body
    assert '<td id="check-called-ae">是</td>' in body and '<td id="check-host">否</td>' in body


class _Text(HTMLParser):
    """The text a reader sees in an HTML page (scripts and styles left out)."""

    def __init__(self):
        super().__init__()
        self.parts, self._skip = [], 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style")

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def visible_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return " ".join(parser.parts)


@pytest.fixture
def one_of_everything(zhang_study, admin_user):
    series = Series.objects.create(study=zhang_study, series_instance_uid="1.2.3.4.1", modality="CT", series_number=1)
    instance = Instance.objects.create(
        series=series,
        sop_instance_uid="1.2.3.4.1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        file_path="1/2/3.dcm",  # not "instances/...": the word would pass for untranslated English
        file_size=1024,
        checksum="0" * 64,
        received_at=timezone.now(),
        source_ae="CT_ROOM_1",
    )
    node = ModalityNode.objects.create(ae_title="CT_ROOM_1", host="127.0.0.1", port=104, location="放射科")
    failure = IndexingFailure.objects.create(file_path="9/9/9.dcm", category="charset", indexed=True, reason="-")
    conflict = InstanceConflict.objects.create(sop_instance_uid="1.2.3.4.1.1", resolution="kept-stored")
    log = AssociationLog.objects.create(
        started_at=timezone.now(),
        calling_ae="CT_ROOM_1",
        called_ae="IMAGING",
        peer_host="127.0.0.1",
        outcome="released",
    )
    job = SendJob.objects.create(
        study=zhang_study,
        study_instance_uid=zhang_study.study_instance_uid,
        node=node,
        destination="CT_ROOM_1",
        requested_by=admin_user,
        state="partial",
        failures=[{"sop_instance_uid": "1.2.3.4.1.1", "status": "0xA700", "error": "-"}],
    )
    return [zhang_study.patient, zhang_study, series, instance, node, failure, conflict, log, job]


def test_no_english_of_ours_is_left_on_our_admin_pages_in_chinese(admin_client, one_of_everything):
    from tests.test_i18n_browser import our_english

    english = our_english()
    pages = [reverse("admin:index"), reverse("admin:network_modalitynode_this_server")]
    for obj in one_of_everything:
        opts = obj._meta
        pages += [reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")]
        pages += [reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])]
    pages += [reverse("admin:network_modalitynode_add"), reverse("admin:app_list", args=["records"])]
    for url in pages:
        response = admin_client.get(url, headers=ZH)
        assert response.status_code == 200, url
        text = visible_text(response.content.decode())
        left = sorted({p.pattern for p in english if p.search(text)})
        assert not left, f"{url} still shows our English: {left}"


def test_the_patient_list_writes_sex_and_birth_date_in_the_readers_way(admin_client, db):
    Patient.objects.create(patient_id="CN2", name_ideographic="欧阳^娜娜", sex="F", birth_date=dt.date(1980, 5, 1))
    Patient.objects.create(patient_id="X1", name_alphabetic="Doe^Jo", sex="U")
    chinese = visible_text(admin_client.get(reverse("records:patient-list"), headers=ZH).content.decode())
    assert "欧阳娜娜" in chinese and "女" in chinese and "1980-05-01" in chinese and " U " in chinese
    english = visible_text(admin_client.get(reverse("records:patient-list")).content.decode())
    assert "female" in english and "DOE Jo" in english
