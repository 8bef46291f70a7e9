"""Register the model trained for a ds as the new ``challenger`` (with its model card).

    python -m jobs.register_model --ds 2024-01-01 [--config ecrec.yaml] [--lake ./lake]

Reads ``ops/training/ds=D/summary.json`` written by ``jobs.train_encoders``; fails (exit 1)
with a clear message when that file is missing or says training was skipped or failed.
"""

from __future__ import annotations

import argparse
import json
import logging

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.model_card import normalize_metrics
from ecrec_lib.registry.client import RegistryError, connect
from ecrec_lib.registry.promotion import register_with_card
from ecrec_lib.registry.records import read_text
from jobs.common import setup_logging

log = logging.getLogger("jobs.register_model")

SUMMARY_FILE = "summary.json"
OK_STATUSES = ("trained", "ok", "success", "succeeded")


class SummaryError(ValueError):
    """The training summary is missing, unreadable, or says there is no model to register."""


def summary_path(lake_root: str, ds: str) -> str:
    return Lake(lake_root).ops("training", ds) + "/" + SUMMARY_FILE


def parse_summary(text: str | None, path: str) -> dict:
    """The summary as a dict with run_id, model_uri, metrics, fingerprint (SummaryError if not)."""
    if text is None:
        raise SummaryError(
            f"no training summary at {path}: training did not run for this ds; run "
            "`python -m jobs.train_encoders --ds D` first"
        )
    try:
        summary = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SummaryError(
            f"training summary {path} is not valid JSON ({exc}); re-run training"
        ) from None
    status = str(summary.get("status", "trained")).lower()
    if status not in OK_STATUSES:
        why = summary.get("reason") or summary.get("error") or "no reason given"
        raise SummaryError(
            f"training for this ds was {status} ({why}), per {path}: there is no new model to "
            "register; the current champion stays in place"
        )
    missing = [k for k in ("run_id", "model_uri") if not summary.get(k)]
    if missing:
        raise SummaryError(
            f"training summary {path} lacks {missing}; re-run `python -m jobs.train_encoders`"
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD of the training run")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args)
    path = summary_path(cfg.lake_root, args.ds)
    try:
        summary = parse_summary(read_text(path), path)
        client = connect(cfg)
        version = register_with_card(
            client,
            cfg,
            run_id=str(summary["run_id"]),
            model_uri=str(summary["model_uri"]),
            ds=args.ds,
            metrics=normalize_metrics(
                {**(summary.get("metrics") or {}), **(summary.get("baselines") or {})}
            ),
            fingerprint=str(summary.get("fingerprint") or summary.get("data_fingerprint") or ""),
            data_window=_data_window(summary),
            cold_start_metrics=summary.get("cold_start_metrics"),
        )
    except (SummaryError, RegistryError) as exc:
        log.error("%s", exc)
        return 1
    log.info("registered %s version %s as challenger", cfg.registered_model_name, version)
    print(json.dumps({"ds": args.ds, "model": cfg.registered_model_name, "version": version}))
    return 0


DATA_FACTS = ("window_start", "window_end", "n_users", "n_items", "n_users_evaluable",
              "n_events", "n_query_pairs")


def _data_window(summary: dict) -> dict:
    """The card's data-window table: ``data_window`` or the summary's ``data`` facts."""
    window = summary.get("data_window")
    if isinstance(window, list | tuple) and len(window) == 2:
        return {"first_ds": window[0], "last_ds": window[1]}
    if isinstance(window, dict):
        return dict(window)
    facts = summary.get("data") or {}
    return {k: facts[k] for k in DATA_FACTS if k in facts}


if __name__ == "__main__":
    raise SystemExit(main())
