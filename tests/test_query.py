"""network/query.py: C-FIND identifiers to rows and back, retrieve identifiers to instances, without sockets."""

import datetime as dt
import io
import struct

import pytest
from django.conf import settings
from django.db import connection
from django.db.models.functions import Upper
from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

from network import query
from records.models import Instance, Patient, Series, Study

pytestmark = pytest.mark.django_db

_uid = iter(range(1, 10**6))


def uid() -> str:
    return f"1.2.826.0.1.3680043.8.498.{next(_uid)}"


def add_study(patient, *, date="20240115", time="101500", modalities=("CT",), images=2, **fields) -> Study:
    study = Study.objects.create(
        patient=patient,
        study_instance_uid=fields.pop("study_uid", None) or uid(),
        study_date=dt.datetime.strptime(date, "%Y%m%d").date() if date else None,  # noqa: DTZ007
        study_time=dt.datetime.strptime(time, "%H%M%S").time() if time else None,  # noqa: DTZ007
        modalities_in_study="\\".join(sorted(set(modalities))),
        number_of_series=len(modalities),
        number_of_instances=len(modalities) * images,
        **fields,
    )
    for number, modality in enumerate(modalities, 1):
        series = Series.objects.create(
            study=study, series_instance_uid=uid(), modality=modality, series_number=number, number_of_instances=images
        )
        for i in range(images):
            Instance.objects.create(
                series=series,
                sop_instance_uid=uid(),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                instance_number=i + 1,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                rows=64,
                columns=64,
                file_path=f"x/{uid()}.dcm",
                file_size=1,
                checksum="0",
                received_at=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
            )
    return study


def add_patient(patient_id, name="", **fields) -> Patient:
    groups = (name.split("=") + ["", ""])[:3]
    return Patient.objects.create(
        patient_id=patient_id,
        name=name,
        name_alphabetic=groups[0],
        name_ideographic=groups[1],
        name_phonetic=groups[2],
        **fields,
    )


def identifier(level, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def find(level, model=query.STUDY_ROOT, **keys) -> list[Dataset]:
    return query.find(identifier(level, **keys), model=model)


def values(responses, keyword) -> list:
    return sorted(r[keyword].value if r[keyword].VM < 2 else "\\".join(r[keyword].value) for r in responses)


@pytest.fixture
def archive():
    wang = add_patient("P-WANG", "WANG^XIAOMING=王^小明=ワン^シャオミン", sex="M", birth_date=dt.date(1980, 5, 1))
    li = add_patient("P-LI", "Li^Na", sex="F")
    smith = add_patient("P_100%", "SMITH^JOHN")
    return {
        "wang_ct": add_study(wang, date="20240110", time="083000", modalities=("CT", "SR"), accession_number="A1"),
        "wang_mr": add_study(wang, date="20240301", time="230000", modalities=("MR",), accession_number="A2"),
        "li": add_study(li, date="20240302", time="020000", modalities=("CT",), accession_number="A3"),
        "smith": add_study(smith, date="20231231", time="120000", modalities=("US",), accession_number="B1"),
    }


def test_universal_matching_returns_every_study_with_the_requested_keys(archive):
    found = find("STUDY", StudyInstanceUID="", PatientName="")
    assert len(found) == 4
    assert all(r.QueryRetrieveLevel == "STUDY" for r in found)
    assert values(found, "StudyInstanceUID") == sorted(s.study_instance_uid for s in archive.values())


def test_single_value_matching_is_exact_and_case_sensitive_outside_names(archive):
    assert values(find("STUDY", AccessionNumber="A1", StudyInstanceUID=""), "StudyInstanceUID") == [
        archive["wang_ct"].study_instance_uid
    ]
    assert find("STUDY", AccessionNumber="a1") == []
    assert len(find("STUDY", PatientID="P-WANG")) == 2


def test_wildcards_translate_safely(archive):
    assert values(find("STUDY", AccessionNumber="A*"), "AccessionNumber") == ["A1", "A2", "A3"]
    assert values(find("STUDY", AccessionNumber="?1"), "AccessionNumber") == ["A1", "B1"]
    # % and _ are literal characters in DICOM, not wildcards.
    assert values(find("STUDY", PatientID="P_1*"), "PatientID") == ["P_100%"]
    assert find("STUDY", PatientID="P%") == []
    assert find("STUDY", PatientID="P_WANG") == []
    assert values(find("STUDY", PatientID="*%"), "PatientID") == ["P_100%"]


def test_a_list_of_uids_matches_any_of_them(archive):
    wanted = [archive["li"].study_instance_uid, archive["smith"].study_instance_uid]
    assert values(find("STUDY", StudyInstanceUID=wanted), "StudyInstanceUID") == sorted(wanted)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240301", ["A2"]),
        ("20240101-20240301", ["A1", "A2"]),
        ("-20240110", ["A1", "B1"]),
        ("20240302-", ["A3"]),
    ],
)
def test_date_ranges_including_open_ended_ones(archive, value, expected):
    assert values(find("STUDY", StudyDate=value, AccessionNumber=""), "AccessionNumber") == expected


