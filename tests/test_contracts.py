"""The raw-contract validator on tiny literal files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ecrec_lib import contracts
from ecrec_lib.contracts import (
    DUPLICATE_EVENT_ID,
    NOTE_CATALOG_ABSENT,
    NOTE_NON_UTC,
    UNEXPECTED_FIELD,
    parse_event_time,
    validate_raw_catalog_file,
    validate_raw_events_file,
    validate_raw_partition,
)
from ecrec_lib.schema import (
    REASON_BAD_EVENT_TYPE,
    REASON_BAD_PRICE,
    REASON_BAD_QUANTITY,
    REASON_BAD_TIME,
    REASON_BAD_TIMESTAMP,
    REASON_BOT,
    REASON_DUPLICATE_ITEM,
    REASON_INVALID_UTF8,
    REASON_MALFORMED,
    REASON_MISSING_REQUIRED,
    REASON_MISSING_TITLE,
    REASON_MISSING_USER,
    REASON_NEGATIVE_PRICE,
    REASON_OUT_OF_WINDOW,
    REASON_TOO_LONG,
    REASON_UNKNOWN_ITEM,
)

DS = "2024-01-01"


def event(**kw: object) -> dict:
    base = {
        "event_id": "e1", "event_time": "2024-01-01T10:00:00+00:00", "user_id": "U1",
        "session_id": "s1", "event_type": "view", "item_id": "P1", "query": None,
        "position": 1, "price": 9.99, "quantity": None, "device": "mobile", "country": "DE",
        "ip": "1.2.3.4", "email": None,
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


def item(**kw: object) -> dict:
    base = {
        "item_id": "P1", "title": "Red Mug", "description": "", "category_path": "Home > Mugs",
        "brand": None, "price": 4.99, "in_stock": True, "created_at": "2023-12-01T00:00:00+00:00",
    }
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


def write(path: Path, lines: list[str | dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    path.write_bytes(gzip.compress(text.encode()))
    return path


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"event_id": "e1", "event_time": "2024-01-01T10:0', REASON_MALFORMED),
        ("[1, 2, 3]", REASON_MALFORMED),
        (event(user_id=None), REASON_MISSING_USER),
        (event(user_id=...), REASON_MISSING_USER),
        (event(user_id="  "), REASON_MISSING_USER),
        (event(session_id=...), REASON_MISSING_REQUIRED),
        (event(event_type="click", item_id=None), REASON_MISSING_REQUIRED),
        (event(event_type="search", item_id=None, query=None, price=None), REASON_MISSING_REQUIRED),
        (event(event_type="wishlist"), REASON_BAD_EVENT_TYPE),
        (event(event_time="2024-01-01T10:00:00"), REASON_BAD_TIMESTAMP),  # no offset
        (event(event_time="2024-01-01"), REASON_BAD_TIMESTAMP),  # a date: no time, no offset
        (event(user_id=123), "wrong_type:user_id"),
        (event(event_type="search", item_id=None, query={"text": "mug"}), "wrong_type:query"),
        (event(event_type="search", item_id=None, query="a" * 200_000), REASON_TOO_LONG),
        (event(user_id="u" * 257), REASON_TOO_LONG),
        (event(event_time="yesterday"), REASON_BAD_TIME),
        (event(event_time="2024-01-01T25:00:00+00:00"), REASON_BAD_TIME),
        (event(price=-1.0), REASON_NEGATIVE_PRICE),
        (event(event_type="purchase", quantity=0), REASON_BAD_QUANTITY),
        (event(price="9.99"), "wrong_type:price"),
        (event(position=True), "wrong_type:position"),
        (event(position=1.5), "wrong_type:position"),
        (event(user_agent="Mozilla"), UNEXPECTED_FIELD),
    ],
)
def test_each_bad_event_line_is_named(tmp_path: Path, line: str | dict, problem: str) -> None:
    good = event(event_id="ok")
    path = write(tmp_path / "part-00000.json.gz", [good, line])
    report = validate_raw_events_file(str(path))
    assert report.lines == 2
    assert report.conforming == 1
    assert report.problems[problem] == 1, report.format()
    assert report.examples[problem] == ["part-00000.json.gz:2"]
    assert not report.ok


def test_valid_variants_conform(tmp_path: Path) -> None:
    lines = [
        event(event_id="a"),
        event(event_id="b", event_time="2024-01-01T11:00:00+05:30"),  # other offset: valid
        event(event_id="c", event_time="2024-01-01T12:00:00Z"),
        event(event_id="d", event_time="2024-01-01T12:00:00.250+00:00"),
        event(event_id="e", event_type="search", item_id=None, query="red mug", price=None, position=None),
        event(event_id="f", event_type="purchase", quantity=2, price=0),
        event(event_id="g", price=None, device=None, country=None, ip=...),  # nullable / absent
        event(event_id="h", price=5),  # an integer is a JSON number
    ]
    path = write(tmp_path / "p.json.gz", [*lines, ""])  # blank lines are ignored
    report = validate_raw_events_file(str(path), ds=DS)
    assert report.ok, report.format()
    assert report.lines == len(lines)
    assert report.notes[NOTE_NON_UTC] == 1


def test_parse_event_time_requires_an_offset() -> None:
    assert parse_event_time("2024-01-01T10:00:00-03:00").utcoffset().total_seconds() == -3 * 3600
    assert parse_event_time("2024-01-01 10:00:00+00:00") is None
    assert parse_event_time(1704103200) is None


def test_window_uses_utc_and_the_tolerance(tmp_path: Path) -> None:
    lines = [
        event(event_id="in-late", event_time="2024-01-02T05:59:59+00:00"),
        event(event_id="out-late", event_time="2024-01-02T06:00:00+00:00"),
        event(event_id="in-early", event_time="2023-12-31T18:00:00+00:00"),
        event(event_id="out-early", event_time="2023-12-31T17:59:59+00:00"),
        # 2024-01-01T23:30 at -08:00 is 2024-01-02T07:30 UTC: outside, despite the local date.
        event(event_id="offset", event_time="2024-01-01T23:30:00-08:00"),
    ]
    path = write(tmp_path / "p.json.gz", lines)
    report = validate_raw_events_file(str(path), ds=DS, late_tolerance_hours=6)
    assert report.problems[REASON_OUT_OF_WINDOW] == 3
    assert validate_raw_events_file(str(path)).ok  # no ds: no window check


def test_partition_checks_duplicates_across_files_and_items_against_the_catalog(tmp_path: Path) -> None:
    part = tmp_path / "raw" / "events" / f"ds={DS}"
    write(part / "part-00000.json.gz", [event(event_id="a"), event(event_id="b", item_id="P404")])
    write(part / "part-00001.json.gz", [event(event_id="a"), event(event_id="c")])
    write(tmp_path / "raw" / "catalog" / f"ds={DS}" / "part-00000.json.gz", [item()])
    report = validate_raw_partition(str(tmp_path), "events", DS)
    assert len(report.paths) == 2 and report.lines == 4
    assert report.problems[DUPLICATE_EVENT_ID] == 1
    assert report.examples[DUPLICATE_EVENT_ID] == ["part-00001.json.gz:1"]
    assert report.problems[REASON_UNKNOWN_ITEM] == 1
    assert report.conforming == 2
    unchecked = validate_raw_partition(str(tmp_path), "events", DS, check_items=False)
    assert REASON_UNKNOWN_ITEM not in unchecked.problems


def test_partition_without_catalog_skips_the_item_check_and_says_so(tmp_path: Path) -> None:
    write(tmp_path / "raw" / "events" / f"ds={DS}" / "part-00000.json.gz", [event(item_id="P404")])
    report = validate_raw_partition(str(tmp_path), "events", DS)
    assert report.ok
    assert report.notes[NOTE_CATALOG_ABSENT] == 1


@pytest.mark.parametrize(("per_minute", "bot"), [(60, False), (61, True)])
def test_bot_traffic_is_more_than_the_limit_per_minute(tmp_path: Path, per_minute: int, bot: bool) -> None:
    lines = [event(event_id=f"b{i}", user_id="BOT", event_time=f"2024-01-01T10:00:{i % 60:02d}+00:00")
             for i in range(per_minute)]
    lines.append(event(event_id="b-later", user_id="BOT", event_time="2024-01-01T15:00:00+00:00"))
    lines.append(event(event_id="human", user_id="U2"))
    path = write(tmp_path / "p.json.gz", lines)
    report = validate_raw_events_file(str(path), bot_max_events_per_minute=60)
    if bot:
        assert report.problems[REASON_BOT] == per_minute + 1  # all of the bot's events
        assert report.conforming == 1
    else:
        assert report.ok


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (item(title=None), REASON_MISSING_TITLE),
        (item(title=""), REASON_MISSING_TITLE),
        (item(title=...), REASON_MISSING_TITLE),
        (item(item_id=None), REASON_MISSING_REQUIRED),
        (item(price=-2.0), REASON_BAD_PRICE),
        (item(price="cheap"), "wrong_type:price"),
        (item(in_stock="yes"), "wrong_type:in_stock"),
        (item(created_at="2023-12-01"), REASON_BAD_TIMESTAMP),  # no offset
        (item(created_at="soon"), REASON_BAD_TIME),
        ('{"item_id": "P9", "title": ', REASON_MALFORMED),
        (item(item_id="P1", price=5.99), REASON_DUPLICATE_ITEM),  # same id, other content
    ],
)
def test_each_bad_catalog_row_is_named(tmp_path: Path, row: str | dict, problem: str) -> None:
    path = write(tmp_path / "c.json.gz", [item(), row])
    report = validate_raw_catalog_file(str(path))
    assert report.conforming == 1
    assert report.problems[problem] == 1, report.format()


def test_catalog_allows_null_price_and_identical_resends(tmp_path: Path) -> None:
    path = write(tmp_path / "c.json.gz", [item(), item(), item(item_id="P2", price=None, brand="X")])
    report = validate_raw_catalog_file(str(path))
    assert report.ok, report.format()


def test_missing_partition_and_file_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"raw/events/ds=2024-01-01 does not exist"):
        validate_raw_partition(str(tmp_path), "events", DS)
    (tmp_path / "raw" / "events" / f"ds={DS}").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no part"):
        validate_raw_partition(str(tmp_path), "events", DS)
    with pytest.raises(ValueError, match="kind must be one of"):
        validate_raw_partition(str(tmp_path), "clicks", DS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        validate_raw_events_file(str(tmp_path / "nope.json.gz"))


def test_cli_exit_codes(tmp_path: Path, capsys) -> None:
    part = tmp_path / "raw" / "events" / f"ds={DS}"
    write(part / "part-00000.json.gz", [event()])
    assert contracts.main(["--lake", str(tmp_path), "--ds", DS]) == 0
    capsys.readouterr()
    write(part / "part-00000.json.gz", [event(), "not json"])
    assert contracts.main(["--lake", str(tmp_path), "--ds", DS, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["problems"] == {REASON_MALFORMED: 1}
    assert out["conforming"] == 1 and out["non_conforming"] == 1
    assert contracts.main(["--lake", str(tmp_path), "--ds", "2024-02-02"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_docs_name_every_schema_column_and_reason() -> None:
    """docs/data_contracts.md must describe everything schema.py defines."""
    from ecrec_lib import lake, schema

    doc = (Path(__file__).resolve().parents[1] / "docs" / "data_contracts.md").read_text()
    names: set[str] = set()
    for attr in dir(schema):
        value = getattr(schema, attr)
        if attr.startswith("REASON_"):
            names.add(value)
        elif attr.endswith(("_COLUMNS", "_FIELDS", "_REQUIRED", "_TYPES")) or attr == "DEVICES":
            names.update(value)
    for stage in ("RAW", "CLEAN", "QUARANTINE", "QUARANTINE_RAW", "FEATURES", "SCORES", "OPS"):
        names.update(getattr(lake, stage))
    missing = sorted(n for n in names if f"`{n}`" not in doc and f"/{n}/" not in doc)
    assert not missing, f"docs/data_contracts.md does not mention {missing}"


def test_invalid_utf8_is_reported_never_decoded_as_a_replacement(tmp_path: Path) -> None:
    """Two ids that differ only in their invalid bytes would both decode to "u\ufffd1": the
    validator names the line instead of merging them; a real U+FFFD (valid UTF-8) is fine."""
    good = json.dumps(event(event_id="ok")).encode()
    bad = json.dumps(event(event_id="bad", user_id="u#1")).encode().replace(b"u#1", b"u\xff\xfe1")
    real = json.dumps(event(event_id="fffd", user_id="u\ufffd1"), ensure_ascii=False).encode()
    path = tmp_path / "p.json.gz"
    path.write_bytes(gzip.compress(b"\n".join([good, bad, real]) + b"\n"))
    report = validate_raw_events_file(str(path))
    assert report.problems == {REASON_INVALID_UTF8: 1}, report.format()
    assert report.examples[REASON_INVALID_UTF8] == ["p.json.gz:2"]
    assert report.conforming == 2


def test_size_limits_come_from_the_contract(tmp_path: Path) -> None:
    """A line over MAX_LINE_BYTES is field_too_long even when every field is short (many unknown
    fields); a field exactly at its limit conforms."""
    limit = contracts.MAX_FIELD_CHARS["events"]["query"]
    at_limit = event(event_id="a", event_type="search", item_id=None, query="q" * limit)
    over = event(event_id="b", event_type="search", item_id=None, query="q" * (limit + 1))
    wide = event(event_id="c", **{f"x{i}": "v" * 100 for i in range(200)})  # ~21 kB of fields
    path = write(tmp_path / "p.json.gz", [at_limit, over, wide])
    report = validate_raw_events_file(str(path))
    assert report.problems[REASON_TOO_LONG] == 2, report.format()
    assert report.examples[REASON_TOO_LONG] == ["p.json.gz:2", "p.json.gz:3"]
    assert len(json.dumps(wide)) > contracts.MAX_LINE_BYTES["events"]
    cat = write(tmp_path / "catalog" / "c.json.gz", [item(), item(item_id="P2", title="t" * 1_001)])
    assert validate_raw_catalog_file(str(cat)).problems == {REASON_TOO_LONG: 1}


def test_naive_timestamps_are_bad_timestamp_not_unparsable() -> None:
    assert contracts.is_naive_timestamp("2024-01-01T10:00:00")
    assert contracts.is_naive_timestamp("2024-01-01 10:00:00.5")
    assert not contracts.is_naive_timestamp("2024-01-01T10:00:00+00:00")
    assert not contracts.is_naive_timestamp("yesterday")
    problems, _ = contracts.check_catalog_row(item(created_at="2023-12-01T00:00:00")), None
    assert problems == [REASON_BAD_TIMESTAMP]
