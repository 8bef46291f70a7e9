"""Exact top-K maximum inner product search, chunked, on torch (CPU or CUDA).

The kernel never materializes the full (users x items) score matrix. For a block of users it
walks the items in chunks: GEMMs into a preallocated buffer, then a *group max* over strided
groups of ``group`` items (a vectorized reduction, much cheaper than a top-k pass over every
score). Each user carries a threshold that can only rise and never exceeds their final
(k+1)-th score; only members of groups whose max reaches it are read, and only those reaching
it are merged into the running top-(k+1) (:func:`_threshold_topk` has the argument). After the
first chunks that is a few items per user per chunk. Scores are the GEMM's own fp32 values.

``precision="bf16"`` runs the GEMM in bfloat16 instead: the threshold test gets a margin of
``2 eps`` (|s~ - s| <= eps1 for bf16 inputs/output with fp32 accumulation -- checked at run
time by a probe -- plus eps2 for the fp32 re-score, scaled by ||u|| max ||v||) and every kept
item is re-scored exactly in fp32. Worth it only where bf16 GEMM is much faster than fp32
(GPUs); on a CPU the re-scoring gathers cost what the GEMM saves (BENCHMARKS.md).

Ordering is deterministic: score descending, then item index ascending. When the k-th and
(k+1)-th scores of a user tie (the set itself is then ambiguous) the row is recomputed over
the whole catalog and stably sorted, so ties always resolve to the lower item index.
On CPU, user blocks run on a thread pool with one intra-op thread each.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Columns per fp32 GEMM call: a (users x GEMM_COLS) output stays in cache; one GEMM over a
# whole 32k-item chunk ran at about half the rate on a 2-core EPYC.
GEMM_COLS = 2048
FP32_UNIT = 2.0**-24  # unit roundoff of float32
BF16_UNIT = 2.0**-8  # unit roundoff of bfloat16 (8-bit significand)


@dataclass(frozen=True)
class TopKResult:
    """Row i: the best items of user i. Missing entries (fewer eligible items than k) hold
    index -1 and score -inf."""

    indices: np.ndarray  # (n_users, k) int64, into the item matrix given to the kernel
    scores: np.ndarray  # (n_users, k) float32, exact fp32 inner products
    stats: dict

    def valid(self) -> np.ndarray:
        return self.indices >= 0


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda requested but torch sees no CUDA GPU; use --device cpu")
    return device


def _fp32_eps_coeff(dim: int) -> float:
    # gamma_n = n u / (1 - n u) bounds |fl(u.v) - u.v| / (|u|.|v|) for any summation order.
    n = dim + 2
    return n * FP32_UNIT / (1 - n * FP32_UNIT)


def _bf16_eps_coeff(dim: int) -> float:
    # inputs rounded to bf16 (relative 2^-8 each), fp32 accumulation, output rounded to bf16.
    return 2 * BF16_UNIT + BF16_UNIT**2 + BF16_UNIT * (1 + 2**-6) + _fp32_eps_coeff(dim)


def bf16_gemm_is_safe(device: str, dim: int, rows: int = 256, cols: int = 2048) -> bool:
    """Probe that bf16 GEMM on this device stays within the error bound the kernel assumes
    (fp32 accumulation). A kernel that accumulated in bf16 would break it by ~D x; then the
    caller falls back to fp32."""
    import torch

    gen = torch.Generator().manual_seed(1234)
    a = torch.randn(rows, dim, generator=gen).bfloat16()
    b = torch.randn(cols, dim, generator=gen).bfloat16()
    try:
        got = torch.mm(a.to(device), b.to(device).T).float().cpu().double()
    except RuntimeError:  # bf16 GEMM not supported on this device
        return False
    exact = a.double() @ b.double().T
    bound = (BF16_UNIT * (1 + 2**-6) + _fp32_eps_coeff(dim)) * (
        a.double().abs() @ b.double().abs().T
    )
    return bool(((got - exact).abs() <= bound).all())


def _exclusion_pairs(
    exclude: Sequence[np.ndarray] | None, n_users: int, pos_of_item: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(user_row, item_col) pairs to exclude, in the eligible-item index space, rows
    ascending (so a block of users finds its pairs by binary search)."""
    if exclude is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if len(exclude) != n_users:
        raise ValueError(f"exclude has {len(exclude)} rows for {n_users} users")
    lens = np.fromiter((len(e) for e in exclude), dtype=np.int64, count=n_users)
    rows = np.repeat(np.arange(n_users, dtype=np.int64), lens)
    cols = (
        np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude])
        if lens.sum()
        else np.empty(0, np.int64)
    )
    if pos_of_item is not None and len(cols):
        cols = pos_of_item[cols]
        keep = cols >= 0  # excluded items that are not eligible anyway
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def prepare_inputs(
    users: np.ndarray, items: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None,
    item_mask: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """Checked float32 ``users`` and eligible ``items``, the eligible items' original indices
    (None without a mask) and the (row, eligible column) exclusion pairs: the inputs every
    exact top-K path starts from. Bad shapes or ``k`` raise ``ValueError`` naming them."""
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    users = np.ascontiguousarray(users, dtype=np.float32)
    items = np.ascontiguousarray(items, dtype=np.float32)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(
            f"users {users.shape} and items {items.shape} must be 2-D with the same width"
        )
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
    ex_rows, ex_cols = _exclusion_pairs(exclude, users.shape[0], pos_of_item)
    return users, items, elig, ex_rows, ex_cols


def topk_inner_product(
    users: np.ndarray,
    items: np.ndarray,
    k: int,
    *,
    exclude: Sequence[np.ndarray] | None = None,
    item_mask: np.ndarray | None = None,
    device: str = "auto",
    precision: str = "fp32",
    user_block: int = 256,
    item_chunk: int = 8192,
    group: int = 16,
    threads: int | None = None,
) -> TopKResult:
    """Exact top-``k`` items by inner product for every user row.

    ``exclude[i]``: item indices never recommended to user i (e.g. bought items);
    ``item_mask``: eligible items (e.g. in stock). ``precision``: ``fp32`` or ``bf16`` (bf16
    candidate pass with an error-bounded margin, then exact fp32 re-scoring: same result,
    worth it where bf16 GEMM is much faster than fp32, i.e. GPUs; falls back to fp32 when the
    probe fails) or ``auto``.
    """
    import torch

    users, items, elig, ex_rows, ex_cols = prepare_inputs(users, items, k, exclude, item_mask)
    dev = resolve_device(device)
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    if dev == "cpu" and threads == 1:
        torch.set_num_threads(1)
    n_users, dim = users.shape
    n_items = items.shape[0]

    out_idx = np.full((n_users, k), -1, dtype=np.int64)
    out_scores = np.full((n_users, k), -np.inf, dtype=np.float32)
    stats = {"device": dev, "precision": "fp32", "tie_fallback_rows": 0, "candidates_per_user": 0.0}
    if n_users == 0 or n_items == 0:
        return TopKResult(out_idx, out_scores, stats)

    if precision == "auto":
        precision = "bf16" if bf16_gemm_is_safe(dev, dim) else "fp32"
    elif precision == "bf16" and not bf16_gemm_is_safe(dev, dim):
        log.warning("bf16 GEMM on %s fails the accumulation probe; using fp32", dev)
        precision = "fp32"
    if precision not in {"fp32", "bf16"}:
        raise ValueError(f"precision must be fp32, bf16 or auto, got {precision!r}")
    stats["precision"] = precision
    kk = min(k + 1, n_items)  # one extra to detect ties at the k-th place

    items_t = torch.from_numpy(items).to(dev)
    gemm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    items_g = items_t.to(gemm_dtype)
    eps_coeff = None
    if precision == "bf16":
        eps_coeff = (_bf16_eps_coeff(dim) + _fp32_eps_coeff(dim)) * float(
            items_t.norm(dim=1).max())
    group = max(1, min(group, n_items // max(4 * kk, 1) or 1))
    chunk = max(group, min(item_chunk, n_items))
    chunk = -(-chunk // group) * group
    ex_rows_t = torch.from_numpy(ex_rows).to(dev)
    ex_cols_t = torch.from_numpy(ex_cols).to(dev)

    def run_block(u0: int) -> tuple[int, int]:
        """Top-K of users [u0, u0 + user_block); returns (candidates, tie rows)."""
        ties = 0
        u1 = min(n_users, u0 + user_block)
        b = u1 - u0
        ub = torch.from_numpy(users[u0:u1]).to(dev)
        lo, hi = np.searchsorted(ex_rows, [u0, u1])
        brow, bcol = ex_rows_t[lo:hi] - u0, ex_cols_t[lo:hi]
        eps = None if eps_coeff is None else eps_coeff * ub.norm(dim=1)
        buf = torch.empty(b * chunk, dtype=gemm_dtype, device=dev)
        cand, rs, cands = _threshold_topk(ub, items_g, items_t, kk, chunk, group, brow, bcol,
                                          buf, eps)
        # The kk best, then a deterministic order among them: score desc, item index asc.
        vals, pos = torch.topk(rs, kk, dim=1)
        ids = torch.gather(cand, 1, pos)
        ids, order = torch.sort(ids, dim=1)
        vals = torch.gather(vals, 1, order)
        vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
        ids = torch.gather(ids, 1, order)
        vals_np = vals.cpu().numpy()
        ids_np = ids.cpu().numpy()
        kout = min(k, kk)
        ids_np = np.where(np.isfinite(vals_np), ids_np, -1)
        out_idx[u0:u1, :kout] = ids_np[:, :kout]
        out_scores[u0:u1, :kout] = vals_np[:, :kout]
        if kk > k:
            tie = (vals_np[:, k - 1] == vals_np[:, k]) & np.isfinite(vals_np[:, k])
            for r in np.flatnonzero(tie):
                _exact_row(ub[r], items_t, r, brow, bcol, k, out_idx[u0 + r], out_scores[u0 + r])
            ties += int(tie.sum())
        return cands, ties

    starts = range(0, n_users, user_block)
    if dev == "cpu" and threads > 1 and len(starts) > 1:
        # One block per Python thread, one intra-op thread each: torch ops release the GIL, and
        # this avoids OpenMP barriers between the many small per-chunk ops (which spin badly
        # when the cores are shared with other processes).
        from concurrent.futures import ThreadPoolExecutor

        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                parts = list(pool.map(run_block, starts))
        finally:
            torch.set_num_threads(saved)
    else:
        parts = [run_block(u0) for u0 in starts]
    total_cands = sum(p[0] for p in parts)
    stats["tie_fallback_rows"] = sum(p[1] for p in parts)

    if elig is not None:
        valid = out_idx >= 0
        out_idx[valid] = elig[out_idx[valid]]
    stats["candidates_per_user"] = total_cands / max(n_users, 1)
    return TopKResult(out_idx, out_scores, stats)


def exclusions_by_chunk(brow, bcol, n_items: int, chunk: int):  # noqa: ANN001, ANN201 - tensors
    """One user block's exclusion pairs (torch tensors) sorted by item, and the bounds of each
    ``chunk``-item slice in them: chunk j's pairs are ``[bounds[j], bounds[j + 1])``, so a
    chunk masks its own pairs without comparing every pair of the block."""
    import torch

    order = torch.argsort(bcol, stable=True)
    starts = torch.arange(0, n_items + chunk, chunk, device=bcol.device)
    bcol = bcol[order]
    return brow[order], bcol, torch.searchsorted(bcol, starts).tolist()


def _threshold_topk(ub, items_g, items_t, kk: int, chunk: int, group: int, brow, bcol, buf,
                    eps):
    """The top-``kk`` scores of one user block and their item ids (unordered; a row with
    fewer eligible items is padded with -inf / -1), and how many scores were merged.

    The items stream through in chunks: GEMMs of ``GEMM_COLS`` columns into a chunk buffer,
    then a vectorized max over strided groups of ``group`` items. Each user keeps a threshold
    ``tau`` that never exceeds the final kk-th score: first the kk-th best group max of the
    first chunk (kk distinct items reach it), then the kk-th best score kept so far. An item
    below ``tau`` cannot be in the top-kk, so only the members of groups whose max reaches
    ``tau`` are read, and only those reaching it are merged: a few hundred per user instead of
    a top-k pass over every score. Items tied with ``tau`` are kept, so the caller still sees a
    tie at the k-th place.

    fp32 (``eps`` None): scores are the GEMM's own values. bf16: ``eps[i]`` bounds the error of
    user i's bf16 score plus its fp32 re-score; a kept item is re-scored in fp32, and the test
    becomes ``s~ >= tau - 2 eps``. Every item of the final top-kk passes it: its re-score is at
    least the final kk-th one ``T``, so ``s~ >= T - eps``, and ``tau <= T + eps`` holds for
    both sources of ``tau`` (kk items with ``s~ >= g`` have re-scores ``>= g - eps``)."""
    import torch

    dev = ub.device
    b = ub.shape[0]
    n_items = items_t.shape[0]
    neg_inf = float("-inf")
    ug = ub.to(items_g.dtype)
    offs = torch.arange(group, device=dev)
    run_v = torch.full((b, 0), neg_inf, device=dev)
    run_i = torch.full((b, 0), -1, dtype=torch.int64, device=dev)
    tau = None
    margin = None if eps is None else 2 * eps
    merged = 0
    brow, bcol, bounds = exclusions_by_chunk(brow, bcol, n_items, chunk)
    for j, c0 in enumerate(range(0, n_items, chunk)):
        clen = min(chunk, n_items - c0)
        cpad = -(-clen // group) * group
        s = buf[: b * cpad].view(b, cpad)
        for j0 in range(0, clen, GEMM_COLS):
            j1 = min(clen, j0 + GEMM_COLS)
            torch.mm(ug, items_g[c0 + j0 : c0 + j1].T, out=s[:, j0:j1])
        if cpad > clen:
            s[:, clen:] = neg_inf
        e0, e1 = bounds[j], bounds[j + 1]
        if e1 > e0:
            s[brow[e0:e1], bcol[e0:e1] - c0] = neg_inf
        ng = cpad // group
        gm = torch.amax(s.view(b, group, ng), dim=1).float()
        if tau is None:
            tau = (torch.topk(gm, kk, dim=1, sorted=False).values.amin(1) if ng >= kk
                   else torch.full((b,), neg_inf, device=dev))
        low = tau if margin is None else tau - margin
        # Groups reaching the bar, row-major, then their members reaching it (rows stay sorted).
        f = torch.nonzero((gm >= low[:, None]).view(-1)).squeeze(1)
        r = torch.div(f, ng, rounding_mode="floor")
        pos = ((r * cpad + (f - r * ng))[:, None] + offs * ng).view(-1)
        vals = torch.take(s, pos).float()
        # (excluded and padding slots hold -inf: never kept, so never re-scored back to life)
        v2 = vals.view(-1, group)
        keep = torch.nonzero(((v2 >= low[r][:, None]) & (v2 > neg_inf)).view(-1)).squeeze(1)
        vals, pos = vals[keep], pos[keep]
        rk = torch.div(pos, cpad, rounding_mode="floor")
        ids = pos - rk * cpad + c0
        if margin is not None:  # exact fp32 re-score of the few kept items
            vals = (items_t[ids] * ub[rk]).sum(1)
        cnt = torch.bincount(rk, minlength=b)
        width = int(cnt.max()) if len(rk) else 0
        if width == 0:
            continue
        merged += len(rk)
        rank = torch.arange(len(rk), device=dev) - (torch.cumsum(cnt, 0) - cnt)[rk]
        at = rk * width + rank
        new_v = torch.full((b * width,), neg_inf, device=dev)
        new_i = torch.full((b * width,), -1, dtype=torch.int64, device=dev)
        new_v[at] = vals
        new_i[at] = ids
        run_v = torch.cat([run_v, new_v.view(b, width)], 1)
        run_i = torch.cat([run_i, new_i.view(b, width)], 1)
        if run_v.shape[1] > kk:
            run_v, p = torch.topk(run_v, kk, dim=1, sorted=False)
            run_i = torch.gather(run_i, 1, p)
        if run_v.shape[1] == kk:
            tau = torch.maximum(tau, run_v.amin(1))
    if run_v.shape[1] < kk:
        pad = kk - run_v.shape[1]
        run_v = torch.cat([run_v, torch.full((b, pad), neg_inf, device=dev)], 1)
        run_i = torch.cat([run_i, torch.full((b, pad), -1, dtype=torch.int64, device=dev)], 1)
    return run_i, run_v, merged


def _exact_row(u, items_t, r: int, brow, bcol, k: int, out_i: np.ndarray, out_s: np.ndarray):
    """Tie at the k-th place: score the whole catalog for this user and sort stably."""
    import torch

    s = (items_t @ u).clone()
    s[bcol[brow == r]] = float("-inf")
    vals, ids = torch.sort(s, descending=True, stable=True)
    vals, ids = vals[:k].cpu().numpy(), ids[:k].cpu().numpy()
    n = len(vals)
    out_s[:n] = vals
    out_i[:n] = np.where(np.isfinite(vals), ids, -1)


def topk_reference(
    users: np.ndarray,
    items: np.ndarray,
    k: int,
    *,
    exclude: Sequence[np.ndarray] | None = None,
    item_mask: np.ndarray | None = None,
) -> TopKResult:
    """Plain numpy reference: full score matrix, masks, stable sort (ties -> lower index)."""
    s = np.asarray(users, np.float32) @ np.asarray(items, np.float32).T
    if item_mask is not None:
        s[:, ~np.asarray(item_mask, bool)] = -np.inf
    if exclude is not None:
        for i, e in enumerate(exclude):
            s[i, np.asarray(e, np.int64)] = -np.inf
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(s, order, 1).astype(np.float32)
    idx = np.where(np.isfinite(scores), order, -1)
    if idx.shape[1] < k:
        pad = k - idx.shape[1]
        idx = np.pad(idx, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return TopKResult(idx.astype(np.int64), scores, {"device": "numpy"})


def topk_numpy_argpartition(users: np.ndarray, items: np.ndarray, k: int, block: int = 0):
    """The usual numpy baseline (for benchmarks): chunked matmul + argpartition + sort of k.
    ``block`` users at a time (default: ~128M scores, i.e. 0.5 GB of scores per block)."""
    n = users.shape[0]
    block = block or max(1, min(1024, (1 << 27) // max(items.shape[0], 1)))
    idx = np.empty((n, k), np.int64)
    sc = np.empty((n, k), np.float32)
    for u0 in range(0, n, block):
        s = users[u0 : u0 + block] @ items.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(s, part, 1)
        o = np.argsort(-ps, axis=1, kind="stable")
        idx[u0 : u0 + block] = np.take_along_axis(part, o, 1)
        sc[u0 : u0 + block] = np.take_along_axis(ps, o, 1)
    return idx, sc
