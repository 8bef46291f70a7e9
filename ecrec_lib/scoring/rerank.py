"""Re-ranking of a similarity candidate pool: quality/popularity blend, per-category cap,
and the "because you viewed X" reason of every recommendation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BlendWeights:
    """final = similarity + quality x smoothed CVR + popularity x normalized popularity."""

    quality: float = 0.05
    popularity: float = 0.05
    max_per_category: int = 0  # 0: no cap


def normalized_popularity(popularity: np.ndarray) -> np.ndarray:
    """log1p(popularity) scaled to [0, 1] (popularity is heavy-tailed: log keeps the head from
    swamping similarity)."""
    p = np.log1p(np.clip(np.nan_to_num(np.asarray(popularity, np.float64)), 0, None))
    top = p.max() if len(p) else 0.0
    return (p / top if top > 0 else np.zeros_like(p)).astype(np.float32)


def blend_and_cap(
    cand_idx: np.ndarray,
    cand_sim: np.ndarray,
    k: int,
    quality: np.ndarray,
    popularity_norm: np.ndarray,
    category_codes: np.ndarray,
    weights: BlendWeights,
) -> tuple[np.ndarray, np.ndarray]:
    """Per user: blended score over the pool, sorted (score desc, item index asc), then the
    per-category cap; returns (n_users, k) item indices (-1 padded) and final scores.

    When the cap leaves fewer than k items, capped items back-fill the list in blended order so a
    user still gets min(k, pool) items; their score is clamped to the previous one so scores stay
    non-increasing with rank (the published contract).
    """
    n, pool = cand_idx.shape
    valid = cand_idx >= 0
    safe = np.where(valid, cand_idx, 0)
    score = cand_sim.astype(np.float64)
    score = score + weights.quality * quality[safe] + weights.popularity * popularity_norm[safe]
    score = np.where(valid, score, -np.inf)
    # lexsort: last key is primary -> score desc, then item index asc (deterministic ties).
    order = np.lexsort((np.where(valid, cand_idx, np.iinfo(np.int64).max), -score), axis=1)
    s_idx = np.take_along_axis(cand_idx, order, 1)
    s_score = np.take_along_axis(score, order, 1)
    out_idx = np.full((n, k), -1, np.int64)
    out_score = np.full((n, k), -np.inf, np.float64)
    cap = weights.max_per_category
    if cap <= 0:
        kk = min(k, pool)
        out_idx[:, :kk] = s_idx[:, :kk]
        out_score[:, :kk] = s_score[:, :kk]
        out_idx[~np.isfinite(out_score)] = -1
        return out_idx, out_score
    for u in range(n):
        counts: dict[int, int] = {}
        picked: list[int] = []
        skipped: list[int] = []
        for j in range(pool):
            it = s_idx[u, j]
            if it < 0:
                break
            c = int(category_codes[it])
            if counts.get(c, 0) < cap:
                counts[c] = counts.get(c, 0) + 1
                picked.append(j)
                if len(picked) == k:
                    break
            else:
                skipped.append(j)
        picked += skipped[: k - len(picked)]
        if picked:
            cols = np.asarray(picked)
            out_idx[u, : len(cols)] = s_idx[u, cols]
            out_score[u, : len(cols)] = np.minimum.accumulate(s_score[u, cols])
    return out_idx, out_score


def reasons(
    rec_idx: np.ndarray, history_idx: list[np.ndarray], item_emb: np.ndarray
) -> np.ndarray:
    """For each recommended item, the history item (catalog index) whose embedding is most
    similar to it, other than the item itself when the history holds anything else; -1 when the
    user has no history item in the catalog."""
    n, k = rec_idx.shape
    out = np.full((n, k), -1, np.int64)
    for u in range(n):
        h = np.unique(history_idx[u][history_idx[u] >= 0])
        r = rec_idx[u]
        ok = r >= 0
        if len(h) == 0 or not ok.any():
            continue
        sims = item_emb[r[ok]] @ item_emb[h].T  # (k, |h|)
        if len(h) > 1:  # "because you viewed X" should not name the recommended item itself
            sims[r[ok][:, None] == h[None, :]] = -np.inf
        out[u, ok] = h[np.argmax(sims, axis=1)]  # argmax: first (lowest index) on ties
    return out
