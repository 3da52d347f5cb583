"""Association requests: who is calling, may they, and the log of it."""

import logging

from network import access

log = logging.getLogger(__name__)

# Rejected-transient, service-user, no reason given: we could not decide (database down).
REJECT_TRANSIENT = (0x02, 0x01, 0x01)


def session_of(assoc) -> access.Session | None:
    return getattr(assoc, "imaging_session", None)


def permitted(event, service: str, permission: str) -> bool:
    """Record that ``service`` was used; False (failure counted and logged) if the node may not use it."""
    session = session_of(event.assoc)
    if session is None:
        return True
    session.services.add(service)
    if session.allows(permission):
        return True
    session.failures += 1
    log.warning("%s from %s refused: the node lacks %s", service, event.assoc.requestor.ae_title.strip(), permission)
    return False


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


def _reject(assoc, reason: tuple[int, int, int]) -> None:
    # As pynetdicom's own checks do: queue the A-ASSOCIATE-RJ, then wait until the
    # DUL has sent it and the peer has closed the connection.
    assoc.acse.send_reject(*reason)
    assoc.kill()
