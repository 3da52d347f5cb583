"""Sending a study to a node: a real DCMTK storescp receives what network.scu.send_study sends."""

import shutil

import pydicom
import pytest
from django.urls import reverse
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from imaging import ingest, storage
from network import fastsend, scu, tasks
from network.models import ModalityNode, SendJob
from records.models import Study
from tests import procs
from tests.storescp import storescp

pytestmark = pytest.mark.django_db

STUDY_UID = "1.2.826.0.1.3680043.8.498.7001"
TRAILING_PADDING = 0xFFFCFFFC
UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def store_and_index(name: str) -> str:
    """Put a pydicom test file into the store as if received, in one study; returns its SOP Instance UID."""
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID = STUDY_UID
    ds.PatientID = "SEND01"
    relpath = storage.instance_relpath(ds.SOPInstanceUID)
    storage.absolute(relpath).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(storage.absolute(relpath))
    done, failed = ingest.index_files([relpath])
    assert done and not failed
    return ds.SOPInstanceUID


@pytest.fixture
def study():
    uids = {name: store_and_index(name) for name in ("CT_small.dcm", "MR_small_RLE.dcm")}
    yield Study.objects.get(study_instance_uid=STUDY_UID), uids
    shutil.rmtree(storage.root() / storage.INSTANCES, ignore_errors=True)


def received(out_dir) -> dict[str, tuple[pydicom.Dataset, object]]:
    """What storescp wrote: {SOP Instance UID: (data set, path)}."""
    found = {}
    for path in out_dir.iterdir():
        ds = pydicom.dcmread(path)
        found[ds.SOPInstanceUID] = (ds, path)
    return found


def make_job(study, node) -> SendJob:
    return SendJob.objects.create(
        study=study, study_instance_uid=study.study_instance_uid, node=node, destination=str(node)
    )


# Our own C-STORE writing (network/fastsend.py), and pynetdicom's with DICOM_FAST_SEND=0.
both_senders = pytest.mark.parametrize("fast_send", [True, False], ids=["fastsend", "pynetdicom"])


@both_senders
def test_it_sends_compressed_images_as_stored_to_a_node_that_accepts_them(
    study, tmp_path, settings, monkeypatch, fast_send
):
    settings.DICOM_FAST_SEND = fast_send
    ours, written = fastsend.send_c_store, []
    monkeypatch.setattr(fastsend, "send_c_store", lambda *a, **kw: written.append(1) or ours(*a, **kw))
    study, uids = study
    with storescp(tmp_path / "in", tmp_path / "storescp.log", "+xa") as port:
        node = ModalityNode.objects.create(ae_title="TARGET", host="127.0.0.1", port=port)
        job = scu.send_study(study.pk, node.pk, make_job(study, node).pk)
    assert (job.state, job.total, job.sent, job.failed, job.failures) == ("succeeded", 2, 2, 0, [])
    assert len(written) == (2 if fast_send else 0)
    got = received(tmp_path / "in")
    assert set(got) == set(uids.values())
    rle, _ = got[uids["MR_small_RLE.dcm"]]
    assert rle.file_meta.TransferSyntaxUID == RLELossless
    # The data set arrived as we stored it, pixel data bytes and all. (storescp drops
    # Data Set Trailing Padding when it writes the file, so that one element is set aside.)
    ours = pydicom.dcmread(storage.absolute(storage.instance_relpath(uids["MR_small_RLE.dcm"])))
    del ours[TRAILING_PADDING]
    assert TRAILING_PADDING not in rle and rle == ours
    assert rle.PixelData == ours.PixelData
    assert got[uids["CT_small.dcm"]][0].file_meta.TransferSyntaxUID in UNCOMPRESSED
    assert job.finished_at >= job.started_at


@both_senders
def test_it_decompresses_for_a_node_that_accepts_only_uncompressed_images(study, tmp_path, settings, fast_send):
    settings.DICOM_FAST_SEND = fast_send
    study, uids = study
    with storescp(tmp_path / "in", tmp_path / "storescp.log") as port:
        node = ModalityNode.objects.create(ae_title="TARGET", host="127.0.0.1", port=port)
        job = scu.send_study(study.pk, node.pk, make_job(study, node).pk)
    assert (job.state, job.sent, job.failed) == ("succeeded", 2, 0)
    got = received(tmp_path / "in")
    assert set(got) == set(uids.values())
    mr, _ = got[uids["MR_small_RLE.dcm"]]
    assert mr.file_meta.TransferSyntaxUID in UNCOMPRESSED
    original = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    assert (mr.pixel_array == original.pixel_array).all()


