"""Lake I/O for the pipeline: raw JSON-lines reading, staged (atomic) Parquet writes, ops records.

Publishing protocol (what makes a job atomic and idempotent):

0. the job holds the single-writer lock of every partition it writes for the whole span
   (:func:`ecrec_lib.partitions.partition_locks`), which also recovers a swap a killed run
   left half-done;
1. every output is first written to a hidden sibling ``.staging-<run id>-ds=D``, unique to the
   run (Spark's partition discovery ignores names starting with ``.``, so readers never see it);
2. the output's Great Expectations suite runs on the staged data;
3. only when every critical suite of the job passed, each staged dir is renamed into place
   (local paths: ``ds=D`` -> ``.old-<run id>-ds=D``, staging -> ``ds=D``, old removed:
   :func:`ecrec_lib.partitions.swap_in`). On object stores, where rename is not atomic, the
   staged data is re-written with Spark's dynamic partition overwrite (``mode("overwrite")`` +
   ``partitionOverwriteMode=dynamic``), never appended.

A job failing half-way therefore leaves the previous ``ds=D`` (or none) visible, never a partial one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecrec_lib import partitions
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
EXIT_LOCKED = 5  # another live writer holds an output partition (message names it): retry later

STAGING_PREFIX = partitions.STAGING_PREFIX
OLD_PREFIX = partitions.OLD_PREFIX


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


def list_partitions(spark: SparkSession, dataset_root: str) -> list[str]:
    """The ds values of the published ``ds=`` partitions under ``dataset_root``, sorted
    (hidden staging / old copies and lock files are not partitions)."""
    if is_local(dataset_root):
        root = Path(_local(dataset_root))
        names = [p.name for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
    else:
        fs, jpath = _hadoop_fs(spark, dataset_root)
        names = ([s.getPath().getName() for s in fs.listStatus(jpath) if s.isDirectory()]
                 if fs.exists(jpath) else [])
    return sorted(n.removeprefix("ds=") for n in names if n.startswith("ds="))


def staging_path(final_path: str, run_id: str) -> str:
    """The hidden sibling run ``run_id`` writes a partition to before it is published."""
    return partitions.staging_path(final_path, run_id)


def write_staged(df: DataFrame, final_path: str, run_id: str, n_files: int | None = None) -> str:
    """Write ``df`` as Parquet to this run's staging sibling of ``final_path``; return it."""
    stage = staging_path(final_path, run_id)
    out = df.coalesce(n_files) if n_files else df
    out.write.mode("overwrite").parquet(stage)
    return stage


def publish(spark: SparkSession, final_path: str, run_id: str,
            marker: dict[str, Any] | None = None) -> None:
    """Move this run's staged partition of ``final_path`` into place (see module docstring).

    ``marker`` is written as ``_run.json`` inside the partition (skipped by Spark and pyarrow),
    so a reader can tell which run published it; locally it travels with the swap."""
    stage = staging_path(final_path, run_id)
    text = json.dumps(marker, sort_keys=True) if marker is not None else None
    if is_local(final_path):
        if text is not None:
            (Path(_local(stage)) / partitions.RUN_MARKER).write_text(text)
        partitions.swap_in(_local(stage), _local(final_path), run_id)
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
    if text is not None:
        write_text(spark, f"{final_path.rstrip('/')}/{partitions.RUN_MARKER}", text)


def discard_staged(spark: SparkSession, final_path: str, run_id: str) -> None:
    """Remove a staged partition that will not be published (failed validation)."""
    delete_path(spark, staging_path(final_path, run_id))


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
