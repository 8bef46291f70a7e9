"""Output contracts of the score tables, run with Great Expectations on pandas.

The suites live in ``expectations/score_tables.py``. GX has no per-group expectation for
"ranks 1..n", "scores non-increasing within a list" etc., so :func:`add_helper_columns` computes
one boolean per row for each such rule and the suite expects them all True. The GX result
objects, severities and error messages are those of ``ecrec_lib.validation`` (the pipeline's
runner, which is Spark-only); this module adds the pandas datasource.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ecrec_lib.scoring.cold_start import STRATEGIES
from ecrec_lib.scoring.tables import ITEM_COLUMN, LIST_KEYS, TABLE_COLUMNS
from ecrec_lib.validation import (
    MAX_EXAMPLES,
    DataContractError,
    SuiteOutcome,
    _ephemeral_context,
    _outcome,
)

log = logging.getLogger(__name__)

KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "user_topk": ("ds", "user_key", "rank", "item_id", "score", "strategy", "model_version"),
    "item_related": ("ds", "item_id", "rank", "related_item_id", "score"),
    "query_topk": ("ds", "query", "rank", "item_id", "score"),
    "trending": ("ds", "segment", "rank", "item_id", "score"),
}
MIN_ROWS = {"user_topk": 1, "item_related": 1, "query_topk": 0, "trending": 1}


@dataclass(frozen=True)
class ContractContext:
    """What the rules need beyond the table: the catalog snapshot and the users' purchases."""

    ds: str
    k: int
    n_related: int
    catalog_in_stock: Mapping[str, bool]  # item_id -> in stock, every catalog item
    purchased: Mapping[str, frozenset[str]] = field(default_factory=dict)  # user_key -> items
    exclude_purchased: bool = True

    def list_len(self, table: str) -> int:
        return self.n_related if table == "item_related" else self.k


def add_helper_columns(table: str, df: pd.DataFrame, ctx: ContractContext) -> pd.DataFrame:
    """The table's columns plus one boolean column per per-list rule (True = rule holds)."""
    df = df[list(TABLE_COLUMNS[table])].reset_index(drop=True)
    keys = list(LIST_KEYS[table])
    item_col = ITEM_COLUMN[table]
    order = df.sort_values([*keys, "rank"], kind="stable").index
    s = df.loc[order]
    grp = s.groupby(keys, sort=False, dropna=False)
    pos = grp.cumcount() + 1
    rank_ok = (s["rank"] == pos).reindex(df.index)
    item_unique = ~df.duplicated([*keys, item_col], keep=False)
    prev = grp["score"].shift(1)
    score_ordered = (prev.isna() | (s["score"] <= prev)).reindex(df.index)

    in_stock = ctx.catalog_in_stock
    in_catalog = df[item_col].map(lambda i: i in in_stock)
    if table == "user_topk" and ctx.exclude_purchased and ctx.purchased:
        bought = [
            it in ctx.purchased.get(u, frozenset())
            for u, it in zip(df["user_key"], df["item_id"], strict=True)
        ]
        not_bought = ~pd.Series(bought, index=df.index, dtype=bool)
    else:
        not_bought = pd.Series(True, index=df.index)

    n_stock = int(sum(bool(v) for v in in_stock.values()))
    sizes = df.groupby(keys, dropna=False)[item_col].transform("size")
    if table == "user_topk" and ctx.exclude_purchased:
        excluded = df["user_key"].map(
            lambda u: sum(bool(in_stock.get(i, False)) for i in ctx.purchased.get(u, ()))
        )
        eligible = n_stock - excluded
    elif table == "item_related":
        eligible = n_stock - df["item_id"].map(lambda i: int(bool(in_stock.get(i, False))))
    else:
        eligible = pd.Series(n_stock, index=df.index)
    list_size_ok = sizes == np.minimum(ctx.list_len(table), eligible)
    return df.assign(
        rank_ok=rank_ok.astype(bool),
        item_unique=item_unique.astype(bool),
        score_ordered=score_ordered.astype(bool),
        in_catalog=in_catalog.astype(bool),
        not_bought=not_bought.astype(bool),
        list_size_ok=list_size_ok.astype(bool),
    )


def run_pandas_suite(df: pd.DataFrame, suite: object, dataset: str, ds: str) -> SuiteOutcome:
    """Validate a pandas DataFrame with an ephemeral GX context; never raises on failures."""
    context = _ephemeral_context()
    source = context.data_sources.add_or_update_pandas(name="ecrec_pandas")
    asset = source.add_dataframe_asset(name=dataset)
    batch_def = asset.add_batch_definition_whole_dataframe(f"{dataset}_whole")
    suite = context.suites.add_or_update(suite)
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(
        suite,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES},
    )
    return SuiteOutcome(
        dataset=dataset,
        ds=ds,
        results=[_outcome(r) for r in result.results],
        gx_result=json.loads(json.dumps(result.to_json_dict(), default=str)),
    )


def validate_table(table: str, df: pd.DataFrame, ctx: ContractContext) -> SuiteOutcome:
    """Helper columns + the table's suite; the outcome says what failed (does not raise)."""
    from expectations.score_tables import build_suite

    suite = build_suite(
        table,
        TABLE_COLUMNS[table],
        KEY_COLUMNS[table],
        ctx.ds,
        ctx.list_len(table),
        min_rows=MIN_ROWS[table],
        strategies=STRATEGIES if table == "user_topk" else None,
    )
    return run_pandas_suite(add_helper_columns(table, df, ctx), suite, f"scores_{table}", ctx.ds)


def validate_tables(
    tables: Mapping[str, pd.DataFrame], ctx: ContractContext
) -> dict[str, SuiteOutcome]:
    """Every table's outcome; raises :class:`DataContractError` (first failing table, with
    a readable summary of every failed rule) when any critical expectation failed."""
    outcomes = {name: validate_table(name, df, ctx) for name, df in tables.items()}
    for name, outcome in outcomes.items():
        if not outcome.success:
            raise DataContractError(outcome)
        log.info("contract scores_%s ds=%s: %d expectations passed", name, ctx.ds,
                 len(outcome.results))
    return outcomes
