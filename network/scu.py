"""We as the client: echo a node, send a study to a node.

Plain functions that tests call directly; the admin action and the Celery task
are thin shells around them. We always associate with our own AE title
(DICOM_AE_TITLE) as calling AE and the node's AE title as called AE.
"""

import io
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import pydicom
from django.conf import settings
from django.utils import timezone
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from imaging import rewrite, storage
from network import fastsend, reactor, sendguard
from network.models import ModalityNode, SendJob

log = logging.getLogger(__name__)

# A file sent as stored goes from disk to the socket in fragments, never decoded
# and re-encoded: the receiver gets the bytes we received.
_config.STORE_SEND_CHUNKED_DATASET = True

# PS3.8 9.3.2.2: at most 128 presentation contexts in one association request.
MAX_CONTEXTS = 128
UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
# C-STORE warnings (PS3.4 B.2.3): the image was stored, perhaps with coercion.
WARNING_STATUSES = {0xB000, 0xB006, 0xB007}


@dataclass
class EchoResult:
    ok: bool
    status: int | None = None
    round_trip_ms: float | None = None
    error: str = ""


class _ThreadLog(logging.Handler):
    """Collects pynetdicom's error lines, to tell the administrator why a connection failed.

    pynetdicom reports a refused connection only in its log, from the association's
    own thread; the caller keeps the lines of that thread (``for_thread``).
    """

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def for_thread(self, ident) -> list[str]:
        return [r.getMessage() for r in self.records if r.thread == ident]


def _ae(timeout: float | None = None) -> AE:
    """Our AE as a client: every timeout ``timeout`` seconds, or each its own setting."""
    ae = AE(ae_title=settings.DICOM_AE_TITLE)
    ae.connection_timeout = timeout or settings.DICOM_ACSE_TIMEOUT
    ae.acse_timeout = timeout or settings.DICOM_ACSE_TIMEOUT
    ae.dimse_timeout = timeout or settings.DICOM_DIMSE_TIMEOUT
    ae.network_timeout = timeout or settings.DICOM_NETWORK_TIMEOUT
    return ae


def _associate(ae: AE, node: ModalityNode):
    """Associate with ``node``; returns (association, why it failed or "")."""
    capture = _ThreadLog()
    pynetdicom_log = logging.getLogger("pynetdicom")
    pynetdicom_log.addHandler(capture)
    try:
        assoc = ae.associate(node.host, node.port, ae_title=node.ae_title)
    except OSError as exc:  # the host name does not resolve
        return None, f"cannot connect to {node.host}:{node.port}: {exc}"
    finally:
        pynetdicom_log.removeHandler(capture)
    if assoc.is_established:
        if settings.DICOM_EVENT_DRIVEN_LOOPS:
            reactor.install_outgoing(assoc)
        sendguard.bound_writes(assoc)
        return assoc, ""
    where = f"{node.ae_title} at {node.host}:{node.port}"
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return assoc, f"{where} rejected the association: {rj.reason_str} ({rj.result_str}, {rj.source_str})"
    lines = capture.for_thread(assoc.dul.ident if assoc.dul else threading.get_ident())
    tcp = [line.split(":", 1)[1].strip() for line in lines if line.startswith("TCP Initialisation Error")]
    if tcp:
        return assoc, f"cannot connect to {node.host}:{node.port}: {tcp[0]}"
    if any("No accepted presentation contexts" in line for line in lines):
        return assoc, f"{where} accepted none of the proposed presentation contexts"
    if any("timeout" in line.lower() for line in lines):
        return assoc, f"{where} did not answer the association request in time"
    return assoc, f"{where} aborted the association" if assoc.is_aborted else f"no association with {where}"


def echo_node(node: ModalityNode, timeout: float = 5) -> EchoResult:
    """C-ECHO ``node``; the round trip is that of the C-ECHO request and response."""
    ae = _ae(timeout)
    ae.add_requested_context(Verification)
    assoc, error = _associate(ae, node)
    if error:
        return EchoResult(ok=False, error=error)
    try:
        started = time.perf_counter()
        rsp = assoc.send_c_echo()
        round_trip_ms = (time.perf_counter() - started) * 1000
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in rsp:
        return EchoResult(ok=False, error="no C-ECHO response (timeout or aborted association)")
    ok = rsp.Status == 0x0000
    return EchoResult(
        ok=ok,
        status=rsp.Status,
        round_trip_ms=round_trip_ms,
        error="" if ok else f"C-ECHO answered with status 0x{rsp.Status:04X}",
    )


