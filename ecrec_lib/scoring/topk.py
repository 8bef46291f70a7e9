"""Exact top-K maximum inner product search, chunked, on torch (CPU or CUDA).

The kernel never materializes the full (users x items) score matrix. For a block of users it
walks the items in chunks: one GEMM into a preallocated buffer, then a *group max* over groups
of ``group`` items (a strided, vectorized reduction that is ~6x cheaper than a top-k pass).
After the last chunk only the best groups are kept and their members re-scored exactly in
fp32; the final top-K is taken among them.

Why this is exact: the top-(k+1) items lie in at most k+1 groups, and every one of them has a
group max at least as high as its own score. With approximate scores s~ (|s~ - s| <= eps1) and
exact re-scores s^ (|s^ - s| <= eps2), let T be the (k+1)-th largest approximate group max and
eps = eps1 + eps2. Each of the k+1 best groups holds an item with s^ >= T - eps, so the
(k+1)-th best re-score v >= T - eps; any item with s^ >= v then has s~ >= T - 2 eps. Keeping
every group whose approximate max is >= T - 2 eps therefore keeps every top-(k+1) item.
``eps`` is a rounding-error bound (Higham's gamma_n for fp32; input + output rounding of
bfloat16 for the bf16 candidate pass), scaled by ||u|| * max ||v||.

Ordering is deterministic: score descending, then item index ascending. When the k-th and
(k+1)-th scores of a user tie (the set itself is then ambiguous) the row is recomputed over
the whole catalog and stably sorted, so ties always resolve to the lower item index.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

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
    """(user_row, item_col) pairs to exclude, in the eligible-item index space."""
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


def topk_inner_product(
    users: np.ndarray,
    items: np.ndarray,
    k: int,
    *,
    exclude: Sequence[np.ndarray] | None = None,
    item_mask: np.ndarray | None = None,
    device: str = "auto",
    precision: str = "fp32",
    user_block: int = 512,
    item_chunk: int = 8192,
    group: int = 8,
    threads: int | None = None,
) -> TopKResult:
    """Exact top-``k`` items by inner product for every user row.

    ``exclude[i]``: item indices never recommended to user i (e.g. bought items);
    ``item_mask``: eligible items (e.g. in stock). ``precision``: ``fp32`` or ``bf16`` (bf16
    candidate pass with an error-bounded margin, then exact fp32 re-scoring: same result,
    faster where bf16 GEMM is native; falls back to fp32 when the probe fails) or ``auto``.
    """
    import torch

    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    users = np.ascontiguousarray(users, dtype=np.float32)
    items = np.ascontiguousarray(items, dtype=np.float32)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(
            f"users {users.shape} and items {items.shape} must be 2-D with the same width"
        )
    dev = resolve_device(device)
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2
    if dev == "cpu":
        torch.set_num_threads(max(1, threads))

    n_users, dim = users.shape
    pos_of_item = None
    elig = None
    if item_mask is not None:
        item_mask = np.asarray(item_mask, dtype=bool)
        if item_mask.shape != (items.shape[0],):
            raise ValueError(f"item_mask has shape {item_mask.shape}, expected ({items.shape[0]},)")
        elig = np.flatnonzero(item_mask)
        pos_of_item = np.full(items.shape[0], -1, dtype=np.int64)
        pos_of_item[elig] = np.arange(len(elig))
        items = items[elig]
    n_items = items.shape[0]
    ex_rows, ex_cols = _exclusion_pairs(exclude, n_users, pos_of_item)

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
    # Padded copy with a zero row at index n_items: gathering it for a padding slot is harmless
    # because padding slots are masked to -inf after re-scoring.
    items_pad = torch.cat([items_t, torch.zeros(1, dim, device=dev)], 0)
    gemm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    items_g = items_t.to(gemm_dtype)
    max_item_norm = float(items_t.norm(dim=1).max())
    eps_coeff = (_bf16_eps_coeff(dim) if precision == "bf16" else _fp32_eps_coeff(dim)) + (
        _fp32_eps_coeff(dim)
    )

    group = max(1, min(group, n_items // max(4 * kk, 1) or 1))
    chunk = max(group, (item_chunk // group) * group)
    # Chunk c spans items [c0, c0 + clen); its groups are strided: member t of local group j is
    # item c0 + j + t * (clen // group). The last chunk is padded up to a multiple of `group`.
    bounds = []
    members_list = []
    for c0 in range(0, n_items, chunk):
        clen_real = min(chunk, n_items - c0)
        clen = int(math.ceil(clen_real / group)) * group
        bounds.append((c0, clen_real, clen))
        ng = clen // group
        local = np.arange(ng)[:, None] + np.arange(group)[None, :] * ng
        ids = c0 + local
        ids[local >= clen_real] = n_items  # padding slots -> the zero row
        members_list.append(ids)
    members = torch.from_numpy(np.concatenate(members_list)).to(dev)  # (n_groups, group)
    padded = any(b[2] > b[1] for b in bounds)
    n_groups = members.shape[0]

    max_clen = max(b[2] for b in bounds)
    # Bound the group-max buffer (user_block x n_groups) to ~256 MB.
    user_block = max(1, min(user_block, (64 << 20) // max(n_groups, 1)))
    buf = torch.empty(user_block, max_clen, dtype=gemm_dtype, device=dev)
    gmax = torch.empty(user_block, n_groups, dtype=gemm_dtype, device=dev)
    ex_rows_t = torch.from_numpy(ex_rows).to(dev)
    ex_cols_t = torch.from_numpy(ex_cols).to(dev)
    neg_inf = float("-inf")
    total_cands = 0

    for u0 in range(0, n_users, user_block):
        u1 = min(n_users, u0 + user_block)
        b = u1 - u0
        ub = torch.from_numpy(users[u0:u1]).to(dev)
        ug = ub.to(gemm_dtype)
        sel = (ex_rows_t >= u0) & (ex_rows_t < u1)
        brow, bcol = ex_rows_t[sel] - u0, ex_cols_t[sel]
        g0 = 0
        for c0, clen_real, clen in bounds:
            s = buf[:b, :clen]
            torch.mm(ug, items_g[c0 : c0 + clen_real].T, out=s[:, :clen_real])
            if clen > clen_real:
                s[:, clen_real:] = neg_inf
            if len(bcol):
                m = (bcol >= c0) & (bcol < c0 + clen_real)
                if bool(m.any()):
                    s[brow[m], bcol[m] - c0] = neg_inf
            ng = clen // group
            torch.amax(s.view(b, group, ng), dim=1, out=gmax[:b, g0 : g0 + ng])
            g0 += ng

        gm = gmax[:b].float()
        kg = min(kk, n_groups)
        extra = kg if precision == "bf16" else 16
        tv, cand_groups = torch.topk(gm, min(n_groups, kg + extra), dim=1)
        thr = tv[:, kg - 1]
        eps = eps_coeff * ub.norm(dim=1) * max_item_norm
        lower = torch.where(torch.isfinite(thr), thr - 2 * eps, torch.full_like(thr, neg_inf))
        n_keep = int((tv >= lower[:, None]).sum(1).max())
        if n_keep == tv.shape[1] and n_keep < n_groups:  # margin wider than the first guess
            n_keep = int((gm >= lower[:, None]).sum(1).max())
            cand_groups = torch.topk(gm, n_keep, dim=1).indices
        else:
            n_keep = max(kg, n_keep)
            cand_groups = cand_groups[:, :n_keep]
        cand = members[cand_groups].reshape(b, -1)  # (b, n_keep * group) item ids
        total_cands += cand.shape[1] * b
        # Re-score exactly in fp32 on sub-blocks (the gathered vectors are b x M x D floats).
        rs = torch.empty(cand.shape, dtype=torch.float32, device=dev)
        sub = max(1, (8 << 20) // max(cand.shape[1] * dim, 1))
        for r0 in range(0, b, sub):
            r1 = min(b, r0 + sub)
            vecs = items_pad[cand[r0:r1]]  # (r, M, D)
            rs[r0:r1] = torch.bmm(vecs, ub[r0:r1, :, None]).squeeze(-1)
        if padded:
            rs[cand == n_items] = neg_inf
        if len(bcol):
            keys = brow * (n_items + 1) + bcol
            ckeys = torch.arange(b, device=dev)[:, None] * (n_items + 1) + cand
            rs[torch.isin(ckeys, keys)] = neg_inf
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
            stats["tie_fallback_rows"] += int(tie.sum())

    if elig is not None:
        valid = out_idx >= 0
        out_idx[valid] = elig[out_idx[valid]]
    stats["candidates_per_user"] = total_cands / max(n_users, 1)
    return TopKResult(out_idx, out_scores, stats)


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


def topk_numpy_argpartition(users: np.ndarray, items: np.ndarray, k: int, block: int = 1024):
    """The usual numpy baseline (for benchmarks): chunked matmul + argpartition + sort of k."""
    n = users.shape[0]
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
