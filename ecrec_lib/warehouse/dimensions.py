"""What makes the warehouse readable without the lake: the ``items`` dimension, the
``published_nights`` log, ``<table>_named`` views with titles, and comments on every table.

* ``items``: one row per catalog item ever published (title, brand, category, price, in stock,
  first/last night seen), merged from the clean catalog partition of each published night in
  the same transaction as the score tables.
* ``published_nights``: one row per published ds: the model version(s) that served it, rows
  per table, when it was published.
* ``<table>_named``: every score table joined to ``items`` (titles next to the ids).
* ``metrics_daily`` / ``drift_daily`` (written by ``jobs.feedback``) get their comments here
  too, so every table a BI user sees explains itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import pandas as pd

from ecrec_lib.lake import parse_ds
from ecrec_lib.scoring.tables import ITEM_COLUMN, TABLE_COLUMNS
from ecrec_lib.warehouse.backend import Warehouse, ident

ITEMS = "items"
NIGHTS = "published_nights"
METRICS_DAILY = "metrics_daily"
DRIFT_DAILY = "drift_daily"
NAMED_SUFFIX = "_named"

ITEM_COLUMNS: dict[str, str] = {  # column -> SQL type, in table order
    "item_id": "TEXT NOT NULL",
    "title": "TEXT NOT NULL",
    "brand": "TEXT",
    "category": "TEXT",
    "category_path": "TEXT",
    "price": "DOUBLE PRECISION",
    "in_stock": "BOOLEAN",
    "first_seen": "DATE NOT NULL",
    "last_seen": "DATE NOT NULL",
}
ITEM_ATTRIBUTES = ("title", "brand", "category", "category_path", "price", "in_stock")
ITEMS_COMMENT = (
    "Catalog items (dimension): one row per item that was in the clean catalog of any published "
    "night, with its attributes as of the newest such night. Join score tables on item_id (or "
    "use the <table>_named views)."
)
ITEM_COMMENTS = {
    "item_id": "Catalog item id; the key the score tables' item columns refer to.",
    "title": "Product title as of last_seen.",
    "brand": "Brand name as of last_seen; NULL when the catalog has none.",
    "category": "Top-level category (first level of category_path); NULL when unknown.",
    "category_path": "Full category path, levels joined with ' > ' (e.g. 'Beauty > Makeup > "
    "Nails').",
    "price": "Unit price in the shop's currency as of last_seen, >= 0; NULL when the source has "
    "no price.",
    "in_stock": "Whether the item could be bought on last_seen (the newest night that listed it). "
    "Items missing from the newest catalog keep their last known value: check last_seen.",
    "first_seen": "First published night (ds) whose catalog listed the item.",
    "last_seen": "Newest published night (ds) whose catalog listed the item.",
}

NIGHT_COLUMNS: dict[str, str] = {
    "ds": "DATE NOT NULL",
    "model_version": "TEXT NOT NULL",
    **{f"{t}_rows": "BIGINT NOT NULL" for t in TABLE_COLUMNS},
    "items_rows": "BIGINT",
    "published_at": "TIMESTAMP NOT NULL",
}
NIGHTS_COMMENT = (
    "One row per published night: which registered model version served it and how many rows "
    "each table received. A re-published night replaces its row. Nights whose score rows were "
    "dropped by retention stay listed."
)
NIGHT_COMMENTS = {
    "ds": "The published night (logical date); one row per ds.",
    "model_version": "Registry version(s) of the champion model whose scores were published "
    "(several, comma-separated, if rows of one night came from different versions).",
    **{f"{t}_rows": f"Rows of {t} published for this ds." for t in TABLE_COLUMNS},
    "items_rows": "Catalog items in this night's clean catalog (merged into items); NULL when "
    "the night was published without the catalog.",
    "published_at": "When the night was published (UTC wall clock of the commit).",
}

# Scores, per table: what the number is and the range it takes. Measured ranges are in
# docs/bi.md; they differ by table because each table's score is a different quantity.
SCORE_COMMENTS = {
    "user_topk": "Ranking score, non-increasing with rank; compare only within one user's list "
    "of one night. two_tower rows: the model's cosine similarity (-1..1) with the co-occurrence "
    "blend added on the same scale (tau*log terms), plus 0.05 x conversion rate and 0.05 x "
    "normalized popularity. It is unbounded: the product-of-experts blend pulls items with "
    "little co-occurrence evidence below their cosine (top-100 scores down to about -1.7 to "
    "-2), the mixture lifts co-bought items above 1 (up to about 1 + tau*log(catalog size), "
    "about 1.1-1.2 in practice). Trending rows (cold start): the trending score (> 0).",
    "item_related": "Similarity of the related item to item_id: cosine similarity of the item "
    "embeddings (-1..1) + 0.1 x normalized co-occurrence count (0..1), so -1..1.1; "
    "non-increasing with rank.",
    "query_topk": "Cosine similarity between the query's embedding and the item's, -1..1; "
    "non-increasing with rank.",
    "trending": "Trend strength: (item events on ds + 1) / (mean daily item events over the "
    "lookback + 1), > 0; 1 = a usual day, 2 = twice the usual activity. Segment lists "
    "back-filled from the global order score 0 (plus < 1e-6 tie-break).",
}

NAMED_COMMENTS = {
    "item_title": "Title of the recommended item (items.title); NULL if the item is unknown.",
    "item_brand": "Brand of the recommended item (items.brand).",
    "item_category": "Top-level category of the recommended item (items.category).",
    "item_price": "Price of the recommended item (items.price) as of its last_seen night.",
    "source_title": "Title of item_id, the item the list is related to.",
    "reason_item_title": "Title of reason_item_id ('because you viewed ...').",
}

FEEDBACK_TABLE_COMMENTS = {
    METRICS_DAILY: "How the previous night's recommendations did on this day's behaviour "
    "(jobs.feedback): one row per (strategy, model_version) plus an overall row with both "
    "'all'. ds = the day of the behaviour; the lists were published for ds - 1.",
    DRIFT_DAILY: "Population stability index (PSI) of a few features between ds - 1 "
    "(reference) and ds (current), per feature (jobs.feedback).",
}
FEEDBACK_COLUMN_COMMENTS = {
    METRICS_DAILY: {
        "ds": "Day of the behaviour measured; the recommendations are those published for ds - 1.",
        "strategy": "How the lists were made (two_tower, segment_trending, global_trending), or "
        "'all' for the overall row.",
        "model_version": "Registry version of the model behind the lists, or 'all'.",
        "n_users_with_recs": "Users who had a recommendation list.",
        "n_active_users_with_recs": "Of those, users with at least one item event on ds.",
        "n_hit_users": "Users who interacted with at least one recommended item on ds.",
        "hit_rate": "n_hit_users / n_users_with_recs, 0..1.",
        "hit_rate_active": "n_hit_users / n_active_users_with_recs, 0..1 (NULL when no active user).",
        "recommended_views": "Views of (user, item) pairs that were recommended to that user.",
        "recommended_clicks": "Clicks on (user, item) pairs that were recommended to that user.",
        "ctr_proxy": "recommended_clicks / recommended_views, 0..1 (NULL without views).",
        "n_recommended_items": "Distinct items in the lists.",
        "coverage": "n_recommended_items / catalog size, 0..1.",
        "diversity": "Mean over users of the Gini-Simpson index of the top-level categories in "
        "their list, 0 (one category) .. towards 1 (many).",
        "novelty": "Mean self-information -log2(p) of recommended items, p = smoothed share of "
        "the day's active users who touched the item; higher = less popular items, >= 0.",
        "cold_start_share": "Share of the day's active users without a list (served by the "
        "cold-start fallbacks), 0..1; the same on every row of a ds.",
    },
    DRIFT_DAILY: {
        "ds": "Current day of the comparison (the reference is ds - 1).",
        "feature": "What is compared: item popularity, user sequence length, recommendation "
        "score, ...",
        "psi": "Population stability index, >= 0: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major "
        "shift; NULL when a side had no data.",
        "n_reference": "Non-null values on ds - 1.",
        "n_current": "Non-null values on ds.",
        "status": "stable | moderate | major | no_data, from psi.",
    },
}


def lit(text: str) -> str:
    """A SQL string literal (COMMENT ON takes a literal, not a bind parameter)."""
    return "'" + text.replace("'", "''") + "'"


# ------------------------------------------------------------------ items from the catalog


def items_frame(catalog: pd.DataFrame, ds: str) -> pd.DataFrame:
    """The ``items`` rows of one night's clean catalog (first_seen = last_seen = ds).

    Raises ValueError naming the missing columns, a duplicated id or a missing title: the
    clean stage guarantees all three, so any of them means the partition is not a clean one.
    """
    need = ["item_id", "title", *[c for c in ITEM_ATTRIBUTES if c != "title"]]
    missing = [c for c in need if c not in catalog.columns]
    if missing:
        raise ValueError(
            f"clean/catalog ds={ds} lacks columns {missing} (see docs/data_contracts.md, Clean "
            "catalog); re-run `python -m jobs.clean_events --ds D`"
        )
    out = catalog[need].copy()
    out["item_id"] = out["item_id"].astype(str)
    dups = out["item_id"][out["item_id"].duplicated()].unique()
    if len(dups):
        raise ValueError(f"clean/catalog ds={ds} has duplicate item_id {list(dups[:5])}; re-run "
                         "the clean job for this ds")
    if out["title"].isna().any():
        raise ValueError(f"clean/catalog ds={ds} has items without a title; re-run the clean job")
    out["price"] = pd.to_numeric(out["price"], errors="raise").astype("float64")
    out["in_stock"] = out["in_stock"].astype("boolean")
    day = parse_ds(ds)
    out["first_seen"] = day
    out["last_seen"] = day
    return out[list(ITEM_COLUMNS)].reset_index(drop=True)


# ------------------------------------------------------------------ DDL and comments


def _named_view_sql(wh: Warehouse, table: str) -> str:
    cols = ", ".join(f"t.{ident(c)}" for c in TABLE_COLUMNS[table])
    item_col = ITEM_COLUMN[table]
    select = [cols, "i.title AS item_title", "i.brand AS item_brand",
              "i.category AS item_category", "i.price AS item_price"]
    joins = [f"LEFT JOIN {wh.fq(ITEMS)} i ON i.item_id = t.{ident(item_col)}"]
    if table == "item_related":
        select.append("s.title AS source_title")
        joins.append(f"LEFT JOIN {wh.fq(ITEMS)} s ON s.item_id = t.item_id")
    if "reason_item_id" in TABLE_COLUMNS[table]:
        select.append("r.title AS reason_item_title")
        joins.append(f"LEFT JOIN {wh.fq(ITEMS)} r ON r.item_id = t.reason_item_id")
    return (f"CREATE OR REPLACE VIEW {wh.fq(table + NAMED_SUFFIX)} AS SELECT {', '.join(select)} "
            f"FROM {wh.fq(table)} t {' '.join(joins)}")


def named_columns(table: str) -> list[str]:
    """The columns of ``<table>_named`` beyond the table's own."""
    extra = ["item_title", "item_brand", "item_category", "item_price"]
    if table == "item_related":
        extra.append("source_title")
    if "reason_item_id" in TABLE_COLUMNS[table]:
        extra.append("reason_item_title")
    return extra


