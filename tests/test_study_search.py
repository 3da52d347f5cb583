"""Study search by name, pinyin and initials (records/pinyin.py, records/search.py), on the page and in QIDO-RS.

Names are indexed from files, as a modality sends them: only in characters
(in the Alphabetic group, or the Ideographic one), only in pinyin, or both.
"""

import datetime as dt

import pytest
from django.utils import timezone

from imaging import reindex
from records import pinyin, search
from records.models import Patient, Study
from records.roles import DOCTOR, FRONT_DESK
from tests.dicomweb_data import client_for, index_study

pytestmark = pytest.mark.django_db

# (PatientName as sent, what a doctor types that must find it). Real surnames: single,
# compound (复姓) and polyphonic ones whose surname reading is not the common one.
NAMES = [
    ("张伟", ["zw", "zhangwei", "zhang wei", "Zhang Wei", "ZHANGWEI", "张", "张伟", "wei"]),  # characters only
    ("=王^小明", ["wxm", "wangxiaoming", "xiaoming", "王小明", "小明"]),  # Ideographic group only
    ("LI^XIAOLONG", ["lxl", "lixiaolong", "li xiaolong", "Li^Xiaolong", "xiaolong"]),  # pinyin only
    ("Chen^Jing=陈^静=chen^jing", ["cj", "chenjing", "陈静", "Chen Jing"]),  # both
    ("曾国藩", ["zgf", "zengguofan", "zeng guofan"]),  # 曾 zeng, not ceng
    ("单田芳", ["stf", "shantianfang"]),  # 单 shan, not dan
    ("=解^缙", ["xj", "xiejin"]),  # 解 xie, not jie
    ("仇英", ["qy", "qiuying"]),  # 仇 qiu, not chou
    ("区志强", ["ozq", "ouzhiqiang"]),  # 区 ou, not qu
    ("查良镛", ["zly", "zhaliangyong"]),  # 查 zha, not cha
    ("翟天临", ["ztl", "zhaitianlin"]),  # 翟 zhai, not di
    ("覃海洋", ["qhy", "qinhaiyang"]),  # 覃 qin, not tan
    ("朴树", ["ps", "piaoshu"]),  # 朴 piao, not pu
    ("盖聂", ["gn", "genie"]),  # 盖 ge, not gai
    ("缪杰", ["mj", "miaojie"]),  # 缪 miao, not mou
    ("欧阳娜娜", ["oynn", "ouyangnana", "ouyang"]),  # compound surnames
    ("=司马^光", ["smg", "simaguang"]),
    ("诸葛亮", ["zgl", "zhugeliang"]),
    ("上官婉儿", ["sgwe", "shangguanwaner"]),
    ("东方朔", ["dfs", "dongfangshuo"]),
    ("长孙无忌", ["zswj", "zhangsunwuji"]),  # 长 zhang in 长孙
    ("尉迟恭", ["ycg", "yuchigong"]),  # 尉 yu in 尉迟
    ("万俟卨", ["mqx", "moqixie"]),  # 万 mo in 万俟
    ("OUYANG^XIU", ["oyx", "ouyangxiu"]),  # a compound surname sent in pinyin only
    ("Wang^Lele=王^乐乐=wang^lele", ["wll", "wanglele", "王乐乐"]),
    ("吕布", ["lb", "lvbu", "lubu"]),  # ü typed as v or u
]

# Common readings of surnames that read otherwise: they must not find the patient.
WRONG_READINGS = [("曾国藩", "cengguofan"), ("单田芳", "dantianfang"), ("解缙", "jiejin"), ("翟天临", "ditianlin")]


@pytest.fixture
def archive(tmp_path):
    """Every name of NAMES indexed from a file; accession number "A<index>"."""
    return {name: index_study(tmp_path, name, f"A{i:02d}") for i, (name, _typed) in enumerate(NAMES)}


@pytest.fixture
def doctor():
    return client_for(DOCTOR)


def found_on_page(client, **params) -> list[str]:
    response = client.get("/studies/", params)
    assert response.status_code == 200
    return [study.accession_number for study in response.context["page"]]


def found_by_qido(client, **params) -> list[str]:
    response = client.get("/dicomweb/studies", params, HTTP_ACCEPT="application/dicom+json")
    assert response.status_code == 200, response.content
    return [r["0020000D"]["Value"][0] for r in response.json()]


