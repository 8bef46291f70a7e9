"""Benchmark the right to be forgotten: erase N users from an N-day lake.

    python -m jobs.bench_forget [--days 4] [--events-per-day 1000000] [--forget 100]
                                [--workdir /tmp/ecrec_bench_forget] [--reuse]

Builds the lake once under ``<workdir>/pristine`` with ``ecrec_lib.generator`` (1% dirt),
``run_clean`` and ``run_features`` for every day (Spark, lookback = ``--days``) and a synthetic
``scores/user_topk`` of ``--topk`` rows per featurized user and day. Each timed run works on a
hard-linked copy of it (``cp -al``: erasure writes new files and swaps folders, it never edits a
lake file in place, so the pristine lake stays intact) and a fresh DuckDB warehouse holding the
last day's ``user_topk``, and erases ``--forget`` random users who have events (raw ids)
with :func:`ecrec_lib.privacy.forget.forget_users`. ``--reuse`` skips the build when the
pristine lake exists. Prints the seconds and rows removed per zone, and writes them to
``<workdir>/bench_forget.json``. No model registry is involved (an empty one: flagging
versions is a few tag writes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import logging
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

from ecrec_lib.config import EcrecConfig, add_config_args, config_from_args
from ecrec_lib.lake import Lake, ds_range
from jobs.common import setup_logging, spark_session

log = logging.getLogger("jobs.bench_forget")
START = "2024-01-01"
BENCH_KEY = "bench-pseudonymization-key-0123456789"


def build_lake(cfg: EcrecConfig, days: list[str], events_per_day: int, topk: int,
               key: bytes) -> dict[str, float]:
    """Generate, clean and featurize every day; synthesize user_topk; load the warehouse."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ecrec_lib.generator import generate
    from ecrec_lib.pipeline.clean import run_clean
    from ecrec_lib.pipeline.features import run_features
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    generate(cfg.lake_root, days[0], len(days), users=max(1000, events_per_day // 20),
             items=max(500, events_per_day // 200), seed=7, dirty_rate=0.01,
             events_per_day=events_per_day)
    timings["generate_s"] = time.perf_counter() - t0
    spark = spark_session(cfg, "bench_forget")
    try:
        t0 = time.perf_counter()
        for ds in days:
            run_clean(spark, cfg, ds, key=key)
            run_features(spark, cfg, ds, lookback_days=len(days))
        timings["clean_features_s"] = time.perf_counter() - t0
    finally:
        spark.stop()
    lake = Lake(cfg.lake_root)
    for ds in days:
        users = pq.read_table(lake.features("user_sequences", ds), columns=["user_key"])
        keys = users.column("user_key").to_pylist()
        n = len(keys)
        table = pa.table({
            "ds": [ds] * (n * topk),
            "user_key": [k for k in keys for _ in range(topk)],
            "rank": list(range(1, topk + 1)) * n,
            "item_id": [f"I{r:06d}" for _ in range(n) for r in range(topk)],
            "score": [1.0 / r for _ in range(n) for r in range(1, topk + 1)],
        })
        out = Path(lake.scores("user_topk", ds))
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / "part-00000.parquet")
    return timings


def load_warehouse(cfg: EcrecConfig, ds: str) -> None:
    """A fresh DuckDB warehouse holding ``ds``'s user_topk (a file edited in place, so it is
    built for each run rather than hard-linked from the pristine copy)."""
    from ecrec_lib.warehouse import connect

    scores = Lake(cfg.lake_root).scores("user_topk", ds)
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        wh.execute(f"CREATE SCHEMA IF NOT EXISTS {cfg.warehouse_schema}")
        wh.execute(f"CREATE OR REPLACE TABLE {wh.fq('user_topk')} AS SELECT * FROM "
                   f"read_parquet('{scores}/*.parquet')")


def pick_users(lake_root: str, ds: str, n: int, seed: int) -> list[str]:
    """``n`` random distinct raw user ids with events on ``ds``."""
    ids: set[str] = set()
    for f in sorted(Path(Lake(lake_root).raw("events", ds)).glob("*.json.gz")):
        for line in gzip.decompress(f.read_bytes()).splitlines():
            try:
                uid = json.loads(line).get("user_id")
            except ValueError:
                continue
            if isinstance(uid, str) and uid.startswith("U0"):  # not a bot (U9...)
                ids.add(uid)
    return random.Random(seed).sample(sorted(ids), min(n, len(ids)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=4, help="days in the lake")
    parser.add_argument("--events-per-day", type=int, default=1_000_000, help="generated events per day")
    parser.add_argument("--forget", type=int, default=100, help="users to erase")
    parser.add_argument("--topk", type=int, default=100, help="synthetic user_topk rows per user")
    parser.add_argument("--workdir", default="/tmp/ecrec_bench_forget", help="scratch dir")
    parser.add_argument("--reuse", action="store_true", help="reuse <workdir>/pristine when present")
    parser.add_argument("--seed", type=int, default=7, help="which users are erased")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()

    work = Path(args.workdir)
    pristine, run_dir = work / "pristine", work / "run"
    key = (os.environ.get("ECREC_PSEUDO_KEY") or BENCH_KEY).encode()
    days = ds_range((dt.date.fromisoformat(START) + dt.timedelta(days=args.days - 1)).isoformat(),
                    args.days)

    def cfg_for(root: Path) -> EcrecConfig:
        args.lake = str(root / "lake")
        return config_from_args(
            args, lookback_days=args.days, warehouse_url=f"duckdb://{root / 'wh' / 'warehouse.duckdb'}",
            mlflow_tracking_uri=f"sqlite:///{root / 'mlruns' / 'none.db'}")

    build: dict[str, float] = {}
    if not (args.reuse and (pristine / "lake").is_dir()):
        shutil.rmtree(work, ignore_errors=True)
        pristine.mkdir(parents=True)
        build = build_lake(cfg_for(pristine), days, args.events_per_day, args.topk, key)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(pristine / "lake"), str(run_dir / "lake")], check=True)

    from ecrec_lib.privacy.forget import ForgetRequest, forget_users

    cfg = cfg_for(run_dir)
    load_warehouse(cfg, days[-1])
    users = pick_users(cfg.lake_root, days[0], args.forget, args.seed)
    request = ForgetRequest.build(users, key)
    t0 = time.perf_counter()
    record = forget_users(cfg, request, key)
    seconds = time.perf_counter() - t0
    raw_lines = sum(
        len(gzip.decompress(f.read_bytes()).splitlines())
        for ds in days for f in Path(Lake(cfg.lake_root).raw("events", ds)).glob("*.json.gz"))
    report = {
        "days": args.days, "events_per_day": args.events_per_day, "raw_lines_after": raw_lines,
        "users_forgotten": len(users), "forget_s": round(seconds, 1),
        "partitions_touched": len(record["partitions_touched"]),
        "rows_removed_by_zone": record["rows_removed_by_zone"],
        "warehouse_rows_removed": record["warehouse_rows_removed"],
        "build": {k: round(v, 1) for k, v in build.items()}, "cpus": os.cpu_count(),
    }
    (work / "bench_forget.json").write_text(json.dumps(report, indent=2))
    print(f"\n### bench_forget: {len(users)} users, {args.days} days x {args.events_per_day} "
          f"events ({os.cpu_count()} CPUs)\n")
    print(f"forget_users: {seconds:.1f} s, {len(record['partitions_touched'])} partitions "
          f"rewritten, rows removed {record['rows_removed_by_zone']}, warehouse "
          f"{record['warehouse_rows_removed']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
