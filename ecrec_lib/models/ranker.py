"""Learned candidate re-ranker: LightGBM LambdaRank over the neighbourhood models' scores and
item / user side features.

The blend (:mod:`ecrec_lib.models.blend`) mixes the neighbourhood distributions (item-kNN,
user-kNN, SLIST) with shares fixed per model. A ranker learns *when* each one is right: for
short or long histories, for a candidate of the same brand or category as the last item, for
an item that was active around the user's own time. Candidates are the top ``n_candidates``
items of a fixed log-linear mix of the three distributions (history items excluded); each gets
the features in :data:`FEATURES`, and a LambdaRank model orders them. The ranker's output is a
distribution (a softmax of its scores over the candidates at a fitted temperature, zero
elsewhere) that the blend mixes like its other neighbourhood parts.

Labels without touching validation targets: :func:`fit_ranker` takes each training sequence's
*last* item as the label, with every neighbourhood part re-fitted on the training sequences
shortened by that item, so no feature has seen its own label. Validation targets stay for
choosing the ranker's share in the blend, test targets are never seen. At serving time the
features come from the parts fitted on the full training sequences (the blend's own).

Last-item features read the candidate's entry in the last history item's row of the item-kNN
similarity and the linear (SLIST) weights: the parts' distributions mix the whole history, these
isolate the newest step. Brand and category popularity (training interactions summed over the
candidate's brand, its category) tell a big brand's item from a niche one's.
Text features (cosine between the candidate's text vector and the last history item's, and
the mean of the last five) read the *pretrained* text encoder's item vectors, never the trained
item tower (which has seen the labels' co-occurrences).

Every count and time a feature reads is causal: it comes from training events at or before the
row's "now", the last event of its :func:`time_context` (a nightly run has no later events;
leave-one-out training holds other users' later events, which must not leak in). Time features
are the days between now and the candidate's first / last training event up to now, and its
training events in the 7 / 30 / 180 days up to now; popularity and brand / category popularity
also count the events up to now. They need event times; without them the ranker is fitted
without the time features and counts read the whole training window. A ranker fitted with time
features and served without a user's time context sees them as missing (LightGBM's missing
branch), which ranks worse: pass ``anchor_ts``. Pace features (log days between the history's
last two events, its events in the last day) read the user's own times: pass ``anchor_ts`` as
:func:`time_context`; a plain array of last event times leaves them missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ecrec_lib.models.neighbourhood import (
    CatalogTooLargeError,
    NeighbourhoodParts,
    refitted,
)
from ecrec_lib.models.served import top_k_desc
from ecrec_lib.models.tree_predict import TreePredictor

log = logging.getLogger(__name__)

DAY_S = 86_400.0
LOCAL_WINDOWS_DAYS = (7, 30, 180)
BASE_FEATURES = (
    "p_item", "p_user", "p_linear", "base", "log_p_item", "log_p_user", "log_p_linear",
    "base_rank", "log_popularity", "history_length", "same_brand_last", "same_category_last",
    "brand_share", "category_share",
)
# the candidate's similarity to the last history item alone, in the item-kNN and linear
# (SLIST) item-item tables, and its brand's / category's training popularity
LAST_ITEM_FEATURES = ("sim_item_last", "sim_linear_last")
GROUP_FEATURES = ("log_brand_popularity", "log_category_popularity")
TEXT_FEATURES = ("text_sim_last", "text_sim_recent")
# the highest text cosine to any of the last MAX_ITEMS history items
TEXT_MAX_FEATURES = ("text_sim_max",)
TIME_FEATURES = ("days_item_last", "days_item_first") + tuple(
    f"local_pop_{d}d" for d in LOCAL_WINDOWS_DAYS)
# the user's pace, from the history's own event times (a time context, :func:`time_context`):
# log days since the previous event, and the events in the day up to the last one
SESSION_FEATURES = ("gap_prev_days", "events_last_day")
FEATURES = (BASE_FEATURES + LAST_ITEM_FEATURES + GROUP_FEATURES + TEXT_FEATURES
            + TEXT_MAX_FEATURES + TIME_FEATURES + SESSION_FEATURES)
RECENT_ITEMS = 5  # text_sim_recent: cosine to the mean text vector of the last 5 history items
MAX_ITEMS = 10  # text_sim_max: over the last 10 history items


def feature_names(use_text: bool, use_time: bool) -> tuple[str, ...]:
    """The features a ranker fitted now computes, in order (a saved ranker keeps its own list:
    :attr:`CandidateRanker.features`)."""
    return (BASE_FEATURES + LAST_ITEM_FEATURES + GROUP_FEATURES
            + (TEXT_FEATURES + TEXT_MAX_FEATURES if use_text else ())
            + (TIME_FEATURES + SESSION_FEATURES if use_time else ()))


# candidate generation: log p_linear + 0.5 log p_item + 0.3 log p_user (each floored at 1e-3),
# a fixed mix close to the blend shares chosen on Amazon Beauty
CANDIDATE_MIX = (("p_linear", 1.0), ("p_item", 0.5), ("p_user", 0.3))
CANDIDATE_FLOOR = 1e-3
LOG_FLOOR = 1e-6
TEMPERATURE_GRID = tuple(float(t) for t in np.geomspace(0.1, 10.0, 21))
TIE_BREAK = 1e-3  # score units: spread over the candidates in their fixed-mix order
TS_SHIFT = 40  # event key = item << 40 | epoch seconds (2**40 s is 34,000 years)
RANKER_FILE = "blend_ranker.txt"
RANKER_SIDE_FILE = "blend_ranker_side.npz"


class RankerError(ValueError):
    """The ranker cannot be fitted or used as asked; the message names the fix."""


@dataclass(frozen=True)
class RankerConfig:
    """How the ranker is fitted (one line of why per field)."""

    n_candidates: int = 100  # items re-ranked per user; the rest get no ranker mass
    max_rounds: int = 1000  # boosting rounds before early stopping on the held-out queries
    early_stopping: int = 150  # rounds without held-out NDCG@10 gain before stopping: a short
    # patience stops at a round the held-out split's noise picks (BENCHMARKS.md, ranker section)
    boosters: int = 2  # LightGBM models averaged, each with its own held-out split and seed
    learning_rate: float = 0.03  # smaller steps, more rounds: better than 0.05 on Beauty
    num_leaves: int = 31
    min_data_in_leaf: int = 100  # smooths leaves: most candidates are negatives
    holdout_fraction: float = 0.1  # training queries kept aside for early stopping + temperature
    min_queries: int = 200  # fewer labelled queries than this: no ranker (too little to learn)
    holdout_positions: int = 2  # label the last K training items (one re-fit of the parts each;
    # 2 beat 1 on Beauty, BENCHMARKS.md)
    seed: int = 0
    threads: int = 0  # LightGBM threads (0: its default, all cores)

    def __post_init__(self) -> None:
        if self.n_candidates < 10:
            raise RankerError(f"n_candidates must be >= 10 (NDCG@10 needs 10), got {self.n_candidates}")
        if not 0.0 < self.holdout_fraction < 0.5:
            raise RankerError(f"holdout_fraction must be in (0, 0.5), got {self.holdout_fraction}")
        if min(self.max_rounds, self.early_stopping, self.min_queries, self.holdout_positions,
               self.boosters) < 1:
            raise RankerError("max_rounds, early_stopping, min_queries, holdout_positions and "
                              "boosters must be >= 1")


def _codes(values: Sequence[str]) -> np.ndarray:
    """Strings -> int64 codes in first-seen order; "" (unknown) -> -1."""
    index: dict[str, int] = {}
    out = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):
        if v:
            out[i] = index.setdefault(str(v), len(index))
    return out


@dataclass
class ItemSide:
    """Per-item tables the features read, from the training sequences (and their times)."""

    popularity: np.ndarray  # (n_items,) training interactions
    brand: np.ndarray  # (n_items,) int64 code, -1 unknown
    category: np.ndarray  # (n_items,) int64 code, -1 unknown
    event_keys: np.ndarray | None = None  # sorted item << TS_SHIFT | ts of training events
    first_ts: np.ndarray | None = None  # (n_items,) first training event (nan: none)
    last_ts: np.ndarray | None = None
    text: np.ndarray | None = None  # (n_items, d) float16 unit pretrained text vectors

    @classmethod
    def build(cls, train_seqs: Sequence[np.ndarray], n_items: int, brands: Sequence[str],
              categories: Sequence[str], train_times: Sequence[np.ndarray] | None = None,
              text_vectors: np.ndarray | None = None) -> ItemSide:
        if len(brands) != n_items or len(categories) != n_items:
            raise RankerError(f"brands and categories need one entry per item ({n_items}), got "
                              f"{len(brands)} and {len(categories)}")
        items = np.concatenate([np.asarray(s, dtype=np.int64) for s in train_seqs] or
                               [np.zeros(0, np.int64)])
        pop = np.bincount(items, minlength=n_items).astype(np.float64)
        side = cls(pop, _codes(brands), _codes(categories))
        if text_vectors is not None:
            v = np.asarray(text_vectors, dtype=np.float32)
            if v.ndim != 2 or v.shape[0] != n_items:
                raise RankerError(f"text_vectors must be (n_items={n_items}, d), got {v.shape}")
            side.text = (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)
                         ).astype(np.float16)
        if train_times is None:
            return side
        if len(train_times) != len(train_seqs) or any(
                len(t) < len(s) for s, t in zip(train_seqs, train_times, strict=True)):
            raise RankerError("train_times must hold one time per training item of every sequence")
        ts = np.concatenate([np.asarray(t, dtype=np.int64)[:len(s)]
                             for s, t in zip(train_seqs, train_times, strict=True)] or
                            [np.zeros(0, np.int64)])
        ts = np.clip(ts, 0, (1 << TS_SHIFT) - 1)
        side.event_keys = np.sort((items << TS_SHIFT) | ts)
        first = np.full(n_items, np.inf)
        last = np.full(n_items, -np.inf)
        np.minimum.at(first, items, ts.astype(np.float64))
        np.maximum.at(last, items, ts.astype(np.float64))
        side.first_ts = np.where(np.isfinite(first), first, np.nan)
        side.last_ts = np.where(np.isfinite(last), last, np.nan)
        return side

    @property
    def has_time(self) -> bool:
        return self.event_keys is not None

    @property
    def has_text(self) -> bool:
        return self.text is not None

    def _at_or_before(self, items: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """Index into ``event_keys`` one past each ``items`` entry's last event at or before
        ``anchor`` (same shape; anchors are epoch seconds)."""
        assert self.event_keys is not None
        a = np.clip(np.asarray(anchor, dtype=np.int64), 0, (1 << TS_SHIFT) - 1)
        return np.searchsorted(self.event_keys, (items << TS_SHIFT) | a, side="right")

    def _item_start(self, items: np.ndarray) -> np.ndarray:
        """Index into ``event_keys`` of each ``items`` entry's first event (a table built once
        per side: one lookup instead of a binary search per candidate)."""
        assert self.event_keys is not None
        keys = self.event_keys
        return self._lookup("_item_start", lambda: np.searchsorted(
            keys, np.arange(len(self.popularity) + 1, dtype=np.int64) << TS_SHIFT))[items]

    def text32(self) -> np.ndarray:
        """The text vectors in float32, converted once per side (the features' arithmetic)."""
        assert self.text is not None
        text = self.text
        return self._lookup("text32", lambda: text.astype(np.float32))

    def _lookup(self, key: str, build: Callable[[], np.ndarray]) -> np.ndarray:
        """A table derived from the side's arrays, built on first use (they do not change
        after fitting)."""
        cache = self.__dict__.setdefault("_lookups", {})
        if key not in cache:
            cache[key] = build()
        return cache[key]

    def until(self, items: np.ndarray, anchor: np.ndarray) -> EventsUntil:
        """Each ``items`` entry's training events at or before ``anchor`` (same shape), looked
        up once for every causal feature that reads them."""
        return EventsUntil(self, items, anchor, self._item_start(items),
                           self._at_or_before(items, anchor))

    def count_until(self, items: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """Training events of each ``items`` entry at or before ``anchor`` (same shape)."""
        return self.until(items, anchor).count()

    def local_popularity(self, items: np.ndarray, anchor: np.ndarray, days: float) -> np.ndarray:
        """Training events of each ``items`` entry in the ``days`` up to ``anchor`` (same
        shape): never one after the anchor, which a nightly run could not have seen."""
        return self.until(items, anchor).in_last(days)

    def last_until(self, items: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """Each ``items`` entry's last training event at or before ``anchor`` (nan: none)."""
        return self.until(items, anchor).last()

    def first_until(self, items: np.ndarray, anchor: np.ndarray) -> np.ndarray:
        """Each ``items`` entry's first training event if it is at or before ``anchor``."""
        assert self.first_ts is not None
        first = self.first_ts[items]
        return np.where(first <= anchor, first, np.nan)

    def group_count_until(self, kind: str, cands: np.ndarray,
                          anchor: np.ndarray | None) -> np.ndarray:
        """Training events of each candidate's ``kind`` group ("brand" or "category") at or
        before ``anchor`` (same shape as ``cands``; None: over all training); nan for an
        unknown code."""
        codes = getattr(self, kind)
        known = codes >= 0
        c = codes[cands]
        if anchor is None or not self.has_time:
            totals = np.bincount(codes[known], self.popularity[known],
                                 minlength=int(codes.max()) + 1 if known.any() else 1)
            return np.where(c >= 0, totals[np.maximum(c, 0)], np.nan)
        keys = self._group_keys(kind)
        g = np.maximum(c, 0).astype(np.int64)
        a = np.clip(np.asarray(anchor, dtype=np.int64), 0, (1 << TS_SHIFT) - 1)
        n = (np.searchsorted(keys, (g << TS_SHIFT) | a, side="right")
             - np.searchsorted(keys, g << TS_SHIFT)).astype(np.float64)
        return np.where(c >= 0, n, np.nan)

    def _group_keys(self, kind: str) -> np.ndarray:
        """Sorted ``group << TS_SHIFT | ts`` of the training events of the items with a known
        ``kind`` code (built once per side: the tables do not change after fitting)."""
        assert self.event_keys is not None
        keys = self.event_keys

        def build() -> np.ndarray:
            ts = keys & ((1 << TS_SHIFT) - 1)
            g = getattr(self, kind)[keys >> TS_SHIFT]
            return np.sort((g[g >= 0] << TS_SHIFT) | ts[g >= 0])

        return self._lookup(kind, build)

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {"popularity": self.popularity, "brand": self.brand, "category": self.category}
        if self.has_time:
            out.update(event_keys=self.event_keys, first_ts=self.first_ts, last_ts=self.last_ts)
        if self.has_text:
            out["text"] = self.text
        return out


@dataclass(frozen=True)
class EventsUntil:
    """Index ranges into :attr:`ItemSide.event_keys`: ``start`` each item's first training
    event, ``end`` one past its last at or before ``anchor`` (:meth:`ItemSide.until`)."""

    side: ItemSide
    items: np.ndarray
    anchor: np.ndarray
    start: np.ndarray
    end: np.ndarray

    def count(self) -> np.ndarray:
        """Training events at or before the anchor."""
        return (self.end - self.start).astype(np.float64)

    def in_last(self, days: float) -> np.ndarray:
        """Training events in the ``days`` up to the anchor."""
        lo = np.searchsorted(self.side.event_keys, (self.items << TS_SHIFT) | np.clip(
            np.asarray(self.anchor, dtype=np.int64) - int(days * DAY_S), 0, None))
        return (self.end - lo).astype(np.float64)

    def last(self) -> np.ndarray:
        """The last training event's time at or before the anchor (nan: none)."""
        ts = self.side.event_keys[np.maximum(self.end - 1, 0)] & ((1 << TS_SHIFT) - 1)
        return np.where(self.end > self.start, ts.astype(np.float64), np.nan)


def time_context(event_times: Sequence[np.ndarray | None]) -> np.ndarray:
    """Each history's time context, the ranker's "now" (rows, 3): the last event's time (epoch
    seconds), the previous event's time, and the events within a day up to the last one (NaN
    where a history has too few or no times). Pass it as ``anchor_ts``; a plain (rows,) array
    of last times still works, with the :data:`SESSION_FEATURES` missing."""
    out = np.full((len(event_times), 3), np.nan, dtype=np.float64)
    for r, t in enumerate(event_times):
        if t is None or not len(t):
            continue
        t = np.asarray(t, dtype=np.float64)
        out[r, 0] = t[-1]
        if len(t) >= 2:
            out[r, 1] = t[-2]
        out[r, 2] = float((t >= t[-1] - DAY_S + 1).sum())
    return out


def candidate_scores(p_item: np.ndarray, p_user: np.ndarray, p_linear: np.ndarray) -> np.ndarray:
    """The fixed log-linear mix that picks the candidates (see :data:`CANDIDATE_MIX`)."""
    parts = {"p_item": p_item, "p_user": p_user, "p_linear": p_linear}
    # in place, one scratch buffer: these are full (rows, n_items) passes on the served path
    (first, w0), *rest = CANDIDATE_MIX
    base = np.log(parts[first] + CANDIDATE_FLOOR)
    base *= w0
    tmp = np.empty_like(base)
    for name, w in rest:
        np.add(parts[name], CANDIDATE_FLOOR, out=tmp)
        np.log(tmp, out=tmp)
        tmp *= w
        base += tmp
    return base


def _history_pairs(histories: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(row, item) index arrays of every history item."""
    lens = [len(h) for h in histories]
    items = (np.concatenate([np.asarray(h, dtype=np.int64) for h in histories])
             if sum(lens) else np.empty(0, np.int64))
    return np.repeat(np.arange(len(histories)), lens), items


def _history_cells(histories: Sequence[np.ndarray], cands: np.ndarray, n_items: int) -> np.ndarray:
    """(rows, C) bool: the candidates that are items of their row's history."""
    rows, items = _history_pairs(histories)
    keys = np.arange(len(cands), dtype=np.int64)[:, None] * n_items + cands
    return np.isin(keys, rows * n_items + items)


def _top_candidates(base: np.ndarray, histories: Sequence[np.ndarray], n: int) -> np.ndarray:
    """(rows, n) item indices by descending ``base``, equal values by item, history items
    excluded (modifies base)."""
    base[_history_pairs(histories)] = -np.inf
    return top_k_desc(base, min(n, base.shape[1]))


def _share_of(codes: np.ndarray, histories: Sequence[np.ndarray], cands: np.ndarray) -> np.ndarray:
    """Per (row, candidate): the fraction of the row's history items with the candidate's code."""
    n_codes = int(codes.max()) + 2 if len(codes) else 1
    rows, items = _history_pairs(histories)
    counts = np.bincount(rows * n_codes + codes[items] + 1,
                         minlength=len(histories) * n_codes).astype(np.float32)
    counts = counts.reshape(len(histories), n_codes)
    counts /= np.maximum(np.asarray([len(h) for h in histories], dtype=np.float32), 1.0)[:, None]
    counts[:, 0] = 0.0  # unknown codes match nothing
    return np.take_along_axis(counts, codes[cands] + 1, 1)


def _last_items(histories: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, n) item indices of each history's last ``n`` items (oldest first, left-aligned)
    and the mask of the real ones; padding points at item 0."""
    take = np.asarray([min(len(h), n) for h in histories], dtype=np.int64)
    valid = np.arange(n)[None, :] < take[:, None]
    idx = np.zeros((len(histories), n), dtype=np.int64)
    if take.sum():
        idx[valid] = np.concatenate([np.asarray(h[len(h) - t:], dtype=np.int64)
                                     for h, t in zip(histories, take, strict=True)])
    return idx, valid


def _mean_rows(table: np.ndarray, idx: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per row, the mean of ``table[idx[r, real[r]]]`` (zeros for a row with none), summed in
    the rows' own order as ``ndarray.mean`` would."""
    out = np.zeros((len(idx), table.shape[1]), dtype=table.dtype)
    for j in range(idx.shape[1]):
        out[real[:, j]] += table[idx[real[:, j], j]]
    count = real.sum(1)
    out[count > 0] /= count[count > 0, None].astype(table.dtype)
    return out


def _row_at(table: Any, rows: np.ndarray, cands: np.ndarray) -> np.ndarray:
    """(len(rows), C) entries ``table[rows[r], cands[r, :]]`` of a sparse item x item table;
    a row index < 0 (no history) gives zeros. Looked up in the rows' sorted (row, column) keys:
    densifying each row would cost a pass over the whole catalog per user."""
    out = np.zeros(cands.shape, dtype=np.float32)
    has = np.flatnonzero(rows >= 0)
    if not len(has):
        return out
    sub = sp.csr_matrix(table[rows[has]])
    sub.sum_duplicates()  # sorted column indices, one entry per (row, column), as todense sums
    if not sub.nnz:
        return out
    n_cols = np.int64(sub.shape[1])
    keys = np.repeat(np.arange(sub.shape[0], dtype=np.int64), np.diff(sub.indptr)) * n_cols \
        + sub.indices.astype(np.int64)
    want = np.arange(len(has), dtype=np.int64)[:, None] * n_cols + cands[has].astype(np.int64)
    pos = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    out[has] = np.where(keys[pos] == want, sub.data[pos], 0.0).astype(np.float32)
    return out


def candidate_features(side: ItemSide, histories: Sequence[np.ndarray], p_item: np.ndarray,
                       p_user: np.ndarray, p_linear: np.ndarray | None, n_candidates: int,
                       anchor_ts: np.ndarray | None, names: Sequence[str],
                       last_item_tables: tuple[Any, Any] | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(cands (rows, C), X (rows, C, len(names))) for users with ``histories`` and their
    neighbourhood distributions over the model's items (rows sum to 1 or are all zero;
    ``p_linear`` None: no linear model, all zero). ``names`` picks the features, in order, from
    :data:`FEATURES`; the :data:`LAST_ITEM_FEATURES` read ``last_item_tables`` = (item-kNN
    similarity, linear weights or None), the sparse item x item tables of the same parts."""
    unknown = sorted(set(names) - set(FEATURES))
    if unknown:
        raise RankerError(f"unknown ranker features {unknown}: this ecrec computes {list(FEATURES)}")
    if p_linear is None:
        p_linear = np.zeros_like(p_item)
    base = candidate_scores(p_item, p_user, p_linear)
    cands = _top_candidates(base, histories, n_candidates)
    rows, c = cands.shape
    take = lambda m: np.take_along_axis(m, cands, 1)  # noqa: E731
    want = set(names)
    pi, pu, pl = take(p_item), take(p_user), take(p_linear)
    last = np.asarray([h[-1] if len(h) else -1 for h in histories], dtype=np.int64)
    lengths = np.asarray([len(h) for h in histories], dtype=np.float32)
    context = None if anchor_ts is None else np.asarray(anchor_ts, dtype=np.float64)
    if context is not None and context.ndim == 1:
        context = np.stack([context, np.full_like(context, np.nan), np.full_like(context, np.nan)], 1)
    # the row's "now": every count and time below reads training events at or before it only
    # (a nightly run has no later ones); rows without one read the whole training window
    timed = context is not None and side.has_time
    known = np.isfinite(context[:, 0])[:, None] if timed else np.zeros((rows, 1), dtype=bool)
    anchor = (np.broadcast_to(np.where(known[:, 0], context[:, 0], 0.0)[:, None], (rows, c))
              if timed else None)
    popularity = side.popularity[cands]
    events = side.until(cands, anchor) if anchor is not None else None
    if events is not None:
        popularity = np.where(known, events.count(), popularity)
    cols: dict[str, Any] = {
        "p_item": pi, "p_user": pu, "p_linear": pl, "base": take(base),
        "log_p_item": np.log(pi + LOG_FLOOR), "log_p_user": np.log(pu + LOG_FLOOR),
        "log_p_linear": np.log(pl + LOG_FLOOR),
        "base_rank": np.broadcast_to(np.arange(c, dtype=np.float32), (rows, c)),
        "log_popularity": np.log1p(popularity),
        "history_length": np.broadcast_to(lengths[:, None], (rows, c))}
    for kind, codes in (("brand", side.brand), ("category", side.category)):
        last_code = np.where(last >= 0, codes[np.maximum(last, 0)], -1)
        cols[f"same_{kind}_last"] = (codes[cands] == last_code[:, None]) & (last_code[:, None] >= 0)
        if f"{kind}_share" in want:
            cols[f"{kind}_share"] = _share_of(codes, histories, cands)
        if f"log_{kind}_popularity" in want:
            group = side.group_count_until(kind, cands, None)
            if anchor is not None:
                group = np.where(known, side.group_count_until(kind, cands, anchor), group)
            cols[f"log_{kind}_popularity"] = np.log1p(group)
    if want & set(LAST_ITEM_FEATURES):
        if last_item_tables is None:
            raise RankerError("this ranker reads the last item's item-kNN and linear similarities: "
                              "pass last_item_tables=(item_knn.sim, linear.weights or None)")
        item_sim, linear_sim = last_item_tables
        cols["sim_item_last"] = _row_at(item_sim, last, cands)
        cols["sim_linear_last"] = (_row_at(linear_sim, last, cands) if linear_sim is not None
                                   else np.zeros((rows, c), np.float32))
    if want & set(TEXT_FEATURES + TEXT_MAX_FEATURES):
        if not side.has_text:
            raise RankerError("this ranker reads text vectors but its item tables have none")
        text = side.text32()
        cand_vec = text[cands]
    if want & set(TEXT_FEATURES):
        last_vec = text[np.maximum(last, 0)] * (last >= 0)[:, None]
        idx, real = _last_items(histories, RECENT_ITEMS)
        recent = _mean_rows(text, idx, real)
        recent /= np.maximum(np.linalg.norm(recent, axis=1, keepdims=True), 1e-9)
        cols["text_sim_last"] = np.einsum("rcd,rd->rc", cand_vec, last_vec)
        cols["text_sim_recent"] = np.einsum("rcd,rd->rc", cand_vec, recent)
    if "text_sim_max" in want:
        idx, real = _last_items(histories, MAX_ITEMS)
        sims = np.matmul(cand_vec, text[idx].transpose(0, 2, 1))  # (rows, C, MAX_ITEMS)
        sims[~np.broadcast_to(real[:, None, :], sims.shape)] = -np.inf
        cols["text_sim_max"] = np.where(real.any(1)[:, None], sims.max(2), np.float32(-1.0))
    if want & set(SESSION_FEATURES):
        gap, recent = ((np.full(rows, np.nan), np.full(rows, np.nan)) if context is None else
                       (np.log1p(np.maximum(context[:, 0] - context[:, 1], 0.0) / DAY_S), context[:, 2]))
        cols["gap_prev_days"] = np.broadcast_to(gap[:, None], (rows, c))
        cols["events_last_day"] = np.broadcast_to(recent[:, None], (rows, c))
    if want & set(TIME_FEATURES):
        if anchor is None:
            cols.update({n: np.full((rows, c), np.nan) for n in TIME_FEATURES})
        else:
            cols["days_item_last"] = (events.last() - anchor) / DAY_S
            cols["days_item_first"] = (side.first_until(cands, anchor) - anchor) / DAY_S
            for d in LOCAL_WINDOWS_DAYS:
                cols[f"local_pop_{d}d"] = np.log1p(events.in_last(d))
            for n in TIME_FEATURES:
                cols[n] = np.where(known, cols[n], np.nan)
    x = np.empty((rows, c, len(names)), dtype=np.float32)
    for j, n in enumerate(names):
        x[:, :, j] = cols[n]
    return cands, x


def _softmax_rows(s: np.ndarray, temperature: float) -> np.ndarray:
    """Row softmax of ``s / temperature``; -inf entries get 0, an all -inf row is all 0."""
    z = s / temperature
    top = z.max(axis=1, keepdims=True)
    e = np.exp(z - np.where(np.isfinite(top), top, 0.0))
    return e / np.maximum(e.sum(axis=1, keepdims=True), 1e-300)


@dataclass
class CandidateRanker:
    """Fitted LambdaRank models over ``features`` (names from :data:`FEATURES`, in the
    boosters' column order), whose scores are averaged, and the item tables the features read."""

    boosters: list[Any]  # lightgbm.Booster, one or more
    side: ItemSide
    n_candidates: int = 100
    temperature: float = 1.0  # softmax temperature of the scores (fitted on held-out queries)
    features: tuple[str, ...] = feature_names(False, True)

    @property
    def predictors(self) -> list[TreePredictor]:
        """One :class:`TreePredictor` per booster (compiled on first use when large enough)."""
        if getattr(self, "_predictors", None) is None:
            self._predictors = [TreePredictor(b) for b in self.boosters]
        return self._predictors

    @property
    def use_time(self) -> bool:
        return bool(set(self.features) & set(TIME_FEATURES + SESSION_FEATURES))

    @property
    def use_text(self) -> bool:
        return bool(set(self.features) & set(TEXT_FEATURES))

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.features)

    def score(self, histories: Sequence[np.ndarray], p_item: np.ndarray, p_user: np.ndarray,
              p_linear: np.ndarray | None, anchor_ts: np.ndarray | None = None,
              last_item_tables: tuple[Any, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(candidates, ranker scores), both (rows, n_candidates); ``last_item_tables``: the
        (item-kNN similarity, linear weights or None) tables of the parts behind the p's."""
        cands, x = candidate_features(self.side, histories, p_item, p_user, p_linear,
                                      self.n_candidates, anchor_ts, self.features,
                                      last_item_tables)
        if not len(cands):
            return cands, np.zeros(cands.shape)
        flat = x.reshape(-1, x.shape[-1])
        # as many threads as torch was given (torch is idle meanwhile; a Spark worker sets 1):
        # the trees are most of the served path's time, and the scores do not depend on it
        import torch

        threads = max(1, torch.get_num_threads())
        s = np.mean([p.predict(flat, threads) for p in self.predictors],
                    axis=0).reshape(cands.shape)
        # ties (a booster of few trees scores many candidates alike) go by the candidate order
        s -= TIE_BREAK * np.arange(cands.shape[1]) / cands.shape[1]
        # a catalog smaller than n_candidates fills the list with history items: never ranked
        s[_history_cells(histories, cands, p_item.shape[1])] = -np.inf
        return cands, s

    def probs(self, histories: Sequence[np.ndarray], p_item: np.ndarray, p_user: np.ndarray,
              p_linear: np.ndarray | None, anchor_ts: np.ndarray | None = None,
              last_item_tables: tuple[Any, Any] | None = None) -> np.ndarray:
        """(rows, n_items) float32: softmax of the ranker scores over each row's candidates at
        ``temperature``; zero outside the candidates."""
        cands, s = self.score(histories, p_item, p_user, p_linear, anchor_ts, last_item_tables)
        out = np.zeros(p_item.shape, dtype=np.float32)
        if len(cands):
            np.put_along_axis(out, cands, _softmax_rows(s, self.temperature).astype(np.float32), 1)
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | Path) -> tuple[list[str], dict[str, Any]]:
        """Write the booster and item tables; returns (file names, params for blend.json)."""
        out = Path(out_dir)
        files = [_booster_file(k) for k in range(len(self.boosters))]
        for name, booster in zip(files, self.boosters, strict=True):
            (out / name).write_text(booster.model_to_string())
        np.savez_compressed(out / RANKER_SIDE_FILE, **self.side.to_arrays())
        params = {"n_candidates": self.n_candidates, "temperature": self.temperature,
                  "use_time": self.use_time, "use_text": self.use_text,
                  "features": list(self.features), "boosters": len(self.boosters)}
        return [*files, RANKER_SIDE_FILE], params

    @classmethod
    def load(cls, root: str | Path, params: dict[str, Any]) -> CandidateRanker:
        import lightgbm as lgb

        root = Path(root)
        files = [_booster_file(k) for k in range(int(params.get("boosters", 1)))]
        for name in (*files, RANKER_SIDE_FILE):
            if not (root / name).is_file():
                raise FileNotFoundError(
                    f"blend.json names a learned ranker but {root / name} is missing: the model "
                    "artifact is incomplete; re-register the run or restore the file")
        features = tuple(params.get("features") or (  # saved before the list was kept
            BASE_FEATURES + (TEXT_FEATURES if params.get("use_text") else ())
            + (TIME_FEATURES if params.get("use_time") else ())))
        unknown = sorted(set(features) - set(FEATURES))
        if unknown:
            raise RankerError(f"the saved ranker uses features {unknown} that this ecrec does not "
                              f"compute: retrain the model with this version")
        with np.load(root / RANKER_SIDE_FILE) as z:
            side = ItemSide(**{k: z[k] for k in z.files})
        boosters = [lgb.Booster(model_str=(root / name).read_text()) for name in files]
        for name, booster in zip(files, boosters, strict=True):
            if booster.num_feature() != len(features):
                raise RankerError(f"{root / name} has {booster.num_feature()} features, "
                                  f"blend.json names {len(features)}: the artifact is "
                                  "inconsistent; re-register the run")
        return cls(boosters, side, int(params["n_candidates"]), float(params["temperature"]),
                   features)


def _booster_file(k: int) -> str:
    """The k-th booster's file (the first keeps the single-booster name of older artifacts)."""
    return RANKER_FILE if k == 0 else RANKER_FILE.replace(".txt", f"_{k}.txt")


# ---------------------------------------------------------------------- fitting
def holdout_queries(train_seqs: Sequence[np.ndarray], train_times: Sequence[np.ndarray] | None
                    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray | None]:
    """Each training sequence without its last item, and the queries that item labels:
    (shortened sequences, query rows, labels, the histories' :func:`time_context` or None).
    A sequence of one item
    gives no query; a label already in its history is skipped (history items are never
    recommended)."""
    short = [np.asarray(s, dtype=np.int64)[:-1] for s in train_seqs]
    rows = np.asarray([u for u, s in enumerate(train_seqs)
                       if len(s) >= 2 and s[-1] not in s[:-1]], dtype=np.int64)
    labels = np.asarray([train_seqs[u][-1] for u in rows], dtype=np.int64)
    anchors = None
    if train_times is not None:
        anchors = time_context([np.asarray(train_times[u])[:len(train_seqs[u]) - 1] for u in rows])
    return short, rows, labels, anchors


def _ndcg10(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean NDCG@10 of one-hot label rows under ``scores`` (rows, C)."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    hit = np.take_along_axis(labels, order, 1)
    return float((hit / np.log2(np.arange(2, 2 + hit.shape[1]))).sum(1).mean()) if len(hit) else 0.0


def fit_ranker(train_seqs: Sequence[np.ndarray], n_items: int, brands: Sequence[str],
               categories: Sequence[str], serving_parts: tuple[Any, Any, Any | None],
               train_times: Sequence[np.ndarray] | None = None,
               config: RankerConfig = RankerConfig(), text_vectors: np.ndarray | None = None,
               ) -> tuple[CandidateRanker | None, dict[str, Any]]:
    """Fit the ranker on the training sequences' last items (see the module docstring).

    ``serving_parts`` = (item-kNN, user-kNN, linear or None) fitted on ``train_seqs``: only
    their settings are copied for the re-fit on the shortened sequences.
    Returns (None, report) when fewer than ``config.min_queries`` queries have their label
    among the candidates."""
    import lightgbm as lgb


    t0 = time.perf_counter()
    item_knn, user_knn, linear = serving_parts
    use_time, use_text = train_times is not None, text_vectors is not None
    names = feature_names(use_text, use_time)
    xs, ys = [], []
    n_queries = 0
    seqs, times = list(train_seqs), train_times
    for _ in range(config.holdout_positions):  # labels: the last, then the one before, ...
        short, rows, labels, anchors = holdout_queries(seqs, times)
        n_queries += len(rows)
        lin = None
        if linear is not None:
            try:
                lin = refitted(linear, short, n_items)
            except CatalogTooLargeError as exc:  # serving had one, so this is not expected
                log.warning("ranker without the linear model: %s", exc)
        parts = NeighbourhoodParts(refitted(item_knn, short, n_items),
                                   refitted(user_knn, short, n_items), lin)
        times = ([t[:len(s)] for s, t in zip(short, times, strict=True)]
                 if times is not None else None)
        side = ItemSide.build(short, n_items, brands, categories, times, text_vectors)
        for start in range(0, len(rows), 1000):
            sl = slice(start, start + 1000)
            hist = [short[u] for u in rows[sl]]
            cands, x = candidate_features(side, hist, *parts.distributions(hist),
                                          config.n_candidates,
                                          anchors[sl] if anchors is not None else None, names,
                                          parts.last_item_tables)
            y = (cands == labels[sl, None]).astype(np.float32)
            keep = y.sum(1) > 0
            xs.append(x[keep])
            ys.append(y[keep])
        seqs = short
    x_all = np.concatenate(xs) if xs else np.zeros((0, config.n_candidates, len(names)))
    y_all = np.concatenate(ys) if ys else np.zeros((0, config.n_candidates))
    report: dict[str, Any] = {"queries": int(n_queries), "labelled_in_candidates": int(len(y_all)),
                              "candidate_recall": float(len(y_all) / max(n_queries, 1)),
                              "use_time": use_time, "use_text": use_text,
                              "holdout_positions": config.holdout_positions}
    if len(y_all) < config.min_queries:
        report["skipped"] = (f"{len(y_all)} training queries with the label among the candidates, "
                             f"fewer than min_queries={config.min_queries}")
        log.info("no learned ranker: %s", report["skipped"])
        return None, report
    n_c, n_f = x_all.shape[1], x_all.shape[2]

    def dataset(mask: np.ndarray, ref: Any = None) -> Any:
        return lgb.Dataset(x_all[mask].reshape(-1, n_f), y_all[mask].reshape(-1),
                           group=np.full(int(mask.sum()), n_c), reference=ref,
                           feature_name=list(names),
                           free_raw_data=True)

    boosters, held_scores, held_labels, base_ndcg = [], [], [], []
    for k in range(config.boosters):  # each: its own held-out queries and bagging seed
        seed = config.seed + k
        rng = np.random.default_rng(seed)
        hold = np.zeros(len(y_all), dtype=bool)
        hold[rng.choice(len(y_all), max(1, int(config.holdout_fraction * len(y_all))),
                        replace=False)] = True
        train_set = dataset(~hold)
        params = {"objective": "lambdarank", "metric": "ndcg", "eval_at": [10],
                  "learning_rate": config.learning_rate, "num_leaves": config.num_leaves,
                  "min_data_in_leaf": config.min_data_in_leaf, "feature_fraction": 0.8,
                  "bagging_fraction": 0.8, "bagging_freq": 1, "lambdarank_truncation_level": 20,
                  "seed": seed, "deterministic": True, "verbose": -1,
                  "num_threads": config.threads}
        booster = lgb.train(params, train_set, num_boost_round=config.max_rounds,
                            valid_sets=[dataset(hold, train_set)],
                            callbacks=[lgb.early_stopping(config.early_stopping, verbose=False)])
        x_h, y_h = x_all[hold], y_all[hold]
        held_scores.append(booster.predict(x_h.reshape(-1, n_f), num_iteration=booster.best_iteration,
                                           num_threads=1).reshape(y_h.shape))
        held_labels.append(y_h)
        base_ndcg.append(_ndcg10(-np.arange(n_c)[None].repeat(len(y_h), 0).astype(float), y_h))
        if booster.best_iteration and booster.best_iteration < booster.current_iteration():
            booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
        boosters.append(booster)
    # one booster's scale, on each booster's own held-out queries: the averaged score's spread is
    # a little smaller, and the blend's weight (chosen on validation) absorbs the difference
    s_h, y_h = np.concatenate(held_scores), np.concatenate(held_labels)
    nll = {t: float(-np.log((_softmax_rows(s_h, t) * y_h).sum(1) + 1e-12).mean())
           for t in TEMPERATURE_GRID}
    temperature = min(nll, key=nll.__getitem__)
    serving_side = ItemSide.build(train_seqs, n_items, brands, categories, train_times, text_vectors)
    ranker = CandidateRanker(boosters, serving_side, config.n_candidates, temperature, names)
    gain = np.sum([b.feature_importance("gain") for b in boosters], axis=0)
    report.update({
        "rounds": int(np.mean([b.current_iteration() for b in boosters])),
        "rounds_per_booster": [int(b.current_iteration()) for b in boosters],
        "temperature": temperature,
        "holdout_ndcg@10_in_candidates": float(np.mean(
            [_ndcg10(s, y) for s, y in zip(held_scores, held_labels, strict=True)])),
        "holdout_base_ndcg@10_in_candidates": float(np.mean(base_ndcg)),
        "feature_gain": {n: round(float(g / max(gain.sum(), 1e-12)), 4)
                         for n, g in zip(ranker.feature_names, gain, strict=True)},
        "seconds": round(time.perf_counter() - t0, 1)})
    log.info("learned ranker: %d boosters of %d rounds on average on %d queries (candidate recall %.3f), held-out NDCG@10 "
             "within candidates %.4f vs %.4f for the fixed mix, %.0fs", len(boosters), report["rounds"],
             len(y_all), report["candidate_recall"], report["holdout_ndcg@10_in_candidates"],
             report["holdout_base_ndcg@10_in_candidates"], report["seconds"])
    return ranker, report
