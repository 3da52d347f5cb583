"""C-MOVE and C-GET, the parts that are not DIMSE plumbing (PS3.4 Annex C.4.2, C.4.3).

Which instances an identifier names is ``network.query.retrieve_instances``.

- ``storage_contexts``: what to propose to a C-MOVE destination: per SOP class,
  the uncompressed syntaxes and each stored syntax on its own.
- ``Outgoing`` and ``install_sender``: pynetdicom's retrieve loops send what the
  handler yields with ``send_c_store`` and accept only a Dataset. A handler
  yields an ``Outgoing`` (SOP Class/Instance UIDs only); the association's
  ``send_c_store`` is wrapped to turn it into the stored file itself (sent as
  stored, from disk to socket) or the decompressed data set, whichever the peer
  accepted, and to count what was sent in the association's session. A file whose
  correction's rewrite is pending goes out corrected, from memory (``scu.payload``).
"""

import logging
import math
import time

from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dimse_primitives import C_GET, C_MOVE
from pynetdicom.presentation import build_context

from network import access, query, scu, sendguard
from network.models import ModalityNode

log = logging.getLogger(__name__)

# C-MOVE / C-GET statuses (PS3.4 C.4.2.1.5, C.4.3.1.4; PS3.7 C).
PENDING = 0xFF00
CANCEL = 0xFE00


def root_of(sop_class: str) -> str:
    """Patient Root or Study Root, from the C-MOVE/C-GET request's Affected SOP Class UID."""
    return query.PATIENT_ROOT if UID(sop_class).keyword.startswith("PatientRoot") else query.STUDY_ROOT


def destination(ae_title: str | None) -> ModalityNode | None:
    """The C-MOVE destination: an active node that may retrieve, or None (0xA801)."""
    if not ae_title:
        return None
    return ModalityNode.objects.filter(ae_title=ae_title.strip(), active=True, may_retrieve=True).first()


def storage_contexts(instances) -> list:
    """Presentation contexts for a C-MOVE sub-association, at most 128 (PS3.8 9.3.2.2).

    Per SOP class one context with both uncompressed syntaxes, so every image can
    go decompressed, then one per other stored syntax, alone, so that the
    destination may accept it without displacing the fallback. Should there be
    too many classes, the contexts for sending compressed images as stored give way.
    """
    by_class: dict[str, set[str]] = {}
    for instance in instances:
        by_class.setdefault(instance.sop_class_uid, set()).add(instance.transfer_syntax_uid)
    contexts = [build_context(sop_class, list(scu.UNCOMPRESSED)) for sop_class in sorted(by_class)]
    for sop_class in sorted(by_class):
        for ts in sorted(by_class[sop_class] - set(scu.UNCOMPRESSED)):
            contexts.append(build_context(sop_class, [ts]))
    if len(contexts) > scu.MAX_CONTEXTS:
        log.warning("%d SOP classes in one retrieve: some cannot be proposed", len(by_class))
    return contexts[: scu.MAX_CONTEXTS]


class Outgoing(Dataset):
    """What a retrieve handler yields for one stored instance: the row to send, and its UIDs.

    pynetdicom reads only SOPInstanceUID of it (to list a failed sub-operation):
    the UIDs are read from the row, not set as elements, which costs pydicom's
    validation for every image.
    """

    def __init__(self, instance):
        super().__init__()
        self.__dict__["stored"] = instance

    def __bool__(self) -> bool:
        # pynetdicom sends only a data set that is true; a Dataset without elements is not.
        return True

    @property
    def SOPClassUID(self):  # noqa: N802 - a DICOM keyword
        return UID(self.stored.sop_class_uid)

    @property
    def SOPInstanceUID(self):  # noqa: N802 - a DICOM keyword
        return UID(self.stored.sop_instance_uid)


# What we tell pynetdicom's retrieve loops of a sub-operation that got no status from
# the peer (not sent, no response): any C-STORE failure status (PS3.4 B.2.3) makes
# it count the sub-operation as failed and list its SOP Instance UID; only the
# counts and the list reach the requester. Raising would do the same with two log
# lines of pynetdicom's for every image, hundreds after one abort.
NOT_STORED = 0xA700


