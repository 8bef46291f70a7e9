"""The served path's speed: ``Recommender.recommend`` end to end, beside the bare top-K kernel.

    python -m jobs.bench_scoring --served synthetic --users 100000 --items 100000
    python -m jobs.bench_scoring --served /tmp/speed_models/two_tower_seed0 --users 20000 \
        [--data ../shared/data/amazon_beauty]

``--served DIR``: a model directory written by ``jobs.benchmark_quality --save-models``
(:func:`ecrec_lib.models.artifact.load_recommender_dir`, its blend and ranker included); with
``--data DIR`` the users served are that dataset's real users (each history without its last
event), else synthetic histories over the model's catalog.
``--served synthetic``: a two-tower model (ID + side towers, random weights) with a product
blend of item-kNN, user-kNN (and the linear model when the catalog allows it) and a LightGBM
ranker fitted on synthetic sequences -- the same code path as a trained model; only the numbers
in the weights differ. The users served are synthetic histories over the model's catalog.

Reported: users/s of the whole served path, and where its time goes (towers = user vectors;
neighbourhood = item-kNN, user-kNN and linear scores, the blend's candidate generation; ranker
features = the ranker's candidates and their features; LightGBM predict; top-K = excluding
seen items and taking the k best; the rest = the cosine GEMM, the distributions and their
combination), next to the bare exact top-K over the same user vectors (:func:`topk_exact`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

log = logging.getLogger("jobs.bench_served")

BASE_TS = 1_600_000_000  # synthetic event times start here (epoch seconds)
PARTS = ("towers", "neighbourhood", "ranker_features", "ranker_trees", "top_k")


def synthetic_sequences(n_users: int, n_items: int, seed: int, mean_len: int = 8,
                        topic: int = 200) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Item sequences with structure for the neighbourhood parts to find: each user browses
    one topic (a window of ``topic`` consecutive items) with Zipf-like popularity inside it;
    event times increase along each sequence."""
    rng = np.random.default_rng(seed)
    lens = np.clip(rng.geometric(1.0 / mean_len, n_users), 2, 50)
    starts = rng.integers(0, n_items, n_users)
    offs = np.minimum(rng.zipf(1.3, int(lens.sum())) - 1, topic - 1)
    flat = (np.repeat(starts, lens) + offs) % n_items
    gaps = rng.integers(60, 86_400 * 3, int(lens.sum()))
    seqs = np.split(flat.astype(np.int64), np.cumsum(lens)[:-1])
    first = BASE_TS + rng.integers(0, 86_400 * 200, n_users)
    times = [f + np.cumsum(g) for f, g in zip(first, np.split(gaps, np.cumsum(lens)[:-1]),
                                              strict=True)]
    return seqs, times


