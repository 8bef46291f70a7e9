"""Suite for features/item_stats/ds=D (one row per catalog item)."""

from __future__ import annotations

from typing import Any

from ecrec_lib.schema import ITEM_STATS_COLUMNS
from expectations._common import (
    CRITICAL,
    SuiteContext,
    meta,
    new_suite,
    not_null,
    schema_expectations,
    volume_expectations,
)

TYPES = dict(zip(ITEM_STATS_COLUMNS, (
    "StringType", "LongType", "LongType", "LongType", "LongType",
    "DoubleType", "DoubleType", "DoubleType", "DoubleType",
), strict=True))


def build_suite(ctx: SuiteContext) -> Any:
    import great_expectations as gx

    exps: list[Any] = [
        *schema_expectations(TYPES),
        *not_null(ITEM_STATS_COLUMNS),
        gx.expectations.ExpectColumnValuesToBeUnique(column="item_id", meta=meta(CRITICAL, "one row per item")),
    ]
    for col in ("views", "clicks", "add_to_carts", "purchases", "popularity", "trending_score"):
        exps.append(gx.expectations.ExpectColumnValuesToBeBetween(
            column=col, min_value=0, meta=meta(CRITICAL, "non-negative")))
    for col in ("ctr", "cvr"):
        exps.append(gx.expectations.ExpectColumnValuesToBeBetween(
            column=col, min_value=0, max_value=1, meta=meta(CRITICAL, "smoothed rate in [0, 1]")))
    return new_suite("item_stats", [*exps, *volume_expectations(ctx)])
