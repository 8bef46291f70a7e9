"""Publication to the warehouse: DuckDB and PostgreSQL, atomic swap, views, retention,
comments, output contracts blocking bad nights, and concurrency: a reader process holding
the DuckDB file makes the writer wait (bounded, the holder's PID named), the read copy for BI
never blocks it, PostgreSQL readers never block it."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from ecrec_lib.config import EcrecConfig, load_config
from ecrec_lib.lake import Lake
from ecrec_lib.scoring.tables import TABLE_COLUMNS, read_table, write_atomic
from ecrec_lib.warehouse import (
    PublishError,
    WarehouseError,
    WarehouseLockedError,
    connect,
    dimensions,
    partitions,
    publish,
    read_copy_path,
)
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
        cfg = load_config(None, env={}, lake_root=str(root), n_related=5, min_query_users=1)
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


def _relation_comment(wh, name: str) -> str | None:
    if wh.kind == "duckdb":
        return wh.scalar(
            "SELECT comment FROM (SELECT schema_name, table_name AS name, comment FROM "
            "duckdb_tables() UNION ALL SELECT schema_name, view_name, comment FROM "
            "duckdb_views()) r WHERE schema_name = %s AND name = %s", [wh.schema, name])
    return wh.scalar(
        "SELECT obj_description(c.oid, 'pg_class') FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", [wh.schema, name])


def test_comments_on_every_table_view_and_column(cfg):
    from jobs import feedback

    assert publish_scores.main(_args(cfg, DS)) == 0
    result = feedback.compute(cfg, DS2)
    feedback.replace_partition(cfg, feedback.METRICS_TABLE, DS2, result["metrics"])
    feedback.replace_partition(cfg, feedback.DRIFT_TABLE, DS2, result["drift"])
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        relations = wh.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            [wh.schema])["table_name"].tolist()
        expected = {*TABLE_COLUMNS, *(t + "_latest" for t in TABLE_COLUMNS),
                    *(t + "_named" for t in TABLE_COLUMNS), "items", "published_nights",
                    "metrics_daily", "drift_daily"}
        assert expected <= set(relations)
        for name in expected:
            assert _relation_comment(wh, name), f"{name} has no comment"
            comments = wh.column_comments(name)
            assert comments and all(comments.values()), (name, comments)
        for table, cols in TABLE_COLUMNS.items():
            assert set(wh.column_comments(table)) == set(cols)
        assert "because you viewed" in wh.column_comments("user_topk")["reason_item_id"]
        # Each score says what it is: the blend's user_topk score is not a cosine in -1..1.
        scores = {t: wh.column_comments(t)["score"] for t in TABLE_COLUMNS}
        assert len(set(scores.values())) == len(scores)
        assert "unbounded" in scores["user_topk"] and "-1..1" in scores["query_topk"]


def _relation(cfg: EcrecConfig, name: str, order: str) -> pd.DataFrame:
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        return wh.query(f"SELECT * FROM {wh.fq(name)} ORDER BY {order}")


def test_failure_inside_the_transaction_rolls_back(cfg):
    assert publish_scores.main(_args(cfg, DS)) == 0
    before = {t: _all(cfg, t) for t in TABLE_COLUMNS}
    items_before = _relation(cfg, "items", "item_id")
    nights_before = _relation(cfg, "published_nights", "ds")
    tables = {t: read_table(t, Lake(cfg.lake_root), DS2) for t in TABLE_COLUMNS}
    items = dimensions.items_frame(CATALOG.assign(title="changed"), DS2)
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        # trending's main table loses a column: its INSERT fails after user_topk's succeeded
        wh.execute(f"ALTER TABLE {wh.fq('trending')} RENAME COLUMN score TO score_old")
        with pytest.raises(Exception):  # noqa: B017 - the engine's own error
            publish(wh, tables, DS2, retention_days=14, items=items)
        wh.execute(f"ALTER TABLE {wh.fq('trending')} RENAME COLUMN score_old TO score")
        staging = wh.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
            "AND table_name LIKE %s", [cfg.warehouse_schema, "%__staging%"])
        assert staging.empty, staging
    for t in TABLE_COLUMNS:
        pd.testing.assert_frame_equal(_all(cfg, t), before[t])
    # The dimension and the nights log are part of the same all-or-nothing night.
    pd.testing.assert_frame_equal(_relation(cfg, "items", "item_id"), items_before)
    pd.testing.assert_frame_equal(_relation(cfg, "published_nights", "ds"), nights_before)


def test_staging_left_by_a_killed_publisher_is_dropped_by_the_next(cfg):
    """A publisher killed after loading staging leaves its tables behind; the next publish, the
    only writer under the schema's writer lock, drops them and publishes."""
    assert publish_scores.main(_args(cfg, DS)) == 0
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        for table in ("user_topk", "items"):
            wh.execute(f"CREATE TABLE {wh.fq(table + '__staging_killed0run')} AS "
                       f"SELECT * FROM {wh.fq(table)}")
        wh.execute(f"CREATE TABLE {wh.fq('my_staging_notes')} (x INTEGER)")  # not ours: kept
    assert publish_scores.main(_args(cfg, DS2)) == 0
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        left = wh.query("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                        "AND table_name LIKE %s", [cfg.warehouse_schema, "%staging%"])
        assert sorted(left["table_name"]) == ["my_staging_notes"]
        assert partitions(wh, "user_topk") == [DS, DS2]


@pytest.mark.postgres
def test_postgres_publishers_of_one_schema_take_turns(scored_lake, postgres_url):
    """A second publisher of the schema waits on the advisory lock while the first holds it."""
    import threading

    schema = f"ecrec_test_{uuid.uuid4().hex[:10]}"
    tables = {t: read_table(t, Lake(str(scored_lake)), DS) for t in TABLE_COLUMNS}
    done = threading.Event()

    def second() -> None:
        with connect(postgres_url, schema) as wh2:
            publish(wh2, tables, DS, retention_days=14)
        done.set()

    try:
        with connect(postgres_url, schema) as wh, wh.writer_lock():
            worker = threading.Thread(target=second)
            worker.start()
            assert not done.wait(2.0), "the second publisher did not wait for the lock"
        worker.join(60)
        assert done.is_set()
        with connect(postgres_url, schema) as wh:
            assert partitions(wh, "user_topk") == [DS]
    finally:
        with connect(postgres_url, schema) as wh:
            wh.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_items_dimension_named_views_and_published_nights(cfg):
    assert publish_scores.main(_args(cfg, DS)) == 0
    items = _relation(cfg, "items", "item_id")
    assert list(items["item_id"]) == list(CATALOG["item_id"])
    assert list(items["title"]) == list(CATALOG["title"])
    assert list(items["category_path"]) == list(CATALOG["category_path"])
    assert {str(pd.Timestamp(d).date()) for d in items["first_seen"]} == {DS}
    # Night DS2: one item renamed, one gone from the catalog, one new.
    cat2 = CATALOG[CATALOG["item_id"] != "i12"].copy()
    cat2.loc[cat2["item_id"] == "i01", "title"] = "red nail polish 2.0"
    cat2 = pd.concat([cat2, CATALOG.iloc[[0]].assign(item_id="i99", title="new lamp")])
    tables2 = {t: read_table(t, Lake(cfg.lake_root), DS2) for t in TABLE_COLUMNS}
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        publish(wh, tables2, DS2, 14, items=dimensions.items_frame(cat2, DS2))
        # A backfill of the older night must not bring back its older title.
        tables1 = {t: read_table(t, Lake(cfg.lake_root), DS) for t in TABLE_COLUMNS}
        publish(wh, tables1, DS, 14, items=dimensions.items_frame(CATALOG, DS))
    items = _relation(cfg, "items", "item_id").set_index("item_id")
    day = {k: str(pd.Timestamp(v).date()) for k, v in items["first_seen"].items()}
    last = {k: str(pd.Timestamp(v).date()) for k, v in items["last_seen"].items()}
    assert items.loc["i01", "title"] == "red nail polish 2.0"
    assert (day["i01"], last["i01"]) == (DS, DS2)
    assert (day["i12"], last["i12"]) == (DS, DS)  # kept, last seen on DS
    assert (day["i99"], last["i99"]) == (DS2, DS2)
    named = _relation(cfg, "user_topk_named", "ds, user_key, rank")
    assert len(named) == len(_all(cfg, "user_topk"))
    assert named["item_title"].notna().all()
    assert (named["item_title"] == named["item_id"].map(items["title"])).all()
    with_reason = named[named["reason_item_id"].notna()]
    assert len(with_reason) and with_reason["reason_item_title"].notna().all()
    related = _relation(cfg, "item_related_named", "ds, item_id, rank")
    assert (related["source_title"] == related["item_id"].map(items["title"])).all()
    nights = _relation(cfg, "published_nights", "ds")
    assert [str(pd.Timestamp(d).date()) for d in nights["ds"]] == [DS, DS2]
    assert list(nights["model_version"]) == ["7", "8"]
    assert list(nights["items_rows"]) == [len(CATALOG), len(cat2)]
    assert list(nights["user_topk_rows"]) == [len(tables1["user_topk"]), len(tables2["user_topk"])]


def test_published_scores_stay_in_the_ranges_their_comments_state(cfg):
    """The fake model's cosine scores against the ranges written in the score comments."""
    assert publish_scores.main(_args(cfg, DS)) == 0
    ranges = {"query_topk": (-1.0, 1.0), "item_related": (-1.0, 1.1), "trending": (0.0, None)}
    for table, (lo, hi) in ranges.items():
        scores = _all(cfg, table)["score"]
        assert scores.min() >= lo - 1e-6, table
        assert hi is None or scores.max() <= hi + 1e-6, table
        assert f"{lo:g}".lstrip("-") in dimensions.SCORE_COMMENTS[table]


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


def test_connection_error_names_the_url_without_its_password() -> None:
    from ecrec_lib.warehouse.backend import WarehouseError

    password = "Pg-S3cret-77"
    with pytest.raises(WarehouseError, match="cannot connect to PostgreSQL warehouse") as err:
        connect(f"postgresql://ecrec:{password}@127.0.0.1:1/warehouse", "ecrec")
    assert password not in str(err.value)
    assert "postgresql://ecrec:***@127.0.0.1:1/warehouse" in str(err.value)


# --- one writer, readers that never block it -------------------------------------------------

_HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("open", con.execute("SELECT CAST(max(ds) AS VARCHAR) FROM ecrec.user_topk").fetchone()[0],
      flush=True)
if sys.argv[2] == "stdin":  # hold until told, then read again: which night does it see?
    sys.stdin.readline()
    print(con.execute("SELECT CAST(max(ds) AS VARCHAR) FROM ecrec.user_topk").fetchone()[0],
          flush=True)
else:
    time.sleep(float(sys.argv[2]))
con.close()
"""


def _hold(path: Path | str, how: str) -> subprocess.Popen:
    """A second process holding the DuckDB file read-only (like a BI tool); returns once open."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), how], text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("open"), line
    proc.opened = line.split()[1]  # type: ignore[attr-defined]
    return proc


@pytest.fixture()
def duck(scored_lake, tmp_path) -> tuple[EcrecConfig, Path]:
    """A DuckDB warehouse with DS published (and its read copy), and DS2's tables to publish."""
    url = f"duckdb://{tmp_path}/wh.duckdb"
    cfg = load_config(None, env={}, lake_root=str(scored_lake), warehouse_url=url,
                      warehouse_lock_wait_s=30.0)
    with connect(url, cfg.warehouse_schema) as wh:
        publish(wh, {t: read_table(t, Lake(str(scored_lake)), DS) for t in TABLE_COLUMNS}, DS, 14)
        assert wh.refresh_read_copy() == read_copy_path(tmp_path / "wh.duckdb")
    return cfg, tmp_path / "wh.duckdb"


def _publish_ds2(cfg: EcrecConfig, lock_wait_s: float) -> None:
    tables = {t: read_table(t, Lake(cfg.lake_root), DS2) for t in TABLE_COLUMNS}
    with connect(cfg.warehouse_url, cfg.warehouse_schema, lock_wait_s=lock_wait_s) as wh:
        publish(wh, tables, DS2, cfg.warehouse_retention_days)
        wh.refresh_read_copy()


def test_a_reader_process_blocks_the_writer_which_waits_and_publishes(duck, caplog):
    cfg, path = duck
    holder = _hold(path, "3")  # read_only=True: a shared lock, still exclusive of a writer
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="ecrec_lib.warehouse.backend"):
        _publish_ds2(cfg, lock_wait_s=30.0)
    waited = time.monotonic() - t0
    assert holder.wait(timeout=10) == 0
    assert waited >= 2.0, f"the writer did not wait for the reader ({waited:.1f} s)"
    retries = [r.getMessage() for r in caplog.records if "is locked by" in r.getMessage()]
    assert retries and all(f"(PID {holder.pid})" in m for m in retries)
    with connect(cfg.warehouse_url, cfg.warehouse_schema, read_only=True) as wh:
        assert partitions(wh, "user_topk") == [DS, DS2]


