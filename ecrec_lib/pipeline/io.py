"""Lake I/O for the pipeline: raw JSON-lines reading, staged (atomic) Parquet writes, ops records.

Publishing protocol (what makes a job atomic and idempotent):

1. every output is first written to a hidden sibling ``.staging-ds=D`` (Spark's partition
   discovery ignores names starting with ``.``, so readers never see it);
2. the output's Great Expectations suite runs on the staged data;
3. only when every critical suite of the job passed, each staged dir is renamed into place
   (local paths: ``ds=D`` -> ``.old-ds=D``, staging -> ``ds=D``, old removed). On object stores,
   where rename is not atomic, the staged data is re-written with Spark's dynamic partition
   overwrite (``mode("overwrite")`` + ``partitionOverwriteMode=dynamic``), never appended.

A job failing half-way therefore leaves the previous ``ds=D`` (or none) visible, never a partial one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecrec_lib.lake import is_local
from ecrec_lib.lake_files import hadoop_fs as _hadoop_fs
from ecrec_lib.lake_files import local_path as _local
from ecrec_lib.lake_files import write_json, write_text

__all__ = ["write_json", "write_text"]  # re-exported: the pipeline's callers import them here

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

# Job exit codes: the DAG branches on these (BranchPythonOperator / trigger rules).
EXIT_OK = 0
EXIT_ERROR = 1  # unexpected failure (bug, infrastructure)
EXIT_INPUT_MISSING = 2  # an input partition does not exist (message names path and fix)
EXIT_NO_DATA = 3  # the raw partition exists but holds no line: ops marker status=no_data written
EXIT_CONTRACT = 4  # a critical Great Expectations expectation failed: nothing was published

STAGING_PREFIX = ".staging-"
OLD_PREFIX = ".old-"


class InputMissingError(FileNotFoundError):
    """A required input partition is absent; the message names the path and the fix."""


class NoDataError(RuntimeError):
    """The raw partition exists but is empty (exit code :data:`EXIT_NO_DATA`)."""


def path_exists(spark: SparkSession, path: str) -> bool:
    """Does a file or directory exist (local or any Hadoop filesystem)?"""
    if is_local(path):
        return os.path.exists(_local(path))
    fs, jpath = _hadoop_fs(spark, path)
    return bool(fs.exists(jpath))


def delete_path(spark: SparkSession, path: str) -> None:
    if is_local(path):
        p = Path(_local(path))
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        return
    fs, jpath = _hadoop_fs(spark, path)
    if fs.exists(jpath):
        fs.delete(jpath, True)


def staging_path(final_path: str) -> str:
    """The hidden sibling a partition is written to before it is published."""
    parent, _, name = final_path.rstrip("/").rpartition("/")
    return f"{parent}/{STAGING_PREFIX}{name}"


def write_staged(df: DataFrame, final_path: str, n_files: int | None = None) -> str:
    """Write ``df`` as Parquet to the staging sibling of ``final_path`` (overwrite); return it."""
    stage = staging_path(final_path)
    out = df.coalesce(n_files) if n_files else df
    out.write.mode("overwrite").parquet(stage)
    return stage


def publish(spark: SparkSession, final_path: str) -> None:
    """Move the staged partition of ``final_path`` into place (see module docstring)."""
    stage = staging_path(final_path)
    if is_local(final_path):
        final = Path(_local(final_path))
        staged = Path(_local(stage))
        old = final.parent / f"{OLD_PREFIX}{final.name}"
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)
        staged.rename(final)
        if old.exists():
            shutil.rmtree(old)
        return
    from pyspark.sql import functions as F

    root, _, name = final_path.rstrip("/").rpartition("/")
    ds = name.removeprefix("ds=")
    (
        spark.read.parquet(stage)
        .withColumn("ds", F.lit(ds))
        .write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy("ds")
        .parquet(root)
    )
    delete_path(spark, stage)


def discard_staged(spark: SparkSession, final_path: str) -> None:
    """Remove a staged partition that will not be published (failed validation)."""
    delete_path(spark, staging_path(final_path))


def read_json(spark: SparkSession, path: str) -> dict[str, Any] | None:
    """Read an ops record, or ``None`` when it does not exist."""
    if is_local(path):
        p = Path(_local(path))
        return json.loads(p.read_text()) if p.is_file() else None
    if not path_exists(spark, path):
        return None
    return json.loads("\n".join(r.value for r in spark.read.text(path).collect()))


def read_raw_lines(spark: SparkSession, path: str, what: str) -> DataFrame:
    """The raw JSON lines of one partition as a ``value`` column (gzip is read transparently).

    Raises :class:`InputMissingError` when the partition directory does not exist.
    """
    if not path_exists(spark, path):
        raise InputMissingError(
            f"raw {what} partition {path} does not exist; land the day's {what} there "
            f"(gzipped JSON lines, see docs/data_contracts.md) or run jobs.generate_events for "
            "a synthetic lake"
        )
    return spark.read.option("lineSep", "\n").text(path)


def parse_json_lines(lines: DataFrame, schema: StructType, corrupt_col: str) -> DataFrame:
    """Parse ``value`` with an explicit schema in PERMISSIVE mode.

    Malformed lines are kept (all fields null, the line in ``corrupt_col``), never dropped.
    ``_keys`` holds the top-level JSON keys actually present, for schema-drift reporting.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    full = T.StructType([*schema.fields, T.StructField(corrupt_col, T.StringType())])
    parsed = F.from_json(
        "value", full, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": corrupt_col}
    )
    return lines.select(
        F.col("value").alias("raw_line"),
        F.json_object_keys("value").alias("_keys"),
        parsed.alias("j"),
    ).select("raw_line", "_keys", "j.*")


def count_parquet_rows(spark: SparkSession, path: str) -> int | None:
    """Row count of a (published or staged) partition from its Parquet footers, ``None`` when
    absent. Local paths read the footers with pyarrow (no Spark job: milliseconds); other
    filesystems let Spark count (which also reads only the footers)."""
    if not path_exists(spark, path):
        return None
    if is_local(path):
        import pyarrow.parquet as pq

        root = Path(_local(path))
        files = [root] if root.is_file() else [
            f for f in root.rglob("*.parquet")
            if not any(p.startswith((".", "_")) for p in f.relative_to(root).parts)
        ]
        return sum(pq.read_metadata(f).num_rows for f in files)
    return spark.read.parquet(path).count()
