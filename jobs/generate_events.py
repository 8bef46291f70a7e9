"""Generate a synthetic shop's raw lake: daily event logs and catalog snapshots.

    python -m jobs.generate_events --lake ./lake --start 2024-01-01 --days 3 \
        --users 5000 --items 2000 --seed 7 [--dirty-rate 0.02] [--events-per-day 1000000]

Writes raw/events/ds=D/part-*.json.gz and raw/catalog/ds=D/part-*.json.gz for every day
(the raw contract of docs/data_contracts.md) plus the generator-only truth sidecar
raw/_truth/user_prefs.parquet. Same arguments, same bytes; re-runs replace the partitions.
"""

from __future__ import annotations

import argparse
import logging
import time

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.generator import generate
from jobs.common import setup_logging

log = logging.getLogger("jobs.generate_events")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--start", required=True, help="first ds to generate, YYYY-MM-DD")
    parser.add_argument("--days", type=int, default=1, help="number of consecutive days (default 1)")
    parser.add_argument("--users", type=int, default=5000, help="users over the whole run, newcomers included")
    parser.add_argument("--items", type=int, default=2000, help="items over the whole run, new listings included")
    parser.add_argument("--seed", type=int, default=7, help="random seed: same seed and flags give the same bytes")
    parser.add_argument(
        "--dirty-rate", type=float, default=0.0,
        help="inject each kind of dirt on about this share of events (e.g. 0.02); 0 = clean",
    )
    parser.add_argument(
        "--events-per-day", type=int, default=None,
        help="target generated events per day (sets the session count); default: from --users",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    started = time.perf_counter()
    try:
        summary = generate(
            cfg.lake_root, args.start, args.days, args.users, args.items, args.seed,
            dirty_rate=args.dirty_rate, events_per_day=args.events_per_day,
        )
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    print(summary.format())
    log.info("generated %d events in %.1f s", summary.total_events, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
