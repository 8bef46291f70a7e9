"""Shared by the end-to-end DAG tests: an isolated environment, data, Airflow CLI calls."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TEST_PSEUDO_KEY = "test-pseudonymization-key-0123456789"
# The days of the shared nights (:func:`build_two_nights`): day 1 trains, day 2 keeps the
# champion, day 3 is left for each module to run its own way.
D1, D2, D3 = "2024-03-01", "2024-03-02", "2024-03-03"
KEEP_CHAMPION = {"ECREC_MIN_NEW_EVENTS_TO_TRAIN": "100000000"}
NIGHT_S = 2400  # one nightly run; a shared CI box can be slow
# A credential in a URL-shaped setting: Redis accepts any password for its default user when
# none is configured (ACL "nopass"), so the nights really run with it.
PLANTED_SECRET = "Planted-Redis-Secret-5b1e"


def pipeline_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment of a whole platform under ``root``: lake, warehouse, MLflow, AIRFLOW_HOME."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "ECREC_", "PYTEST", "MLFLOW_TRACKING", "MLFLOW_REGISTRY"))}
    (root / "mlruns").mkdir(parents=True, exist_ok=True)
    env.update(
        PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        AIRFLOW_HOME=str(root / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__API_AUTH__JWT_SECRET="e2e-" + "0123456789abcdef" * 4,
        ECREC_LAKE_ROOT=str(root / "lake"),
        # Not "ecrec.duckdb": DuckDB names the catalog after the file, and a catalog "ecrec"
        # next to the schema "ecrec" makes `ecrec.table` ambiguous (Binder Error).
        ECREC_WAREHOUSE_URL=f"duckdb://{root / 'warehouse' / 'warehouse.duckdb'}",
        ECREC_MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
        ECREC_MLFLOW_ARTIFACT_ROOT=str(root / "mlruns" / "artifacts"),
        ECREC_PSEUDO_KEY=TEST_PSEUDO_KEY,
        ECREC_TASK_RETRIES="0",
        # Enough epochs for the first model to beat the popularity baseline on the holdout
        # (the promotion gate's rule for a first champion): ~1 s per epoch at this size.
        ECREC_EPOCHS="20",
        # The latency guardrail measures this shared CI box, not the model: out of the way.
        ECREC_GUARDRAIL_MAX_MS_PER_1K_USERS="600000",
        ECREC_BATCH_SIZE="64",
        ECREC_SPARK_SHUFFLE_PARTITIONS="2",
        ECREC_SPARK_MASTER="local[2]",
        ECREC_SPARK_DRIVER_MEMORY="1g",
        # Tiny data: a job's JVM lives ~20 s, mostly interpreting, so the C2 compiler's work
        # never pays back. C1 only: 21.5-23.3 s against 28.2-29.7 s per validate job, 38-47 s
        # against 51-55 s per build_features job (BENCHMARKS.md, "Test suite time").
        ECREC_SPARK_JAVA_OPTIONS="-XX:+UseParallelGC -XX:TieredStopAtLevel=1",
        ECREC_TOP_K="20",
        ECREC_N_QUERIES="20",
        # 300 generated users: no query of a day reaches the default k of 5 distinct users
        # (the demo's 2000 do); 2 keeps the k-anonymity filter at work.
        ECREC_MIN_QUERY_USERS="2",
        # The nightly DAG exports to Redis: the test Redis, under a prefix of this run's own.
        ECREC_ONLINE_REDIS_URL=os.environ.get("ECREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        ECREC_ONLINE_KEY_PREFIX=key_prefix(),
        SPARK_LOCAL_IP="127.0.0.1",
        GX_ANALYTICS_ENABLED="False",
        MLFLOW_DISABLE_TELEMETRY="true",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="2",
        MKL_NUM_THREADS="2",
    )
    env.update(extra)
    return env


def key_prefix() -> str:
    """A Redis key prefix of a run's own (the tests never FLUSHDB a shared Redis)."""
    return f"ecrec_e2e_{uuid.uuid4().hex[:10]}"


def drop_redis_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    import redis

    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=f"{prefix}:*", count=5000))
    if keys:
        r.unlink(*keys)


