"""Suite for clean/events/ds=D (run on the staged partition before it is published)."""

from __future__ import annotations

from typing import Any

from ecrec_lib.schema import CLEAN_EVENT_COLUMNS, DEVICES, EVENT_TYPES
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

TYPES = dict(zip(CLEAN_EVENT_COLUMNS, (
    "StringType", "TimestampType", "StringType", "StringType", "StringType", "StringType",
    "StringType", "LongType", "DoubleType", "LongType", "StringType", "StringType",
), strict=True))


def build_suite(ctx: SuiteContext) -> Any:
    import great_expectations as gx

    start, end = ctx.window()
    exps: list[Any] = [
        *schema_expectations(TYPES),
        *not_null(("event_id", "event_time", "user_key", "session_id", "event_type")),
        gx.expectations.ExpectColumnValuesToBeUnique(column="event_id", meta=meta(CRITICAL, "deduplicated")),
        gx.expectations.ExpectColumnValuesToBeInSet(
            column="event_type", value_set=list(EVENT_TYPES), meta=meta(CRITICAL, "contract value set")
        ),
        gx.expectations.ExpectColumnValuesToMatchRegex(
            column="user_key", regex=r"^[0-9a-f]{64}$", meta=meta(CRITICAL, "pseudonymized (HMAC hex)")
        ),
        gx.expectations.ExpectColumnMinToBeBetween(
            column="event_time", min_value=start, max_value=end, meta=meta(CRITICAL, "inside ds window")
        ),
        gx.expectations.ExpectColumnMaxToBeBetween(
            column="event_time", min_value=start, max_value=end, meta=meta(CRITICAL, "freshness")
        ),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="price", min_value=0, meta=meta(CRITICAL, "no negative price")
        ),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="quantity", min_value=1, meta=meta(CRITICAL, "positive quantity")
        ),
        gx.expectations.ExpectColumnValuesToBeInSet(
            column="device", value_set=list(DEVICES), mostly=0.95, meta=meta(WARNING, "known devices")
        ),
        gx.expectations.ExpectColumnValueLengthsToEqual(
            column="country", value=2, mostly=0.95, meta=meta(WARNING, "ISO-3166 alpha-2")
        ),
        *volume_expectations(ctx),
    ]
    return new_suite("clean_events", exps)
