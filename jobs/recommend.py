"""Ad-hoc look-ups in the published recommendations.

    python -m jobs.recommend --user USER_KEY [--k 10] [--ds D]
    python -m jobs.recommend --query "nail polish" [--k 10]
    python -m jobs.recommend --item ITEM_ID [--k 10]
    python -m jobs.recommend --online --user USER_KEY | --item ITEM_ID [--k 10]

Reads the warehouse (``<table>_latest`` views, or the --ds partition) and prints titles, scores
and reasons. A free-text query that is not in query_topk is encoded by the champion's query
encoder (``--model-uri`` overrides) and searched over the catalog snapshot of that ds.
With ``--online`` the user and item lists come from Redis instead (the version
``jobs.export_online`` switched readers to, read as a web page would).
Exit 1 for an unknown user/item or when nothing is published.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TextIO

import pandas as pd

from ecrec_lib.config import EcrecConfig, add_config_args, config_from_args
from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.models.api import Recommender
from ecrec_lib.privacy.secrets import redact_text
from ecrec_lib.warehouse import Warehouse, WarehouseError, connect
from jobs.common import setup_logging

log = logging.getLogger("jobs.recommend")


class NotFoundError(LookupError):
    """Unknown user/item/query, or nothing published; the message says what to do."""


def normalize_query(text: str) -> str:
    """Same normalization as clean/events.query (NFKC, lower case, single spaces)."""
    try:
        from ecrec_lib.pipeline.normalize import normalize_query_py

        return normalize_query_py(text) or ""
    except ImportError:  # pipeline module absent: the documented rule
        import unicodedata

        return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def _source(wh: Warehouse, table: str, ds: str | None) -> tuple[str, list]:
    if ds:
        return f"{wh.fq(table)} WHERE ds = %s", [parse_ds(ds)]
    return f"{wh.fq(table + '_latest')} WHERE TRUE", []


def published_ds(wh: Warehouse, table: str, ds: str | None) -> str:
    src, params = _source(wh, table, ds)
    value = wh.scalar(f"SELECT max(ds) FROM {src}", params)
    if value is None or pd.isna(value):
        where = f"for ds={ds}" if ds else "yet"
        raise NotFoundError(f"nothing published in {table} {where}: run "
                           "`python -m jobs.publish_scores --ds D`")
    return str(pd.Timestamp(value).date())


def titles(cfg: EcrecConfig, ds: str) -> dict[str, str]:
    """item_id -> title from the catalog snapshot of ds (empty when the lake lacks it)."""
    from ecrec_lib.scoring.pipeline import read_partition

    cat = read_partition(Lake(cfg.lake_root).clean("catalog", ds), False, "catalog", "")
    if cat is None:
        return {}
    return dict(zip(cat["item_id"].astype(str), cat["title"].astype(str), strict=True))


def _name(item: object, names: dict[str, str]) -> str:
    if item is None or (isinstance(item, float) and pd.isna(item)):
        return ""
    return f"{names.get(str(item), '(title unknown)')} [{item}]"


def lookup_user(wh: Warehouse, user: str, k: int, ds: str | None) -> pd.DataFrame:
    src, params = _source(wh, "user_topk", ds)
    df = wh.query(
        f"SELECT ds, rank, item_id, score, reason_item_id, strategy, model_version FROM {src} "
        "AND user_key = %s AND rank <= %s ORDER BY rank", [*params, user, k])
    if df.empty:
        day = published_ds(wh, "user_topk", ds)
        raise NotFoundError(f"unknown user {user!r}: no recommendations for ds={day} (users are "
                           "pseudonymized user_key values, see clean/events)")
    return df


def lookup_item(wh: Warehouse, item: str, k: int, ds: str | None) -> pd.DataFrame:
    src, params = _source(wh, "item_related", ds)
    df = wh.query(f"SELECT ds, rank, related_item_id AS item_id, score FROM {src} "
                  "AND item_id = %s AND rank <= %s ORDER BY rank", [*params, item, k])
    if df.empty:
        day = published_ds(wh, "item_related", ds)
        raise NotFoundError(f"unknown item {item!r}: not in item_related for ds={day}")
    return df


def lookup_query(wh: Warehouse, query: str, k: int, ds: str | None) -> pd.DataFrame:
    src, params = _source(wh, "query_topk", ds)
    return wh.query(f"SELECT ds, rank, item_id, score FROM {src} AND query = %s AND rank <= %s "
                    "ORDER BY rank", [*params, query, k])


def search_free_text(
    cfg: EcrecConfig, model: Recommender, query: str, k: int, ds: str
) -> pd.DataFrame:
    """Encode the query with the model and search the in-stock catalog snapshot of ds."""
    from ecrec_lib.scoring.pipeline import build_item_space, read_partition
    from ecrec_lib.scoring.topk_faiss import topk_exact

    catalog = read_partition(Lake(cfg.lake_root).clean("catalog", ds), True, "clean/catalog",
                    "the catalog snapshot of the published ds is needed for free-text search")
    items = build_item_space(model, catalog, None)
    qv = model.encode_queries([query])
    top = topk_exact(qv, items.emb, k, item_mask=items.in_stock, device="cpu")
    ok = top.indices[0] >= 0
    return pd.DataFrame({"ds": ds, "rank": range(1, int(ok.sum()) + 1),
                         "item_id": items.item_ids[top.indices[0][ok]],
                         "score": top.scores[0][ok]})


def render(header: str, df: pd.DataFrame, names: dict[str, str], out: TextIO) -> None:
    print(header, file=out)
    for row in df.itertuples(index=False):
        line = f"{int(row.rank):3d}. {_name(row.item_id, names)}  score {float(row.score):.4f}"
        reason = getattr(row, "reason_item_id", None)
        if reason is not None and not (isinstance(reason, float) and pd.isna(reason)):
            line += f"  -- because you viewed {_name(reason, names)}"
        print(line, file=out)


def run(cfg: EcrecConfig, args: argparse.Namespace, out: TextIO | None = None,
        model: Recommender | None = None) -> None:
    """Look up what ``args`` asks for and print it to ``out`` (stdout by default)."""
    out = out or sys.stdout
    live_query = None
    # Read-only and only for the look-ups: another process holding the DuckDB file (even to
    # read) blocks a publish, so the model load and live encoding below happen after close.
    with connect(cfg.warehouse_url, cfg.warehouse_schema, read_only=True,
                 lock_wait_s=cfg.warehouse_lock_wait_s) as wh:
        if args.user is not None:
            df = lookup_user(wh, args.user, args.k, args.ds)
            day = str(pd.Timestamp(df["ds"].iat[0]).date())
            header = (f"Recommendations for user {args.user} (ds {day}, model "
                      f"{df['model_version'].iat[0]}, strategy {df['strategy'].iat[0]}):")
        elif args.item is not None:
            df = lookup_item(wh, args.item, args.k, args.ds)
            day = str(pd.Timestamp(df["ds"].iat[0]).date())
            header = None
        else:
            query = normalize_query(args.query)
            if not query:
                raise NotFoundError("--query is empty after normalization; give some words")
            df = lookup_query(wh, query, args.k, args.ds)
            if df.empty:
                day = published_ds(wh, "query_topk" if args.ds else "user_topk", args.ds)
                live_query = query
                header = f"Results for query {query!r} (live, champion query encoder, ds {day}):"
            else:
                day = str(pd.Timestamp(df["ds"].iat[0]).date())
                header = f"Results for query {query!r} (precomputed, ds {day}):"
    if live_query is not None:
        if model is None:
            from jobs.score_topk import load_model

            _, model = load_model(cfg, args.model_uri)
        df = search_free_text(cfg, model, live_query, args.k, day)
    names = titles(cfg, day)
    if header is None:
        header = f"Items related to {_name(args.item, names)} (ds {day}):"
    render(header, df, names, out)


def run_online(cfg: EcrecConfig, args: argparse.Namespace, out: TextIO | None = None) -> None:
    """Look up a user's or an item's list in Redis (the served version) and print it."""
    from ecrec_lib.serving.online import (
        connect_redis,
        current_version,
        get_related,
        get_user_recs,
        version_meta,
    )

    if args.query is not None or args.ds:
        raise NotFoundError("--online serves --user and --item lists of the current version; "
                            "drop --online for --query or --ds (they read the warehouse)")
    r = connect_redis(cfg.online_redis_url)
    prefix = cfg.online_key_prefix
    version = current_version(r, prefix)
    if version is None:
        raise NotFoundError(f"nothing is served under the Redis key prefix {prefix!r}: run "
                            "`python -m jobs.export_online --ds D`")
    day = version_meta(r, version, prefix).get("ds") or version[:10]
    if args.user is not None:
        recs = get_user_recs(r, args.user, args.k, prefix=prefix, version=version)
        what, header = f"unknown user {args.user!r}", f"Recommendations for user {args.user}"
    else:
        recs = get_related(r, args.item, args.k, prefix=prefix, version=version)
        what, header = f"unknown item {args.item!r}", None
    if not recs:
        raise NotFoundError(f"{what}: no list in the served version {version} (ds {day})")
    names = titles(cfg, day)
    if header is None:
        header = f"Items related to {_name(args.item, names)}"
    df = pd.DataFrame({"rank": range(1, len(recs) + 1), "item_id": [x.item_id for x in recs],
                       "score": [x.score for x in recs]})
    render(f"{header} (online, ds {day}, version {version}):", df, names, out or sys.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="user_key (pseudonymized) to show recommendations for")
    who.add_argument("--query", help="search text (normalized like clean/events.query)")
    who.add_argument("--item", help="item_id to show related items for")
    parser.add_argument("--k", type=int, default=10, help="number of rows to show")
    parser.add_argument("--ds", default=None, help="published ds (default: the latest)")
    parser.add_argument("--model-uri", default=None,
                        help="model for free-text queries (default: the champion)")
    parser.add_argument("--online", action="store_true",
                        help="read --user/--item lists from Redis (cfg.online_redis_url), as "
                        "the shop's pages do, instead of the warehouse")
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)
    if args.ds:
        parse_ds(args.ds)
    cfg = config_from_args(args)
    from ecrec_lib.serving.online import OnlineExportError

    try:
        if args.online:
            run_online(cfg, args)
        else:
            run(cfg, args)
    except (NotFoundError, WarehouseError, OnlineExportError) as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # e.g. no champion for a live query
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
