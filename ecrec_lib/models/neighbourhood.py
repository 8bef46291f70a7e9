"""The served model's neighbourhood parts: item-kNN (co-occurrence), user-kNN (session
neighbours) and the linear item-item model (SLIST), each fitted on item-index training
sequences and scoring histories over the whole catalog; :class:`NeighbourhoodParts` holds one
fit of the three and gives their distributions (what the blend and the ranker read)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp
import torch


def item_counts(train_seqs: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """(n_items,) float64 interaction counts over the training sequences."""
    if n_items < 1:
        raise ValueError("n_items must be >= 1")
    flat = _checked_items(train_seqs, n_items)
    return np.bincount(flat, minlength=n_items).astype(np.float64)


def _checked_items(seqs: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """The sequences concatenated, after checking every item index lies in 0..n_items-1."""
    flat = _concat(seqs)
    if len(flat) and (flat.min() < 0 or flat.max() >= n_items):
        raise ValueError(f"training sequences refer to items outside 0..{n_items - 1}")
    return flat


def _concat(seqs: Sequence[np.ndarray]) -> np.ndarray:
    if not len(seqs):
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])


def windowed_pairs(seqs: Sequence[np.ndarray], window: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """For each distance d in 1..window: (d, earlier, later) item pairs d steps apart within a
    sequence (what item-kNN counts and the trainer's co-occurrence loss learns from)."""
    flat = _concat(seqs)
    owner = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    for d in range(1, window + 1):
        same = owner[:-d] == owner[d:]
        yield d, flat[:-d][same], flat[d:][same]


# Item-kNN settings tried on the validation targets; the best by NDCG@10 is used.
KNN_GRID: tuple[dict[str, float], ...] = tuple(
    {"window": w, "alpha": a, "decay": 0.6, "backward_weight": 0.5}
    for w in (3, 5)
    for a in (0.5, 0.7, 0.9)
)


def tune_item_knn(train_seqs: Sequence[np.ndarray], n_items: int,
                  ndcg_of: Callable[[ItemKNN], float]) -> tuple[float, ItemKNN]:
    """Fit every KNN_GRID setting and keep the one with the best ``ndcg_of(knn)`` (validation)."""
    best: tuple[float, ItemKNN] | None = None
    for params in KNN_GRID:
        knn = ItemKNN(**params).fit(train_seqs, n_items)
        score = ndcg_of(knn)
        if best is None or score > best[0]:
            best = (score, knn)
    assert best is not None
    return best


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
        pop = item_counts(train_seqs, n_items)
        rows, cols, vals = [], [], []
        for d, earlier, later in windowed_pairs(train_seqs, self.window):
            rows.append(earlier)
            cols.append(later)
            vals.append(np.full(len(earlier), 1.0 / d))
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
        return self.with_tables((left @ sim @ right).tocsr(), pop)

    def with_tables(self, sim: sp.spmatrix, popularity: np.ndarray) -> ItemKNN:
        """Set the fitted tables (from :meth:`fit`, or loaded from a saved model)."""
        self.sim = sim.tocsr().astype(np.float32)
        self.popularity = np.asarray(popularity, dtype=np.float64)
        self.n_items = self.sim.shape[0]
        self._prior = (1e-6 * self.popularity / max(self.popularity.max(), 1.0)).astype(np.float32)
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(len(histories), n_items) float32 scores."""
        if not hasattr(self, "sim"):
            raise RuntimeError("ItemKNN.score called before fit")
        if not len(histories):
            return np.zeros((0, self.n_items), dtype=np.float32)
        hmat = decayed_history_matrix(histories, self.n_items, self.decay,
                                      self.max_history).astype(np.float32)
        return np.asarray((hmat @ self.sim).todense()) + self._prior[None, :]


def decayed_history_matrix(histories: Sequence[np.ndarray], n_items: int, decay: float,
                           max_history: int) -> sp.csr_matrix:
    """(len(histories), n_items) CSR: each user's last ``max_history`` items weighted
    ``decay**age`` (age 0 = the newest item); a repeated item sums its weights."""
    rows, cols, vals = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for u, h in enumerate(histories):
        h = np.asarray(h, dtype=np.int64)[-max_history:]
        rows.append(np.full(len(h), u, dtype=np.int64))
        cols.append(h)
        vals.append(decay ** np.arange(len(h))[::-1].astype(np.float64))
    m = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(len(histories), n_items), dtype=np.float64)
    m.sum_duplicates()
    return m


def _row_normalized(m: sp.csr_matrix) -> sp.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    return (sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m).tocsr()


def _keep_top_k_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """The ``k`` largest stored values of each row (ties broken by column), the rest dropped."""
    m = m.tocsr()
    m.sum_duplicates()
    counts = np.diff(m.indptr)
    if counts.max(initial=0) <= k:
        return m
    row = np.repeat(np.arange(m.shape[0]), counts)
    order = np.lexsort((m.indices, -m.data, row))  # by row, then value descending
    rank = np.arange(len(order)) - m.indptr[row[order]]
    keep = order[rank < k]
    return sp.csr_matrix((m.data[keep], (row[keep], m.indices[keep])), shape=m.shape)


@dataclass
class UserKNN:
    """Session-neighbour kNN (user-based): a user's ``k`` most similar training users, by
    cosine between recency-weighted history vectors, vote for the items they interacted with.

    The query history weighs item ``i`` by ``decay**(age of i)`` over its last ``max_history``
    items; each training user is the (normalized) set of their last ``max_history`` items.
    Item-kNN counts pairs of items; this counts whole overlapping histories, so it sees
    "people who bought these few things also bought" -- a different and complementary signal.
    A user who is also a training user finds themselves as a neighbour: that only adds their
    own items, which ranking excludes as history.

    Cost: a query item reaches at most ``max_users_per_item`` training users (a fixed random
    sample of an item's buyers when it has more, as session-kNN implementations do), so
    scoring a batch stays bounded on catalogs with very popular items.
    """

    k: int = 200
    decay: float = 0.8
    max_history: int = 50
    max_users_per_item: int = 2000

    def fit(self, train_seqs: Sequence[np.ndarray], n_items: int) -> UserKNN:
        if self.k < 1 or self.max_users_per_item < 1:
            raise ValueError("k and max_users_per_item must be >= 1")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError("decay must be in (0, 1]")
        _checked_items(train_seqs, n_items)
        binary = decayed_history_matrix(train_seqs, n_items, 1.0, self.max_history)
        binary.data[:] = 1.0
        return self.with_table(binary)

    def with_table(self, users: sp.spmatrix) -> UserKNN:
        """Set the training users' binary (users, items) matrix (from :meth:`fit` or a saved model)."""
        self.users = sp.csr_matrix(users, dtype=np.float32)
        self.n_items = self.users.shape[1]
        index = _row_normalized(self.users).T.tocsr()  # item -> its users
        if np.diff(index.indptr).max(initial=0) > self.max_users_per_item:
            # random ranks in place of the values: the top ranks are a seeded uniform sample
            ranked = index.copy()
            ranked.data = np.random.default_rng(0).random(len(ranked.data))
            keep = _keep_top_k_per_row(ranked, self.max_users_per_item)
            index = index.multiply(keep.astype(bool)).tocsr()
        self._users_t = index
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(len(histories), n_items) float32 scores (0 where no neighbour has the item)."""
        if not hasattr(self, "users"):
            raise RuntimeError("UserKNN.score called before fit")
        if not len(histories):
            return np.zeros((0, self.n_items), dtype=np.float32)
        q = _row_normalized(decayed_history_matrix(histories, self.n_items, self.decay,
                                                   self.max_history)).astype(np.float32)
        sims = _keep_top_k_per_row(q @ self._users_t, self.k)
        return np.asarray((sims @ self.users).todense(), dtype=np.float32)


class CatalogTooLargeError(ValueError):
    """The catalog is too large for a model that holds a dense item x item system."""


@dataclass
class LinearTransitions:
    """Linear item-to-item model SLIST (Choi et al., "Session-aware Linear Item-Item Models for
    Session-based Recommendation", WWW 2021), fitted in closed form: a transition part (SLIT)
    and a whole-sequence part (SLIS) solved jointly.

    SLIT: every training position ``t`` of a sequence gives one least-squares row: the source
    is the ``max_history`` items before it, item ``s[t-d]`` weighted ``decay**(d-1)``, and the
    target is the item ``s[t]``. SLIS: every training sequence gives one row ``x`` (a count per
    item) that ``B`` reconstructs from itself, i.e. item-item similarity over whole sequences
    (EASE without its zero-diagonal constraint). The item x item matrix ``B`` minimizes
    ``slis_weight ||X - X B||^2 + (1 - slis_weight) ||T - S B||^2 + l2 ||B||^2``, i.e.
    ``B = (a X'X + (1-a) S'S + l2 I)^-1 (a X'X + (1-a) S'T)``; ``slis_weight = 0`` is SLIT
    alone. Self-weights ``B[i, i]`` are zeroed (a history item is never recommended). A user
    scores item ``j`` as ``sum_i w_i B[i, j]`` over their last ``max_history`` items, with the
    SLIT weights.

    Unlike item-kNN's normalized counts, the solve discounts items that are predictable from
    other history items, and its weights can be negative. On Amazon Beauty it beats item-kNN
    and the ID-only sequential model alone (BENCHMARKS.md, the linear model).

    Cost: three dense ``n_items`` x ``n_items`` float32 matrices and one Cholesky solve (~1-3
    min for 12k items on 2 cores), so catalogs above ``max_items`` are refused. The stored ``B``
    keeps each row's ``keep_per_row`` largest weights by absolute value (sparse: what serving
    and the model artifact hold).
    """

    decay: float = 0.8
    max_history: int = 10
    l2: float = 200.0
    slis_weight: float = 0.2
    keep_per_row: int = 100
    max_items: int = 20_000

    def fit(self, train_seqs: Sequence[np.ndarray], n_items: int) -> LinearTransitions:
        import scipy.linalg as sla

        if self.max_history < 1 or self.keep_per_row < 1:
            raise ValueError("max_history and keep_per_row must be >= 1")
        if not 0.0 < self.decay <= 1.0:
            raise ValueError("decay must be in (0, 1]")
        if not 0.0 <= self.slis_weight < 1.0:
            raise ValueError(f"slis_weight must be in [0, 1) (0: SLIT alone), got {self.slis_weight}")
        if self.l2 <= 0:
            raise ValueError(f"l2 must be > 0 (it makes the system solvable), got {self.l2}")
        if n_items > self.max_items:
            raise CatalogTooLargeError(
                f"LinearTransitions solves a dense {n_items} x {n_items} system; that is above "
                f"max_items={self.max_items} (memory ~{12 * n_items**2 / 2**30:.1f} GiB). Raise "
                "max_items on a machine with the memory, or use ItemKNN for this catalog")
        flat = _checked_items(train_seqs, n_items)
        n_pos = len(flat)
        owner = np.repeat(np.arange(len(train_seqs)), [len(s) for s in train_seqs])
        rows, cols, vals = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
        for d in range(1, self.max_history + 1):  # row = target position, column = item d before
            later = np.flatnonzero(owner[:-d] == owner[d:]) + d
            rows.append(later)
            cols.append(flat[later - d])
            vals.append(np.full(len(later), self.decay ** (d - 1)))
        src = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                            shape=(n_pos, n_items), dtype=np.float64)
        src.sum_duplicates()
        has_source = np.diff(src.indptr) > 0
        tgt = sp.csr_matrix((has_source.astype(np.float64), (np.arange(n_pos), flat)),
                            shape=(n_pos, n_items))
        a = np.float32(self.slis_weight)
        gram = (src.T @ src).toarray().astype(np.float32)
        rhs = (src.T @ tgt).toarray().astype(np.float32)
        if a > 0:
            seq_items = sp.csr_matrix((np.ones(n_pos), (owner, flat)),
                                      shape=(len(train_seqs), n_items))
            whole = (seq_items.T @ seq_items).toarray().astype(np.float32)
            gram *= 1 - a
            gram += a * whole
            rhs *= 1 - a
            rhs += a * whole
            del whole
        gram[np.diag_indices(n_items)] += np.float32(self.l2)
        factor = sla.cho_factor(gram, lower=False, overwrite_a=True, check_finite=False)
        del gram
        weights = sla.cho_solve(factor, rhs, overwrite_b=True, check_finite=False)
        np.fill_diagonal(weights, 0.0)
        return self.with_table(_keep_top_abs_per_row(weights, self.keep_per_row))

    def with_table(self, weights: sp.spmatrix) -> LinearTransitions:
        """Set the fitted (n_items, n_items) weight matrix (from :meth:`fit` or a saved model)."""
        self.weights = sp.csr_matrix(weights, dtype=np.float32)
        self.n_items = self.weights.shape[0]
        return self

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(len(histories), n_items) float32 scores (may be negative)."""
        if not hasattr(self, "weights"):
            raise RuntimeError("LinearTransitions.score called before fit")
        if not len(histories):
            return np.zeros((0, self.n_items), dtype=np.float32)
        h = decayed_history_matrix(histories, self.n_items, self.decay,
                                   self.max_history).astype(np.float32)
        return np.asarray((h @ self.weights).todense(), dtype=np.float32)


def _keep_top_abs_per_row(m: np.ndarray, k: int) -> sp.csr_matrix:
    """A dense matrix -> CSR with each row's ``k`` entries of largest absolute value (zeros
    dropped)."""
    n_rows, n_cols = m.shape
    k = min(k, n_cols)
    top = np.argpartition(-np.abs(m), k - 1, axis=1)[:, :k] if k < n_cols else \
        np.tile(np.arange(n_cols), (n_rows, 1))
    vals = np.take_along_axis(m, top, 1)
    out = sp.csr_matrix((vals.ravel(), (np.repeat(np.arange(n_rows), k), top.ravel())),
                        shape=m.shape, dtype=np.float32)
    out.eliminate_zeros()
    return out


def row_distribution(scores: Any, columns: np.ndarray | None = None, n_columns: int = 0
                     ) -> torch.Tensor:
    """Non-negative scores -> rows summing to 1 (all-zero rows stay zero), optionally laid out
    over ``n_columns`` columns (model index -> column, -1 = absent)."""
    k = torch.as_tensor(scores, dtype=torch.float32).clamp_min(0)
    if columns is not None:
        cols = np.asarray(columns, dtype=np.int64)
        present = np.flatnonzero(cols >= 0)
        out = torch.zeros(k.shape[0], n_columns, dtype=torch.float32)
        out[:, torch.as_tensor(cols[present])] = k[:, torch.as_tensor(present)]
        k = out
    return k / k.sum(1, keepdim=True).clamp_min(1e-12)


Part = TypeVar("Part", "ItemKNN", "UserKNN", "LinearTransitions")


def refitted(part: Part, seqs: Sequence[np.ndarray], n_items: int) -> Part:
    """A new ``part`` with the same settings, fitted on ``seqs`` (the ranker's label positions,
    the served refit with the validation targets)."""
    return type(part)(**asdict(part)).fit(seqs, n_items)


@dataclass
class NeighbourhoodParts:
    """Item-kNN, user-kNN and the linear model (None: left out) fitted on the same sequences."""

    item_knn: ItemKNN
    user_knn: UserKNN
    linear: LinearTransitions | None

    def distributions(self, histories: Sequence[np.ndarray]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(p_item, p_user, p_linear or None) over the model's items."""
        def dist(model: Any) -> np.ndarray | None:
            return None if model is None else row_distribution(model.score(histories)).numpy()

        p_item, p_user = dist(self.item_knn), dist(self.user_knn)
        assert p_item is not None and p_user is not None
        return p_item, p_user, dist(self.linear)

    @property
    def last_item_tables(self) -> tuple[Any, Any]:
        """(item-kNN similarity, linear weights or None): what the last-item features read."""
        return self.item_knn.sim, None if self.linear is None else self.linear.weights
