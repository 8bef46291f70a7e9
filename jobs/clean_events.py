"""Clean one day of raw events and the catalog snapshot into clean/ and quarantine/.

    python -m jobs.clean_events --ds 2024-01-01 [--lake ./lake] [--master local[*]] [--config F]

Reads ``raw/catalog/ds=D`` and ``raw/events/ds=D`` (gzipped JSON lines), writes
``clean/{catalog,events}/ds=D``, ``quarantine/{catalog,events}/ds=D`` (masked lines), the
restricted ``quarantine_raw/{catalog,events}/ds=D`` (the exact lines),
``ops/reconciliation/ds=D/{catalog,events}.json`` and ``ops/validation/ds=D/<suite>/``.
Rules and their order: :mod:`ecrec_lib.pipeline.clean`. Needs the pseudonymization key
(``ECREC_PSEUDO_KEY`` / ``ECREC_PSEUDO_KEY_FILE`` / Airflow connection).

Exit codes (the DAG branches on them):
  0  published
  1  unexpected error
  2  an input partition is missing, or has not completely landed (no ``_SUCCESS`` marker from
     its producer yet, docs/data_contracts.md "Landing"; the message names the path and the fix)
  3  no data: the raw events partition is empty; ``ops/reconciliation/ds=D/events.json`` has
     ``"status": "no_data"`` and nothing was published for events (skip downstream tasks)
  4  data contract failure: a critical expectation failed; the clean partition was not published
     (quarantine, reconciliation and ``ops/validation`` were, for inspection)
  5  another live writer holds one of the day's partitions (the message names its pid, host,
     start time and run id); nothing was written
"""

from __future__ import annotations

import argparse
import logging

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.landing import require_landed
from ecrec_lib.partitions import PartitionLocked
from ecrec_lib.pipeline import io
from jobs.common import setup_logging, spark_session

log = logging.getLogger("jobs.clean_events")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD (the partition to clean)")
    parser.add_argument("--master", default=None, help="Spark master URL (default: cfg.spark_master)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args)
    log.info("config: %s", cfg.to_dict())
    try:  # before the JVM starts: a half-landed day is refused in milliseconds
        for name in ("catalog", "events"):
            log.info("raw %s: %s", name,
                     require_landed(Lake(cfg.lake_root).raw(name, args.ds), f"raw {name}").reason)
    except io.InputMissingError as exc:
        log.error("%s", exc)
        return io.EXIT_INPUT_MISSING

    from ecrec_lib.pipeline.clean import run_clean
    from ecrec_lib.validation import DataContractError, preload_in_background

    preload_in_background()  # GX's import overlaps the JVM's start
    spark = spark_session(cfg, f"clean_events-{args.ds}", args.master)
    try:
        result = run_clean(spark, cfg, args.ds)
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
    if result.no_data:
        return io.EXIT_NO_DATA
    return io.EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
