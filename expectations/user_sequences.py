"""Suite for features/user_sequences/ds=D."""

from __future__ import annotations

from typing import Any

from ecrec_lib.schema import USER_SEQUENCE_COLUMNS
from expectations._common import (
    CRITICAL,
    SuiteContext,
    meta,
    new_suite,
    not_null,
    schema_expectations,
    volume_expectations,
)

TYPES = dict(zip(USER_SEQUENCE_COLUMNS, (
    "StringType", "ArrayType", "ArrayType", "ArrayType", "LongType", "TimestampType",
    "StringType", "StringType",
), strict=True))


def build_suite(ctx: SuiteContext) -> Any:
    """Sequence lengths (<= max_seq_len) are enforced by construction and unit-tested: GX's
    value-length expectations do not accept Spark array columns."""
    import great_expectations as gx

    return new_suite("user_sequences", [
        *schema_expectations(TYPES),
        *not_null(("user_key", "item_ids", "last_event_time")),
        gx.expectations.ExpectColumnValuesToBeUnique(column="user_key", meta=meta(CRITICAL, "one row per user")),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="n_events", min_value=1, meta=meta(CRITICAL, "active users only")
        ),
        *volume_expectations(ctx),
    ])