def comment_columns(wh: Warehouse, relation: str, comments: Mapping[str, str]) -> None:
    for col, text in comments.items():
        wh.execute(f"COMMENT ON COLUMN {wh.fq(relation)}.{ident(col)} IS " + lit(text))


def ensure_dimensions(wh: Warehouse, table_comments: Mapping[str, str],
                      column_comments: Mapping[str, str]) -> None:
    """Create ``items``, ``published_nights`` and the ``_named`` views, with comments.

    Needs the score tables to exist (``ensure_schema`` creates them first).
    ``table_comments`` / ``column_comments`` are the score tables' own texts.
    """
    for name, columns, comment, col_comments in (
        (ITEMS, ITEM_COLUMNS, ITEMS_COMMENT, ITEM_COMMENTS),
        (NIGHTS, NIGHT_COLUMNS, NIGHTS_COMMENT, NIGHT_COMMENTS),
    ):
        ddl = ", ".join(f"{ident(c)} {t}" for c, t in columns.items())
        wh.execute(f"CREATE TABLE IF NOT EXISTS {wh.fq(name)} ({ddl})")
        wh.execute(f"COMMENT ON TABLE {wh.fq(name)} IS " + lit(comment))
        comment_columns(wh, name, col_comments)
    for table in TABLE_COLUMNS:
        view = table + NAMED_SUFFIX
        wh.execute(_named_view_sql(wh, table))
        wh.execute(f"COMMENT ON VIEW {wh.fq(view)} IS " + lit(
            f"{table} with the items' titles, brands, categories and prices joined (all "
            f"nights; filter on ds). {table_comments[table]}"))
        own = {c: (SCORE_COMMENTS[table] if c == "score" else column_comments[c])
               for c in TABLE_COLUMNS[table]}
        comment_columns(wh, view, {**own, **{c: NAMED_COMMENTS[c] for c in named_columns(table)}})
    for table in FEEDBACK_TABLE_COMMENTS:
        comment_feedback_table(wh, table)


