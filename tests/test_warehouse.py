"""Publication to the warehouse: DuckDB and PostgreSQL, atomic swap, views, retention,
comments, and output contracts blocking bad nights."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import pandas as pd
import pytest

from ecrec_lib.config import EcrecConfig, load_config
from ecrec_lib.lake import Lake
from ecrec_lib.scoring.tables import TABLE_COLUMNS, read_table, write_atomic
from ecrec_lib.warehouse import PublishError, connect, partitions, publish
from jobs import publish_scores, score_topk
from tests.scoring_support import CATALOG, DS, FakeRecommender, write_tiny_lake

DS2 = "2024-03-03"


@pytest.fixture(scope="module")
def scored_lake(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("wh") / "lake"
    for ds in (DS, DS2):
        write_tiny_lake(root, ds)
        cfg = load_config(None, env={}, lake_root=str(root), n_related=5)
        score_topk.run(cfg, ds, FakeRecommender(CATALOG, version="7" if ds == DS else "8"),
                       "7" if ds == DS else "8", k=5)
    return root


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def cfg(request, scored_lake, tmp_path) -> EcrecConfig:
    """A config on a copy of the scored lake and a fresh warehouse (unique PG schema)."""
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(scored_lake, lake)
    if request.param == "duckdb":
        yield load_config(None, env={}, lake_root=str(lake), n_related=5, top_k=5,
                          warehouse_url=f"duckdb:///{tmp_path}/wh.duckdb")
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"ecrec_test_{uuid.uuid4().hex[:10]}"
    yield load_config(None, env={}, lake_root=str(lake), n_related=5, top_k=5,
                      warehouse_url=url, warehouse_schema=schema)
    with connect(url, schema) as wh:
        wh.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _latest(cfg: EcrecConfig, table: str) -> pd.DataFrame:
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        return wh.query(f"SELECT * FROM {wh.fq(table + '_latest')} ORDER BY 1, 2, 3")


def _all(cfg: EcrecConfig, table: str) -> pd.DataFrame:
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        cols = ", ".join(TABLE_COLUMNS[table])
        return wh.query(f"SELECT {cols} FROM {wh.fq(table)} ORDER BY {cols}")


def test_publish_views_and_republish_replaces_partition(cfg):
    assert publish_scores.main(_args(cfg, DS)) == 0
    first = _all(cfg, "user_topk")
    assert len(first) == len(read_table("user_topk", Lake(cfg.lake_root), DS))
    assert publish_scores.main(_args(cfg, DS)) == 0  # re-run: same rows, not doubled
    pd.testing.assert_frame_equal(_all(cfg, "user_topk"), first)
    assert publish_scores.main(_args(cfg, DS2)) == 0
    latest = _latest(cfg, "user_topk")
    assert {str(pd.Timestamp(d).date()) for d in latest["ds"]} == {DS2}
    assert set(latest["model_version"]) == {"8"}
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        for table in TABLE_COLUMNS:
            assert partitions(wh, table) == [DS, DS2]
            assert wh.relation_exists(table + "_latest")


def test_retention_deletes_old_partitions(cfg):
    assert publish_scores.main(_args(cfg, DS)) == 0
    cfg1 = dataclasses.replace(cfg, warehouse_retention_days=1)
    with connect(cfg1.warehouse_url, cfg1.warehouse_schema) as wh:
        tables = {t: read_table(t, Lake(cfg.lake_root), DS2) for t in TABLE_COLUMNS}
        publish(wh, tables, DS2, retention_days=1)
        assert partitions(wh, "user_topk") == [DS2]
        assert partitions(wh, "trending") == [DS2]


def test_comments_on_tables_and_columns(cfg):
    assert publish_scores.main(_args(cfg, DS)) == 0
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        for table, cols in TABLE_COLUMNS.items():
            comments = wh.column_comments(table)
            assert set(comments) == set(cols)
            assert all(comments[c] for c in cols), comments
        assert "because you viewed" in wh.column_comments("user_topk")["reason_item_id"]


def test_failure_inside_the_transaction_rolls_back(cfg):
    assert publish_scores.main(_args(cfg, DS)) == 0
    before = {t: _all(cfg, t) for t in TABLE_COLUMNS}
    tables = {t: read_table(t, Lake(cfg.lake_root), DS2) for t in TABLE_COLUMNS}
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        # trending's main table loses a column: its INSERT fails after user_topk's succeeded
        wh.execute(f"ALTER TABLE {wh.fq('trending')} RENAME COLUMN score TO score_old")
        with pytest.raises(Exception):  # noqa: B017 - the engine's own error
            publish(wh, tables, DS2, retention_days=14)
        wh.execute(f"ALTER TABLE {wh.fq('trending')} RENAME COLUMN score_old TO score")
        staging = wh.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name LIKE %s", [cfg.warehouse_schema, "%__staging%"])
        assert staging.empty, staging
    for t in TABLE_COLUMNS:
        pd.testing.assert_frame_equal(_all(cfg, t), before[t])


def test_staging_check_blocks_duplicate_keys(cfg):
    tables = {t: read_table(t, Lake(cfg.lake_root), DS) for t in TABLE_COLUMNS}
    tables["trending"] = pd.concat([tables["trending"], tables["trending"].head(1)])
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        with pytest.raises(PublishError, match="duplicate"):
            publish(wh, tables, DS, retention_days=14)
        assert partitions(wh, "trending") == []


def _args(cfg: EcrecConfig, ds: str) -> list[str]:
    return ["--ds", ds, "--lake", cfg.lake_root, "--warehouse-url", cfg.warehouse_url,
            "--schema", cfg.warehouse_schema, "--k", "5"]


def _break(table: str, df: pd.DataFrame, violation: str) -> pd.DataFrame:
    df = df.copy()
    first_list = df[df["rank"] <= 5].iloc[:5].index
    if violation == "rank_gap":
        df.loc[first_list[-1], "rank"] = 7
    elif violation == "duplicate_item":
        df.loc[first_list[1], df.columns[3]] = df.loc[first_list[0], df.columns[3]]
    elif violation == "score_increase":
        df.loc[first_list[2], "score"] = df.loc[first_list[0], "score"] + 1
    elif violation == "unknown_item":
        df.loc[first_list[0], "item_id"] = "not-in-catalog"
    elif violation == "too_few_rows":
        df = df.drop(index=first_list[-1])
    elif violation == "bought_item":
        row = df[(df.user_key == "u_nails") & (df["rank"] == 5)].index[0]
        df.loc[row, "item_id"] = "i02"  # u_nails bought i02
    elif violation == "null_key":
        df.loc[first_list[0], df.columns[1]] = None
    return df


@pytest.mark.parametrize(
    "table,violation",
    [
        ("user_topk", "rank_gap"),
        ("user_topk", "duplicate_item"),
        ("user_topk", "score_increase"),
        ("user_topk", "unknown_item"),
        ("user_topk", "too_few_rows"),
        ("user_topk", "bought_item"),
        ("user_topk", "null_key"),
        ("item_related", "duplicate_item"),
        ("query_topk", "score_increase"),
        ("trending", "rank_gap"),
    ],
)
def test_each_contract_violation_blocks_publication(table, violation, scored_lake, tmp_path,
                                                    capfd):
    import shutil

    lake = tmp_path / "lake"
    shutil.copytree(scored_lake, lake)
    url = f"duckdb:///{tmp_path}/wh.duckdb"
    args = ["--ds", DS, "--lake", str(lake), "--warehouse-url", url, "--k", "5"]
    assert publish_scores.main(args) == 0
    cfg = load_config(None, env={}, lake_root=str(lake), warehouse_url=url)
    before = _all(cfg, table)
    good = read_table(table, Lake(str(lake)), DS)
    marker = json.loads((lake / "scores" / table / f"ds={DS}" / "_run.json").read_text())
    # the broken table keeps its run's id, so the contracts (not the manifest) are what stop it
    write_atomic(table, _break(table, good, violation), Lake(str(lake)), DS, marker["run_id"])
    assert publish_scores.main(args) == 4
    err = capfd.readouterr().err
    assert "output contract failed, nothing published" in err
    pd.testing.assert_frame_equal(_all(cfg, table), before)
