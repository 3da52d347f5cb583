"""C-MOVE SCP: DCMTK movescu and pynetdicom ask runscp to send stored images to a DCMTK storescp."""

import shutil
import struct

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from imaging import ingest, storage
from network.models import AssociationLog, ModalityNode
from tests import dicomgen, procs
from tests.storescp import storescp

pytestmark = pytest.mark.e2e

TRAILING_PADDING = 0xFFFCFFFC
UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def archive(*paths) -> dict[str, pydicom.Dataset]:
    """Store files as runscp would have and index them here (the SCP reads the same database)."""
    stored, relpaths = {}, []
    for path in paths:
        ds = pydicom.dcmread(path)
        relpath = storage.instance_relpath(ds.SOPInstanceUID)
        storage.absolute(relpath).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, storage.absolute(relpath))
        relpaths.append(relpath)
        stored[ds.SOPInstanceUID] = ds
    done, failed = ingest.index_files(relpaths)
    assert len(done) == len(paths) and not failed
    return stored


def received(out_dir) -> dict[str, pydicom.Dataset]:
    """What a storescp or getscu wrote: {SOP Instance UID: data set}."""
    found = {}
    for path in out_dir.iterdir():
        ds = pydicom.dcmread(path)
        found[ds.SOPInstanceUID] = ds
    return found


def same(got: pydicom.Dataset, ours: pydicom.Dataset) -> bool:
    # storescp drops Data Set Trailing Padding when it writes a file.
    ours = pydicom.Dataset(ours)
    if TRAILING_PADDING in ours:
        del ours[TRAILING_PADDING]
    return got == ours


def last_log(calling_ae="MODALITY") -> AssociationLog:
    return procs.wait_for(
        lambda: AssociationLog.objects.filter(calling_ae=calling_ae).first(), 20, f"the log of {calling_ae}"
    )


def movescu(port, *keys, destination="DEST", calling="MODALITY", model="-S"):
    args = ["-aet", calling, "-aec", "IMAGING", "-aem", destination, "127.0.0.1", str(port), model]
    for key in keys:
        args += ["-k", key]
    return procs.dcmtk("movescu", "-v", *args)


