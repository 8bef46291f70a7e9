"""Retention per zone (ecrec_lib/privacy/retention.py, jobs.housekeeping) on a tiny literal lake."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from ecrec_lib.config import ConfigError, load_config

DS = "2024-03-10"
SHORT = {"lookback_days": 3, "raw_retention_days": 5, "quarantine_raw_retention_days": 3,
         "quarantine_retention_days": 5, "clean_retention_days": 5,
         "features_retention_days": 3, "scores_retention_days": 4}


def _day(offset: int) -> str:
    return (dt.date.fromisoformat(DS) - dt.timedelta(days=offset)).isoformat()


@pytest.fixture()
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    for folder in ("raw/events", "quarantine_raw/events", "clean/events", "features/user_sequences",
                   "scores/user_topk"):
        for offset in range(12):
            part = root / folder / f"ds={_day(offset)}"
            part.mkdir(parents=True)
            (part / "part-0.parquet").write_bytes(b"x")
    (root / "clean/events/.deleted-ds=2023-01-01-abc").mkdir()  # a killed earlier run
    return root


def _cfg(lake: Path, tmp_path: Path, **extra: object):
    return load_config(None, env={}, lake_root=str(lake), **{**SHORT, **extra},
                       warehouse_url=f"duckdb://{tmp_path / 'wh' / 'warehouse.duckdb'}",
                       mlflow_tracking_uri=f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")


def _left(lake: Path, folder: str) -> list[int]:
    return sorted((dt.date.fromisoformat(DS) - dt.date.fromisoformat(p.name[3:])).days
                  for p in (lake / folder).iterdir() if p.name.startswith("ds="))


def test_retention_shorter_than_lookback_is_refused() -> None:
    with pytest.raises(ConfigError, match="'clean_retention_days' is 10 days, shorter than "
                                          "lookback_days 30.*at least 30"):
        load_config(None, env={}, clean_retention_days=10)
    with pytest.raises(ConfigError, match="quarantine_raw_retention_days"):
        load_config(None, env={"ECREC_LOOKBACK_DAYS": "45"})
    assert load_config(None, env={}).quarantine_raw_retention_days == 30


def test_deletes_past_retention_but_never_lookback_or_champion_window(lake: Path,
                                                                     tmp_path: Path) -> None:
    from ecrec_lib.privacy.retention import apply_retention

    cfg = _cfg(lake, tmp_path)
    dry = apply_retention(cfg, DS, champion_ds=_day(8), dry_run=True)
    assert _left(lake, "clean/events") == list(range(12))  # a dry run deletes nothing
    result = apply_retention(cfg, DS, champion_ds=_day(8))
    assert result.deleted == dry.deleted
    # kept: the last N days (ds included) plus the champion's window (offsets 8, 9, 10)
    assert _left(lake, "clean/events") == [0, 1, 2, 3, 4, 8, 9, 10]
    assert _left(lake, "raw/events") == [0, 1, 2, 3, 4, 8, 9, 10]
    assert _left(lake, "quarantine_raw/events") == [0, 1, 2, 8, 9, 10]
    assert _left(lake, "features/user_sequences") == [0, 1, 2, 8, 9, 10]
    assert _left(lake, "scores/user_topk") == [0, 1, 2, 3, 8, 9, 10]
    assert f"clean/events/ds={_day(8)}" in result.protected
    assert f"clean/events/ds={_day(11)}" in result.deleted
    assert not (lake / "clean/events/.deleted-ds=2023-01-01-abc").exists()
    again = apply_retention(cfg, DS, champion_ds=_day(8))
    assert again.deleted == []  # re-runnable


def test_no_champion_keeps_only_the_lookback(lake: Path, tmp_path: Path) -> None:
    from ecrec_lib.privacy.retention import apply_retention

    apply_retention(_cfg(lake, tmp_path), DS, champion_ds=None)
    assert _left(lake, "features/user_sequences") == [0, 1, 2]


def test_warehouse_trims_only_user_tables(tmp_path: Path, lake: Path) -> None:
    from ecrec_lib.privacy.retention import trim_warehouse
    from ecrec_lib.warehouse import connect

    cfg = _cfg(lake, tmp_path, warehouse_retention_days=2)
    with connect(cfg.warehouse_url, "ecrec") as wh:
        wh.execute("CREATE SCHEMA ecrec")
        wh.execute("CREATE TABLE ecrec.user_topk (ds DATE, user_key TEXT)")
        wh.execute("CREATE TABLE ecrec.metrics_daily (ds DATE, hit_rate DOUBLE)")
        for offset in range(4):
            wh.execute("INSERT INTO ecrec.user_topk VALUES (%s, 'k')", [_day(offset)])
            wh.execute("INSERT INTO ecrec.metrics_daily VALUES (%s, 0.5)", [_day(offset)])
    assert trim_warehouse(cfg, DS, dry_run=True) == {"user_topk": 2}
    assert trim_warehouse(cfg, DS) == {"user_topk": 2}
    with connect(cfg.warehouse_url, "ecrec", read_only=True) as wh:
        assert wh.scalar("SELECT count(*) FROM ecrec.user_topk") == 2
        assert wh.scalar("SELECT count(*) FROM ecrec.metrics_daily") == 4


def test_housekeeping_job_writes_its_summary(lake: Path, tmp_path: Path, monkeypatch) -> None:
    from jobs import housekeeping

    for key, value in SHORT.items():
        monkeypatch.setenv(f"ECREC_{key.upper()}", str(value))
    monkeypatch.setenv("ECREC_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none' / 'm.db'}")
    monkeypatch.setenv("ECREC_WAREHOUSE_URL", f"duckdb://{tmp_path / 'wh' / 'warehouse.duckdb'}")
    assert housekeeping.main(["--ds", DS, "--lake", str(lake)]) == 0
    summary = json.loads((lake / f"ops/housekeeping/ds={DS}/summary.json").read_text())
    assert f"raw/events/ds={_day(11)}" in summary["deleted"] and summary["protected"] == []
    assert _left(lake, "raw/events") == [0, 1, 2, 3, 4]