def test_a_node_that_is_down_gives_a_failed_job_not_an_exception(study):
    study, uids = study
    node = ModalityNode.objects.create(ae_title="TARGET", host="127.0.0.1", port=procs.free_port())
    job = scu.send_study(study.pk, node.pk, make_job(study, node).pk, timeout=5)
    assert (job.state, job.sent, job.failed) == ("failed", 0, 2)
    assert "cannot connect to 127.0.0.1" in job.error and "refused" in job.error
    assert {f["sop_instance_uid"] for f in job.failures} == set(uids.values())


def test_a_node_that_rejects_the_association_gives_a_failed_job(study):
    study, _ = study
    # A pynetdicom SCP that knows itself as OTHER and insists on being called so.
    scp_ae = AE(ae_title="OTHER")
    scp_ae.require_called_aet = True
    scp_ae.add_supported_context(CTImageStorage)
    port = procs.free_port()
    server = scp_ae.start_server(("127.0.0.1", port), block=False)
    try:
        node = ModalityNode.objects.create(ae_title="TARGET", host="127.0.0.1", port=port)
        job = scu.send_study(study.pk, node.pk, make_job(study, node).pk)
    finally:
        server.shutdown()
    assert (job.state, job.sent, job.failed) == ("failed", 0, 2)
    assert "rejected the association" in job.error and "Called AE title not recognised" in job.error


def send_action(admin_client, study, capture=None, **extra):
    data = {"action": "send_to_node", "_selected_action": [study.pk], **extra}
    if capture is None:
        return admin_client.post(reverse("admin:records_study_changelist"), data)
    # The jobs are queued once their rows are committed.
    with capture(execute=True):
        return admin_client.post(reverse("admin:records_study_changelist"), data)


def test_the_study_action_offers_only_active_nodes_that_may_retrieve(admin_client, study):
    study, _ = study
    ModalityNode.objects.create(ae_title="WORKSTATION", host="127.0.0.1", port=104)
    ModalityNode.objects.create(ae_title="CT_ONLY_STORES", host="127.0.0.1", port=105, may_retrieve=False)
    ModalityNode.objects.create(ae_title="RETIRED", host="127.0.0.1", port=106, active=False)
    page = send_action(admin_client, study)
    assert page.status_code == 200
    html = page.content.decode()
    assert "WORKSTATION" in html and "CT_ONLY_STORES" not in html and "RETIRED" not in html
    assert not SendJob.objects.exists()


def test_the_study_action_queues_one_job_per_study(
    admin_client, admin_user, study, monkeypatch, django_capture_on_commit_callbacks
):
    study, _ = study
    node = ModalityNode.objects.create(ae_title="WORKSTATION", host="127.0.0.1", port=104)
    queued = []
    monkeypatch.setattr(tasks.send_study, "delay", lambda *args: queued.append(args))
    response = send_action(admin_client, study, django_capture_on_commit_callbacks, apply="Send", node=node.pk)
    assert response.status_code == 302
    job = SendJob.objects.get()
    assert (job.study, job.node, job.requested_by, job.state, job.total) == (study, node, admin_user, "queued", 2)
    assert queued == [(study.pk, node.pk, job.pk)]


def test_a_job_that_cannot_be_queued_says_so(admin_client, study, monkeypatch, django_capture_on_commit_callbacks):
    study, _ = study
    node = ModalityNode.objects.create(ae_title="WORKSTATION", host="127.0.0.1", port=104)

    def broker_down(*args):
        raise ConnectionRefusedError("[Errno 111] Connection refused")

    monkeypatch.setattr(tasks.send_study, "delay", broker_down)
    response = send_action(admin_client, study, django_capture_on_commit_callbacks, apply="Send", node=node.pk)
    assert response.status_code == 302
    job = SendJob.objects.get()
    assert job.state == "failed" and "could not be queued" in job.error
