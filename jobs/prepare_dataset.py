"""Build a benchmark dataset directory (``interactions.csv``, ``items.csv``) from the 2014
Amazon review files you downloaded (5-core reviews + metadata of one category).

    python -m jobs.prepare_dataset --reviews reviews_Beauty_5.json.gz \
        --meta meta_Beauty.json.gz --out data/amazon_beauty [--withhold-last]

The protocol (ordering, brand and category rules, withheld last items) is in
:mod:`ecrec_lib.amazon_reviews`; the output is what ``jobs.benchmark_quality --data`` and
``jobs.ingest_amazon --src`` read.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from ecrec_lib.amazon_reviews import MIN_BRAND_ITEMS, prepare
from ecrec_lib.datasets import DatasetError
from jobs.common import setup_logging

log = logging.getLogger("prepare_dataset")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reviews", required=True, help="the 5-core reviews file, e.g. reviews_Beauty_5.json.gz")
    p.add_argument("--meta", required=True, help="the metadata file, e.g. meta_Beauty.json.gz")
    p.add_argument("--out", required=True, help="output directory (its CSV files are replaced)")
    p.add_argument("--category", default="Beauty",
                   help="top category level; items.csv keeps the path below it (default Beauty)")
    p.add_argument("--withhold-last", action="store_true",
                   help="move each user's last interaction to heldout.csv (as the shared copy)")
    p.add_argument("--min-brand-items", type=int, default=MIN_BRAND_ITEMS,
                   help=f"keep a brand only with this many reviewed items (default {MIN_BRAND_ITEMS})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        summary = prepare(args.reviews, args.meta, args.out, args.category, args.withhold_last,
                          args.min_brand_items)
    except DatasetError as exc:
        log.error("%s", exc)
        return 2
    log.info("wrote %s: %s", args.out, dataclasses.asdict(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
