"""C-GET SCP: send the instances an identifier names back on the same association (PS3.4 C.4.3).

The requester proposes SCP/SCU role selection for the storage SOP classes it
wants to receive; we accept it (network/scp.py) and send each instance with a
C-STORE sub-operation on the requester's association. pynetdicom sends the
Pending, final and Cancel responses from what this generator yields: the number
of sub-operations, then one (status, data set) pair per instance.
"""

import logging

from network import retrieve
from network.dimse.association import requested_instances, session_of

log = logging.getLogger(__name__)


def handle_get(event):
    """EVT_C_GET handler; never raises, every failure is a DICOM status."""
    instances, refusal = requested_instances(event, "C-GET")
    if refusal:
        # A failure status can only follow a number of sub-operations in pynetdicom's protocol.
        yield 1
        yield refusal[0], None
        return
    log.info("C-GET from %s: %d instance(s)", event.assoc.requestor.ae_title.strip(), len(instances))
    retrieve.install_sender(event.assoc, session_of(event.assoc))
    yield len(instances)
    yield from retrieve.sub_operations(event, instances)