def pynetdicom_move(port, identifier, *, destination="DEST", calling="MODALITY", model=None):
    """C-MOVE with pynetdicom; returns the list of (status, identifier) responses.

    A C-ECHO follows on the same association: had the SCP sent anything after the
    final C-MOVE response, that would be what the echo receives first.
    """
    model = model or StudyRootQueryRetrieveInformationModelMove
    ae = AE(ae_title=calling)
    ae.add_requested_context(model, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMAGING")
    assert assoc.is_established
    procs.keep_responses_for_the_waiter(assoc)
    try:
        responses = [(s, ds) for s, ds in assoc.send_c_move(identifier, destination, model) if "Status" in s]
        echo = assoc.send_c_echo()
        assert echo.Status == 0x0000 and "NumberOfCompletedSuboperations" not in echo, echo
        return responses
    finally:
        assoc.release()


def identifier(level, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


@pytest.fixture
def study(tmp_path):
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    first = dicomgen.ct_series(tmp_path / "a", 3, size=32, study_uid=study_uid, patient_id="MOVE01")
    second = dicomgen.ct_series(tmp_path / "b", 2, size=32, study_uid=study_uid, patient_id="MOVE01", seed=5)
    return study_uid, archive(*first, *second), [pydicom.dcmread(p).SeriesInstanceUID for p in (first[0], second[0])]


def test_movescu_moves_a_study_to_a_registered_destination(system, study, tmp_path):
    study_uid, stored, _ = study
    with storescp(tmp_path / "in", tmp_path / "storescp.log", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        result = movescu(system.port, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}")
        assert result.returncode == 0, result.stderr
        got = procs.wait_for(lambda: len(list((tmp_path / "in").iterdir())) == 5 and received(tmp_path / "in"), 10)
    assert set(got) == set(stored)
    assert all(same(got[uid], stored[uid]) for uid in stored)
    entry = last_log()
    assert "C-MOVE" in entry.services and entry.images_sent == 5 and entry.failures == 0


def test_it_reports_pending_counts_and_moves_a_list_of_series(system, study, tmp_path):
    study_uid, stored, series_uids = study
    with storescp(tmp_path / "in", tmp_path / "storescp.log", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        responses = pynetdicom_move(
            system.port,
            identifier("SERIES", PatientID="MOVE01", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uids),
            model=PatientRootQueryRetrieveInformationModelMove,
        )
    pending = [s for s, _ in responses if s.Status == 0xFF00]
    # The first Pending response leaves at once, later ones at most every
    # DICOM_RETRIEVE_PENDING_INTERVAL_MS: each tells how far the move has come.
    assert pending and pending[0].NumberOfRemainingSuboperations == 4
    for p in pending:
        assert p.NumberOfRemainingSuboperations + p.NumberOfCompletedSuboperations == 5
        assert p.NumberOfFailedSuboperations == p.NumberOfWarningSuboperations == 0
    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 5
    assert final.NumberOfFailedSuboperations == 0
    assert set(received(tmp_path / "in")) == set(stored)


def test_a_c_cancel_stops_the_move(system, tmp_path):
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    archive(*dicomgen.ct_series(tmp_path / "src", 200, size=64, study_uid=study_uid))
    with storescp(tmp_path / "in", tmp_path / "storescp.log", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", system.port, ae_title="IMAGING")
        assert assoc.is_established
        responses = []
        query = identifier("STUDY", StudyInstanceUID=study_uid)
        for status, _ in assoc.send_c_move(query, "DEST", StudyRootQueryRetrieveInformationModelMove, msg_id=5):
            responses.append(status)
            if len(responses) == 1:  # the first Pending response leaves at once
                assoc.send_c_cancel(5, query_model=StudyRootQueryRetrieveInformationModelMove)
        assoc.release()
    final = responses[-1]
    assert final.Status == 0xFE00
    assert 0 < final.NumberOfRemainingSuboperations < 200
    assert final.NumberOfCompletedSuboperations + final.NumberOfRemainingSuboperations == 200
    assert len(list((tmp_path / "in").iterdir())) == final.NumberOfCompletedSuboperations


def test_it_moves_single_images_named_by_a_list_of_sop_instance_uids(system, study, tmp_path):
    study_uid, stored, series_uids = study
    wanted = sorted(stored)[:2]
    with storescp(tmp_path / "in", tmp_path / "storescp.log", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        result = movescu(
            system.port, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid}", "SeriesInstanceUID=",
            f"SOPInstanceUID={wanted[0]}\\{wanted[1]}",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert set(received(tmp_path / "in")) == set(wanted)


def test_an_unknown_destination_gets_a801(system, study, tmp_path):
    study_uid, _, _ = study
    ModalityNode.objects.create(ae_title="NO_RETR", host="127.0.0.1", port=104, may_retrieve=False)
    for destination in ("NOWHERE", "NO_RETR"):
        responses = pynetdicom_move(
            system.port, identifier("STUDY", StudyInstanceUID=study_uid), destination=destination
        )
        assert [s.Status for s, _ in responses] == [0xA801]
    result = movescu(system.port, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}", destination="NOWHERE")
    assert "Refused: MoveDestinationUnknown" in result.stderr


def associations_accepted(log_path) -> int:
    """How many associations a ``storescp -v`` has accepted (DCMTK writes its log line by line).

    Not "Association Received": storescp logs that for any TCP connection, the
    readiness check's too. It accepts any storage or verification context we propose.
    """
    return log_path.read_text(errors="replace").count("Association Acknowledged")


def assert_refused_without_the_destination(responses, status, dest_log, system, study, log_from):
    """One final response, with ``status`` and no sub-operation; the destination never associated.

    A C-MOVE that works is sent after the refused one: the destination logs its
    association, so an earlier one would be in its log before it. Nothing went
    wrong in pynetdicom either: runscp logged no exception from ``log_from`` on.
    """
    assert [s.Status for s, _ in responses] == [status]
    final = responses[0][0]
    assert not final.NumberOfCompletedSuboperations and not final.NumberOfFailedSuboperations
    moved = pynetdicom_move(system.port, identifier("STUDY", StudyInstanceUID=study[0]))
    assert moved[-1][0].Status == 0x0000
    assert procs.wait_for(lambda: associations_accepted(dest_log), 10, "the destination's log") == 1
    assert "Traceback" not in system.log("runscp")[log_from:]


def refusal_logged(system) -> None:
    """The refused association is logged with one failure (the C-MOVE after it, with none)."""
    procs.wait_for(
        lambda: AssociationLog.objects.filter(calling_ae="MODALITY", failures=1, images_sent=0).exists(),
        20,
        "the log of the refused C-MOVE",
    )


def test_a_requester_that_may_not_retrieve_is_refused_without_associating_with_the_destination(system, study, tmp_path):
    study_uid, _, _ = study
    ModalityNode.objects.create(ae_title="STORE_ONLY", host="127.0.0.1", port=104, may_retrieve=False)
    dest_log, log_from = tmp_path / "storescp.log", len(system.log("runscp"))
    with storescp(tmp_path / "in", dest_log, "-v", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        responses = pynetdicom_move(system.port, identifier("STUDY", StudyInstanceUID=study_uid), calling="STORE_ONLY")
        assert_refused_without_the_destination(responses, 0x0124, dest_log, system, study, log_from)
    entry = last_log("STORE_ONLY")
    assert "C-MOVE" in entry.services and entry.images_sent == 0 and entry.failures == 1


@pytest.mark.parametrize(
    ("level", "keys"),
    [
        ("SERIES", {"SeriesInstanceUID": ""}),  # the level's unique key is missing
        ("PATIENT", {"PatientID": "MOVE01"}),  # Study Root has no PATIENT level
        ("STUDY", {"StudyInstanceUID": "1.2.3.x"}),  # not a UID
    ],
)
def test_a_bad_identifier_gets_a900_without_associating_with_the_destination(system, study, tmp_path, level, keys):
    dest_log, log_from = tmp_path / "storescp.log", len(system.log("runscp"))
    with storescp(tmp_path / "in", dest_log, "-v", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        responses = pynetdicom_move(system.port, identifier(level, **keys))
        assert_refused_without_the_destination(responses, 0xA900, dest_log, system, study, log_from)
    refusal_logged(system)


def test_an_identifier_that_cannot_be_decoded_gets_c000_without_associating_with_the_destination(
    system, study, tmp_path, monkeypatch
):
    # What pydicom would never write: StudyInstanceUID as US, 3 bytes (Explicit VR Little Endian).
    stream = struct.pack("<HH2sH", 0x0008, 0x0052, b"CS", 6) + b"STUDY "
    stream += struct.pack("<HH2sH", 0x0020, 0x000D, b"US", 3) + b"abc"
    dest_log, log_from = tmp_path / "storescp.log", len(system.log("runscp"))
    with storescp(tmp_path / "in", dest_log, "-v", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        with monkeypatch.context() as patched:
            patched.setattr("pynetdicom.association.encode", lambda *args, **kwargs: stream)
            responses = pynetdicom_move(system.port, identifier("STUDY"))
        assert_refused_without_the_destination(responses, 0xC000, dest_log, system, study, log_from)
    assert "identifier cannot be decoded" in system.log("runscp")[log_from:]
    refusal_logged(system)


def test_nothing_matched_is_success_with_no_sub_operations(system, study, tmp_path):
    with storescp(tmp_path / "in", tmp_path / "storescp.log", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        responses = pynetdicom_move(system.port, identifier("STUDY", StudyInstanceUID="1.2.3.4.5"))
    final = responses[-1][0]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 0


def rle_and_ct(tmp_path) -> dict[str, pydicom.Dataset]:
    """An RLE-compressed MR and an uncompressed CT in one study."""
    study_uid = generate_uid(dicomgen.PYNETDICOM_ROOT)
    paths = []
    for name in ("MR_small_RLE.dcm", "CT_small.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.StudyInstanceUID, ds.PatientID = study_uid, "MOVE02"
        ds.save_as(tmp_path / name)
        paths.append(tmp_path / name)
    return archive(*paths)


def test_a_compressed_image_arrives_decompressed_where_only_uncompressed_is_accepted(system, tmp_path):
    stored = rle_and_ct(tmp_path)
    [rle_uid] = [uid for uid, ds in stored.items() if ds.file_meta.TransferSyntaxUID == RLELossless]
    study_uid = stored[rle_uid].StudyInstanceUID
    with storescp(tmp_path / "in", tmp_path / "storescp.log", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        result = movescu(system.port, "QueryRetrieveLevel=STUDY", f"StudyInstanceUID={study_uid}")
        assert result.returncode == 0, result.stderr
    got = received(tmp_path / "in")
    assert set(got) == set(stored)
    assert got[rle_uid].file_meta.TransferSyntaxUID in UNCOMPRESSED
    assert (got[rle_uid].pixel_array == stored[rle_uid].pixel_array).all()


def test_a_compressed_image_arrives_as_stored_where_its_syntax_is_accepted(system, tmp_path):
    stored = rle_and_ct(tmp_path)
    [rle_uid] = [uid for uid, ds in stored.items() if ds.file_meta.TransferSyntaxUID == RLELossless]
    with storescp(tmp_path / "in", tmp_path / "storescp.log", "+xa", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        responses = pynetdicom_move(
            system.port, identifier("IMAGE", StudyInstanceUID=stored[rle_uid].StudyInstanceUID, SOPInstanceUID=rle_uid)
        )
    assert responses[-1][0].Status == 0x0000
    got = received(tmp_path / "in")[rle_uid]
    assert got.file_meta.TransferSyntaxUID == RLELossless
    assert same(got, stored[rle_uid]) and got.PixelData == stored[rle_uid].PixelData


def test_a_missing_file_is_a_failed_sub_operation_listed_by_uid(system, study, tmp_path):
    study_uid, stored, _ = study
    gone = sorted(stored)[0]
    storage.absolute(storage.instance_relpath(gone)).unlink()
    with storescp(tmp_path / "in", tmp_path / "storescp.log", ae_title="DEST") as port:
        ModalityNode.objects.create(ae_title="DEST", host="127.0.0.1", port=port)
        responses = pynetdicom_move(system.port, identifier("STUDY", StudyInstanceUID=study_uid))
    final, final_identifier = responses[-1]
    assert final.Status == 0xB000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (4, 1)
    assert final_identifier.FailedSOPInstanceUIDList == gone
    entry = last_log()
    assert entry.images_sent == 4 and entry.failures == 1
