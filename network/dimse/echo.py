"""C-ECHO SCP: the verification service."""

from network.dimse.association import session_of


def handle_echo(event) -> int:
    session = session_of(event.assoc)
    if session is not None:
        session.services.add("C-ECHO")
    # 0x0000 Success: any node allowed to associate may verify the connection.
    return 0x0000
