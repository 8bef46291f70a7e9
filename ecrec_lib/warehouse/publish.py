"""Atomic publication of the score tables into the warehouse.

1. ``ensure_schema``: schema, main tables, ``<table>_latest`` and ``<table>_named`` views, the
   ``items`` dimension and ``published_nights`` (:mod:`ecrec_lib.warehouse.dimensions`),
   COMMENT ON everything.
2. Under the schema's writer lock (a PostgreSQL advisory lock; DuckDB's file lock), drop the
   staging tables a killed publisher left, load every table (and the night's catalog items)
   into ``<table>__staging_<run id>`` and check it there (row count, ds, key columns).
3. ONE transaction for all tables: delete the ds partition from the main table, insert from
   staging, delete partitions older than the retention, merge the items, record the night in
   ``published_nights``. Readers see the whole night or none of it (PostgreSQL MVCC; DuckDB's
   single-writer transactions). PostgreSQL readers never block the publish (nothing here takes
   a lock a reader's ACCESS SHARE conflicts with); DuckDB readers of other processes do (file
   lock): see :mod:`ecrec_lib.warehouse.backend`.
Any failure before the commit leaves the published data exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from collections.abc import Mapping

import pandas as pd

from ecrec_lib.lake import parse_ds
from ecrec_lib.partitions import fault_pause
from ecrec_lib.scoring.tables import LIST_KEYS, TABLE_COLUMNS
from ecrec_lib.warehouse import dimensions
from ecrec_lib.warehouse.backend import Warehouse, ident

log = logging.getLogger(__name__)

SQL_TYPES = {
    "ds": "DATE",
    "rank": "INTEGER",
    "score": "DOUBLE PRECISION",
}  # every other column: TEXT

TABLE_COMMENTS = {
    "user_topk": "Nightly top-K recommendations per user (one row per user, rank). Read "
    "user_topk_latest for the newest night.",
    "item_related": "Items similar to each catalog item ('customers also viewed'), from item "
    "embeddings blended with co-occurrence.",
    "query_topk": "Top-K items for the day's most frequent normalized search queries.",
    "trending": "Trending items globally and per segment (country=XX, device=YY).",
}
COLUMN_COMMENTS = {
    "ds": "Logical date (night) the scores were computed for; one partition per ds.",
    "user_key": "Pseudonymized user id (HMAC of the shop's user id); never the raw id.",
    "rank": "Position in the list, 1 = best; 1..K without gaps.",
    "item_id": "Catalog item id (recommended item; in item_related: the source item).",
    # Each table's score is a different quantity: see dimensions.SCORE_COMMENTS.
    "reason_item_id": "The user's history item most similar to the recommendation "
    "('because you viewed X'); NULL for cold-start users.",
    "strategy": "How the list was made: two_tower (personalized model), segment_trending "
    "(no history: country/device trending), global_trending (no history, no segment).",
    "model_version": "Registry version of the champion model that produced the list.",
    "related_item_id": "Item recommended next to item_id, in rank order.",
    "query": "Normalized search text (NFKC, lower case, single spaces).",
    "segment": "'global', 'country=XX' or 'device=YY'.",
}
STAGING_SUFFIX = "__staging"


class PublishError(RuntimeError):
    """Publication refused; the published tables are untouched. The message says why."""


def _col_type(col: str) -> str:
    return SQL_TYPES.get(col, "TEXT")


def ensure_schema(wh: Warehouse) -> None:
    """Create schema, tables, latest and named views, items, published_nights and comments
    (idempotent)."""
    wh.execute(f"CREATE SCHEMA IF NOT EXISTS {ident(wh.schema)}")
    for table, cols in TABLE_COLUMNS.items():
        ddl = ", ".join(f"{ident(c)} {_col_type(c)} NOT NULL" if c != "reason_item_id"
                        else f"{ident(c)} {_col_type(c)}" for c in cols)
        wh.execute(f"CREATE TABLE IF NOT EXISTS {wh.fq(table)} ({ddl})")
        # Created once, not replaced every night: on PostgreSQL, CREATE OR REPLACE VIEW takes an
        # ACCESS EXCLUSIVE lock that waits for every open reader transaction on the view (a BI
        # session), so a reader would block the publish (measured; test_warehouse). The view
        # selects whatever the table holds, so its definition does not change between nights.
        if not wh.relation_exists(table + "_latest"):
            wh.execute(
                f"CREATE VIEW {wh.fq(table + '_latest')} AS SELECT * FROM {wh.fq(table)} "
                f"WHERE ds = (SELECT max(ds) FROM {wh.fq(table)})"
            )
        wh.execute(f"COMMENT ON TABLE {wh.fq(table)} IS " + _lit(TABLE_COMMENTS[table]))
        wh.execute(
            f"COMMENT ON VIEW {wh.fq(table + '_latest')} IS "
            + _lit(f"Rows of {table} for its newest ds. " + TABLE_COMMENTS[table])
        )
        for c in cols:
            text = dimensions.SCORE_COMMENTS[table] if c == "score" else COLUMN_COMMENTS[c]
            for relation in (table, table + "_latest"):
                wh.execute(f"COMMENT ON COLUMN {wh.fq(relation)}.{ident(c)} IS " + _lit(text))
    dimensions.ensure_dimensions(wh, TABLE_COMMENTS, COLUMN_COMMENTS)


def _lit(text: str) -> str:
    # COMMENT ON takes a literal, not a bind parameter; the texts are ours, quote them anyway.
    return "'" + text.replace("'", "''") + "'"


def staging_name(table: str, run_id: str) -> str:
    """``<table>__staging_<run id>``: a valid identifier on both engines (<= 63 characters)."""
    token = re.sub(r"[^a-z0-9_]", "_", run_id.lower())[-24:]
    return f"{table}{STAGING_SUFFIX}_{token}"


def _load_staging(wh: Warehouse, table: str, df: pd.DataFrame, ds: str, run_id: str) -> str:
    staging = staging_name(table, run_id)
    cols = TABLE_COLUMNS[table]
    wh.execute(f"DROP TABLE IF EXISTS {wh.fq(staging)}")
    ddl = ", ".join(f"{ident(c)} {_col_type(c)}" for c in cols)
    wh.execute(f"CREATE TABLE {wh.fq(staging)} ({ddl})")
    frame = df[list(cols)].copy()
    frame["ds"] = parse_ds(ds)
    wh.insert_dataframe(staging, frame)
    return staging


def _check_staging(wh: Warehouse, table: str, staging: str, expected_rows: int, ds: str) -> list[str]:
    """Warehouse-side checks of what actually landed in staging."""
    problems = []
    n = int(wh.scalar(f"SELECT count(*) FROM {wh.fq(staging)}"))
    if n != expected_rows:
        problems.append(f"{table}: staging holds {n} rows, the lake partition {expected_rows}")
    other = int(wh.scalar(f"SELECT count(*) FROM {wh.fq(staging)} WHERE ds <> %s", [parse_ds(ds)]))
    if other:
        problems.append(f"{table}: {other} staged rows have a ds other than {ds}")
    keys = [*LIST_KEYS[table], "rank"]
    nulls = " OR ".join(f"{ident(c)} IS NULL" for c in TABLE_COLUMNS[table] if c != "reason_item_id")
    bad = int(wh.scalar(f"SELECT count(*) FROM {wh.fq(staging)} WHERE {nulls}"))
    if bad:
        problems.append(f"{table}: {bad} staged rows have NULL in a required column")
    key_sql = ", ".join(ident(c) for c in keys)
    dups = int(wh.scalar(
        f"SELECT count(*) FROM (SELECT {key_sql} FROM {wh.fq(staging)} GROUP BY {key_sql} "
        "HAVING count(*) > 1) d"
    ))
    if dups:
        problems.append(f"{table}: {dups} duplicate ({', '.join(keys)}) keys in staging")
    return problems


def drop_leftover_staging(wh: Warehouse) -> list[str]:
    """Drop the staging tables a killed publisher left (call under :meth:`Warehouse.writer_lock`:
    then no live publisher owns any); returns their names."""
    names = wh.query(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
        "AND table_name LIKE %s", [wh.schema, "%staging%"])["table_name"].tolist()
    names = [n for n in names if f"{STAGING_SUFFIX}_" in n]  # LIKE's "_" matches any letter
    for name in names:
        wh.execute(f"DROP TABLE IF EXISTS {wh.fq(name)}")
    if names:
        log.warning("dropped %d staging table(s) a killed publish left: %s", len(names), names)
    return names


def publish(
    wh: Warehouse,
    tables: Mapping[str, pd.DataFrame],
    ds: str,
    retention_days: int,
    *,
    items: pd.DataFrame | None = None,
    run_id: str | None = None,
) -> dict[str, int]:
    """Publish the ds partition of every table in one transaction; returns rows per table.

    ``items`` (:func:`dimensions.items_frame` of the night's clean catalog) is merged into the
    ``items`` dimension in the same transaction; the night is recorded in ``published_nights``.
    ``run_id`` names this publisher's staging tables (default: a fresh id).
    """
    run_id = run_id or uuid.uuid4().hex[:12]
    unknown = set(tables) - set(TABLE_COLUMNS)
    if unknown:
        raise PublishError(f"unknown score tables {sorted(unknown)}")
    with wh.writer_lock():
        fault_pause(f"warehouse {wh.schema} ds={ds}")  # the chaos harness's second writer
        ensure_schema(wh)
        drop_leftover_staging(wh)
        rows = _publish_locked(wh, tables, ds, retention_days, items, run_id)
    log.info("published ds=%s to %s schema %s: %s", ds, wh.kind, wh.schema, rows)
    return rows


def _publish_locked(wh: Warehouse, tables: Mapping[str, pd.DataFrame], ds: str,
                    retention_days: int, items: pd.DataFrame | None, run_id: str) -> dict[str, int]:
    staged: dict[str, str] = {}
    try:
        problems: list[str] = []
        for table, df in tables.items():
            staged[table] = _load_staging(wh, table, df, ds, run_id)
            problems += _check_staging(wh, table, staged[table], len(df), ds)
        if items is not None:
            staged[dimensions.ITEMS] = dimensions.load_items_staging(
                wh, items, staging_name(dimensions.ITEMS, run_id))
            problems += dimensions.check_items_staging(wh, staged[dimensions.ITEMS], len(items))
        if problems:
            raise PublishError("staging checks failed: " + "; ".join(problems))
        day = parse_ds(ds)
        cutoff = day - dt.timedelta(days=retention_days)
        rows = {t: int(len(df)) for t, df in tables.items()}
        with wh.transaction():
            for table in tables:
                staging = staged[table]
                cols = ", ".join(ident(c) for c in TABLE_COLUMNS[table])
                wh.execute(f"DELETE FROM {wh.fq(table)} WHERE ds = %s", [day])
                wh.execute(
                    f"INSERT INTO {wh.fq(table)} ({cols}) SELECT {cols} FROM {wh.fq(staging)}"
                )
                if retention_days > 0:
                    wh.execute(f"DELETE FROM {wh.fq(table)} WHERE ds <= %s", [cutoff])
            if items is not None:
                dimensions.merge_items(wh, staged[dimensions.ITEMS], ds)
            dimensions.record_night(
                wh, ds, rows, None if items is None else len(items),
                dimensions.served_versions(tables.get("user_topk", pd.DataFrame())),
            )
    finally:
        for staging in staged.values():
            wh.execute(f"DROP TABLE IF EXISTS {wh.fq(staging)}")
    return rows


def partitions(wh: Warehouse, table: str) -> list[str]:
    """Published ds values of a table, oldest first."""
    df = wh.query(f"SELECT DISTINCT ds FROM {wh.fq(table)} ORDER BY ds")
    return [str(pd.Timestamp(v).date()) for v in df["ds"]]
