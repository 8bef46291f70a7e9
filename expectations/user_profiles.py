"""Suite for features/user_profiles/ds=D."""

from __future__ import annotations

from typing import Any

from ecrec_lib.schema import USER_PROFILE_COLUMNS
from expectations._common import (
    CRITICAL,
    SuiteContext,
    meta,
    new_suite,
    not_null,
    schema_expectations,
    volume_expectations,
)

PRICE_BANDS = ("low", "mid", "high")
TYPES = dict(zip(USER_PROFILE_COLUMNS, (
    "StringType", "DoubleType", "LongType", "DoubleType", "MapType", "MapType", "StringType",
    "StringType", "StringType", "StringType",
), strict=True))


def build_suite(ctx: SuiteContext) -> Any:
    import great_expectations as gx

    return new_suite("user_profiles", [
        *schema_expectations(TYPES),
        *not_null(("user_key", "recency_days", "frequency", "monetary", "category_affinity")),
        gx.expectations.ExpectColumnValuesToBeUnique(column="user_key", meta=meta(CRITICAL, "one row per user")),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="recency_days", min_value=0, meta=meta(CRITICAL, "no event after the ds day")
        ),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="monetary", min_value=0, meta=meta(CRITICAL, "non-negative spend")
        ),
        gx.expectations.ExpectColumnValuesToBeInSet(
            column="price_band", value_set=list(PRICE_BANDS), meta=meta(CRITICAL, "terciles (null: no prices)")
        ),
        *volume_expectations(ctx),
    ])
