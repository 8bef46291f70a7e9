"""Learned candidate ranker: item tables, holdout queries, features, fitting on a planted signal,
and the ranker inside the blend (mixing, artifact round trip, batch scoring)."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from ecrec_lib.models.blend import (
    CoocBlend,
    _mix_neighbourhoods,
    fit_blend,
    fit_neighbourhood,
)
from ecrec_lib.models.neighbourhood import ItemKNN, LinearTransitions, UserKNN, row_distribution
from ecrec_lib.models.ranker import (
    FEATURES,
    TEXT_FEATURES,
    TEXT_MAX_FEATURES,
    ItemSide,
    RankerConfig,
    RankerError,
    candidate_features,
    feature_names,
    fit_ranker,
    holdout_queries,
    time_context,
)

DAY = 86_400
# one booster, early patience: the tests check behaviour, not the last bit of quality
FAST = RankerConfig(n_candidates=40, min_queries=50, threads=1, boosters=1, early_stopping=30)


def test_item_side_counts_codes_and_local_popularity() -> None:
    seqs = [np.array([0, 1, 1]), np.array([2, 1])]
    times = [np.array([0, 10 * DAY, 40 * DAY]), np.array([5 * DAY, 12 * DAY])]
    side = ItemSide.build(seqs, 4, ["a", "b", "a", ""], ["x", "", "x", "y"], times)
    assert side.popularity.tolist() == [1, 3, 1, 0]
    assert side.brand.tolist() == [0, 1, 0, -1] and side.category.tolist() == [0, -1, 0, 1]
    assert side.first_ts[1] == 10 * DAY and side.last_ts[1] == 40 * DAY and np.isnan(side.first_ts[3])
    # item 1 has events on days 10, 12, 40: only day 10 is in the 7 (or 30) days up to day 11;
    # days 12 and 40 are after that "now" and never count
    got = side.local_popularity(np.array([[1, 1, 3]]), np.array([[11 * DAY] * 3]), 7)
    assert got.tolist() == [[1, 1, 0]]
    assert side.local_popularity(np.array([1]), np.array([11 * DAY]), 30).tolist() == [1]
    assert side.local_popularity(np.array([1]), np.array([40 * DAY]), 28).tolist() == [2]
    assert side.count_until(np.array([1, 1, 0]), np.array([9 * DAY, 12 * DAY, 0])).tolist() == [0, 2, 1]
    last = side.last_until(np.array([1, 1, 3]), np.array([11 * DAY, 50 * DAY, 50 * DAY]))
    assert last[:2].tolist() == [10 * DAY, 40 * DAY] and np.isnan(last[2])
    assert not ItemSide.build(seqs, 4, ["a"] * 4, ["x"] * 4).has_time
    with pytest.raises(RankerError, match="one entry per item"):
        ItemSide.build(seqs, 4, ["a"], ["x"] * 4)
    with pytest.raises(RankerError, match="one time per training item"):
        ItemSide.build(seqs, 4, ["a"] * 4, ["x"] * 4, [np.array([0]), np.array([0, 1])])


def test_holdout_queries_label_each_last_training_item() -> None:
    seqs = [np.array([0, 1, 2]), np.array([3]), np.array([4, 5, 4]), np.array([6, 7])]
    times = [np.array([1, 2, 3]), np.array([1]), np.array([1, 2, 3]), np.array([5, 9])]
    short, rows, labels, anchors = holdout_queries(seqs, times)
    assert [s.tolist() for s in short] == [[0, 1], [], [4, 5], [6]]
    # one-item sequence: no query; label 4 already in its history: skipped
    assert rows.tolist() == [0, 3] and labels.tolist() == [2, 7]
    # each history's time context: its last time, the one before, its events in the last day
    assert anchors[:, 0].tolist() == [2, 5] and anchors[0, 1:].tolist() == [1, 2]
    assert np.isnan(anchors[1, 1]) and anchors[1, 2] == 1  # a one-item history: no previous time
    assert holdout_queries(seqs, None)[3] is None


def test_time_context_and_session_features_read_the_users_pace() -> None:
    t0 = 1_700_000_000.0
    ctx = time_context([np.array([t0, t0 + 3 * DAY, t0 + 3.5 * DAY, t0 + 3.9 * DAY]),
                        np.array([t0]), np.array([]), None])
    assert ctx[0].tolist() == [t0 + 3.9 * DAY, t0 + 3.5 * DAY, 3]  # 3 events within the last day
    assert ctx[1, 0] == t0 and np.isnan(ctx[1, 1]) and ctx[1, 2] == 1
    assert np.isnan(ctx[2:]).all()  # no times: every entry missing
    n = 5
    side = ItemSide.build([np.arange(n)], n, ["a"] * n, ["x"] * n, [t0 + np.arange(n) * DAY])
    p = [np.full((2, n), 1 / n, np.float32)] * 3
    names = feature_names(False, True)
    hist = [np.array([0, 1]), np.array([2])]
    tables = (sp.csr_matrix((n, n), dtype=np.float32), None)
    _, x = candidate_features(side, hist, *p, 10, ctx[:2], names, tables)
    f = {name: x[..., i] for i, name in enumerate(names)}
    assert np.allclose(f["gap_prev_days"][0], np.log1p(0.4)) and np.isnan(f["gap_prev_days"][1]).all()
    assert (f["events_last_day"][0] == 3).all() and (f["events_last_day"][1] == 1).all()
    # a plain array of last times still scores: the time features are there, the pace missing
    _, x1 = candidate_features(side, hist, *p, 10, ctx[:2, 0], names, tables)
    assert np.array_equal(x1[..., names.index("days_item_last")], f["days_item_last"], equal_nan=True)
    assert np.isnan(x1[..., names.index("gap_prev_days")]).all()


def test_candidate_features_exclude_history_and_match_brand() -> None:
    n = 6
    side = ItemSide.build([np.arange(n)], n, ["a", "a", "b", "b", "", "a"], ["x"] * n,
                          [np.arange(n) * DAY])
    rng = np.random.default_rng(0)
    p = [rng.dirichlet(np.ones(n), size=2).astype(np.float32) for _ in range(3)]
    hist = [np.array([0, 2]), np.array([5])]
    names = feature_names(False, True)
    item_sim = sp.csr_matrix(np.arange(n * n, dtype=np.float32).reshape(n, n))  # sim[i, j] = 6i + j
    tables = (item_sim, -item_sim)
    cands, x = candidate_features(side, hist, *p, 10, np.array([3.0 * DAY, np.nan]), names, tables)
    assert cands.shape == (2, 6) and x.shape == (2, 6, len(names))
    # history items go last (score -inf): the first n - len(history) are the others
    assert set(cands[0, :4].tolist()) == {1, 3, 4, 5} and set(cands[1, :5].tolist()) == {0, 1, 2, 3, 4}
    f = {name: x[..., i] for i, name in enumerate(feature_names(False, True))}
    last_brand_b = {int(c): v for c, v in zip(cands[0], f["same_brand_last"][0], strict=True)}
    assert last_brand_b[3] == 1 and last_brand_b[1] == 0 and last_brand_b[4] == 0  # unknown != b
    share = {int(c): v for c, v in zip(cands[0], f["brand_share"][0], strict=True)}
    assert share[1] == pytest.approx(0.5) and share[3] == pytest.approx(0.5) and share[4] == 0
    # the user without an anchor time gets missing time features, not made-up ones
    assert np.isnan(f["days_item_last"][1]).all()
    # item i's one event is on day i: items seen by now (day 3) have a last event, later ones none
    assert (np.isfinite(f["days_item_last"][0]) == (cands[0] <= 3)).all()
    days = {int(c): v for c, v in zip(cands[0], f["days_item_first"][0], strict=True)}
    assert days[1] == pytest.approx(-2.0)  # item 1 first seen on day 1, the user's now is day 3
    assert np.isnan(days[5])  # item 5's first event (day 5) is after now: not seen yet
    # the last item's own row of each item x item table: user 0's last item is 2, user 1's is 5
    assert f["sim_item_last"][0].tolist() == (12 + cands[0]).tolist()
    assert f["sim_linear_last"][1].tolist() == (-(30 + cands[1])).tolist()
    # brand popularity up to now (day 3): brand a = items 0, 1, 5 on days 0, 1, 5 -> 2 events;
    # unknown brand: missing; the user without a time context counts all 3
    bpop = {int(c): v for c, v in zip(cands[0], f["log_brand_popularity"][0], strict=True)}
    assert bpop[1] == pytest.approx(np.log1p(2)) and np.isnan(bpop[4])
    bpop1 = {int(c): v for c, v in zip(cands[1], f["log_brand_popularity"][1], strict=True)}
    assert bpop1[1] == pytest.approx(np.log1p(3))
    no_linear = candidate_features(side, hist, *p, 10, None, names, (item_sim, None))[1]
    assert (no_linear[..., names.index("sim_linear_last")] == 0).all()
    assert candidate_features(side, hist, *p, 10, None, ("p_item", "base_rank"))[1].shape[-1] == 2
    with pytest.raises(RankerError, match="pass last_item_tables"):
        candidate_features(side, hist, *p, 10, None, names)
    with pytest.raises(RankerError, match="item tables have none"):
        candidate_features(side, hist, *p, 10, None, TEXT_FEATURES)
    with pytest.raises(RankerError, match="unknown ranker features"):
        candidate_features(side, hist, *p, 10, None, ("p_item", "clairvoyance"))


def test_text_features_are_cosines_to_the_last_and_recent_items() -> None:
    n = 4
    vecs = np.array([[1, 0], [0, 2], [3, 3], [0, 0]], dtype=np.float32)  # item 3: no text
    side = ItemSide.build([np.arange(n)], n, [""] * n, [""] * n, text_vectors=vecs)
    p = [np.full((1, n), 0.25, np.float32)] * 3
    cands, x = candidate_features(side, [np.array([0, 1])], *p, 10, None, TEXT_FEATURES)
    f = {name: dict(zip(cands[0].tolist(), x[0, :, i].tolist(), strict=True))
         for i, name in enumerate(TEXT_FEATURES)}
    assert cands[0, 2:].tolist() in ([0, 1], [1, 0])  # a tiny catalog: history items go last
    assert f["text_sim_last"][2] == pytest.approx(np.sqrt(0.5), abs=1e-3)  # vs item 1 (0, 1)
    assert f["text_sim_last"][3] == 0.0
    assert f["text_sim_recent"][2] == pytest.approx(1.0, abs=1e-3)  # mean of (1,0),(0,1)
    with pytest.raises(RankerError, match="text_vectors must be"):
        ItemSide.build([np.arange(n)], n, [""] * n, [""] * n, text_vectors=vecs[:3])
    # the highest cosine to any recent history item: item 2 is (1, 1) / sqrt 2 from both
    cands, x = candidate_features(side, [np.array([0, 1]), np.array([2])], *(
        np.full((2, n), 0.25, np.float32) for _ in range(3)), 10, None, TEXT_MAX_FEATURES)
    best = dict(zip(cands[0].tolist(), x[0, :, 0].tolist(), strict=True))
    assert best[2] == pytest.approx(np.sqrt(0.5), abs=1e-3) and best[3] == 0.0
    assert dict(zip(cands[1].tolist(), x[1, :, 0].tolist(), strict=True))[0] == pytest.approx(
        np.sqrt(0.5), abs=1e-3)


def _brand_walk(n_users: int = 500, n_items: int = 200, n_brands: int = 10, length: int = 7,
                seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Users mostly move to a random item of their last item's brand: too sparse for
    co-occurrence counts over 200 items, obvious to a brand feature."""
    rng = np.random.default_rng(seed)
    brand_of = np.arange(n_items) % n_brands
    seqs, times = [], []
    for _ in range(n_users):
        s = [int(rng.integers(n_items))]
        while len(s) < length:
            new = ~np.isin(np.arange(n_items), s)
            if rng.random() < 0.85:
                new &= brand_of == brand_of[s[-1]]
            s.append(int(rng.choice(np.flatnonzero(new))))
        seqs.append(np.asarray(s, dtype=np.int64))
        times.append((1_700_000_000 + np.arange(length) * DAY).astype(np.int64))
    return seqs, times, [f"b{b}" for b in brand_of]


