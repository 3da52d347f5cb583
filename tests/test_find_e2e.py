"""C-FIND against the real runscp, driven by DCMTK's findscu and by pynetdicom, on each receive path."""

import shutil

import pydicom
import pytest
from django.conf import settings
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from imaging import ingest
from network.models import AssociationLog, ModalityNode
from records.models import Patient
from tests import dicomgen, procs
from tests.conftest import RECEIVE_PATHS

pytestmark = pytest.mark.e2e


@pytest.fixture(**RECEIVE_PATHS)
def fast_receive(request) -> str:
    """Every query here is answered by our receive path (network/fastrecv.py) and by pynetdicom's."""
    return request.param


def index(tmp_path, *, patient_id, patient_name, study_date, study_time="101500", images=1, modality="MR"):
    """Write a study into the store and index it in this process (the SCP reads the same database)."""
    study_uid = pydicom.uid.generate_uid(dicomgen.PYNETDICOM_ROOT)
    series_uid = pydicom.uid.generate_uid(dicomgen.PYNETDICOM_ROOT)
    relpaths = []
    for number in range(1, images + 1):
        path = dicomgen.small_image(
            tmp_path, f"{study_uid}-{number}.dcm", study_uid, series_uid, number, patient_id=patient_id
        )
        ds = pydicom.dcmread(path)
        ds.PatientName = patient_name
        ds.StudyDate, ds.StudyTime, ds.Modality = study_date, study_time, modality
        relpath = f"instances/test/{ds.SOPInstanceUID}.dcm"
        target = settings.STORAGE_DIR / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
        relpaths.append(relpath)
    done, failed = ingest.index_files(relpaths)
    assert not failed
    return study_uid, series_uid


@pytest.fixture
def archive(system, tmp_path):
    return {
        "wang": index(
            tmp_path, patient_id="P-WANG", patient_name="WANG^XIAOMING=王^小明", study_date="20240301", images=3
        ),
        "wang_old": index(tmp_path, patient_id="P-WANG", patient_name="WANG^XIAOMING=王^小明", study_date="20200101"),
        "li": index(tmp_path, patient_id="P-LI", patient_name="LI^NA", study_date="20240302", modality="CT"),
    }


