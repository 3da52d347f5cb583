"""C-MOVE SCP: send the instances an identifier names to a registered destination (PS3.4 C.4.2).

pynetdicom drives the exchange from what this generator yields: the destination
(address, port, association arguments), the number of sub-operations, then one
(status, data set) pair per C-STORE sub-operation. It opens the association to
the destination, sends the Pending responses with the remaining/completed/
failed/warning counts and the final response with the Failed SOP Instance UID List.

A refusal never reaches the destination. pynetdicom 3.0.4
(``QueryRetrieveServiceClass._move_scp``) answers 0xA801 itself when the
destination yielded is (None, None); for any other refusal it has no status of
its own, and each way a handler can end the exchange makes it send a final
response (nothing yielded: 0xC514 with a logged exception; zero sub-operations:
0x0000), so a response sent by the handler would be a second one. A refusal
(0x0124 not authorised, 0xA900, 0xC000, 0xA701) therefore yields zero
sub-operations, which pynetdicom answers at once without associating, and that
one final response leaves with the refusal's status (``_refuse``,
``retrieve.responses``).
"""

import logging

from django.conf import settings
from pynetdicom import evt

from network import reactor, retrieve
from network.dimse.association import requested_instances, session_of

log = logging.getLogger(__name__)


def _on_established(event, session) -> None:
    if settings.DICOM_EVENT_DRIVEN_LOOPS:
        reactor.install_outgoing(event.assoc)
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
        yield from _refuse(event, node, refusal[0])
        return
    log.info("C-MOVE from %s: %d instance(s) to %s", calling_ae, len(instances), node)
    if event.assoc.ae.connection_timeout is None:
        # pynetdicom's default: a destination that drops our SYNs would hold the move for
        # the kernel's connect timeout (minutes). This process's AE is its own (forked).
        event.assoc.ae.connection_timeout = settings.DICOM_ACSE_TIMEOUT
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


def _refuse(event, node, status: int):
    """Answer the C-MOVE with ``status`` alone: one final response, no association with ``node``."""
    retrieve.responses(event.assoc).refuse(event.request.MessageID, status)
    # pynetdicom checks the destination, then answers zero sub-operations with its
    # final response before it would associate: the address is never used.
    yield node.host, node.port
    yield 0
