"""The popularity baseline: each item's interaction count over the training sequences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def popularity_scores(train_seqs: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """(n_items,) float64 interaction counts over the training sequences."""
    if n_items < 1:
        raise ValueError("n_items must be >= 1")
    flat = (np.concatenate([np.asarray(s, dtype=np.int64) for s in train_seqs])
            if len(train_seqs) else np.zeros(0, dtype=np.int64))
    if len(flat) and (flat.min() < 0 or flat.max() >= n_items):
        raise ValueError(f"training sequences refer to items outside 0..{n_items - 1}")
    return np.bincount(flat, minlength=n_items).astype(np.float64)
