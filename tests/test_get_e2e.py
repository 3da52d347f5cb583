"""C-GET SCP: DCMTK getscu and pynetdicom retrieve stored images on their own association."""

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage, StudyRootQueryRetrieveInformationModelGet

from network.models import ModalityNode
from tests import dicomgen, procs
from tests.test_move_e2e import archive, identifier, last_log, received, rle_and_ct, same

pytestmark = pytest.mark.e2e

MODEL = StudyRootQueryRetrieveInformationModelGet


@pytest.fixture
def series(tmp_path):
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    paths = dicomgen.ct_series(tmp_path / "src", 4, size=32, study_uid=study_uid, patient_id="GET01")
    other = dicomgen.ct_series(tmp_path / "other", 2, size=32, study_uid=study_uid, patient_id="GET01", seed=9)
    archive(*other)
    return study_uid, pydicom.dcmread(paths[0]).SeriesInstanceUID, archive(*paths)


def getscu(port, out_dir, *keys, calling="MODALITY"):
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["-aet", calling, "-aec", "IMAGING", "127.0.0.1", str(port), "-S", "-od", str(out_dir)]
    for key in keys:
        args += ["-k", key]
    return procs.dcmtk("getscu", "-v", *args)


class Getter:
    """pynetdicom as a C-GET SCU that offers to store the given SOP classes, uncompressed."""

    def __init__(self, port, sop_classes=(CTImageStorage,), calling="MODALITY"):
        self.stored: list[Dataset] = []
        ae = AE(ae_title=calling)
        ae.add_requested_context(MODEL)
        for sop_class in sop_classes:
            ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.assoc = ae.associate(
            "127.0.0.1",
            port,
            ae_title="IMAGING",
            ext_neg=[build_role(sop_class, scp_role=True) for sop_class in sop_classes],
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        assert self.assoc.is_established

    def _on_store(self, event):
        self.stored.append(event.dataset)
        return 0x0000

    def get(self, query, cancel_after=None):
        """The (status, identifier) responses; sends C-CANCEL after ``cancel_after`` pending ones."""
        responses = []
        for status, ds in self.assoc.send_c_get(query, MODEL, msg_id=7):
            if "Status" not in status:
                continue
            responses.append((status, ds))
            if status.Status == 0xFF00 and len(responses) == cancel_after:
                self.assoc.send_c_cancel(7, query_model=MODEL)
        return responses

    def release(self):
        self.assoc.release()


def test_getscu_gets_a_series_on_its_own_association(system, series, tmp_path):
    study_uid, series_uid, stored = series
    result = getscu(
        system.port,
        tmp_path / "in",
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study_uid}",
        f"SeriesInstanceUID={series_uid}",
    )
    assert result.returncode == 0, result.stderr
    got = received(tmp_path / "in")
    assert set(got) == set(stored)
    assert all(same(got[uid], stored[uid]) for uid in stored)
    entry = last_log()
    assert "C-GET" in entry.services and entry.images_sent == 4 and entry.failures == 0


def test_a_cancel_stops_the_sub_operations(system, tmp_path):
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    archive(*dicomgen.ct_series(tmp_path / "src", 30, size=16, study_uid=study_uid))
    getter = Getter(system.port)
    try:
        responses = getter.get(identifier("STUDY", StudyInstanceUID=study_uid), cancel_after=1)
    finally:
        getter.release()
    final = responses[-1][0]
    assert final.Status == 0xFE00
    assert final.NumberOfRemainingSuboperations > 0
    assert final.NumberOfCompletedSuboperations + final.NumberOfRemainingSuboperations == 30
    assert len(getter.stored) == final.NumberOfCompletedSuboperations < 30


def test_an_image_of_a_class_the_requester_cannot_store_is_a_listed_failure(system, tmp_path):
    stored = rle_and_ct(tmp_path)
    [rle_uid] = [uid for uid, ds in stored.items() if ds.file_meta.TransferSyntaxUID == RLELossless]
    getter = Getter(system.port, sop_classes=(CTImageStorage,))
    try:
        responses = getter.get(identifier("STUDY", StudyInstanceUID=stored[rle_uid].StudyInstanceUID))
    finally:
        getter.release()
    final, final_identifier = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (1, 1)
    assert final_identifier.FailedSOPInstanceUIDList == rle_uid
    assert [ds.SOPInstanceUID for ds in getter.stored] == [uid for uid in stored if uid != rle_uid]


def test_a_compressed_image_arrives_decompressed_when_only_uncompressed_is_offered(system, tmp_path):
    stored = rle_and_ct(tmp_path)
    [rle_uid] = [uid for uid, ds in stored.items() if ds.file_meta.TransferSyntaxUID == RLELossless]
    result = getscu(
        system.port,
        tmp_path / "in",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={stored[rle_uid].StudyInstanceUID}",
        f"SeriesInstanceUID={stored[rle_uid].SeriesInstanceUID}",
        f"SOPInstanceUID={rle_uid}",
    )
    assert result.returncode == 0, result.stderr
    got = received(tmp_path / "in")[rle_uid]
    assert got.file_meta.TransferSyntaxUID in {ExplicitVRLittleEndian, ImplicitVRLittleEndian}
    assert (got.pixel_array == stored[rle_uid].pixel_array).all()


def test_a_requester_that_may_not_retrieve_is_refused(system, series, tmp_path):
    ModalityNode.objects.create(ae_title="STORE_ONLY", host="127.0.0.1", port=104, may_retrieve=False)
    getter = Getter(system.port, calling="STORE_ONLY")
    try:
        responses = getter.get(identifier("STUDY", StudyInstanceUID=series[0]))
    finally:
        getter.release()
    assert [s.Status for s, _ in responses] == [0x0124]
    assert getter.stored == []
    entry = last_log("STORE_ONLY")
    assert "C-GET" in entry.services and entry.images_sent == 0


def test_a_missing_unique_key_gets_a900(system, series):
    getter = Getter(system.port)
    try:
        responses = getter.get(identifier("IMAGE", StudyInstanceUID=series[0]))
    finally:
        getter.release()
    assert responses[-1][0].Status == 0xA900
