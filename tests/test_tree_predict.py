"""The ranker's trees compiled with lleaves: the same predictions and lists as LightGBM, a
cache that is reused and written atomically, and LightGBM when the compiler is missing."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

lgb = pytest.importorskip("lightgbm")
pytest.importorskip("lleaves")

from ecrec_lib.models.tree_predict import TreePredictor  # noqa: E402


@pytest.fixture(scope="module")
def booster() -> object:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan  # LightGBM's missing branches must be kept
    y = ((np.nan_to_num(x[:, 0]) + x[:, 1] * 0.5 + rng.normal(size=len(x))) > 1.2).astype(int)
    data = lgb.Dataset(x, y, group=[30] * 100)
    return lgb.train({"objective": "lambdarank", "num_leaves": 7, "min_data_in_leaf": 20,
                      "verbose": -1, "num_threads": 1}, data, num_boost_round=12)


def _rows(n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    return x


def test_compiled_trees_predict_as_lightgbm_and_cache_once(booster, tmp_path) -> None:
    x = _rows()
    plain = TreePredictor(booster, min_trees=10**6, cache=tmp_path)
    assert not plain.compiled and "trees <" in plain.why_not_compiled
    want = plain.predict(x, 1)
    np.testing.assert_array_equal(want, booster.predict(x))

    fast = TreePredictor(booster, min_trees=1, cache=tmp_path)
    assert fast.compiled
    got = fast.predict(x, 2)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(np.argsort(-got, kind="stable"), np.argsort(-want, kind="stable"))
    cached = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert len(cached) == 1 and cached[0].endswith(".o")  # no staging leftovers

    again = TreePredictor(booster, min_trees=1, cache=tmp_path)  # loaded, not recompiled
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == cached
    np.testing.assert_array_equal(again.predict(x, 1), got)


def test_concurrent_users_of_one_model_compile_it_once(booster, tmp_path, caplog) -> None:
    from concurrent.futures import ThreadPoolExecutor

    caplog.set_level("INFO", logger="ecrec_lib.models.tree_predict")
    with ThreadPoolExecutor(3) as pool:  # as a night's Spark workers load the same champion
        got = list(pool.map(lambda _: TreePredictor(booster, min_trees=1, cache=tmp_path),
                            range(3)))
    assert all(p.compiled for p in got)
    assert caplog.text.count("compiled a ranker booster") == 1
    for p in got[1:]:
        np.testing.assert_array_equal(p.predict(_rows(), 1), got[0].predict(_rows(), 1))


def test_the_switch_keeps_lightgbm(booster, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ECREC_COMPILE_TREES", "off")
    p = TreePredictor(booster, min_trees=1, cache=tmp_path)
    assert not p.compiled and "ECREC_COMPILE_TREES" in p.why_not_compiled
    assert not list(tmp_path.iterdir())


def test_a_pickled_predictor_reloads_its_compiled_trees(booster, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ECREC_COMPILED_TREES_DIR", str(tmp_path))
    fast = TreePredictor(booster, min_trees=1)
    copy = pickle.loads(pickle.dumps(fast))  # as a Spark task receives it
    assert copy.compiled
    np.testing.assert_array_equal(copy.predict(_rows(), 1), fast.predict(_rows(), 1))


def test_without_lleaves_lightgbm_serves(booster, tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "lleaves", None)  # import fails
    p = TreePredictor(booster, min_trees=1, cache=tmp_path)
    assert not p.compiled and p.why_not_compiled == "lleaves is not installed"
    assert "predicts through LightGBM" in caplog.text
    np.testing.assert_array_equal(p.predict(_rows(), 1), booster.predict(_rows()))


def test_served_lists_are_the_same_with_compiled_trees(tmp_path, monkeypatch) -> None:
    from jobs.bench_served import histories_for, synthetic_recommender, synthetic_sequences

    monkeypatch.setenv("ECREC_COMPILED_TREES_DIR", str(tmp_path))
    seqs, times = synthetic_sequences(200, 300, seed=3)
    rec = synthetic_recommender(300, seqs, times, seed=3, ranker_users=200)
    hist = histories_for(rec.item_ids, seqs, times)
    ranker = rec.blend.ranker
    assert not any(p.compiled for p in ranker.predictors)  # a test-sized ranker: LightGBM
    want = rec.recommend(hist, None, 20)
    ranker._predictors = [TreePredictor(b, min_trees=1) for b in ranker.boosters]
    assert all(p.compiled for p in ranker.predictors)
    got = rec.recommend(hist, None, 20)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
