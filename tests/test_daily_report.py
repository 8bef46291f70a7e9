"""The daily report's HTML page: trend plots from the lake's ops records and the warehouse's
feedback tables, one self-contained file, logged to MLflow, and the validation index."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from ecrec_lib.config import load_config
from ecrec_lib.feedback import DRIFT_COLUMNS, METRIC_COLUMNS
from ecrec_lib.lake import Lake
from ecrec_lib.reporting import model_metric_history, quarantine_history, window
from jobs import daily_report, feedback

DAYS = ["2024-05-01", "2024-05-02", "2024-05-03"]
SECRET_KEY = "u_pseudonym_that_must_not_show"


def _write(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)


def _metrics_row(hit: float) -> dict:
    row = dict.fromkeys(METRIC_COLUMNS, 1.0)
    row.update(strategy="all", model_version="all", hit_rate=hit, coverage=0.4, diversity=0.6)
    return row


@pytest.fixture()
def night(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Three nights of ops records, feedback tables in a DuckDB warehouse, an MLflow store."""
    from mlflow.tracking import MlflowClient

    lake = Lake(str(tmp_path / "lake"))
    for k, day in enumerate(DAYS):
        _write(Path(lake.ops("reconciliation", day)) / "events.json",
               {"quarantine_by_reason": {"duplicate": 3 + k, "bot": 10 * k}})
        _write(Path(lake.ops("reconciliation", day)) / "catalog.json",
               {"quarantine_by_reason": {"missing_title": 1}})
        _write(Path(lake.ops("validation", day)) / "clean_events" / "results.json",
               {"success": k != 1, "n_expectations": 5, "critical_failures": int(k == 1),
                "warnings": 0, "results": [{"expectation": "expect_table_row_count_to_be_between",
                                            "observed": 100 + k}]})
    _write(Path(lake.ops("training", DAYS[0])) / "summary.json",
           {"registered_version": "1", "metrics": {"ndcg@10": 0.05}})
    _write(Path(lake.ops("training", DAYS[2])) / "summary.json",
           {"registered_version": "2", "metrics": {"ndcg@10": 0.08}})
    _write(Path(lake.dataset("ops", "promotion")) / "promotion_log.jsonl", json.dumps(
        {"kind": "gate", "ds": DAYS[2], "challenger_version": "2", "champion_version": "1",
         "metrics": {"challenger": {"ndcg@10": 0.07}, "champion": {"ndcg@10": 0.06}}}) + "\n")
    scores = Path(lake.partition("scores", "user_topk", DAYS[2]))
    scores.mkdir(parents=True)
    pd.DataFrame({"user_key": [SECRET_KEY], "item_id": ["i1"]}).to_parquet(scores / "p.parquet")
    (tmp_path / "mlflow").mkdir()
    values = {
        "LAKE_ROOT": lake.root,
        "WAREHOUSE_URL": f"duckdb:///{tmp_path}/wh.duckdb",
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow/mlflow.db",
        "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "mlflow" / "artifacts"),
    }
    for key, value in values.items():
        monkeypatch.setenv(f"ECREC_{key}", value)
    monkeypatch.delenv("ECREC_CONFIG", raising=False)
    MlflowClient(tracking_uri=values["MLFLOW_TRACKING_URI"]).search_experiments()  # creates it
    cfg = load_config(None)
    for k, day in enumerate(DAYS[1:]):
        feedback.replace_partition(cfg, feedback.METRICS_TABLE, day,
                                   pd.DataFrame([_metrics_row(0.1 + 0.05 * k)]))
        drift = pd.DataFrame([{"feature": f, "psi": 0.02 + 0.2 * k, "n_reference": 5,
                               "n_current": 5, "status": "stable"}
                              for f in ("score", "item_popularity")], columns=list(DRIFT_COLUMNS))
        feedback.replace_partition(cfg, feedback.DRIFT_TABLE, day, drift)
    return cfg


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_history_readers_on_literal_records(night):
    lake = Lake(night.lake_root)
    q = quarantine_history(lake, DAYS)
    assert q[(q.ds == DAYS[2]) & (q.reason == "bot")]["rows"].tolist() == [20]
    assert set(q["source"]) == {"events", "catalog"}
    mm = model_metric_history(lake, DAYS)
    got = {(r.version, r.source): r.ndcg_at_10 for r in mm.itertuples()}
    assert got == {("1", "training test split"): 0.05, ("1", "gate holdout"): 0.06,
                   ("2", "training test split"): 0.08, ("2", "gate holdout"): 0.07}
    assert window(DAYS[2], 3) == DAYS
    with pytest.raises(ValueError, match="nights must be >= 1"):
        window(DAYS[2], 0)