def findscu(port, tmp_path, *keys, model="-S", calling="MODALITY"):
    """Run findscu, writing each response to a file; returns (result, [responses])."""
    out = tmp_path / "responses"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    args = ["-v", "-aet", calling, "-aec", "IMAGING", model, "-X", "-od", str(out), "127.0.0.1", str(port)]
    for key in keys:
        args += ["-k", key]
    result = procs.dcmtk("findscu", *args, timeout=60)
    return result, [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def test_findscu_finds_studies_by_name_prefix_with_counts(system, archive, tmp_path):
    result, found = findscu(
        system.port,
        tmp_path,
        "QueryRetrieveLevel=STUDY",
        "PatientName=wang^xi*",
        "StudyInstanceUID",
        "StudyDate",
        "NumberOfStudyRelatedInstances",
        "ModalitiesInStudy",
        "PatientAge",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(r.StudyInstanceUID for r in found) == sorted([archive["wang"][0], archive["wang_old"][0]]), (
        result.stderr
    )
    newest = next(r for r in found if r.StudyDate == "20240301")
    assert newest.NumberOfStudyRelatedInstances == 3 and newest.ModalitiesInStudy == "MR"
    assert newest.SpecificCharacterSet == "ISO_IR 192" and str(newest.PatientName) == "WANG^XIAOMING=王^小明"
    assert "PatientAge" in newest and not newest.PatientAge
    entry = procs.wait_for(lambda: AssociationLog.objects.filter(calling_ae="MODALITY").first(), 20, "the log")
    assert "C-FIND" in entry.services


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["PatientID=P-LI"], ["li"]),
        (["StudyDate=20240301-"], ["li", "wang"]),
        (["StudyDate=-20231231"], ["wang_old"]),
        (["StudyDate=20240301-20240302", "StudyTime=1000-1100"], ["li", "wang"]),
        (["SpecificCharacterSet=ISO_IR 192", "PatientName=王*"], ["wang", "wang_old"]),
        (["ModalitiesInStudy=CT"], ["li"]),
        (["AccessionNumber=", "PatientName=LI^N?"], ["li"]),
    ],
)
def test_findscu_each_matching_type_at_study_level(system, archive, tmp_path, keys, expected):
    result, found = findscu(system.port, tmp_path, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", *keys)
    assert result.returncode == 0, result.stderr
    assert sorted(r.StudyInstanceUID for r in found) == sorted(archive[name][0] for name in expected)


def test_findscu_patient_root_patient_series_and_image_levels(system, archive, tmp_path):
    _, [patient] = findscu(
        system.port,
        tmp_path,
        "QueryRetrieveLevel=PATIENT",
        "PatientID=P-WANG",
        "NumberOfPatientRelatedStudies",
        "NumberOfPatientRelatedInstances",
        model="-P",
    )
    assert (patient.NumberOfPatientRelatedStudies, patient.NumberOfPatientRelatedInstances) == (2, 4)
    study_uid, series_uid = archive["wang"]
    _, [series] = findscu(
        system.port,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        "PatientID=P-WANG",
        f"StudyInstanceUID={study_uid}",
        "SeriesInstanceUID",
        "NumberOfSeriesRelatedInstances",
        model="-P",
    )
    assert series.SeriesInstanceUID == series_uid and series.NumberOfSeriesRelatedInstances == 3
    _, images = findscu(
        system.port,
        tmp_path,
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={study_uid}",
        f"SeriesInstanceUID={series_uid}",
        "SOPInstanceUID",
        "InstanceNumber",
    )
    assert [i.InstanceNumber for i in images] == [1, 2, 3]


def test_findscu_gets_a_failure_for_a_malformed_identifier(system, archive, tmp_path):
    result, found = findscu(system.port, tmp_path, "QueryRetrieveLevel=STUDY", "StudyDate=20241399")
    assert found == [] and "Failed: UnableToProcess" in result.stderr, result.stderr
    result, found = findscu(system.port, tmp_path, "QueryRetrieveLevel=SERIES", "SeriesInstanceUID", model="-P")
    assert found == [] and "DataSetDoesNotMatchSOPClass" in result.stderr, result.stderr
    assert "refused (0xC000)" in system.log("runscp")


def study_query(**keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_a_node_that_may_not_query_gets_not_authorized(system, archive):
    ModalityNode.objects.create(ae_title="NO_QUERY", host="127.0.0.1", port=104, may_query=False)
    ae = AE(ae_title="NO_QUERY")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", system.port, ae_title="IMAGING")
    assert assoc.is_established
    responses = list(assoc.send_c_find(study_query(), StudyRootQueryRetrieveInformationModelFind))
    assoc.release()
    assert [status.Status for status, _ in responses] == [0x0124]
    entry = procs.wait_for(lambda: AssociationLog.objects.filter(calling_ae="NO_QUERY").first(), 20, "the log")
    assert entry.failures == 1 and "C-FIND" in entry.services


def test_a_c_cancel_over_the_network_ends_the_query(system):
    Patient.objects.bulk_create(
        Patient(patient_id=f"C{n:04d}", name=f"CANCEL^{n}") for n in range(990)
    )  # under DICOM_FIND_MAX_RESULTS
    query = study_query(PatientID="C*")
    query.QueryRetrieveLevel = "PATIENT"
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", system.port, ae_title="IMAGING")
    assert assoc.is_established
    procs.keep_responses_for_the_waiter(assoc)
    statuses = []
    for status, _ in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind, msg_id=9):
        statuses.append(status.Status)
        if len(statuses) == 1:
            assoc.send_c_cancel(9, query_model=PatientRootQueryRetrieveInformationModelFind)
    # The association goes on: the next query is answered in full.
    query.PatientID = "C0001"
    after = [status.Status for status, _ in assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind)]
    assoc.release()
    assert statuses[-1] == 0xFE00  # Matching terminated due to Cancel
    assert statuses[:-1] == [0xFF00] * (len(statuses) - 1)
    assert len(statuses) - 1 < 990
    assert after == [0xFF00, 0x0000]
    entry = procs.wait_for(lambda: AssociationLog.objects.filter(calling_ae="MODALITY").first(), 20, "the log")
    assert entry.outcome == AssociationLog.Outcome.RELEASED and "C-FIND" in entry.services
