"""Nightly batch scoring, single process: inputs -> item space -> the four score tables.

The per-user part (:func:`score_users`) is a pure function of a batch of user_sequences rows and
the broadcast :class:`ItemSpace`, so the Spark path (``spark_scoring``) runs exactly the same
code per partition.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ecrec_lib.config import EcrecConfig
from ecrec_lib.lake import Lake, is_local, parse_ds
from ecrec_lib.models.api import ItemSet, Recommender, UserHistory
from ecrec_lib.privacy.queries import hold_back_reason
from ecrec_lib.schema import ITEM_RELATED_COLUMNS, QUERY_TOPK_COLUMNS, USER_TOPK_COLUMNS
from ecrec_lib.scoring import cold_start
from ecrec_lib.scoring.rerank import BlendWeights, blend_and_cap, normalized_popularity, reasons
from ecrec_lib.scoring.topk_faiss import topk_exact

log = logging.getLogger(__name__)

COOCCURRENCE_WEIGHT = 0.1  # weight of normalized co-occurrence in item_related scores
POOL_FACTOR = 3  # re-ranking candidate pool = POOL_FACTOR x K by similarity
USER_BATCH = 8192  # users encoded + scored at a time (bounds memory)


class ScoringInputError(RuntimeError):
    """A required input partition is missing or malformed; the message names it."""


@dataclass(frozen=True)
class ScoringParams:
    k: int = 100
    weights: BlendWeights = field(default_factory=BlendWeights)
    exclude_purchased: bool = True
    device: str = "auto"
    precision: str = "fp32"
    n_related: int = 20
    n_queries: int = 200
    min_query_users: int = 5  # k-anonymity of published queries (EcrecConfig.min_query_users)

    @classmethod
    def from_config(cls, cfg: EcrecConfig, k: int | None = None, **kw: object) -> ScoringParams:
        return cls(
            k=k or cfg.top_k,
            weights=BlendWeights(
                cfg.blend_quality_weight, cfg.blend_popularity_weight, cfg.max_per_category
            ),
            exclude_purchased=cfg.exclude_purchased,
            device=cfg.device,
            n_related=cfg.n_related,
            n_queries=cfg.n_queries,
            min_query_users=cfg.min_query_users,
            **kw,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class ScoringInputs:
    ds: str
    catalog: pd.DataFrame
    sequences: pd.DataFrame
    item_stats: pd.DataFrame | None = None
    events: pd.DataFrame | None = None
    cooccurrence: pd.DataFrame | None = None


@dataclass(frozen=True)
class ItemSpace:
    """The catalog snapshot as the scorer sees it (row i of every array = item_ids[i])."""

    item_ids: np.ndarray  # str, sorted
    emb: np.ndarray  # float32 (n, D), L2-normalized
    in_stock: np.ndarray  # bool
    category_codes: np.ndarray  # int
    quality: np.ndarray  # smoothed CVR
    popularity_norm: np.ndarray  # [0, 1]

    def index_of(self, ids: object) -> np.ndarray:
        """Catalog index of each id, -1 for ids not in the catalog."""
        return pd.Index(self.item_ids).get_indexer(pd.Index(np.asarray(ids, dtype=object)))

    def as_item_set(self) -> ItemSet:
        """What the model ranks: every snapshot item, in-stock ones only recommendable."""
        return ItemSet(self.item_ids, self.emb, self.in_stock)


def end_of_ds_ts(ds: str) -> int:
    """Epoch seconds at the end of the ds day (UTC): the 'now' of a nightly run."""
    day = parse_ds(ds) + dt.timedelta(days=1)
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())


def read_partition(path: str, required: bool, what: str, hint: str) -> pd.DataFrame | None:
    """A lake partition as pandas; None (or a ScoringInputError naming it) when absent."""
    local = path.removeprefix("file://") if is_local(path) else path
    if is_local(path) and not Path(local).is_dir():
        if required:
            raise ScoringInputError(f"{what} partition {local} does not exist; {hint}")
        return None
    return pq.read_table(local).to_pandas()


def check_feature_set(lake: Lake, ds: str) -> str | None:
    """The run id of the feature set of ``ds`` after checking that every feature partition it
    lists was published by that run (``_run.json`` vs ``ops/runs/ds=D/features.json``).

    Raises :class:`ScoringInputError` for a mixed set (a features run killed between two of
    its publishes). ``None``, with a warning, when there is no manifest (a lake written before
    manifests existed, hand-made test lakes) or the lake is remote.
    """
    from ecrec_lib.partitions import RUN_MARKER
    from ecrec_lib.pipeline.features import feature_manifest_path

    path = feature_manifest_path(lake, ds)
    if not is_local(path):
        return None
    manifest_file = Path(path.removeprefix("file://"))
    if not manifest_file.is_file():
        log.warning("no feature manifest %s: cannot check that the feature tables of ds=%s come "
                    "from one run", manifest_file, ds)
        return None
    manifest = json.loads(manifest_file.read_text())
    run_id = manifest["run_id"]
    problems = []
    for name in sorted(manifest["tables"]):
        marker_file = Path(lake.features(name, ds).removeprefix("file://")) / RUN_MARKER
        marker = json.loads(marker_file.read_text()) if marker_file.is_file() else None
        if marker is None or marker.get("run_id") != run_id:
            who = f"run {marker['run_id']}" if marker else "an unknown run (no _run.json)"
            problems.append(f"features/{name}/ds={ds} was published by {who}")
    if problems:
        raise ScoringInputError(
            f"the feature tables of ds={ds} are not one run's set ({manifest_file} names run "
            f"{run_id}): " + "; ".join(problems)
            + f". Re-run `python -m jobs.build_features --ds {ds}`, then score"
        )
    return run_id


def read_inputs(lake: Lake, ds: str) -> ScoringInputs:
    """The day's inputs from the lake (pyarrow, no Spark): catalog and user_sequences are
    required; item_stats, events, co-occurrence are optional (their features degrade)."""
    hint = "run the daily pipeline for this ds first (`python -m jobs.featurize --ds D`)"
    catalog = read_partition(lake.clean("catalog", ds), True, "clean/catalog", hint)
    seqs = read_partition(lake.features("user_sequences", ds), True, "features/user_sequences", hint)
    assert catalog is not None and seqs is not None
    return ScoringInputs(
        ds=ds,
        catalog=catalog,
        sequences=seqs,
        item_stats=read_partition(lake.features("item_stats", ds), False, "item_stats", hint),
        events=read_partition(lake.clean("events", ds), False, "clean/events", hint),
        cooccurrence=read_partition(lake.features("item_cooccurrence", ds), False, "cooccurrence", hint),
    )


def build_item_space(
    model: Recommender, catalog: pd.DataFrame, item_stats: pd.DataFrame | None
) -> ItemSpace:
    """Embed the whole catalog snapshot (new items get text-only vectors inside encode_items)."""
    cat = catalog.drop_duplicates("item_id").copy()
    cat["item_id"] = cat["item_id"].astype(str)
    cat = cat.sort_values("item_id", kind="stable").reset_index(drop=True)
    emb = np.ascontiguousarray(model.encode_items(cat), dtype=np.float32)
    if emb.shape[0] != len(cat):
        raise ValueError(f"encode_items returned {emb.shape[0]} rows for {len(cat)} items")
    quality = np.zeros(len(cat), np.float32)
    pop = np.zeros(len(cat), np.float64)
    if item_stats is not None and len(item_stats):
        st = item_stats.assign(item_id=item_stats["item_id"].astype(str)).set_index("item_id")
        st = st.reindex(cat["item_id"])
        quality = st["cvr"].fillna(st["cvr"].mean() if st["cvr"].notna().any() else 0.0)
        quality = quality.fillna(0.0).to_numpy(np.float32)
        pop = st["popularity"].fillna(0.0).to_numpy(np.float64)
    category = cat["category"] if "category" in cat.columns else pd.Series([""] * len(cat))
    codes = pd.factorize(category.fillna("").astype(str), sort=True)[0]
    return ItemSpace(
        item_ids=cat["item_id"].to_numpy(dtype=object),
        emb=emb,
        in_stock=cat["in_stock"].fillna(False).astype(bool).to_numpy(),
        category_codes=codes.astype(np.int64),
        quality=quality,
        popularity_norm=normalized_popularity(pop),
    )


def has_history(seqs: pd.DataFrame) -> pd.Series:
    return seqs["item_ids"].map(lambda v: v is not None and len(v) > 0)


def purchased_items(seqs: pd.DataFrame) -> list[list[str]]:
    """Items each user bought in the window (from the aligned event_types)."""
    out = []
    for ids, types in zip(seqs["item_ids"], seqs["event_types"], strict=True):
        ids = [] if ids is None else list(ids)
        types = [] if types is None else list(types)
        out.append(sorted({i for i, t in zip(ids, types, strict=False) if t == "purchase"}))
    return out


def score_users(
    model: Recommender,
    items: ItemSpace,
    seqs: pd.DataFrame,
    params: ScoringParams,
    now_ts: int,
    ds: str,
    model_version: str,
) -> pd.DataFrame:
    """user_topk rows (strategy two_tower) for the rows of ``seqs`` with a history."""
    seqs = seqs[has_history(seqs)].sort_values("user_key", kind="stable")
    frames = [_empty(USER_TOPK_COLUMNS)]
    for b0 in range(0, len(seqs), USER_BATCH):
        frames.append(
            _score_batch(model, items, seqs.iloc[b0 : b0 + USER_BATCH], params, now_ts, ds,
                         model_version)
        )
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True)[list(USER_TOPK_COLUMNS)]


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


def _score_batch(
    model: Recommender,
    items: ItemSpace,
    seqs: pd.DataFrame,
    params: ScoringParams,
    now_ts: int,
    ds: str,
    model_version: str,
) -> pd.DataFrame:
    histories = [
        UserHistory(list(i), list(t), [int(x) for x in s])
        for i, t, s in zip(seqs["item_ids"], seqs["event_types"], seqs["event_times"], strict=True)
    ]
    exclude = purchased_items(seqs) if params.exclude_purchased else [[] for _ in histories]
    # the served ranking (towers, blend, ranker) picks the pool the business re-ranking reads
    pool_ids, cand_score = model.recommend(
        histories, now_ts, POOL_FACTOR * params.k, items=items.as_item_set(), exclude=exclude)
    cand = items.index_of(np.where(pd.isna(pool_ids), "", pool_ids).astype(str).ravel())
    cand = np.where(pd.isna(pool_ids), -1, cand.reshape(pool_ids.shape))
    rec, score = blend_and_cap(
        cand, cand_score, params.k, items.quality, items.popularity_norm,
        items.category_codes, params.weights,
    )
    hist_idx = [items.index_of(list(h)) for h in seqs["item_ids"]]
    why = reasons(rec, hist_idx, items.emb)
    ok = rec >= 0
    n_per = ok.sum(1)
    rank = np.tile(np.arange(1, params.k + 1, dtype=np.int32), (len(seqs), 1))[ok]
    why_ok = why[ok]
    return pd.DataFrame(
        {
            "ds": ds,
            "user_key": np.repeat(seqs["user_key"].to_numpy(dtype=object), n_per),
            "rank": rank,
            "item_id": items.item_ids[rec[ok]],
            "score": score[ok].astype(np.float64),
            "reason_item_id": np.where(why_ok >= 0, items.item_ids[np.maximum(why_ok, 0)], None),
            "strategy": cold_start.STRATEGY_TWO_TOWER,
            "model_version": model_version,
        }
    )


def item_related(
    ds: str, items: ItemSpace, cooccurrence: pd.DataFrame | None, params: ScoringParams
) -> pd.DataFrame:
    """Top n_related in-stock items per catalog item by embedding similarity, plus
    COOCCURRENCE_WEIGHT x (co-occurrence count / the item's max count) on the candidate pool."""
    n = len(items.item_ids)
    pool = POOL_FACTOR * params.n_related
    top = topk_exact(
        items.emb, items.emb, pool, exclude=[np.array([i]) for i in range(n)],
        item_mask=items.in_stock, device=params.device, precision=params.precision,
    )
    sim = top.scores.astype(np.float64)
    if cooccurrence is not None and len(cooccurrence):
        co = cooccurrence.assign(
            a=items.index_of(cooccurrence["item_id"].astype(str)),
            b=items.index_of(cooccurrence["other_item_id"].astype(str)),
        )
        co = co[(co["a"] >= 0) & (co["b"] >= 0)]
        co["norm"] = co["count"] / co.groupby("a")["count"].transform("max")
        key = pd.Series(co["norm"].to_numpy(), index=co["a"].to_numpy() * n + co["b"].to_numpy())
        key = key.groupby(level=0).max()
        flat = (np.arange(n)[:, None] * n + np.maximum(top.indices, 0)).ravel()
        bonus = key.reindex(flat).fillna(0.0).to_numpy().reshape(sim.shape)
        sim = np.where(top.indices >= 0, sim + COOCCURRENCE_WEIGHT * bonus, sim)
    order = np.lexsort((np.where(top.indices >= 0, top.indices, n), -sim), axis=1)
    idx = np.take_along_axis(top.indices, order, 1)[:, : params.n_related]
    sc = np.take_along_axis(sim, order, 1)[:, : params.n_related]
    ok = idx >= 0
    return pd.DataFrame(
        {
            "ds": ds,
            "item_id": np.repeat(items.item_ids, ok.sum(1)),
            "rank": np.tile(np.arange(1, idx.shape[1] + 1, dtype=np.int32), (n, 1))[ok],
            "related_item_id": items.item_ids[idx[ok]],
            "score": sc[ok],
        }
    )[list(ITEM_RELATED_COLUMNS)]


def top_queries(events: pd.DataFrame | None, n: int, min_users: int) -> list[str]:
    """The day's n most frequent normalized search queries (ties: alphabetical) among those
    that may be published: issued by at least ``min_users`` distinct users and not shaped like
    personal data (:func:`ecrec_lib.privacy.queries.hold_back_reason`, the rule search_pairs
    follows too)."""
    if events is None or events.empty or "query" not in events.columns:
        return []
    searches = events.loc[(events["event_type"] == "search") & events["query"].notna(),
                          ["query", "user_key"]]
    searches = searches.assign(query=searches["query"].astype(str).str.strip())
    searches = searches[searches["query"] != ""]
    counts = searches.groupby("query").agg(n=("user_key", "size"), users=("user_key", "nunique"))
    reasons = pd.Series([hold_back_reason(q, int(u), min_users)
                         for q, u in zip(counts.index, counts["users"], strict=True)],
                        index=counts.index, dtype=object)
    if reasons.notna().any():
        # Counts only: a held-back query must not reach the logs either.
        log.info("query_topk: %d of %d queries held back (%s)", int(reasons.notna().sum()),
                 len(counts), reasons.value_counts().to_dict())
    counts = counts[reasons.isna()].reset_index()
    counts = counts.sort_values(["n", "query"], ascending=[False, True], kind="stable")
    return counts["query"].head(n).tolist()


def query_topk(
    ds: str, model: Recommender, items: ItemSpace, queries: list[str], params: ScoringParams
) -> pd.DataFrame:
    if not queries:
        return _empty(QUERY_TOPK_COLUMNS)
    qv = np.asarray(model.encode_queries(queries), dtype=np.float32)
    top = topk_exact(
        qv, items.emb, params.k, item_mask=items.in_stock, device=params.device,
        precision=params.precision,
    )
    ok = top.indices >= 0
    return pd.DataFrame(
        {
            "ds": ds,
            "query": np.repeat(np.asarray(queries, dtype=object), ok.sum(1)),
            "rank": np.tile(np.arange(1, params.k + 1, dtype=np.int32), (len(queries), 1))[ok],
            "item_id": items.item_ids[top.indices[ok]],
            "score": top.scores[ok].astype(np.float64),
        }
    )[list(QUERY_TOPK_COLUMNS)]


UserScorer = Callable[[ItemSpace, pd.DataFrame], pd.DataFrame]


def score_all(
    model: Recommender,
    inputs: ScoringInputs,
    params: ScoringParams,
    model_version: str,
    user_scorer: UserScorer | None = None,
) -> tuple[dict[str, pd.DataFrame], dict[str, float]]:
    """All four tables for inputs.ds. ``user_scorer`` replaces the local per-user scoring
    (the Spark engine passes one); timings in seconds per step."""
    ds = inputs.ds
    timings: dict[str, float] = {}
    t = time.perf_counter()
    items = build_item_space(model, inputs.catalog, inputs.item_stats)
    timings["encode_items_s"] = time.perf_counter() - t
    if not items.in_stock.any():
        raise ScoringInputError(
            f"clean/catalog ds={ds} has no in-stock item: nothing can be recommended"
        )

    t = time.perf_counter()
    now_ts = end_of_ds_ts(ds)
    if user_scorer is None:
        warm = score_users(model, items, inputs.sequences, params, now_ts, ds, model_version)
    else:
        warm = user_scorer(items, inputs.sequences)
    timings["score_users_s"] = time.perf_counter() - t

    t = time.perf_counter()
    trending = cold_start.trending_table(
        ds, inputs.catalog, inputs.item_stats, inputs.events, params.k
    )
    cold = cold_start.cold_start_recommendations(
        ds, cold_start.cold_users(inputs.events, inputs.sequences), trending, params.k,
        model_version,
    )
    timings["cold_start_s"] = time.perf_counter() - t
    user_topk = pd.concat([f for f in (warm, cold) if len(f)] or [warm], ignore_index=True)
    user_topk = user_topk.sort_values(["user_key", "rank"], kind="stable").reset_index(drop=True)

    t = time.perf_counter()
    related = item_related(ds, items, inputs.cooccurrence, params)
    timings["item_related_s"] = time.perf_counter() - t
    t = time.perf_counter()
    queries = query_topk(ds, model, items,
                         top_queries(inputs.events, params.n_queries, params.min_query_users), params)
    timings["query_topk_s"] = time.perf_counter() - t
    tables = {
        "user_topk": user_topk,
        "item_related": related,
        "query_topk": queries,
        "trending": trending,
    }
    return tables, timings
