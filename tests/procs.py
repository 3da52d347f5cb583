"""Start and wait for the real processes the end-to-end tests talk to."""

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ephemeral_ports() -> range:
    """The ports the kernel hands to outgoing connections (Linux's default when it does not say)."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below the ephemeral range.

    A port the kernel picked (``bind(0)``) is an ephemeral one: by the time a server process
    binds it, an outgoing connection of the same run (a C-MOVE, an HTTP request) may hold
    it, and the server fails with "Address already in use". Ports below the range are
    never given to outgoing connections, so one that is free now stays free.
    """
    ephemeral = ephemeral_ports()
    candidates = [port for port in range(10000, 30000) if port not in ephemeral]
    for port in random.sample(candidates, len(candidates)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port below the ephemeral range")


def wait_for(condition: Callable[[], object], timeout: float = 30, what: str = "condition", interval=0.05):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def dicom_answers(port: int) -> bool:
    """Does a DICOM SCP answer on ``port``? Accepted, rejected, or closed at accept(), it answered.

    A bare TCP connect would not do: the kernel completes it before any process
    of ours accepts it. With DICOM_CHECK_HOST and no node on 127.0.0.1 yet, a
    spare closes the connection at once; a server not ready leaves it waiting.
    """
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    if not port_open(port):
        return False
    ae = AE(ae_title="READINESS")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="IMAGING")
    if assoc.is_established:
        assoc.release()
        return True
    return assoc.is_rejected or (assoc.is_aborted and time.monotonic() - started < ae.acse_timeout - 1)


def children(pid: int, *, but: str | None = None) -> list[int]:
    """The live child processes of ``pid`` (Linux /proc); zombies, already finished, are left out.

    ``but``: leave out the children of that name too (runscp's spare, waiting for a connection).
    """
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    live = []
    for child in found:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or (but and name(child) == but):
            continue
        live.append(child)
    return live


def name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the process for its lifetime
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def stop(proc: subprocess.Popen, timeout: float = 40) -> int | None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def manage(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def dcmtk(tool: str, *args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a DCMTK tool with Nagle's algorithm off, as benchmarks and real setups do."""
    full_env = {**os.environ, "TCP_NODELAY": "1", **(env or {})}
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=timeout, env=full_env)


def keep_responses_for_the_waiter(assoc) -> None:
    """Work around a race in pynetdicom's requestor (3.0.4) for tests that send twice in a row.

    Each ``send_*`` pauses the association's reactor with a flag the reactor sets
    just *before* it waits: when the GIL preempts the reactor between that wait
    and its next ``get_msg``, the response to the next request is taken by the
    reactor, logged as "Received unexpected ... service message" and dropped, and
    the waiting ``send_*`` times out. A response the reactor takes is put back on
    the queue, where the waiting ``send_*`` finds it.
    """
    serve = assoc._serve_request

    def serve_or_requeue(msg, context_id):
        if not msg.is_valid_request:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_requeue


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its live descendants and the children they reaped (user + system)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended meanwhile
    return total