# --- The keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alphabetic", "ideographic", "full", "initials"),
    [
        ("", "张^伟", "zhangwei", "zw"),
        ("张伟", "", "zhangwei", "zw"),
        ("", "曾国藩", "zengguofan", "zgf"),
        ("", "单^田芳", "shantianfang", "stf"),
        ("", "欧阳^娜娜", "ouyangnana", "oynn"),
        ("", "欧阳娜娜", "ouyangnana", "oynn"),
        ("", "尉迟恭", "yuchigong", "ycg"),
        ("", "万俟卨", "moqixie", "mqx"),
        # The given name is read as a phrase with pypinyin's dictionary: 银行 is yinhang.
        ("", "李^银行", "liyinhang", "lyh"),
        ("", "王^乐乐", "wanglele", "wll"),
        ("ZHANG^XIAOMING", "", "zhangxiaoming", "zxm"),
    ],
)
def test_the_keys_hold_pinyin_and_initials_with_the_surnames_reading(alphabetic, ideographic, full, initials):
    keys = pinyin.name_keys(alphabetic, ideographic)
    assert keys["name_pinyin"].split()[0] == full
    assert initials in keys["name_initials"].split()


def test_pinyin_sent_as_letters_is_split_into_syllables_for_its_initials():
    assert pinyin.split_pinyin("xiaoming") == [["xiao", "ming"]]
    assert pinyin.split_pinyin("xian") == [["xian"]]  # the fewest syllables
    assert sorted(pinyin.split_pinyin("changan")) == [["chan", "gan"], ["chang", "an"]]
    assert pinyin.split_pinyin("smith") == []
    assert pinyin.name_keys("Smith^John")["name_initials"] == "sj"


def test_what_users_type_is_normalised_as_the_names_are():
    assert pinyin.normalise("Zhang Wei") == pinyin.normalise("ZHANG^WEI") == "zhangwei"
    assert pinyin.normalise("Ｚｈａｎｇ") == "zhang"  # full-width letters of a Chinese keyboard
    assert pinyin.normalise("Lǚ Bù") == "lvbu"


def test_saving_a_patient_keeps_its_keys_in_step_with_its_name():
    patient = Patient.objects.create(patient_id="P1", name_ideographic="曾^国藩")
    assert (patient.name_pinyin, patient.name_initials) == ("zengguofan", "zgf")
    patient.name_ideographic = "单^田芳"
    patient.save(update_fields=["name_ideographic"])
    patient.refresh_from_db()
    assert (patient.name_pinyin, patient.name_initials) == ("shantianfang", "stf")


def test_a_full_reindex_puts_lost_keys_back(tmp_path):
    study_uid = index_study(tmp_path, "欧阳娜娜", "A1")
    Patient.objects.update(name_search="", name_pinyin="", name_initials="")
    result = reindex.reindex(missing_only=False)
    # The store is the session's: other tests' files are reindexed too, and some
    # tests leave files without UIDs there on purpose, which fail: what counts is ours.
    assert result.indexed >= 1
    patient = Study.objects.get(study_instance_uid=study_uid).patient
    assert (patient.name_search, patient.name_pinyin, patient.name_initials) == ("欧阳娜娜", "ouyangnana", "oynn")


def test_the_migration_fills_the_keys_of_patients_already_indexed():
    from importlib import import_module

    from django.apps import apps

    Patient.objects.create(patient_id="P1", name_ideographic="诸葛亮")
    Patient.objects.update(name_search="", name_pinyin="", name_initials="")
    migration = import_module("records.migrations.0013_patient_name_search_keys")
    migration.fill_name_keys(apps, None)
    assert Patient.objects.get().name_initials == "zgl"


# --- The study list --------------------------------------------------------------------------------


def test_doctors_find_every_name_by_initials_full_pinyin_and_characters(doctor, archive):
    missed = []
    for i, (name, typed) in enumerate(NAMES):
        for text in typed:
            if f"A{i:02d}" not in found_on_page(doctor, name=text):
                missed.append((name, text))
    assert missed == []


def test_the_common_reading_of_a_surname_does_not_find_it(doctor, archive):
    for name, text in WRONG_READINGS:
        assert found_on_page(doctor, name=text) == [], (name, text)


def test_a_name_search_finds_only_the_patients_it_names(doctor, archive):
    assert found_on_page(doctor, name="zhangwei") == ["A00"]
    assert found_on_page(doctor, name="zgf") == ["A04"]
    assert found_on_page(doctor, name="wei zhang") == ["A00"]  # words in any order
    assert found_on_page(doctor, name="zhang smith") == []


