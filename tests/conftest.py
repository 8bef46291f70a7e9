"""Shared fixtures: one local[2] Spark session, a temp lake, PostgreSQL, environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
AMAZON_DIR = REPO_ROOT.parent / "shared" / "data" / "amazon_beauty"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TEST_PSEUDO_KEY = "test-pseudonymization-key-0123456789"

# Environment the whole suite runs under (set before any heavy import).
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ECREC_PSEUDO_KEY", TEST_PSEUDO_KEY)


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session", autouse=True)
def _compiled_trees_in_the_run(tmp_path_factory: pytest.TempPathFactory):
    """The ranker's compiled trees (:mod:`ecrec_lib.models.tree_predict`) are cached in the
    run's temp dir, for its jobs and subprocesses too, never in the user's cache."""
    os.environ["ECREC_COMPILED_TREES_DIR"] = str(tmp_path_factory.mktemp("compiled-trees"))
    yield


@pytest.fixture(autouse=True)
def _mlflow_uris_per_test():
    """Jobs run in-process set MLflow's process-wide URIs and the MLFLOW_*_URI variables that
    subprocesses inherit: without this reset a later test (or its Airflow run) would read and
    write an earlier test's registry."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory):
    """One local[2] SparkSession for the whole run (JVM start costs ~8 s)."""
    from pyspark.sql import SparkSession

    local_dir = tmp_path_factory.mktemp("spark-local")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("ecrec-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.default.parallelism", "2")
        .config("spark.local.dir", str(local_dir))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture()
def lake_dir(tmp_path: Path) -> Path:
    path = tmp_path / "lake"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL URL; skips (or fails under CI=true) when there is none."""
    url = os.environ.get("ECREC_TEST_POSTGRES_URL", DEFAULT_PG_URL)
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        msg = f"PostgreSQL not reachable at {url} ({exc}); set ECREC_TEST_POSTGRES_URL"
        if under_ci():
            pytest.fail(msg + " -- PostgreSQL tests must run under CI")
        pytest.skip(msg)
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A reachable Redis URL; skips (or fails under CI=true) when there is none."""
    url = os.environ.get("ECREC_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=5).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        from ecrec_lib.privacy.secrets import redact_url

        msg = f"Redis not reachable at {redact_url(url)} ({exc}); set ECREC_TEST_REDIS_URL"
        if under_ci():
            pytest.fail(msg + " -- Redis tests must run under CI")
        pytest.skip(msg)
    return url


@pytest.fixture(scope="session")
def two_nights(tmp_path_factory: pytest.TempPathFactory, redis_url: str):
    """Two nightly runs built once for the e2e modules that start from them (each restores its
    own copy first: :func:`tests.e2e_support.restore_two_nights`); their Redis keys are removed
    at the end of the session."""
    from tests.e2e_support import build_two_nights, drop_redis_prefix

    nights = build_two_nights(tmp_path_factory.mktemp("two-nights"), redis_url)
    yield nights
    drop_redis_prefix(redis_url, nights["env"]["ECREC_ONLINE_KEY_PREFIX"])


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    if not (AMAZON_DIR / "interactions.csv").is_file():
        pytest.skip(f"real data not present at {AMAZON_DIR}")
    return AMAZON_DIR


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
