"""Where every dataset lives in the lake (see docs/data_contracts.md).

All paths are strings so the same code works for a local directory and for
``s3a://`` / ``hdfs://`` roots. Every dataset is partitioned by the logical date ``ds``.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ecrec_lib.partitions import fault_pause

# Stage -> dataset names. Adding a dataset means adding it here and to docs/data_contracts.md.
RAW = ("events", "catalog")
CLEAN = ("events", "catalog")
QUARANTINE = ("events", "catalog")
# Restricted: the exact raw lines of quarantined rows (raw ids, PII). Like raw/, readable only by
# the pipeline and its operators; deleted after QUARANTINE_RAW_RETENTION_DAYS by the housekeeping
# job (docs/data_contracts.md).
QUARANTINE_RAW = ("events", "catalog")
QUARANTINE_RAW_RETENTION_DAYS = 30
FEATURES = ("user_sequences", "item_stats", "user_profiles", "search_pairs", "item_cooccurrence")
SCORES = ("user_topk", "item_related", "query_topk", "trending")
OPS = ("reconciliation", "validation", "training", "training_decision", "promotion", "scoring", "report", "feedback",
       "runs")
# Records of the privacy jobs (ecrec_lib/privacy/): retention runs and erasure audits.
OPS = (*OPS, "housekeeping", "forget")


def parse_ds(ds: str) -> dt.date:
    """``YYYY-MM-DD`` -> date, with an error that says what was wrong."""
    try:
        return dt.date.fromisoformat(ds)
    except (TypeError, ValueError):
        raise ValueError(f"ds must be a date in YYYY-MM-DD form, got {ds!r}") from None


def ds_range(end_ds: str, days: int) -> list[str]:
    """The ``days`` logical dates ending at ``end_ds`` (inclusive), oldest first."""
    end = parse_ds(end_ds)
    return [(end - dt.timedelta(days=i)).isoformat() for i in range(days - 1, -1, -1)]


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def replace_local_dir(final: str | Path, write: Callable[[Path], object]) -> Path:
    """Replace the local directory ``final`` whole with what ``write(tmp)`` puts in a fresh,
    empty sibling directory ``tmp``: readers never see a half-written directory, a re-run never
    leaves a stale file of the previous one behind, and a failed ``write`` leaves the previous
    directory as it was (and no temp directory). The previous one is swapped out and removed
    only after the new one is in place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # .tmp-<id>-<name> / .old-<id>-<name>: the names ecrec_lib.partitions.recover_partition
    # resolves after a kill (between the two renames, only the .old- copy holds the data)
    tmp = final.parent / f".tmp-{uuid.uuid4().hex}-{final.name}"
    tmp.mkdir()
    old = None
    try:
        write(tmp)
        if final.exists():
            old = final.parent / f".old-{uuid.uuid4().hex}-{final.name}"
            os.rename(final, old)
            fault_pause(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass(frozen=True)
class Lake:
    """Path builder for one lake root."""

    root: str

    def _p(self, *parts: str) -> str:
        root = self.root.rstrip("/")
        if is_local(root):
            root = os.path.abspath(root.removeprefix("file://"))
        return "/".join([root, *parts])

    def dataset(self, stage: str, name: str) -> str:
        """The unpartitioned root of a dataset, e.g. ``clean/events``."""
        return self._p(stage, name)

    def partition(self, stage: str, name: str, ds: str) -> str:
        parse_ds(ds)
        return self._p(stage, name, f"ds={ds}")

    def raw(self, name: str, ds: str) -> str:
        return self.partition("raw", name, ds)

    def clean(self, name: str, ds: str) -> str:
        return self.partition("clean", name, ds)

    def quarantine(self, name: str, ds: str) -> str:
        return self.partition("quarantine", name, ds)

    def quarantine_raw(self, name: str, ds: str) -> str:
        """Restricted zone: the raw lines behind ``quarantine/<name>`` (personal data)."""
        return self.partition("quarantine_raw", name, ds)

    def features(self, name: str, ds: str) -> str:
        return self.partition("features", name, ds)

    def scores(self, name: str, ds: str) -> str:
        return self.partition("scores", name, ds)

    def ops(self, name: str, ds: str) -> str:
        return self.partition("ops", name, ds)

    def models(self, ds: str) -> str:
        """Training scratch space (checkpoints, caches) for a ds; MLflow holds the models."""
        return self.partition("models", "two_tower", ds)

    def cache(self, name: str) -> str:
        return self._p("cache", name)
