"""Output contracts of the score tables (user_topk, item_related, query_topk, trending).

The per-list checks GX has no built-in for (ranks 1..n without gaps, no duplicate item in a
list, scores non-increasing with rank, list length = min(K, eligible), nothing already bought,
every item in the catalog) are computed as boolean helper columns by
``ecrec_lib.scoring.contracts.add_helper_columns``; the suites expect them all True. Every
expectation here is critical: a failure blocks publication.
"""

from __future__ import annotations

from typing import Any

from expectations._common import CRITICAL, meta, new_suite, not_null

# Helper column -> why it must be True (also the failure text BI/on-call reads).
HELPER_COLUMNS: dict[str, str] = {
    "rank_ok": "ranks of each list are 1..n without gaps or repeats",
    "item_unique": "no item appears twice in the same list",
    "score_ordered": "scores are non-increasing with rank",
    "in_catalog": "every recommended item exists in the catalog snapshot of ds",
    "not_bought": "no item the user already bought (exclude_purchased)",
    "list_size_ok": "each list holds min(K, eligible items) rows",
}


def build_suite(
    table: str,
    columns: tuple[str, ...],
    key_columns: tuple[str, ...],
    ds: str,
    k: int,
    min_rows: int = 1,
    strategies: tuple[str, ...] | None = None,
) -> Any:
    """The suite for one score table, run on the table plus its helper columns."""
    import great_expectations as gx

    exps: list[Any] = [
        gx.expectations.ExpectTableColumnsToMatchOrderedList(
            column_list=[*columns, *HELPER_COLUMNS], meta=meta(CRITICAL, "published schema")
        ),
        gx.expectations.ExpectColumnValuesToBeInSet(
            column="ds", value_set=[ds], meta=meta(CRITICAL, "one partition per publication")
        ),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="rank", min_value=1, max_value=k, meta=meta(CRITICAL, f"ranks within 1..{k}")
        ),
        *not_null(key_columns),
    ]
    if min_rows:
        exps.append(
            gx.expectations.ExpectTableRowCountToBeBetween(
                min_value=min_rows, meta=meta(CRITICAL, "an empty table is never published")
            )
        )
    if strategies:
        exps.append(
            gx.expectations.ExpectColumnValuesToBeInSet(
                column="strategy", value_set=list(strategies), meta=meta(CRITICAL, "known strategy")
            )
        )
    for col, why in HELPER_COLUMNS.items():
        exps.append(
            gx.expectations.ExpectColumnValuesToBeInSet(
                column=col, value_set=[True], meta=meta(CRITICAL, why)
            )
        )
    return new_suite(f"scores_{table}", exps)
