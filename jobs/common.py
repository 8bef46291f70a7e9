"""Pieces every job shares: logging setup and the SparkSession factory.

Only jobs create a SparkSession (library code receives one).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ecrec_lib.config import EcrecConfig
from ecrec_lib.privacy.secrets import RedactingFormatter, secret_from_env

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Shared secret of a Spark standalone cluster started with spark.authenticate=true
# (docker-compose.yaml); ECREC_SPARK_AUTH_SECRET_FILE names a file holding it instead.
SPARK_AUTH_SECRET_ENV = "ECREC_SPARK_AUTH_SECRET"


def setup_logging(level: int = logging.INFO) -> None:
    """Plain timestamped logs on stderr, credentials redacted; quiet the chattiest libraries."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for noisy in ("great_expectations", "py4j", "urllib3", "alembic", "mlflow.store", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def spark_auth_conf(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``spark.authenticate`` settings when a shared secret is configured, else none.

    Spark redacts ``*.secret`` values in its UI and logs (``spark.redaction.regex``).
    """
    secret = secret_from_env(SPARK_AUTH_SECRET_ENV, env)
    if not secret:
        return {}
    return {"spark.authenticate": "true", "spark.authenticate.secret": secret}


def spark_session(cfg: EcrecConfig, app_name: str, master: str | None = None) -> SparkSession:
    """A SparkSession for one job, configured from ``cfg`` (``master`` overrides it)."""
    master = master or cfg.spark_master
    if master.startswith("local"):
        # Loopback only for local masters: on a cluster the executors must reach the driver.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.appName(app_name)
        .master(master)
        .config("spark.driver.memory", cfg.spark_driver_memory)
        .config("spark.sql.shuffle.partitions", str(cfg.spark_shuffle_partitions))
        .config("spark.driver.extraJavaOptions", cfg.spark_java_options)
        .config("spark.executor.extraJavaOptions", cfg.spark_java_options)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        # The jobs cache data that is read several times (parsed raw lines, a window of clean
        # events). Compressing the columnar cache costs more CPU than it saves on 2-core
        # machines (1M raw events: 13.5 s to cache compressed, 9.3 s uncompressed); the
        # caches are MEMORY_AND_DISK, so a cache larger than storage memory spills.
        .config("spark.sql.inMemoryColumnarStorage.compressed", "false")
    )
    for key, value in spark_auth_conf().items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
