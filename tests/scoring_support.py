"""Test helpers for scoring/warehouse tests: a numpy Recommender and a tiny literal lake."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ecrec_lib.models.api import UserHistory
from ecrec_lib.models.served import VectorRecommender

DS = "2024-03-02"
DIM = 16


def _word_vec(word: str) -> np.ndarray:
    rng = np.random.default_rng(zlib.crc32(word.encode()))
    return rng.standard_normal(DIM)


def text_vec(text: str) -> np.ndarray:
    v = sum((_word_vec(w) for w in str(text).lower().split()), np.zeros(DIM))
    n = np.linalg.norm(v)
    return (v / n if n else v).astype(np.float32)


class FakeRecommender(VectorRecommender):
    """Bag-of-hashed-words item/query vectors; a user is the normalized weighted mean of the
    vectors of their history items. Satisfies ecrec_lib.models.api.Recommender."""

    WEIGHTS = {"view": 1.0, "click": 1.5, "add_to_cart": 2.0, "purchase": 2.0}

    def __init__(self, catalog: pd.DataFrame, version: str = "7") -> None:
        self._ids = [str(i) for i in catalog["item_id"]]
        self._vecs = {i: text_vec(t) for i, t in zip(self._ids, catalog["title"], strict=True)}
        self._version = version

    @property
    def item_ids(self) -> list[str]:
        return list(self._ids)

    def item_matrix(self) -> np.ndarray:
        return np.stack([self._vecs[i] for i in self._ids])

    def encode_items(self, catalog: pd.DataFrame) -> np.ndarray:
        return np.stack([text_vec(t) for t in catalog["title"]]).astype(np.float32)

    def encode_users(self, histories: Sequence[UserHistory], now_ts: int) -> np.ndarray:
        out = np.zeros((len(histories), DIM), np.float32)
        for r, h in enumerate(histories):
            v = np.zeros(DIM)
            for item, et in zip(h.item_ids, h.event_types, strict=True):
                if item in self._vecs:
                    v += self.WEIGHTS.get(et, 1.0) * self._vecs[item]
            n = np.linalg.norm(v)
            out[r] = v / n if n else v
        return out

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        return np.stack([text_vec(q) for q in queries]).astype(np.float32)

    @property
    def metadata(self) -> dict:
        return {"model_version": self._version}


CATALOG = pd.DataFrame(
    {
        "item_id": [f"i{n:02d}" for n in range(1, 13)],
        "title": [
            "red nail polish", "pink nail polish", "nail polish remover", "gel nail lamp",
            "argan hair oil", "hair shampoo", "hair conditioner", "hair brush",
            "face cream", "face serum", "eye cream", "sun cream face",
        ],
        "description": ["" for _ in range(12)],
        "category_path": ["Beauty > Nails"] * 4 + ["Beauty > Hair"] * 4 + ["Skin > Face"] * 4,
        "category": ["Nails"] * 4 + ["Hair"] * 4 + ["Skin"] * 4,
        "brand": ["b1", "b1", "b2", "b2", "b3", "b3", "b4", "b4", "b5", "b5", "b6", "b6"],
        "price": [5.0, 5.0, 3.0, 20.0, 9.0, 4.0, 4.0, 7.0, 15.0, 25.0, 18.0, 12.0],
        "in_stock": [True] * 3 + [False] + [True] * 8,  # i04 (gel nail lamp) is out of stock
        "created_at": pd.Timestamp("2024-01-01", tz="UTC"),
    }
)

T0 = 1709251200  # 2024-03-01T00:00:00Z
SEQUENCES = pd.DataFrame(
    {
        "user_key": ["u_nails", "u_hair", "u_mixed", "u_empty"],
        "item_ids": [["i01", "i02"], ["i05", "i06", "i06"], ["i01", "i09", "i10"], []],
        "event_types": [["view", "purchase"], ["view", "view", "purchase"],
                        ["view", "view", "add_to_cart"], []],
        "event_times": [[T0, T0 + 60], [T0, T0 + 5, T0 + 9], [T0, T0 + 1, T0 + 2], []],
        "n_events": [2, 3, 3, 0],
        "last_event_time": pd.to_datetime([T0 + 60, T0 + 9, T0 + 2, T0], unit="s", utc=True),
        "country": ["DE", "FR", "DE", "FR"],
        "device": ["mobile", "desktop", "app", "mobile"],
    }
)

ITEM_STATS = pd.DataFrame(
    {
        "item_id": [f"i{n:02d}" for n in range(1, 13)],
        "views": [10, 8, 3, 1, 6, 9, 2, 1, 5, 4, 2, 1],
        "clicks": [5, 4, 1, 0, 3, 4, 1, 0, 2, 2, 1, 0],
        "add_to_carts": [2, 1, 0, 0, 1, 2, 0, 0, 1, 1, 0, 0],
        "purchases": [1, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0],
        "ctr": [0.3] * 12,
        "cvr": [0.1, 0.1, 0.02, 0.0, 0.05, 0.1, 0.01, 0.0, 0.2, 0.05, 0.02, 0.0],
        "popularity": [9.0, 7.0, 2.0, 1.0, 5.0, 8.0, 1.0, 0.5, 4.0, 3.0, 1.0, 0.2],
        "trending_score": [1.2, 0.8, 0.1, 3.0, 0.9, 1.5, 0.2, 0.1, 2.0, 0.3, 0.2, 0.05],
    }
)


def _event(user: str, etype: str, item: str | None, query: str | None, country: str,
           device: str, minute: int) -> dict:
    return {
        "event_id": f"e{user}{minute}",
        "event_time": pd.Timestamp("2024-03-02", tz="UTC") + pd.Timedelta(minutes=minute),
        "user_key": user, "session_id": f"s{user}", "event_type": etype, "item_id": item,
        "query": query, "position": None, "price": None, "quantity": None,
        "device": device, "country": country,
    }


EVENTS = pd.DataFrame(
    [
        _event("u_nails", "search", None, "nail polish", "DE", "mobile", 1),
        _event("u_nails", "view", "i02", None, "DE", "mobile", 2),
        _event("u_hair", "search", None, "hair oil", "FR", "desktop", 3),
        _event("u_hair", "purchase", "i06", None, "FR", "desktop", 4),
        _event("u_search_only", "search", None, "face cream", "DE", "tablet", 5),
        _event("u_search_only", "search", None, "nail polish", "DE", "tablet", 6),
        _event("u_mixed", "view", "i10", None, "DE", "app", 7),
        _event("u_mixed", "click", "i09", None, "DE", "app", 8),
        _event("u_nowhere", "search", None, "hair oil", "IT", "mobile", 9),
    ]
)

COOCCURRENCE = pd.DataFrame(
    {"item_id": ["i01", "i01", "i05"], "other_item_id": ["i03", "i02", "i06"],
     "count": [4, 2, 3]}
)


def _write(df: pd.DataFrame, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path / "part-0.parquet")


def write_tiny_lake(root: Path, ds: str = DS) -> None:
    """The literal fixtures above as lake partitions for ``ds``."""
    _write(CATALOG, root / "clean" / "catalog" / f"ds={ds}")
    _write(EVENTS, root / "clean" / "events" / f"ds={ds}")
    _write(SEQUENCES, root / "features" / "user_sequences" / f"ds={ds}")
    _write(ITEM_STATS, root / "features" / "item_stats" / f"ds={ds}")
    _write(COOCCURRENCE, root / "features" / "item_cooccurrence" / f"ds={ds}")
