"""Great Expectations suites: one module per dataset, each exposing ``build_suite(ctx)``.

``SUITES`` maps the dataset name used by ``jobs.validate --dataset`` and by
``ops/validation/ds=D/<dataset>/`` to its builder. Building a suite needs no GX context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from expectations import (
    catalog,
    clean_events,
    item_cooccurrence,
    item_stats,
    raw_events,
    search_pairs,
    user_profiles,
    user_sequences,
)
from expectations._common import CRITICAL, WARNING, SuiteContext

SUITES: dict[str, Callable[..., Any]] = {
    "raw_events": raw_events.build_suite,
    "clean_events": clean_events.build_suite,
    "catalog": catalog.build_suite,
    "user_sequences": user_sequences.build_suite,
    "item_stats": item_stats.build_suite,
    "user_profiles": user_profiles.build_suite,
    "search_pairs": search_pairs.build_suite,
    "item_cooccurrence": item_cooccurrence.build_suite,
}

__all__ = ["CRITICAL", "SUITES", "WARNING", "SuiteContext"]