def _parts(seqs: list[np.ndarray], n: int) -> tuple[ItemKNN, UserKNN, LinearTransitions]:
    return (ItemKNN().fit(seqs, n), UserKNN(k=20).fit(seqs, n),
            LinearTransitions(l2=20.0, keep_per_row=50).fit(seqs, n))


def test_fit_ranker_learns_a_signal_the_fixed_mix_misses() -> None:
    seqs, times, brands = _brand_walk()
    n = len(brands)
    cats = ["c"] * n
    ranker, report = fit_ranker(seqs, n, brands, cats, _parts(seqs, n), times,
                                FAST)
    # two holdout positions by default: each sequence's last and second-to-last training item
    assert ranker is not None and ranker.use_time and report["queries"] == 2 * len(seqs)
    # the brand walk caps what anyone can learn (20 same-brand items to pick from): the ranker
    # gains about 0.05 NDCG@10 within the candidates, a ranker that learned nothing gains 0
    assert report["holdout_ndcg@10_in_candidates"] > report["holdout_base_ndcg@10_in_candidates"] + 0.03
    assert max(report["feature_gain"], key=report["feature_gain"].get) in (
        "brand_share", "same_brand_last")
    # probs: a distribution over each row's candidates, zero on history items
    parts = _parts(seqs, n)
    hist = [s[:3] for s in seqs[:20]]
    dists = [row_distribution(m.score(hist)).numpy() for m in parts]
    tables = (parts[0].sim, parts[2].weights)
    p = ranker.probs(hist, *dists, np.full(20, 1_700_000_000 + 2.0 * DAY), tables)
    assert p.shape == (20, n) and np.allclose(p.sum(1), 1.0, atol=1e-5)
    assert ((p > 0).sum(1) == 40).all()
    assert all(p[r, h].sum() == 0 for r, h in enumerate(hist))
    # no times: a ranker without the time features
    plain, _ = fit_ranker(seqs, n, brands, cats, parts, None,
                          FAST)
    assert plain is not None and not plain.use_time and plain.feature_names == feature_names(False, False)
    # text vectors (one random unit vector per brand): the text features join and are used
    rng = np.random.default_rng(1)
    brand_vec = rng.normal(size=(10, 8))
    vecs = brand_vec[np.arange(n) % 10] + 0.1 * rng.normal(size=(n, 8))
    texted, rep = fit_ranker(seqs, n, brands, cats, parts, times,
                             FAST, vecs)
    assert texted is not None and texted.use_text and rep["use_text"]
    assert texted.feature_names == feature_names(True, True)
    assert sum(rep["feature_gain"][k] for k in ("text_sim_last", "text_sim_recent")) > 0
    # boosters are averaged, each reported
    two, rep = fit_ranker(seqs, n, brands, cats, parts, times,
                          RankerConfig(n_candidates=40, min_queries=50, threads=1, boosters=2,
                                       early_stopping=30), vecs)
    assert two is not None and two.feature_names == feature_names(True, True) == FEATURES
    assert len(two.boosters) == 2 and len(rep["rounds_per_booster"]) == 2
    with pytest.raises(RankerError, match="boosters must be >= 1"):
        RankerConfig(boosters=0)


