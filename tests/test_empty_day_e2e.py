"""End to end: `airflow dags test ecrec_nightly` on a day whose raw events landed empty.

The producer landed the catalog and a `_SUCCESS` marker with no event file. The run succeeds
as "no data": the sensor sees the marker, validate_raw and clean skip with the reason, nothing
downstream runs, the report says why, and yesterday's published warehouse tables are exactly
as they were. The feedback DAG of that day skips too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e_support import airflow_migrate, dags_test, generate, pipeline_env, tail

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

YESTERDAY, DAY = "2024-04-01", "2024-04-02"


def _yesterdays_tables() -> dict[str, pd.DataFrame]:
    """A tiny night already published: two rows per score table."""
    two = {"ds": [YESTERDAY] * 2, "rank": [1, 2], "score": [0.9, 0.8]}
    return {
        "user_topk": pd.DataFrame({"user_key": ["u1", "u1"], "item_id": ["i1", "i2"], **two,
                                   "reason_item_id": [None, "i3"],
                                   "strategy": ["two_tower"] * 2, "model_version": ["1"] * 2}),
        "item_related": pd.DataFrame({"item_id": ["i1", "i1"], "related_item_id": ["i2", "i3"],
                                      **two}),
        "query_topk": pd.DataFrame({"query": ["nail polish"] * 2, "item_id": ["i1", "i2"], **two}),
        "trending": pd.DataFrame({"segment": ["global"] * 2, "item_id": ["i1", "i2"], **two}),
    }


def _snapshot(url: str) -> dict[str, pd.DataFrame]:
    from ecrec_lib.warehouse import connect

    with connect(url, "ecrec", read_only=True) as wh:
        return {t: wh.query(f"SELECT * FROM ecrec.{t} ORDER BY ALL") for t in _yesterdays_tables()}


def test_an_empty_day_is_skipped_as_no_data(tmp_path: Path) -> None:
    from ecrec_lib.generator.writer import write_jsonl_partition
    from ecrec_lib.warehouse import connect, publish

    env = pipeline_env(tmp_path)
    lake = Path(env["ECREC_LAKE_ROOT"])
    generate(env, DAY, days=1, users=40, items=60)  # the day's catalog snapshot lands
    events = lake / "raw" / "events" / f"ds={DAY}"
    shutil.rmtree(events)
    write_jsonl_partition(str(events), [])  # the producer had no event: only _SUCCESS
    assert [p.name for p in events.iterdir()] == ["_SUCCESS"]
    with connect(env["ECREC_WAREHOUSE_URL"], "ecrec") as wh:
        publish(wh, _yesterdays_tables(), YESTERDAY, retention_days=14)
    before = _snapshot(env["ECREC_WAREHOUSE_URL"])
    airflow_migrate(env)

    ok, out = dags_test(env, "ecrec_nightly", DAY)

    assert ok, "the empty day should succeed as no data:\n" + tail(out)
    assert f"ready: {events}/_SUCCESS: landed: _SUCCESS present, no data file" in out
    assert f"no data for ds={DAY}: validate found nothing to do" in out
    assert f"no data for ds={DAY}: clean_events found nothing to do" in out
    rec = json.loads((lake / f"ops/reconciliation/ds={DAY}/events.json").read_text())
    assert rec["status"] == "no_data" and rec["input_rows"] == 0
    report = (lake / f"ops/report/ds={DAY}/report.md").read_text()
    assert f"**no data**: raw events partition {events} landed without any event" in report
    assert f"**no data**: raw events partition {events}" in out  # printed into the task log
    for skipped in ("clean/events", "features/user_sequences", "scores/user_topk",
                    "ops/training_decision"):
        assert not (lake / skipped / f"ds={DAY}").exists(), f"{skipped} ran on an empty day"
    after = _snapshot(env["ECREC_WAREHOUSE_URL"])
    for table, df in before.items():
        assert len(df) == 2
        pd.testing.assert_frame_equal(after[table], df)

    # the feedback DAG has nothing to judge either: it skips instead of waiting 12 h
    ok, out = dags_test(env, "ecrec_feedback", DAY)
    assert ok, tail(out)
    assert f"no data for ds={DAY}: no events landed, nothing to judge" in out
    assert not (lake / f"ops/feedback/ds={DAY}").exists()
