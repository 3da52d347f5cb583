"""QIDO-RS (PS3.18 ch. 10) through network/query.py: matching, includefield, paging, dicom+json, roles."""

import pydicom
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from pydicom.uid import generate_uid

from network.dicomweb import formatter, multipart
from tests import dicomgen
from tests.dicomweb_data import client_for, fresh_uids, pydicom_file, store

pytestmark = pytest.mark.django_db

STUDIES = "/dicomweb/studies"


def study(tmp_path, *, name, patient_id, date, modality="MR", images=1, series=1, description="Generated"):
    """A study of ``series`` series of ``images`` images each, stored and indexed; returns its UIDs."""
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    series_uids = []
    for s in range(series):
        series_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
        series_uids.append(series_uid)
        for number in range(1, images + 1):
            path = dicomgen.small_image(tmp_path, f"{series_uid}-{number}.dcm", study_uid, series_uid, number)
            ds = pydicom.dcmread(path)
            ds.PatientName, ds.PatientID, ds.StudyDate = name, patient_id, date
            ds.Modality, ds.SeriesNumber, ds.StudyDescription = modality, s + 1, description
            store(ds)
    return study_uid, series_uids


@pytest.fixture
def archive(tmp_path):
    return {
        "wang": study(tmp_path, name="WANG^XIAOMING=王^小明", patient_id="P-WANG", date="20240301", images=3, series=2),
        "wang_old": study(tmp_path, name="WANG^XIAOMING=王^小明", patient_id="P-WANG", date="20200101"),
        "li": study(tmp_path, name="LI^NA", patient_id="P-LI", date="20240302", modality="CT"),
    }


@pytest.fixture
def doctor():
    return client_for("Doctor")


def get(client, url, **params):
    response = client.get(url, params, HTTP_ACCEPT="application/dicom+json")
    return response


def value(result, keyword):
    tag = formatter.tag_key(pydicom.datadict.tag_for_keyword(keyword))
    return result.get(tag, {}).get("Value")


def uids(results, keyword="StudyInstanceUID"):
    return [value(r, keyword)[0] for r in results]


def test_studies_by_name_prefix_case_insensitive_with_counts(doctor, archive):
    response = get(doctor, STUDIES, PatientName="wang^xi*")
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/dicom+json"
    results = response.json()
    # Newest first, the same order as C-FIND.
    assert uids(results) == [archive["wang"][0], archive["wang_old"][0]]
    first = results[0]
    assert value(first, "NumberOfStudyRelatedSeries") == [2]
    assert value(first, "NumberOfStudyRelatedInstances") == [6]
    assert value(first, "ModalitiesInStudy") == ["MR"]
    assert value(first, "PatientName") == [{"Alphabetic": "WANG^XIAOMING", "Ideographic": "王^小明"}]
    assert first["00100010"]["vr"] == "PN"
    assert value(first, "RetrieveURL") == [f"http://testserver/dicomweb/studies/{archive['wang'][0]}"]
    assert value(first, "StudyDate") == ["20240301"]


def test_a_tag_matches_as_its_keyword_does(doctor, archive):
    by_tag = get(doctor, STUDIES, **{"00100020": "P-LI"}).json()
    by_keyword = get(doctor, STUDIES, PatientID="P-LI").json()
    assert uids(by_tag) == uids(by_keyword) == [archive["li"][0]]


def test_ideographic_group_and_date_range_and_modality(doctor, archive):
    assert uids(get(doctor, STUDIES, PatientName="王^小明").json()) == [archive["wang"][0], archive["wang_old"][0]]
    assert uids(get(doctor, STUDIES, StudyDate="20240101-").json()) == [archive["li"][0], archive["wang"][0]]
    assert uids(get(doctor, STUDIES, ModalitiesInStudy="CT").json()) == [archive["li"][0]]
    assert get(doctor, STUDIES, PatientName="NOBODY").json() == []


def test_uid_lists_comma_separated(doctor, archive):
    wanted = f"{archive['li'][0]},{archive['wang_old'][0]}"
    assert set(uids(get(doctor, STUDIES, StudyInstanceUID=wanted).json())) == {archive["li"][0], archive["wang_old"][0]}