def test_fit_ranker_skips_when_too_few_labels() -> None:
    seqs, times, brands = _brand_walk(n_users=30)
    n = len(brands)
    ranker, report = fit_ranker(seqs, n, brands, ["c"] * n, _parts(seqs, n), times,
                                RankerConfig(n_candidates=40, min_queries=200, threads=1))
    assert ranker is None and "fewer than min_queries=200" in report["skipped"]
    with pytest.raises(RankerError, match="n_candidates must be >= 10"):
        RankerConfig(n_candidates=5)


@pytest.fixture(scope="module")
def brand_blend() -> tuple[CoocBlend, list[np.ndarray], int]:
    seqs, times, brands = _brand_walk()
    n = len(brands)
    parts = _parts(seqs, n)
    ranker, _ = fit_ranker(seqs, n, brands, ["c"] * n, parts, times,
                           RankerConfig(n_candidates=40, min_queries=50, threads=1, early_stopping=30, boosters=3))
    blend = CoocBlend(parts[0], 1.0, 10.0, parts[1], 0.3, "product", 1e-3, parts[2], 0.2,
                      ranker, 0.5)
    return blend, seqs, n


def test_ranker_share_mixes_into_the_neighbourhood(brand_blend) -> None:
    blend, seqs, n = brand_blend
    hist = [s[:4] for s in seqs[:16]]
    anchors = np.full(16, 1_700_000_000 + 3.0 * DAY)
    got = blend.knn_probs(hist, anchor_ts=anchors)
    dists = [row_distribution(m.score(hist)) for m in (blend.knn, blend.user_knn, blend.linear)]
    p_rank = torch.as_tensor(blend.ranker.probs(hist, *(d.numpy() for d in dists), anchors,
                                                (blend.knn.sim, blend.linear.weights)))
    # the blend's shares are the served ones: no second scaling by the ranker's share
    want = _mix_neighbourhoods(dists[0], [(dists[1], 0.3), (dists[2], 0.2), (p_rank, 0.5)])
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got.sum(1), torch.ones(16), atol=1e-5)
    with pytest.raises(ValueError, match="sum to at most 1"):
        CoocBlend(blend.knn, 1.0, 10.0, blend.user_knn, 0.3, linear=blend.linear, linear_share=0.3,
                  ranker=blend.ranker, ranker_share=0.5)
    with pytest.raises(ValueError, match="needs the ranker and the user-kNN"):
        CoocBlend(blend.knn, 1.0, 10.0, ranker_share=0.5)


