"""Full-ranking top-K metrics: a fast batched implementation and a plain reference one.

Protocol: every item of the catalog is a candidate; the user's history items are removed
from the ranking (except the target itself, which may be a repeat purchase); ties are broken
pessimistically, i.e. the target's 0-based rank is the number of *other* candidates scoring
``>=`` the target, so a constant scorer ranks every target last-but-ties and gets no credit.

The ``reference_*`` functions are deliberately naive (python loops, sorted lists); tests check
the fast path against them on random inputs with ties and history masking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ecrec_lib.evaluation.split import EvalSet

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)
BEYOND_K = 10  # cut-off of the beyond-accuracy metrics (coverage, diversity, novelty, bias)

ScoreFn = Callable[[np.ndarray], Any]


# ---------------------------------------------------------------- shared helpers


def _to_numpy(scores: Any) -> np.ndarray:
    """Accept numpy arrays or torch tensors (any device) and return a float numpy copy: float32
    scores stay float32 (widening cannot change their order, and the float64 copy of a
    validation batch cost more than ranking it), anything else becomes float64."""
    if hasattr(scores, "detach"):  # torch, without importing it here
        scores = scores.detach()
        if str(scores.dtype) not in ("torch.float32", "torch.float64"):
            scores = scores.float()  # half, bfloat16, integers
        scores = scores.cpu().numpy()
    scores = np.asarray(scores)
    dtype = np.float32 if scores.dtype == np.float32 else np.float64
    return np.array(scores, dtype=dtype, copy=True)  # copy: we mask in place


def novelty_weights(item_popularity: np.ndarray) -> np.ndarray:
    """-log2 of each item's add-one-smoothed popularity share (finite for unseen items)."""
    pop = np.asarray(item_popularity, dtype=np.float64)
    return -np.log2((pop + 1.0) / (pop.sum() + len(pop)))


def popularity_percentiles(item_popularity: np.ndarray) -> np.ndarray:
    """Each item's popularity percentile in [0, 1]: 1 = most popular, ties share the mid rank."""
    pop = np.asarray(item_popularity, dtype=np.float64)
    n = len(pop)
    if n < 2:
        return np.full(n, 0.5)
    sorted_pop = np.sort(pop)
    below = np.searchsorted(sorted_pop, pop, side="left")
    equal = np.searchsorted(sorted_pop, pop, side="right") - below
    return (below + 0.5 * (equal - 1)) / (n - 1)


def _category_codes(item_categories: Sequence[Any] | np.ndarray) -> np.ndarray:
    _, codes = np.unique(np.asarray(item_categories, dtype=object).astype(str), return_inverse=True)
    return codes.astype(np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Recall@k, NDCG@k (one relevant item) and MRR@k from 0-based target ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    n = max(len(ranks), 1)
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.sum() / n)
        out[f"ndcg@{k}"] = float((1.0 / np.log2(ranks[hit] + 2.0)).sum() / n)
        out[f"mrr@{k}"] = float((1.0 / (ranks[hit] + 1.0)).sum() / n)
    return out


# ---------------------------------------------------------------- fast path


def mask_history(scores: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray) -> None:
    """Set history items to -inf in place, leaving each row's target untouched."""
    lens = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    if lens.sum() == 0:
        return
    rows = np.repeat(np.arange(len(histories)), lens)
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
    keep = cols != targets[rows]
    scores[rows[keep], cols[keep]] = -np.inf


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based pessimistic rank of each row's target in an already masked score matrix."""
    tgt = scores[np.arange(len(targets)), targets][:, None]
    return (scores >= tgt).sum(axis=1) - 1


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """(b, k) item indices by descending score, ties by ascending item index (deterministic)."""
    b, n = scores.shape
    k = min(k, n)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    kth = part_scores.min(axis=1, keepdims=True)
    # Rows where the k-th score is tied with items outside the partition need a full sort
    # to apply the index tie-break; with real models they are rare.
    ambiguous = (scores >= kth).sum(axis=1) > k
    order = np.lexsort((part, -part_scores))
    out = np.take_along_axis(part, order, axis=1)
    for r in np.flatnonzero(ambiguous):
        out[r] = np.argsort(-scores[r], kind="stable")[:k]
    return out


