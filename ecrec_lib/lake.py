"""Where every dataset lives in the lake (see docs/data_contracts.md).

All paths are strings so the same code works for a local directory and for
``s3a://`` / ``hdfs://`` roots. Every dataset is partitioned by the logical date ``ds``.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass

# Stage -> dataset names. Adding a dataset means adding it here and to docs/data_contracts.md.
RAW = ("events", "catalog")
CLEAN = ("events", "catalog")
QUARANTINE = ("events", "catalog")
FEATURES = ("user_sequences", "item_stats", "user_profiles", "search_pairs", "item_cooccurrence")
SCORES = ("user_topk", "item_related", "query_topk", "trending")
OPS = ("reconciliation", "validation", "training", "training_decision", "promotion", "scoring", "report", "feedback")


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
