"""Manual control of the model registry: list versions, promote one, roll back.

    python -m jobs.models list
    python -m jobs.models promote 3 --reason "v4 hurts mobile CTR" [--user alice]
    python -m jobs.models rollback --reason "bad release" [--user alice]

Each promote/rollback records who and why: tags on the version, a line in
``ops/promotion/promotion_log.jsonl`` and an MLflow run in ``<experiment>-promotion``.
Moving the ``champion`` alias in the MLflow UI works too; the next scoring run honors it.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
from typing import Any

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.registry.client import (
    ERASURE_TAG,
    RegistryError,
    aliases_by_version,
    connect,
    list_versions,
)
from ecrec_lib.registry.promotion import manual_promote, manual_rollback
from jobs.common import setup_logging

log = logging.getLogger("jobs.models")

LIST_METRICS = ("test_ndcg_10", "test_recall_10", "pop_test_ndcg_10")


def current_user(explicit: str | None) -> str:
    """Who acts: ``--user``, else the login name (USER / LOGNAME / the password database)."""
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def version_rows(
    versions: list[Any], aliases: dict[str, list[str]] | None = None
) -> list[dict[str, Any]]:
    """One plain dict per version: aliases, ds, key metrics and gate decisions."""
    rows = []
    for mv in versions:
        tags = dict(mv.tags or {})
        rows.append({
            "version": str(mv.version),
            "aliases": sorted(set(mv.aliases or []) | set((aliases or {}).get(str(mv.version), []))),
            "ds": tags.get("ds", ""),
            "metrics": {k: tags[f"metric.{k}"] for k in LIST_METRICS if f"metric.{k}" in tags},
            # The latest decision only; every decision is in ops/promotion/promotion_log.jsonl.
            "decisions": ({tags.get("promotion_ds") or "manual": tags["promotion_decision"]}
                          if tags.get("promotion_decision") else {}),
            "training_run": tags.get("training_run") or (mv.run_id or ""),
            "decision_run_id": tags.get("decision_run_id", ""),
            "champion_since": tags.get("champion_since", ""),
            "artifact_invalid": "artifact_invalid" in tags,
            "erasure_pending": ERASURE_TAG in tags,  # trained on users erased since
        })
    return rows


def format_rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no registered versions"
    lines = [f"{'version':>7}  {'aliases':<22} {'ds':<10}  {'metrics':<60} decisions"]
    for r in rows:
        metrics = " ".join(f"{k}={float(v):.4f}" for k, v in r["metrics"].items()) or "-"
        decisions = " ".join(f"{ds}:{d}" for ds, d in r["decisions"].items()) or "-"
        if r["artifact_invalid"]:
            decisions += " [ARTIFACT INVALID]"
        if r["erasure_pending"]:
            decisions += " [ERASURE PENDING: never promoted again]"
        lines.append(f"{r['version']:>7}  {','.join(r['aliases']) or '-':<22} {r['ds']:<10}  "
                     f"{metrics:<60} {decisions}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="versions with aliases, ds, key metrics, decisions")
    p_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p_prom = sub.add_parser("promote", help="make VERSION the champion")
    p_prom.add_argument("version", help="registered model version number to promote")
    for p in (p_prom, sub.add_parser("rollback", help="return champion to the previous champion")):
        p.add_argument("--reason", required=True, help="why (recorded with the action)")
        p.add_argument("--user", default=None, help="who acts (default: the login name)")
        p.add_argument("--skip-load-check", action="store_true",
                       help="do not load the model to verify its artifact first")
    args = parser.parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)
    try:
        client = connect(cfg)
        name = cfg.registered_model_name
        if args.command == "list":
            rows = version_rows(list_versions(client, name), aliases_by_version(client, name))
            print(json.dumps(rows, indent=2) if args.json else format_rows(rows))
            return 0
        if not args.reason.strip():
            raise RegistryError("--reason must not be empty: say why the champion changes")
        kwargs: dict[str, Any] = {"by": current_user(args.user), "reason": args.reason}
        if args.skip_load_check:
            kwargs["check_artifact"] = False
        if args.command == "promote":
            record = manual_promote(client, cfg, args.version, **kwargs)
        else:
            record = manual_rollback(client, cfg, **kwargs)
    except RegistryError as exc:
        log.error("%s", exc)
        return 1
    log.info("%s: champion %s -> %s by %s", record["decision"], record["champion_version"] or
             "none", record["new_champion_version"], record["by"])
    print(json.dumps({k: record[k] for k in ("decision", "champion_version",
                                              "new_champion_version", "by", "reason")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
