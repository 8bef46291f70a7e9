"""A fixed linear prior for training the two-tower model as the residual of SLIST.

The served model is a product of experts: ``cos(u, i) / tau + w log(nb(u, i) + eps)``, with
``nb`` the neighbourhood distribution (:mod:`ecrec_lib.models.blend`). Fitted after training,
the two experts learn the same easy transitions twice. With ``ModelConfig.prior_weight > 0``
the trainer adds the linear model's term to the training logits instead, so the network's
softmax learns what the linear model misses.

The prior of a training position must not have seen that position's target, or it would be
overconfident in training and not at serving time: it comes **out of fold** — users are split
into ``folds`` groups, and each group's positions are scored by a
:class:`~ecrec_lib.evaluation.baselines.LinearTransitions` fitted on the other groups.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from ecrec_lib.models.neighbourhood import LinearTransitions, _keep_top_k_per_row

log = logging.getLogger(__name__)


def prefix_history_matrix(inp: np.ndarray, lengths: np.ndarray, n_items: int, decay: float,
                          max_history: int) -> sp.csr_matrix:
    """(rows * L, n_items) CSR: row ``r * L + j`` is the decayed history of position ``j`` of
    window row ``r`` (items ``inp[r, j - d + 1]`` weighted ``decay**(d-1)`` for
    ``d = 1..max_history``), as :func:`~ecrec_lib.evaluation.baselines.decayed_history_matrix`
    builds it for one history; rows of padding positions are empty."""
    n_rows, L = inp.shape
    j = np.arange(L)
    live = j[None, :] < lengths[:, None]  # (rows, L) real positions
    rows_parts, cols_parts, vals_parts = [], [], []
    for d in range(1, max_history + 1):
        ok = live & (j[None, :] - d + 1 >= 0)
        r, jj = np.nonzero(ok)
        rows_parts.append(r * L + jj)
        cols_parts.append(inp[r, jj - d + 1])
        vals_parts.append(np.full(len(r), decay ** (d - 1)))
    m = sp.csr_matrix((np.concatenate(vals_parts),
                       (np.concatenate(rows_parts), np.concatenate(cols_parts))),
                      shape=(n_rows * L, n_items), dtype=np.float64)
    m.sum_duplicates()
    return m


def log_prior_rows(scores: sp.csr_matrix, eps: float, keep: int) -> sp.csr_matrix:
    """Linear scores (sparse rows) -> ``log(p + eps) - log(eps)`` where ``p`` is the row's
    positive scores divided by their sum (the blend's ``_row_distribution``), keeping each
    row's ``keep`` largest; an item absent from a row has ``p = 0``, i.e. bias 0."""
    s = scores.tocsr().astype(np.float64)
    s.data = np.maximum(s.data, 0.0)
    s.eliminate_zeros()
    sums = np.asarray(s.sum(axis=1)).ravel()
    s = (sp.diags(1.0 / np.maximum(sums, 1e-12)) @ s).tocsr()
    s = _keep_top_k_per_row(s, keep)
    s.data = np.log1p(s.data / eps)
    return s.astype(np.float32)


def out_of_fold_prior(train_seqs: Sequence[np.ndarray], row_users: np.ndarray, inp: np.ndarray,
                      lengths: np.ndarray, n_items: int, eps: float, keep: int, folds: int,
                      linear: LinearTransitions | None = None) -> sp.csr_matrix:
    """(rows * L, n_items) CSR of training-position log-priors (:func:`log_prior_rows`), each
    from a linear model fitted without the position's user (user ``u`` is in fold ``u % folds``).
    ``row_users[r]`` is the user of window row ``r``; ``linear`` gives the model's settings."""
    if folds < 2:
        raise ValueError(f"prior_folds must be >= 2 (out-of-fold priors), got {folds}")
    proto = linear or LinearTransitions()
    hist = prefix_history_matrix(inp, lengths, n_items, proto.decay, proto.max_history).tocsr()
    L = inp.shape[1]
    n_users = len(train_seqs)
    user_fold = np.arange(n_users) % folds
    out_parts: list[sp.csr_matrix] = []
    order_parts: list[np.ndarray] = []
    for k in range(folds):
        fitted = dataclasses.replace(proto).fit(
            [s if user_fold[u] != k else s[:0] for u, s in enumerate(train_seqs)], n_items)
        rows = np.flatnonzero(user_fold[row_users] == k)
        pos = (rows[:, None] * L + np.arange(L)[None, :]).ravel()
        out_parts.append(log_prior_rows(hist[pos] @ fitted.weights, eps, keep))
        order_parts.append(pos)
        log.info("training prior: fold %d/%d scored %d window rows", k + 1, folds, len(rows))
    stacked = sp.vstack(out_parts).tocsr()
    inverse = np.empty(len(inp) * L, dtype=np.int64)
    inverse[np.concatenate(order_parts)] = np.arange(stacked.shape[0])
    return stacked[inverse]


def batch_prior(prior: sp.csr_matrix, pos_ids: np.ndarray, weight: float,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The prior entries of the logits rows ``pos_ids`` (flattened window positions, in logits
    row order): ``(rows, cols, weight * values)`` for ``catalog_cross_entropy``'s ``row_bias``."""
    sub = prior[pos_ids]
    counts = np.diff(sub.indptr)
    rows = np.repeat(np.arange(len(pos_ids)), counts)
    return (torch.as_tensor(rows, device=device), torch.as_tensor(sub.indices.astype(np.int64), device=device),
            torch.as_tensor(sub.data * np.float32(weight), device=device))
