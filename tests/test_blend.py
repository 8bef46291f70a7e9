"""Co-occurrence blend: the mixture math, validation tuning, the artifact round trip and the
served recommend over a catalog snapshot (exact against full-row scoring)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecrec_lib.evaluation import evaluate_scores, leave_one_out
from ecrec_lib.models.api import ItemSet, UserHistory
from ecrec_lib.models.artifact import load_recommender_dir, save_recommender
from ecrec_lib.models.blend import (
    WEIGHT_GRID,
    CoocBlend,
    _mix_neighbourhoods,
    combine,
    fit_blend,
)
from ecrec_lib.models.neighbourhood import ItemKNN, LinearTransitions, UserKNN
from ecrec_lib.scoring.pipeline import ItemSpace
from ecrec_lib.training.trainer import ModelConfig, train_two_tower
from tests.helpers_two_tower import make_tiny_bert, synthetic_data

torch.set_num_threads(1)

SEQS = [np.array([0, 1, 2, 3]), np.array([1, 2, 3]), np.array([4, 5]), np.array([0, 2])]


def _blend(weight: float, n_items: int = 6, t: float = 10.0, user_share: float = 0.0,
           kind: str = "mixture", eps: float = 1e-4) -> CoocBlend:
    users = UserKNN(k=3).fit(SEQS, n_items) if user_share else None
    return CoocBlend(ItemKNN(window=2).fit(SEQS, n_items), weight, t, users, user_share, kind, eps)


def test_mix_is_a_mixture_of_the_two_distributions() -> None:
    rng = np.random.default_rng(0)
    cos = torch.as_tensor(rng.uniform(-1, 1, (3, 6)), dtype=torch.float32)
    hist = [np.array([0, 1]), np.array([4]), np.array([], dtype=np.int64)]
    b = _blend(0.3)
    mixed = b.mix(cos, hist)
    p_model = torch.softmax(cos * 10.0, dim=1)
    p_knn = b.knn_probs(hist)
    expected = 0.7 * p_model + 0.3 * p_knn
    # back to probabilities: exp(t * s') / Z
    z = torch.logsumexp(cos * 10.0, dim=1, keepdim=True)
    assert torch.allclose(torch.exp(mixed * 10.0 - z), expected, atol=1e-5)
    # weight 0 is the model itself; a user without co-occurrences gets popularity as kNN part
    assert torch.equal(_blend(0.0).mix(cos, hist), cos)
    pop = torch.as_tensor(b.knn.popularity / b.knn.popularity.sum(), dtype=torch.float32)
    assert torch.allclose(p_knn[2], pop, atol=1e-6)
    # co-occurring items move up: item 2 follows 0 and 1
    assert (mixed[0, 2] - cos[0, 2]) > (mixed[0, 5] - cos[0, 5])


def test_product_kind_adds_log_neighbourhood_evidence() -> None:
    rng = np.random.default_rng(0)
    cos = torch.as_tensor(rng.uniform(-1, 1, (3, 6)), dtype=torch.float32)
    hist = [np.array([0, 1]), np.array([4]), np.array([], dtype=np.int64)]
    b = _blend(2.0, kind="product", eps=1e-3)
    scored = b.mix(cos, hist)
    p_knn = b.knn_probs(hist)
    # log p = log softmax(cos / tau) + w log(p_nb + eps) + const, on the cosine scale
    expected = torch.log_softmax(cos * 10.0, 1) + 2.0 * torch.log(p_knn + 1e-3)
    diff = scored * 10.0 - expected
    assert torch.allclose(diff, diff[:, :1].expand_as(diff), atol=1e-4)  # same ranking per row
    # items with equal cosine: the one with more co-occurrence mass ranks higher
    flat = torch.zeros(1, 6)
    s = b.mix(flat, [np.array([0, 1])])[0]
    p = b.knn_probs([np.array([0, 1])])[0]
    assert torch.equal(torch.argsort(s, descending=True)[:2], torch.argsort(p, descending=True)[:2])
    with pytest.raises(ValueError, match="blend kind must be one of"):
        _blend(1.0, kind="sum")
    with pytest.raises(ValueError, match="eps > 0"):
        _blend(1.0, kind="product", eps=0.0)


def test_product_blend_round_trip_and_old_artifacts_load_as_mixtures(tmp_path: Path) -> None:
    b = _blend(1.5, kind="product", eps=1e-5, user_share=0.3)
    b.save(tmp_path)
    loaded = CoocBlend.load(tmp_path)
    assert (loaded.kind, loaded.eps, loaded.weight) == ("product", 1e-5, 1.5)
    hist = [np.array([0, 1]), np.array([2])]
    cos = torch.as_tensor(np.random.default_rng(2).uniform(-1, 1, (2, 6)), dtype=torch.float32)
    assert torch.allclose(loaded.mix(cos, hist), b.mix(cos, hist), atol=1e-6)
    params = json.loads((tmp_path / "blend.json").read_text())
    del params["kind"], params["eps"]  # as written before the product kind existed
    (tmp_path / "blend.json").write_text(json.dumps(params))
    assert CoocBlend.load(tmp_path).kind == "mixture"


def test_user_knn_part_mixes_into_the_neighbourhood_distribution() -> None:
    hist = [np.array([0, 1]), np.array([5]), np.array([], dtype=np.int64)]
    b = _blend(0.3, user_share=0.5)
    p_item = _blend(0.3).knn_probs(hist)
    scores = b.user_knn.score(hist)
    p_user = torch.as_tensor(scores / np.maximum(scores.sum(1, keepdims=True), 1e-12))
    p = b.knn_probs(hist)
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-6)
    # users 0 and 1 have session neighbours: half item-kNN, half user-kNN
    assert scores[0].sum() > 0 and scores[1].sum() > 0
    assert torch.allclose(p[:2], 0.5 * p_item[:2] + 0.5 * p_user[:2].float(), atol=1e-6)
    # no history, no neighbours: the item-kNN part (its popularity prior) alone
    assert scores[2].sum() == 0 and torch.allclose(p[2], p_item[2], atol=1e-6)


def test_user_knn_blend_round_trip_and_incomplete_artifact(tmp_path: Path) -> None:
    b = _blend(0.4, user_share=0.3)
    b.save(tmp_path)
    loaded = CoocBlend.load(tmp_path)
    assert loaded.user_share == 0.3 and loaded.user_knn is not None
    hist = [np.array([0, 1]), np.array([2])]
    assert torch.allclose(loaded.knn_probs(hist), b.knn_probs(hist), atol=1e-6)
    (tmp_path / "blend_users.npz").unlink()
    with pytest.raises(FileNotFoundError, match="blend_users.npz is missing"):
        CoocBlend.load(tmp_path)
    # a blend without user-kNN writes no user table and loads with none
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "blend_users.npz" not in _blend(0.4).save(plain)
    assert CoocBlend.load(plain).user_knn is None


def test_fit_blend_picks_weight_on_validation() -> None:
    # Model scores are noise, kNN knows the chain: the blend must take a large weight.
    n = 12
    train = [np.arange(s, s + 5) % n for s in range(n)] * 3
    valid_hist = [np.arange(s, s + 5) % n for s in range(n)]
    targets = np.asarray([(s + 5) % n for s in range(n)])
    from ecrec_lib.evaluation import EvalSet

    ev = EvalSet(np.arange(n), valid_hist, targets)
    noise = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (n, n)), dtype=torch.float32)

    def valid_eval(fn):
        return evaluate_scores(fn, ev, n, ks=(10,))["ndcg@10"]

    blend, report = fit_blend(train, n, 10.0, valid_hist, valid_eval, lambda pos: noise[pos])
    assert blend.weight >= 0.3
    assert report["kind"] == blend.kind and any(k.startswith("product,") for k in report["grid"])
    assert report["valid_ndcg@10"] == max(report["grid"].values())
    mixture_only, _ = fit_blend(train, n, 10.0, valid_hist, valid_eval, lambda pos: noise[pos],
                                product_weights=())
    assert mixture_only.kind == "mixture" and mixture_only.weight >= 0.3
    assert report["valid_ndcg@10"] >= report["weights"]["0.0"]
    # and the opposite: a perfect model keeps weight 0 (nothing to gain)
    perfect = torch.full((n, n), -1.0)
    perfect[np.arange(n), targets] = 1.0
    blend, _ = fit_blend(train, n, 10.0, valid_hist, valid_eval, lambda pos: perfect[pos])
    assert blend.weight == 0.0


def _linear_blend(weight: float = 0.5, user_share: float = 0.3, linear_share: float = 0.4,
                  kind: str = "product") -> CoocBlend:
    b = _blend(weight, user_share=user_share, kind=kind, eps=1e-3)
    b.linear = LinearTransitions(l2=1.0, slis_weight=0.0).fit(SEQS, 6)  # transitions only
    b.linear_share = linear_share
    return b


def test_linear_part_mixes_into_the_neighbourhood_distribution() -> None:
    hist = [np.array([0, 1]), np.array([5]), np.array([3])]
    b = _linear_blend()
    p_item = _blend(0.5).knn_probs(hist)
    u, lin = b.user_knn.score(hist), np.clip(b.linear.score(hist), 0, None)
    p_user = torch.as_tensor(u / np.maximum(u.sum(1, keepdims=True), 1e-12)).float()
    p_lin = torch.as_tensor(lin / np.maximum(lin.sum(1, keepdims=True), 1e-12)).float()
    p = b.knn_probs(hist)
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-6)
    # user 0 has session neighbours and linear evidence (0 -> 1 -> 2 in the training data)
    assert u[0].sum() > 0 and lin[0].sum() > 0
    assert torch.allclose(p[0], 0.3 * p_user[0] + 0.4 * p_lin[0] + 0.3 * p_item[0], atol=1e-6)
    # nothing follows item 3 or 5: no positive linear score, its share goes to item-kNN
    assert lin[2].sum() == 0 and u[2].sum() > 0
    assert torch.allclose(p[2], 0.3 * p_user[2] + 0.7 * p_item[2], atol=1e-6)
    with pytest.raises(ValueError, match="sum to at most 1"):
        CoocBlend(b.knn, 0.5, 10.0, b.user_knn, 0.7, "product", 1e-3, b.linear, 0.5)


def test_linear_blend_round_trip_and_incomplete_artifact(tmp_path: Path) -> None:
    b = _linear_blend()
    files = b.save(tmp_path)
    assert "blend_linear.npz" in files and files[-1] == "blend.json"
    loaded = CoocBlend.load(tmp_path)
    assert loaded.linear_share == 0.4 and loaded.linear.max_history == b.linear.max_history
    hist = [np.array([0, 1]), np.array([2])]
    cos = torch.as_tensor(np.random.default_rng(4).uniform(-1, 1, (2, 6)), dtype=torch.float32)
    assert torch.allclose(loaded.mix(cos, hist), b.mix(cos, hist), atol=1e-6)
    assert json.loads((tmp_path / "blend.json").read_text())["linear"]["l2"] == 1.0
    (tmp_path / "blend_linear.npz").unlink()
    with pytest.raises(FileNotFoundError, match="blend_linear.npz is missing"):
        CoocBlend.load(tmp_path)
    plain = tmp_path / "plain"  # blends without the linear part write none and load with none
    plain.mkdir()
    assert "blend_linear.npz" not in _blend(0.4).save(plain)
    assert CoocBlend.load(plain).linear is None


def test_fit_blend_searches_the_linear_share(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    n = 12
    train = [np.arange(s, s + 5) % n for s in range(n)] * 3
    valid_hist = [np.arange(s, s + 5) % n for s in range(n)]
    from ecrec_lib.evaluation import EvalSet

    ev = EvalSet(np.arange(n), valid_hist, np.asarray([(s + 5) % n for s in range(n)]))
    noise = torch.as_tensor(np.random.default_rng(0).uniform(-1, 1, (n, n)), dtype=torch.float32)

    def valid_eval(fn):
        return evaluate_scores(fn, ev, n, ks=(10,))["ndcg@10"]

    blend, report = fit_blend(train, n, 10.0, valid_hist, valid_eval, lambda pos: noise[pos],
                              user_shares=(0.0,), linear_shares=(0.0, 1.0))
    assert report["linear_valid_ndcg@10"] > 0.5  # the chain is linear: it knows the next item
    assert "product,w=2.0,eps=0.01,a=0.0,b=1.0" in report["grid"]
    assert report["valid_ndcg@10"] == max(report["grid"].values())
    assert (blend.linear is not None) == (blend.linear_share > 0) == (report["linear_share"] > 0)
    only_linear, report = fit_blend(train, n, 10.0, valid_hist, valid_eval, lambda pos: noise[pos],
                                    user_shares=(0.0,), linear_shares=(1.0,))
    assert only_linear.linear_share == 1.0 and report["weights"] == {}
    # a catalog too large for the dense solve: the blend goes on without the linear part
    import ecrec_lib.models.blend as blend_module

    monkeypatch.setattr(blend_module, "LinearTransitions",
                        lambda: LinearTransitions(max_items=n - 1))
    with caplog.at_level("WARNING"):
        blend, report = fit_blend(train, n, 10.0, valid_hist, valid_eval, lambda pos: noise[pos],
                                  user_shares=(0.0,), linear_shares=(0.0, 1.0))
    assert "without the linear transition model" in caplog.text and "max_items=11" in caplog.text
    assert blend.linear is None and not any("b=" in k for k in report["grid"])


@pytest.fixture(scope="module")
def trained_with_blend(tmp_path_factory: pytest.TempPathFactory):
    tiny = make_tiny_bert(tmp_path_factory.mktemp("tinybert"))
    data = synthetic_data(n_items=24, n_users=80)
    train, valid, test = leave_one_out(data.sequences)
    mcfg = ModelConfig(text_model_path=tiny, dim=16, n_heads=2, n_layers=1, max_seq_len=8,
                       batch_size=16, epochs=2, warmup_steps=2, device="cpu")
    res = train_two_tower(data, mcfg, train, valid, progress=False)
    if res.model.blend is None or res.model.blend.weight == 0:  # force one for the plumbing tests
        res.model.blend = CoocBlend(ItemKNN().fit(train, data.n_items), 0.3,
                                    float(res.model.model.inv_temperature))
    return data, res, test


def test_trainer_fits_blend_and_reports_it(trained_with_blend) -> None:
    _, res, test = trained_with_blend
    report = res.model.metadata["blend"]
    assert set(report["weights"]) == {str(w) for w in WEIGHT_GRID}
    assert report["user_share"] in (0.0, 0.3, 0.5, 0.7)
    assert max(report["grid"].values()) == report["valid_ndcg@10"]
    pos = np.arange(5)
    assert not np.allclose(res.score_fn(test)(pos), res.score_fn(test, blend=False)(pos).numpy())


def test_artifact_round_trip_keeps_the_blend(trained_with_blend, tmp_path: Path) -> None:
    _, res, test = trained_with_blend
    loaded = load_recommender_dir(save_recommender(res.model, tmp_path / "m"))
    assert loaded.blend is not None and loaded.blend.weight == res.model.blend.weight
    h = [UserHistory([res.model.item_ids[i] for i in x], [], []) for x in test.histories[:10]]
    ids, scores = res.model.recommend(h, None, 10)
    loaded_ids, loaded_scores = loaded.recommend(h, None, 10)
    assert (loaded_ids == ids).all() and np.allclose(loaded_scores, scores, atol=1e-5)
    # saving over it a model without a blend replaces the directory whole: no stale blend file
    plain = copy.copy(res.model)
    plain.blend = None
    assert load_recommender_dir(save_recommender(plain, tmp_path / "m")).blend is None
    assert not (tmp_path / "m" / "blend.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temp or old dir left


@pytest.mark.parametrize(("user_share", "kind", "linear_share"),
                         [(0.0, "mixture", 0.0), (0.5, "mixture", 0.0), (0.5, "product", 0.0),
                          (0.3, "product", 0.5)])
def test_recommend_over_a_catalog_snapshot_equals_full_ranking(trained_with_blend, user_share: float,
                                                     kind: str, linear_share: float) -> None:
    data, res, test = trained_with_blend
    rec = res.model
    if user_share:  # the same check with session neighbours (and the linear part) in the blend
        train, _, _ = leave_one_out(data.sequences)
        rec = copy.copy(rec)
        linear = LinearTransitions(l2=5.0).fit(train, data.n_items) if linear_share else None
        rec.blend = CoocBlend(res.model.blend.knn, 0.4 if kind == "mixture" else 1.5,
                              res.model.blend.inv_temperature,
                              UserKNN(k=10).fit(train, data.n_items), user_share, kind,
                              linear=linear, linear_share=linear_share)
    # catalog snapshot in another order, one model item missing, one new item
    ids = [i for i in data.item_ids if i != "it005"][::-1] + ["new1"]
    emb = np.vstack([rec.item_matrix()[data.item_ids.index(i)] for i in ids[:-1]]
                    + [np.ones((1, rec.mcfg.dim), np.float32) / np.sqrt(rec.mcfg.dim)])
    n = len(ids)
    items = ItemSpace(item_ids=np.asarray(ids, dtype=object), emb=emb, in_stock=np.ones(n, bool),
                      category_codes=np.zeros(n, np.int64), quality=np.zeros(n, np.float32),
                      popularity_norm=np.zeros(n))
    hist_ids = [[data.item_ids[i] for i in h] for h in test.histories[:8]]
    users = rec.user_vectors(test.histories[:8]).numpy()
    cos = users @ emb.T
    stock = np.ones(n, bool)
    stock[3] = False  # out of stock: never recommended
    got_ids, got_scores = rec.recommend([UserHistory(h, [], []) for h in hist_ids], None, 5,
                                        items=ItemSet(items.item_ids, emb, stock))
    # reference: full blended rows in catalog columns, history and out-of-stock items removed
    cols = items.index_of(rec.item_ids)
    full = rec.blend.mix(torch.as_tensor(cos), [np.asarray(h) for h in test.histories[:8]], cols).numpy()
    for r in range(8):
        full[r, items.index_of(hist_ids[r])] = -np.inf
        full[r, 3] = -np.inf
        want = np.argsort(-full[r], kind="stable")[:5]
        assert got_ids[r].tolist() == items.item_ids[want].tolist()
        assert np.allclose(got_scores[r], full[r, want], atol=1e-4)
        assert len(set(got_ids[r].tolist())) == 5  # each item once


def test_score_users_serves_the_blend(trained_with_blend) -> None:
    from ecrec_lib.scoring.pipeline import ScoringParams, score_users
    from ecrec_lib.scoring.rerank import BlendWeights

    data, res, test = trained_with_blend
    rec = res.model
    n = data.n_items
    items = ItemSpace(item_ids=np.asarray(data.item_ids, dtype=object), emb=rec.item_matrix(),
                      in_stock=np.ones(n, bool), category_codes=np.zeros(n, np.int64),
                      quality=np.zeros(n, np.float32), popularity_norm=np.zeros(n))
    hist = test.histories[:6]
    seqs = pd.DataFrame({
        "user_key": [f"u{i}" for i in range(6)],
        "item_ids": [[data.item_ids[i] for i in h] for h in hist],
        "event_types": [["purchase"] * len(h) for h in hist],
        "event_times": [[1_700_000_000 + j for j in range(len(h))] for h in hist],
    })
    params = ScoringParams(k=3, weights=BlendWeights(quality=0.0, popularity=0.0, max_per_category=0),
                           exclude_purchased=True, device="cpu")
    out = score_users(rec, items, seqs, params, 1_800_000_000, "2026-01-01", "1")
    # reference: blended full rows of the same user vectors, bought items removed
    users = rec.encode_users([UserHistory(i, t, s) for i, t, s in zip(
        seqs["item_ids"], seqs["event_types"], seqs["event_times"], strict=True)], 1_800_000_000)
    full = rec.blend.mix(torch.as_tensor(users @ items.emb.T), hist).numpy()
    for r, h in enumerate(hist):
        full[r, h] = -np.inf
        want = [data.item_ids[i] for i in np.argsort(-full[r], kind="stable")[:3]]
        got = out[out.user_key == f"u{r}"].sort_values("rank")["item_id"].tolist()
        assert got == want


def test_shares_summing_to_one_never_make_a_negative_probability() -> None:
    """0.3 * (1 - 0.85) + 0.7 * (1 - 0.85) + 0.85 leaves p_item a rounding residue below zero
    in float32; where the other parts are zero the mix must stay >= 0 (log -> NaN otherwise)."""
    p_item = torch.tensor([[0.5, 0.5, 0.0]])
    p_user = torch.tensor([[0.0, 0.0, 1.0]])
    p_lin = torch.tensor([[0.0, 0.0, 1.0]])
    p_rank = torch.tensor([[0.0, 0.0, 1.0]])
    c = 0.85
    mix = _mix_neighbourhoods(p_item, [(p_user, 0.3 * (1 - c)), (p_lin, 0.7 * (1 - c)), (p_rank, c)])
    assert (mix >= 0).all() and torch.allclose(mix.sum(1), torch.ones(1))
    assert torch.isfinite(combine(torch.zeros(1, 3), 4.0, 0.5, mix, "mixture", 1e-4)).all()


def test_blend_search_samples_validation_rows_only_past_its_cache() -> None:
    from ecrec_lib.evaluation import EvalSet
    from ecrec_lib.training.trainer import blend_rows

    valid = EvalSet(np.arange(5000), [np.array([i % 7]) for i in range(5000)], np.arange(5000) % 9)
    assert blend_rows(valid, 100, 5 * 100 * 5000, seed=3) is valid  # fits: every row
    sample = blend_rows(valid, 100, 5 * 100 * 2000, seed=3)
    assert len(sample) == 2000 and len(set(sample.users.tolist())) == 2000
    assert np.array_equal(sample.targets, valid.targets[sample.users])  # rows kept whole
    assert np.array_equal(blend_rows(valid, 100, 5 * 100 * 2000, seed=3).users, sample.users)
    assert len(blend_rows(valid, 10**9, 10, seed=3)) == 1000  # a floor for huge catalogs


def test_refit_keeps_the_chosen_settings_and_serves_the_new_parts() -> None:
    from ecrec_lib.models.blend import Neighbourhood, refit_neighbourhood

    n = 6
    nb = Neighbourhood(ItemKNN(window=2, decay=0.5).fit(SEQS, n), 0.1, UserKNN(k=3).fit(SEQS, n),
                       LinearTransitions(l2=1.0, slis_weight=0.0).fit(SEQS, n), None, None, 0.0)
    more = [np.append(s, 5) if s[-1] != 5 else s for s in SEQS]  # 5 now follows every history
    refit = refit_neighbourhood(nb, more, n)
    for old, new in ((nb.item_knn, refit.item_knn), (nb.user_knn, refit.user_knn),
                     (nb.linear, refit.linear)):
        assert type(new) is type(old) and dataclasses.asdict(new) == dataclasses.asdict(old)
    assert refit.item_knn.sim[3, 5] > 0 and nb.item_knn.sim[3, 5] == 0
    assert refit.ranker is None and refit.knn_valid_ndcg == nb.knn_valid_ndcg
    chosen = _linear_blend(weight=0.5, user_share=0.3, linear_share=0.4)
    served = chosen.with_parts(refit)
    assert (served.weight, served.user_share, served.linear_share, served.kind, served.eps) == (
        chosen.weight, chosen.user_share, chosen.linear_share, chosen.kind, chosen.eps)
    assert served.knn is refit.item_knn and served.linear is refit.linear
    hist = [np.array([2, 3])]
    assert served.knn_probs(hist)[0, 5] > chosen.knn_probs(hist)[0, 5]
    assert _blend(0.3).with_parts(refit).user_knn is None  # a part it did not serve stays out
    with_ranker = dataclasses.replace(_blend(0.3, user_share=0.3), ranker=object(), ranker_share=0.5)
    with pytest.raises(ValueError, match="refit them with the ranker's fit"):
        with_ranker.with_parts(refit)
