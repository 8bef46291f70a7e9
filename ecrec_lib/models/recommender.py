"""TwoTowerRecommender, the served model: a trained :class:`TwoTowerModel`, everything needed
to use it (item id map, side-feature vocabularies, text encoder) and its neighbourhood blend
(item-kNN, user-kNN, SLIST and the learned ranker), behind the Recommender protocol whose
:meth:`~TwoTowerRecommender.recommend` every consumer calls."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from ecrec_lib.models.api import ItemSet, UserHistory
from ecrec_lib.models.blend import CoocBlend, index_histories
from ecrec_lib.models.config import ModelConfig
from ecrec_lib.models.ranker import time_context
from ecrec_lib.models.served import VectorRecommender
from ecrec_lib.models.text_encoder import TextEncoder
from ecrec_lib.models.two_tower import TwoTowerModel, event_type_codes
from ecrec_lib.schema import CATEGORY_SEP


def item_text(title: Any, brand: Any = "", category_path: Any = "", description: Any = "",
              max_description_chars: int = 200) -> str:
    """The text the item tower reads: "title | brand | category path | description"."""
    parts = []
    for value, limit in ((title, None), (brand, None), (category_path, None),
                         (description, max_description_chars)):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        s = " ".join(str(value).split())
        if limit:
            s = s[:limit]
        if s:
            parts.append(s)
    return " | ".join(parts)


def catalog_item_text(catalog: pd.DataFrame) -> list[str]:
    """item_text for every row of a clean-catalog DataFrame (missing columns are skipped)."""
    def col(name: str) -> pd.Series:
        return catalog[name] if name in catalog.columns else pd.Series([None] * len(catalog))

    return [item_text(t, b, c, d) for t, b, c, d in zip(
        col("title"), col("brand"), col("category_path"), col("description"), strict=True)]


def top_category(row_category: Any, category_path: Any) -> str:
    if isinstance(row_category, str) and row_category:
        return row_category
    if isinstance(category_path, str) and category_path:
        return category_path.split(CATEGORY_SEP)[0].strip()
    return ""


class TwoTowerRecommender(VectorRecommender):
    """Implements :class:`ecrec_lib.models.api.Recommender` (plus index-level helpers used
    by training). Vectors are float32 and L2-normalized; :meth:`recommend` ranks by the
    blended scores when the model carries a blend, by cosine otherwise."""

    def __init__(
        self,
        model: TwoTowerModel,
        mcfg: ModelConfig,
        item_ids: list[str],
        item_texts: list[str],
        categories: list[str],
        brands: list[str],
        text_encoder: TextEncoder | None = None,
        text_encoder_loader: Callable[[], TextEncoder] | None = None,
        metadata: dict | None = None,
        item_times: list[np.ndarray] | None = None,
    ) -> None:
        self.model = model
        self.mcfg = mcfg
        self._item_ids = list(item_ids)
        self.item_texts = list(item_texts)
        self.categories = list(categories)  # code c (1-based) -> name categories[c-1]
        self.brands = list(brands)
        self._text_encoder = text_encoder
        self._text_encoder_loader = text_encoder_loader
        self._metadata = dict(metadata or {})
        self.item_index = {iid: i for i, iid in enumerate(self._item_ids)}
        self._cat_code = {c: i + 1 for i, c in enumerate(self.categories)}
        self._brand_code = {b: i + 1 for i, b in enumerate(self.brands)}
        self._table: torch.Tensor | None = None
        # Co-occurrence blend fitted after training (None: validation chose none).
        self.blend: CoocBlend | None = None

    # ------------------------------------------------------------------ protocol
    @property
    def item_ids(self) -> list[str]:
        return list(self._item_ids)

    @property
    def metadata(self) -> dict:
        return self._metadata

    @property
    def device(self) -> torch.device:
        return self.model.item_category.device

    def invalidate(self) -> None:
        """Drop the cached item table (call after the weights change)."""
        self._table = None

    @torch.no_grad()
    def item_table(self) -> torch.Tensor:
        """(n_items, dim) normalized item vectors on the model device (cached)."""
        if self._table is None:
            self.model.eval()
            self._table = self.model.item_vectors().float()
        return self._table

    def item_matrix(self) -> np.ndarray:
        return self.item_table().cpu().numpy().astype(np.float32)

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text_encoder is None:
            if self._text_encoder_loader is None:
                raise RuntimeError("this recommender has no text encoder to encode new text")
            self._text_encoder = self._text_encoder_loader()
        return self._text_encoder

    @torch.no_grad()
    def encode_items(self, catalog: pd.DataFrame) -> np.ndarray:
        if "item_id" not in catalog.columns:
            raise ValueError("encode_items needs an item_id column (clean catalog rows)")
        self.model.eval()
        texts = catalog_item_text(catalog)
        ids = catalog["item_id"].astype(str).tolist()
        idx = np.asarray([self.item_index.get(i, -1) for i in ids], dtype=np.int64)
        out = np.zeros((len(ids), self.mcfg.dim), dtype=np.float32)
        # Known items whose text did not change: the training-time vectors exactly.
        same = np.asarray([i >= 0 and self.item_texts[i] == t for i, t in zip(idx, texts, strict=True)],
                          dtype=bool)
        if same.any():
            out[same] = self.item_table()[torch.as_tensor(idx[same], device=self.device)].cpu().numpy()
        rest = np.flatnonzero(~same)
        if len(rest):
            cats = catalog.get("category", pd.Series([None] * len(catalog))).tolist()
            paths = catalog.get("category_path", pd.Series([None] * len(catalog))).tolist()
            brands = catalog.get("brand", pd.Series([None] * len(catalog))).tolist()
            cat = torch.as_tensor([self._cat_code.get(top_category(cats[r], paths[r]), 0) for r in rest],
                                  device=self.device)
            brand = torch.as_tensor([self._brand_code.get(brands[r] or "", 0) for r in rest],
                                    device=self.device)
            temb = None
            if self.mcfg.use_text:
                temb = torch.as_tensor(
                    self.text_encoder.embed([texts[r] for r in rest], self.mcfg.text_batch_size),
                    device=self.device)
            vec = self.model.side_vectors(temb, cat, brand)
            # A known item whose text changed keeps its learned ID part.
            known_rows = np.flatnonzero(idx[rest] >= 0)
            if len(known_rows):
                kr = torch.as_tensor(known_rows, device=self.device)
                k_idx = torch.as_tensor(idx[rest][known_rows], device=self.device)
                vec[kr] = self.model.item_vectors(k_idx, text_emb=temb[kr] if temb is not None else None)
            out[rest] = vec.float().cpu().numpy()
        return out

    @torch.no_grad()
    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        if not len(queries):
            return np.zeros((0, self.mcfg.dim), dtype=np.float32)
        self.model.eval()
        emb = self.text_encoder.embed([str(q) for q in queries], self.mcfg.text_batch_size)
        q = self.model.query_vectors(torch.as_tensor(emb, device=self.device))
        return q.float().cpu().numpy()

    def encode_users(self, histories: Sequence[UserHistory], now_ts: int) -> np.ndarray:
        """Items unknown to the model are skipped; an empty history gets the mean item
        direction (a popularity-like vector). The user tower reads item order and event
        types, not ages, so ``now_ts`` does not change the vectors."""
        seqs, types = [], []
        for h in histories:
            idx = np.asarray([self.item_index.get(str(i), -1) for i in h.item_ids], dtype=np.int64)
            keep = idx >= 0
            seqs.append(idx[keep])
            et = (list(h.event_types) if h.event_types is not None
                  and len(h.event_types) == len(idx) else [""] * len(idx))
            types.append(event_type_codes(et)[keep])
        return self.user_vectors(seqs, types).cpu().numpy().astype(np.float32)

    def own_items(self) -> ItemSet:
        return ItemSet(np.asarray(self._item_ids, dtype=object), self.item_matrix())

    @torch.no_grad()
    def score_block(self, histories: Sequence[UserHistory], now_ts: int | None,
                    items: ItemSet) -> np.ndarray:
        """Served scores of ``histories`` over ``items``: the cosine, mixed with the blend's
        neighbourhood parts and ranker (their time context: each history's own event times)
        for the items the model knows; items new to it keep their text-only cosine."""
        now = int(now_ts) if now_ts is not None else max(
            (int(t) for h in histories for t in (h.event_times or ())), default=0)
        users = torch.as_tensor(self.encode_users(histories, now))
        cos = users @ torch.as_tensor(np.asarray(items.vectors, dtype=np.float32)).T
        if self.blend is None:
            return cos.numpy()
        columns = pd.Index(np.asarray(items.item_ids, dtype=object)).get_indexer(
            pd.Index(np.asarray(self._item_ids, dtype=object)))
        if len(columns) == len(items.item_ids) and (columns == np.arange(len(columns))).all():
            columns = None  # the model's own catalog: no re-layout
        hist = index_histories(self._item_ids, [h.item_ids for h in histories])
        context = time_context([np.asarray(h.event_times, dtype=np.float64)
                                if h.event_times is not None and len(h.event_times) == len(h.item_ids)
                                else None for h in histories])
        return self.blend.mix(cos, hist, columns, context).numpy()

    # ------------------------------------------------------------------ index level
    @torch.no_grad()
    def user_vectors(
        self,
        histories: Sequence[np.ndarray],
        types: Sequence[np.ndarray] | None = None,
        batch_size: int = 1024,
    ) -> torch.Tensor:
        """(len(histories), dim) user vectors from item-index histories (oldest first)."""
        self.model.eval()
        table = self.item_table()
        L = self.mcfg.max_seq_len
        # Batches of similar lengths, each padded only to its longest history: right padding
        # changes no output (the causal tower never attends forward) but costs attention and
        # MLP time on every row, and most histories are far shorter than max_seq_len.
        lens = np.asarray([min(len(h), L) for h in histories], dtype=np.int64)
        order = np.argsort(lens, kind="stable")
        out = []
        for chunk in _width_batches(lens[order], order, batch_size):
            width = max(1, min(L, max(len(histories[u]) for u in chunk)))
            seq = np.zeros((len(chunk), width), dtype=np.int64)
            typ = np.zeros((len(chunk), width), dtype=np.int64)
            lengths = np.zeros(len(chunk), dtype=np.int64)
            for r, u in enumerate(chunk):
                h = np.asarray(histories[u], dtype=np.int64)[-L:]
                n = len(h)
                lengths[r] = n
                seq[r, :n] = h
                if types is not None:
                    typ[r, :n] = np.asarray(types[u], dtype=np.int64)[-L:][-n:] if n else []
            dev = self.device
            v = self.model.user_vectors(
                table, torch.as_tensor(seq, device=dev), torch.as_tensor(np.maximum(lengths, 1), device=dev),
                torch.as_tensor(typ, device=dev) if types is not None else None,
            ).float()
            empty = torch.as_tensor(lengths == 0, device=dev)
            if empty.any():
                mean = torch.nn.functional.normalize(table.mean(0), dim=0)
                v[empty] = mean
            out.append(v)
        if not out:
            return torch.zeros(0, self.mcfg.dim)
        vecs = torch.empty(len(histories), out[0].shape[1], dtype=out[0].dtype, device=out[0].device)
        vecs[torch.as_tensor(order, device=vecs.device)] = torch.cat(out)
        return vecs

    @torch.no_grad()
    def score_histories(
        self,
        histories: Sequence[np.ndarray],
        types: Sequence[np.ndarray] | None = None,
    ) -> torch.Tensor:
        """(len(histories), n_items) cosine scores of the two towers alone against the whole
        training catalog (training's early stopping and the blend's search read them; the
        served scores are :meth:`recommend`'s)."""
        u = self.user_vectors(histories, types)
        return u @ self.item_table().T


def _width_batches(sorted_lens: np.ndarray, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` (rows by ascending length) cut into batches of at most ``batch_size`` rows whose
    longest history is at most twice their shortest (at most 2 items when the shortest has 0 or
    1): a served block of 512 users nearly always holds one long history, and one batch would pad
    every short one to its width."""
    batches, start = [], 0
    for i in range(1, len(order) + 1):
        if (i == len(order) or i - start >= batch_size
                or sorted_lens[i] > max(2 * sorted_lens[start], 2)):
            batches.append(order[start:i])
            start = i
    return batches
