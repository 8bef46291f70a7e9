"""The promotion gate: challenger vs. champion on the newest holdout, then move ``champion``.

    python -m jobs.promote_model --ds 2024-01-01 [--config ecrec.yaml] [--lake ./lake]

Exit 0 whatever the verdict (promoted, rejected, no challenger): the decision is in
``ops/promotion/ds=D/decision.json``, the promotion log, an MLflow run in
``<experiment>-promotion`` and tags on both versions. Exit 1 when the registry is
unreachable, the holdout data is missing, or a model artifact is corrupted (refused).
"""

from __future__ import annotations

import argparse
import json
import logging

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.lake import parse_ds
from ecrec_lib.registry.client import RegistryError, connect
from ecrec_lib.registry.gate import HoldoutError
from ecrec_lib.registry.promotion import run_gate
from jobs.common import setup_logging

log = logging.getLogger("jobs.promote_model")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD of the holdout data")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args)
    try:
        client = connect(cfg)  # first: an unreachable registry must touch nothing else
        decision = run_gate(client, cfg, args.ds)
    except (RegistryError, HoldoutError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 1
    for reason in decision.reasons:
        log.info("gate: %s", reason)
    log.info("decision for ds=%s: %s (champion now: %s)", args.ds, decision.decision,
             decision.new_champion_version or "none")
    print(json.dumps({
        "ds": args.ds,
        "decision": decision.decision,
        "challenger_version": decision.challenger_version,
        "champion_version": decision.champion_version,
        "new_champion_version": decision.new_champion_version,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
