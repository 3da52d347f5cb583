"""Where an echoscu's association spends its time on the server side, through a timestamping TCP proxy.

    .venv/bin/python bench/assoc_timeline.py [--runs 40] [--server ours|storescp] [--env KEY=VALUE ...]

Self-contained and self-stopping, 127.0.0.1 only, free ports, a temporary folder.
Starts our runscp (SQLite, no broker: nothing is stored) or DCMTK's storescp, then
runs DCMTK's echoscu ``--runs`` times, 0.1 s apart, through a proxy in this process
that forwards every byte at once and notes when each PDU passes, from the connection's
accept. Prints the median of each step: A-ASSOCIATE-RQ in, A-ASSOCIATE-AC out,
P-DATA (C-ECHO-RQ) in, P-DATA (C-ECHO-RSP) out, A-RELEASE-RQ in, A-RELEASE-RP out.
``AC - RQ`` is what the server takes to accept an association (its access check,
negotiation and whatever competes with it for the CPU); process start and exit of
echoscu are not in these figures (bench/query_orthanc.py has them).
"""

import argparse
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import procs  # noqa: E402

PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 4: "P-DATA", 5: "A-RELEASE-RQ", 6: "A-RELEASE-RP"}


def relay(listener: socket.socket, target: int, runs: int, timelines: list) -> None:
    """Accept ``runs`` connections in turn; forward each both ways, noting (ms, direction, PDU type) per PDU."""
    for _ in range(runs):
        client, _ = listener.accept()
        start = time.perf_counter()
        server = socket.create_connection(("127.0.0.1", target))
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = {client: server, server: client}
        pending = {client: b"", server: b""}  # bytes of a PDU not yet complete, per direction
        events = []
        while peer:
            ready, _, _ = select.select(list(peer), [], [], 10)
            if not ready:
                break
            for sock in ready:
                if sock not in peer:
                    continue
                data = sock.recv(65536)
                if not data:
                    other = peer.pop(sock)
                    peer.pop(other, None)
                    continue
                peer[sock].sendall(data)
                at = (time.perf_counter() - start) * 1000
                buffer = pending[sock] + data
                while len(buffer) >= 6:
                    length = int.from_bytes(buffer[2:6], "big")
                    if len(buffer) < 6 + length:
                        break
                    events.append((at, "in" if sock is client else "out", buffer[0]))
                    buffer = buffer[6 + length :]
                pending[sock] = buffer
        client.close()
        server.close()
        timelines.append(events)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--server", choices=["ours", "storescp"], default="ours")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for our runscp (repeatable)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-assoc-timeline-"))
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "imaging.settings",
        "VAR_DIR": str(root),
        "STORAGE_DIR": str(root / "storage"),
        "DATABASE_URL": f"sqlite:///{root / 'db.sqlite3'}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{procs.free_port()}/0",
        "LOG_LEVEL": "WARNING",
        "TCP_NODELAY": "1",
        **dict(item.split("=", 1) for item in args.env),
    }
    port = procs.free_port()
    if args.server == "ours":
        subprocess.run(procs.manage("migrate", "-v0"), env=env, cwd=REPO, check=True)
        # As runscp does at its first start (STORAGE_PREPARE_FOLDERS), before the clock.
        subprocess.run(procs.manage("preparestorage"), env=env, cwd=REPO, check=True, capture_output=True)
        node = procs.manage("modality", "add", "BENCH", "127.0.0.1", "0")
        subprocess.run(node, env=env, cwd=REPO, check=True, capture_output=True)
        command = procs.manage("runscp", "--port", str(port), "--host", "127.0.0.1")
    else:
        (root / "received").mkdir()
        command = ["storescp", "-od", str(root / "received"), str(port)]
    server = procs.start(command, env, root / "server.log")
    try:
        echo = ["echoscu", "-aet", "BENCH", "-aec", "IMAGING", "127.0.0.1"]
        procs.wait_for(
            lambda: subprocess.run([*echo, str(port)], capture_output=True).returncode == 0, 60, "the server"
        )
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        timelines: list = []
        relaying = threading.Thread(target=relay, args=(listener, port, args.runs, timelines), daemon=True)
        relaying.start()
        for _ in range(args.runs):
            subprocess.run([*echo, str(listener.getsockname()[1])], check=True, capture_output=True, env=env)
            time.sleep(0.1)  # a pause between associations, as between a user's queries
        relaying.join(30)
    finally:
        procs.stop(server)
    print(f"\n{args.server}, {args.runs} echoscu runs, {' '.join(args.env)}: median ms from the connection's accept")
    print("| PDU | direction | median ms |")
    print("|---|---|---|")
    for step in range(max(len(t) for t in timelines)):
        kinds = {t[step][1:] for t in timelines if len(t) > step}
        if len(kinds) != 1:
            break  # the runs differ from here on (PDUs split otherwise)
        ((direction, pdu_type),) = kinds
        median = statistics.median(t[step][0] for t in timelines if len(t) > step)
        print(f"| {PDU_NAMES.get(pdu_type, pdu_type)} | {direction} | {median:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
