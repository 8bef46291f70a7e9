"""Non-neural baselines for the quality benchmark: popularity and co-occurrence item-kNN."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def popularity_scores(train_seqs: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """(n_items,) float64 interaction counts over the training sequences."""
    if n_items < 1:
        raise ValueError("n_items must be >= 1")
    flat = _concat(train_seqs)
    if len(flat) and (flat.min() < 0 or flat.max() >= n_items):
        raise ValueError(f"training sequences refer to items outside 0..{n_items - 1}")
    return np.bincount(flat, minlength=n_items).astype(np.float64)


def _concat(seqs: Sequence[np.ndarray]) -> np.ndarray:
    if not len(seqs):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])


@dataclass
class ItemKNN:
    """Item-to-item co-occurrence kNN over ordered sequences.

    Two items co-occur when they are at most ``window`` positions apart in a user's sequence;
    each pair adds ``1 / distance``, and pairs in reverse order (j before i) count
    ``backward_weight`` times. Similarities are normalized by ``cnt_i**alpha * cnt_j**(1-alpha)``
    (alpha = 0.5 is cosine). A user scores item j as the sum over history items i of
    ``decay**(age of i) * sim(i, j)``, over the last ``max_history`` items, plus a tiny
    popularity term so that users without co-occurrences still get a ranking.
    """

    window: int = 3
    backward_weight: float = 0.5
    alpha: float = 0.5
    decay: float = 0.6
    max_history: int = 20

    def fit(self, train_seqs: Sequence[np.ndarray], n_items: int) -> ItemKNN:
        if self.window < 1:
            raise ValueError("window must be >= 1")
        self.n_items = n_items
        pop = popularity_scores(train_seqs, n_items)
        self.popularity = pop
        flat = _concat(train_seqs)
        owner = np.repeat(np.arange(len(train_seqs)), [len(s) for s in train_seqs])
        rows, cols, vals = [], [], []
        for d in range(1, self.window + 1):
            same = owner[:-d] == owner[d:]
            rows.append(flat[:-d][same])
            cols.append(flat[d:][same])
            vals.append(np.full(int(same.sum()), 1.0 / d))
        r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        v = np.concatenate(vals) if vals else np.zeros(0)
        fwd = sp.coo_matrix((v, (r, c)), shape=(n_items, n_items)).tocsr()
        sim = (fwd + self.backward_weight * fwd.T).tocsr()
        sim.setdiag(0.0)
        sim.eliminate_zeros()
        cnt = np.maximum(pop, 1.0)
        left = sp.diags(cnt**-self.alpha)
        right = sp.diags(cnt ** -(1.0 - self.alpha))
        self.sim = (left @ sim @ right).tocsr().astype(np.float32)
        self._prior = (1e-6 * pop / max(pop.max(), 1.0)).astype(np.float32)
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(len(histories), n_items) float32 scores."""
        if not hasattr(self, "sim"):
            raise RuntimeError("ItemKNN.score called before fit")
        if not len(histories):
            return np.zeros((0, self.n_items), dtype=np.float32)
        rows, cols, vals = [], [], []
        for u, h in enumerate(histories):
            h = np.asarray(h, dtype=np.int64)[-self.max_history :]
            age = np.arange(len(h))[::-1]
            rows.append(np.full(len(h), u))
            cols.append(h)
            vals.append(self.decay**age)
        hmat = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(len(histories), self.n_items),
            dtype=np.float32,
        )
        return np.asarray((hmat @ self.sim).todense()) + self._prior[None, :]
