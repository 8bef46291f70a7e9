"""In-memory training data: what the trainer consumes, built from lake features
(``jobs.train_encoders``) or from a CSV dataset (``jobs.benchmark_quality``).

Items are addressed by a dense index ``0..n_items-1`` (row of ``item_ids``); index
``n_items`` is never used for a real item so models may reserve it for padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TrainingData:
    item_ids: list[str]  # dense index -> catalog item_id
    item_text: list[str]  # "title | brand | category path | description" ("" when unknown)
    item_category: list[str]  # top-level category ("" when unknown)
    item_brand: list[str]  # brand ("" when unknown)
    user_keys: list[str]  # one per sequence
    sequences: list[np.ndarray]  # int64 item indices per user, oldest first (time, then seq pos)
    event_types: list[np.ndarray] | None = None  # int64 codes aligned with sequences (schema.ITEM_EVENT_TYPES order)
    event_times: list[np.ndarray] | None = None  # int64 epoch seconds aligned with sequences
    query_pairs: list[tuple[str, int, float]] = field(default_factory=list)  # (query, item index, weight)
    data_window: tuple[str, str] | None = None  # first and last ds of the data

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def validate(self) -> None:
        """Raise ValueError with a readable message when the data cannot be trained on."""
        if len(self.item_text) != self.n_items or len(self.item_category) != self.n_items:
            raise ValueError("item_text / item_category must have one entry per item_id")
        if len(self.user_keys) != len(self.sequences):
            raise ValueError("user_keys and sequences must have the same length")
        for seq in self.sequences:
            if len(seq) and (seq.min() < 0 or seq.max() >= self.n_items):
                raise ValueError("a sequence refers to an item index outside 0..n_items-1")
