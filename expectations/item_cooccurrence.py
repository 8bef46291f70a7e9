"""Suite for features/item_cooccurrence/ds=D."""

from __future__ import annotations

from typing import Any

from ecrec_lib.schema import COOCCURRENCE_COLUMNS
from expectations._common import (
    CRITICAL,
    SuiteContext,
    meta,
    new_suite,
    not_null,
    schema_expectations,
)

TYPES = dict(zip(COOCCURRENCE_COLUMNS, ("StringType", "StringType", "LongType"), strict=True))


def build_suite(ctx: SuiteContext) -> Any:
    import great_expectations as gx

    return new_suite("item_cooccurrence", [
        *schema_expectations(TYPES),
        *not_null(COOCCURRENCE_COLUMNS),
        gx.expectations.ExpectCompoundColumnsToBeUnique(
            column_list=["item_id", "other_item_id"], meta=meta(CRITICAL, "one row per pair")
        ),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="count", min_value=1, meta=meta(CRITICAL, "count >= 1")
        ),
    ])
