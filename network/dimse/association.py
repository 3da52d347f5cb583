"""Association requests: who is calling, may they, and the log of it; what a retrieve may take."""

import logging

from imaging import rewrite
from network import access, query, retrieve

log = logging.getLogger(__name__)

# Rejected-transient, service-user, no reason given: we could not decide (database down).
REJECT_TRANSIENT = (0x02, 0x01, 0x01)
# C-MOVE/C-GET: Out of resources, unable to calculate number of matches (PS3.4 C.4.2.1.5): the database failed us.
CANNOT_CALCULATE_MATCHES = 0xA701


def session_of(assoc) -> access.Session | None:
    return getattr(assoc, "imaging_session", None)


def permitted(event, service: str, permission: str) -> bool:
    """Record that ``service`` was used; False (failure counted and logged) if the node may not use it."""
    return session_permits(session_of(event.assoc), event.assoc.requestor.ae_title.strip(), service, permission)


def session_permits(session: access.Session | None, calling_ae: str, service: str, permission: str) -> bool:
    """``permitted`` for an association's session (network/fastrecv.py has no pynetdicom event)."""
    if session is None:
        return True
    session.services.add(service)
    if session.allows(permission):
        return True
    session.failures += 1
    log.warning("%s from %s refused: the node lacks %s", service, calling_ae, permission)
    return False


def requested_instances(event, service: str) -> tuple[list | None, tuple[int, str] | None]:
    """What a C-MOVE or C-GET request retrieves: ``(instances, None)``, or ``(None, (status, reason))``.

    The instances are marked by ``rewrite.mark_pending``. A refusal is logged and
    counted in the session: the node lacks may_retrieve (0x0124), the identifier
    names nothing we can select (0xA900), cannot be decoded (0xC000), or the
    database failed (0xA701).
    """
    if not permitted(event, service, "may_retrieve"):
        return None, (access.NOT_AUTHORIZED, "the node lacks may_retrieve")
    calling_ae = event.assoc.requestor.ae_title.strip()
    try:
        model = retrieve.root_of(event.request.AffectedSOPClassUID)
        try:
            identifier = event.identifier
        except Exception as exc:  # pynetdicom decodes it on first access
            raise query.QueryError(query.UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}") from exc
        instances = query.retrieve_instances(identifier, model=model)
        # One query for the retrieve: which go out corrected, their files not rewritten yet (scu.payload).
        return rewrite.mark_pending(instances), None
    except query.QueryError as exc:
        refusal = exc.status, exc.reason
        log.warning("%s from %s refused (0x%04X): %s", service, calling_ae, exc.status, exc.reason)
    except Exception:
        refusal = CANNOT_CALCULATE_MATCHES, "the instances cannot be selected"
        log.exception("%s from %s failed", service, calling_ae)
    session = session_of(event.assoc)
    if session is not None:
        session.failures += 1
    return None, refusal


def handle_requested(event) -> None:
    """EVT_REQUESTED: accept or reject before any presentation context is negotiated."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    try:
        decision, session = access.open_session(
            called_ae=request.called_ae_title,
            calling_ae=request.calling_ae_title,
            peer_address=assoc.requestor.address,
            peer_port=assoc.requestor.port,
        )
    except Exception:
        log.exception("cannot decide on the association from %s; rejecting it", request.calling_ae_title)
        _reject(assoc, REJECT_TRANSIENT)
        return
    assoc.imaging_session = session
    if decision.reject:
        _reject(assoc, decision.reject)
        return
    try:
        contexts = access.contexts_for(decision.node, assoc.acceptor.supported_contexts, assoc.requestor.role_selection)
        if contexts is not None:
            assoc.acceptor.supported_contexts = contexts
            log_refused_storage(session, request.presentation_context_definition_list, contexts)
    except Exception:
        log.exception("cannot limit the presentation contexts of %s; rejecting it", request.calling_ae_title)
        _reject(assoc, REJECT_TRANSIENT)


def log_refused_storage(session, proposed_contexts, contexts) -> None:
    """Log and count the storage SOP classes proposed that ``contexts`` (access.contexts_for) leaves out."""
    kept = {context.abstract_syntax for context in contexts}
    proposed = {context.abstract_syntax for context in proposed_contexts}
    refused = (proposed & access.STORAGE_SOP_CLASSES) - kept
    if refused:
        session.services.add("C-STORE")
        session.failures += 1
        log.warning(
            "storage from %s refused at association time: the node lacks may_store (%d storage SOP class(es) rejected)",
            session.calling_ae,
            len(refused),
        )


def _reject(assoc, reason: tuple[int, int, int]) -> None:
    # As pynetdicom's own checks do: queue the A-ASSOCIATE-RJ, then wait until the
    # DUL has sent it and the peer has closed the connection.
    assoc.acse.send_reject(*reason)
    assoc.kill()
