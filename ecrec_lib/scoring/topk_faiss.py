"""Exact top-K through FAISS ``IndexFlatIP``, with the kernel's exclusions and tie order.

FAISS's brute-force search (blocked sgemm + per-query heaps) is faster than the torch kernel in
:mod:`ecrec_lib.scoring.topk` on CPU (see BENCHMARKS.md, "Exact top-K vs FAISS; the served
path"), but it knows nothing of per-user exclusions and breaks score ties arbitrarily. So every
user is first searched for ``k + 1 + slack`` items, its excluded items are dropped, and the rest
are ordered by score descending, then item index ascending -- the kernel's order. FAISS's cost
grows with the search width (its result heaps, not the GEMM, dominate at d=64), so only the users
whose first list could not prove their top-k (too many of their excluded items in it, or a tie
at the k-th place) are searched again, for ``k + (their excluded count) + 1`` items (grouped
into power-of-two widths, so one heavy history does not widen everybody's search).

Why this is exact: every item FAISS did not return scores at most ``m``, the lowest score it did
return for that user. When the k-th kept score is strictly above ``m``, no unreturned item can
reach or tie it, so the kept top-k (ties included) is the true top-k. A row where that fails
(a tie group running past the returned list, or too many returned items excluded) is recomputed
over the whole eligible catalog with a stable sort, as the kernel does for its tie rows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ecrec_lib.scoring.topk import TopKResult, _exclusion_pairs, topk_inner_product

# Users searched per FAISS call: bounds the (rows x width) distance/label buffers.
SEARCH_ROWS = 8192
# ``topk_exact(method="auto")`` takes FAISS while the 1-minute load average per core is at most
# this: idle, FAISS IndexFlatIP was ~1.8x the kernel; with the cores oversubscribed its OpenMP
# threads wait on each other and the kernel (one thread per user block, no barriers) won
# (BENCHMARKS.md, "Exact top-K vs FAISS; the served path").
FAISS_MAX_LOAD_PER_CORE = 1.0


def faiss_available() -> bool:
    """Whether ``faiss`` imports here (``faiss-cpu`` is an optional dependency)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _widths(need: np.ndarray, n_items: int) -> np.ndarray:
    """Search width per user: ``need`` rounded up to a power of two, at most the catalog."""
    w = np.left_shift(1, np.ceil(np.log2(np.maximum(need, 1))).astype(np.int64))
    return np.minimum(w, n_items)