def test_the_lock_wait_is_bounded_and_names_the_holder(duck):
    cfg, path = duck
    holder = _hold(path, "3")
    t0 = time.monotonic()
    with pytest.raises(WarehouseLockedError) as info:
        _publish_ds2(cfg, lock_wait_s=0.5)
    assert time.monotonic() - t0 < 2.5
    assert info.value.pid == holder.pid and info.value.tries >= 3
    msg = str(info.value)
    assert f"(PID {holder.pid})" in msg and f"ps -o pid,etime,args -p {holder.pid}" in msg
    assert "warehouse_lock_wait_s" in msg and str(read_copy_path(path)) in msg
    holder.wait(timeout=10)
    with connect(cfg.warehouse_url, cfg.warehouse_schema, read_only=True) as wh:
        assert partitions(wh, "user_topk") == [DS]  # nothing half-published


def test_a_bi_session_on_the_read_copy_never_blocks_publication(duck):
    cfg, path = duck
    copy = read_copy_path(path)
    bi = _hold(copy, "stdin")  # holds the copy for the whole publish
    try:
        assert bi.opened == DS
        _publish_ds2(cfg, lock_wait_s=0.0)  # not a single retry allowed
        out, _ = bi.communicate("\n", timeout=10)
    finally:
        bi.kill()
    assert out.strip() == DS  # the open session keeps the snapshot it opened
    assert not [p.name for p in copy.parent.iterdir() if p.name != copy.name]  # no temp left
    with connect(f"duckdb:///{copy}", cfg.warehouse_schema, read_only=True) as wh:
        assert partitions(wh, "user_topk") == [DS, DS2]  # a new session sees the new night
        assert wh.column_comments("user_topk")["rank"]
        assert len(wh.query("SELECT * FROM ecrec.user_topk_latest")) == len(
            read_table("user_topk", Lake(cfg.lake_root), DS2))


