"""The out-of-fold linear prior the two-tower model can be trained against (prior_weight)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ecrec_lib.evaluation import leave_one_out
from ecrec_lib.evaluation.baselines import LinearTransitions, decayed_history_matrix
from ecrec_lib.training.data import TrainingData
from ecrec_lib.training.prior import (
    batch_prior,
    log_prior_rows,
    out_of_fold_prior,
    prefix_history_matrix,
)
from ecrec_lib.training.trainer import ModelConfig, _training_arrays, train_two_tower


def test_prefix_history_matrix_is_the_decayed_history_of_every_prefix() -> None:
    inp = np.array([[3, 1, 4, 1, 5, 0], [2, 7, 0, 0, 0, 0]])
    lengths = np.array([5, 2])
    got = prefix_history_matrix(inp, lengths, 8, decay=0.5, max_history=3).toarray()
    assert got.shape == (12, 8)
    for r in range(2):
        for j in range(6):
            row = got[r * 6 + j]
            if j >= lengths[r]:
                assert not row.any()  # padding positions have no history
                continue
            want = decayed_history_matrix([inp[r, : j + 1]], 8, 0.5, 3).toarray()[0]
            np.testing.assert_allclose(row, want)
    # the repeated item 1 at row 0, position 3: 1 (age 0) + 0.5**2 (age 2)
    assert got[3, 1] == pytest.approx(1.25)


def test_log_prior_rows_normalizes_positive_scores_and_keeps_the_largest() -> None:
    import scipy.sparse as sp

    scores = sp.csr_matrix(np.array([[2.0, -1.0, 1.0, 1.0], [0.0, -3.0, 0.0, 0.0]]))
    got = log_prior_rows(scores, eps=0.01, keep=2).toarray()
    # row 0: p = (0.5, 0, 0.25, 0.25) -> the two largest are kept (item 0 and one of the ties)
    assert got[0, 0] == pytest.approx(np.log1p(0.5 / 0.01), rel=1e-6)
    assert got[0, 1] == 0.0 and (got[0, 2:] > 0).sum() == 1
    assert not got[1].any()  # no positive score: no prior


def test_out_of_fold_prior_never_sees_its_own_users_sequences() -> None:
    rng = np.random.default_rng(0)
    n_items, folds = 30, 3
    seqs = [rng.integers(0, n_items, rng.integers(2, 9)) for _ in range(40)]
    arrays = _training_arrays(_data(seqs, n_items), seqs, 6)
    row_users = np.asarray([u for u, s in enumerate(seqs) if len(s) >= 2])
    proto = LinearTransitions(l2=5.0)
    prior = out_of_fold_prior(seqs, row_users, arrays.inp, arrays.lengths, n_items, 1e-3, 50,
                              folds, linear=proto)
    # Changing users of fold 0 leaves fold 0's priors unchanged, and changes fold 1's.
    changed = [rng.integers(0, n_items, len(s)) if u % folds == 0 else s for u, s in enumerate(seqs)]
    arrays2 = _training_arrays(_data(changed, n_items), changed, 6)
    prior2 = out_of_fold_prior(changed, row_users, arrays.inp, arrays.lengths, n_items, 1e-3, 50,
                               folds, linear=proto)
    rows_of = {f: np.flatnonzero(row_users % folds == f) for f in range(folds)}
    pos = {f: (rows_of[f][:, None] * 6 + np.arange(6)).ravel() for f in range(folds)}
    np.testing.assert_allclose(prior[pos[0]].toarray(), prior2[pos[0]].toarray())
    assert np.abs(prior[pos[1]].toarray() - prior2[pos[1]].toarray()).max() > 1e-3
    assert arrays2.inp.shape == arrays.inp.shape
    # and fold 1's rows are exactly a model fitted without fold 1
    fitted = LinearTransitions(l2=5.0).fit([s if u % folds != 1 else s[:0] for u, s in enumerate(seqs)],
                                           n_items)
    hist = prefix_history_matrix(arrays.inp, arrays.lengths, n_items, 0.8, 10)[pos[1]]
    want = log_prior_rows(hist @ fitted.weights, 1e-3, 50).toarray()
    np.testing.assert_allclose(prior[pos[1]].toarray(), want, rtol=1e-5, atol=1e-6)
    rows, cols, vals = batch_prior(prior, pos[1][:12], 2.0, torch.device("cpu"))
    dense = torch.zeros(12, n_items).index_put((rows, cols), vals)
    np.testing.assert_allclose(dense.numpy(), 2.0 * want[:12], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="prior_folds must be >= 2"):
        out_of_fold_prior(seqs, row_users, arrays.inp, arrays.lengths, n_items, 1e-3, 50, 1)


def _data(seqs: list[np.ndarray], n_items: int) -> TrainingData:
    return TrainingData(item_ids=[f"i{i}" for i in range(n_items)], item_text=[""] * n_items,
                        item_category=[""] * n_items, item_brand=[""] * n_items,
                        user_keys=[f"u{u}" for u in range(len(seqs))], sequences=seqs)


def test_training_against_the_prior_learns_and_validates_with_it() -> None:
    rng = np.random.default_rng(1)
    n_items = 40
    starts = rng.integers(0, n_items, 300)
    # next item = previous + 1: the linear prior alone already ranks the target first
    seqs = [(s + np.arange(rng.integers(4, 10))) % n_items for s in starts]
    train, valid, _ = leave_one_out(seqs)
    cfg = ModelConfig(use_text=False, use_side=False, epochs=2, dim=16, max_seq_len=8,
                      cooc_blend=False, num_threads=1, prior_weight=1.0, prior_folds=3)
    res = train_two_tower(_data(seqs, n_items), cfg, train, valid, progress=False)
    plain = train_two_tower(_data(seqs, n_items), cfg.replace(prior_weight=0.0), train, valid,
                            progress=False)
    # validation scores include the prior, which knows the pattern from the start
    assert res.history[0]["valid_ndcg@10"] > plain.history[0]["valid_ndcg@10"] + 0.1
    assert np.isfinite(res.history[-1]["loss"])
    with pytest.raises(ValueError, match="needs the full softmax"):
        train_two_tower(_data(seqs, n_items), cfg.replace(loss="sampled_softmax"), train, valid,
                        progress=False)
    with pytest.raises(ValueError, match="prior_weight"):
        ModelConfig(prior_weight=-1.0)
