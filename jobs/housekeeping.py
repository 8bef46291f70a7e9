"""Nightly housekeeping: delete lake partitions and warehouse rows past their retention.

    python -m jobs.housekeeping --ds 2024-01-31 [--dry-run] [--lake DIR] [--config F]

Retention per zone: config ``raw_retention_days``, ``quarantine_raw_retention_days``,
``quarantine_retention_days``, ``clean_retention_days``, ``features_retention_days``,
``scores_retention_days`` and ``warehouse_retention_days`` (defaults in README,
"Retention"). Never deleted: the lookback window ending at ``ds`` and the training window
of the current champion (read from the registry). Logic: ``ecrec_lib/privacy/retention.py``.
Writes ``ops/housekeeping/ds=D/summary.json``.

Exit 0 when done; 1 when the registry, the warehouse or the lake refuses (nothing guessed).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ecrec_lib.config import EcrecConfig, add_config_args, config_from_args
from ecrec_lib.lake import parse_ds
from jobs.common import setup_logging

log = logging.getLogger("jobs.housekeeping")


def champion_ds(cfg: EcrecConfig) -> str | None:
    """The training ds of the serving champion (None: no registry or no champion yet)."""
    uri = cfg.registry_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    from ecrec_lib.registry.client import CHAMPION, RegistryError, connect, get_alias_version

    mv = get_alias_version(connect(cfg), cfg.registered_model_name, CHAMPION)
    if mv is None:
        return None
    ds = (mv.tags or {}).get("ds")
    if not ds:
        raise RegistryError(
            f"champion version {mv.version} has no 'ds' tag, so its training window is unknown "
            "and housekeeping cannot tell which partitions it needs; set the tag in the MLflow UI"
        )
    return parse_ds(ds).isoformat()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD of the night")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args)

    from ecrec_lib.privacy.retention import RetentionError, apply_retention, summary_path
    from ecrec_lib.registry.client import RegistryError
    from ecrec_lib.warehouse import WarehouseError

    try:
        result = apply_retention(cfg, args.ds, champion_ds(cfg), dry_run=args.dry_run)
    except (RetentionError, RegistryError, WarehouseError) as exc:
        log.error("%s", exc)
        return 1
    out = summary_path(cfg, args.ds)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    tmp.replace(out)
    for name in result.deleted:
        log.info("%s %s", "would delete" if args.dry_run else "deleted", name)
    for name in result.protected:
        log.info("kept past retention (lookback or champion training window): %s", name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
