"""Build the feature tables of one day from the clean partitions of its lookback window.

    python -m jobs.build_features --ds 2024-01-07 [--lookback-days 30] [--lake ./lake] [--master URL] [--config F]

Reads ``clean/events/ds=*`` (days before the lake's first clean day and empty days are
logged and skipped; any other missing day fails the job) and
``clean/catalog/ds=D``; writes ``features/{user_sequences,item_stats,user_profiles,search_pairs,
item_cooccurrence}/ds=D`` after their Great Expectations suites pass, and the validation results
under ``ops/validation/ds=D/<table>/``. Table definitions: :mod:`ecrec_lib.pipeline.features`.

Exit codes: 0 published; 1 unexpected error; 2 input missing (no clean catalog for ds, no
clean events in the whole window, or a day of the window without clean events that is neither
before the lake's first day nor an empty day); 4 a critical expectation failed (nothing
published); 5 another live writer holds a feature partition of ds (the message names it).
"""

from __future__ import annotations

import argparse
import logging

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.lake import parse_ds
from ecrec_lib.partitions import PartitionLocked
from ecrec_lib.pipeline import io
from jobs.common import setup_logging, spark_session

log = logging.getLogger("jobs.build_features")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD (last day of the window)")
    parser.add_argument("--lookback-days", type=int, default=None,
                        help="days of clean events to read, ending at ds (default: cfg.lookback_days)")
    parser.add_argument("--master", default=None, help="Spark master URL (default: cfg.spark_master)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args, lookback_days=args.lookback_days)
    log.info("config: %s", cfg.to_dict())

    from ecrec_lib.pipeline.features import run_features
    from ecrec_lib.validation import DataContractError, preload_in_background

    preload_in_background()  # GX's import overlaps the JVM's start
    spark = spark_session(cfg, f"build_features-{args.ds}", args.master)
    try:
        run_features(spark, cfg, args.ds)
    except io.InputMissingError as exc:
        log.error("%s", exc)
        return io.EXIT_INPUT_MISSING
    except DataContractError as exc:
        log.error("%s", exc)
        return io.EXIT_CONTRACT
    except PartitionLocked as exc:
        log.error("%s", exc)
        return io.EXIT_LOCKED
    finally:
        spark.stop()
    return io.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