def test_html_report_has_every_plot_embedded_and_is_logged_to_mlflow(night):
    from mlflow.tracking import MlflowClient

    argv = ["--ds", DAYS[2], "--nights", "3"]
    assert daily_report.main(argv) == 0
    out = Path(Lake(night.lake_root).ops("report", DAYS[2]))
    page = (out / "report.html").read_text()
    images = _images(page)
    assert len(images) == 4 and all(img.startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    assert "class='missing'" not in page  # every plot had data
    for title in ("Quarantine", "Feedback trend", "Drift", "Model metric by version"):
        assert f"<h2>{title}</h2>" in page
    assert "src='http" not in page and "<script" not in page  # one self-contained file
    assert SECRET_KEY not in page and SECRET_KEY not in (out / "report.json").read_text()
    assert not list(out.glob(".*.tmp"))
    index = Path(Lake(night.lake_root).dataset("ops", "validation")) / "index.html"
    assert f"ds={DAYS[1]}/clean_events/index.html" in index.read_text()

    client = MlflowClient(tracking_uri=night.mlflow_tracking_uri, registry_uri=night.mlflow_tracking_uri)
    exp = client.get_experiment_by_name(night.mlflow_experiment + "-reports")
    assert exp.tags.get("mlflow.note.content")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.data.tags["ds"] == DAYS[2] and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "report.html", "report.md", "report.json"}
    # Re-reporting the night replaces the files of the same run.
    assert daily_report.main(argv) == 0
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_report_without_feedback_or_mlflow_says_what_is_missing(night, tmp_path, monkeypatch,
                                                               capfd):
    monkeypatch.setenv("ECREC_WAREHOUSE_URL", f"duckdb:///{tmp_path}/empty.duckdb")
    monkeypatch.setenv("ECREC_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/nowhere/mlflow.db")
    assert daily_report.main(["--ds", DAYS[2], "--nights", "3"]) == 0
    page = (Path(Lake(night.lake_root).ops("report", DAYS[2])) / "report.html").read_text()
    assert len(_images(page)) == 2  # quarantine and model metrics come from the lake
    assert "no feedback metrics in these nights" in page
    assert "not logged to MLflow" in capfd.readouterr().err  # setup_logging: stderr
    assert not (tmp_path / "nowhere").exists()


PRIVACY_DS = "2024-03-01"


def test_report_counts_queries_held_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(env={}, lake_root=str(tmp_path / "lake"))
    monkeypatch.setattr(daily_report, "_warehouse_rows", lambda cfg, ds: {"error": "not built"})
    missing = daily_report.render(daily_report.collect(cfg, PRIVACY_DS))
    assert "- search queries: missing (build_features did not run for this ds)" in missing

    ops = Path(Lake(cfg.lake_root).ops("privacy", PRIVACY_DS))
    ops.mkdir(parents=True)
    (ops / "search_queries.json").write_text(json.dumps({
        "ds": PRIVACY_DS, "min_query_users": 5, "queries_total": 40, "queries_published": 9,
        "queries_below_k": 29, "queries_pii": {"email": 1, "ip": 0, "card": 0, "phone": 1},
        "searches_held_back": 35}))
    text = daily_report.render(daily_report.collect(cfg, PRIVACY_DS))
    assert ("- search queries in the window: 40, published 9; held back: 29 issued by fewer than 5 "
            "users, 2 shaped like personal data (email=1, ip=0, card=0, phone=1); 35 searches "
            "not published") in text