def run(cmd: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def generate(env: dict[str, str], start: str, days: int, users: int, items: int) -> None:
    proc = run([sys.executable, "-m", "jobs.generate_events", "--lake", env["ECREC_LAKE_ROOT"],
                "--start", start, "--days", str(days), "--users", str(users),
                "--items", str(items), "--seed", "11"], env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def airflow_migrate(env: dict[str, str]) -> None:
    """The metadata DB, and the warehouse writers' pool as every installation sets it up."""
    from ecrec_lib.orchestration import (
        WAREHOUSE_POOL,
        WAREHOUSE_POOL_DESCRIPTION,
        WAREHOUSE_POOL_SLOTS,
    )

    proc = run([str(VENV_BIN / "airflow"), "db", "migrate"], env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    proc = run([str(VENV_BIN / "airflow"), "pools", "set", WAREHOUSE_POOL,
                str(WAREHOUSE_POOL_SLOTS), WAREHOUSE_POOL_DESCRIPTION], env, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def dags_test(env: dict[str, str], dag_id: str, ds: str, timeout: float = 1500,
              conf: str | None = None) -> tuple[bool, str]:
    """``airflow dags test``; returns (run succeeded, whole output)."""
    cmd = [str(VENV_BIN / "airflow"), "dags", "test", dag_id, ds]
    if conf:
        cmd += ["--conf", conf]
    proc = run(cmd, env, timeout=timeout)
    out = proc.stdout + proc.stderr
    finished = [ln for ln in out.splitlines() if "DagRun Finished" in ln]
    ok = proc.returncode == 0 and bool(finished) and "state=success" in finished[-1]
    return ok, out


def tail(text: str, n: int = 80) -> str:
    """The lines worth showing when a run failed: errors first, then the end."""
    lines = text.splitlines()
    errors = [ln for ln in lines if "ERROR" in ln or "error" in ln.lower()[:60] or "JobFailed" in ln]
    return "\n".join(errors[-40:] + ["-----"] + lines[-n:])


def with_password(url: str) -> str:
    """``url`` with :data:`PLANTED_SECRET` as the default user's password (kept as it is when
    it already carries credentials)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" in parts.netloc:  # the test Redis has its own credentials: keep them
        return url
    return urlunsplit(parts._replace(netloc=f"default:{PLANTED_SECRET}@{parts.netloc}"))


def build_two_nights(base: Path, redis_url: str) -> dict[str, Any]:
    """Two ``ecrec_nightly`` nights under ``base/platform`` on 300 generated users: day 1
    (with a raw id, e-mail, phone and IP planted) trains, registers, promotes and publishes;
    day 2 keeps the champion. The Redis URL carries :data:`PLANTED_SECRET`. The finished
    platform is copied to ``base/snapshot`` so each e2e module can start from it
    (:func:`restore_two_nights`) instead of running the same two nights again."""
    from tests.privacy_support import plant_raw_pii

    root = base / "platform"
    env = pipeline_env(root, ECREC_ONLINE_REDIS_URL=with_password(redis_url))
    generate(env, D1, days=3, users=300, items=100)
    plant_raw_pii(Path(env["ECREC_LAKE_ROOT"]), D1)
    airflow_migrate(env)
    runs = {"d1": dags_test(env, "ecrec_nightly", D1, timeout=NIGHT_S)}
    assert runs["d1"][0], "nightly day 1 failed:\n" + tail(runs["d1"][1])
    runs["d2"] = dags_test(dict(env, **KEEP_CHAMPION), "ecrec_nightly", D2, timeout=NIGHT_S)
    assert runs["d2"][0], f"nightly {D2} failed:\n" + tail(runs["d2"][1])
    shutil.copytree(root, base / "snapshot", symlinks=True)
    return {"root": root, "snapshot": base / "snapshot", "env": env, "runs": runs}


def restore_two_nights(nights: dict[str, Any]) -> Path:
    """Put the platform back as the two shared nights left it (same paths: the MLflow store
    and Airflow's database name their files absolutely); returns its root."""
    root = nights["root"]
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(nights["snapshot"], root, symlinks=True)
    drop_mlflow_connections()
    return root


def drop_mlflow_connections() -> None:
    """Close this process's MLflow database connections and forget its cached stores. MLflow
    keeps one SQLAlchemy engine per database URI for the life of the process: after the SQLite
    file under a URI was replaced, its pooled connections would go on reading the deleted copy."""
    if "mlflow" not in sys.modules:
        return
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
    from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    for store in (TrackingStore, RegistryStore):
        engines = getattr(store, "_engine_map", {})
        for uri in list(engines):
            engines.pop(uri).dispose()
    for registry in (TrackingStoreRegistry, ModelRegistryStoreRegistry):
        registry._get_store_with_resolved_uri.cache_clear()