def test_the_served_blend_mixes_what_the_search_scored(brand_blend) -> None:
    """fit_blend serves the searched setting (a, b chosen without the ranker, then c) with a
    and b scaled by 1 - c: the served neighbourhood must be the one the search evaluated, not
    one with a and b scaled twice."""
    from ecrec_lib.models.blend import BlendSetting, _ValidationScores

    blend, seqs, n = brand_blend
    hist = [s[:4] for s in seqs[:16]]
    anchors = np.full(16, 1_700_000_000 + 3.0 * DAY)
    searched = BlendSetting("product", 1.0, 1e-3, user_share=0.5, linear_share=0.5,
                            ranker_share=0.4)
    search = _ValidationScores(hist, 10.0, lambda pos: torch.zeros(len(pos), n), blend.knn,
                               blend.user_knn, blend.linear, blend.ranker, anchors, False)
    served = CoocBlend(blend.knn, 1.0, 10.0, blend.user_knn, 0.5 * 0.6, "product", 1e-3,
                       blend.linear, 0.5 * 0.6, blend.ranker, 0.4)
    assert torch.allclose(served.knn_probs(hist, anchor_ts=anchors),
                          search.neighbourhood(np.arange(16), searched), atol=1e-6)


def test_ranker_blend_round_trip_and_incomplete_artifact(brand_blend, tmp_path: Path) -> None:
    blend, seqs, n = brand_blend
    files = blend.save(tmp_path)
    assert "blend_ranker.txt" in files and all((tmp_path / f).is_file() for f in files)
    loaded = CoocBlend.load(tmp_path)
    assert loaded.ranker is not None and loaded.ranker_share == 0.5
    assert loaded.ranker.temperature == blend.ranker.temperature
    hist = [s[:5] for s in seqs[:12]]
    anchors = np.full(12, 1_700_000_000 + 4.0 * DAY)
    assert torch.allclose(loaded.knn_probs(hist, anchor_ts=anchors),
                          blend.knn_probs(hist, anchor_ts=anchors), atol=1e-6)
    assert loaded.to_dict()["ranker"]["use_time"] is True
    # Spark scoring broadcasts the model: the blend (LightGBM booster included) pickles
    unpickled = pickle.loads(pickle.dumps(blend))
    assert torch.allclose(unpickled.knn_probs(hist, anchor_ts=anchors),
                          blend.knn_probs(hist, anchor_ts=anchors), atol=1e-6)
    params = json.loads((tmp_path / "blend.json").read_text())
    params["ranker"]["features"] = ["p_item", "from_a_newer_ecrec"]
    (tmp_path / "blend.json").write_text(json.dumps(params))
    with pytest.raises(RankerError, match="retrain the model"):
        CoocBlend.load(tmp_path)
    params["ranker"]["features"] = ["p_item"]  # known, but not the booster's columns
    (tmp_path / "blend.json").write_text(json.dumps(params))
    with pytest.raises(RankerError, match="artifact is inconsistent"):
        CoocBlend.load(tmp_path)
    # every booster is saved; one missing is named
    assert len(blend.ranker.boosters) == 3 and "blend_ranker_2.txt" in files
    params["ranker"]["features"] = list(blend.ranker.features)
    (tmp_path / "blend.json").write_text(json.dumps(params))
    (tmp_path / "blend_ranker_2.txt").unlink()
    with pytest.raises(FileNotFoundError, match="blend_ranker_2.txt is missing"):
        CoocBlend.load(tmp_path)
    # an artifact from before the ensemble (no "boosters" key) holds one booster
    del params["ranker"]["boosters"]
    (tmp_path / "blend.json").write_text(json.dumps(params))
    assert len(CoocBlend.load(tmp_path).ranker.boosters) == 1
    (tmp_path / "blend_ranker.txt").unlink()
    with pytest.raises(FileNotFoundError, match="blend_ranker.txt is missing"):
        CoocBlend.load(tmp_path)