def comment_feedback_table(wh: Warehouse, table: str) -> None:
    """Comment ``metrics_daily`` / ``drift_daily`` when they exist (jobs.feedback creates them);
    columns this module does not know are left as they are."""
    if not wh.relation_exists(table):
        return
    wh.execute(f"COMMENT ON TABLE {wh.fq(table)} IS " + lit(FEEDBACK_TABLE_COMMENTS[table]))
    present = set(wh.column_comments(table))
    comment_columns(wh, table, {c: t for c, t in FEEDBACK_COLUMN_COMMENTS[table].items()
                                if c in present})


# ------------------------------------------------------------------ inside the publish transaction


def load_items_staging(wh: Warehouse, items: pd.DataFrame, staging: str) -> str:
    """``staging`` (``items__staging_<run id>``) holding the night's items (no constraints:
    checked before merging)."""
    wh.execute(f"DROP TABLE IF EXISTS {wh.fq(staging)}")
    ddl = ", ".join(f"{ident(c)} {t.replace(' NOT NULL', '')}" for c, t in ITEM_COLUMNS.items())
    wh.execute(f"CREATE TABLE {wh.fq(staging)} ({ddl})")
    wh.insert_dataframe(staging, items[list(ITEM_COLUMNS)])
    return staging


def check_items_staging(wh: Warehouse, staging: str, expected_rows: int) -> list[str]:
    problems = []
    n = int(wh.scalar(f"SELECT count(*) FROM {wh.fq(staging)}"))
    if n != expected_rows:
        problems.append(f"items: staging holds {n} rows, the clean catalog {expected_rows}")
    dups = int(wh.scalar(f"SELECT count(*) - count(DISTINCT item_id) FROM {wh.fq(staging)}"))
    if dups:
        problems.append(f"items: {dups} duplicate item_id in staging")
    return problems


