"""The contract between training (which produces a model) and its consumers
(the promotion gate, batch scoring, ad-hoc look-ups, the quality benchmark).

A trained model is logged to MLflow and loaded back with
``ecrec_lib.models.artifact.load_recommender(model_uri)``, which returns an object
satisfying :class:`Recommender`. Every vector it returns is float32 and L2-normalized,
so a dot product is the cosine similarity used for ranking.
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

    @property
    def metadata(self) -> dict:
        """Training facts: ds, data window, config, metrics (JSON-serializable)."""
