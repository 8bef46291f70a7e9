"""The masking rule (plain Python reference and Spark expressions, with parity), keyed ids, and
the redaction of Great Expectations samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecrec_lib.privacy.masking import REDACTED, mask_line_py, mask_text_py
from ecrec_lib.validation import ExpectationOutcome, SuiteOutcome, scrub_samples

KEY = b"unit-test-key-0123456789abcdef"

TEXTS = [
    None, "", "nail polish", "Mail bob.smith+x@mail.example.co.uk now", "a@b.c",
    "ip 10.0.0.1. and 192.168.100.200", "v6 ::1, fe80::1ff:fe23:4567:890a and std::vector",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "card 4111 1111 1111 1111 ok", "4111-1111-1111-1111",
    "call +49 (170) 123-4567!", "tel 555.123.4567", "2024-01-01T10:00:00+01:00", "2024-01-01 10:00:00",
    "time 10:00:00", "U0001234567", "price 19.99 qty 3", "rtx 4090 16gb", "order 12345",
    "ｍａｉｌ　ｘ＠ｙ．ｄｅ", "é@ü", "1.2.3", "version 1.2.3.4.5",
]
LINES = [
    '{"event_id":"e1","event_time":"2024-01-01T10:00:00+00:00","user_id":"U123","session_id":"s1",'
    '"ip":"10.0.0.1","email":"a@b.c","phone":"+1 555 123 4567","name":{"f":"x"},'
    '"query":"say \\"user_id\\": 5"}',
    '{"user_id": 123, "query": "hi bob@x.org", "email": null, "user_id',
    '{"event_id":"e1","user_id":"U12',  # truncated inside the id
    '{ "user_id" : "a\\"b", "address": "1 Main St", "user_agent": "Mozilla/5.0 (X11)"}',
    "{not json", "", "[1, 2]",
    # long inputs: every pattern must stay linear (and Java's engine must not overflow its stack)
    json.dumps({"user_id": "u1", "query": "a" * 200_000}), "a.a" * 50_000, "1 " * 50_000,
    '{"user_id":"' + "\\x" * 50_000,
]


@pytest.mark.parametrize(("text", "want"), [
    ("write to jane.doe@example.com today", "write to <email> today"),
    ("from 10.0.0.1 and ::1", "from <ip> and <ip>"),
    ("pay 4111 1111 1111 1111", "pay <card>"),
    ("call +49 170 1234567", "call <phone>"),
    ("call (555) 123-4567", "call (<phone>"),
    ("2024-01-01T10:00:00+01:00 2024-01-01 10:00:00", "2024-01-01T10:00:00+01:00 2024-01-01 10:00:00"),
    ("U0001234567 sku-12345 costs 19.99", "U0001234567 sku-12345 costs 19.99"),  # ids, prices
    ("std::vector", "std::vector"),
])
def test_mask_text_reference(text: str, want: str) -> None:
    assert mask_text_py(text) == want


def test_mask_line_reference_keys_ids_and_redacts_pii() -> None:
    out = mask_line_py(LINES[0], {"user_id": "k" * 64, "event_id": "e" * 32})
    assert json.loads(out) == {
        "event_id": "e" * 32, "event_time": "2024-01-01T10:00:00+00:00", "user_id": "k" * 64,
        "session_id": "<session_id>", "ip": REDACTED, "email": REDACTED, "phone": REDACTED,
        "name": REDACTED, "query": 'say "user_id": 5',  # a key inside a string is text
    }
    assert mask_line_py(LINES[2]) == '{"event_id":"<event_id>","user_id":"<user_id>"'
    truncated = mask_line_py(LINES[1], {"user_id": "K"})
    assert '"user_id":"K"' in truncated and "123" not in truncated and "bob@x.org" not in truncated
    assert "Mozilla" not in mask_line_py(LINES[3]) and "Main St" not in mask_line_py(LINES[3])


@pytest.mark.spark
def test_spark_masking_matches_the_reference(spark) -> None:
    from pyspark.sql import functions as F

    from ecrec_lib.privacy.masking import mask_line_col, mask_text_col

    texts = spark.createDataFrame([(t,) for t in TEXTS], "t string")
    got = [r[0] for r in texts.select(mask_text_col("t")).collect()]
    assert got == [mask_text_py(t) for t in TEXTS]

    rows = [(line, f"uk{i}" if i % 2 else None, "ev1") for i, line in enumerate(LINES)]
    lines = spark.createDataFrame(rows, "line string, uk string, ev string")
    got = [r[0] for r in lines.select(
        mask_line_col("line", {"user_id": F.col("uk"), "event_id": F.col("ev")})).collect()]
    assert got == [mask_line_py(line, {"user_id": uk, "event_id": ev}) for line, uk, ev in rows]


@pytest.mark.spark
def test_keyed_ids_match_the_reference(spark) -> None:
    from ecrec_lib.pipeline.pseudonymize import key_ids, keyed_id_py

    rows = [("e1", "s1"), ("e2", None), (None, "s1"), ("ü-ñ", "s 2")]
    df = spark.createDataFrame(rows, "event_id string, session_id string")
    got = [tuple(r) for r in key_ids(df, KEY).collect()]
    want = [tuple(None if v is None else keyed_id_py(KEY, f, v) for f, v in
                  zip(("event_id", "session_id"), r, strict=True)) for r in rows]
    assert got == want
    assert keyed_id_py(KEY, "event_id", "x") != keyed_id_py(KEY, "session_id", "x")
    assert len(got[0][0]) == 32
    with pytest.raises(ValueError, match="16 bytes"):
        key_ids(df, b"short")


def test_scrub_samples_redacts_raw_columns_and_masks_the_rest() -> None:
    raw_id = "user-8472"
    outcome = SuiteOutcome("raw_events", "2024-01-01", [
        ExpectationOutcome("expect_column_values_to_match_regex", "user_id", "critical", False,
                           unexpected_count=1, examples=[raw_id]),
        ExpectationOutcome("expect_column_values_to_be_in_set", "event_type", "warning", False,
                           unexpected_count=2, examples=["bob@example.com", "hover"]),
    ], gx_result={"results": [
        {"expectation_config": {"kwargs": {"column": "user_id"}},
         "result": {"partial_unexpected_list": [raw_id], "unexpected_count": 1,
                    "partial_unexpected_counts": [{"value": raw_id, "count": 1}]}},
        {"expectation_config": {"kwargs": {"column": "event_type"}},
         "result": {"partial_unexpected_list": ["bob@example.com", "hover"], "observed_value": 3}},
    ]})
    scrub_samples(outcome, ("user_id",))
    text = json.dumps(outcome.to_dict()) + outcome.summary()
    assert raw_id not in text and "bob@example.com" not in text
    assert outcome.results[1].examples == ["<email>", "hover"]
    assert outcome.gx_result["results"][0]["result"]["unexpected_count"] == 1  # counts stay
    assert outcome.gx_result["results"][1]["result"]["observed_value"] == 3


@pytest.mark.spark
def test_raw_suite_results_show_no_pii(spark, tmp_path: Path) -> None:
    """A failing raw suite (e-mails typed as event types) writes its samples masked: results.json
    and index.html under ops/validation hold no address, and neither does the error message."""
    from ecrec_lib import schema as S
    from ecrec_lib.pipeline.clean import RAW_REDACTED_COLUMNS
    from ecrec_lib.validation import DataContractError, validate
    from expectations import SUITES, SuiteContext

    rows = [(f"e{i}", "2024-01-01T10:00:00+00:00", f"user-{i}", "s", f"bob{i}@example.com")
            for i in range(5)]
    df = spark.createDataFrame(rows, "event_id string, event_time string, user_id string, "
                                     "session_id string, event_type string")
    present = tuple(c for c in S.RAW_EVENT_FIELDS if c in df.columns)
    suite = SUITES["raw_events"](SuiteContext(ds="2024-01-01", present_columns=present))
    out = tmp_path / "raw_events"
    try:
        validate(spark, df, suite, "raw_events", "2024-01-01", str(out), RAW_REDACTED_COLUMNS)
    except DataContractError as exc:
        assert "example.com" not in str(exc)
    stored = (out / "results.json").read_text() + (out / "index.html").read_text()
    assert "<email>" in stored or "&lt;email&gt;" in stored  # the samples were there, masked
    assert "example.com" not in stored and "user-1" not in stored
