"""Retention: delete ds partitions older than each zone's retention (``jobs.housekeeping``).

For the night ``ds`` and a zone kept ``N`` days (config ``<zone>_retention_days``, see
``ecrec_lib.config.RETENTION_KEYS``), partitions with ``ds' <= ds - N`` are deleted, i.e. the
last ``N`` days up to ``ds`` stay. Never deleted, whatever the retention says: the feature
lookback window ending at ``ds`` and the training window of the serving champion (a champion
trained long ago still needs its days if a retrain or an erasure request has to find them).
The config refuses a lake retention shorter than ``lookback_days``. The warehouse keeps
``warehouse_retention_days`` of every table that has both ``ds`` and ``user_key`` (the score
tables are also trimmed at publish time).

A partition is deleted by renaming it to a hidden ``.deleted-ds=D-<uuid>`` sibling (readers
see it vanish at once) and then removing that folder; a run killed in between leaves only the
hidden folder, which the next run removes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecrec_lib.config import RETENTION_KEYS, EcrecConfig
from ecrec_lib.lake import Lake, ds_range, is_local, parse_ds
from ecrec_lib.privacy.forget import Partition, lake_partitions, warehouse_exists

log = logging.getLogger(__name__)
DELETED_PREFIX = ".deleted-"


class RetentionError(ValueError):
    """Retention cannot run as configured; the message names the key or path and the fix."""


@dataclass
class RetentionResult:
    ds: str
    deleted: list[str] = field(default_factory=list)  # lake-relative partition names
    protected: list[str] = field(default_factory=list)  # past retention but still needed
    warehouse_rows_deleted: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"ds": self.ds, "dry_run": self.dry_run, "deleted": self.deleted,
                "protected": self.protected, "warehouse_rows_deleted": self.warehouse_rows_deleted}


def cutoff(ds: str, days: int) -> str:
    """The newest ds a zone kept ``days`` days deletes at night ``ds``."""
    if days < 1:
        raise RetentionError(f"a retention must be at least 1 day, got {days}")
    return (parse_ds(ds) - dt.timedelta(days=days)).isoformat()


def protected_days(cfg: EcrecConfig, ds: str, champion_ds: str | None) -> set[str]:
    """Days no zone may lose tonight: the lookback window, and the champion's training window."""
    days = set(ds_range(ds, cfg.lookback_days))
    if champion_ds:
        days |= set(ds_range(champion_ds, cfg.lookback_days))
    return days


def expired_partitions(cfg: EcrecConfig, ds: str, protected: Iterable[str]
                       ) -> tuple[list[Partition], list[Partition]]:
    """(partitions to delete, partitions past retention that are kept because protected)."""
    keep = set(protected)
    limits = {zone: cutoff(ds, getattr(cfg, key)) for zone, key in RETENTION_KEYS.items()}
    expired, spared = [], []
    for part in lake_partitions(cfg.lake_root, zones=RETENTION_KEYS):
        if part.ds > limits[part.zone]:
            continue
        (spared if part.ds in keep else expired).append(part)
    return expired, spared


def delete_partition(path: Path) -> None:
    """Hide the partition at once (rename), then remove it."""
    hidden = path.parent / f"{DELETED_PREFIX}{path.name}-{uuid.uuid4().hex}"
    os.rename(path, hidden)
    shutil.rmtree(hidden)


def _remove_hidden_leftovers(lake_root: str) -> None:
    root = Path(lake_root.removeprefix("file://"))
    for zone in RETENTION_KEYS:
        zdir = root / zone
        if not zdir.is_dir():
            continue
        for folder in [zdir, *[d for d in zdir.iterdir() if d.is_dir()]]:
            for p in folder.iterdir():
                if p.is_dir() and p.name.startswith(DELETED_PREFIX):
                    shutil.rmtree(p)


def trim_warehouse(cfg: EcrecConfig, ds: str, dry_run: bool = False) -> dict[str, int]:
    """Delete rows with ``ds <= ds - warehouse_retention_days`` from every base table with
    ``ds`` and ``user_key`` columns (one transaction); rows per table."""
    from ecrec_lib.warehouse import connect

    if cfg.warehouse_retention_days <= 0:
        return {}
    if not warehouse_exists(cfg.warehouse_url):
        return {}
    limit = parse_ds(cutoff(ds, cfg.warehouse_retention_days))
    out: dict[str, int] = {}
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        tables = wh.query(
            "SELECT c.table_name AS t FROM information_schema.columns c "
            "JOIN information_schema.tables t ON t.table_schema = c.table_schema "
            "AND t.table_name = c.table_name "
            "WHERE c.table_schema = %s AND c.column_name IN ('ds', 'user_key') "
            "AND t.table_type = 'BASE TABLE' GROUP BY c.table_name "
            "HAVING count(*) = 2 ORDER BY c.table_name",
            [cfg.warehouse_schema],
        )["t"].tolist()
        with wh.transaction():
            for table in tables:
                n = int(wh.scalar(f"SELECT count(*) FROM {wh.fq(table)} WHERE ds <= %s", [limit]))
                if n and not dry_run:
                    wh.execute(f"DELETE FROM {wh.fq(table)} WHERE ds <= %s", [limit])
                out[str(table)] = n
    return out


def apply_retention(cfg: EcrecConfig, ds: str, champion_ds: str | None,
                    dry_run: bool = False) -> RetentionResult:
    """Delete what is past retention in the lake and the warehouse (see module docstring)."""
    if not is_local(cfg.lake_root):
        raise RetentionError(
            f"lake_root {cfg.lake_root} is not a local directory; on object stores use the "
            "bucket's lifecycle rules with the same retention days"
        )
    parse_ds(ds)
    result = RetentionResult(ds=ds, dry_run=dry_run)
    if not dry_run:
        _remove_hidden_leftovers(cfg.lake_root)
    expired, spared = expired_partitions(cfg, ds, protected_days(cfg, ds, champion_ds))
    result.protected = [p.name for p in spared]
    for part in expired:
        if not dry_run:
            delete_partition(part.path)
        result.deleted.append(part.name)
    result.warehouse_rows_deleted = trim_warehouse(cfg, ds, dry_run)
    log.info("retention ds=%s: %d partitions %s, %d protected, warehouse %s", ds,
             len(result.deleted), "would be deleted" if dry_run else "deleted",
             len(result.protected), result.warehouse_rows_deleted)
    return result


def summary_path(cfg: EcrecConfig, ds: str) -> Path:
    return Path(Lake(cfg.lake_root).ops("housekeeping", ds)) / "summary.json"


__all__ = [
    "DELETED_PREFIX",
    "RetentionError",
    "RetentionResult",
    "apply_retention",
    "cutoff",
    "delete_partition",
    "expired_partitions",
    "protected_days",
    "summary_path",
    "trim_warehouse",
]
