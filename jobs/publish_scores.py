"""Validate the lake score tables of a ds and publish them atomically to the warehouse.

    python -m jobs.publish_scores --ds 2024-01-01 [--warehouse-url URL] [--schema NAME]

Runs the output contracts (Great Expectations, expectations/score_tables.py) on
scores/<table>/ds=D/ (on a failure: exit 4 with the reasons, nothing published), then checks
that the tables all come from the scoring run named by ``ops/runs/ds=D/manifest.json`` (run id,
rows, model version; a mixed set: exit 1, nothing published). Otherwise
loads staging tables and swaps the ds partition of every table in one transaction, refreshes
the ``<table>_latest`` views and drops partitions older than cfg.warehouse_retention_days. The
same transaction merges clean/catalog/ds=D into the ``items`` dimension and records the night
in ``published_nights`` (docs/bi.md shows what an analyst reads).
A DuckDB file held by another process is retried with backoff for cfg.warehouse_lock_wait_s;
after the commit the read copy for BI tools (``<dir>/read/<file>``) is refreshed.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ecrec_lib.config import EcrecConfig, add_config_args, config_from_args
from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.scoring.contracts import ContractContext, validate_tables
from ecrec_lib.scoring.pipeline import ScoringInputError, purchased_items, read_partition
from ecrec_lib.scoring.tables import TABLE_COLUMNS, RunManifestError, check_manifest, read_table
from ecrec_lib.validation import DataContractError
from ecrec_lib.warehouse import PublishError, WarehouseError, connect, publish
from ecrec_lib.warehouse.dimensions import items_frame
from jobs.common import setup_logging

log = logging.getLogger("jobs.publish_scores")
EXIT_INVALID = 1
EXIT_MISSING = 3
EXIT_CONTRACT = 4  # as every job: a critical data contract failed (the DAG does not retry it)


def scoring_summary(lake: Lake, ds: str) -> dict:
    """ops/scoring/ds=D/summary.json of the scoring run (its K, n_related, exclusions)."""
    path = Path(lake.ops("scoring", ds)) / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def contract_context(
    cfg: EcrecConfig, lake: Lake, ds: str, k: int, n_related: int, exclude_purchased: bool
) -> ContractContext:
    """Catalog snapshot and purchases of ds, as the scorer saw them."""
    hint = "run the daily pipeline and `python -m jobs.score_topk --ds D` first"
    catalog = read_partition(lake.clean("catalog", ds), True, "clean/catalog", hint)
    seqs = read_partition(lake.features("user_sequences", ds), True, "features/user_sequences", hint)
    assert catalog is not None and seqs is not None
    in_stock = dict(zip(catalog["item_id"].astype(str),
                        catalog["in_stock"].fillna(False).astype(bool), strict=True))
    bought = {u: frozenset(p) for u, p in zip(seqs["user_key"], purchased_items(seqs), strict=True)}
    return ContractContext(ds=ds, k=k, n_related=n_related, catalog_in_stock=in_stock,
                           purchased=bought, exclude_purchased=exclude_purchased)


def run(cfg: EcrecConfig, ds: str, k: int | None = None) -> dict[str, int]:
    """Validate, then publish. The contracts use the K / n_related / exclusion setting the
    scoring run recorded in its summary (``--k`` or the config when there is none)."""
    lake = Lake(cfg.lake_root)
    tables = {name: read_table(name, lake, ds) for name in TABLE_COLUMNS}
    summary = scoring_summary(lake, ds)
    ctx = contract_context(
        cfg, lake, ds,
        k=k or int(summary.get("k", cfg.top_k)),
        n_related=int(summary.get("n_related", cfg.n_related)),
        exclude_purchased=bool(summary.get("exclude_purchased", cfg.exclude_purchased)),
    )
    validate_tables(tables, ctx)
    check_manifest(lake, ds, tables)
    catalog = read_partition(lake.clean("catalog", ds), True, "clean/catalog",
                             "run the clean job for this ds first")
    assert catalog is not None
    try:
        items = items_frame(catalog, ds)
    except ValueError as exc:
        raise PublishError(str(exc)) from None
    with connect(cfg.warehouse_url, cfg.warehouse_schema,
                 lock_wait_s=cfg.warehouse_lock_wait_s) as wh:
        rows = publish(wh, tables, ds, cfg.warehouse_retention_days, items=items)
        if cfg.warehouse_read_copy:
            wh.refresh_read_copy()
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD to publish")
    parser.add_argument("--warehouse-url", default=None,
                        help="duckdb:///path.duckdb or postgresql://... (default: cfg)")
    parser.add_argument("--schema", default=None, help="warehouse schema (default: cfg)")
    parser.add_argument("--k", type=int, default=None,
                        help="list length the contracts expect (default: the K recorded in "
                        "ops/scoring/ds=D/summary.json, else cfg.top_k)")
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args, warehouse_url=args.warehouse_url,
                           warehouse_schema=args.schema)
    try:
        rows = run(cfg, args.ds, args.k)
    except DataContractError as exc:
        log.error("output contract failed, nothing published (previous data untouched):\n%s",
                  exc)
        return EXIT_CONTRACT
    except (PublishError, WarehouseError, RunManifestError) as exc:
        log.error("publication refused, previous data untouched: %s", exc)
        return EXIT_INVALID
    except (ScoringInputError, FileNotFoundError) as exc:
        log.error("cannot publish ds=%s: %s", args.ds, exc)
        return EXIT_MISSING
    log.info("published ds=%s: %s", args.ds, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
