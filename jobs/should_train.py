"""Decide whether tonight's run trains a challenger.

    python -m jobs.should_train --ds 2024-01-02 [--force] [--skip] [--lake ./lake] [--config F]

Counts the clean events that arrived since the last training (partitions
``clean/events/ds=X`` with last-training-ds < X <= ds; the last training is the newest
``ops/training/ds=Y/summary.json`` with Y < ds, so re-running a date decides the same
way), asks the MLflow registry whether a ``champion`` exists, and writes
``ops/training_decision/ds=D/decision.json`` (rules: :func:`ecrec_lib.orchestration.decide_training`:
``--skip`` wins, then ``--force``, then "no champion", then a champion flagged by an erasure
request (``jobs.forget_users``), then ``min_new_events_to_train``).
Exit 0 whatever the decision; 1 when the registry cannot be reached (never guess).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ecrec_lib.config import EcrecConfig, add_config_args, config_from_args
from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.orchestration import decide_training
from jobs.common import setup_logging

log = logging.getLogger("jobs.should_train")
TRAINING_SUMMARY = "summary.json"


def _partitions(root: str) -> dict[str, str]:
    """ds -> path of every ``ds=...`` partition directly under ``root`` (local or remote)."""
    if "://" in root and not root.startswith("file://"):
        from pyarrow import fs

        filesystem, base = fs.FileSystem.from_uri(root)
        infos = filesystem.get_file_info(fs.FileSelector(base, allow_not_found=True))
        names = [Path(i.path).name for i in infos if i.type == fs.FileType.Directory]
    else:
        base_dir = Path(root.removeprefix("file://"))
        names = [p.name for p in base_dir.iterdir() if p.is_dir()] if base_dir.is_dir() else []
    return {n[3:]: f"{root}/{n}" for n in names if n.startswith("ds=")}


def last_training_ds(cfg: EcrecConfig, ds: str) -> str | None:
    """The newest ds before ``ds`` whose training summary exists."""
    lake = Lake(cfg.lake_root)
    done = [
        d for d, path in _partitions(lake.dataset("ops", "training")).items()
        if d < ds and Path(path, TRAINING_SUMMARY).is_file()
    ]
    return max(done) if done else None


def count_new_events(cfg: EcrecConfig, ds: str, since: str | None) -> int:
    """Rows of clean events in partitions after ``since`` up to and including ``ds``."""
    import pyarrow.dataset as pads

    lake = Lake(cfg.lake_root)
    total = 0
    for d, path in sorted(_partitions(lake.dataset("clean", "events")).items()):
        parse_ds(d)
        if d <= ds and (since is None or d > since):
            n = pads.dataset(path, format="parquet").count_rows()  # footers only: cheap
            log.info("clean events ds=%s: %d rows", d, n)
            total += n
    return total


def champion_state(cfg: EcrecConfig) -> tuple[bool, bool]:
    """(a ``champion`` exists, it is flagged by an erasure request); a never-created SQLite
    registry has none."""
    uri = cfg.registry_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        log.info("no MLflow database at %s yet: no champion", uri)
        return False, False
    from ecrec_lib.registry.client import CHAMPION, connect, get_alias_version, is_flagged

    client = connect(cfg)
    version = get_alias_version(client, cfg.registered_model_name, CHAMPION)
    flagged = is_flagged(version)
    log.info("current champion of %s: %s%s", cfg.registered_model_name,
             version.version if version else "none", " (erasure flag)" if flagged else "")
    return version is not None, flagged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD")
    parser.add_argument("--force", action="store_true", help="train whatever the data says")
    parser.add_argument("--skip", action="store_true", help="do not train (wins over --force)")
    parser.add_argument("--fixed-model", default=None,
                        help="a backfill or pinned-version run: never train (wins over all); "
                        "the text is recorded as the reason")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args)

    since = last_training_ds(cfg, args.ds)
    from ecrec_lib.registry.client import RegistryError

    try:
        champion, flagged = champion_state(cfg)
    except RegistryError as exc:
        log.error("cannot decide whether to train: %s", exc)
        return 1
    decision = decide_training(
        args.ds,
        new_events=count_new_events(cfg, args.ds, since),
        min_new_events=cfg.min_new_events_to_train,
        last_training_ds=since,
        has_champion=champion,
        champion_flagged=flagged,
        force=args.force,
        skip=args.skip,
        fixed_model=args.fixed_model,
    )
    out_dir = Path(Lake(cfg.lake_root).ops("training_decision", args.ds))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".decision.json.tmp"
    tmp.write_text(decision.to_json())
    tmp.replace(out_dir / "decision.json")
    log.info("training decision for %s: train=%s (%s)", args.ds, decision.train, decision.reason)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
