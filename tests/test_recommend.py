"""The ad-hoc look-up CLI on a published tiny night."""

from __future__ import annotations

import argparse
import io

import pytest

from ecrec_lib.config import load_config
from jobs import publish_scores, recommend, score_topk
from tests.scoring_support import CATALOG, DS, FakeRecommender, write_tiny_lake


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rec")
    write_tiny_lake(root / "lake")
    cfg = load_config(None, env={}, lake_root=str(root / "lake"), n_related=5, min_query_users=1,
                      warehouse_url=f"duckdb:///{root}/wh.duckdb")
    score_topk.run(cfg, DS, FakeRecommender(CATALOG), "7", k=5)
    assert publish_scores.run(cfg, DS)
    return cfg


def _run(cfg, model=None, **kw) -> str:
    args = argparse.Namespace(user=None, query=None, item=None, k=3, ds=None, model_uri=None)
    for key, value in kw.items():
        setattr(args, key, value)
    out = io.StringIO()
    recommend.run(cfg, args, out, model=model)
    return out.getvalue()


def test_user_lookup_prints_titles_scores_reasons(published):
    text = _run(published, user="u_nails")
    assert "Recommendations for user u_nails (ds 2024-03-02, model 7, strategy two_tower)" in text
    assert "  1. red nail polish [i01]  score" in text
    assert "because you viewed" in text and "[i02]" in text
    assert len(text.strip().splitlines()) == 4  # header + k=3


def test_precomputed_query_is_normalized(published):
    text = _run(published, query="  Nail   POLISH ")
    assert "Results for query 'nail polish' (precomputed" in text
    assert "polish" in text.splitlines()[1]


def test_free_text_query_uses_the_query_encoder(published):
    text = _run(published, model=FakeRecommender(CATALOG), query="hair brush")
    assert "(live, champion query encoder" in text
    assert "hair brush [i08]" in text.splitlines()[1]


def test_item_lookup(published):
    text = _run(published, item="i01", k=2)
    assert text.startswith("Items related to red nail polish [i01]")
    assert "[i02]" in text or "[i03]" in text


def test_unknown_user_and_item_are_clear(published, capsys, monkeypatch):
    base = ["--lake", published.lake_root]
    monkeypatch.setenv("ECREC_WAREHOUSE_URL", published.warehouse_url)
    assert recommend.main([*base, "--user", "nobody"]) == 1
    assert "unknown user 'nobody'" in capsys.readouterr().err
    assert recommend.main([*base, "--item", "zzz"]) == 1
    assert "unknown item 'zzz'" in capsys.readouterr().err
    assert recommend.main([*base, "--user", "u_hair", "--k", "2"]) == 0
    assert "score" in capsys.readouterr().out


def test_nothing_published(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ECREC_WAREHOUSE_URL", f"duckdb:///{tmp_path}/missing.duckdb")
    assert recommend.main(["--user", "u", "--lake", str(tmp_path)]) == 1
    assert "does not exist: publish first" in capsys.readouterr().err
