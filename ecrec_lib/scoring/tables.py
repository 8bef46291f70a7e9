"""The score tables: column types, atomic Parquet writes under scores/<table>/ds=D/, reads."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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


def write_atomic(table: str, df: pd.DataFrame, lake: Lake, ds: str) -> str:
    """Write ``scores/<table>/ds=D/`` atomically: a temp dir beside it, then rename; a previous
    partition is swapped out and removed only after the new one is in place.

    Like Spark's partitioned writes, the files hold every column but ``ds`` (it is the directory
    name), so ``spark.read.parquet("scores/<table>")`` sees ds as the partition column.
    """
    bad = set(df["ds"].astype(str).unique()) - {ds} if "ds" in df.columns else set()
    if bad:
        raise ValueError(f"{table}: rows with ds {sorted(bad)} cannot go into partition ds={ds}")
    data = to_arrow(table, df.assign(ds=ds)).drop_columns(["ds"])
    target = replace_local_dir(_local(lake.scores(table, ds)),
                               lambda tmp: pq.write_table(data, tmp / "part-00000.parquet"))
    return str(target)


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
