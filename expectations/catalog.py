"""Suite for clean/catalog/ds=D. Null prices are allowed (real Amazon data has none)."""

from __future__ import annotations

from typing import Any

from ecrec_lib.schema import CLEAN_CATALOG_COLUMNS
from expectations._common import (
    CRITICAL,
    WARNING,
    SuiteContext,
    meta,
    new_suite,
    not_null,
    schema_expectations,
    volume_expectations,
)

TYPES = dict(zip(CLEAN_CATALOG_COLUMNS, (
    "StringType", "StringType", "StringType", "StringType", "StringType", "StringType",
    "DoubleType", "BooleanType", "TimestampType",
), strict=True))


def build_suite(ctx: SuiteContext) -> Any:
    import great_expectations as gx

    exps: list[Any] = [
        *schema_expectations(TYPES),
        *not_null(("item_id", "title")),
        gx.expectations.ExpectColumnValuesToBeUnique(column="item_id", meta=meta(CRITICAL, "one row per item")),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="price", min_value=0, meta=meta(CRITICAL, "no negative price (null allowed)")
        ),
        gx.expectations.ExpectColumnValuesToNotBeNull(
            column="category", mostly=0.9, meta=meta(WARNING, "items without category rank poorly")
        ),
        *volume_expectations(ctx),
    ]
    return new_suite("catalog", exps)
