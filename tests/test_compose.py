"""docker/compose.yml scales out the way docs/performance.md says: two runscp on one port,
worker replicas, exactly one beat."""

import yaml

from tests import procs


def services() -> dict:
    return yaml.safe_load((procs.ROOT / "docker" / "compose.yml").read_text())["services"]


def runs(service: dict, *words: str) -> bool:
    command = service.get("command") or []
    return all(word in command for word in words)


def test_every_runscp_shares_the_one_published_port():
    scps = {name: s for name, s in services().items() if runs(s, "runscp")}
    assert len(scps) >= 2
    for s in scps.values():
        assert s["environment"]["DICOM_REUSE_PORT"] == "1"  # or the second cannot bind
    publishing = [name for name, s in scps.items() if "ports" in s]
    assert publishing == ["scp"]
    for name, s in scps.items():
        if name != "scp":  # in scp's network namespace: the same address and port
            assert s["network_mode"] == "service:scp" and "ports" not in s


def test_workers_are_replicas_and_one_beat_runs_the_schedule():
    all_services = services()
    workers = [s for s in all_services.values() if runs(s, "celery", "worker")]
    beats = [s for s in all_services.values() if runs(s, "celery", "beat")]
    assert len(workers) == 1 and "replicas" in workers[0]["deploy"]
    assert not any("-B" in s["command"] or "--beat" in s["command"] for s in workers)  # replicas would each run it
    assert len(beats) == 1 and "deploy" not in beats[0]