def test_only_the_lock_conflict_is_retried_with_capped_backoff(monkeypatch, tmp_path):
    import duckdb

    from ecrec_lib.warehouse.backend import open_duckdb

    locked = duckdb.IOException(
        f'IO Error: Could not set lock on file "{tmp_path}/x.duckdb": Conflicting lock is held '
        "in /usr/bin/python3.11 (PID 4242). However, you would be able to open this database in "
        "read-only mode")
    calls, naps, now = [], [], [0.0]

    def fake_connect(path, read_only):
        calls.append(path)
        raise locked

    def sleep(s):
        naps.append(s)
        now[0] += s

    monkeypatch.setattr(duckdb, "connect", fake_connect)
    with pytest.raises(WarehouseLockedError, match=r"/usr/bin/python3\.11 \(PID 4242\)") as info:
        open_duckdb(str(tmp_path / "x.duckdb"), False, 20.0, sleep=sleep, clock=lambda: now[0])
    assert naps[:6] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2])
    assert max(naps) == 5.0 and sum(naps) == pytest.approx(20.0)
    assert info.value.pid == 4242 and len(calls) == len(naps) + 1

    def other_io_error(path, read_only):
        raise duckdb.IOException("IO Error: Cannot open file: Permission denied")

    naps.clear()
    monkeypatch.setattr(duckdb, "connect", other_io_error)
    with pytest.raises(WarehouseError, match="Permission denied") as info2:
        open_duckdb(str(tmp_path / "x.duckdb"), False, 20.0, sleep=sleep, clock=lambda: now[0])
    assert not isinstance(info2.value, WarehouseLockedError) and naps == []