def test_study_date_and_time_combine_into_one_range(archive):
    # From 1 March 22:00 to 2 March 06:00: the MR at 23:00 and Li's CT at 02:00,
    # not any study between 22:00 and 06:00 on other days.
    found = find("STUDY", StudyDate="20240301-20240302", StudyTime="2200-0600", AccessionNumber="")
    assert values(found, "AccessionNumber") == ["A2", "A3"]
    assert values(find("STUDY", StudyDate="20240110", StudyTime="08-09", AccessionNumber=""), "AccessionNumber") == [
        "A1"
    ]
    assert values(find("STUDY", StudyTime="0800-1300", AccessionNumber=""), "AccessionNumber") == ["A1", "B1"]


@pytest.mark.parametrize("bad", ["2024-01-01", "20241301", "20240301-20240101", "-"])
def test_a_bad_date_range_is_unable_to_process(archive, bad):
    with pytest.raises(query.QueryError) as exc:
        find("STUDY", StudyDate=bad)
    assert exc.value.status == 0xC000


@pytest.mark.parametrize(
    "name",
    ["WANG^XIAOMING", "wang^xiaoming", "Wang^Xiao*", "WANG*", "王^小明", "王*", "*小明", "ワン^シャオミン", "W?NG^*"],
)
def test_person_names_match_any_group_case_insensitively(archive, name):
    assert values(find("STUDY", PatientName=name, PatientID=""), "PatientID") == [
        "P-WANG",
        "P-WANG",
    ]


def test_person_name_groups_in_the_query_match_their_own_columns(archive):
    assert len(find("PATIENT", query.PATIENT_ROOT, PatientName="wang^*=王*")) == 1
    assert find("PATIENT", query.PATIENT_ROOT, PatientName="=WANG*") == []


def test_person_names_are_case_sensitive_when_configured(archive, settings):
    settings.DICOM_PN_CASE_INSENSITIVE = False
    assert find("STUDY", PatientName="li^na") == []
    assert len(find("STUDY", PatientName="Li^Na")) == 1
    assert len(find("STUDY", PatientName="L?^*")) == 1


def test_modalities_in_study_matches_any_series(archive):
    found = find("STUDY", ModalitiesInStudy="SR\\US", AccessionNumber="")
    assert values(found, "AccessionNumber") == ["A1", "B1"]
    assert values(found, "ModalitiesInStudy") == ["CT\\SR", "US"]


def test_computed_counts_at_each_level(archive):
    [study] = find(
        "STUDY",
        AccessionNumber="A1",
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
        NumberOfPatientRelatedStudies="",
    )
    assert (study.NumberOfStudyRelatedSeries, study.NumberOfStudyRelatedInstances) == (2, 4)
    assert list(study.ModalitiesInStudy) == ["CT", "SR"] and study.NumberOfPatientRelatedStudies == 2
    [patient] = find(
        "PATIENT",
        query.PATIENT_ROOT,
        PatientID="P-WANG",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedSeries="",
        NumberOfPatientRelatedInstances="",
    )
    assert (
        patient.NumberOfPatientRelatedStudies,
        patient.NumberOfPatientRelatedSeries,
        patient.NumberOfPatientRelatedInstances,
    ) == (2, 3, 6)
    series = find(
        "SERIES", StudyInstanceUID=archive["wang_ct"].study_instance_uid, Modality="", NumberOfSeriesRelatedInstances=""
    )
    assert [(s.Modality, s.NumberOfSeriesRelatedInstances) for s in series] == [("CT", 2), ("SR", 2)]


