"""Receive, store, index and thumbnail: the real runscp, worker and Redis, driven by DCMTK."""

import concurrent.futures
import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.conf import settings
from PIL import Image
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from imaging import storage
from records.models import Instance, Patient, Series, Study
from tests import dicomgen, procs
from tests.conftest import RECEIVE_PATHS, service_env, start_scp

pytestmark = pytest.mark.e2e

# One file for each transfer syntax a modality may send (pydicom's and pydicom-data's files).
TRANSFER_SYNTAX_FILES = {
    "1.2.840.10008.1.2": "MR_small_implicit.dcm",
    "1.2.840.10008.1.2.1": "CT_small.dcm",
    "1.2.840.10008.1.2.1.99": "image_dfl.dcm",
    "1.2.840.10008.1.2.2": "MR_small_bigendian.dcm",
    "1.2.840.10008.1.2.4.50": "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "1.2.840.10008.1.2.4.51": "JPEG-lossy.dcm",
    "1.2.840.10008.1.2.4.57": "JPEG-LL.dcm",  # relabelled below: an SV1 stream is a valid process 14 stream
    "1.2.840.10008.1.2.4.70": "JPGLosslessP14SV1_1s_1f_8b.dcm",
    "1.2.840.10008.1.2.4.80": "MR_small_jpeg_ls_lossless.dcm",
    "1.2.840.10008.1.2.4.81": "emri_small_jpeg_ls_lossless.dcm",  # relabelled: NEAR=0 is valid near-lossless
    "1.2.840.10008.1.2.4.90": "MR_small_jp2klossless.dcm",
    "1.2.840.10008.1.2.4.91": "JPEG2000.dcm",
    "1.2.840.10008.1.2.5": "MR_small_RLE.dcm",
}


# storescu's option to propose each transfer syntax; JPEG process 14 (4.57) has none,
# so pynetdicom sends that one.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def wait_indexed(sop_uids, timeout=60):
    sop_uids = set(sop_uids)
    procs.wait_for(
        lambda: Instance.objects.filter(sop_instance_uid__in=sop_uids).count() == len(sop_uids),
        timeout,
        f"{len(sop_uids)} instance(s) to be indexed",
    )


def wait_thumbnail(series_uid, timeout=60) -> Path:
    def ready():
        series = Series.objects.filter(series_instance_uid=series_uid).first()
        return series and series.thumbnail and storage.absolute(series.thumbnail).exists() and series

    series = procs.wait_for(ready, timeout, f"the thumbnail of series {series_uid}")
    return storage.absolute(series.thumbnail)


def storescu(port, *files, ae_title="IMAGING", extra=()):
    return procs.dcmtk(
        "storescu", "-aet", "MODALITY", "-aec", ae_title, *extra, "127.0.0.1", str(port), *map(str, files)
    )


def echoscu(port, ae_title="IMAGING", calling="MODALITY"):
    return procs.dcmtk("echoscu", "-aet", calling, "-aec", ae_title, "127.0.0.1", str(port))


def data_elements(path) -> dict:
    """Every element of the data set (not the file meta), comparable across re-encodings."""
    ds = pydicom.dcmread(path)
    # Group lengths and trailing padding are legitimately dropped by a sender.
    return {elem.tag: elem.value for elem in ds if elem.tag.element != 0 and elem.tag != 0xFFFCFFFC}


@pytest.fixture(**RECEIVE_PATHS)
def fast_receive(request) -> str:
    """Every test here runs against our receive path (network/fastrecv.py) and against pynetdicom's."""
    return request.param


def test_it_answers_echoscu(system):
    result = echoscu(system.port)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("transfer_syntax", sorted(TRANSFER_SYNTAX_FILES))
def test_it_stores_each_transfer_syntax_as_received(system, transfer_syntax, tmp_path):
    source = Path(get_testdata_file(TRANSFER_SYNTAX_FILES[transfer_syntax]))
    ds = pydicom.dcmread(source)
    if str(ds.file_meta.TransferSyntaxUID) != transfer_syntax:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    # A fresh SOP Instance UID per test run keeps the tests independent.
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    sent = tmp_path / "sent.dcm"
    ds.save_as(sent)

    if transfer_syntax in STORESCU_PROPOSE:
        # storescu proposes the file's transfer syntax first, so the image travels as it is.
        result = storescu(system.port, sent, extra=["-R", STORESCU_PROPOSE[transfer_syntax]])
        assert result.returncode == 0, result.stderr
    else:
        assert _send(system.port, pydicom.dcmread(sent)) == 0x0000

    wait_indexed([ds.SOPInstanceUID])
    instance = Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID)
    assert instance.transfer_syntax_uid == transfer_syntax
    stored = storage.absolute(instance.file_path)
    stored_ds = pydicom.dcmread(stored)
    assert str(stored_ds.file_meta.TransferSyntaxUID) == transfer_syntax
    assert stored_ds.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert data_elements(stored) == data_elements(sent)
    assert instance.source_ae == "MODALITY"
    assert instance.file_size == stored.stat().st_size
    assert instance.rows == ds.Rows and instance.columns == ds.Columns


