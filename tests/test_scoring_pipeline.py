"""Batch scoring end to end on a tiny literal lake: tables, exclusions, rerank, cold start."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecrec_lib.config import load_config
from ecrec_lib.lake import Lake
from ecrec_lib.partitions import PartitionLocked, partition_lock
from ecrec_lib.scoring import cold_start
from ecrec_lib.scoring.pipeline import ScoringInputError
from ecrec_lib.scoring.rerank import BlendWeights, blend_and_cap, reasons
from ecrec_lib.scoring.tables import (
    TABLE_COLUMNS,
    RunManifestError,
    check_manifest,
    manifest_path,
    read_run_marker,
    read_table,
    write_atomic,
)
from jobs import score_topk
from tests.scoring_support import CATALOG, DS, EVENTS, SEQUENCES, FakeRecommender, write_tiny_lake


@pytest.fixture()
def scored(lake_dir: Path):
    import torch

    torch.set_num_threads(1)
    write_tiny_lake(lake_dir)
    # Tiny fixture: one or two users per query, so k-anonymity is lowered through the config.
    cfg = load_config(None, env={}, lake_root=str(lake_dir), n_related=5, min_query_users=1)
    summary = score_topk.run(cfg, DS, FakeRecommender(CATALOG), "7", k=5)
    tables = {t: read_table(t, Lake(str(lake_dir)), DS) for t in TABLE_COLUMNS}
    return cfg, summary, tables


def test_tables_have_exactly_the_schema_columns(scored):
    _, summary, tables = scored
    for name, df in tables.items():
        assert tuple(df.columns) == TABLE_COLUMNS[name]
        assert summary["rows"][name] == len(df) > 0
        assert (df["ds"] == DS).all()


def test_purchased_and_out_of_stock_items_excluded(scored):
    _, _, tables = scored
    ut = tables["user_topk"]
    assert "i04" not in set(ut["item_id"])  # out of stock
    assert "i04" not in set(tables["query_topk"]["item_id"])
    assert "i04" not in set(tables["item_related"]["related_item_id"])
    assert "i02" not in set(ut.loc[ut.user_key == "u_nails", "item_id"])  # bought
    assert "i06" not in set(ut.loc[ut.user_key == "u_hair", "item_id"])  # bought


def test_user_lists_ranked_and_reasoned(scored):
    _, _, tables = scored
    ut = tables["user_topk"]
    for _, g in ut.groupby("user_key"):
        assert list(g["rank"]) == list(range(1, len(g) + 1))
        assert g["score"].is_monotonic_decreasing
        assert g["item_id"].is_unique
    warm = ut[ut.strategy == "two_tower"]
    assert set(warm["user_key"]) == {"u_nails", "u_hair", "u_mixed"}
    # nail-polish viewer: the top items are nail items, explained by a nail item they viewed
    nails = warm[warm.user_key == "u_nails"].head(2)
    assert set(nails["item_id"]) == {"i01", "i03"}
    assert set(nails["reason_item_id"]) <= {"i01", "i02"}
    assert warm["model_version"].eq("7").all()


def test_cold_start_strategies(scored):
    _, _, tables = scored
    ut = tables["user_topk"]
    strat = ut.groupby("user_key")["strategy"].first().to_dict()
    # empty history (in sequences) and search-only users (only in events) get segment lists
    assert strat["u_empty"] == "segment_trending"
    assert strat["u_search_only"] == "segment_trending"
    assert strat["u_nowhere"] == "segment_trending"  # country=IT list exists (a search only?)
    assert ut.loc[ut.strategy != "two_tower", "reason_item_id"].isna().all()


def test_global_trending_when_no_segment():
    trending = cold_start.trending_table(DS, CATALOG, None, None, 3)
    assert set(trending["segment"]) == {"global"}
    users = pd.DataFrame({"user_key": ["x"], "country": ["ZZ"], "device": [None]})
    recs = cold_start.cold_start_recommendations(DS, users, trending, 3, "1")
    assert recs["strategy"].eq("global_trending").all() and len(recs) == 3


def test_cold_users_found_in_events_and_empty_sequences():
    users = cold_start.cold_users(EVENTS, SEQUENCES)
    assert set(users["user_key"]) == {"u_empty", "u_search_only", "u_nowhere"}
    row = users.set_index("user_key").loc["u_search_only"]
    assert (row["country"], row["device"]) == ("DE", "tablet")


def test_trending_segments_and_stock(scored):
    _, _, tables = scored
    tr = tables["trending"]
    assert {"global", "country=DE", "country=FR", "device=app"} <= set(tr["segment"])
    glob = tr[tr.segment == "global"]
    assert glob["item_id"].iloc[0] == "i09"  # highest trending_score in stock (i04 is not)
    assert tr[tr.segment == "country=FR"]["item_id"].iloc[0] == "i06"  # FR bought i06 today


def test_query_topk_uses_most_frequent_queries(scored):
    _, _, tables = scored
    q = tables["query_topk"]
    assert set(q["query"]) == {"nail polish", "hair oil", "face cream"}
    assert set(q[q["query"] == "nail polish"].head(3)["item_id"]) == {"i01", "i02", "i03"}


def test_query_topk_publishes_only_k_anonymous_queries_without_pii(lake_dir: Path) -> None:
    """With min_query_users=2 the one-user query is held back; an email-shaped query is held
    back however many users typed it."""
    import torch

    from tests.scoring_support import _event

    torch.set_num_threads(1)
    write_tiny_lake(lake_dir)
    email = [_event(u, "search", None, "jane.doe@example.com", "DE", "mobile", 20 + i)
             for i, u in enumerate(("u_nails", "u_hair", "u_mixed"))]
    events = pd.concat([EVENTS, pd.DataFrame(email)], ignore_index=True)
    part = lake_dir / "clean" / "events" / f"ds={DS}"
    for f in part.glob("*.parquet"):
        f.unlink()
    events.to_parquet(part / "part-0.parquet", index=False)
    cfg = load_config(None, env={}, lake_root=str(lake_dir), min_query_users=2)
    score_topk.run(cfg, DS, FakeRecommender(CATALOG), "7", k=5)
    q = read_table("query_topk", Lake(str(lake_dir)), DS)
    # nail polish and hair oil: 2 users each; face cream: 1 user; the email: PII
    assert set(q["query"]) == {"nail polish", "hair oil"}


def test_summary_json(scored):
    cfg, summary, _ = scored
    path = Path(Lake(cfg.lake_root).ops("scoring", DS)) / "summary.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["model_version"] == "7" and on_disk["rows"] == summary["rows"]
    assert "score_users_s" in on_disk["timings_s"]


def test_blend_reorders_and_category_cap():
    cand = np.array([[0, 1, 2, 3]])
    sim = np.array([[0.50, 0.49, 0.48, 0.10]], np.float32)
    quality = np.array([0.0, 0.0, 1.0, 0.0], np.float32)
    pop = np.zeros(4, np.float32)
    cats = np.array([0, 0, 0, 1])
    idx, _ = blend_and_cap(cand, sim, 3, quality, pop, cats, BlendWeights(0.0, 0.0, 0))
    assert idx.tolist() == [[0, 1, 2]]
    idx, _ = blend_and_cap(cand, sim, 3, quality, pop, cats, BlendWeights(0.05, 0.0, 0))
    assert idx.tolist() == [[2, 0, 1]]  # quality lifted item 2
    idx, sc = blend_and_cap(cand, sim, 3, quality, pop, cats, BlendWeights(0.0, 0.0, 2))
    assert idx.tolist() == [[0, 1, 3]]  # at most 2 of category 0
    idx, sc = blend_and_cap(cand, sim, 4, quality, pop, cats, BlendWeights(0.0, 0.0, 1))
    assert idx.tolist() == [[0, 3, 1, 2]]  # cap back-filled, scores clamped non-increasing
    assert (np.diff(sc[0]) <= 0).all()


def test_reason_is_most_similar_other_history_item():
    emb = np.eye(3, dtype=np.float32)
    emb[2] = [0.8, 0.6, 0.0]
    why = reasons(np.array([[2, 0]]), [np.array([0, 1])], emb)
    assert why.tolist() == [[0, 1]]  # item 0 itself is not its own reason when 1 exists


def test_no_champion_exits_nonzero_and_keeps_published_tables(lake_dir, tmp_path, capfd,
                                                               monkeypatch):
    write_tiny_lake(lake_dir)
    keep = pd.DataFrame({"ds": [DS], "segment": ["global"], "rank": [1], "item_id": ["i01"],
                         "score": [1.0]})
    write_atomic("trending", keep, Lake(str(lake_dir)), DS)
    monkeypatch.setenv("ECREC_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/none/mlflow.db")
    rc = score_topk.main(["--ds", DS, "--lake", str(lake_dir)])
    assert rc == score_topk.EXIT_NO_CHAMPION
    assert "no model to score with" in capfd.readouterr().err
    pd.testing.assert_frame_equal(read_table("trending", Lake(str(lake_dir)), DS), keep,
                                  check_dtype=False)
    assert not (Path(Lake(str(lake_dir)).scores("user_topk", DS))).exists()


def test_missing_inputs_named(lake_dir):
    cfg = load_config(None, env={}, lake_root=str(lake_dir))
    with pytest.raises(Exception, match="clean/catalog partition .* does not exist"):
        score_topk.run(cfg, DS, FakeRecommender(CATALOG), "7", k=5)


def test_manifest_names_the_run_of_every_table(scored):
    cfg, summary, tables = scored
    lake = Lake(cfg.lake_root)
    manifest = json.loads(Path(manifest_path(lake, DS)).read_text())
    assert manifest["run_id"] == summary["run_id"] and manifest["model_version"] == "7"
    assert {t: e["rows"] for t, e in manifest["tables"].items()} == summary["rows"]
    assert check_manifest(lake, DS, tables) == manifest
    for table in TABLE_COLUMNS:
        assert read_run_marker(table, lake, DS)["run_id"] == summary["run_id"]
    # the marker is not a data file: the table reads exactly as before
    assert sorted(p.name for p in Path(lake.scores("trending", DS)).iterdir()) == [
        "_run.json", "part-00000.parquet"]


def test_publish_refuses_a_mixed_set(scored, tmp_path, capfd):
    """A table re-written by another run (valid data, right schema) beside the others: the
    manifest check refuses the set and the warehouse stays as it was."""
    from jobs import publish_scores

    cfg, _, tables = scored
    lake = Lake(cfg.lake_root)
    args = ["--ds", DS, "--lake", cfg.lake_root, "--warehouse-url",
            f"duckdb:///{tmp_path}/wh.duckdb", "--k", "5"]
    assert publish_scores.main(args) == 0
    write_atomic("query_topk", tables["query_topk"], lake, DS, run_id="someone-else")
    assert publish_scores.main(args) == publish_scores.EXIT_INVALID
    err = capfd.readouterr().err
    assert "not one run's set" in err and "written by run someone-else" in err
    with pytest.raises(RunManifestError, match="no run manifest"):
        Path(manifest_path(lake, DS)).unlink()
        check_manifest(lake, DS, tables)


def test_second_scorer_of_a_ds_is_refused_and_changes_nothing(scored):
    cfg, summary, tables = scored
    lake = Lake(cfg.lake_root)
    with partition_lock(lake.scores("item_related", DS), "first-scorer") as holder:
        with pytest.raises(PartitionLocked, match=f"run first-scorer \\(pid {holder.pid}"):
            score_topk.run(cfg, DS, FakeRecommender(CATALOG), "9", k=5)
    after = {t: read_table(t, lake, DS) for t in TABLE_COLUMNS}
    for t in TABLE_COLUMNS:
        pd.testing.assert_frame_equal(after[t], tables[t])
    assert check_manifest(lake, DS, after)["run_id"] == summary["run_id"]


def test_a_scoring_run_killed_before_its_manifest_cannot_be_published(scored, monkeypatch):
    cfg, _, _ = scored
    lake = Lake(cfg.lake_root)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the kill lands after the tables, before the manifest

    monkeypatch.setattr(score_topk, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        score_topk.run(cfg, DS, FakeRecommender(CATALOG, version="9"), "9", k=5)
    tables = {t: read_table(t, lake, DS) for t in TABLE_COLUMNS}
    with pytest.raises(RunManifestError, match="did not finish"):
        check_manifest(lake, DS, tables)


def test_pinned_model_version_loads_exactly_that_version(tmp_path):
    cfg = load_config(None, env={}, lake_root=str(tmp_path / "lake"),
                      mlflow_tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                      mlflow_artifact_root=str(tmp_path / "artifacts"))
    with pytest.raises(score_topk.ChampionUnavailable,
                       match=r"pinned model version 12 \(models:/ecrec-two-tower/12\)"):
        score_topk.load_model(cfg, None, "12")


def _feature_run(lake: Lake, run_ids: dict[str, str], manifest_run: str) -> None:
    """What jobs.build_features leaves: _run.json per table, ops/runs/ds=D/features.json."""
    for name, run in run_ids.items():
        (Path(lake.features(name, DS)) / "_run.json").write_text(json.dumps({"run_id": run}))
    out = Path(lake.ops("runs", DS))
    out.mkdir(parents=True, exist_ok=True)
    (out / "features.json").write_text(json.dumps(
        {"ds": DS, "run_id": manifest_run, "tables": {n: 1 for n in run_ids}}))


def test_scoring_refuses_a_feature_set_of_two_runs(lake_dir):
    write_tiny_lake(lake_dir)
    lake = Lake(str(lake_dir))
    cfg = load_config(None, env={}, lake_root=str(lake_dir), n_related=5)
    present = [p.name for p in (lake_dir / "features").iterdir()]
    # a features run killed between two publishes: one table new, the others from before
    _feature_run(lake, {n: "new" if n == "user_sequences" else "old" for n in present}, "old")
    with pytest.raises(ScoringInputError, match=r"features/user_sequences/ds=.* published by "
                       r"run new.*Re-run `python -m jobs.build_features"):
        score_topk.run(cfg, DS, FakeRecommender(CATALOG), "7", k=5)
    assert not Path(lake.scores("user_topk", DS)).exists()
    _feature_run(lake, dict.fromkeys(present, "new"), "new")
    assert score_topk.run(cfg, DS, FakeRecommender(CATALOG), "7", k=5)["features_run_id"] == "new"
