"""Suite for features/search_pairs/ds=D (may be empty: purchase-only data has no searches)."""

from __future__ import annotations

from typing import Any

from ecrec_lib.schema import SEARCH_PAIR_COLUMNS
from expectations._common import (
    CRITICAL,
    SuiteContext,
    meta,
    new_suite,
    not_null,
    schema_expectations,
)

TYPES = dict(zip(SEARCH_PAIR_COLUMNS, ("StringType", "StringType", "LongType", "LongType", "LongType"),
                 strict=True))


def build_suite(ctx: SuiteContext) -> Any:
    import great_expectations as gx

    return new_suite("search_pairs", [
        *schema_expectations(TYPES),
        *not_null(SEARCH_PAIR_COLUMNS),
        gx.expectations.ExpectCompoundColumnsToBeUnique(
            column_list=["query", "item_id"], meta=meta(CRITICAL, "one row per pair")
        ),
        gx.expectations.ExpectColumnValuesToBeBetween(column="n", min_value=1, meta=meta(CRITICAL, "n >= 1")),
    ])