def test_includefield_lists_repeated_and_all(doctor, archive):
    response = doctor.get(
        STUDIES + "?PatientID=P-LI&includefield=StudyDescription,00100021&includefield=NumberOfPatientRelatedStudies",
        HTTP_ACCEPT="application/dicom+json",
    )
    [result] = response.json()
    assert value(result, "StudyDescription") == ["Generated"]
    assert result["00100021"] == {"vr": "LO"}  # IssuerOfPatientID: asked for, empty
    assert value(result, "NumberOfPatientRelatedStudies") == [1]
    [everything] = get(doctor, STUDIES, PatientID="P-WANG", StudyDate="20240301", includefield="all").json()
    assert value(everything, "NumberOfPatientRelatedStudies") == [2]
    assert value(everything, "NumberOfPatientRelatedInstances") == [7]
    assert value(everything, "StudyDescription") == ["Generated"]


def test_series_of_a_study_and_across_studies(doctor, archive):
    study_uid, series_uids = archive["wang"]
    results = get(doctor, f"{STUDIES}/{study_uid}/series").json()
    assert uids(results, "SeriesInstanceUID") == series_uids
    assert value(results[0], "NumberOfSeriesRelatedInstances") == [3]
    assert value(results[0], "RetrieveURL") == [
        f"http://testserver/dicomweb/studies/{study_uid}/series/{series_uids[0]}"
    ]
    across = get(doctor, "/dicomweb/series", Modality="CT").json()
    assert uids(across, "SeriesInstanceUID") == archive["li"][1]
    assert uids(across) == [archive["li"][0]]
    assert len(get(doctor, "/dicomweb/series", PatientName="WANG*").json()) == 3


def test_instances_at_each_level(doctor, archive):
    study_uid, series_uids = archive["wang"]
    in_series = get(doctor, f"{STUDIES}/{study_uid}/series/{series_uids[1]}/instances").json()
    assert [value(r, "InstanceNumber") for r in in_series] == [[1], [2], [3]]
    assert value(in_series[0], "Rows") == [64]
    assert value(in_series[0], "NumberOfFrames") == [1]
    assert value(in_series[0], "SeriesInstanceUID") == [series_uids[1]]
    url = value(in_series[0], "RetrieveURL")[0]
    assert url.endswith(
        f"/studies/{study_uid}/series/{series_uids[1]}/instances/{value(in_series[0], 'SOPInstanceUID')[0]}"
    )
    assert len(get(doctor, f"{STUDIES}/{study_uid}/instances").json()) == 6
    assert len(get(doctor, "/dicomweb/instances", InstanceNumber="2").json()) == 2
    assert len(get(doctor, "/dicomweb/instances", PatientID="P-LI").json()) == 1


def test_limit_offset_and_the_warning_when_cut(doctor, archive, settings):
    first = get(doctor, STUDIES, limit="1")
    assert uids(first.json()) == [archive["li"][0]]
    assert "offset=1" in first["Warning"] and first["Warning"].startswith("299 ")
    second = get(doctor, STUDIES, limit="1", offset="1")
    assert uids(second.json()) == [archive["wang"][0]]
    last = get(doctor, STUDIES, limit="5", offset="2")
    assert uids(last.json()) == [archive["wang_old"][0]]
    assert "Warning" not in last
    settings.DICOM_FIND_MAX_RESULTS = 2
    capped = get(doctor, STUDIES, limit="10")
    assert len(capped.json()) == 2
    assert "DICOM_FIND_MAX_RESULTS" in capped["Warning"]


def test_fuzzymatching_is_accepted(doctor, archive):
    response = get(doctor, STUDIES, PatientName="LI*", fuzzymatching="true")
    assert response.status_code == 200
    assert uids(response.json()) == [archive["li"][0]]


@pytest.mark.parametrize(
    "params",
    [
        {"NoSuchKeyword": "x"},
        {"limit": "-1"},
        {"StudyDate": "20241301-"},
        {"includefield": "NotAnAttribute"},
        {"fuzzymatching": "maybe"},
        {"Rows": "many"},
    ],
)
def test_bad_parameters_are_400_with_a_reason(doctor, archive, params):
    response = get(doctor, STUDIES, **params)
    assert response.status_code == 400
    assert response.json()["detail"]


def test_malformed_uid_in_the_path_is_400_before_any_query(doctor, archive):
    with CaptureQueriesContext(connection) as queries:
        response = get(doctor, f"{STUDIES}/1.2.abc/series")
    assert response.status_code == 400
    assert "not a valid DICOM UID" in response.json()["detail"]
    assert not [q for q in queries.captured_queries if "records_" in q["sql"]]