def synthetic_recommender(n_items: int, seqs: list[np.ndarray], times: list[np.ndarray],
                          seed: int, dim: int = 64, ranker_users: int = 5000) -> Any:
    """A served :class:`TwoTowerRecommender` with a full product blend (see the module
    docstring); the ranker is fitted on the first ``ranker_users`` sequences."""
    import torch

    from ecrec_lib.models.blend import CoocBlend
    from ecrec_lib.models.config import ModelConfig
    from ecrec_lib.models.neighbourhood import ItemKNN, LinearTransitions, UserKNN
    from ecrec_lib.models.ranker import RankerConfig, fit_ranker
    from ecrec_lib.models.recommender import TwoTowerRecommender
    from ecrec_lib.models.two_tower import TwoTowerModel

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    mcfg = ModelConfig(use_text=False, dim=dim)
    n_cat, n_brand = max(1, n_items // 500), max(1, n_items // 50)
    cat = rng.integers(1, n_cat + 1, n_items)
    brand = rng.integers(1, n_brand + 1, n_items)
    model = TwoTowerModel(mcfg, n_items, 1, cat, brand, n_cat, n_brand, np.ones(n_items, bool))
    model.eval()
    categories = [f"cat{c}" for c in range(1, n_cat + 1)]
    brands = [f"brand{b}" for b in range(1, n_brand + 1)]
    item_ids = [f"item{i}" for i in range(n_items)]
    rec = TwoTowerRecommender(model, mcfg, item_ids, [""] * n_items, categories, brands)
    t = time.perf_counter()
    knn = ItemKNN().fit(seqs, n_items)
    users = UserKNN().fit(seqs, n_items)
    # The linear model solves a dense n_items^2 system: only small catalogs get it here (a
    # served model has it up to LinearTransitions.max_items).
    lin = LinearTransitions().fit(seqs, n_items) if n_items <= 5000 else None
    nr = min(ranker_users, len(seqs))
    ranker, report = fit_ranker(
        seqs[:nr], n_items, [brands[b - 1] for b in brand], [categories[c - 1] for c in cat],
        (knn, users, lin), train_times=times[:nr],
        config=RankerConfig(max_rounds=100, early_stopping=20, boosters=1,
                            min_queries=min(50, nr // 4), threads=1))
    if ranker is None:
        raise RuntimeError(f"the synthetic ranker did not fit ({report.get('skipped')}); use "
                           "more --users")
    rec.blend = CoocBlend(knn, weight=1.0, inv_temperature=float(model.inv_temperature.item()),
                          user_knn=users, user_share=0.3, kind="product", eps=1e-3, linear=lin,
                          linear_share=0.2 if lin is not None else 0.0, ranker=ranker,
                          ranker_share=0.5)
    log.info("synthetic model: %d items, parts fitted in %.1fs (ranker on %d users)",
             n_items, time.perf_counter() - t, nr)
    return rec


def histories_for(item_ids: list[str], seqs: list[np.ndarray], times: list[np.ndarray]) -> list:
    """Served histories (item ids, event types, epoch seconds) from index sequences."""
    from ecrec_lib.models.api import UserHistory

    ids = np.asarray(item_ids, dtype=object)
    return [UserHistory(list(ids[s]), ["purchase"] * len(s), [int(x) for x in t])
            for s, t in zip(seqs, times, strict=True)]


def dataset_histories(data_dir: str, n_users: int, seed: int) -> list:
    """Served histories of a seeded sample of ``n_users`` real users of an ``interactions.csv``
    dataset (all when ``n_users`` covers them): each user's events but the last, with their
    own event times, as the night before that last event would serve them."""
    from ecrec_lib.datasets import load_csv_dataset
    from ecrec_lib.models.api import UserHistory

    data, _ = load_csv_dataset(data_dir)
    users = np.arange(len(data.sequences))
    if 0 < n_users < len(users):
        users = np.sort(np.random.default_rng(seed).choice(users, n_users, replace=False))
    ids = np.asarray(data.item_ids, dtype=object)
    out = []
    for u in users:
        seq = data.sequences[u][:-1]
        t = data.event_times[u][:-1] if data.event_times is not None else np.zeros(len(seq))
        out.append(UserHistory(list(ids[seq]), ["purchase"] * len(seq), [int(x) for x in t]))
    return out


@contextlib.contextmanager
def timed_parts(rec: Any) -> Iterator[dict[str, float]]:
    """Seconds spent in each served part while the block runs (the wrapped callables are
    restored on exit)."""
    import ecrec_lib.models.ranker as ranker_mod
    import ecrec_lib.models.served as served_mod

    spent: dict[str, float] = defaultdict(float)
    undo: list[Callable[[], None]] = []

    def wrap(owner: Any, name: str, part: str) -> None:
        fn = getattr(owner, name)

        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[part] += time.perf_counter() - t

        setattr(owner, name, timed)
        if isinstance(owner, type(ranker_mod)):
            undo.append(lambda: setattr(owner, name, fn))
        else:
            undo.append(lambda: owner.__dict__.pop(name, None))

    wrap(rec, "encode_users", "towers")
    wrap(served_mod, "top_k_columns", "top_k")
    blend = rec.blend
    if blend is not None:
        for part in (blend.knn, blend.user_knn, blend.linear):
            if part is not None:
                wrap(part, "score", "neighbourhood")
        if blend.ranker is not None and blend.ranker_share > 0:
            wrap(ranker_mod, "candidate_features", "ranker_features")
            for predictor in blend.ranker.predictors:
                wrap(predictor, "predict", "ranker_trees")
    try:
        yield spent
    finally:
        for fn in reversed(undo):
            fn()


def bench_served(rec: Any, histories: list, k: int, threads: int, block: int = 2000) -> dict:
    """Users/s of ``rec.recommend`` over ``histories`` with its time split, and the bare exact
    top-K over the same users' vectors (seen items excluded alike)."""
    import torch

    from ecrec_lib.models.served import excluded_columns
    from ecrec_lib.scoring.topk_faiss import topk_exact

    torch.set_num_threads(threads)
    n = len(histories)
    rec.item_table()  # the cached item tower: built once per model, not per night's block
    # the ranker's trees, compiled or loaded from the machine's cache: once per model too
    t = time.perf_counter()
    predictors = rec.blend.ranker.predictors if rec.blend is not None and rec.blend.ranker else []
    trees = {"prepare_seconds": time.perf_counter() - t,
             "compiled": [p.compiled for p in predictors],
             "trees": [p.booster.num_trees() for p in predictors]}
    t0 = time.perf_counter()
    with timed_parts(rec) as spent:
        for b0 in range(0, n, block):
            rec.recommend(histories[b0 : b0 + block], None, k)
    total = time.perf_counter() - t0
    split = {p: spent.get(p, 0.0) for p in PARTS}
    split["rest"] = total - sum(split.values())

    items = rec.own_items()
    t = time.perf_counter()
    users = rec.encode_users(histories, 0)
    towers = time.perf_counter() - t
    banned = excluded_columns(items, histories, True, None)
    t = time.perf_counter()
    top = topk_exact(users, items.vectors, k, exclude=banned, threads=threads)
    bare = time.perf_counter() - t
    return {"users": n, "items": len(items.item_ids), "k": k, "threads": threads,
            "served_seconds": total, "served_users_per_s": n / total,
            "split_seconds": split, "blend": _blend_summary(rec), "ranker_trees": trees,
            "bare_topk": {"method": top.stats.get("method", "kernel"), "seconds": bare,
                          "users_per_s": n / bare, "towers_seconds": towers}}


def _blend_summary(rec: Any) -> dict:
    b = rec.blend
    if b is None:
        return {"kind": None}
    return {"kind": b.kind, "weight": b.weight, "user_knn": b.user_knn is not None,
            "linear": b.linear is not None, "ranker": b.ranker is not None,
            "ranker_candidates": b.ranker.n_candidates if b.ranker is not None else 0}


def run_served(args: argparse.Namespace) -> int:
    """``jobs.bench_scoring --served``: build or load the model, time it, print and write."""
    from jobs.bench_scoring import load_average

    threads = args.threads or len(os.sched_getaffinity(0))
    load_start = load_average()
    t = time.perf_counter()
    if args.served == "synthetic":
        # Enough training sequences for the neighbourhood parts to cover a large catalog; the
        # first --users of them are served (as nightly, the served users are training users).
        seqs, times = synthetic_sequences(max(args.users, args.items // 2), args.items, args.seed)
        rec = synthetic_recommender(args.items, seqs, times, args.seed, dim=args.dim)
        histories = histories_for(rec.item_ids, seqs[: args.users], times[: args.users])
    else:
        from ecrec_lib.models.artifact import load_recommender_dir

        rec = load_recommender_dir(args.served)
        if args.data:
            histories = dataset_histories(args.data, args.users, args.seed)
        else:
            seqs, times = synthetic_sequences(args.users, len(rec.item_ids), args.seed)
            histories = histories_for(rec.item_ids, seqs, times)
    setup_s = time.perf_counter() - t
    res = bench_served(rec, histories, args.k, threads)
    res.update(model=args.served, setup_seconds=setup_s, load_average_start=load_start,
               load_average_end=load_average())
    print(served_markdown(res))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=2, default=str)
    return 0


def served_markdown(res: dict) -> str:
    total = res["served_seconds"]
    lines = [
        f"Served path ({res['model']}): {res['users']:,} users x {res['items']:,} items, "
        f"K={res['k']}, {res['threads']} threads, blend {res['blend']}; load average "
        f"{res['load_average_start']} -> {res['load_average_end']}.", "",
        "| path | users/s | seconds |", "|---|---:|---:|",
        f"| served recommend (towers + blend + ranker + top-K) | "
        f"{res['served_users_per_s']:,.0f} | {total:.1f} |",
        f"| bare exact top-K ({res['bare_topk']['method']}, vectors given) | "
        f"{res['bare_topk']['users_per_s']:,.0f} | {res['bare_topk']['seconds']:.1f} |",
        "", "| served part | seconds | share |", "|---|---:|---:|"]
    for part, s in res["split_seconds"].items():
        lines.append(f"| {part} | {s:.1f} | {s / total:.0%} |")
    trees = res.get("ranker_trees") or {}
    if trees.get("trees"):
        lines += ["", f"Ranker trees {trees['trees']}, compiled {trees['compiled']}, prepared "
                      f"(compiled or loaded, before the timing) in {trees['prepare_seconds']:.1f} s."]
    return "\n".join(lines)
