"""The served-path benchmark at a tiny size: it runs the real blend + ranker and times it."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("lightgbm")
pytest.importorskip("faiss")


def test_served_synthetic_times_every_part_and_restores_the_model(tmp_path):
    from jobs.bench_scoring import main
    from jobs.bench_served import (
        histories_for,
        synthetic_recommender,
        synthetic_sequences,
        timed_parts,
    )

    out = tmp_path / "served.json"
    assert main(["--served", "synthetic", "--users", "300", "--items", "200", "--k", "10",
                 "--threads", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["users"] == 300 and res["items"] == 200
    assert res["blend"]["ranker"] and res["blend"]["user_knn"] and res["blend"]["linear"]
    split = res["split_seconds"]
    for part in ("towers", "neighbourhood", "ranker_features", "ranker_trees", "top_k"):
        assert split[part] > 0, part  # every served part really ran inside recommend
    assert sum(split.values()) == pytest.approx(res["served_seconds"])
    # the path follows the machine (choose_method); either gives the same lists
    assert res["served_users_per_s"] > 0 and res["bare_topk"]["method"] in {"faiss", "kernel"}

    # The timers wrap and then restore the model's callables: results are unchanged.
    seqs, times = synthetic_sequences(60, 150, seed=1)
    rec = synthetic_recommender(150, seqs, times, seed=1, ranker_users=60)
    hist = histories_for(rec.item_ids, seqs, times)
    before = rec.recommend(hist, None, 5)
    with timed_parts(rec) as spent:
        during = rec.recommend(hist, None, 5)
    after = rec.recommend(hist, None, 5)
    assert spent["ranker_trees"] > 0
    assert "encode_users" not in vars(rec) and "score" not in vars(rec.blend.knn)
    for got in (during, after):
        np.testing.assert_array_equal(got[0], before[0])
    for r, h in enumerate(hist):  # seen items are never served back
        assert not set(before[0][r]) & set(h.item_ids)


def test_user_vectors_trimmed_padding_matches_full_padding():
    import torch

    from ecrec_lib.models.config import ModelConfig
    from ecrec_lib.models.recommender import TwoTowerRecommender
    from ecrec_lib.models.two_tower import TwoTowerModel
    from jobs.bench_served import synthetic_sequences

    torch.manual_seed(0)
    n = 120
    mcfg = ModelConfig(use_text=False, dim=16, max_seq_len=50)
    model = TwoTowerModel(mcfg, n, 1, np.ones(n, int), np.ones(n, int), 1, 1, np.ones(n, bool))
    rec = TwoTowerRecommender(model, mcfg, [str(i) for i in range(n)], [""] * n, ["c"], ["b"])
    seqs, _ = synthetic_sequences(70, n, seed=2, mean_len=4)
    seqs[3] = np.arange(80) % n  # longer than max_seq_len: its last 50 items are read
    seqs[5] = np.zeros(0, np.int64)  # an empty history
    types = [np.full(len(s), 2) for s in seqs]
    got = rec.user_vectors(seqs, types, batch_size=16).numpy()  # several length batches
    # The same users through the tower with every row padded to max_seq_len.
    table = rec.item_table()
    full = np.zeros((len(seqs), 50), np.int64)
    typ = np.zeros((len(seqs), 50), np.int64)
    lengths = np.array([min(len(s), 50) for s in seqs])
    for r, s in enumerate(seqs):
        full[r, : lengths[r]] = s[-50:]
        typ[r, : lengths[r]] = 2
    with torch.no_grad():
        ref = model.user_vectors(table, torch.as_tensor(full),
                                 torch.as_tensor(np.maximum(lengths, 1)),
                                 torch.as_tensor(typ)).numpy()
    keep = lengths > 0
    np.testing.assert_allclose(got[keep], ref[keep], rtol=1e-5, atol=1e-5)


def test_dataset_histories_serve_real_users_without_their_last_event(tmp_path):
    from jobs.bench_served import dataset_histories

    (tmp_path / "interactions.csv").write_text(
        "user_id,item_id,timestamp\n"
        "u1,a,100\nu1,b,200\nu1,c,300\n"
        "u2,b,150\nu2,a,250\n")
    hist = dataset_histories(str(tmp_path), 0, seed=0)
    by_first = sorted((h.item_ids, h.event_times) for h in hist)
    assert by_first == [(["a", "b"], [100, 200]), (["b"], [150])]
    assert len(dataset_histories(str(tmp_path), 1, seed=0)) == 1  # a seeded sample


def test_top_k_columns_float32_rows_rank_as_their_float64_widening():
    from ecrec_lib.models.served import top_k_columns

    rng = np.random.default_rng(0)
    rows = rng.integers(0, 6, (7, 50)).astype(np.float32) / 3  # many ties
    rows[2, 5] = np.nan  # stays visible to the caller
    banned = [np.array([1, 2]), np.array([], dtype=np.int64)] + [np.array([0])] * 5
    allowed = np.ones(50, dtype=bool)
    allowed[10] = False
    before = rows.copy()
    c32, v32 = top_k_columns(rows, 12, banned, allowed)
    c64, v64 = top_k_columns(rows.astype(np.float64), 12, banned, allowed)
    np.testing.assert_array_equal(c32, c64)
    np.testing.assert_array_equal(v32, v64)
    assert v32.dtype == np.float64
    np.testing.assert_array_equal(rows, before)  # the caller's rows are not modified


def test_top_k_desc_keeps_the_first_columns_of_a_tie_across_the_kth_place():
    from ecrec_lib.models.served import top_k_desc

    rows = np.array([[1.0, 3.0, 2.0, 2.0, 2.0, 0.0],  # the tie at 2.0 straddles k = 3
                     [np.nan, 0.0, np.nan, 5.0, np.nan, 5.0],  # NaN first, by column
                     [-np.inf, -np.inf, 1.0, -np.inf, -np.inf, -np.inf]])
    np.testing.assert_array_equal(top_k_desc(rows, 3), [[1, 2, 3], [0, 2, 4], [2, 0, 1]])
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        s = (rng.integers(0, 4, (40, 30)) / 3).astype(dtype)  # many ties
        s[rng.random(s.shape) < 0.2] = -np.inf
        for k in (1, 7, 30):
            want = np.stack([sorted(range(30), key=lambda c, r=r: (-r[c], c))[:k] for r in s])
            np.testing.assert_array_equal(top_k_desc(s, k), want)
