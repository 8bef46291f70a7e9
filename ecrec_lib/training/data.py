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
    # category path per item, levels joined by " > " ("" unknown); empty list: none known
    item_category_path: list[str] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def validate(self) -> None:
        """Raise ValueError with a readable message when the data cannot be trained on."""
        if len(self.item_text) != self.n_items or len(self.item_category) != self.n_items:
            raise ValueError("item_text / item_category must have one entry per item_id")
        if self.item_category_path and len(self.item_category_path) != self.n_items:
            raise ValueError("item_category_path must be empty or have one entry per item_id")
        if len(self.user_keys) != len(self.sequences):
            raise ValueError("user_keys and sequences must have the same length")
        for seq in self.sequences:
            if len(seq) and (seq.min() < 0 or seq.max() >= self.n_items):
                raise ValueError("a sequence refers to an item index outside 0..n_items-1")


def data_fingerprint(data: TrainingData) -> str:
    """sha256 over item ids and every sequence (what the model was trained on)."""
    import hashlib

    h = hashlib.sha256()
    for iid in data.item_ids:
        h.update(iid.encode("utf-8"))
        h.update(b"\x00")
    h.update(b"\x01")
    for key, seq in zip(data.user_keys, data.sequences, strict=True):
        h.update(key.encode("utf-8"))
        h.update(np.asarray(seq, dtype=np.int64).tobytes())
        h.update(b"\x02")
    return h.hexdigest()


@dataclass
class BuildStats:
    """What :func:`build_training_data` dropped or noticed (logged to MLflow, never silent)."""

    n_catalog_items: int = 0
    n_users_in: int = 0
    n_events_in: int = 0
    n_events_missing_item: int = 0  # events whose item is not in the catalog: dropped
    n_users_emptied: int = 0  # users left with no event after that: dropped
    n_single_event_users: int = 0  # kept (training only, never evaluated)
    n_users_evaluable: int = 0  # users with >= 3 events (leave-one-out valid + test)
    n_query_pairs_in: int = 0
    n_query_pairs_missing_item: int = 0  # search pairs whose item is not in the catalog: dropped
    missing_item_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)


def build_training_data(
    catalog,  # pandas DataFrame of clean/catalog
    sequences,  # pandas DataFrame of features/user_sequences
    search_pairs=None,  # pandas DataFrame of features/search_pairs (optional)
    data_window: tuple[str, str] | None = None,
) -> tuple[TrainingData, BuildStats]:
    """TrainingData from lake frames (schema.CLEAN_CATALOG_COLUMNS, USER_SEQUENCE_COLUMNS,
    SEARCH_PAIR_COLUMNS). Events on items missing from the catalog are dropped and counted."""
    import pandas as pd

    from ecrec_lib.models.recommender import catalog_item_text, top_category
    from ecrec_lib.models.two_tower import event_type_codes

    for col in ("item_id", "title"):
        if col not in catalog.columns:
            raise ValueError(f"catalog is missing column {col!r}; expected clean/catalog columns")
    for col in ("user_key", "item_ids"):
        if col not in sequences.columns:
            raise ValueError(f"user_sequences is missing column {col!r}; expected features/user_sequences")
    cat = catalog.drop_duplicates("item_id", keep="last").reset_index(drop=True)
    item_ids = cat["item_id"].astype(str).tolist()
    index = {iid: i for i, iid in enumerate(item_ids)}
    categories = [top_category(c, p) for c, p in zip(
        cat.get("category", pd.Series([None] * len(cat))),
        cat.get("category_path", pd.Series([None] * len(cat))), strict=True)]
    brands = [b if isinstance(b, str) else "" for b in cat.get("brand", pd.Series([None] * len(cat)))]
    paths = [p if isinstance(p, str) else "" for p in cat.get("category_path",
                                                               pd.Series([None] * len(cat)))]
    stats = BuildStats(n_catalog_items=len(item_ids), n_users_in=len(sequences))
    missing: dict[str, int] = {}

    user_keys, seqs, types, times = [], [], [], []
    has_types = "event_types" in sequences.columns
    has_times = "event_times" in sequences.columns
    for row in sequences.itertuples(index=False):
        ids = [str(i) for i in row.item_ids]
        stats.n_events_in += len(ids)
        idx = np.asarray([index.get(i, -1) for i in ids], dtype=np.int64)
        keep = idx >= 0
        for i in np.asarray(ids, dtype=object)[~keep]:
            missing[i] = missing.get(i, 0) + 1
        stats.n_events_missing_item += int((~keep).sum())
        if not keep.any():
            stats.n_users_emptied += 1
            continue
        user_keys.append(str(row.user_key))
        seqs.append(idx[keep])
        et = list(row.event_types) if has_types and row.event_types is not None else [""] * len(ids)
        types.append(event_type_codes(et)[keep])
        tt = (np.asarray(row.event_times, dtype=np.int64) if has_times and row.event_times is not None
              else np.zeros(len(ids), dtype=np.int64))
        times.append(tt[keep])
    stats.n_single_event_users = sum(1 for s in seqs if len(s) == 1)
    stats.n_users_evaluable = sum(1 for s in seqs if len(s) >= 3)
    stats.missing_item_examples = sorted(missing, key=lambda k: (-missing[k], k))[:10]

    pairs: list[tuple[str, int, float]] = []
    if search_pairs is not None and len(search_pairs):
        stats.n_query_pairs_in = len(search_pairs)
        for q, iid, clicks, purchases in zip(
            search_pairs["query"], search_pairs["item_id"].astype(str),
            search_pairs.get("clicks", pd.Series([1] * len(search_pairs))),
            search_pairs.get("purchases", pd.Series([0] * len(search_pairs))), strict=True,
        ):
            i = index.get(iid, -1)
            if i < 0 or not isinstance(q, str) or not q.strip():
                stats.n_query_pairs_missing_item += 1
                continue
            # Purchases are stronger evidence of relevance than clicks.
            pairs.append((q, i, float(1.0 + np.log1p(float(clicks or 0) + 3.0 * float(purchases or 0)))))
    data = TrainingData(
        item_ids=item_ids,
        item_text=catalog_item_text(cat),
        item_category=categories,
        item_brand=brands,
        user_keys=user_keys,
        sequences=seqs,
        event_types=types,
        event_times=times,
        query_pairs=pairs,
        data_window=data_window,
        item_category_path=paths,
    )
    data.validate()
    return data, stats