@pytest.mark.postgres
def test_postgres_readers_in_open_transactions_never_block_publication(scored_lake, postgres_url):
    import psycopg

    schema = f"ecrec_test_{uuid.uuid4().hex[:10]}"
    cfg = load_config(None, env={}, lake_root=str(scored_lake), warehouse_url=postgres_url,
                      warehouse_schema=schema)
    with connect(postgres_url, schema) as wh:
        publish(wh, {t: read_table(t, Lake(str(scored_lake)), DS) for t in TABLE_COLUMNS}, DS, 14)
    reader = psycopg.connect(postgres_url)  # a BI session: its transaction stays open
    try:
        for table in TABLE_COLUMNS:
            reader.execute(f"SELECT count(*) FROM {schema}.{table}_latest").fetchone()
            reader.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()
        with connect(postgres_url, schema) as wh:
            wh.execute("SET lock_timeout = '5s'")  # a blocked publish fails here, not hangs
            publish(wh, {t: read_table(t, Lake(str(scored_lake)), DS2) for t in TABLE_COLUMNS},
                    DS2, 14)
            assert partitions(wh, "user_topk") == [DS, DS2]
        reader.rollback()
        got = reader.execute(f"SELECT max(ds) FROM {schema}.user_topk_latest").fetchone()[0]
        assert str(got) == DS2
    finally:
        reader.close()
        with connect(postgres_url, schema) as wh:
            wh.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    assert cfg.warehouse_url == postgres_url


