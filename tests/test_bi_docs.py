"""docs/bi.md's queries run as written on DuckDB and PostgreSQL after a real publish, and a
real SQL client (psql) reads the published warehouse and its comments."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest

from ecrec_lib.config import EcrecConfig, load_config
from ecrec_lib.warehouse import connect
from jobs import feedback, publish_scores
from tests.scoring_support import CATALOG, DS
from tests.test_warehouse import DS2, scored_lake  # noqa: F401 - the module's fixture

BI_DOC = Path(__file__).resolve().parents[1] / "docs" / "bi.md"
DOC_SCHEMA = "ecrec"


def sql_blocks(text: str) -> list[str]:
    """The ```sql fenced blocks of a Markdown text."""
    return [m.strip() for m in re.findall(r"```sql\n(.*?)```", text, flags=re.S)]


def for_schema(sql: str, schema: str) -> str:
    return re.sub(rf"\b{DOC_SCHEMA}\.", f"{schema}.", sql).rstrip().rstrip(";")


def _publish_two_nights_with_feedback(cfg: EcrecConfig) -> None:
    args = ["--lake", cfg.lake_root, "--warehouse-url", cfg.warehouse_url,
            "--schema", cfg.warehouse_schema, "--k", "5"]
    assert publish_scores.main(["--ds", DS, *args]) == 0
    result = feedback.compute(cfg, DS2)  # how DS's lists did on DS2's events
    assert not result["metrics"].empty
    feedback.replace_partition(cfg, feedback.METRICS_TABLE, DS2, result["metrics"])
    feedback.replace_partition(cfg, feedback.DRIFT_TABLE, DS2, result["drift"])
    assert publish_scores.main(["--ds", DS2, *args]) == 0


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def published(request, scored_lake, tmp_path):  # noqa: F811 - pytest fixture injection
    lake = tmp_path / "lake"
    shutil.copytree(scored_lake, lake)
    if request.param == "duckdb":
        cfg = load_config(None, env={}, lake_root=str(lake), n_related=5, top_k=5,
                          warehouse_url=f"duckdb:///{tmp_path}/wh.duckdb")
        _publish_two_nights_with_feedback(cfg)
        yield cfg
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"ecrec_bi_{uuid.uuid4().hex[:10]}"
    cfg = load_config(None, env={}, lake_root=str(lake), n_related=5, top_k=5,
                      warehouse_url=url, warehouse_schema=schema)
    try:
        _publish_two_nights_with_feedback(cfg)
        yield cfg
    finally:
        with connect(url, schema) as wh:
            wh.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_the_doc_has_the_queries_an_analyst_runs_first():
    text = BI_DOC.read_text()
    blocks = sql_blocks(text)
    assert len(blocks) >= 8
    joined = "\n".join(blocks)
    for relation in ("user_topk_named", "items", "metrics_daily", "published_nights",
                     "drift_daily", "item_related_named", "query_topk_named"):
        assert f"{DOC_SCHEMA}.{relation}" in joined, relation


def test_every_doc_query_runs_and_returns_filled_rows(published):
    cfg = published
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        for sql in sql_blocks(BI_DOC.read_text()):
            df = wh.query(for_schema(sql, cfg.warehouse_schema))
            assert len(df), f"no rows from:\n{sql}"
            empty = [c for c in df.columns if df[c].isna().all()]
            assert not empty, f"columns {empty} are all NULL in:\n{sql}"
        # The first query names real items: its titles are the catalog's.
        top = wh.query(for_schema(sql_blocks(BI_DOC.read_text())[0], cfg.warehouse_schema))
        titles = dict(zip(CATALOG["item_id"], CATALOG["title"], strict=True))
        assert [titles[i] for i in top["item_id"]] == list(top["item_title"])
        nights = wh.query(for_schema(sql_blocks(BI_DOC.read_text())[3], cfg.warehouse_schema))
        assert [(str(pd.Timestamp(d).date()), v) for d, v in
                zip(nights["ds"], nights["model_version"], strict=True)] == [(DS2, "8"), (DS, "7")]


@pytest.mark.postgres
@pytest.mark.parametrize("published", ["postgres"], indirect=True)
def test_psql_client_reads_the_warehouse_and_its_comments(published):
    cfg = published
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("no psql client on PATH")

    def run(command: str) -> str:
        out = subprocess.run(
            [psql, cfg.warehouse_url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", command],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    first = for_schema(sql_blocks(BI_DOC.read_text())[0], cfg.warehouse_schema)
    rows = [line.split("|") for line in run(first).splitlines() if line]
    with connect(cfg.warehouse_url, cfg.warehouse_schema) as wh:
        expected = wh.query(first)
    assert [r[:2] for r in rows] == [[str(a), str(b)] for a, b in
                                     zip(expected["item_id"], expected["item_title"], strict=True)]
    tables = run(f"\\dt+ {cfg.warehouse_schema}.*")
    assert "Catalog items (dimension)" in tables and "One row per published night" in tables
    items = run(f"\\d+ {cfg.warehouse_schema}.items")
    assert "First published night (ds) whose catalog listed the item." in items
