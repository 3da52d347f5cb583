"""C-FIND SCP: a thin shell over network/query.py (PS3.4 Annex C)."""

import logging

from django.conf import settings

from network import access, query, reactor
from network.dimse.association import permitted, session_of

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
    calling_ae = event.assoc.requestor.ae_title.strip()
    if not permitted(event, "C-FIND", "may_query"):
        yield access.NOT_AUTHORIZED, None
        return
    session = session_of(event.assoc)
    model = MODELS.get(str(event.request.AffectedSOPClassUID))
    # As for stored images: the node's character set for identifiers that declare none.
    node = session.node if session is not None else None
    fallback = (node.fallback_charset if node is not None else "") or settings.DICOM_FALLBACK_CHARSET
    try:
        identifier = event.identifier
    except Exception as exc:
        if session is not None:
            session.failures += 1
        log.warning("C-FIND from %s refused (0x%04X): identifier cannot be decoded: %s", calling_ae, 0xC000, exc)
        yield query.UNABLE_TO_PROCESS, None
        return
    try:
        parsed = query.parse(identifier, model=model or query.STUDY_ROOT, fallback_charset=fallback)
        implicit_vr = event.context.transfer_syntax.is_implicit_VR
        for match in query.results(parsed, implicit_vr=implicit_vr):
            # A few responses ahead of the network at most: a C-CANCEL read meanwhile is
            # seen here, and a large result does not pile up in memory.
            reactor.wait_until_sent(event.assoc, most=8, timeout=settings.DICOM_DIMSE_TIMEOUT)
            if event.is_cancelled:
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