def test_ranker_without_anchor_times_still_scores(brand_blend) -> None:
    blend, seqs, _ = brand_blend
    hist = [s[:4] for s in seqs[:8]]
    p = blend.knn_probs(hist)  # no anchors: time features missing, still a distribution
    assert torch.isfinite(p).all() and torch.allclose(p.sum(1), torch.ones(8), atol=1e-5)
    # a list longer than the catalog holds the history items too: they get no mass
    wide = copy.copy(blend.ranker)
    wide.n_candidates = 500
    dists = [row_distribution(m.score(hist)).numpy()
             for m in (blend.knn, blend.user_knn, blend.linear)]
    q = wide.probs(hist, *dists, None, (blend.knn.sim, blend.linear.weights))
    assert np.allclose(q.sum(1), 1.0, atol=1e-5) and all(q[r, h].sum() == 0 for r, h in enumerate(hist))
    assert ((q > 0).sum(1) == q.shape[1] - np.array([len(set(h.tolist())) for h in hist])).all()


def test_fit_blend_searches_the_ranker_share() -> None:
    seqs, times, brands = _brand_walk(n_users=600, seed=1)
    n = len(brands)
    train = [s[:-2] for s in seqs]
    train_times = [t[:-2] for t in times]
    valid_hist = [s[:-2] for s in seqs]
    valid_tgt = np.asarray([s[-2] for s in seqs])
    anchors = np.asarray([t[-3] for t in times], dtype=np.float64)

    def valid_eval(fn) -> float:
        s = np.asarray(fn(np.arange(len(seqs))), dtype=np.float64).copy()
        for r, h in enumerate(valid_hist):
            s[r, h] = -np.inf
        rank = (s >= s[np.arange(len(s)), valid_tgt][:, None]).sum(1) - 1  # pessimistic ties
        return float(np.where(rank < 10, 1 / np.log2(rank + 2), 0).mean())

    def ranker_fit(item_knn, user_knn, linear):
        return fit_ranker(train, n, brands, ["c"] * n, (item_knn, user_knn, linear), train_times,
                          FAST)

    flat = lambda pos: torch.zeros(len(pos), n)  # noqa: E731 - a model that knows nothing
    blend, report = fit_blend(train, n, 10.0, valid_hist, valid_eval, flat,
                              product_weights=(1.0,), product_eps=(1e-3,), ranker_fit=ranker_fit,
                              valid_anchor_ts=anchors)
    assert report["ranker"]["rounds"] >= 1 and "ranker_valid_ndcg@10" in report
    assert any(",c=" in k for k in report["grid"])
    # beside the ranker, weights where its order decides are candidates too
    assert any(k.startswith("product,w=32.0,") and ",c=" in k for k in report["grid"])
    assert not any(k.startswith("product,w=32.0,") and ",c=" not in k for k in report["grid"])
    # the brand signal is only in the ranker: validation picks it, and the blend serves it
    assert blend.ranker is not None and blend.ranker_share > 0
    assert report["valid_ndcg@10"] == max(report["grid"].values())
    assert blend.user_knn is not None and blend.linear is not None  # the ranker reads them
    # parts fitted once (the benchmark's seeds share them): the same choices as a fresh fit,
    # with the given parts served and no ranker fitted again
    nb = fit_neighbourhood(train, n, valid_hist, valid_eval, ranker_fit=ranker_fit)
    again, report_again = fit_blend(train, n, 10.0, valid_hist, valid_eval, flat,
                                    product_weights=(1.0,), product_eps=(1e-3,),
                                    ranker_fit=_never, valid_anchor_ts=anchors, neighbourhood=nb)
    assert report_again["grid"] == report["grid"] and again.ranker is nb.ranker
    assert again.knn is nb.item_knn and nb.seconds > 0