def _intra_list_diversity(top: np.ndarray, codes: np.ndarray) -> np.ndarray:
    cats = codes[top]  # (b, k)
    k = cats.shape[1]
    if k < 2:
        return np.zeros(len(top))
    same = (cats[:, :, None] == cats[:, None, :]).sum(axis=(1, 2)) - k  # ordered pairs, no diag
    return 1.0 - same / (k * (k - 1))


def evaluate_scores(
    score_fn: ScoreFn,
    eval_set: EvalSet,
    n_items: int,
    ks: Sequence[int] = DEFAULT_KS,
    batch_size: int = 256,
    item_popularity: np.ndarray | None = None,
    item_categories: Sequence[Any] | np.ndarray | None = None,
    beyond_accuracy: bool = True,
) -> dict[str, float]:
    """Full-ranking metrics of ``score_fn`` over ``eval_set``.

    ``score_fn(positions)`` returns (len(positions), n_items) scores (numpy or torch) for the
    eval-set rows at ``positions``. Returns recall/ndcg/mrr@k for each k, coverage@10,
    diversity@10 (when ``item_categories``), novelty@10 and popularity_bias@10 (when
    ``item_popularity``), and ``n_eval``. ``beyond_accuracy=False`` skips the top-10 lists the
    beyond-accuracy figures need (about half the cost of a validation pass) and returns only
    the rank metrics and ``n_eval``.
    """
    if len(eval_set) == 0:
        raise ValueError("eval_set is empty: no user has enough interactions to evaluate")
    if eval_set.targets.min() < 0 or eval_set.targets.max() >= n_items:
        raise ValueError(f"eval_set targets must lie in 0..{n_items - 1}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    codes = _category_codes(item_categories) if item_categories is not None else None
    if codes is not None and len(codes) != n_items:
        raise ValueError(f"item_categories has {len(codes)} entries, expected n_items={n_items}")
    if item_popularity is not None and len(item_popularity) != n_items:
        raise ValueError(
            f"item_popularity has {len(item_popularity)} entries, expected n_items={n_items}"
        )
    nov_w = novelty_weights(item_popularity) if item_popularity is not None else None
    pct = popularity_percentiles(item_popularity) if item_popularity is not None else None

    ranks = np.empty(len(eval_set), dtype=np.int64)
    recommended = np.zeros(n_items, dtype=bool)
    div_sum = nov_sum = bias_sum = 0.0
    for start in range(0, len(eval_set), batch_size):
        pos = np.arange(start, min(start + batch_size, len(eval_set)))
        scores = _to_numpy(score_fn(pos))
        if scores.shape != (len(pos), n_items):
            raise ValueError(
                f"score_fn returned shape {scores.shape}, expected ({len(pos)}, {n_items})"
            )
        if np.isnan(scores).any():
            raise ValueError("score_fn returned NaN scores")
        tgt = eval_set.targets[pos]
        mask_history(scores, [eval_set.histories[i] for i in pos], tgt)
        ranks[pos] = target_ranks(scores, tgt)
        if not beyond_accuracy:
            continue
        top = top_k(scores, BEYOND_K)
        recommended[top.ravel()] = True
        if codes is not None:
            div_sum += float(_intra_list_diversity(top, codes).sum())
        if nov_w is not None and pct is not None:
            nov_sum += float(nov_w[top].mean(axis=1).sum())
            bias_sum += float(pct[top].mean(axis=1).sum())

    n = len(eval_set)
    out = metrics_from_ranks(ranks, ks)
    if not beyond_accuracy:
        out["n_eval"] = float(n)
        return out
    out[f"coverage@{BEYOND_K}"] = float(recommended.sum() / n_items)
    if codes is not None:
        out[f"diversity@{BEYOND_K}"] = div_sum / n
    if nov_w is not None:
        out[f"novelty@{BEYOND_K}"] = nov_sum / n
        out[f"popularity_bias@{BEYOND_K}"] = bias_sum / n
    out["n_eval"] = float(n)
    return out


def evaluate_topk_lists(
    recs: Mapping[Any, Sequence[Any]],
    targets: Mapping[Any, Any],
    ks: Sequence[int] = (5, 10, 20),
) -> dict[str, float]:
    """Recall/NDCG/MRR@k of precomputed top-K lists (e.g. a batch-scoring table).

    ``recs[user]`` is a ranked list of items; ``targets[user]`` the held-out item. Users
    without a list, or whose target is absent or beyond k, count as misses.
    """
    if not targets:
        raise ValueError("targets is empty: nothing to evaluate")
    ranks = []
    for user, target in targets.items():
        lst = list(recs.get(user, ()))
        ranks.append(lst.index(target) if target in lst else math.inf)
    out = metrics_from_ranks(np.asarray(ranks, dtype=np.float64), ks)
    out["n_eval"] = float(len(ranks))
    return out


# ---------------------------------------------------------------- reference path


def reference_rank(scores: Sequence[float], history: Sequence[int], target: int) -> int:
    """Number of non-history items other than the target with score >= the target's."""
    hist = set(int(i) for i in history) - {int(target)}
    t = scores[target]
    return sum(1 for i, s in enumerate(scores) if i != target and i not in hist and s >= t)


def reference_top_k(scores: Sequence[float], history: Sequence[int], target: int, k: int) -> list:
    """The k best items, history (except the target) scored -inf, ties by item index."""
    hist = set(int(i) for i in history) - {int(target)}
    masked = [-math.inf if i in hist else float(s) for i, s in enumerate(scores)]
    return sorted(range(len(masked)), key=lambda i: (-masked[i], i))[:k]


def reference_evaluate(
    score_matrix: np.ndarray,
    eval_set: EvalSet,
    ks: Sequence[int] = DEFAULT_KS,
    item_popularity: Sequence[float] | None = None,
    item_categories: Sequence[Any] | None = None,
) -> dict[str, float]:
    """Plain-python version of :func:`evaluate_scores` over a full (rows, n_items) matrix."""
    n_items = score_matrix.shape[1]
    rows = [[float(x) for x in r] for r in score_matrix]
    out: dict[str, float] = {}
    ranks = [
        reference_rank(rows[r], eval_set.histories[r], eval_set.targets[r])
        for r in range(len(rows))
    ]
    for k in ks:
        out[f"recall@{k}"] = sum(1 for r in ranks if r < k) / len(ranks)
        out[f"ndcg@{k}"] = sum(1 / math.log2(r + 2) for r in ranks if r < k) / len(ranks)
        out[f"mrr@{k}"] = sum(1 / (r + 1) for r in ranks if r < k) / len(ranks)
    tops = [
        reference_top_k(rows[r], eval_set.histories[r], eval_set.targets[r], BEYOND_K)
        for r in range(len(rows))
    ]
    out[f"coverage@{BEYOND_K}"] = len({i for t in tops for i in t}) / n_items
    if item_categories is not None:
        cats = [str(c) for c in item_categories]
        divs = []
        for t in tops:
            pairs = [(a, b) for a in t for b in t if a != b]
            divs.append(sum(1 for a, b in pairs if cats[a] != cats[b]) / len(pairs))
        out[f"diversity@{BEYOND_K}"] = sum(divs) / len(divs)
    if item_popularity is not None:
        pop = [float(p) for p in item_popularity]
        total = sum(pop)
        nov = [-math.log2((p + 1) / (total + n_items)) for p in pop]
        pct = []
        for p in pop:
            below = sum(1 for q in pop if q < p)
            tied_others = sum(1 for q in pop if q == p) - 1
            pct.append((below + 0.5 * tied_others) / (n_items - 1))
        out[f"novelty@{BEYOND_K}"] = sum(sum(nov[i] for i in t) / len(t) for t in tops) / len(tops)
        out[f"popularity_bias@{BEYOND_K}"] = sum(
            sum(pct[i] for i in t) / len(t) for t in tops
        ) / len(tops)
    out["n_eval"] = float(len(rows))
    return out
