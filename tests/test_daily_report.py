"""jobs.daily_report: the privacy section reports what build_features held back (counts only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecrec_lib.config import load_config
from ecrec_lib.lake import Lake
from jobs import daily_report

DS = "2024-03-01"


def test_report_counts_queries_held_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(env={}, lake_root=str(tmp_path / "lake"))
    monkeypatch.setattr(daily_report, "_warehouse_rows", lambda cfg, ds: {"error": "not built"})
    missing = daily_report.render(daily_report.collect(cfg, DS))
    assert "- search queries: missing (build_features did not run for this ds)" in missing

    ops = Path(Lake(cfg.lake_root).ops("privacy", DS))
    ops.mkdir(parents=True)
    (ops / "search_queries.json").write_text(json.dumps({
        "ds": DS, "min_query_users": 5, "queries_total": 40, "queries_published": 9,
        "queries_below_k": 29, "queries_pii": {"email": 1, "ip": 0, "card": 0, "phone": 1},
        "searches_held_back": 35}))
    text = daily_report.render(daily_report.collect(cfg, DS))
    assert ("- search queries in the window: 40, published 9; held back: 29 issued by fewer than 5 "
            "users, 2 shaped like personal data (email=1, ip=0, card=0, phone=1); 35 searches "
            "not published") in text