def _never(*_: object) -> None:
    raise AssertionError("fit_blend refitted a part it was given")


def test_trainer_fits_the_ranker_into_the_blend(tmp_path: Path) -> None:
    """train_two_tower: the ranker is fitted from the blend's parts with the pretrained text
    vectors and event times, reported, given a share on validation, and served from the saved
    artifact."""
    from ecrec_lib.evaluation import leave_one_out
    from ecrec_lib.evaluation.split import with_validation_targets
    from ecrec_lib.models.artifact import load_recommender_dir, save_recommender
    from ecrec_lib.models.neighbourhood import ItemKNN
    from ecrec_lib.training.data import TrainingData
    from ecrec_lib.training.trainer import ModelConfig, eval_histories, train_two_tower
    from tests.helpers_two_tower import make_tiny_bert

    seqs, times, brands = _brand_walk(n_users=800, n_items=400, seed=2)
    n = len(brands)
    data = TrainingData(item_ids=[f"it{k}" for k in range(n)],
                        item_text=[f"thing {k} | {b}" for k, b in enumerate(brands)],
                        item_category=["c"] * n, item_brand=brands,
                        user_keys=[f"u{u}" for u in range(len(seqs))], sequences=seqs,
                        event_types=[np.full(len(s), 4, np.int64) for s in seqs], event_times=times)
    train, valid, test = leave_one_out(data.sequences)
    mcfg = ModelConfig(text_model_path=make_tiny_bert(tmp_path / "bert"), dim=16, n_heads=2,
                       n_layers=1, max_seq_len=8, batch_size=32, epochs=1, device="cpu",
                       ranker_boosters=2)
    refit_seqs = with_validation_targets(train, valid)
    res = train_two_tower(data, mcfg, train, valid, progress=False, refit_seqs=refit_seqs)
    report = res.model.metadata["blend"]["ranker"]
    assert len(report["rounds_per_booster"]) == 2
    # chosen on the parts fitted on train, served refitted with the validation targets
    refit = res.model.metadata["blend"]["refit"]
    assert refit["ranker"]["queries"] >= report["queries"] and refit["seconds"] > 0
    assert res.model.blend.ranker.side.popularity.sum() == sum(len(q) for q in refit_seqs)
    served_knn = res.model.blend.knn
    assert np.array_equal(served_knn.sim.toarray(), ItemKNN(**dataclasses.asdict(served_knn)).fit(
        refit_seqs, n).sim.toarray())
    assert not np.array_equal(served_knn.sim.toarray(), ItemKNN(**dataclasses.asdict(served_knn)).fit(
        train, n).sim.toarray())
    assert report["use_text"] and report["use_time"] and report["queries"] > 300
    assert "ranker_valid_ndcg@10" in res.model.metadata["blend"]
    assert res.model.metadata["blend"]["valid_rows"] == len(valid)  # small: every row
    blend = res.model.blend
    # the brand signal is the ranker's: validation gives it a share
    assert blend is not None and blend.ranker is not None and blend.ranker_share > 0
    loaded = load_recommender_dir(save_recommender(res.model, tmp_path / "m"))
    assert loaded.blend.ranker is not None and loaded.blend.ranker.use_text
    # the served ranking is the blend with its ranker, over the full rows, from the artifact too
    hist = eval_histories(res.model.item_ids, test, data)[:10]
    ids, scores = res.model.recommend(hist, None, 5)
    idx = [np.asarray(h, dtype=np.int64) for h in test.histories[:10]]
    users = res.model.encode_users(hist, max(int(t) for h in hist for t in h.event_times))
    cos = torch.as_tensor(users) @ res.model.item_table().T
    full = blend.mix(cos, idx, None, time_context([h.event_times for h in hist])).numpy()
    for r in range(10):
        full[r, idx[r]] = -np.inf
        assert ids[r].tolist() == [data.item_ids[i] for i in np.argsort(-full[r], kind="stable")[:5]]
        assert np.allclose(scores[r], np.sort(full[r])[::-1][:5], atol=1e-5)
    loaded_ids, loaded_scores = loaded.recommend(hist, None, 5)
    assert (loaded_ids == ids).all() and np.allclose(loaded_scores, scores, atol=1e-4)


