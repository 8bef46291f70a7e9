"""The GX suites and ecrec_lib.validation: severities, readable failures, stored results."""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
from pathlib import Path

import pytest

from expectations import SUITES, SuiteContext

DS = "2024-01-01"
KEY_OK = "a" * 64


def test_every_suite_builds_with_severities() -> None:
    for name, build in SUITES.items():
        suite = build(SuiteContext(ds=DS, prev_rows=10, min_rows=1))
        assert suite.name == name and len(suite.expectations) >= 3
        severities = {e.meta.get("severity") for e in suite.expectations}
        assert severities <= {"critical", "warning"} and "critical" in severities, name
    # the volume bound is derived from the previous partition: ceil(10 * (1 - 0.5)) = 5
    suite = SUITES["clean_events"](SuiteContext(ds=DS, prev_rows=10, volume_drop_fraction=0.5))
    bounds = [e.min_value for e in suite.expectations if e.expectation_type == "expect_table_row_count_to_be_between"]
    assert bounds == [5]


@pytest.mark.spark
def test_clean_events_suite_failures_are_readable(spark, tmp_path: Path, caplog) -> None:
    from ecrec_lib.schema import CLEAN_EVENT_COLUMNS
    from ecrec_lib.validation import (
        REDACTED,
        DataContractError,
        enforce,
        run_suite,
        store_outcome,
        write_index,
    )

    ddl = ("event_id string, event_time timestamp, user_key string, session_id string, "
           "event_type string, item_id string, query string, position long, price double, "
           "quantity long, device string, country string")

    def row(eid: str, key: str = KEY_OK, price: float = 1.0, device: str = "mobile",
            t: dt.datetime = dt.datetime(2024, 1, 1, 12)) -> tuple:
        return (eid, t, key, "s", "view", "i1", None, 1, price, None, device, "DE")

    good = [row(f"e{i}") for i in range(8)]
    ok_df = spark.createDataFrame([*good, row("e9", device="fridge")], ddl)
    outcome = run_suite(ok_df, SUITES["clean_events"](SuiteContext(ds=DS, prev_rows=9)), "clean_events", DS)
    assert outcome.success and [w.column for w in outcome.warnings] == ["device"]
    assert not ok_df.storageLevel.useMemory  # GX must not leave the validated frame cached
    with caplog.at_level(logging.WARNING, logger="ecrec_lib.validation"):
        enforce(outcome)  # warnings only: logged, no exception
    assert "fridge" in caplog.text

    bad_df = spark.createDataFrame([
        *good, row("e0"), row("x1", key="alice@example.com"), row("x2", price=-5.0),
        row("x3", t=dt.datetime(2024, 1, 3, 12)),
    ], ddl)
    ctx = SuiteContext(ds=DS, prev_rows=100, volume_drop_fraction=0.5)
    outcome = run_suite(bad_df, SUITES["clean_events"](ctx), "clean_events", DS)
    failed = {(r.expectation, r.column) for r in outcome.critical_failures}
    assert failed == {
        ("expect_column_values_to_be_unique", "event_id"),
        ("expect_column_values_to_match_regex", "user_key"),
        ("expect_column_values_to_be_between", "price"),
        ("expect_column_max_to_be_between", "event_time"),
        ("expect_table_row_count_to_be_between", None),
    }
    with pytest.raises(DataContractError) as err:
        enforce(outcome)
    msg = str(err.value)
    assert "5 critical" in msg and "-5.0" in msg and "e0" in msg
    # an e-mail where a user_key belongs is redacted like every sample of a personal-data
    # column: ops/ and logs never carry it
    assert "user_key" in msg and REDACTED in msg and "alice@example.com" not in msg
    assert "observed=12" in msg and "previous partition (100 rows" in msg
    assert tuple(bad_df.columns) == CLEAN_EVENT_COLUMNS

    # Pages in the lake's layout: ops/validation/ds=D/<dataset>/, two days.
    root = tmp_path / "validation"
    bad_dir, ok_dir = root / f"ds={DS}" / "clean_events", root / "ds=2023-12-31" / "clean_events"
    store_outcome(spark, outcome, str(bad_dir))
    store_outcome(spark, run_suite(ok_df, SUITES["clean_events"](SuiteContext(ds=DS, prev_rows=9)),
                                   "clean_events", "2023-12-31"), str(ok_dir))
    stored = json.loads((bad_dir / "results.json").read_text())
    assert stored["success"] is False and stored["critical_failures"] == 5
    assert stored["gx_result"]["success"] is False
    page = (bad_dir / "index.html").read_text()
    assert "FAILED" in page and "expect_column_values_to_match_regex" in page
    # Observed values and unexpected counts are filled for passing expectations too.
    by_key = {(r["expectation"], r["column"]): r for r in stored["results"]}
    assert by_key[("expect_table_row_count_to_be_between", None)]["observed"] == 12
    passing = [r for r in stored["results"] if r["success"]]
    assert passing and all(r["observed"] is not None or r["unexpected_count"] is not None
                           for r in passing)
    assert by_key[("expect_column_values_to_not_be_null", "event_id")]["unexpected_count"] == 0
    assert "<td>12</td>" in page and "<td>0 (0.00%)</td>" in page
    # A pseudonym column's bad value is an email here: redacted from the page and the JSON.
    for text, redacted in ((page, html.escape(REDACTED)),
                           ((bad_dir / "results.json").read_text(), REDACTED)):
        assert "alice@example.com" not in text and redacted in text
    assert "-5.0" in page  # other columns keep their examples
    index = write_index(root).read_text()
    assert index.index(DS) < index.index("2023-12-31")  # newest first
    assert f"ds={DS}/clean_events/index.html" in index and "FAILED (5 critical)" in index
    assert "ds=2023-12-31/clean_events/index.html" in index and "9 rows" in index


@pytest.mark.spark
def test_background_preload_then_suite(spark, monkeypatch) -> None:
    """The GX preload thread finishes, a later suite waits for it and still validates; a
    preload that fails is swallowed (the job's own import reports the real error)."""
    from ecrec_lib import validation

    def broken() -> None:
        raise ImportError("simulated broken GX install")

    with monkeypatch.context() as m:
        m.setattr(validation, "_ephemeral_context", broken)
        failing = validation.preload_in_background()
        failing.join(timeout=60)
        assert not failing.is_alive()

    thread = validation.preload_in_background()
    assert validation._PRELOAD is thread  # registered, so run_suite can wait for it
    ddl = "item_id string, title string"
    df = spark.createDataFrame([("i1", "t")], ddl)
    import great_expectations as gx

    suite = gx.ExpectationSuite(name="preload_check", expectations=[
        gx.expectations.ExpectColumnValuesToNotBeNull(column="title"),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=2),
    ])
    outcome = validation.run_suite(df, suite, "preload_check")
    assert not thread.is_alive()  # run_suite joined it before building its own context
    assert [r.success for r in outcome.results] == [True, False]
