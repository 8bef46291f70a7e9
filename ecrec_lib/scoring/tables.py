"""The score tables: column types, atomic Parquet writes under scores/<table>/ds=D/, reads,
and the run manifest that ties a night's tables to one scoring run.

Every partition holds ``_run.json`` (the writing run's id and row count; ``_`` files are
skipped by Spark and pyarrow). The scoring run writes ``ops/runs/ds=D/manifest.json`` last:
run id, model version, rows per table. :func:`check_manifest` refuses a set of tables that
does not all come from the manifest's run (a re-scored table beside older ones, a killed run).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ecrec_lib import partitions
from ecrec_lib.lake import Lake, is_local, replace_local_dir
from ecrec_lib.schema import (
    ITEM_RELATED_COLUMNS,
    QUERY_TOPK_COLUMNS,
    TRENDING_COLUMNS,
    USER_TOPK_COLUMNS,
)

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "user_topk": USER_TOPK_COLUMNS,
    "item_related": ITEM_RELATED_COLUMNS,
    "query_topk": QUERY_TOPK_COLUMNS,
    "trending": TRENDING_COLUMNS,
}
# Arrow type of every score column (the warehouse DDL maps from these).
COLUMN_TYPES: dict[str, pa.DataType] = {
    "ds": pa.string(),
    "user_key": pa.string(),
    "item_id": pa.string(),
    "related_item_id": pa.string(),
    "reason_item_id": pa.string(),
    "query": pa.string(),
    "segment": pa.string(),
    "strategy": pa.string(),
    "model_version": pa.string(),
    "rank": pa.int32(),
    "score": pa.float64(),
}
# The key (without rank) that identifies one ranked list in each table.
LIST_KEYS: dict[str, tuple[str, ...]] = {
    "user_topk": ("user_key",),
    "item_related": ("item_id",),
    "query_topk": ("query",),
    "trending": ("segment",),
}
# The recommended item column of each table.
ITEM_COLUMN: dict[str, str] = {
    "user_topk": "item_id",
    "item_related": "related_item_id",
    "query_topk": "item_id",
    "trending": "item_id",
}


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([(c, COLUMN_TYPES[c]) for c in TABLE_COLUMNS[table]])


def to_arrow(table: str, df: pd.DataFrame) -> pa.Table:
    """Exactly the table's columns, in order, with the declared types (raises naming the
    missing column otherwise)."""
    missing = [c for c in TABLE_COLUMNS[table] if c not in df.columns]
    if missing:
        raise ValueError(f"{table}: missing columns {missing}; expected {TABLE_COLUMNS[table]}")
    return pa.Table.from_pandas(
        df[list(TABLE_COLUMNS[table])], schema=arrow_schema(table), preserve_index=False
    )


def _local(path: str) -> str:
    if not is_local(path):
        raise NotImplementedError(
            f"{path}: the single-process writer handles local lakes; use --engine spark for "
            "object storage"
        )
    return path.removeprefix("file://")


RUN_MARKER = partitions.RUN_MARKER
MANIFEST = "manifest.json"


class RunManifestError(RuntimeError):
    """The score tables of a ds do not all come from the run its manifest names."""


def write_atomic(table: str, df: pd.DataFrame, lake: Lake, ds: str,
                 run_id: str | None = None) -> str:
    """Write ``scores/<table>/ds=D/`` atomically: a temp dir beside it, then rename; a previous
    partition is swapped out and removed only after the new one is in place.

    Like Spark's partitioned writes, the files hold every column but ``ds`` (it is the directory
    name), so ``spark.read.parquet("scores/<table>")`` sees ds as the partition column.
    ``_run.json`` records ``run_id`` (a fresh one when not given: a write outside a scoring run
    is a run of its own, and the manifest check says so).
    """
    bad = set(df["ds"].astype(str).unique()) - {ds} if "ds" in df.columns else set()
    if bad:
        raise ValueError(f"{table}: rows with ds {sorted(bad)} cannot go into partition ds={ds}")
    data = to_arrow(table, df.assign(ds=ds)).drop_columns(["ds"])
    marker = {"run_id": run_id or partitions.new_run_id(), "table": table, "ds": ds,
              "rows": data.num_rows}

    def write(tmp: Path) -> None:
        pq.write_table(data, tmp / "part-00000.parquet")
        (tmp / RUN_MARKER).write_text(json.dumps(marker, sort_keys=True))

    return str(replace_local_dir(_local(lake.scores(table, ds)), write))


def manifest_path(lake: Lake, ds: str) -> str:
    return f"{lake.ops('runs', ds)}/{MANIFEST}"


def write_manifest(lake: Lake, ds: str, run_id: str, model_version: str,
                   rows: dict[str, int]) -> dict:
    """Write ``ops/runs/ds=D/manifest.json`` (last step of a scoring run, atomically)."""
    manifest = {"ds": ds, "run_id": run_id, "model_version": model_version,
                "tables": {t: {"rows": int(n), "run_id": run_id} for t, n in sorted(rows.items())}}
    write_json_atomic(manifest_path(lake, ds), manifest)
    return manifest


def read_run_marker(table: str, lake: Lake, ds: str) -> dict | None:
    path = Path(_local(lake.scores(table, ds))) / RUN_MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def check_manifest(lake: Lake, ds: str, tables: dict[str, pd.DataFrame]) -> dict:
    """The manifest of ds, after checking that every table in ``tables`` was written by its run
    (``_run.json`` run id), holds the rows it recorded and the model version it names.
    Raises :class:`RunManifestError` naming every mismatch and the fix."""
    path = Path(_local(manifest_path(lake, ds)))
    fix = f"re-run `python -m jobs.score_topk --ds {ds}` to write a whole set, then publish"
    if not path.is_file():
        raise RunManifestError(
            f"no run manifest {path}: the scoring run of ds={ds} did not finish (it is written "
            f"last); {fix}"
        )
    manifest = json.loads(path.read_text())
    run_id = manifest["run_id"]
    problems = []
    for table, df in tables.items():
        entry = manifest["tables"].get(table)
        marker = read_run_marker(table, lake, ds)
        if entry is None:
            problems.append(f"{table} is not in the manifest of run {run_id}")
            continue
        if marker is None or marker.get("run_id") != run_id:
            who = f"run {marker['run_id']}" if marker else "an unknown run (no _run.json)"
            problems.append(f"scores/{table}/ds={ds} was written by {who}, the manifest names "
                            f"run {run_id}")
        if len(df) != int(entry["rows"]):
            problems.append(f"{table} holds {len(df)} rows, run {run_id} wrote {entry['rows']}")
        if "model_version" in df.columns:
            versions = sorted(set(df["model_version"].astype(str)) - {str(manifest["model_version"])})
            if versions:
                problems.append(f"{table} has rows of model versions {versions}, run {run_id} "
                                f"scored with {manifest['model_version']}")
    if problems:
        raise RunManifestError(
            f"the score tables of ds={ds} are not one run's set: " + "; ".join(problems) + f". {fix}"
        )
    return manifest


def read_table(table: str, lake: Lake, ds: str) -> pd.DataFrame:
    """One published lake partition of a score table (ds as a column)."""
    path = Path(_local(lake.scores(table, ds)))
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} does not exist: run `python -m jobs.score_topk --ds {ds}` first"
        )
    schema = arrow_schema(table)
    data = pq.read_table(path, schema=schema.remove(schema.get_field_index("ds"))).to_pandas()
    data.insert(0, "ds", ds)
    return data[list(TABLE_COLUMNS[table])]


def write_json_atomic(path: str, payload: dict) -> None:
    p = Path(_local(path))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, p)
