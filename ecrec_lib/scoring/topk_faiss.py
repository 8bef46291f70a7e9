"""Exact top-K on CPU: torch's GEMM into cache-sized blocks, FAISS's result heaps in C.

FAISS's own brute-force search (``IndexFlatIP.search``: blocked sgemm, then per-query heaps)
knows nothing of per-user exclusions and breaks score ties arbitrarily, and its OpenMP threads
wait on each other when the cores are shared. Here each block of users runs on its own Python
thread (one intra-op thread for torch, one OpenMP thread for FAISS; both release the GIL):
``torch.mm`` scores a (users x ``item_chunk``) block, the user's excluded items are set to
-inf in it, and FAISS's ``float_minheap_array_t.addn`` keeps every user's best ``k + 1`` in a
heap: one compare per score, in C. Nothing is approximate: every eligible item passes through
the heap. The (k+1)-th place detects a tie at the k-th; such a row is recomputed over the
whole eligible catalog with a stable sort, so ties resolve to the lower item index, as in the
torch kernel (:mod:`ecrec_lib.scoring.topk`), which remains the path on CUDA, in bf16 and
where ``faiss`` is not installed. Measured against bare ``IndexFlatIP.search`` in
BENCHMARKS.md ("Exact top-K vs FAISS; the served path").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ecrec_lib.scoring.topk import (
    TopKResult,
    exclusions_by_chunk,
    prepare_inputs,
    topk_inner_product,
)

# Rows rescored per block by canonical_scores: bounds its (rows, k, d) gather.
RESCORE_ROWS = 8192


def faiss_available() -> bool:
    """Whether ``faiss`` imports here (``faiss-cpu`` is an optional dependency)."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def choose_method(device: str, precision: str) -> str:
    """``faiss`` (:func:`topk_faiss`) on CPU in fp32 when ``faiss`` imports, else ``kernel``
    (CUDA, bf16, no FAISS). The FAISS-heap path measured 1.4x the kernel both idle (where it
    ran at parity with bare FAISS) and with the cores oversubscribed (where it ran at 2.2x bare
    FAISS; BENCHMARKS.md), so the machine's load does not pick the path."""
    if device != "cpu" or precision != "fp32" or not faiss_available():
        return "kernel"
    return "faiss"


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

    ``method="auto"`` (see :func:`choose_method`) takes the FAISS-heap path on CPU in fp32 when
    ``faiss`` is installed, else the kernel; ``faiss`` or ``kernel`` force one.
    """
    from ecrec_lib.scoring.topk import resolve_device

    if method not in {"auto", "faiss", "kernel"}:
        raise ValueError(f"method must be auto, faiss or kernel, got {method!r}")
    if method == "auto":
        method = choose_method(resolve_device(device), precision)
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

    The two paths' GEMMs run on different block shapes and may round differently in the last
    bits, and which of them runs depends on the machine (a GPU, ``faiss`` installed): without
    this, the same model and inputs could publish different scores on two machines."""
    idx = result.indices
    ok = idx >= 0
    u = np.ascontiguousarray(users, dtype=np.float32)
    v = np.ascontiguousarray(items, dtype=np.float32)
    scores = np.full(idx.shape, -np.inf, dtype=np.float32)
    for r0 in range(0, len(idx), RESCORE_ROWS):  # bounds the (rows, k, d) gather
        rows = slice(r0, r0 + RESCORE_ROWS)
        part = np.einsum("rd,rkd->rk", u[rows], v[np.maximum(idx[rows], 0)], optimize=False)
        scores[rows] = np.where(ok[rows], part, -np.inf)
    order = np.lexsort((np.where(ok, idx, np.iinfo(np.int64).max), -scores.astype(np.float64)),
                       axis=1)
    return TopKResult(np.take_along_axis(idx, order, 1), np.take_along_axis(scores, order, 1),
                      result.stats)


