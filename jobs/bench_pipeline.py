"""Benchmark the Spark pipeline (clean + featurize) against a DuckDB single-machine reference.

    python -m jobs.bench_pipeline --events 1000000 [--days 4] [--master local[*]] [--workdir DIR]

Generates ``--events`` events over ``--days`` days with ``ecrec_lib.generator`` (dirt and bots
come on top, so the raw line count is a bit higher and is what rates are computed from), runs
``run_clean`` for every day and ``run_features`` for the last day in one Spark session, then
times DuckDB running the equivalent cleaning query (explicit-column read_json, dedupe by
event_id, the same filters, user hashing) over the same gz files. Prints a Markdown table for
BENCHMARKS.md and writes it as JSON to ``<workdir>/bench_pipeline.json``.

DuckDB has no HMAC: the reference hashes sha256(key || user_id) per *distinct* user (same amount
of hashing work as the Spark job, not the same function). It applies rules, not GX suites.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from ecrec_lib import schema as S
from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.lake import Lake, ds_range
from jobs.common import setup_logging, spark_session

log = logging.getLogger("jobs.bench_pipeline")
START = "2024-01-01"
BENCH_KEY = "bench-pseudonymization-key-0123456789"


def duckdb_clean(lake: Lake, ds: str, cfg: Any, key: str, out_dir: Path) -> int:
    """The cleaning rules in one DuckDB query; writes Parquet; returns the clean row count."""
    import duckdb

    day = dt.datetime.fromisoformat(ds)
    tol = dt.timedelta(hours=cfg.late_tolerance_hours)
    start, end = day - tol, day + dt.timedelta(days=1) + tol
    cols = {"string": "VARCHAR", "integer": "BIGINT", "number": "DOUBLE", "boolean": "BOOLEAN"}
    ev_cols = ", ".join(f"'{n}': '{cols[t]}'" for n, t in S.RAW_EVENT_FIELDS.items())
    cat_cols = ", ".join(f"'{n}': '{cols[t]}'" for n, t in S.RAW_CATALOG_FIELDS.items())
    types = ", ".join(f"'{t}'" for t in S.EVENT_TYPES)
    con = duckdb.connect()
    con.execute("SET threads TO 2")
    out = out_dir / f"ds={ds}.parquet"
    sql = f"""
    COPY (
    WITH raw AS (
        SELECT * FROM read_json('{lake.raw("events", ds)}/*.json.gz', columns={{{ev_cols}}},
                                format='newline_delimited', ignore_errors=true)
    ), catalog AS (
        SELECT DISTINCT trim(item_id) AS item_id FROM read_json('{lake.raw("catalog", ds)}/*.json.gz',
            columns={{{cat_cols}}}, format='newline_delimited', ignore_errors=true)
        WHERE item_id IS NOT NULL AND nullif(trim(title), '') IS NOT NULL AND coalesce(price, 0) >= 0
    ), dedup AS (
        SELECT *, try_cast(event_time AS TIMESTAMPTZ) AS ts FROM raw
        WHERE event_id IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY hash(event_time, user_id)) = 1
    ), valid AS (
        SELECT * FROM dedup
        WHERE user_id IS NOT NULL AND session_id IS NOT NULL AND event_type IN ({types})
          AND ts IS NOT NULL AND coalesce(price, 0) >= 0
          AND NOT (event_type IN ('add_to_cart', 'purchase') AND coalesce(quantity, 1) <= 0)
          AND ts >= TIMESTAMPTZ '{start.isoformat()}+00:00' AND ts < TIMESTAMPTZ '{end.isoformat()}+00:00'
          AND (item_id IS NULL OR item_id IN (SELECT item_id FROM catalog))
    ), bots AS (
        SELECT user_id FROM valid GROUP BY user_id, date_trunc('minute', ts)
        HAVING count(*) > {cfg.bot_max_events_per_minute}
    ), users AS (
        SELECT user_id, sha256('{key}' || user_id) AS user_key FROM (SELECT DISTINCT user_id FROM valid)
    )
    SELECT v.event_id, v.ts AS event_time, u.user_key, v.session_id, v.event_type, v.item_id,
           trim(regexp_replace(lower(nfc_normalize(v.query)), '\\s+', ' ', 'g')) AS query,
           v.position, v.price, v.quantity, lower(trim(v.device)) AS device,
           upper(trim(v.country)) AS country
    FROM valid v JOIN users u USING (user_id)
    WHERE v.user_id NOT IN (SELECT user_id FROM bots)
    ) TO '{out}' (FORMAT parquet)
    """
    con.execute(sql)
    n = con.execute(f"SELECT count(*) FROM '{out}'").fetchone()[0]
    con.close()
    return int(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="generated events in total")
    parser.add_argument("--days", type=int, default=4, help="days the events are spread over")
    parser.add_argument("--users", type=int, default=0, help="users (default: events / 20)")
    parser.add_argument("--items", type=int, default=0, help="catalog items (default: events / 200)")
    parser.add_argument("--dirty-rate", type=float, default=0.01, help="generator dirt/bot rate")
    parser.add_argument("--master", default="local[*]", help="Spark master URL")
    parser.add_argument("--workdir", default="/tmp/ecrec_bench", help="scratch dir (wiped first)")
    parser.add_argument("--skip-duckdb", action="store_true", help="skip the DuckDB reference")
    parser.add_argument("--keep", action="store_true", help="keep the generated lake afterwards")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lake_root = str(work / "lake")
    args.lake = lake_root  # the benchmark always works in its own scratch lake
    cfg = config_from_args(args, lookback_days=args.days)
    lake = Lake(lake_root)
    key = os.environ.get("ECREC_PSEUDO_KEY") or BENCH_KEY
    last = dt.date.fromisoformat(START) + dt.timedelta(days=args.days - 1)
    days = ds_range(last.isoformat(), args.days)

    from ecrec_lib.generator import generate

    t0 = time.perf_counter()
    summary = generate(lake_root, START, args.days, users=args.users or max(1000, args.events // 20),
                       items=args.items or max(500, args.events // 200), seed=7,
                       dirty_rate=args.dirty_rate, events_per_day=args.events // args.days)
    gen_s = time.perf_counter() - t0
    raw_lines = sum(d.lines_written for d in summary.per_day)
    log.info("generated %d raw lines in %.1f s", raw_lines, gen_s)

    from ecrec_lib.pipeline.clean import run_clean
    from ecrec_lib.pipeline.features import run_features
    from ecrec_lib.validation import preload_in_background

    preload_in_background()  # as the clean and features jobs do
    spark = spark_session(cfg, "bench_pipeline", args.master)
    stages: dict[str, float] = {}
    try:
        spark.range(1).count()  # JVM warm-up is not pipeline time
        t0 = time.perf_counter()
        clean_rows = 0
        for ds in days:
            res = run_clean(spark, cfg, ds, key=key.encode())
            clean_rows += res.events.clean_rows if res.events else 0
        stages["clean"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        feats = run_features(spark, cfg, days[-1], lookback_days=args.days)
        stages["features"] = time.perf_counter() - t0
    finally:
        spark.stop()

    duck_s = None
    duck_rows = None
    if not args.skip_duckdb:
        t0 = time.perf_counter()
        duck_rows = sum(duckdb_clean(lake, ds, cfg, key, work) for ds in days)
        duck_s = time.perf_counter() - t0

    total = stages["clean"] + stages["features"]
    report = {
        "events_requested": args.events, "raw_lines": raw_lines, "days": args.days,
        "clean_rows": clean_rows, "feature_rows": feats.row_counts, "generate_s": round(gen_s, 1),
        "clean_s": round(stages["clean"], 1), "features_s": round(stages["features"], 1),
        "end_to_end_s": round(total, 1), "end_to_end_events_per_s": round(raw_lines / total),
        "clean_events_per_s": round(raw_lines / stages["clean"]),
        "features_events_per_s": round(clean_rows / stages["features"]),
        "duckdb_clean_s": None if duck_s is None else round(duck_s, 1),
        "duckdb_clean_rows": duck_rows,
        "spark_clean_vs_duckdb": None if duck_s is None else round(stages["clean"] / duck_s, 2),
        "master": args.master, "cpus": os.cpu_count(),
    }
    (work / "bench_pipeline.json").write_text(json.dumps(report, indent=2))
    rows = [
        ("generate (not timed in rate)", report["generate_s"], "-"),
        (f"clean_events x{args.days} days (Spark, incl. GX)", report["clean_s"], report["clean_events_per_s"]),
        ("build_features (Spark, incl. GX)", report["features_s"], report["features_events_per_s"]),
        ("end to end (clean + features)", report["end_to_end_s"], report["end_to_end_events_per_s"]),
    ]
    if duck_s is not None:
        rows.append(("DuckDB reference clean (rules only)", report["duckdb_clean_s"], round(raw_lines / duck_s)))
    print(f"\n### bench_pipeline --events {args.events} ({raw_lines} raw lines, {args.days} days, "
          f"{args.master}, {os.cpu_count()} CPUs)\n")
    print("| stage | seconds | events/s |\n|---|---:|---:|")
    for name, secs, rate in rows:
        print(f"| {name} | {secs} | {rate} |")
    if duck_s is not None:
        print(f"\nSpark clean / DuckDB clean time ratio: {report['spark_clean_vs_duckdb']}x "
              f"(clean rows Spark {clean_rows}, DuckDB {duck_rows})")
    if not args.keep:
        shutil.rmtree(work / "lake", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