def test_a_name_matching_many_patients_is_searched_by_a_subquery(doctor, tmp_path, monkeypatch):
    monkeypatch.setattr(search, "MAX_PATIENT_KEYS", 1)
    index_study(tmp_path, "张伟", "M1")
    index_study(tmp_path, "=赵^文", "M2")
    index_study(tmp_path, "LI^NA", "M3")
    assert found_on_page(doctor, name="zw") == ["M2", "M1"]


def test_the_front_desk_finds_patients_by_pinyin_too(archive):
    front_desk = client_for(FRONT_DESK)
    response = front_desk.get("/patients/", {"name": "oynn"})
    assert [p.patient_id for p in response.context["page"]] == ["ID-A15"]


def test_the_api_finds_patients_by_pinyin_too(archive):
    response = client_for(DOCTOR).get("/api/studies/", {"name": "zhangwei"})
    assert response.status_code == 200
    assert [s["accession_number"] for s in response.json()["results"]] == ["A00"]


def test_date_presets_find_today_yesterday_and_the_last_seven_days(doctor, tmp_path):
    today = timezone.localdate()
    for days in (0, 1, 6, 7):
        index_study(tmp_path, "张伟", f"D{days}", date=today - dt.timedelta(days=days))
    assert found_on_page(doctor, period="today") == ["D0"]
    assert found_on_page(doctor, period="yesterday") == ["D1"]
    assert found_on_page(doctor, period="week") == ["D0", "D1", "D6"]
    assert found_on_page(doctor, period="week", name="zw") == ["D0", "D1", "D6"]


def test_the_list_sorts_by_each_column_both_ways(doctor, tmp_path):
    today = timezone.localdate()
    index_study(tmp_path, "王^小明", "S1", date=today - dt.timedelta(days=2), modality="CT")
    index_study(tmp_path, "=艾^米", "S2", date=today, modality="MR")  # ai mi: first by name
    index_study(tmp_path, "ZHAO^LEI", "S3", date=today - dt.timedelta(days=1), modality="US")
    assert found_on_page(doctor) == ["S2", "S3", "S1"]  # newest first
    assert found_on_page(doctor, sort="date", order="asc") == ["S1", "S3", "S2"]
    assert found_on_page(doctor, sort="name") == ["S2", "S1", "S3"]  # aimi, wangxiaoming, zhaolei
    assert found_on_page(doctor, sort="name", order="desc") == ["S3", "S1", "S2"]
    assert found_on_page(doctor, sort="patient_id", order="desc") == ["S3", "S2", "S1"]
    assert found_on_page(doctor, sort="modality") == ["S1", "S2", "S3"]
    body = doctor.get("/studies/", {"name": "w", "sort": "name"}).content.decode()
    # The header links keep the search and turn the order around.
    assert "?name=w&amp;sort=name&amp;order=desc" in body


def test_the_list_shows_the_total_and_pages_on_the_server(doctor, django_assert_max_num_queries):
    patient = Patient.objects.create(patient_id="P1", name_ideographic="张^伟")
    for n in range(120):
        Study.objects.create(
            patient=patient,
            study_instance_uid=f"1.2.3.{n}",
            accession_number=f"N{n:03d}",
            study_date=dt.date(2024, 1, 1),
        )
    # Session, user, roles; the matching patients; the count; the page's studies; their series.
    with django_assert_max_num_queries(7):
        response = doctor.get("/studies/", {"name": "zw", "page": "3", "sort": "name"})
    body = response.content.decode()
    assert len(response.context["page"]) == 20
    assert "120 studies" in body and "Page 3 of 3" in body


# --- QIDO-RS fuzzymatching ---------------------------------------------------------------------------


def test_qido_fuzzymatching_finds_every_name_as_the_study_list_does(doctor, archive):
    missed = []
    for name, typed in NAMES:
        for text in typed:
            if archive[name] not in found_by_qido(doctor, PatientName=text, fuzzymatching="true"):
                missed.append((name, text))
    assert missed == []


def test_qido_without_fuzzymatching_keeps_c_finds_matching(doctor, archive):
    assert found_by_qido(doctor, PatientName="zw") == []
    assert found_by_qido(doctor, PatientName="zw", fuzzymatching="false") == []
    assert found_by_qido(doctor, PatientName="li^xiao*") == [archive["LI^XIAOLONG"]]
    assert found_by_qido(doctor, PatientName="zw*", fuzzymatching="true") == [archive["张伟"]]


def test_the_presets_and_sorting_speak_simplified_chinese(doctor):
    body = doctor.get("/studies/", headers={"accept-language": "zh-hans"}).content.decode()
    assert all(text in body for text in ("不限日期", "今天", "昨天", "最近 7 天", 'title="排序"'))
