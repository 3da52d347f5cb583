"""C-MOVE SCP: send the instances an identifier names to a registered destination (PS3.4 C.4.2).

pynetdicom drives the exchange from what this generator yields: the destination
(address, port, association arguments), the number of sub-operations, then one
(status, data set) pair per C-STORE sub-operation. It opens the association to
the destination, sends the Pending responses with the remaining/completed/
failed/warning counts and the final response with the Failed SOP Instance UID List.

Before it has associated with the destination, pynetdicom can only answer 0xA801
(destination unknown). Every other refusal (not authorised, bad identifier) is
therefore yielded as the status of the first sub-operation: the destination, a
registered node, sees an empty association, and no image leaves.
"""

import logging

from pynetdicom import evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification

from network import retrieve
from network.dimse.association import requested_instances, session_of

log = logging.getLogger(__name__)


def _on_established(event, session) -> None:
    retrieve.install_sender(event.assoc, session)


def handle_move(event):
    """EVT_C_MOVE handler; never raises, every failure is a DICOM status."""
    session = session_of(event.assoc)
    calling_ae = event.assoc.requestor.ae_title.strip()
    node = retrieve.destination(event.move_destination)
    if node is None:
        # 0xA801 Move destination unknown: pynetdicom answers it for (None, None).
        log.warning("C-MOVE from %s to unknown destination %r refused", calling_ae, event.move_destination)
        if session is not None:
            session.services.add("C-MOVE")
            session.failures += 1
        yield None, None
        return
    instances, refusal = requested_instances(event, "C-MOVE")
    if refusal:
        yield node.host, node.port, {"contexts": [build_context(Verification)]}
        yield 1
        yield refusal[0], None
        return
    log.info("C-MOVE from %s: %d instance(s) to %s", calling_ae, len(instances), node)
    yield (
        node.host,
        node.port,
        {
            "contexts": retrieve.storage_contexts(instances),
            "evt_handlers": [(evt.EVT_ESTABLISHED, _on_established, [session])],
        },
    )
    yield len(instances)
    yield from retrieve.sub_operations(event, instances)
