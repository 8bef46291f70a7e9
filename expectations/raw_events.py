"""Suite for raw events, validated on the parsed DataFrame (explicit schema, PERMISSIVE).

The DataFrame handed in holds only the contract fields actually seen in the raw lines
(``ctx.present_columns``), so a required field that vanished upstream fails
``expect_table_columns_to_match_set`` (exact_match=False) critically (schema drift); unknown new fields are
reported by the clean job's reconciliation, not here.
"""

from __future__ import annotations

from typing import Any

from ecrec_lib.schema import EVENT_TYPES, RAW_EVENT_FIELDS, RAW_EVENT_REQUIRED
from expectations._common import CRITICAL, WARNING, SuiteContext, meta, new_suite

JSON_TO_SPARK = {"string": "StringType", "integer": "LongType", "number": "DoubleType",
                 "boolean": "BooleanType"}


def build_suite(ctx: SuiteContext) -> Any:
    import great_expectations as gx

    present = set(ctx.present_columns or RAW_EVENT_FIELDS)
    exps: list[Any] = [
        gx.expectations.ExpectTableColumnsToMatchSet(
            column_set=list(RAW_EVENT_REQUIRED), exact_match=False,
            meta=meta(CRITICAL, "required raw fields present (schema drift)"),
        ),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1, meta=meta(CRITICAL, "non-empty")),
    ]
    for name, json_type in RAW_EVENT_FIELDS.items():
        if name not in present:
            continue
        exps.append(
            gx.expectations.ExpectColumnValuesToBeOfType(
                column=name, type_=JSON_TO_SPARK[json_type], meta=meta(CRITICAL, "parsed type")
            )
        )
    for name in RAW_EVENT_REQUIRED:
        if name in present:
            exps.append(
                gx.expectations.ExpectColumnValuesToNotBeNull(
                    column=name, mostly=ctx.min_required_fraction,
                    meta=meta(CRITICAL, "required field mostly present"),
                )
            )
    if "event_type" in present:
        exps.append(
            gx.expectations.ExpectColumnValuesToBeInSet(
                column="event_type", value_set=list(EVENT_TYPES), mostly=0.99,
                meta=meta(WARNING, "unknown event types are quarantined"),
            )
        )
    return new_suite("raw_events", exps)