def topk_faiss(
    users: np.ndarray,
    items: np.ndarray,
    k: int,
    *,
    exclude: Sequence[np.ndarray] | None = None,
    item_mask: np.ndarray | None = None,
    threads: int | None = None,
    user_block: int = 1024,
    item_chunk: int = 1024,
) -> TopKResult:
    """Exact top-``k`` by inner product (see the module docstring): the same sets, order and
    padding as :func:`ecrec_lib.scoring.topk.topk_inner_product` (``exclude``/``item_mask`` as
    there). ``user_block`` x ``item_chunk`` float32 scores per thread stay in cache."""
    import faiss
    import torch

    users, items, elig, ex_rows, ex_cols = prepare_inputs(users, items, k, exclude, item_mask)
    n_users = users.shape[0]
    n_items = items.shape[0]
    out_idx = np.full((n_users, k), -1, dtype=np.int64)
    out_scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    stats = {"device": "cpu", "precision": "fp32", "method": "faiss", "tie_fallback_rows": 0,
             "candidates_per_user": float(n_items)}
    if n_users == 0 or n_items == 0:
        return TopKResult(out_idx, out_scores, stats)
    kk = min(k + 1, n_items)
    dist = np.empty((n_users, kk), np.float32)
    lab = np.empty((n_users, kk), np.int64)
    u_t = torch.from_numpy(users)
    v_t = torch.from_numpy(items)
    chunk = min(item_chunk, n_items)
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    user_block = max(1, min(user_block, -(-n_users // max(threads, 1))))

    def run_block(u0: int) -> None:
        u1 = min(n_users, u0 + user_block)
        b = u1 - u0
        heaps = faiss.float_minheap_array_t()
        heaps.nh, heaps.k = b, kk
        heaps.val = faiss.swig_ptr(dist[u0:u1])
        heaps.ids = faiss.swig_ptr(lab[u0:u1])
        heaps.heapify()
        flat = torch.empty(b * chunk)
        lo, hi = np.searchsorted(ex_rows, [u0, u1])
        brow, bcol, bounds = exclusions_by_chunk(torch.from_numpy(ex_rows[lo:hi] - u0),
                                                 torch.from_numpy(ex_cols[lo:hi]), n_items, chunk)
        for j, c0 in enumerate(range(0, n_items, chunk)):
            c1 = min(n_items, c0 + chunk)
            s = flat[: b * (c1 - c0)].view(b, c1 - c0)
            torch.mm(u_t[u0:u1], v_t[c0:c1].T, out=s)
            e0, e1 = bounds[j], bounds[j + 1]
            if e1 > e0:
                s[brow[e0:e1], bcol[e0:e1] - c0] = float("-inf")
            heaps.addn(c1 - c0, faiss.swig_ptr(s.numpy()), c0, 0, b)
        heaps.reorder()

    saved_faiss = faiss.omp_get_max_threads()
    saved_torch = torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    try:
        starts = range(0, n_users, user_block)
        if threads > 1 and len(starts) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(run_block, starts))
        else:
            for u0 in starts:
                run_block(u0)
    finally:
        faiss.omp_set_num_threads(saved_faiss)
        torch.set_num_threads(saved_torch)

    # Empty heap slots hold -FLT_MAX and id -1; rows come sorted by score, ties in heap order.
    dist[lab < 0] = -np.inf
    tied = (dist[:, 1:] == dist[:, :-1]).any(1) if kk > 1 else np.zeros(n_users, bool)
    if tied.any():
        o = np.lexsort((np.where(lab[tied] < 0, n_items, lab[tied]), -dist[tied]), axis=1)
        dist[tied] = np.take_along_axis(dist[tied], o, 1)
        lab[tied] = np.take_along_axis(lab[tied], o, 1)
    kout = min(k, kk)
    out_scores[:, :kout] = dist[:, :kout]
    out_idx[:, :kout] = np.where(np.isfinite(dist[:, :kout]), lab[:, :kout], -1)
    redo = np.empty(0, np.int64)
    if kk > k:
        redo = np.flatnonzero((dist[:, k - 1] == dist[:, k]) & np.isfinite(dist[:, k]))
    for r in redo:
        lo, hi = np.searchsorted(ex_rows, [r, r + 1])
        _exact_row(users[r], items, ex_cols[lo:hi], k, out_idx[r], out_scores[r])
    stats["tie_fallback_rows"] = len(redo)
    if elig is not None:
        valid = out_idx >= 0
        out_idx[valid] = elig[out_idx[valid]]
    return TopKResult(out_idx, out_scores, stats)


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
