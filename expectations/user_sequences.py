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


def build_suite(ctx: SuiteContext, max_seq_len: int = 50) -> Any:
    import great_expectations as gx

    return new_suite("user_sequences", [
        *schema_expectations(TYPES),
        *not_null(("user_key", "item_ids", "last_event_time")),
        gx.expectations.ExpectColumnValuesToBeUnique(column="user_key", meta=meta(CRITICAL, "one row per user")),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="n_events", min_value=1, meta=meta(CRITICAL, "active users only")
        ),
        gx.expectations.ExpectColumnValueLengthsToBeBetween(
            column="item_ids", min_value=1, max_value=max_seq_len,
            meta=meta(CRITICAL, "sequence length within max_seq_len"),
        ),
        *volume_expectations(ctx),
    ])
