"""The synthetic event generator: determinism, realism, dirt, and the raw contract."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ecrec_lib.contracts import (
    DUPLICATE_EVENT_ID,
    NOTE_NON_UTC,
    UNEXPECTED_FIELD,
    validate_raw_partition,
)
from ecrec_lib.generator import constants as K
from ecrec_lib.generator import generate
from ecrec_lib.generator.sessions import expected_events_per_session
from ecrec_lib.generator.writer import write_jsonl_partition
from ecrec_lib.schema import (
    CATEGORY_SEP,
    EVENT_TYPES,
    RAW_CATALOG_FIELDS,
    RAW_EVENT_FIELDS,
    REASON_BAD_PRICE,
    REASON_BOT,
    REASON_DUPLICATE_ITEM,
    REASON_MALFORMED,
    REASON_MISSING_TITLE,
    REASON_MISSING_USER,
    REASON_NEGATIVE_PRICE,
    REASON_OUT_OF_WINDOW,
    REASON_UNKNOWN_ITEM,
)
from jobs import generate_events

SMALL = dict(start="2024-01-01", days=2, users=300, items=200, seed=7)
DAYS = ("2024-01-01", "2024-01-02")


def read_lines(lake: Path, kind: str, ds: str) -> list[str]:
    out = []
    for part in sorted((lake / "raw" / kind / f"ds={ds}").glob("part-*.json.gz")):
        with gzip.open(part, "rt", encoding="utf-8") as fh:
            out.extend(line.rstrip("\n") for line in fh if line.strip())
    return out


def read_records(lake: Path, kind: str, ds: str) -> list[dict]:
    return [json.loads(line) for line in read_lines(lake, kind, ds)]


def all_files(lake: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(lake)): p.read_bytes()
        for p in sorted((lake / "raw").rglob("*"))
        if p.is_file() and "_truth" not in p.parts
    }


@pytest.fixture(scope="module")
def small_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    lake = tmp_path_factory.mktemp("gen-small")
    return lake, generate(str(lake), **SMALL)


@pytest.fixture(scope="module")
def volume_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """One clean day of ~20k events: enough for ratio tests, still about a second."""
    lake = tmp_path_factory.mktemp("gen-volume")
    summary = generate(str(lake), "2024-03-01", 1, 3000, 800, 11, events_per_day=20_000)
    return lake, summary


@pytest.fixture(scope="module")
def dirty_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    lake = tmp_path_factory.mktemp("gen-dirty")
    summary = generate(str(lake), "2024-03-01", 2, 2000, 600, 5, dirty_rate=0.02, events_per_day=10_000)
    return lake, summary


def test_same_seed_gives_identical_bytes(tmp_path: Path, small_lake) -> None:
    lake, _ = small_lake
    again = tmp_path / "again"
    generate(str(again), **SMALL)
    first, second = all_files(lake), all_files(again)
    assert len(first) == 8  # 2 days x (events, catalog) x (part, _SUCCESS manifest)
    assert first == second


def test_different_seed_gives_different_events(tmp_path: Path, small_lake) -> None:
    lake, _ = small_lake
    other = tmp_path / "other"
    generate(str(other), **{**SMALL, "seed": 8})
    assert read_lines(lake, "events", DAYS[0]) != read_lines(other, "events", DAYS[0])


def test_rerun_replaces_partitions_idempotently(tmp_path: Path) -> None:
    path = str(tmp_path / "raw" / "events" / "ds=2024-01-01")
    write_jsonl_partition(path, [f'{{"n":{i}}}' for i in range(5)], max_lines=2)
    assert sorted(p.name for p in Path(path).iterdir()) == [
        "_SUCCESS", "part-00000.json.gz", "part-00001.json.gz", "part-00002.json.gz",
    ]
    write_jsonl_partition(path, ['{"n":9}'], max_lines=2)
    assert sorted(p.name for p in Path(path).iterdir()) == ["_SUCCESS", "part-00000.json.gz"]
    assert gzip.decompress((Path(path) / "part-00000.json.gz").read_bytes()) == b'{"n":9}\n'
    assert not any(p.name.startswith(".") for p in Path(path).parent.iterdir())


def test_clean_output_conforms_to_the_contract(small_lake) -> None:
    lake, summary = small_lake
    for day in summary.per_day:
        events = validate_raw_partition(str(lake), "events", day.ds)
        assert events.lines == day.lines_written == day.events > 0
        assert events.ok, events.format()
        assert not events.notes, events.format()
        catalog = validate_raw_partition(str(lake), "catalog", day.ds)
        assert catalog.ok, catalog.format()
        assert catalog.lines == day.catalog_items


def test_event_records_carry_every_contract_field(small_lake) -> None:
    lake, _ = small_lake
    records = read_records(lake, "events", DAYS[1])
    assert all(set(r) == set(RAW_EVENT_FIELDS) for r in records)
    for r in records:
        if r["event_type"] == "search":
            assert r["item_id"] is None and r["query"] and r["price"] is None
        else:
            assert r["item_id"] and r["query"] is None and r["price"] > 0
        if r["event_type"] in ("add_to_cart", "purchase"):
            assert r["quantity"] in (1, 2, 3)
        assert r["event_time"].startswith(DAYS[1]) and r["event_time"].endswith("+00:00")
    times = [r["event_time"] for r in records]
    assert times == sorted(times)
    assert any(r["email"] for r in records) and all(r["ip"] for r in records)  # PII to strip


def test_catalog_snapshots_grow_with_new_items(small_lake) -> None:
    lake, summary = small_lake
    day1 = {r["item_id"]: r for r in read_records(lake, "catalog", DAYS[0])}
    day2 = {r["item_id"]: r for r in read_records(lake, "catalog", DAYS[1])}
    assert set(day1) < set(day2)
    new = set(day2) - set(day1)
    assert len(new) == summary.per_day[1].new_items > 0
    assert all(day2[i]["created_at"].startswith(DAYS[1]) for i in new)
    assert all(r["created_at"] < DAYS[1] for r in day1.values())
    for r in day2.values():
        assert set(r) == set(RAW_CATALOG_FIELDS)
        assert r["title"] and r["description"] and r["brand"] and r["price"] > 0
        assert len(r["category_path"].split(CATEGORY_SEP)) == 2
        assert isinstance(r["in_stock"], bool)
    assert 0 < sum(not r["in_stock"] for r in day2.values()) < len(day2) * 0.2


def test_new_users_appear_on_their_first_day(small_lake) -> None:
    lake, _ = small_lake
    truth = pq.read_table(lake / "raw" / "_truth" / "user_prefs.parquet").to_pylist()
    newcomers = {r["user_id"] for r in truth if r["first_ds"] == DAYS[1]}
    assert newcomers
    users1 = {r["user_id"] for r in read_records(lake, "events", DAYS[0])}
    users2 = {r["user_id"] for r in read_records(lake, "events", DAYS[1])}
    assert newcomers <= users2
    assert not newcomers & users1


def test_items_get_events_only_after_their_listing_day(small_lake) -> None:
    lake, _ = small_lake
    created = {r["item_id"]: r["created_at"][:10] for r in read_records(lake, "catalog", DAYS[1])}
    for ds in DAYS:
        items = {r["item_id"] for r in read_records(lake, "events", ds) if r["item_id"]}
        assert items and all(created[i] < ds for i in items)


def test_queries_are_made_of_catalog_words(small_lake) -> None:
    lake, _ = small_lake
    vocab: set[str] = set()
    for r in read_records(lake, "catalog", DAYS[1]):
        text = " ".join([r["title"], r["description"], r["category_path"], r["brand"]])
        vocab.update(re.findall(r"[\w'+&-]+", text.lower()))
    queries = [r["query"] for ds in DAYS for r in read_records(lake, "events", ds) if r["query"]]
    assert len(queries) > 50
    for q in queries:
        words = q.lower().split()
        assert words and set(words) <= vocab, q


def test_funnel_ratios_match_the_constants(volume_lake) -> None:
    lake, summary = volume_lake
    counts = Counter(r["event_type"] for r in read_records(lake, "events", "2024-03-01"))
    assert counts == Counter(summary.per_day[0].events_by_type)
    assert abs(counts["click"] / counts["view"] - K.CLICK_PER_VIEW) < 0.03
    assert abs(counts["add_to_cart"] / counts["click"] - K.ADD_TO_CART_PER_CLICK) < 0.04
    assert abs(counts["purchase"] / counts["add_to_cart"] - K.PURCHASE_PER_ADD_TO_CART) < 0.1
    sessions = summary.per_day[0].sessions
    assert abs(counts["search"] / sessions - K.P_SEARCH_SESSION) < 0.05
    assert abs(counts["view"] / sessions - K.MEAN_VIEWS_PER_SESSION) < 0.3


def test_events_per_day_hits_the_target(volume_lake) -> None:
    _, summary = volume_lake
    assert abs(summary.per_day[0].events - 20_000) < 20_000 * 0.05
    assert expected_events_per_session() > 5


def test_item_popularity_is_heavy_tailed(volume_lake) -> None:
    lake, _ = volume_lake
    views = Counter(r["item_id"] for r in read_records(lake, "events", "2024-03-01")
                    if r["event_type"] == "view")
    ranked = sorted(views.values(), reverse=True)
    top_decile = sum(ranked[: max(1, len(ranked) // 10)])
    assert top_decile / sum(ranked) > 0.35  # uniform would give ~0.10


def test_users_follow_their_planted_category_preferences(volume_lake) -> None:
    lake, _ = volume_lake
    truth = {r["user_id"]: set(r["preferred_categories"])
             for r in pq.read_table(lake / "raw" / "_truth" / "user_prefs.parquet").to_pylist()}
    category = {r["item_id"]: r["category_path"].split(CATEGORY_SEP)[0]
                for r in read_records(lake, "catalog", "2024-03-01")}
    hits = total = 0
    for r in read_records(lake, "events", "2024-03-01"):
        if r["item_id"]:
            total += 1
            hits += category[r["item_id"]] in truth[r["user_id"]]
    # ~85% of taste mass is on favorites; 10% of views explore by global popularity.
    assert hits / total > 0.65


def test_dirt_matches_what_was_injected(dirty_lake) -> None:
    lake, summary = dirty_lake
    expected = {
        "duplicate_event_id": DUPLICATE_EVENT_ID,
        "malformed_json": REASON_MALFORMED,
        "unknown_item_id": REASON_UNKNOWN_ITEM,
        "missing_user_id": REASON_MISSING_USER,
        "out_of_window_time": REASON_OUT_OF_WINDOW,
        "negative_price": REASON_NEGATIVE_PRICE,
        "extra_pii_fields": UNEXPECTED_FIELD,
        K.BOT_KIND: REASON_BOT,
    }
    for day in summary.per_day:
        report = validate_raw_partition(str(lake), "events", day.ds)
        for kind, problem in expected.items():
            assert report.problems[problem] == day.dirt[kind], (kind, report.format())
        assert report.notes[NOTE_NON_UTC] == day.dirt["other_utc_offset"]
        assert set(report.problems) == set(expected.values()), report.format()
        n = day.events
        for kind in K.EVENT_DIRT_KINDS:
            assert 0.012 * n < day.dirt[kind] < 0.028 * n, (kind, day.dirt[kind], n)
        assert day.dirt[K.BOT_KIND] >= K.BOT_MIN_EVENTS
        assert day.lines_written == n + day.dirt["duplicate_event_id"] + day.dirt[K.BOT_KIND]

        catalog = validate_raw_partition(str(lake), "catalog", day.ds)
        assert catalog.problems[REASON_MISSING_TITLE] == day.catalog_dirt["missing_title"] >= 1
        assert catalog.problems[REASON_BAD_PRICE] == day.catalog_dirt["negative_price"] >= 1
        assert catalog.problems[REASON_DUPLICATE_ITEM] == day.catalog_dirt["conflicting_duplicate"] >= 1


def test_dirt_only_adds_to_the_clean_stream(tmp_path: Path) -> None:
    """Dirt draws from its own random stream: the underlying sessions stay the same."""
    clean = generate(str(tmp_path / "c"), "2024-01-01", 1, 300, 200, 3)
    dirty = generate(str(tmp_path / "d"), "2024-01-01", 1, 300, 200, 3, dirty_rate=0.05)
    assert clean.per_day[0].events_by_type == dirty.per_day[0].events_by_type
    kept = [r for r in read_lines(tmp_path / "d", "events", "2024-01-01")
            if r.endswith("}") and '"user_id":"U9' not in r]
    assert len(kept) > 0.7 * clean.per_day[0].events


def test_other_offsets_keep_the_instant(dirty_lake) -> None:
    import datetime as dt

    lake, _ = dirty_lake
    shifted = [r for r in read_lines(lake, "events", "2024-03-01") if '+00:00"' not in r
               and r.endswith("}") and '"event_time"' in r]
    records = [json.loads(r) for r in shifted]
    in_day = [r for r in records
              if dt.datetime.fromisoformat(r["event_time"]).astimezone(dt.UTC).date().isoformat()
              == "2024-03-01"]
    assert in_day  # most offset-shifted events are still on the ds day once in UTC


def test_truth_sidecar_lists_every_real_user(small_lake) -> None:
    lake, _ = small_lake
    truth = pq.read_table(lake / "raw" / "_truth" / "user_prefs.parquet")
    assert truth.num_rows == SMALL["users"]
    rows = truth.to_pylist()
    assert all(1 <= len(r["preferred_categories"]) <= 3 for r in rows)
    assert all(len(r["preferred_brands"]) == len(r["preferred_categories"]) for r in rows)
    assert {r["price_tier"] for r in rows} <= {"low", "mid", "high"}
    meta = json.loads((lake / "raw" / "_truth" / "generator.json").read_text())
    assert len(meta["categories"]) == len(rows[0]["category_weights_last_day"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"days": 0}, "days must be at least 1"),
        ({"dirty_rate": 0.5}, "dirty_rate must be in"),
        ({"items": 10}, "--items must be at least"),
        ({"users": 0}, "--users must be positive"),
        ({"start": "2024-13-01"}, "YYYY-MM-DD"),
        ({"events_per_day": 0}, "events_per_day must be positive"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(str(tmp_path), **{**SMALL, **kwargs})


def test_cli_writes_the_lake_and_prints_a_summary(tmp_path: Path, capsys) -> None:
    rc = generate_events.main([
        "--lake", str(tmp_path), "--start", "2024-01-01", "--days", "1", "--users", "200",
        "--items", "100", "--seed", "1", "--dirty-rate", "0.01",
    ])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2024-01-01" in out and "event dirt:" in out and all(t in out for t in EVENT_TYPES)
    assert (tmp_path / "raw" / "events" / "ds=2024-01-01" / "part-00000.json.gz").is_file()
    assert (tmp_path / "raw" / "catalog" / "ds=2024-01-01" / "part-00000.json.gz").is_file()


def test_cli_reports_bad_input(tmp_path: Path, capsys) -> None:
    rc = generate_events.main(["--lake", str(tmp_path), "--start", "2024-01-01", "--days", "0"])
    assert rc == 2
    assert "days must be at least 1" in capsys.readouterr().err