def test_a_future_event_changes_no_feature_and_no_score(brand_blend) -> None:
    """Events after a row's now (its time context) are invisible to every feature: planting
    training events after it, for the very candidates the rows rank, changes nothing."""
    blend, seqs, n = brand_blend
    ranker = blend.ranker
    _, times, brands = _brand_walk()
    hist = [s[:4] for s in seqs[:30]]
    context = time_context([t[:4] for t in times[:30]])  # now = day 3 of the walk
    dists = [row_distribution(m.score(hist)).numpy()
             for m in (blend.knn, blend.user_knn, blend.linear)]
    tables = (blend.knn.sim, blend.linear.weights)
    cands, x = candidate_features(ranker.side, hist, *dists, 40, context, ranker.features, tables)
    planted = np.unique(cands[:, :10])
    later = (context[0, 0] + DAY * np.arange(1, len(planted) + 1)).astype(np.int64)
    future = ItemSide.build([*seqs, planted], n, brands, ["c"] * n, [*times, later])
    assert future.popularity.sum() == ranker.side.popularity.sum() + len(planted)
    cands_f, x_f = candidate_features(future, hist, *dists, 40, context, ranker.features, tables)
    assert np.array_equal(cands_f, cands)
    assert np.array_equal(x_f, x, equal_nan=True)
    before = ranker.score(hist, *dists, context, tables)[1]
    after = dataclasses.replace(ranker, side=future).score(hist, *dists, context, tables)[1]
    assert np.array_equal(after, before)
    # the same events planted before now do change the features: the test can fail
    earlier = (context[0, 0] - DAY * np.arange(1, len(planted) + 1)).astype(np.int64)
    past = ItemSide.build([*seqs, planted], n, brands, ["c"] * n, [*times, earlier])
    assert not np.array_equal(candidate_features(past, hist, *dists, 40, context,
                                                 ranker.features, tables)[1], x, equal_nan=True)


