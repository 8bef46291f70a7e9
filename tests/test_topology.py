"""The production topology, run as processes (`make prod-up`), end to end.

A Spark standalone master and worker, an MLflow server on PostgreSQL with served artifacts,
Airflow on PostgreSQL (LocalExecutor: api-server, scheduler, dag-processor, triggerer) and
the warehouse on PostgreSQL. A night is triggered through Airflow's REST API; the test then
reads back what each service says through its own API: the Spark master's applications, the
MLflow server's model versions and aliases, the warehouse's tables. Everything is stopped at
the end and no process of the topology may be left.

One night: what a second night adds (keeping the champion, replacing its own partitions,
publishing beside yesterday's tables) runs the same code on any topology and is tested on the
embedded nights (tests/test_nightly_e2e.py) and on PostgreSQL (tests/test_warehouse.py); a
second night here cost about 5 minutes of CI for no path of its own.
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecrec_lib.deploy.airflow_api import AirflowApi, run_id_for, wait_for
from tests.e2e_support import generate

pytestmark = [pytest.mark.topology, pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres]

NIGHTS = ["2024-02-01"]
RUN_TIMEOUT_S = 1500
# Small nights: the test is about the topology, not the model.
NIGHT_ENV = {
    "ECREC_DAG_SCHEDULE": "none",  # unpausing must not start a scheduled run of today
    "ECREC_TASK_RETRIES": "0",
    "ECREC_EPOCHS": "20",
    "ECREC_BATCH_SIZE": "64",
    "ECREC_TOP_K": "20",
    "ECREC_N_QUERIES": "20",
    "ECREC_SPARK_SHUFFLE_PARTITIONS": "2",
    "ECREC_GUARDRAIL_MAX_MS_PER_1K_USERS": "600000",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
}


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _json(url: str, auth: tuple[str, str] | None = None) -> dict:
    req = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


@pytest.fixture()
def topo(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator:
    from ecrec_lib.deploy import topology

    server = postgres_url.rsplit("/", 1)[0]
    ports = topology.Ports(*_free_ports(5))
    tag = uuid.uuid4().hex[:8]
    topo = topology.Topology(root=tmp_path / "prod", postgres_url=server,
                             db_prefix=f"ecrec_t{tag}", ports=ports, redis_url=redis_url,
                             extra_env={**NIGHT_ENV, "ECREC_ONLINE_KEY_PREFIX": f"ecrec_topo_{tag}"})
    try:
        topology.start(topo, echo=lambda line: print(line, file=sys.stderr))
        yield topo
    finally:
        topology.stop(topo, echo=lambda line: print(line, file=sys.stderr))
        left = topology.strays(topo)
        topology.drop_databases(topo)
        assert not left, f"processes left running after prod-down: {left}"


def _login(topo) -> AirflowApi:  # noqa: ANN001 - a Topology
    api = AirflowApi(topo.airflow_url)
    password = json.loads(topo.path("airflow", "passwords", "passwords.json").read_text())["admin"]
    api.login("admin", password)
    return api


def test_a_night_on_the_process_topology(topo) -> None:  # noqa: ANN001 - a Topology
    env = topo.ecrec_env()
    generate(env, NIGHTS[0], days=len(NIGHTS), users=300, items=120)
    api = _login(topo)
    wait_for("the DAG processor to register ecrec_nightly",
             lambda: api.call("GET", "/api/v2/dags/ecrec_nightly")[0] == 200, 300)
    api.set_paused("ecrec_nightly", False)

    timings = {}
    for ds in NIGHTS:
        run_id = run_id_for("ecrec_nightly", ds)
        api.trigger("ecrec_nightly", run_id, ds)
        state = wait_for(f"night {ds}", lambda r=run_id: (s := api.run_state("ecrec_nightly", r))
                         in ("success", "failed") and s, RUN_TIMEOUT_S, every=10)
        assert state == "success", f"night {ds} failed:\n" + api.failure_report(
            "ecrec_nightly", run_id)
        timings[ds] = {t["task_id"]: t.get("duration")
                       for t in api.task_instances("ecrec_nightly", run_id)}
    # kept for BENCHMARKS.md: each task's duration on the topology, per night
    artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "topology_task_durations.json").write_text(json.dumps(timings, indent=1))

    # Spark: the Spark jobs ran on the standalone master, through spark-submit.
    master = _json(f"{topo.spark_ui_url}/json/")
    apps = [a["name"] for a in master.get("completedapps", []) + master.get("activeapps", [])]
    for job in ("clean_events", "build_features"):  # each job names its app <job>-<ds>
        for ds in NIGHTS:
            assert f"{job}-{ds}" in apps, f"{job} of {ds} missing from the master's apps: {apps}"

    # MLflow: the registry lives on the server; a champion is aliased.
    from ecrec_lib.config import load_config

    cfg = load_config(env=env)
    auth = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    with pytest.raises(urllib.error.HTTPError, match="401"):  # basic auth, as in compose
        _json(f"{topo.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1")
    model = _json(f"{topo.mlflow_url}/api/2.0/mlflow/registered-models/get?name="
                  f"{cfg.registered_model_name}", auth)["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    assert "champion" in aliases, model
    versions = _json(f"{topo.mlflow_url}/api/2.0/mlflow/model-versions/search?filter="
                     f"name%3D%27{cfg.registered_model_name}%27", auth)["model_versions"]
    assert versions and all(v["source"] for v in versions)
    champion = next(v for v in versions if v["version"] == aliases["champion"])
    assert champion["source"].startswith(("mlflow-artifacts:", "models:/")), champion["source"]
    # Served artifacts land in the server's store, not beside the jobs.
    assert any(topo.path("mlartifacts").rglob("*")), "no artifact reached the served store"

    # Warehouse on PostgreSQL: the night's scores are published.
    import psycopg

    with psycopg.connect(cfg.warehouse_url) as conn:
        rows = dict(conn.execute(
            f"select ds::text, count(*) from {cfg.warehouse_schema}.user_topk group by ds"
        ).fetchall())
    assert set(NIGHTS) <= set(rows), rows
    assert all(rows[ds] > 0 for ds in NIGHTS), rows