def topk_faiss(
    users: np.ndarray,
    items: np.ndarray,
    k: int,
    *,
    exclude: Sequence[np.ndarray] | None = None,
    item_mask: np.ndarray | None = None,
    threads: int | None = None,
    slack: int = 16,
) -> TopKResult:
    """Exact top-``k`` by inner product through FAISS: the same sets, order and padding as
    :func:`ecrec_lib.scoring.topk.topk_inner_product` (``exclude``/``item_mask`` as there).
    ``slack``: extra places in the first search for excluded items that rank high."""
    import faiss

    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    users = np.ascontiguousarray(users, dtype=np.float32)
    items = np.ascontiguousarray(items, dtype=np.float32)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(
            f"users {users.shape} and items {items.shape} must be 2-D with the same width"
        )
    n_users, dim = users.shape
    elig = None
    pos_of_item = None
    if item_mask is not None:
        item_mask = np.asarray(item_mask, dtype=bool)
        if item_mask.shape != (items.shape[0],):
            raise ValueError(f"item_mask has shape {item_mask.shape}, expected ({items.shape[0]},)")
        elig = np.flatnonzero(item_mask)
        pos_of_item = np.full(items.shape[0], -1, dtype=np.int64)
        pos_of_item[elig] = np.arange(len(elig))
        items = np.ascontiguousarray(items[elig])
    n_items = items.shape[0]
    ex_rows, ex_cols = _exclusion_pairs(exclude, n_users, pos_of_item)
    out_idx = np.full((n_users, k), -1, dtype=np.int64)
    out_scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    stats = {"device": "cpu", "precision": "fp32", "method": "faiss", "tie_fallback_rows": 0,
             "candidates_per_user": 0.0}
    if n_users == 0 or n_items == 0:
        return TopKResult(out_idx, out_scores, stats)

    # Duplicate exclusions must not widen the search twice.
    key = np.unique(ex_rows * (n_items + 1) + ex_cols)
    ex_rows, ex_cols = key // (n_items + 1), key % (n_items + 1)
    n_ex = np.bincount(ex_rows, minlength=n_users)
    width = _widths(k + n_ex + 1, n_items)

    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    saved = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    index = faiss.IndexFlatIP(dim)
    index.add(items)
    redo: list[np.ndarray] = []
    searched = 0
    first = min(n_items, k + 1 + slack)
    try:
        again = []
        for r0 in range(0, n_users, SEARCH_ROWS):
            rows = np.arange(r0, min(n_users, r0 + SEARCH_ROWS))
            dist, lab = index.search(users[rows], first)
            searched += dist.size
            again.append(_keep(rows, dist, lab, key, n_items, k, out_idx, out_scores))
        again_rows = np.concatenate(again)
        wider = width[again_rows] > first  # else the failure was a tie: no width fixes it
        redo.append(again_rows[~wider])
        again_rows = again_rows[wider]
        for w in np.unique(width[again_rows]):
            rows_w = again_rows[width[again_rows] == w]
            for r0 in range(0, len(rows_w), SEARCH_ROWS):
                rows = rows_w[r0 : r0 + SEARCH_ROWS]
                dist, lab = index.search(users[rows], int(w))
                searched += dist.size
                redo.append(_keep(rows, dist, lab, key, n_items, k, out_idx, out_scores))
    finally:
        faiss.omp_set_num_threads(saved)
    stats["second_search_rows"] = int(len(again_rows))

    redo_rows = np.concatenate(redo)
    for r in redo_rows:
        _exact_row(users[r], items, ex_cols[ex_rows == r], k, out_idx[r], out_scores[r])
    stats["tie_fallback_rows"] = len(redo_rows)
    stats["candidates_per_user"] = searched / n_users
    if elig is not None:
        valid = out_idx >= 0
        out_idx[valid] = elig[out_idx[valid]]
    return TopKResult(out_idx, out_scores, stats)


def _keep(rows: np.ndarray, dist: np.ndarray, lab: np.ndarray, key: np.ndarray, n_items: int,
          k: int, out_idx: np.ndarray, out_scores: np.ndarray) -> np.ndarray:
    """Drop excluded items, order by (score desc, index asc), write the first k of each row;
    returns the rows whose result is not provably exact (recomputed by the caller)."""
    w = lab.shape[1]
    low = dist[:, -1].copy()  # FAISS lists are sorted: every unreturned item scores <= this
    gone = lab < 0
    if len(key):  # ``key`` is sorted: a binary search beats np.isin's hashing here
        cand = rows[:, None] * (n_items + 1) + lab
        at = np.minimum(np.searchsorted(key, cand), len(key) - 1)
        gone |= key[at] == cand
    dist = np.where(gone, -np.inf, dist)
    lab = np.where(gone, n_items, lab)  # after every real index in the tie order
    # FAISS's lists come sorted by score: only rows with equal neighbours need the index order;
    # the others just move their excluded entries to the end.
    order = np.argsort(gone, axis=1, kind="stable")[:, :k]
    tied = (dist[:, 1:] == dist[:, :-1]).any(1) if w > 1 else np.zeros(len(rows), bool)
    if tied.any():
        order[tied] = np.lexsort((lab[tied], -dist[tied]), axis=1)[:, :k]
    kd = np.take_along_axis(dist, order, 1)
    kl = np.take_along_axis(lab, order, 1)
    kout = kd.shape[1]
    out_scores[rows, :kout] = kd
    out_idx[rows, :kout] = np.where(np.isfinite(kd), kl, -1)
    if w >= n_items:  # the whole catalog was returned: nothing is unseen
        return np.empty(0, np.int64)
    kth = kd[:, k - 1] if kout == k else np.full(len(rows), -np.inf, np.float32)
    return rows[~(kth > low)]


