"""Feedback loop: score yesterday's recommendations against today's behaviour.

    python -m jobs.feedback --ds 2024-01-02 [--lake ./lake] [--config F]
    python -m jobs.feedback --ds 2024-01-02 --check-only   # the hit-rate alert alone

Reads ``scores/user_topk/ds=<ds-1>`` (the recommendations published the night before),
``clean/events/ds=<ds>``, ``clean/catalog/ds=<ds>``, and for drift
``features/item_stats``, ``features/user_sequences`` and ``scores/user_topk`` of ``ds``
and ``ds-1``. Writes ``ops/feedback/ds=<ds>/metrics.json`` and replaces the ``ds`` rows of
the warehouse tables ``metrics_daily`` and ``drift_daily`` (definitions:
:mod:`ecrec_lib.feedback`).

Exit codes: 0 ok (also when there is nothing to judge yet, e.g. the first day);
1 unexpected error; 2 an input partition is missing; 5 the hit rate dropped more than
``feedback_drop_threshold`` below its trailing 7-day mean (``ALERT:`` in the log).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ecrec_lib.config import EcrecConfig, add_config_args, config_from_args
from ecrec_lib.feedback import (
    ALL,
    check_hit_rate_drop,
    drift_table,
    recommendation_metrics,
)
from ecrec_lib.lake import Lake, parse_ds
from jobs.common import setup_logging

log = logging.getLogger("jobs.feedback")

EXIT_INPUT_MISSING = 2
EXIT_ALERT = 5
HISTORY_DAYS = 7
METRICS_TABLE = "metrics_daily"
DRIFT_TABLE = "drift_daily"


class InputMissing(RuntimeError):
    pass


def _read(path: str, columns: list[str] | None = None, required: bool = True) -> pd.DataFrame | None:
    if not Path(path).is_dir():
        if required:
            raise InputMissing(
                f"input partition {path} does not exist: run ecrec_nightly for that date first"
            )
        return None
    return pd.read_parquet(path, columns=columns)


def _day(ds: str, delta: int) -> str:
    return (parse_ds(ds) + dt.timedelta(days=delta)).isoformat()


def _clean_json(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


def compute(cfg: EcrecConfig, ds: str) -> dict[str, Any]:
    """Metrics and drift for ``ds`` as a JSON-ready dict (also returns the DataFrames)."""
    lake = Lake(cfg.lake_root)
    prev = _day(ds, -1)
    events = _read(lake.clean("events", ds), ["user_key", "event_type", "item_id"])
    catalog = _read(lake.clean("catalog", ds), ["item_id", "category"])
    recs = _read(lake.scores("user_topk", prev), required=False)

    def col(path: str, column: str) -> pd.Series | None:
        df = _read(path, [column], required=False)
        return None if df is None else df[column]

    drift = drift_table(
        {
            "item_popularity": (
                col(lake.features("item_stats", prev), "popularity"),
                col(lake.features("item_stats", ds), "popularity"),
            ),
            "user_sequence_length": (
                col(lake.features("user_sequences", prev), "n_events"),
                col(lake.features("user_sequences", ds), "n_events"),
            ),
            "score": (
                col(lake.scores("user_topk", prev), "score"),
                col(lake.scores("user_topk", ds), "score"),
            ),
        }
    )
    if recs is None or recs.empty:
        log.warning(
            "no recommendations were published for %s (%s): nothing to judge today",
            prev, lake.scores("user_topk", prev),
        )
        metrics = pd.DataFrame()
        status = "no_recommendations"
    else:
        metrics = recommendation_metrics(recs, events, catalog)
        status = "ok"
    return {
        "ds": ds,
        "recommendations_ds": prev,
        "status": status,
        "n_events": len(events),
        "metrics": metrics,
        "drift": drift,
    }


def _to_json(result: dict[str, Any]) -> str:
    out = dict(result)
    out["metrics"] = result["metrics"].to_dict(orient="records")
    out["drift"] = result["drift"].to_dict(orient="records")
    return json.dumps(_clean_json(out), indent=2, sort_keys=True)


def _overall_hit_rate(doc: dict[str, Any]) -> float:
    for row in doc.get("metrics", []):
        if row.get("strategy") == ALL:
            value = row.get("hit_rate")
            return math.nan if value is None else float(value)
    return math.nan


def check(cfg: EcrecConfig, ds: str) -> tuple[bool, str]:
    """Compare the hit rate of ``ds`` with the trailing 7 days in ``ops/feedback``."""
    lake = Lake(cfg.lake_root)
    path = Path(lake.ops("feedback", ds)) / "metrics.json"
    if not path.is_file():
        raise InputMissing(f"{path} does not exist: run `python -m jobs.feedback --ds {ds}` first")
    today = _overall_hit_rate(json.loads(path.read_text()))
    history = []
    for delta in range(-HISTORY_DAYS, 0):
        past = Path(lake.ops("feedback", _day(ds, delta))) / "metrics.json"
        if past.is_file():
            history.append(_overall_hit_rate(json.loads(past.read_text())))
    result = check_hit_rate_drop(today, history, cfg.feedback_drop_threshold)
    return result.ok, result.message


def _sql_type(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "BOOLEAN"
    if pd.api.types.is_integer_dtype(dtype):
        return "BIGINT"
    if pd.api.types.is_float_dtype(dtype):
        return "DOUBLE PRECISION"
    return "TEXT"


def replace_partition(cfg: EcrecConfig, table: str, ds: str, df: pd.DataFrame) -> None:
    """Replace the ``ds`` rows of ``<warehouse_schema>.<table>`` with ``df`` in one transaction.

    Uses the scoring warehouse's connection layer (:mod:`ecrec_lib.warehouse`: DuckDB file or
    PostgreSQL); the table is created on first use with ``ds DATE`` as its first column.
    """
    from ecrec_lib.warehouse import connect

    frame = df.copy()
    frame.insert(0, "ds", parse_ds(ds))
    with connect(cfg.warehouse_url, cfg.warehouse_schema,
                 lock_wait_s=cfg.warehouse_lock_wait_s) as wh:
        cols = ", ".join(f"{c} {_sql_type(df[c].dtype)}" for c in df.columns)
        wh.execute(f"CREATE SCHEMA IF NOT EXISTS {wh.schema}")
        wh.execute(f"CREATE TABLE IF NOT EXISTS {wh.fq(table)} (ds DATE NOT NULL, {cols})")
        with wh.transaction():
            wh.execute(f"DELETE FROM {wh.fq(table)} WHERE ds = %s", [parse_ds(ds)])
            if len(frame):
                wh.insert_dataframe(table, frame)
        from ecrec_lib.warehouse.dimensions import FEEDBACK_TABLE_COMMENTS, comment_feedback_table

        if table in FEEDBACK_TABLE_COMMENTS:
            comment_feedback_table(wh, table)  # BI users read the table's meaning in their client
        if cfg.warehouse_read_copy:
            wh.refresh_read_copy()
    log.info("warehouse %s.%s: replaced ds=%s with %d rows", cfg.warehouse_schema, table, ds,
             len(frame))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD of the events")
    parser.add_argument(
        "--check-only", action="store_true",
        help="only compare the stored hit rate with its trailing 7-day mean (the alert)",
    )
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args)
    try:
        if args.check_only:
            ok, message = check(cfg, args.ds)
            if not ok:
                log.error("%s", message)
                return EXIT_ALERT
            log.info("%s", message)
            return 0
        result = compute(cfg, args.ds)
    except InputMissing as exc:
        log.error("%s", exc)
        return EXIT_INPUT_MISSING

    out_dir = Path(Lake(cfg.lake_root).ops("feedback", args.ds))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".metrics.json.tmp"
    tmp.write_text(_to_json(result))
    tmp.replace(out_dir / "metrics.json")  # atomic: readers never see half a file

    metrics = result["metrics"]
    if not metrics.empty:
        replace_partition(cfg, METRICS_TABLE, args.ds, metrics)
    replace_partition(cfg, DRIFT_TABLE, args.ds, result["drift"])
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        log.info("feedback for %s (recommendations of %s): %s\n%s\ndrift:\n%s",
                 args.ds, result["recommendations_ds"], result["status"],
                 metrics.to_string(index=False) if not metrics.empty else "(no metrics)",
                 result["drift"].to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
