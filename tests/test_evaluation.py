"""Evaluation: split, full-ranking metrics (literal examples + parity with the reference), baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ecrec_lib.evaluation import (
    EvalSet,
    evaluate_scores,
    evaluate_topk_lists,
    leave_one_out,
    popularity_scores,
    reference_evaluate,
)
from ecrec_lib.evaluation.metrics import top_k
from ecrec_lib.evaluation.split import cold_item_split, temporal_split
from ecrec_lib.models.neighbourhood import CatalogTooLargeError, ItemKNN, LinearTransitions, UserKNN


def _fixed(matrix: np.ndarray):
    return lambda pos: matrix[pos]


def _one(history: list[int], target: int) -> EvalSet:
    return EvalSet(np.array([0]), [np.array(history, dtype=np.int64)], np.array([target]))


# ---------------------------------------------------------------- split


def test_leave_one_out_splits_last_two_items():
    seqs = [np.array([1, 2, 3, 4]), np.array([5, 6]), np.array([7, 8, 9])]
    train, valid, test = leave_one_out(seqs)
    assert [t.tolist() for t in train] == [[1, 2], [5, 6], [7]]
    assert valid.users.tolist() == [0, 2] and test.users.tolist() == [0, 2]
    assert [h.tolist() for h in valid.histories] == [[1, 2], [7]]
    assert valid.targets.tolist() == [3, 8]
    assert [h.tolist() for h in test.histories] == [[1, 2, 3], [7, 8]]
    assert test.targets.tolist() == [4, 9]


def test_leave_one_out_does_not_alias_input():
    seqs = [np.array([1, 2, 3])]
    train, _, test = leave_one_out(seqs)
    train[0][0] = 99
    test.histories[0][0] = 98
    assert seqs[0].tolist() == [1, 2, 3]


def test_leave_one_out_rejects_2d_sequences():
    with pytest.raises(ValueError, match="1-D"):
        leave_one_out([np.zeros((2, 2), dtype=np.int64)])


def test_evalset_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        EvalSet(np.array([0, 1]), [np.array([1])], np.array([2]))


# ---------------------------------------------------------------- literal metric examples


def test_target_at_rank_three():
    # target 4 has two better items (0 and 1): 0-based rank 2, i.e. third place
    scores = np.array([[0.9, 0.8, 0.1, 0.2, 0.7, 0.0]])
    m = evaluate_scores(_fixed(scores), _one([], 4), 6, ks=(1, 2, 5))
    assert m["recall@5"] == 1.0 and m["recall@2"] == 0.0 and m["recall@1"] == 0.0
    assert m["ndcg@5"] == pytest.approx(1 / math.log2(4))
    assert m["mrr@5"] == pytest.approx(1 / 3)
    assert m["ndcg@2"] == 0.0 and m["mrr@2"] == 0.0


def test_history_items_are_masked_but_target_is_not():
    scores = np.array([[0.9, 0.8, 0.1, 0.2, 0.7, 0.0]])
    # history contains the two better items -> target becomes first
    m = evaluate_scores(_fixed(scores), _one([0, 1], 4), 6, ks=(1,))
    assert m["recall@1"] == 1.0 and m["ndcg@1"] == 1.0
    # a repeat purchase: the target is in the history but is still ranked
    m = evaluate_scores(_fixed(scores), _one([0, 4], 4), 6, ks=(1, 2))
    assert m["recall@1"] == 0.0 and m["recall@2"] == 1.0


def test_masking_does_not_mutate_caller_scores():
    scores = np.array([[0.9, 0.8, 0.1, 0.2, 0.7, 0.0]])
    evaluate_scores(_fixed(scores), _one([0, 1], 4), 6, ks=(1,))
    assert scores[0, 0] == 0.9


def test_ties_are_pessimistic_constant_scorer_gets_nothing():
    n = 30
    ev = EvalSet(np.arange(3), [np.array([1]), np.array([]), np.array([2, 3])], np.array([0, 5, 9]))
    m = evaluate_scores(lambda pos: np.zeros((len(pos), n)), ev, n, ks=(5, 10, 20))
    assert m["recall@20"] == 0.0 and m["ndcg@20"] == 0.0
    # one tie with the target: the target goes after it
    scores = np.array([[0.5, 0.5, 0.1]])
    m = evaluate_scores(_fixed(scores), _one([], 1), 3, ks=(1, 2))
    assert m["recall@1"] == 0.0 and m["recall@2"] == 1.0
    m = evaluate_scores(_fixed(scores), _one([], 0), 3, ks=(1, 2))
    assert m["recall@1"] == 0.0


def test_accepts_torch_scores_and_batches():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(7, 12))
    ev = EvalSet(np.arange(7), [np.array([i]) for i in range(7)], rng.integers(0, 12, 7))
    a = evaluate_scores(_fixed(scores), ev, 12, batch_size=3)
    b = evaluate_scores(lambda pos: torch.from_numpy(scores[pos]), ev, 12, batch_size=1024)
    assert a == pytest.approx(b)


def test_beyond_accuracy_literal():
    # 12 items, top-10 after masking item 11 from history: items 0..9
    scores = np.arange(12, 0, -1, dtype=float)[None, :]  # item 0 best
    ev = _one([10], 0)
    cats = ["a"] * 5 + ["b"] * 7
    pop = np.arange(12, dtype=float)
    m = evaluate_scores(_fixed(scores), ev, 12, ks=(10,), item_popularity=pop, item_categories=cats)
    assert m["coverage@10"] == pytest.approx(10 / 12)
    # 5 'a' + 5 'b' in the list: same-category ordered pairs = 2 * 5 * 4 = 40 of 90
    assert m["diversity@10"] == pytest.approx(1 - 40 / 90)
    # items 0..9 have popularity 0..9 of 12 distinct values: percentile i / 11
    assert m["popularity_bias@10"] == pytest.approx(np.mean(np.arange(10) / 11))
    total = pop.sum() + 12
    assert m["novelty@10"] == pytest.approx(
        np.mean([-math.log2((p + 1) / total) for p in range(10)])
    )
    # validation passes skip the top-10 lists: the same rank metrics, nothing else
    fast = evaluate_scores(_fixed(scores), ev, 12, ks=(10,), item_popularity=pop,
                           item_categories=cats, beyond_accuracy=False)
    assert fast == {k: v for k, v in m.items() if k in fast}
    assert set(fast) == {"recall@10", "ndcg@10", "mrr@10", "n_eval"}


def test_bad_inputs():
    ev = _one([], 1)
    with pytest.raises(ValueError, match="shape"):
        evaluate_scores(lambda pos: np.zeros((1, 4)), ev, 5)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(lambda pos: np.full((1, 5), np.nan), ev, 5)
    with pytest.raises(ValueError, match="targets"):
        evaluate_scores(lambda pos: np.zeros((1, 5)), _one([], 7), 5)
    with pytest.raises(ValueError, match="empty"):
        evaluate_scores(lambda pos: np.zeros((0, 5)), EvalSet(np.zeros(0), [], np.zeros(0, int)), 5)
    with pytest.raises(ValueError, match="item_categories"):
        evaluate_scores(lambda pos: np.zeros((1, 5)), ev, 5, item_categories=["a"])


# ---------------------------------------------------------------- parity with the reference


@pytest.mark.parametrize("seed", range(6))
def test_fast_matches_reference_on_random_inputs(seed: int):
    rng = np.random.default_rng(seed)
    n_items, n_rows = int(rng.integers(12, 40)), int(rng.integers(1, 25))
    # coarse integer scores -> many ties, including at the top-10 boundary
    scores = rng.integers(0, 4 if seed % 2 else 50, size=(n_rows, n_items)).astype(float)
    histories = [
        rng.choice(n_items, size=int(rng.integers(0, 8)), replace=False) for _ in range(n_rows)
    ]
    targets = rng.integers(0, n_items, size=n_rows)
    for r in range(0, n_rows, 3):  # some repeat purchases: target inside the history
        histories[r] = np.append(histories[r], targets[r])
    ev = EvalSet(np.arange(n_rows), histories, targets)
    pop = rng.integers(0, 5, size=n_items).astype(float)
    cats = rng.choice(["x", "y", "z"], size=n_items).tolist()
    fast = evaluate_scores(
        _fixed(scores),
        ev,
        n_items,
        ks=(1, 5, 10),
        batch_size=4,
        item_popularity=pop,
        item_categories=cats,
    )
    ref = reference_evaluate(scores, ev, ks=(1, 5, 10), item_popularity=pop, item_categories=cats)
    assert fast.keys() == ref.keys()
    for key in ref:
        assert fast[key] == pytest.approx(ref[key], abs=1e-12), key


def test_top_k_breaks_ties_by_index():
    s = np.array([[1.0, 3.0, 3.0, 0.0, 3.0, 2.0]])
    assert top_k(s, 2).tolist() == [[1, 2]]
    assert top_k(s, 4).tolist() == [[1, 2, 4, 5]]


# ---------------------------------------------------------------- top-K lists


def test_evaluate_topk_lists():
    recs = {"u1": ["a", "b", "c"], "u2": ["c", "a"], "u3": ["x"]}
    targets = {"u1": "c", "u2": "z", "u3": "x", "u4": "a"}  # u4 has no list -> miss
    m = evaluate_topk_lists(recs, targets, ks=(1, 3))
    assert m["recall@1"] == pytest.approx(1 / 4)
    assert m["recall@3"] == pytest.approx(2 / 4)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(4) + 1) / 4)
    assert m["mrr@3"] == pytest.approx((1 / 3 + 1) / 4)
    with pytest.raises(ValueError, match="empty"):
        evaluate_topk_lists(recs, {})


# ---------------------------------------------------------------- baselines


def test_popularity_scores():
    pop = popularity_scores([np.array([0, 1, 1]), np.array([1, 3])], 5)
    assert pop.tolist() == [1, 3, 0, 1, 0]
    with pytest.raises(ValueError, match="outside"):
        popularity_scores([np.array([7])], 5)


def test_item_knn_learns_a_sequential_pattern():
    # item i is always followed by item i + 10; popularity alone cannot tell
    rng = np.random.default_rng(1)
    seqs = []
    for _ in range(200):
        a = int(rng.integers(0, 10))
        b = int(rng.integers(0, 10))
        seqs.append(np.array([a, a + 10, b, b + 10]))
    train, valid, test = leave_one_out(seqs)
    knn = ItemKNN(window=2).fit(train, 20)
    m = evaluate_scores(lambda p: knn.score([test.histories[i] for i in p]), test, 20, ks=(1,))
    pop = popularity_scores(train, 20)
    mp = evaluate_scores(lambda p: np.tile(pop, (len(p), 1)), test, 20, ks=(1,))
    assert m["recall@1"] > 0.9
    assert mp["recall@1"] < 0.3


def test_item_knn_errors():
    with pytest.raises(RuntimeError, match="before fit"):
        ItemKNN().score([np.array([1])])
    with pytest.raises(ValueError, match="window"):
        ItemKNN(window=0).fit([np.array([1, 2])], 3)


def test_user_knn_votes_with_the_most_similar_histories():
    # users 0-2 share {0, 1} and went on to 2 (0, 1) or 3 (2); user 3 shares nothing with them
    train = [np.array([0, 1, 2]), np.array([1, 0, 2]), np.array([0, 1, 3]), np.array([4, 5, 6])]
    knn = UserKNN(k=2, decay=1.0).fit(train, 7)
    s = knn.score([np.array([0, 1])])[0]
    # the two nearest neighbours are users 0 and 1 (cosine 2/sqrt(6) each, user 2 ties them but
    # k=2 keeps two of the three); item 2 gets both votes, unrelated items none
    assert s[2] > s[3] and s[2] > 0
    assert s[4] == s[5] == s[6] == 0.0
    # with every neighbour the vote for item 3 appears; no overlap at all means no scores
    assert UserKNN(k=10, decay=1.0).fit(train, 7).score([np.array([0, 1])])[0][3] > 0
    assert not UserKNN().fit(train, 7).score([np.array([], dtype=np.int64)]).any()


def test_user_knn_weighs_recent_history_items_more():
    train = [np.array([0, 5]), np.array([1, 6])]
    knn = UserKNN(k=5, decay=0.5).fit(train, 7)
    s = knn.score([np.array([0, 1])])[0]  # item 1 is the newest: user 1's item 6 wins
    assert s[6] > s[5] > 0


def test_user_knn_caps_the_users_reached_per_item():
    train = [np.array([0, i]) for i in range(1, 41)]  # item 0 bought by 40 users
    capped = UserKNN(k=100, max_users_per_item=10).fit(train, 41)
    s = capped.score([np.array([0])])[0]
    assert (s[1:] > 0).sum() == 10  # only 10 of the 40 buyers of item 0 are reached
    assert (UserKNN(k=100).fit(train, 41).score([np.array([0])])[0][1:] > 0).sum() == 40


def test_user_knn_errors():
    with pytest.raises(RuntimeError, match="before fit"):
        UserKNN().score([np.array([1])])
    with pytest.raises(ValueError, match="max_users_per_item"):
        UserKNN(k=0).fit([np.array([1, 2])], 3)
    with pytest.raises(ValueError, match="decay"):
        UserKNN(decay=0.0).fit([np.array([1, 2])], 3)
    with pytest.raises(ValueError, match="outside"):
        UserKNN().fit([np.array([1, 5])], 3)


def _slist_by_hand(seqs: list[list[int]], n: int, decay: float, m: int, l2: float,
                   a: float) -> np.ndarray:
    """B = (a X'X + (1-a) S'S + l2 I)^-1 (a X'X + (1-a) S'T), one S/T row per position that has
    a predecessor and one X row (item counts) per sequence; the diagonal zeroed."""
    src, tgt = [], []
    for s in seqs:
        for t in range(1, len(s)):
            row = np.zeros(n)
            for d in range(1, min(m, t) + 1):
                row[s[t - d]] += decay ** (d - 1)
            src.append(row)
            tgt.append(np.eye(n)[s[t]])
    S, T = np.array(src), np.array(tgt)
    X = np.array([np.bincount(s, minlength=n) for s in seqs], dtype=float)
    B = np.linalg.solve(a * X.T @ X + (1 - a) * S.T @ S + l2 * np.eye(n),
                        a * X.T @ X + (1 - a) * S.T @ T)
    np.fill_diagonal(B, 0.0)
    return B


@pytest.mark.parametrize("slis_weight", [0.0, 0.3])
def test_linear_transitions_is_the_closed_form_least_squares_solution(slis_weight: float):
    seqs = [[0, 1, 2, 3], [1, 2, 4], [0, 2, 3, 4, 1], [4, 0], [3]]
    n = 5
    lt = LinearTransitions(decay=0.5, max_history=2, l2=0.7, slis_weight=slis_weight,
                           keep_per_row=n).fit([np.array(s) for s in seqs], n)
    expected = _slist_by_hand(seqs, n, 0.5, 2, 0.7, slis_weight)
    np.testing.assert_allclose(lt.weights.toarray(), expected, rtol=1e-4, atol=1e-5)
    # scoring weighs the newest history item 1, the one before it decay, older ones not at all
    h = np.array([3, 0, 2])
    want = expected[2] + 0.5 * expected[0]
    np.testing.assert_allclose(lt.score([h])[0], want, rtol=1e-4, atol=1e-5)
    assert lt.score([]).shape == (0, n)


def test_linear_transitions_learns_directed_transitions_and_keeps_the_largest_weights():
    rng = np.random.default_rng(0)
    seqs = [np.array([a, a + 10]) for a in rng.integers(0, 10, 300)]  # a is followed by a + 10
    lt = LinearTransitions(l2=1.0, slis_weight=0.0).fit(seqs, 20)
    s = lt.score([np.array([3])])[0]
    assert int(np.argmax(s)) == 13
    assert lt.score([np.array([13])])[0].max() < 1e-6  # nothing follows a second item
    pruned = LinearTransitions(l2=1.0, slis_weight=0.0, keep_per_row=2).fit(seqs, 20)
    assert np.diff(pruned.weights.indptr).max() <= 2
    assert int(np.argmax(pruned.score([np.array([3])])[0])) == 13
    # the whole-sequence (SLIS) part is symmetric: it also links a second item to its first
    both = LinearTransitions(l2=1.0, slis_weight=0.3).fit(seqs, 20)
    assert int(np.argmax(both.score([np.array([3])])[0])) == 13
    assert int(np.argmax(both.score([np.array([13])])[0])) == 3
    assert both.weights[13, 13] == 0.0  # self-weights are zeroed


def test_linear_transitions_errors():
    with pytest.raises(RuntimeError, match="before fit"):
        LinearTransitions().score([np.array([1])])
    with pytest.raises(ValueError, match="l2"):
        LinearTransitions(l2=0.0).fit([np.array([1, 2])], 3)
    with pytest.raises(ValueError, match="decay"):
        LinearTransitions(decay=1.5).fit([np.array([1, 2])], 3)
    with pytest.raises(ValueError, match="slis_weight"):
        LinearTransitions(slis_weight=1.0).fit([np.array([1, 2])], 3)
    with pytest.raises(ValueError, match="outside"):
        LinearTransitions().fit([np.array([1, 5])], 3)
    with pytest.raises(CatalogTooLargeError, match="max_items=10.*ItemKNN"):
        LinearTransitions(max_items=10).fit([np.array([1, 2])], 11)


def test_evaluate_scores_ranks_float32_as_float32_on_a_copy():
    import torch

    rng = np.random.default_rng(5)
    scores32 = rng.normal(size=(6, 9)).astype(np.float32)
    scores32[0, 3] = scores32[0, 4]  # a tie: pessimistic in both precisions
    ev = EvalSet(np.arange(6), [np.array([1, 2]), np.array([0]), np.array([], dtype=np.int64),
                               np.array([5]), np.array([7, 8]), np.array([3])],
                 np.array([3, 4, 5, 6, 0, 1]))
    cached = torch.as_tensor(scores32.copy())
    as32 = evaluate_scores(lambda p: cached[p] if len(p) < 6 else cached, ev, 9, ks=(1, 5),
                           batch_size=6)
    as64 = evaluate_scores(lambda p: scores32.astype(np.float64)[p], ev, 9, ks=(1, 5))
    assert as32 == as64
    assert torch.equal(cached, torch.as_tensor(scores32))  # history masking did not touch it


# ---------------------------------------------------------------- temporal and cold-item splits


def test_temporal_split_tests_the_first_item_after_the_cut_and_trains_before_it():
    seqs = [np.array([0, 1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8]), np.array([9])]
    times = [np.array([1, 2, 5, 9]), np.array([3, 8]), np.array([6, 7, 10]), np.array([2])]
    train, valid, test, cuts = temporal_split(seqs, times, test_cut=7, valid_cut=4)
    assert cuts == {"valid_cut": 4, "test_cut": 7}
    # test: users with an event after 7, on their first item after it, history up to 7
    assert test.users.tolist() == [0, 1, 2]
    assert test.targets.tolist() == [3, 5, 8]
    assert [h.tolist() for h in test.histories] == [[0, 1, 2], [4], [6, 7]]
    # validation: users active in (4, 7], first item after 4, history up to 4
    assert valid.users.tolist() == [0, 2] and valid.targets.tolist() == [2, 6]
    assert [h.tolist() for h in valid.histories] == [[0, 1], []]
    # training: every event up to the validation cut, one entry per user
    assert [s.tolist() for s in train] == [[0, 1], [4], [], [9]]
    # no leakage: no training event after the validation cut, so none at or after a target
    flat_times = [t[:len(s)] for s, t in zip(train, times, strict=True)]
    assert all((t <= 4).all() for t in flat_times)


def test_temporal_split_default_cuts_leave_the_last_tenth_after_them():
    rng = np.random.default_rng(0)
    times = [np.sort(rng.integers(0, 1000, 10)) for _ in range(50)]
    seqs = [rng.integers(0, 30, 10) for _ in range(50)]
    train, valid, test, cuts = temporal_split(seqs, times)
    flat = np.concatenate(times)
    assert (flat > cuts["test_cut"]).mean() == pytest.approx(0.1, abs=0.02)
    before = flat[flat <= cuts["test_cut"]]
    assert (before > cuts["valid_cut"]).mean() == pytest.approx(0.1, abs=0.02)
    assert sum(len(s) for s in train) == (flat <= cuts["valid_cut"]).sum()
    assert len(test) and len(valid)
    # a sequence keeps its order: an out-of-order time after the cut ends the history there
    tr, _, te, _ = temporal_split([np.array([0, 1, 2]), np.array([3, 4])],
                                  [np.array([1, 9, 2]), np.array([1, 2])], test_cut=5, valid_cut=3)
    assert tr[0].tolist() == [0] and te.histories[0].tolist() == [0] and te.targets.tolist() == [1]
    with pytest.raises(ValueError, match="must be before the test cut"):
        temporal_split(seqs, times, test_cut=500, valid_cut=600)


def test_cold_item_split_keeps_cold_items_out_of_training():
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 40, int(rng.integers(2, 8))) for _ in range(300)]
    train, valid, test, cold = cold_item_split(seqs, 40, fraction=0.1, seed=3)
    assert len(cold) == 4 and len(test) > 0 and len(valid) > 0
    in_train = np.concatenate(train)
    assert not np.isin(cold, in_train).any()  # cold items absent from training entirely
    assert np.isin(test.targets, cold).all()  # test users' last item is a cold one
    for u, h, t in zip(test.users, test.histories, test.targets, strict=True):
        assert h.tolist() == seqs[u][:-1].tolist() and t == seqs[u][-1]
    # validation targets are warm and were taken out of their user's training sequence
    assert not np.isin(valid.targets, cold).any()
    for u, t in zip(valid.users, valid.targets, strict=True):
        warm = [i for i in seqs[u] if i not in set(cold.tolist())]
        assert train[u].tolist() == warm[:-1] and t == warm[-1]
    again = cold_item_split(seqs, 40, fraction=0.1, seed=3)[3]
    assert again.tolist() == cold.tolist()  # seeded
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        cold_item_split(seqs, 40, fraction=0.0)


def test_eval_set_sample_keeps_rows_whole_in_their_order() -> None:
    ev = EvalSet(np.arange(10) * 2, [np.array([i]) for i in range(10)], np.arange(10) + 100)
    assert ev.sample(0, np.random.default_rng(0)) is ev and ev.sample(10, np.random.default_rng(0)) is ev
    s = ev.sample(4, np.random.default_rng(5))
    assert len(s) == 4 and np.all(np.diff(s.users) > 0)
    assert np.array_equal(s.targets, s.users // 2 + 100)
    assert [int(h[0]) for h in s.histories] == (s.users // 2).tolist()
    assert np.array_equal(ev.sample(4, np.random.default_rng(5)).users, s.users)


def test_validation_targets_return_to_training_and_test_targets_stay_out() -> None:
    from ecrec_lib.evaluation.split import with_validation_targets

    rng = np.random.default_rng(0)
    seqs = [rng.choice(40, size=rng.integers(1, 9), replace=False) for _ in range(30)]
    train, valid, test = leave_one_out(seqs)
    refit = with_validation_targets(train, valid)
    for r, u in enumerate(test.users):  # loo: the test history, i.e. everything but the target
        assert np.array_equal(refit[u], test.histories[r])
        assert np.array_equal(refit[u], seqs[u][:-1])
    short = set(range(len(seqs))) - set(test.users.tolist())
    assert short and all(np.array_equal(refit[u], train[u]) for u in short)
    assert all(len(t) == len(s) - 2 for t, s in zip(train, seqs, strict=True) if len(s) >= 3)  # unchanged

    times = [np.arange(len(s)) * 10 + u for u, s in enumerate(seqs)]
    tr, va, te, _ = temporal_split(seqs, times, test_cut=45, valid_cut=25)
    t_refit = with_validation_targets(tr, va)
    for u, s in enumerate(seqs):  # a prefix ending at the first item after the validation cut
        assert np.array_equal(t_refit[u], s[:len(t_refit[u])])
        assert np.all(times[u][:len(t_refit[u])] <= 45)
    tr, va, te, cold = cold_item_split(seqs, 40, fraction=0.2, seed=1)
    assert not np.isin(np.concatenate(with_validation_targets(tr, va)), cold).any()

    moved = EvalSet(valid.users, [h[:-1] for h in valid.histories], valid.targets)
    with pytest.raises(ValueError, match="does not continue that user's training sequence"):
        with_validation_targets(train, moved)
    twice = valid.subset(np.array([0, 0]))
    with pytest.raises(ValueError, match="repeat a user"):
        with_validation_targets(train, twice)