class _SubOperationStatus:
    """What pynetdicom's retrieve loops read of a C-STORE sub-operation's response: its Status."""

    def __init__(self, status: int | None):
        self.Status = NOT_STORED if status is None else status


def install_sender(assoc, session: access.Session | None) -> None:
    """Make ``assoc.send_c_store`` send ``Outgoing`` instances, and count each result in ``session``.

    For C-GET, ``assoc`` is the requester's association; for C-MOVE, the one we open to
    the destination. Anything else given to ``send_c_store`` goes through untouched.
    Its writes are bounded (``sendguard.bound_writes``).
    """
    if getattr(assoc, "imaging_sender", False):
        return
    sendguard.bound_writes(assoc)
    send_c_store = assoc.send_c_store

    def send(dataset, *args, **kwargs):
        if not isinstance(dataset, Outgoing):
            return send_c_store(dataset, *args, **kwargs)
        instance = dataset.stored
        try:
            result = scu.send_stored(assoc, instance, **kwargs)
        except (scu.CannotSend, OSError) as exc:
            if session is not None:
                session.failures += 1
            if not sendguard.refused(assoc):  # an association we ended had its one log line
                log.warning("cannot send %s: %s", instance.sop_instance_uid, exc)
            return _SubOperationStatus(None)
        except Exception as exc:  # pynetdicom counts it as a failed sub-operation and lists the UID
            if session is not None:
                session.failures += 1
            log.warning("cannot send %s: %s", instance.sop_instance_uid, exc)
            raise
        if session is not None:
            if result.stored:
                session.images_sent += 1
            else:
                session.failures += 1
        return _SubOperationStatus(result.status)

    assoc.send_c_store = send
    assoc.imaging_sender = True


class _Responses:
    """The C-MOVE/C-GET responses pynetdicom sends on one association, adjusted before they leave.

    - A refused request (``refuse``) gets its final response with the refusal's
      status instead of pynetdicom's Success.
    - Pending responses (optional, PS3.4 C.4.2.3 and C.4.3.3) leave at most every
      ``DICOM_RETRIEVE_PENDING_INTERVAL_MS``: the first at once, the final one always.
    """

    def __init__(self, dimse):
        self._refusals: dict[int, int] = {}  # Message ID -> status
        self._last_pending: dict[int, float] = {}  # Message ID -> when
        self._interval = settings.DICOM_RETRIEVE_PENDING_INTERVAL_MS / 1000
        self._send_msg = dimse.send_msg

    def refuse(self, message_id: int, status: int) -> None:
        self._refusals[message_id] = status

    def send_msg(self, primitive, context_id) -> None:
        if isinstance(primitive, (C_MOVE, C_GET)) and primitive.MessageIDBeingRespondedTo is not None:
            message_id = primitive.MessageIDBeingRespondedTo
            if message_id in self._refusals:
                primitive.Status = self._refusals.pop(message_id)
            elif primitive.Status == PENDING and primitive.Identifier is None:
                now = time.monotonic()
                if now - self._last_pending.get(message_id, -math.inf) < self._interval:
                    return
                self._last_pending[message_id] = now
            else:
                self._last_pending.pop(message_id, None)
        self._send_msg(primitive, context_id)


def responses(assoc) -> _Responses:
    """The response adjuster of ``assoc`` (the requester's association), installed on first use."""
    dimse = assoc.dimse
    adjuster = getattr(dimse, "imaging_responses", None)
    if adjuster is None:
        adjuster = dimse.imaging_responses = _Responses(dimse)
        dimse.send_msg = adjuster.send_msg
    return adjuster


def sub_operations(event, instances):
    """The (status, data set) pairs a retrieve handler yields: one per instance, or Cancel."""
    responses(event.assoc)
    for instance in instances:
        if event.is_cancelled:
            # 0xFE00 Cancel: pynetdicom reports the remaining and failed counts.
            yield CANCEL, None
            return
        yield PENDING, Outgoing(instance)