def test_a_300_slice_ct_is_stored_indexed_and_thumbnailed(system, tmp_path):
    files = dicomgen.ct_series(tmp_path / "ct", 300, patient_id="CT300", patient_name="王^小明")
    first, middle = pydicom.dcmread(files[0]), pydicom.dcmread(files[149])

    result = storescu(system.port, *files)
    assert result.returncode == 0, result.stderr

    study = procs.wait_for(
        lambda: Study.objects.filter(study_instance_uid=first.StudyInstanceUID, number_of_instances=300).first(),
        60,
        "the study to count 300 instances",
    )
    assert study.number_of_series == 1
    assert study.modalities_in_study == "CT"
    assert study.patient.patient_id == "CT300"
    assert study.patient.name == "王^小明"
    series = Series.objects.get(series_instance_uid=first.SeriesInstanceUID)
    assert series.number_of_instances == 300
    assert series.modality == "CT"
    assert Instance.objects.filter(series=series).count() == 300

    thumbnail = wait_thumbnail(first.SeriesInstanceUID)
    procs.wait_for(
        lambda: Series.objects.get(pk=series.pk).thumbnail_sop_instance_uid == middle.SOPInstanceUID,
        30,
        "the thumbnail to show the middle slice",
    )
    image = Image.open(thumbnail)
    image.load()
    assert image.size == (256, 256)
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 20, "a thumbnail of a CT slice is not a flat image"
    assert pixels[128, 128] > pixels[2, 2], "the body is brighter than the air around it"


def test_the_same_instance_sent_twice_leaves_one_row_and_the_newest_file(system, tmp_path):
    [path] = dicomgen.ct_series(tmp_path / "a", 1, size=64, patient_id="RESEND")
    ds = pydicom.dcmread(path)
    assert storescu(system.port, path).returncode == 0
    wait_indexed([ds.SOPInstanceUID])

    ds.SeriesDescription = "Corrected at the modality"
    ds.save_as(path)
    assert storescu(system.port, path).returncode == 0
    procs.wait_for(
        lambda: Series.objects.filter(description="Corrected at the modality").exists(),
        30,
        "the re-sent instance to be indexed",
    )
    assert Instance.objects.filter(sop_instance_uid=ds.SOPInstanceUID).count() == 1
    stored = pydicom.dcmread(storage.absolute(Instance.objects.get(sop_instance_uid=ds.SOPInstanceUID).file_path))
    assert stored.SeriesDescription == "Corrected at the modality"
    assert Series.objects.get(series_instance_uid=ds.SeriesInstanceUID).number_of_instances == 1


def test_eight_modalities_sending_at_once_all_succeed(system, tmp_path):
    studies = [dicomgen.ct_series(tmp_path / f"m{i}", 12, size=128, patient_id=f"CONC{i}", seed=i) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda files: storescu(system.port, *files), studies))
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results if r.returncode]
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for files in studies for f in files]
    wait_indexed(uids)
    assert Patient.objects.filter(patient_id__startswith="CONC").count() == 8
    # Counts are refreshed after each indexed batch: they follow the rows closely.
    procs.wait_for(
        lambda: (
            sorted(
                Study.objects.filter(patient__patient_id__startswith="CONC").values_list(
                    "number_of_instances", flat=True
                )
            )
            == [12] * 8
        ),
        30,
        "every study to count its 12 instances",
    )


def _send(port, ds, ae_title="IMAGING", calling="MODALITY"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return status.Status if status else None
    finally:
        assoc.release()


def _files_on_disk():
    return sorted(p for p in (storage.root() / storage.INSTANCES).rglob("*") if p.is_file())


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_a_data_set_without_its_uids_is_refused_and_nothing_is_harmed(system, tmp_path, missing):
    [path] = dicomgen.ct_series(tmp_path, 1, size=32)
    ds = pydicom.dcmread(path)
    before = {p: p.read_bytes() for p in _files_on_disk()}
    delattr(ds, missing)

    assert _send(system.port, ds) == 0xA900
    assert {p: p.read_bytes() for p in _files_on_disk()} == before
    assert f"{missing} is missing" in system.log("runscp")
    assert echoscu(system.port).returncode == 0


@pytest.mark.parametrize("bad_uid", ["../../../../tmp/evil", "1.2.3/../../x", "1.2.3.4.5" * 20])
def test_a_uid_that_could_become_a_path_is_refused(system, tmp_path, bad_uid):
    [path] = dicomgen.ct_series(tmp_path, 1, size=32)
    ds = pydicom.dcmread(path)
    ds.SeriesInstanceUID = bad_uid
    before = _files_on_disk()

    assert _send(system.port, ds) == 0xA900
    assert _files_on_disk() == before
    assert not Path("/tmp/evil").exists()


def test_a_data_set_that_cannot_be_parsed_gets_a_failure_status(system, tmp_path):
    from pynetdicom import _config

    [path] = dicomgen.ct_series(tmp_path, 1, size=32)
    ds = pydicom.dcmread(path)
    # Valid file meta followed by bytes that are no data set: an element whose
    # length runs far past the end of the stream.
    meta = io.BytesIO()
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() + b"\x08\x00\x18\x00UI\xff\x7f1.2.3")

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CTImageStorage, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", system.port, ae_title="IMAGING")
    assert assoc.is_established
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    try:
        status = assoc.send_c_store(garbage)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        assoc.release()
    assert status.Status in range(0xA900, 0xA9FF + 1) or status.Status in range(0xC000, 0xCFFF + 1)
    assert "refused" in system.log("runscp")
    assert echoscu(system.port).returncode == 0