def test_an_accept_we_cannot_serve_is_406(doctor, archive):
    response = doctor.get(STUDIES, HTTP_ACCEPT="application/xml")
    assert response.status_code == 406
    assert "application/dicom+json" in response.json()["detail"]
    assert doctor.get(STUDIES, HTTP_ACCEPT="application/json").status_code == 200
    assert doctor.get(STUDIES, HTTP_ACCEPT="*/*").status_code == 200


def test_roles(archive):
    from django.test import Client

    assert Client().get(STUDIES).status_code == 401  # HTTP Basic is the first authentication class: a challenge
    assert client_for(username="stranger").get(STUDIES).status_code == 403
    front_desk = client_for("Front desk")
    assert front_desk.get(STUDIES).status_code == 200
    study_uid = archive["wang"][0]
    assert front_desk.get(f"{STUDIES}/{study_uid}/series").status_code == 403
    assert front_desk.get("/dicomweb/instances").status_code == 403
    admin = client_for("Administrator")
    assert admin.get(f"{STUDIES}/{study_uid}/series").status_code == 200


def test_a_search_costs_the_same_queries_for_3_or_30_studies(doctor, tmp_path, django_assert_max_num_queries):
    for i in range(3):
        study(tmp_path, name=f"FEW^{i}", patient_id=f"F{i}", date="20240101")
    with CaptureQueriesContext(connection) as few:
        assert len(get(doctor, STUDIES, includefield="all").json()) == 3
    for i in range(27):
        study(tmp_path, name=f"MANY^{i}", patient_id=f"M{i}", date="20240102")
    with CaptureQueriesContext(connection) as many:
        assert len(get(doctor, STUDIES, includefield="all").json()) == 30
    assert len(many) == len(few)
    # The session, the user, the user's groups, and the search itself.
    assert len(few) <= 4, [q["sql"] for q in few.captured_queries]
    with CaptureQueriesContext(connection) as series_search:
        assert len(get(doctor, "/dicomweb/series").json()) == 30
    with CaptureQueriesContext(connection) as instance_search:
        assert len(get(doctor, "/dicomweb/instances").json()) == 30
    assert len(series_search) == len(instance_search) == len(few)


def test_chinese_names_from_gb18030_and_utf8_files_come_back_with_their_ideographic_group(doctor):
    for name in ("chrX1.dcm", "chrX2.dcm"):
        ds = fresh_uids(pydicom_file(name))
        ds.PatientID = name
        store(ds)
    results = get(doctor, STUDIES, PatientName="Wang^XiaoDong").json()
    names = sorted(value(r, "PatientName")[0]["Ideographic"] for r in results)
    assert names == ["王^小东", "王^小東"]
    assert all(value(r, "PatientName")[0]["Alphabetic"] == "Wang^XiaoDong" for r in results)
    japanese = fresh_uids(pydicom_file("chrH31.dcm"))
    store(japanese)
    [result] = get(doctor, STUDIES, PatientName="山田*").json()
    assert value(result, "PatientName") == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]


def test_accept_headers_are_read_with_and_without_quotes():
    quoted = multipart.parse_accept('multipart/related; type="application/dicom"; transfer-syntax=*')
    bare = multipart.parse_accept("multipart/related;type=application/dicom;transfer-syntax=*")
    assert quoted == bare
    assert quoted[0].part_type == "application/dicom" and quoted[0].transfer_syntax == "*"
    ordered = multipart.parse_accept("image/png;q=0.5, image/jpeg, text/html;q=0")
    assert [r.type for r in ordered] == ["image/jpeg", "image/png"]


def test_formatter_numbers_and_names():
    assert formatter.text_element("IS", "12") == {"vr": "IS", "Value": [12]}
    assert formatter.text_element("DS", "1.5\\2") == {"vr": "DS", "Value": [1.5, 2]}
    assert formatter.text_element("PN", "A^B==C^D") == {"vr": "PN", "Value": [{"Alphabetic": "A^B", "Phonetic": "C^D"}]}
    assert formatter.text_element("DA", None) == {"vr": "DA"}


def test_retrieve_urls_name_the_server_as_the_client_sees_it_behind_the_tls_proxy(doctor, archive, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "pacs.hospital.example"]
    response = doctor.get(
        STUDIES,
        {"PatientID": "P-LI"},
        HTTP_ACCEPT="application/dicom+json",
        HTTP_HOST="pacs.hospital.example",
        HTTP_X_FORWARDED_PROTO="https",
    )
    [result] = response.json()
    assert value(result, "RetrieveURL") == [f"https://pacs.hospital.example/dicomweb/studies/{archive['li'][0]}"]
