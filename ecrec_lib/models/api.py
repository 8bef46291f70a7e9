"""The contract between training (which produces a model) and its consumers
(the promotion gate, batch scoring, ad-hoc look-ups, the quality benchmark).

A trained model is logged to MLflow and loaded back with
``ecrec_lib.models.artifact.load_recommender(model_uri)``, which returns an object
satisfying :class:`Recommender`. Every vector it returns is float32 and L2-normalized,
so a dot product is the cosine similarity used for ranking.

:meth:`Recommender.recommend` is the served ranking, the one every consumer calls: batch
scoring writes its lists, the promotion gate and the quality benchmark measure them (quality
and latency), so what is judged is exactly what is served (for the two-tower model: the towers,
the neighbourhood parts and the learned ranker, :mod:`ecrec_lib.models.blend`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class UserHistory:
    """One user's recent item events, oldest first (from features/user_sequences)."""

    item_ids: Sequence[str]
    event_types: Sequence[str]
    event_times: Sequence[int]  # epoch seconds


@dataclass(frozen=True)
class ItemSet:
    """The items a recommendation ranks (e.g. a catalog snapshot): row ``i`` of ``vectors``
    (``encode_items``) is ``item_ids[i]``; ``allowed`` False: never recommended (out of stock)."""

    item_ids: np.ndarray  # str
    vectors: np.ndarray  # float32 (n, dim), L2-normalized
    allowed: np.ndarray | None = None  # bool (n,); None: every item

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.item_ids):
            raise ValueError(f"ItemSet needs one vector per item id: {len(self.item_ids)} ids, "
                             f"vectors of shape {self.vectors.shape}")
        if self.allowed is not None and len(self.allowed) != len(self.item_ids):
            raise ValueError(f"ItemSet.allowed needs one flag per item id ({len(self.item_ids)}), "
                             f"got {len(self.allowed)}")


@runtime_checkable
class Recommender(Protocol):
    """What every consumer of a trained two-tower model may rely on."""

    @property
    def item_ids(self) -> list[str]:
        """Items known at training time, in the row order of ``item_matrix()``."""

    def item_matrix(self) -> np.ndarray:
        """(n_known_items, dim) embeddings of the training catalog (text + ID)."""

    def encode_items(self, catalog: pd.DataFrame) -> np.ndarray:
        """(len(catalog), dim) embeddings for any catalog rows (clean catalog columns).

        Known items use text + learned ID embeddings; items unseen in training get the
        text-only embedding in the same space (cold start).
        """

    def encode_users(self, histories: Sequence[UserHistory], now_ts: int) -> np.ndarray:
        """(len(histories), dim) user vectors; ``now_ts`` anchors the recency features."""

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """(len(queries), dim) query vectors in the item space (search box)."""

    def recommend(
        self,
        histories: Sequence[UserHistory],
        now_ts: int | None,
        k: int,
        exclude_seen: bool = True,
        items: ItemSet | None = None,
        exclude: Sequence[Sequence[str]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The served top-``k`` of each history at time ``now_ts`` (None: each history's last
        event): (ids (rows, k) object, scores (rows, k) float64), best first; a row with fewer
        than ``k`` rankable items is padded with None / -inf. ``items``: what is ranked (None:
        the model's training catalog); ``exclude_seen`` drops each history's items, unless
        ``exclude`` names each row's excluded items instead."""

    @property
    def metadata(self) -> dict:
        """Training facts: ds, data window, config, metrics (JSON-serializable)."""
