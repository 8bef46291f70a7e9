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
    for part in ("towers", "neighbourhood", "ranker_features", "lightgbm_predict", "top_k"):
        assert split[part] > 0, part  # every served part really ran inside recommend
    assert sum(split.values()) == pytest.approx(res["served_seconds"])
    # the path follows the load average (choose_method); either gives the same lists
    assert res["served_users_per_s"] > 0 and res["bare_topk"]["method"] in {"faiss", "kernel"}

    # The timers wrap and then restore the model's callables: results are unchanged.
    seqs, times = synthetic_sequences(60, 150, seed=1)
    rec = synthetic_recommender(150, seqs, times, seed=1, ranker_users=60)
    hist = histories_for(rec.item_ids, seqs, times)
    before = rec.recommend(hist, None, 5)
    with timed_parts(rec) as spent:
        during = rec.recommend(hist, None, 5)
    after = rec.recommend(hist, None, 5)
    assert spent["lightgbm_predict"] > 0
    assert "encode_users" not in vars(rec) and "score" not in vars(rec.blend.knn)
    for got in (during, after):
        np.testing.assert_array_equal(got[0], before[0])
    for r, h in enumerate(hist):  # seen items are never served back
        assert not set(before[0][r]) & set(h.item_ids)