def merge_items(wh: Warehouse, staging: str, ds: str) -> None:
    """Upsert the night's items: attributes from the newest night (a backfill of an older ds
    does not overwrite newer attributes), first_seen = earliest, last_seen = newest night."""
    day = parse_ds(ds)
    s, i = wh.fq(staging), wh.fq(ITEMS)
    attrs = ", ".join(f"{c} = old.{c}" for c in ITEM_ATTRIBUTES)
    wh.execute(f"UPDATE {s} AS st SET {attrs} FROM {i} old WHERE old.item_id = st.item_id "
               "AND old.last_seen > %s", [day])
    wh.execute(f"UPDATE {s} AS st SET first_seen = least(st.first_seen, old.first_seen), "
               f"last_seen = greatest(st.last_seen, old.last_seen) FROM {i} old "
               "WHERE old.item_id = st.item_id")
    wh.execute(f"DELETE FROM {i} WHERE item_id IN (SELECT item_id FROM {s})")
    cols = ", ".join(ITEM_COLUMNS)
    wh.execute(f"INSERT INTO {i} ({cols}) SELECT {cols} FROM {s}")


def served_versions(user_topk: pd.DataFrame) -> str:
    """The model version(s) in a night's user_topk, comma-separated ("" when empty)."""
    if "model_version" not in user_topk or user_topk.empty:
        return ""
    return ",".join(sorted({str(v) for v in user_topk["model_version"].dropna() if str(v)}))


def record_night(wh: Warehouse, ds: str, rows: Mapping[str, int], items_rows: int | None,
                 model_version: str) -> None:
    """Replace the ``published_nights`` row of ``ds`` (inside the publish transaction)."""
    day = parse_ds(ds)
    wh.execute(f"DELETE FROM {wh.fq(NIGHTS)} WHERE ds = %s", [day])
    values = [day, model_version, *(int(rows.get(t, 0)) for t in TABLE_COLUMNS), items_rows,
              dt.datetime.now(dt.UTC).replace(tzinfo=None)]
    cols = ", ".join(NIGHT_COLUMNS)
    marks = ", ".join(["%s"] * len(NIGHT_COLUMNS))
    wh.execute(f"INSERT INTO {wh.fq(NIGHTS)} ({cols}) VALUES ({marks})", values)