def test_the_table_by_table_read_copy_equals_the_byte_copy(duck, tmp_path):
    cfg, path = duck
    byte_copy = read_copy_path(path)
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        wh._copy_database(tmp_path / "by_table.duckdb")  # the path taken when the WAL is not empty
    for copy in (byte_copy, tmp_path / "by_table.duckdb"):
        with connect(f"duckdb://{copy}", cfg.warehouse_schema, read_only=True) as wh:
            for table in TABLE_COLUMNS:
                got = wh.query(f"SELECT * FROM {wh.fq(table + '_latest')} ORDER BY ALL")
                assert len(got) == len(read_table(table, Lake(cfg.lake_root), DS))
            assert wh.column_comments("user_topk")["rank"]


def test_lock_wait_config_from_env_and_checked():
    from ecrec_lib.config import ConfigError

    cfg = load_config(None, env={"ECREC_WAREHOUSE_LOCK_WAIT_S": "12.5",
                                 "ECREC_WAREHOUSE_READ_COPY": "false"})
    assert cfg.warehouse_lock_wait_s == 12.5 and cfg.warehouse_read_copy is False
    with pytest.raises(ConfigError, match="warehouse_lock_wait_s must be >= 0"):
        load_config(None, env={"ECREC_WAREHOUSE_LOCK_WAIT_S": "-1"})


def test_publish_job_refreshes_the_read_copy(scored_lake, tmp_path):
    path = tmp_path / "wh" / "warehouse.duckdb"
    args = ["--ds", DS, "--lake", str(scored_lake), "--warehouse-url", f"duckdb://{path}",
            "--k", "5"]
    assert publish_scores.main(args) == 0
    with connect(f"duckdb://{read_copy_path(path)}", "ecrec", read_only=True) as wh:
        assert partitions(wh, "user_topk") == [DS]