def _exact_row(u: np.ndarray, items: np.ndarray, banned: np.ndarray, k: int,
               out_i: np.ndarray, out_s: np.ndarray) -> None:
    """The whole eligible catalog for one user, stably sorted (ties -> lower index)."""
    s = items @ u
    s[banned] = -np.inf
    ids = np.argsort(-s, kind="stable")[:k]
    vals = s[ids]
    n = len(vals)
    out_s[:n] = vals
    out_i[:n] = np.where(np.isfinite(vals), ids, -1)
    out_s[n:] = -np.inf
    out_i[n:] = -1


def choose_method(device: str, precision: str, load1: float, cores: int) -> str:
    """The measured rule: ``faiss`` on CPU in fp32 when ``faiss`` imports and the 1-minute
    load average is at most :data:`FAISS_MAX_LOAD_PER_CORE` per core; else ``kernel`` (CUDA,
    bf16, or a busy machine, where FAISS's OpenMP threads degrade)."""
    if device != "cpu" or precision != "fp32" or not faiss_available():
        return "kernel"
    return "faiss" if load1 <= FAISS_MAX_LOAD_PER_CORE * cores else "kernel"


def topk_exact(
    users: np.ndarray,
    items: np.ndarray,
    k: int,
    *,
    exclude: Sequence[np.ndarray] | None = None,
    item_mask: np.ndarray | None = None,
    device: str = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    method: str = "auto",
) -> TopKResult:
    """Exact top-``k``: FAISS or the torch kernel, the same result either way.

    ``method="auto"`` (see :func:`choose_method`) takes FAISS on CPU in fp32 while the machine
    is not oversubscribed, else the kernel; ``faiss`` or ``kernel`` force one.
    """
    from ecrec_lib.scoring.topk import resolve_device

    if method not in {"auto", "faiss", "kernel"}:
        raise ValueError(f"method must be auto, faiss or kernel, got {method!r}")
    if method == "auto":
        method = choose_method(resolve_device(device), precision, os.getloadavg()[0],
                               os.cpu_count() or 1)
    if method == "faiss":
        result = topk_faiss(users, items, k, exclude=exclude, item_mask=item_mask,
                            threads=threads)
    else:
        result = topk_inner_product(users, items, k, exclude=exclude, item_mask=item_mask,
                                    device=device, precision=precision, threads=threads)
    if precision != "fp32":
        return result
    return canonical_scores(users, items, result)


def canonical_scores(users: np.ndarray, items: np.ndarray, result: TopKResult) -> TopKResult:
    """The chosen items rescored by one fixed summation and re-sorted (score desc, index asc).

    FAISS's blocked sgemm and the kernel's matmul round differently in the last bits, and which
    of them runs depends on the machine's load: without this, the same model and inputs could
    publish scores that differ between a night and its re-run."""
    idx = result.indices
    ok = idx >= 0
    u = np.ascontiguousarray(users, dtype=np.float32)
    v = np.ascontiguousarray(items, dtype=np.float32)
    scores = np.full(idx.shape, -np.inf, dtype=np.float32)
    for r0 in range(0, len(idx), SEARCH_ROWS):  # bounds the (rows, k, d) gather
        rows = slice(r0, r0 + SEARCH_ROWS)
        part = np.einsum("rd,rkd->rk", u[rows], v[np.maximum(idx[rows], 0)], optimize=False)
        scores[rows] = np.where(ok[rows], part, -np.inf)
    order = np.lexsort((np.where(ok, idx, np.iinfo(np.int64).max), -scores.astype(np.float64)),
                       axis=1)
    return TopKResult(np.take_along_axis(idx, order, 1), np.take_along_axis(scores, order, 1),
                      result.stats)
