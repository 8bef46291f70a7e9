"""lineage: the assets each task declares and the figures read back from the night's records."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ecrec_lib import lineage
from ecrec_lib.lake import FEATURES, Lake

DS = "2024-02-01"


def _write(path: str, record: dict) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / ("events.json" if "reconciliation" in path else "summary.json")).write_text(
        json.dumps(record))


def test_every_asset_has_a_producer_and_the_chain_is_connected() -> None:
    produced = {a for _, outs in lineage.TASK_LINEAGE.values() for a in outs}
    consumed = {a for ins, _ in lineage.TASK_LINEAGE.values() for a in ins}
    # Raw data lands from outside; everything else a task reads, another task wrote.
    assert consumed - produced == set(lineage.RAW)
    assert {f"features/{n}" for n in FEATURES} <= produced
    uris = [lineage.asset_uri(a) for a in produced | consumed]
    assert len(set(uris)) == len(uris) and all(u.startswith("x-ecrec://") for u in uris)
    assert lineage.asset_uri("model") == "x-ecrec://mlflow/model"
    assert lineage.asset_uri("warehouse/items") == "x-ecrec://warehouse/warehouse/items"


def test_figures_come_from_the_nights_records(tmp_path: Path) -> None:
    lake = Lake(str(tmp_path))
    rec = {"input_rows": 120, "clean_rows": 100, "quarantined_rows": 15, "duplicate_rows": 5,
           "quarantine_by_reason": {"malformed_json": 10, "bad_timestamp": 5}, "status": "ok",
           "unknown_fields": {"x": 1}}
    _write(lake.ops("reconciliation", DS), rec)
    clean = lineage.figures("clean", str(tmp_path), DS)
    assert clean["clean/events"]["quarantine_by_reason"] == {"malformed_json": 10,
                                                             "bad_timestamp": 5}
    assert clean["clean/events"]["input_rows"] == 120 and "unknown_fields" not in clean["clean/events"]
    assert clean["clean/catalog"] == {}  # no record written for the catalog: nothing claimed

    part = Path(lake.features("user_sequences", DS))
    part.mkdir(parents=True)
    pd.DataFrame({"a": range(7)}).to_parquet(part / "part-0.parquet")
    pd.DataFrame({"a": range(3)}).to_parquet(part / "part-1.parquet")
    feats = lineage.figures("build_features", str(tmp_path), DS)
    assert feats["features/user_sequences"]["rows"] == 10
    assert feats["features/item_stats"]["rows"] is None

    _write(lake.ops("scoring", DS), {"model_version": "3", "rows": {"user_topk": 40, "trending": 5}})
    pub = lineage.figures("publish", str(tmp_path), DS)
    assert pub["warehouse/user_topk"] == {"rows_published": 40, "model_version": "3"}
    assert lineage.key_figures("score", str(tmp_path), DS)["scores/trending"]["rows"] == 5
