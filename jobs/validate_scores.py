"""Run the output contracts of the score tables of a ds, without publishing anything.

    python -m jobs.validate_scores --ds 2024-01-01 [--k 100] [--lake ./lake] [--config F]

The same Great Expectations suites ``jobs.publish_scores`` enforces before it publishes
(``expectations/score_tables.py`` via :mod:`ecrec_lib.scoring.contracts`), run as their own
step so the nightly DAG shows a contract failure apart from a warehouse failure.
Exit codes: 0 all critical expectations passed; 1 the tables are not one scoring run's set
(``ops/runs/ds=D/manifest.json``); 3 a score partition is missing; 4 a critical expectation
failed (the log names the rule, the observed value and examples; the DAG does not retry it).
"""

from __future__ import annotations

import argparse
import logging

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.lake import Lake, parse_ds
from jobs.common import setup_logging

log = logging.getLogger("jobs.validate_scores")
EXIT_INVALID = 1
EXIT_MISSING = 3
EXIT_CONTRACT = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD of the score tables")
    parser.add_argument("--k", type=int, default=None,
                        help="list length the contracts expect (default: the K recorded by "
                        "the scoring run, else cfg.top_k)")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args)

    from ecrec_lib.scoring.contracts import validate_tables
    from ecrec_lib.scoring.pipeline import ScoringInputError
    from ecrec_lib.scoring.tables import (
        TABLE_COLUMNS,
        RunManifestError,
        check_manifest,
        read_table,
    )
    from ecrec_lib.validation import DataContractError
    from jobs.publish_scores import contract_context, scoring_summary

    lake = Lake(cfg.lake_root)
    try:
        tables = {name: read_table(name, lake, args.ds) for name in TABLE_COLUMNS}
        summary = scoring_summary(lake, args.ds)
        ctx = contract_context(
            cfg, lake, args.ds,
            k=args.k or int(summary.get("k", cfg.top_k)),
            n_related=int(summary.get("n_related", cfg.n_related)),
            exclude_purchased=bool(summary.get("exclude_purchased", cfg.exclude_purchased)),
        )
        outcomes = validate_tables(tables, ctx)
        check_manifest(lake, args.ds, tables)
    except DataContractError as exc:
        log.error("output contract failed for ds=%s:\n%s", args.ds, exc)
        return EXIT_CONTRACT
    except RunManifestError as exc:
        log.error("%s", exc)
        return EXIT_INVALID
    except (ScoringInputError, FileNotFoundError) as exc:
        log.error("cannot validate ds=%s: %s", args.ds, exc)
        return EXIT_MISSING
    for name, outcome in outcomes.items():
        log.info("%s", outcome.summary() if hasattr(outcome, "summary") else f"{name}: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