def test_row_at_reads_the_same_entries_as_dense_rows() -> None:
    from ecrec_lib.models.ranker import _row_at

    rng = np.random.default_rng(3)
    dense = np.where(rng.random((30, 40)) < 0.2, rng.random((30, 40)), 0.0).astype(np.float32)
    # a COO table with a duplicated entry: todense sums duplicates, so must the lookup
    coo = sp.coo_matrix(dense)
    table = sp.coo_matrix((np.r_[coo.data, [0.5]], (np.r_[coo.row, [4]], np.r_[coo.col, [7]])),
                          shape=dense.shape).tocsr()
    full = np.asarray(table.todense())
    rows = np.array([4, -1, 0, 29, 4, 12])  # -1: a user without history
    cands = rng.integers(0, 40, (len(rows), 9))
    cands[0, 0] = 7
    want = np.where(rows[:, None] >= 0, np.take_along_axis(full[np.maximum(rows, 0)], cands, 1), 0)
    np.testing.assert_array_equal(_row_at(table, rows, cands), want.astype(np.float32))
    assert _row_at(table, rows, cands)[0, 0] == full[4, 7]
    assert not _row_at(sp.csr_matrix((30, 40), dtype=np.float32), rows, cands).any()
    assert not _row_at(table, np.array([-1, -1]), cands[:2]).any()


def test_eval_histories_carry_times_without_event_types() -> None:
    """A dataset with event times and no event types (Amazon reviews) still serves each eval row
    its own times: without them the ranker's causal time features went missing and the
    benchmark's served row fell below the ranker alone (BENCHMARKS.md, issue 32)."""
    from ecrec_lib.evaluation import leave_one_out
    from ecrec_lib.training.data import TrainingData
    from ecrec_lib.training.trainer import eval_histories

    seqs = [np.array([0, 1, 2, 3]), np.array([2, 3, 1])]
    times = [np.array([10, 20, 30, 40]), np.array([5, 6, 7])]
    data = TrainingData(item_ids=["a", "b", "c", "d"], item_text=["a", "b", "c", "d"],
                        item_category=["x"] * 4, item_brand=["y"] * 4, user_keys=["u0", "u1"],
                        sequences=seqs, event_types=None, event_times=times)
    _, _, test = leave_one_out(data.sequences)
    hist = eval_histories(data.item_ids, test, data)
    assert [h.item_ids for h in hist] == [["a", "b", "c"], ["c", "d"]]
    assert [list(h.event_times) for h in hist] == [[10, 20, 30], [5, 6]]
    assert all(not h.event_types for h in hist)
    typed = dataclasses.replace(data, event_types=[np.full(4, 4), np.full(3, 4)])
    assert [list(h.event_times) for h in eval_histories(data.item_ids, test, typed)] == [
        [10, 20, 30], [5, 6]]
