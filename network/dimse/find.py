"""C-FIND SCP: a thin shell over network/query.py (PS3.4 Annex C)."""

import logging
from collections.abc import Callable, Iterator

from django.conf import settings
from pydicom.dataset import Dataset

from network import access, query, reactor
from network.dimse.association import session_of, session_permits

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCELLED = 0xFE00  # C-CANCEL received: matching terminated
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the database failed us

# Which information model each supported SOP class queries.
MODELS = {
    "1.2.840.10008.5.1.4.1.2.1.1": query.PATIENT_ROOT,  # PatientRootQueryRetrieveInformationModelFind
    "1.2.840.10008.5.1.4.1.2.2.1": query.STUDY_ROOT,  # StudyRootQueryRetrieveInformationModelFind
}


def handle_find(event):
    """EVT_C_FIND handler: yields (status, identifier) pairs; never raises."""

    def cancelled() -> bool:
        # A few responses ahead of the network at most: a C-CANCEL read meanwhile is
        # seen here, and a large result does not pile up in memory.
        reactor.wait_until_sent(event.assoc, most=8, timeout=settings.DICOM_DIMSE_TIMEOUT)
        return event.is_cancelled

    yield from find_responses(
        session=session_of(event.assoc),
        calling_ae=event.assoc.requestor.ae_title.strip(),
        sop_class=str(event.request.AffectedSOPClassUID),
        identifier=lambda: event.identifier,
        implicit_vr=event.context.transfer_syntax.is_implicit_VR,
        cancelled=cancelled,
    )


def find_responses(
    *,
    session: access.Session | None,
    calling_ae: str,
    sop_class: str,
    identifier: Callable[[], Dataset],
    implicit_vr: bool,
    cancelled: Callable[[], bool],
) -> Iterator[tuple[int, Dataset | None]]:
    """A C-FIND's (status, identifier) responses, the last one final; never raises.

    Both receive paths answer with it: pynetdicom's (``handle_find``) and ours
    (network/fastrecv.py). ``identifier`` decodes the request's identifier (and
    raises if it cannot); ``cancelled`` is asked before each match, and may wait
    for the network meanwhile; ``implicit_vr``, the transfer syntax the matches
    will be written in.
    """
    if not session_permits(session, calling_ae, "C-FIND", "may_query"):
        yield access.NOT_AUTHORIZED, None
        return
    model = MODELS.get(sop_class)
    # As for stored images: the node's character set for identifiers that declare none.
    node = session.node if session is not None else None
    fallback = (node.fallback_charset if node is not None else "") or settings.DICOM_FALLBACK_CHARSET
    try:
        decoded = identifier()
    except Exception as exc:
        if session is not None:
            session.failures += 1
        log.warning("C-FIND from %s refused (0x%04X): identifier cannot be decoded: %s", calling_ae, 0xC000, exc)
        yield query.UNABLE_TO_PROCESS, None
        return
    try:
        parsed = query.parse(decoded, model=model or query.STUDY_ROOT, fallback_charset=fallback)
        for match in query.results(parsed, implicit_vr=implicit_vr):
            if cancelled():
                log.info("C-FIND from %s cancelled", calling_ae)
                yield CANCELLED, None
                return
            yield PENDING, match
    except query.QueryError as exc:
        if session is not None:
            session.failures += 1
        log.warning("C-FIND from %s refused (0x%04X): %s", calling_ae, exc.status, exc.reason)
        yield exc.status, None
        return
    except Exception:
        if session is not None:
            session.failures += 1
        log.exception("C-FIND from %s failed", calling_ae)
        yield OUT_OF_RESOURCES, None
        return
    yield SUCCESS, None