def test_sigterm_lets_the_association_in_flight_finish(system, tmp_path):
    files = dicomgen.ct_series(tmp_path / "ct", 120, size=256, patient_id="SIGTERM")
    scp, port = start_scp(system.env, system.logs, name="runscp-sigterm")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sending = pool.submit(storescu, port, *files)
        # Stop the server once the first images have arrived and the rest are on their way.
        procs.wait_for(lambda: len(_files_on_disk_for(files)) >= 10, 60, "the first images to arrive")
        scp.terminate()
        result = sending.result(timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(_files_on_disk_for(files)) == 120
    assert scp.wait(60) == 0
    assert not procs.port_open(port), "a stopped server no longer listens"


def test_spare_processes_wait_for_the_next_associations(system, tmp_path):
    from network.scp import ASSOCIATION_NAME, SPARE_NAME

    # One association a process: the spare that served it leaves (tests/test_spares_e2e.py: more).
    env = {**system.env, "DICOM_ASSOCIATIONS_PER_PROCESS": "1"}
    scp, port = start_scp(env, system.logs, name="runscp-spare")
    try:
        # start_scp's readiness probe was an association: its process may still be ending,
        # and its replacement be forked once it has.
        def spares_only():
            children = procs.children(scp.pid)
            return [procs.name(pid) for pid in children] == [SPARE_NAME] * settings.DICOM_SPARE_PROCESSES

        procs.wait_for(spares_only, 30, "the probe's process to end and a spare in its place")
        spares = set(procs.children(scp.pid))
        result = storescu(port, *dicomgen.ct_series(tmp_path / "ct", 2, size=32, patient_id="SPARE"))
        assert result.returncode == 0, result.stderr
        # One spare served that association; another took its place, and they wait in turn.
        waiting = procs.wait_for(
            lambda: [p for p in procs.children(scp.pid) if procs.name(p) == SPARE_NAME and p not in spares] or None,
            30,
            "a new spare",
        )
        assert len(waiting) == 1
        (served,) = spares - set(procs.children(scp.pid, but=ASSOCIATION_NAME))
        assert procs.name(served) in (ASSOCIATION_NAME, "")  # still ending, or gone
        assert (
            len([p for p in procs.children(scp.pid) if procs.name(p) == SPARE_NAME]) == settings.DICOM_SPARE_PROCESSES
        )
    finally:
        scp.terminate()
        assert scp.wait(60) == 0
    assert not procs.children(scp.pid)
    assert not procs.port_open(port), "an idle spare does not keep the port open"


def _files_on_disk_for(files):
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    return [u for u in uids if storage.absolute(storage.instance_relpath(u)).exists()]


def test_files_stored_while_the_broker_is_down_are_indexed_by_reindex(system, tmp_path):
    from django.core.management import call_command

    dead_broker = f"redis://127.0.0.1:{procs.free_port()}/0"
    receive = system.env.get("DICOM_FAST_RECEIVE", "1")
    scp, port = start_scp(service_env(dead_broker, DICOM_FAST_RECEIVE=receive), system.logs, name="runscp-nobroker")
    try:
        files = dicomgen.ct_series(tmp_path / "ct", 5, size=64, patient_id="NOBROKER")
        result = storescu(port, *files)
        assert result.returncode == 0, result.stderr
        assert len(_files_on_disk_for(files)) == 5
    finally:
        procs.stop(scp)
    assert "`manage.py reindex` will index them" in (system.logs / "runscp-nobroker.log").read_text()
    assert not Patient.objects.filter(patient_id="NOBROKER").exists()

    out = io.StringIO()
    call_command("reindex", stdout=out)
    assert Study.objects.get(patient__patient_id="NOBROKER").number_of_instances == 5
    assert "5 file(s) seen, 5 indexed, 0 failed" in out.getvalue()


@pytest.fixture(autouse=True, scope="module")
def _dcmtk_installed():
    for tool in ("storescu", "echoscu"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (make test installs dcmtk)")


@pytest.mark.parametrize("event_driven", ["0", "1"])
def test_pynetdicoms_own_loops_and_the_event_driven_ones_store_alike(system, tmp_path, event_driven):
    env = {**system.env, "DICOM_EVENT_DRIVEN_LOOPS": event_driven}
    scp, port = start_scp(env, system.logs, name=f"runscp-loops{event_driven}")
    try:
        files = dicomgen.ct_series(tmp_path / "ct", 20, size=64, patient_id=f"LOOPS{event_driven}")
        result = storescu(port, *files)
        assert result.returncode == 0, result.stderr
        assert len(_files_on_disk_for(files)) == 20
        assert echoscu(port).returncode == 0
    finally:
        assert procs.stop(scp) == 0
