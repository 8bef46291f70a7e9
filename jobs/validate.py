"""Re-run datasets' data contracts (Great Expectations suites) on published partitions.

    python -m jobs.validate --dataset clean_events [catalog ...] --ds 2024-01-01 [--lake ./lake] [--master URL]

Several datasets share one Spark session (one JVM start instead of one per dataset); all are
validated even when an earlier one fails, and the exit code is the worst outcome.

Datasets: raw_events, clean_events, catalog, user_sequences, item_stats, user_profiles,
search_pairs, item_cooccurrence. Results go to ``ops/validation/ds=D/<dataset>/`` (results.json
and index.html). Exit codes: 0 passed (warnings are logged), 2 partition missing (or raw not
completely landed: no ``_SUCCESS`` marker), 3 no data (every dataset asked for is a landed raw
partition without a line: the DAG skips), 4 a critical expectation failed (the summary names
expectation, observed value and examples).
"""

from __future__ import annotations

import argparse
import logging

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.landing import require_landed
from ecrec_lib.pipeline import io
from ecrec_lib.pipeline.contracts import DATASETS
from jobs.common import setup_logging, spark_session

log = logging.getLogger("jobs.validate")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset", required=True, nargs="+", choices=DATASETS, help="which suites/partitions to validate"
    )
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD of the partition")
    parser.add_argument("--master", default=None, help="Spark master URL (default: cfg.spark_master)")
    parser.add_argument("--no-store", action="store_true", help="do not write results under ops/validation")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args)

    from ecrec_lib.pipeline.contracts import validate_partition
    from ecrec_lib.validation import DataContractError, preload_in_background

    worst = io.EXIT_OK
    no_data = 0
    pending = []
    for dataset in args.dataset:
        # The raw landing is settled from the directory listing, before any JVM starts: a
        # half-landed day is refused and a landed day without a data file is "no data" at once.
        if dataset == "raw_events":
            path = Lake(cfg.lake_root).raw("events", args.ds)
            try:
                landed = require_landed(path, "raw events")
            except io.InputMissingError as exc:
                log.error("%s: %s", dataset, exc)
                worst = max(worst, io.EXIT_INPUT_MISSING)
                continue
            if landed.empty:
                log.warning("%s: no data: %s (%s): nothing to validate", dataset, path, landed.reason)
                no_data += 1
                continue
        pending.append(dataset)
    if pending:
        preload_in_background()  # GX's import overlaps the JVM's start
        spark = spark_session(cfg, f"validate-{'+'.join(pending)}-{args.ds}", args.master)
        try:
            for dataset in pending:
                try:
                    outcome = validate_partition(spark, cfg, dataset, args.ds, store=not args.no_store)
                except io.InputMissingError as exc:
                    log.error("%s: %s", dataset, exc)
                    worst = max(worst, io.EXIT_INPUT_MISSING)
                except io.NoDataError as exc:
                    log.warning("%s: no data: %s", dataset, exc)
                    no_data += 1
                except DataContractError as exc:
                    log.error("%s: %s", dataset, exc)
                    worst = max(worst, io.EXIT_CONTRACT)
                else:
                    print(outcome.summary())
        finally:
            spark.stop()
    # "no data" only when nothing else was judged: a failure or a passed dataset next to an
    # empty one keeps its own outcome.
    return io.EXIT_NO_DATA if no_data == len(args.dataset) else worst


if __name__ == "__main__":
    raise SystemExit(main())
