"""C-ECHO SCP: the verification service."""


def handle_echo(event) -> int:
    # 0x0000 Success: the association itself is the verification.
    return 0x0000
