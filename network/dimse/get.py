"""C-GET SCP: send the instances an identifier names back on the same association (PS3.4 C.4.3).

The requester proposes SCP/SCU role selection for the storage SOP classes it
wants to receive; we accept it (network/scp.py) and send each instance with a
C-STORE sub-operation on the requester's association. pynetdicom sends the
Pending, final and Cancel responses from what this generator yields: the number
of sub-operations, then one (status, data set) pair per instance.
"""

import logging

from network import access, retrieve
from network.dimse.association import session_of

log = logging.getLogger(__name__)


def handle_get(event):
    """EVT_C_GET handler; never raises, every failure is a DICOM status."""
    session = session_of(event.assoc)
    calling_ae = event.assoc.requestor.ae_title.strip()
    if session is not None:
        session.services.add("C-GET")
    try:
        if session is not None and not session.allows("may_retrieve"):
            raise retrieve.RetrieveError(access.NOT_AUTHORIZED, "the node may not retrieve")
        root = retrieve.root_of(event.request.AffectedSOPClassUID)
        instances = retrieve.select_instances(event.identifier, root=root)
    except retrieve.RetrieveError as exc:
        log.warning("C-GET from %s refused (0x%04X): %s", calling_ae, exc.status, exc.reason)
        if session is not None:
            session.failures += 1
        # A failure status can only follow a number of sub-operations in pynetdicom's protocol.
        yield 1
        yield exc.status, None
        return
    log.info("C-GET from %s: %d instance(s)", calling_ae, len(instances))
    retrieve.install_sender(event.assoc, session)
    yield len(instances)
    yield from retrieve.sub_operations(event, instances)