def _context_batches(pairs: set[tuple[str, str]]) -> list[list[tuple[str, list[str]]]]:
    """Presentation contexts for (SOP class, stored transfer syntax) pairs, in batches of at most 128.

    Each SOP class gets one context offering both uncompressed syntaxes (what every
    SCP accepts) and one per other stored syntax, alone, so that the SCP can say
    yes to it without that yes displacing the uncompressed fallback.
    """
    by_class: dict[str, set[str]] = defaultdict(set)
    for sop_class, ts in pairs:
        by_class[sop_class].add(ts)
    batches: list[list[tuple[str, list[str]]]] = [[]]
    for sop_class in sorted(by_class):
        contexts = [(sop_class, list(UNCOMPRESSED))]
        contexts += [(sop_class, [ts]) for ts in sorted(by_class[sop_class] - set(UNCOMPRESSED))]
        if len(batches[-1]) + len(contexts) > MAX_CONTEXTS:
            batches.append([])
        batches[-1].extend(contexts)
    return [b for b in batches if b]


def accepted_syntaxes(assoc, sop_class: str) -> set[str]:
    """Transfer syntaxes in which we may send ``sop_class`` (as SCU: C-GET sub-operations need the role)."""
    return {cx.transfer_syntax[0] for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class and cx.as_scu}


class CannotSend(Exception):
    pass


def payload(instance, accepted: set[str]):
    """What to give ``send_c_store`` for a stored instance: its path (sent as stored), the corrected
    file in memory (a memoryview of a whole Part 10 file, in the stored syntax) or a data set.

    The path when the peer accepts the stored transfer syntax (the bytes go from disk
    to the socket, never decoded); otherwise the decompressed data set, which
    pynetdicom encodes in Explicit or Implicit VR Little Endian. An instance marked
    by ``rewrite.mark_pending`` (``corrected_at`` set: a correction's job has not
    rewritten its file yet) goes out with the corrected values, either way. Raises
    ``CannotSend``.
    """
    path = storage.absolute(instance.file_path)
    if not path.is_file():
        raise CannotSend(f"file missing: {instance.file_path}")
    stored_ts = UID(instance.transfer_syntax_uid)
    if stored_ts not in accepted and not accepted & set(UNCOMPRESSED):
        raise CannotSend(f"the node accepts neither {stored_ts.name} nor an uncompressed syntax for this SOP class")
    at = getattr(instance, "corrected_at", None)
    corrected = rewrite.outgoing_file(instance.pk, at=at) if at is not None else None
    if stored_ts in accepted:
        return path if corrected is None else corrected
    ds = pydicom.dcmread(path if corrected is None else io.BytesIO(corrected))
    if stored_ts.is_compressed:
        # The same instance in another encoding, so the same SOP Instance UID; the result
        # is Explicit VR Little Endian, which pynetdicom converts to Implicit if need be.
        ds.decompress(generate_instance_uid=False)
    elif not stored_ts.is_little_endian:
        raise CannotSend(f"{stored_ts.name} is not accepted and is not converted")
    return ds


@dataclass(frozen=True)
class StoreResult:
    status: int | None  # None: no response (timeout, aborted association)
    comment: str = ""

    @property
    def stored(self) -> bool:
        return self.status is not None and (self.status == 0x0000 or self.status in WARNING_STATUSES)


def send_stored(assoc, instance, **kwargs) -> StoreResult:
    """C-STORE one stored instance: as stored when the peer accepts that, else decompressed.

    ``kwargs`` are ``send_c_store``'s (msg_id, originator_aet, originator_id). Raises
    ``CannotSend`` (the association aborted when the peer cannot take images:
    ``sendguard.refusal``), or what the connection raises. No response, or one to
    another request, is ``StoreResult(None)`` and ends the association.
    """
    if not assoc.is_established:
        raise CannotSend(f"the association ended: {sendguard.refused(assoc) or 'aborted or released'}")
    why = sendguard.refusal(assoc)
    if why:
        sendguard.refuse(assoc, why)
        raise CannotSend(f"not sent: {why}")
    accepted = accepted_syntaxes(assoc, instance.sop_class_uid)
    data = payload(instance, accepted)
    if not fastsend.usable(assoc):
        result = _pynetdicom_send(assoc, instance, data, **kwargs)
    else:
        result = _fast_send(assoc, instance, data, accepted, **kwargs)
    if result.status is None:
        # No response within the DIMSE timeout (pynetdicom aborted), or the connection
        # went (pynetdicom leaves the association up, and each further image would wait too).
        sendguard.refuse(assoc, f"no valid C-STORE response for {instance.sop_instance_uid}")
    return result


def _pynetdicom_send(assoc, instance, data, **kwargs) -> StoreResult:
    """pynetdicom's C-STORE, and a check that the response it took answers this request."""
    if isinstance(data, memoryview):  # a corrected file: pynetdicom sends a path or a data set
        data = pydicom.dcmread(io.BytesIO(data))
    received = sendguard.watch_responses(assoc)
    received.clear()
    rsp = assoc.send_c_store(data, **kwargs)
    if "Status" not in rsp:
        return StoreResult(None)
    # The response send_c_store took is the first message received since: EVT_DIMSE_RECV
    # comes before the message is queued. None received: it took one that came before.
    message = received[0] if received else ("an earlier message", None, "")
    wrong = sendguard.unexpected(*message, msg_id=kwargs.get("msg_id", 1), expected_instance=instance.sop_instance_uid)
    if wrong:
        sendguard.refuse(assoc, wrong)
        return StoreResult(None)
    return StoreResult(rsp.Status, str(rsp.get("ErrorComment", "") or ""))


