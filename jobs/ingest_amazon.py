"""Land the real Amazon Beauty data in the raw lake (one review = one purchase event).

    python -m jobs.ingest_amazon --src ../shared/data/amazon_beauty --lake ./lake \
        [--ds-mode daily|single] [--ds 2014-07-22] [--catalog-every-day]

``daily`` (default) writes raw/events/ds=D for every review day and the catalog snapshot
on the last day only (``--catalog-every-day`` also writes it beside every event day).
``single`` writes all events and the catalog under one ds (``--ds``, default the last
review day): what demos and benchmarks use. Mapping: docs/data_contracts.md.
Event and session ids are keyed with the pseudonymization key (``ECREC_PSEUDO_KEY``,
``ECREC_PSEUDO_KEY_FILE`` or the Airflow connection ``ecrec_pseudonymization``).
"""

from __future__ import annotations

import argparse
import logging

from ecrec_lib.amazon import DS_MODES, SourceDataError, ingest
from ecrec_lib.config import ConfigError, add_config_args, config_from_args
from jobs.common import setup_logging

log = logging.getLogger("jobs.ingest_amazon")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--src", required=True,
                        help="folder with interactions.csv and items.csv (../shared/data/amazon_beauty)")
    parser.add_argument("--ds-mode", choices=DS_MODES, default="daily",
                        help="daily: one partition per review day; single: everything under --ds")
    parser.add_argument("--ds", default=None,
                        help="target partition for --ds-mode single (default: the last review day)")
    parser.add_argument("--catalog-every-day", action="store_true",
                        help="daily mode: write the catalog snapshot beside every event partition")
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    try:
        summary = ingest(args.src, cfg.lake_root, args.ds_mode, args.ds, args.catalog_every_day)
    except (SourceDataError, ConfigError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    print(summary.format())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
