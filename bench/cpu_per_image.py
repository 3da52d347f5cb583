"""CPU time our SCP spends per received image, by configuration: steadier than images/s on a busy machine.

    .venv/bin/python bench/cpu_per_image.py [--sets ct,small,big] [--rounds 2] \
        [--config 'label=path/to/tree:VAR=value,VAR=value' ...] [--associations N]

For each configuration (a code tree, default this one, and environment variables)
and each set of images, it starts that tree's ``manage.py runscp`` on a free port
of 127.0.0.1 with a fresh SQLite database, a node MODALITY on 127.0.0.1 and its
own Redis (no worker: nothing is indexed), sends the set with one ``storescu``
association (TCP_NODELAY=1; ``--associations N``: N ``storescu`` at once, each with
its share of the files), and reports the CPU seconds per image of runscp's processes (the listener, its
live association processes and spares, and the children they reaped)
and the images/s of that run. Sets: ``ct`` 300 slices 512x512 (512 KB each),
``small`` 500 images 64x64 (8 KB), ``big`` 20 images 2048x2048 (8 MiB); ``echo``
is 50 ``echoscu`` runs one after the other instead (process start included: the
column is then CPU ms and wall ms per C-ECHO association, and echoes/s).
Configurations take turns, round after round.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import dicomgen, procs  # noqa: E402

ECHOES = 50


def only_spares_left(pid: int) -> bool:
    """No child but the waiting spares, not even a zombie: every association process has been reaped."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            if procs.name(int(child)) != "dicom-spare":
                return False
    return True


def echo(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="IMAGING")
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def parse_config(text: str) -> tuple[str, Path, dict]:
    label, _, rest = text.partition("=")
    tree, _, variables = rest.partition(":")
    env = dict(item.split("=", 1) for item in variables.split(",") if item)
    return label, Path(tree or REPO).resolve(), env


def store_in_parallel(port: int, files: list, associations: int) -> None:
    """The files sent by ``associations`` storescu processes at once, each with its share."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    tools = [
        subprocess.Popen(
            ["storescu", "-aet", "MODALITY", "-aec", "IMAGING", "127.0.0.1", str(port), *files[i::associations]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for i in range(associations)
    ]
    failures = [tool.communicate(timeout=300)[1] for tool in tools if tool.wait(timeout=300) != 0]
    if failures:
        raise SystemExit(failures[0])


def run_one(
    tree: Path, env_extra: dict, files: list, redis_port: int, root: Path, echoes: bool = False, associations: int = 1
) -> tuple[float, float]:
    var = Path(tempfile.mkdtemp(dir=root))
    env = {
        **os.environ,
        "VAR_DIR": str(var),
        "DATABASE_URL": f"sqlite:///{var}/db.sqlite3",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "STORAGE_DIR": str(var / "storage"),
        "LOG_LEVEL": "WARNING",
        "STORAGE_MIN_FREE_MB": "1",
        **env_extra,
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "-v", "0"], cwd=tree, env=env, check=True)
    prepares = (tree / "imaging/management/commands/preparestorage.py").exists()  # trees before it do not
    if prepares and env.get("STORAGE_PREPARE_FOLDERS", "1") != "0":
        # What runscp does in the background at its first start, done before the count.
        subprocess.run([python, "manage.py", "preparestorage"], cwd=tree, env=env, check=True, capture_output=True)
    subprocess.run(
        [python, "manage.py", "modality", "add", "MODALITY", "127.0.0.1", "0"],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
    )
    port = procs.free_port()
    with open(var / "scp.log", "wb") as log:
        scp = subprocess.Popen(
            [python, "manage.py", "runscp", "--port", str(port), "--host", "127.0.0.1"],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        procs.wait_for(lambda: echo(port), 30, "runscp to answer")
        procs.wait_for(lambda: only_spares_left(scp.pid), 30, "the probe's process to be reaped")
        before = procs.tree_cpu(scp.pid)
        started = time.monotonic()
        if echoes:
            for _ in files:
                result = procs.dcmtk("echoscu", "-aet", "MODALITY", "-aec", "IMAGING", "127.0.0.1", str(port))
                if result.returncode != 0:
                    raise SystemExit(result.stderr)
        else:
            store_in_parallel(port, files, associations)
        wall = time.monotonic() - started
        procs.wait_for(lambda: only_spares_left(scp.pid), 30, "the association's process to be reaped")
        cpu = procs.tree_cpu(scp.pid) - before
    finally:
        procs.stop(scp)
    stored = sum(1 for _ in (var / "storage" / "instances").rglob("*.dcm"))
    if not echoes and stored != len(files):
        raise SystemExit(f"{stored} of {len(files)} images stored")
    return cpu, wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", default="ct,small,big")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--config", action="append", help="label=tree:VAR=value,...; default: this tree as is")
    p.add_argument("--associations", type=int, default=1, help="storescu processes at once, default 1")
    args = p.parse_args(argv)
    configs = [parse_config(c) for c in (args.config or ["this="])]
    root = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    redis = None
    try:
        sets = {}
        for name in args.sets.split(","):
            if name == "ct":
                sets[name] = dicomgen.ct_series(root / "ct", 300, size=512, patient_id="BENCHCT")
            elif name == "small":
                sets[name] = [f for i in range(10) for f in dicomgen.ct_series(root / f"s{i}", 50, size=64)]
            elif name == "echo":
                sets[name] = [""] * ECHOES
            elif name == "big":
                sets[name] = dicomgen.ct_series(root / "big", 20, size=2048, patient_id="BENCHBIG")
            else:
                p.error(f"unknown set {name!r}")
        redis_port = procs.free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        procs.wait_for(lambda: procs.port_open(redis_port), 20, "redis-server")
        print(f"{'configuration':32s} {'set':6s} {'CPU ms/image':>12s} {'images/s':>9s}  load")
        for _ in range(args.rounds):
            for label, tree, env in configs:
                for name, files in sets.items():
                    cpu, wall = run_one(
                        tree,
                        {"STORAGE_FSYNC": "1", **env},
                        [str(f) for f in files],
                        redis_port,
                        root,
                        name == "echo",
                        args.associations,
                    )
                    load = Path("/proc/loadavg").read_text().split()[0]
                    latency = f"  {1000 * wall / len(files):.1f} ms per echoscu" if name == "echo" else ""
                    per_item = 1000 * cpu / len(files)
                    print(
                        f"{label:32s} {name:6s} {per_item:12.2f} {len(files) / wall:9.0f}  {load}{latency}", flush=True
                    )
    finally:
        if redis is not None:
            procs.stop(redis)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