def _fast_send(assoc, instance, data, accepted, **kwargs) -> StoreResult:
    if isinstance(data, Dataset):
        syntax = ExplicitVRLittleEndian if ExplicitVRLittleEndian in accepted else ImplicitVRLittleEndian
    else:
        syntax = instance.transfer_syntax_uid
    status, comment = fastsend.send_c_store(
        assoc,
        data,
        transfer_syntax=syntax,
        sop_class=instance.sop_class_uid,
        sop_instance=instance.sop_instance_uid,
        **kwargs,
    )
    return StoreResult(status, comment)


def _send_one(assoc, instance) -> tuple[bool, str, str]:
    """Send one stored instance; returns (stored, status, error)."""
    try:
        result = send_stored(assoc, instance)
    except CannotSend as exc:
        return False, "", str(exc)
    if result.status is None:
        return False, "", "no C-STORE response (timeout or aborted association)"
    status = f"0x{result.status:04X}"
    if result.stored:
        return True, status, ""
    return False, status, result.comment or "failure status"


def send_study(study_id: int, node_id: int, job_id: int, timeout: float | None = None) -> SendJob:
    """Send every instance of a study to a node, recording the outcome in the SendJob.

    Never raises for what the network or the node does: a node that is down, a
    rejected association or a refused image end up in the job.
    """
    from records.models import Instance

    job = SendJob.objects.get(pk=job_id)
    job.state, job.started_at, job.finished_at = SendJob.State.RUNNING, timezone.now(), None
    job.sent = job.failed = 0
    job.failures, job.error = [], ""
    instances = list(
        Instance.objects.filter(series__study_id=study_id)
        .only("sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "file_path")
        .order_by("series__series_number", "series_id", "instance_number", "id")
    )
    job.total = len(instances)
    job.save()
    try:
        rewrite.mark_pending(instances)  # one query: which go out corrected, their files not rewritten yet
        node = ModalityNode.objects.get(pk=node_id)
        for batch in _context_batches({(i.sop_class_uid, i.transfer_syntax_uid) for i in instances}):
            ae = _ae(timeout)
            for sop_class, syntaxes in batch:
                ae.add_requested_context(sop_class, syntaxes)
            classes = {sop_class for sop_class, _ in batch}
            _send_batch(job, ae, node, [i for i in instances if i.sop_class_uid in classes])
    except Exception as exc:  # the job must end in a state, whatever happened
        log.exception("send job %s failed", job.pk)
        job.error = f"{type(exc).__name__}: {exc}"[:500]
    unsent = job.total - job.sent - job.failed
    if unsent and not job.error:
        job.error = f"{unsent} image(s) not attempted"
    if job.failed == 0 and unsent == 0:
        job.state = SendJob.State.SUCCEEDED
    else:
        job.state = SendJob.State.PARTIAL if job.sent else SendJob.State.FAILED
    job.finished_at = timezone.now()
    job.save()
    return job


def _send_batch(job: SendJob, ae: AE, node: ModalityNode, instances) -> None:
    assoc, error = _associate(ae, node)
    if error:
        job.error = error[:500]
        _fail(job, instances, "", error)
        return
    try:
        for n, instance in enumerate(instances):
            if not assoc.is_established:
                why = sendguard.refused(assoc)
                if why and not job.error:
                    job.error = f"association with {node} aborted: {why}"[:500]
                error = "association ended before this image was sent" + (f": {why}" if why else "")
                _fail(job, instances[n:], "", error)
                return
            try:
                ok, status, err = _send_one(assoc, instance)
            except (OSError, ValueError, AttributeError, RuntimeError, NotImplementedError) as exc:
                ok, status, err = False, "", f"{type(exc).__name__}: {exc}"
            if ok:
                job.sent += 1
            else:
                _fail(job, [instance], status, err)
            if n % 20 == 19:
                job.save(update_fields=["sent", "failed", "failures"])
    finally:
        if assoc.is_established:
            assoc.release()
        elif sendguard.refused(assoc) and not job.error:
            job.error = f"association with {node} aborted: {sendguard.refused(assoc)}"[:500]
        job.save(update_fields=["sent", "failed", "failures"])


def _fail(job: SendJob, instances, status: str, error: str) -> None:
    job.failed += len(instances)
    job.failures.extend({"sop_instance_uid": i.sop_instance_uid, "status": status, "error": error} for i in instances)