def test_series_and_image_levels(archive):
    study_uid = archive["wang_ct"].study_instance_uid
    series = find("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID="", Modality="CT", SeriesNumber="")
    assert len(series) == 1 and series[0].SeriesNumber == 1
    images = find(
        "IMAGE",
        StudyInstanceUID=study_uid,
        SeriesInstanceUID=series[0].SeriesInstanceUID,
        SOPInstanceUID="",
        InstanceNumber="",
        SOPClassUID="",
    )
    assert [i.InstanceNumber for i in images] == [1, 2]
    assert all(i.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" for i in images)
    assert (
        len(
            find("IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series[0].SeriesInstanceUID, InstanceNumber="2")
        )
        == 1
    )


def test_patient_root_levels_need_the_unique_keys_above(archive):
    assert len(find("STUDY", query.PATIENT_ROOT, PatientID="P-WANG", StudyDate="")) == 2
    for level, keys in [
        ("STUDY", {"PatientName": "WANG*"}),
        ("SERIES", {"PatientID": "P-WANG"}),
        ("IMAGE", {"StudyInstanceUID": archive["li"].study_instance_uid}),
    ]:
        with pytest.raises(query.QueryError) as exc:
            find(level, query.PATIENT_ROOT, **keys)
        assert exc.value.status == 0xA900
    # A Study Instance UID is unique by itself: PatientID may be left out.
    assert len(find("SERIES", query.PATIENT_ROOT, StudyInstanceUID=archive["li"].study_instance_uid)) == 1


def test_study_root_has_no_patient_level_and_needs_a_level(archive):
    for ds in (identifier("PATIENT"), identifier("WARD"), Dataset()):
        with pytest.raises(query.QueryError) as exc:
            query.parse(ds, model=query.STUDY_ROOT)
        assert exc.value.status == 0xA900


def test_unknown_and_lower_level_keys_come_back_empty(archive):
    [study] = find("STUDY", AccessionNumber="A3", OtherPatientIDs="", SeriesInstanceUID="", ReferencedStudySequence=[])
    assert "OtherPatientIDs" in study and study.OtherPatientIDs in ("", None)
    assert "SeriesInstanceUID" in study and not study.SeriesInstanceUID
    assert study.ReferencedStudySequence == []


def test_responses_declare_utf8_only_when_needed(archive):
    [wang] = find("PATIENT", query.PATIENT_ROOT, PatientID="P-WANG", PatientName="")
    assert wang.SpecificCharacterSet == "ISO_IR 192"
    assert str(wang.PatientName) == "WANG^XIAOMING=王^小明=ワン^シャオミン"
    [li] = find("PATIENT", query.PATIENT_ROOT, PatientID="P-LI", PatientName="")
    assert "SpecificCharacterSet" not in li


def test_a_query_in_gb18030_matches_chinese_names(archive):
    # As pynetdicom hands it over: raw bytes, decoded on access.
    ds = identifier("STUDY", SpecificCharacterSet="GB18030", PatientName="王^小明", PatientID="")
    received = decode(io.BytesIO(encode(ds, True, True)), True, True)
    assert values(query.find(received, model=query.STUDY_ROOT), "PatientID") == ["P-WANG", "P-WANG"]


def test_results_are_capped_newest_first(archive, caplog):
    found = query.find(identifier("STUDY", AccessionNumber=""), model=query.STUDY_ROOT, limit=2)
    assert [r.AccessionNumber for r in found] == ["A3", "A2"]
    assert "more than 2 results" in caplog.text


@pytest.mark.parametrize(
    ("value", "like", "glob"),
    [("A*", "A%", "A*"), ("a_b%?", "a\\_b\\%_", "a_b%?"), ("x[1]", "x[1]", "x[[]1[]]"), ("c\\d", "c\\\\d", "c\\d")],
)
def test_wildcard_translation(value, like, glob):
    assert query.like_pattern(value) == like
    assert query.glob_pattern(value) == glob


def test_a_study_query_costs_one_sql_statement(archive, django_assert_num_queries):
    with django_assert_num_queries(1):
        find("STUDY", PatientName="WANG*", NumberOfPatientRelatedStudies="", ModalitiesInStudy="CT")


# --- Retrieve (C-MOVE, C-GET): which instances an identifier names ----------------------


def retrieve(level, model=query.STUDY_ROOT, **keys) -> list[Instance]:
    return query.retrieve_instances(identifier(level, **keys), model=model)


def instances_of(*studies) -> list[str]:
    """The SOP Instance UIDs of the studies, in study, series then instance order."""
    return [
        i.sop_instance_uid
        for study in studies
        for i in Instance.objects.filter(series__study=study).order_by("series__series_number", "instance_number")
    ]


def test_a_retrieve_names_every_instance_below_its_level_in_order(archive):
    wang_ct, wang_mr = archive["wang_ct"], archive["wang_mr"]
    [sr] = wang_ct.series.filter(modality="SR")
    [image] = sr.instances.filter(instance_number=2)
    by_level = {
        "PATIENT": ({"PatientID": "P-WANG"}, instances_of(wang_ct, wang_mr)),
        "STUDY": ({"StudyInstanceUID": wang_ct.study_instance_uid}, instances_of(wang_ct)),
        "SERIES": ({"SeriesInstanceUID": sr.series_instance_uid}, [i.sop_instance_uid for i in sr.instances.all()]),
        "IMAGE": ({"SOPInstanceUID": image.sop_instance_uid}, [image.sop_instance_uid]),
    }
    for level, (keys, expected) in by_level.items():
        assert [i.sop_instance_uid for i in retrieve(level, query.PATIENT_ROOT, **keys)] == expected, level


def test_a_retrieve_loads_only_what_sending_needs_in_one_statement(archive, django_assert_num_queries):
    with django_assert_num_queries(1):
        [first, *_] = retrieve("STUDY", StudyInstanceUID=archive["li"].study_instance_uid)
    loaded = {f.attname for f in Instance._meta.concrete_fields} - first.get_deferred_fields()
    assert loaded == {"id", "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "file_path"}


def test_a_retrieve_takes_lists_of_uids(archive):
    li, smith = archive["li"], archive["smith"]
    both = retrieve("STUDY", StudyInstanceUID=[li.study_instance_uid, smith.study_instance_uid])
    assert [i.sop_instance_uid for i in both] == instances_of(li, smith)
    images = instances_of(archive["wang_mr"])
    assert {i.sop_instance_uid for i in retrieve("IMAGE", SOPInstanceUID=images)} == set(images)
    # As a workstation may encode it: one string, backslash-separated.
    assert len(retrieve("IMAGE", SOPInstanceUID="\\".join(images[:2]))) == 2


def test_unique_keys_above_the_level_narrow_and_keys_below_are_ignored(archive):
    wang_ct, li = archive["wang_ct"], archive["li"]
    [ct] = wang_ct.series.filter(modality="CT")
    series_uid = ct.series_instance_uid
    assert len(retrieve("SERIES", StudyInstanceUID=wang_ct.study_instance_uid, SeriesInstanceUID=series_uid)) == 2
    assert retrieve("SERIES", StudyInstanceUID=li.study_instance_uid, SeriesInstanceUID=series_uid) == []
    assert retrieve("SERIES", PatientID="P-LI", SeriesInstanceUID=series_uid) == []
    assert len(retrieve("SERIES", query.PATIENT_ROOT, PatientID="P-WANG", SeriesInstanceUID=series_uid)) == 2
    # A SeriesInstanceUID below the STUDY level does not narrow a study.
    assert len(retrieve("STUDY", StudyInstanceUID=li.study_instance_uid, SeriesInstanceUID=series_uid)) == 2


def test_issuer_of_patient_id_narrows_a_patient_id(archive):
    other = add_study(add_patient("P-WANG", "WANG^WEI", issuer="OTHER HOSPITAL"), images=1)
    assert len(retrieve("PATIENT", query.PATIENT_ROOT, PatientID="P-WANG")) == 7
    narrowed = retrieve("PATIENT", query.PATIENT_ROOT, PatientID="P-WANG", IssuerOfPatientID="OTHER HOSPITAL")
    assert [i.sop_instance_uid for i in narrowed] == instances_of(other)


def test_a_patient_id_in_a_retrieve_is_a_value_not_a_pattern(archive):
    assert retrieve("PATIENT", query.PATIENT_ROOT, PatientID="P-WANG*") == []
    assert len(retrieve("PATIENT", query.PATIENT_ROOT, PatientID="P_100%")) == 2


@pytest.mark.parametrize(
    ("level", "model", "keys"),
    [
        ("PATIENT", query.PATIENT_ROOT, {"PatientName": "WANG*"}),
        ("STUDY", query.STUDY_ROOT, {"PatientID": "P-WANG"}),
        ("SERIES", query.STUDY_ROOT, {"StudyInstanceUID": "1.2.3"}),
        ("IMAGE", query.PATIENT_ROOT, {"SeriesInstanceUID": "1.2.3", "SOPInstanceUID": ""}),
        ("IMAGE", query.STUDY_ROOT, {"SOPInstanceUID": "\\"}),
    ],
)
def test_a_retrieve_without_the_unique_key_of_its_level_does_not_match_the_sop_class(archive, level, model, keys):
    with pytest.raises(query.QueryError) as exc:
        retrieve(level, model, **keys)
    assert exc.value.status == 0xA900 and "required" in exc.value.reason


@pytest.mark.parametrize("bad", ["1.2.*", "1.2.3a", "1..2", "1" * 65, ["1.2.3", "not-a-uid"]])
def test_an_invalid_uid_does_not_match_the_sop_class(archive, bad):
    with pytest.raises(query.QueryError) as exc:
        retrieve("STUDY", StudyInstanceUID=bad)
    assert exc.value.status == 0xA900 and "not a valid UID" in exc.value.reason


def test_a_study_root_retrieve_has_no_patient_level(archive):
    for ds in (identifier("PATIENT", PatientID="P-WANG"), identifier("WARD"), Dataset()):
        with pytest.raises(query.QueryError) as exc:
            query.retrieve_instances(ds, model=query.STUDY_ROOT)
        assert exc.value.status == 0xA900


def test_an_identifier_that_cannot_be_decoded_is_unable_to_process(archive):
    # As pynetdicom hands it over: StudyInstanceUID sent as US with 3 bytes fails when read.
    stream = struct.pack("<HH2sH", 0x0008, 0x0052, b"CS", 6) + b"STUDY "
    stream += struct.pack("<HH2sH", 0x0020, 0x000D, b"US", 3) + b"abc"
    received = decode(io.BytesIO(stream), False, True)
    with pytest.raises(query.QueryError) as exc:
        query.retrieve_instances(received, model=query.STUDY_ROOT)
    assert exc.value.status == 0xC000


# --- PostgreSQL: the wildcard and range queries use indexes ------------------------------

postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL's operator classes and planner (SQLite: a prefix range)"
)


@pytest.fixture
def many_patients():
    """100,000 patients with a study each, 100 of them named Wang^Xiao<n>; fresh planner statistics."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO records_patient (patient_id, issuer, name, name_alphabetic, name_ideographic, name_phonetic,
                                         name_search, name_pinyin, name_initials, sex, created_at, updated_at)
            SELECT 'P' || i, '', name, name, '', '', lower(replace(name, '^', '')), '', '', 'O', now(), now()
            FROM (SELECT i, CASE WHEN i % 1000 = 0 THEN 'Wang^Xiao' || i
                                 ELSE initcap(substr(md5(i::text), 1, 7)) || '^' || substr(md5((7 * i)::text), 1, 5)
                            END AS name
                  FROM generate_series(1, 100000) AS i) AS names
            """
        )
        cursor.execute(
            """
            INSERT INTO records_study (patient_id, study_instance_uid, study_id, accession_number, study_date,
                                       study_time, description, referring_physician, modalities_in_study,
                                       number_of_series, number_of_instances, created_at, updated_at)
            SELECT id, '1.2.826.0.1.3680043.8.498.' || id, '', 'A' || id, date '2015-01-01' + (id % 3650)::int,
                   time '10:00', '', '', 'CT', 1, 1, now(), now()
            FROM records_patient
            """
        )
        cursor.execute("ANALYZE records_patient")
        cursor.execute("ANALYZE records_study")


@postgresql_only
def test_name_and_patient_id_wildcards_and_date_ranges_use_an_index_on_postgresql(many_patients):
    alpha, ideo, phon = "patient_name_alpha_upper_like", "patient_name_ideo_upper_like", "patient_name_phon_upper_like"
    # The query shape alone: UPPER(name_alphabetic) LIKE 'WANG%'.
    plan = Patient.objects.filter(query._wildcard_q(Upper("name_alphabetic"), "WANG*")).explain()
    assert f"Index Scan on {alpha}" in plan, plan
    cases = [
        # PatientName=WANG* on any name group: one index for each.
        ("PATIENT", query.PATIENT_ROOT, {"PatientName": "WANG*"}, [alpha, ideo, phon]),
        ("STUDY", query.STUDY_ROOT, {"PatientName": "wang^xiao1*"}, [alpha, ideo, phon]),
        ("STUDY", query.STUDY_ROOT, {"PatientID": "P1234*"}, ["patient_patient_id_like"]),
        ("STUDY", query.STUDY_ROOT, {"StudyDate": "20200101-20200105"}, ["records_study_study_date_"]),
    ]
    for level, model, keys, indexes in cases:
        parsed = query.parse(identifier(level, StudyInstanceUID="", **keys), model=model)
        # As results() asks it: at most DICOM_FIND_MAX_RESULTS + 1 rows.
        plan = parsed.queryset[: settings.DICOM_FIND_MAX_RESULTS + 1].explain()
        assert "Index Scan" in plan and all(index in plan for index in indexes), (keys, plan)
        assert "Seq Scan on records_patient" not in plan, (keys, plan)
