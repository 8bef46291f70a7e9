"""docker-compose.yaml and the process topology (`make prod-up`) are twins.

The process topology is what the end-to-end topology test runs; compose is what a Docker host
runs. Every compose service, image, published port, environment key and volume must have its
counterpart in :mod:`ecrec_lib.deploy.topology`, so the file cannot drift from what is tested.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ecrec_lib.deploy import topology

REPO = Path(__file__).resolve().parents[1]
# Compose services the topology does not start as its own process, and what stands for them.
EXTERNAL = {
    "postgres": "the PostgreSQL server named by Topology.postgres_url",
    "airflow-init": "topology.start runs INIT_COMMANDS before the Airflow services",
    "redis": "the Redis server named by Topology.redis_url",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


@pytest.fixture(scope="module")
def procs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, topology.Service]:
    topo = topology.Topology(root=tmp_path_factory.mktemp("twin"))
    return {s.name: s for s in topology.services(topo)}


def _container_ports(svc: dict) -> set[int]:
    """Container ports a compose service publishes ("[ip:]host:container" forms)."""
    out = set()
    for spec in svc.get("ports", []):
        out.add(int(str(spec).rsplit(":", 1)[-1].split("/")[0]))
    return out


def _named_volumes(svc: dict, declared: set[str]) -> set[str]:
    names = {str(v).split(":", 1)[0] for v in svc.get("volumes", [])}
    return names & declared


def _command(svc: dict) -> list[str]:
    cmd = svc.get("command", [])
    return cmd if isinstance(cmd, list) else cmd.split()


def test_every_compose_service_has_a_process(compose: dict, procs: dict) -> None:
    names = set(compose["services"])
    assert names - set(EXTERNAL) == set(procs), (
        "compose services and topology processes differ: "
        f"only in compose {sorted(names - set(EXTERNAL) - set(procs))}, "
        f"only in the topology {sorted(set(procs) - names)}")
    init = " ".join(_command(compose["services"]["airflow-init"])).replace("'", "")
    for cmd in topology.INIT_COMMANDS:
        assert " ".join(cmd[1:]) in init, f"compose's airflow-init does not run {cmd[1:]}"


def test_images_match(compose: dict, procs: dict) -> None:
    for name, proc in procs.items():
        assert compose["services"][name]["image"] == proc.image, name
    # The Spark image runs the master only: its Spark must be the pyspark the jobs use.
    tag = procs["spark-master"].image.split(":", 1)[1]
    pin = re.search(r"^pyspark\[connect\]==(\S+)", (REPO / "requirements.txt").read_text(), re.M)
    assert pin and tag.startswith(pin.group(1) + "-"), (tag, pin)


def test_commands_run_the_same_programs(compose: dict, procs: dict) -> None:
    for name, proc in procs.items():
        cmd = _command(compose["services"][name])
        program = next(tok for tok in cmd if not tok.startswith("-") and "/" not in tok
                       and tok not in {"airflow", "mlflow", "spark-class"})
        assert program in proc.argv, f"{name}: compose runs {cmd}, the topology {proc.argv}"
        flags = {tok for tok in cmd if tok.startswith("--")}
        own = {tok for tok in proc.argv if tok.startswith("--")}
        # Host binding and the Docker network's allowed host names have no process twin.
        assert flags - {"--host", "--allowed-hosts"} <= own, (name, flags - own)


def test_published_ports_match(compose: dict, procs: dict) -> None:
    for name, proc in procs.items():
        published = _container_ports(compose["services"][name])
        assert published <= set(proc.ports), f"{name}: compose publishes {published}"
        for port in proc.ports.values():
            assert 0 < port < 65536


def test_environment_keys_match(compose: dict, procs: dict) -> None:
    for name, proc in procs.items():
        keys = set(compose["services"][name].get("environment") or {})
        missing = keys - set(proc.env)
        assert not missing, f"{name}: compose sets {sorted(missing)}, the process does not"
    shared = set(compose["x-ecrec-env"])
    job_keys = {k for k in procs["airflow-scheduler"].env if k.startswith("ECREC_")
                and k != topology.ROOT_ENV}
    assert job_keys <= shared, f"the topology sets {sorted(job_keys - shared)}, compose does not"


def test_volumes_match(compose: dict, procs: dict) -> None:
    declared = set(compose["volumes"])
    for name, proc in procs.items():
        volumes = _named_volumes(compose["services"][name], declared)
        assert volumes <= set(proc.volumes), f"{name}: no folder for {volumes - set(proc.volumes)}"


def test_everything_binds_loopback(procs: dict) -> None:
    for name, proc in procs.items():
        if "--host" in proc.argv:
            assert proc.argv[proc.argv.index("--host") + 1] == "127.0.0.1", name
