"""Landing the Amazon Beauty CSVs in the raw contract: mapping, partitioning, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ecrec_lib.amazon import SourceDataError, category_path, ingest, read_interactions
from ecrec_lib.contracts import validate_raw_partition
from jobs import ingest_amazon

# 2024-01-01 = 1704067200, 2024-01-02 = 1704153600, 2024-01-05 = 1704412800
INTERACTIONS = """user_id,item_id,timestamp,seq_pos
A1,I1,1704067200,0
A1,I2,1704067200,1
A1,I3,1704153600,2
B2,I2,1704153600,0
B2,I1,1704412800,1
B2,I3,1704412800,2
B2,I2,1704412800,3
"""
ITEMS = """item_id,title,brand,categories
I1,"OPI Nail Lacquer, Red",OPI,Makeup|Nails|Nail Polish
I2,,,Skin Care
I3,"Shampoo ""Pro"" 2oz",Unknown,
I4,Never Bought,Acme,Fragrance|Women
"""


def make_src(tmp_path: Path, interactions: str | None = INTERACTIONS, items: str | None = ITEMS) -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    if interactions is not None:
        (src / "interactions.csv").write_text(interactions)
    if items is not None:
        (src / "items.csv").write_text(items)
    return src


def records(lake: Path, kind: str, ds: str) -> list[dict]:
    out = []
    for part in sorted((lake / "raw" / kind / f"ds={ds}").glob("part-*.json.gz")):
        out.extend(json.loads(x) for x in gzip.decompress(part.read_bytes()).decode().splitlines())
    return out


def test_daily_mode_maps_reviews_to_purchases(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    summary = ingest(str(make_src(tmp_path)), str(lake))
    assert summary.event_partitions == ["2024-01-01", "2024-01-02", "2024-01-05"]
    assert summary.catalog_partitions == ["2024-01-05"]  # the last day only, by default
    assert sorted(p.name for p in (lake / "raw" / "catalog").iterdir()) == ["ds=2024-01-05"]
    assert (summary.events, summary.users, summary.items_in_events, summary.catalog_items) == (7, 2, 3, 4)

    day1 = records(lake, "events", "2024-01-01")
    assert [(r["user_id"], r["item_id"], r["event_time"]) for r in day1] == [
        ("A1", "I1", "2024-01-01T00:00:00+00:00"),
        ("A1", "I2", "2024-01-01T00:00:01+00:00"),  # seq_pos order kept within the day
    ]
    day5 = records(lake, "events", "2024-01-05")
    assert [r["item_id"] for r in day5] == ["I1", "I3", "I2"]
    assert [r["event_time"][11:] for r in day5] == ["00:00:00+00:00", "00:00:01+00:00", "00:00:02+00:00"]
    for r in day1 + day5:
        assert r["event_type"] == "purchase" and r["quantity"] == 1
        assert r["price"] is None and r["query"] is None and r["device"] is None
        assert r["user_id"] not in r["event_id"] and r["user_id"] not in r["session_id"]
    assert len({r["session_id"] for r in day5}) == 1  # one session per user-day
    assert day1[0]["session_id"] != records(lake, "events", "2024-01-02")[0]["session_id"]
    for ds in summary.event_partitions:
        assert validate_raw_partition(str(lake), "events", ds, check_items=False).ok


def test_catalog_mapping(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    ingest(str(make_src(tmp_path)), str(lake))
    rows = {r["item_id"]: r for r in records(lake, "catalog", "2024-01-05")}
    assert list(rows) == ["I1", "I2", "I3", "I4"]
    assert rows["I1"]["title"] == "OPI Nail Lacquer, Red"
    assert rows["I1"]["category_path"] == "Beauty > Makeup > Nails > Nail Polish"
    assert rows["I1"]["created_at"] == "2024-01-01T00:00:00+00:00"  # first review day
    assert rows["I3"]["created_at"] == "2024-01-02T00:00:00+00:00"
    assert rows["I3"]["title"] == 'Shampoo "Pro" 2oz' and rows["I3"]["category_path"] == "Beauty"
    assert rows["I2"]["title"] is None and rows["I2"]["brand"] is None  # empty cells -> null
    assert rows["I4"]["created_at"] == "2024-01-01T00:00:00+00:00"  # never reviewed: first day
    assert all(r["price"] is None and r["in_stock"] is True and r["description"] == ""
               for r in rows.values())
    report = validate_raw_partition(str(lake), "catalog", "2024-01-05")
    assert report.problems == {"missing_title": 1}  # I2: landed faithfully, cleaning quarantines


def test_catalog_every_day_and_rerun_is_idempotent(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    src = make_src(tmp_path)
    summary = ingest(str(src), str(lake), catalog_every_day=True)
    assert summary.catalog_partitions == summary.event_partitions
    first = {p: p.read_bytes() for p in sorted(lake.rglob("*.gz"))}
    ingest(str(src), str(lake), catalog_every_day=True)
    assert {p: p.read_bytes() for p in sorted(lake.rglob("*.gz"))} == first


def test_single_mode_lands_everything_under_one_ds(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    summary = ingest(str(make_src(tmp_path)), str(lake), ds_mode="single", ds="2024-01-10")
    assert [p.name for p in (lake / "raw" / "events").iterdir()] == ["ds=2024-01-10"]
    assert [p.name for p in (lake / "raw" / "catalog").iterdir()] == ["ds=2024-01-10"]
    assert len(records(lake, "events", "2024-01-10")) == 7
    assert summary.late_tolerance_hours_needed == 9 * 24 + 24
    assert "ECREC_LATE_TOLERANCE_HOURS=240" in summary.format()
    report = validate_raw_partition(str(lake), "events", "2024-01-10",
                                    late_tolerance_hours=summary.late_tolerance_hours_needed)
    assert report.ok, report.format()
    default = ingest(str(make_src(tmp_path / "b")), str(tmp_path / "lake2"), ds_mode="single")
    assert default.event_partitions == ["2024-01-05"]  # the last review day


def test_category_path() -> None:
    assert category_path("Makeup|Nails") == "Beauty > Makeup > Nails"
    assert category_path(" Skin Care | Face ") == "Beauty > Skin Care > Face"
    assert category_path("") == "Beauty"


@pytest.mark.parametrize(
    ("interactions", "items", "message"),
    [
        (None, ITEMS, r"interactions\.csv is missing.*header user_id,item_id,timestamp,seq_pos"),
        (INTERACTIONS, None, r"items\.csv is missing"),
        ("user_id,item_id,time\nA,I1,1\n", ITEMS, r"lacks column\(s\) \['timestamp', 'seq_pos'\]"),
        ("user_id,item_id,timestamp,seq_pos\nA1,I1,yesterday,0\n", ITEMS,
         r"line 2: column timestamp must be an integer, got 'yesterday'"),
        ("user_id,item_id,timestamp,seq_pos\nA1,I1,1704067200,0\n,I2,1704067200,1\n", ITEMS,
         r"line 3: empty user_id or item_id"),
        ("user_id,item_id,timestamp,seq_pos\n", ITEMS, "has no rows"),
        (INTERACTIONS, "item_id,title,brand\nI1,x,y\n", r"lacks column\(s\) \['categories'\]"),
        (INTERACTIONS, "item_id,title,brand,categories\nI1,x,,\n", r"missing from items\.csv"),
    ],
)
def test_bad_source_files_are_named(tmp_path: Path, interactions, items, message: str) -> None:
    src = make_src(tmp_path, interactions, items)
    with pytest.raises(SourceDataError, match=message):
        ingest(str(src), str(tmp_path / "lake"))
    assert not (tmp_path / "lake").exists()  # nothing half-written


def test_missing_source_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceDataError, match=r"does not exist; pass --src"):
        read_interactions(str(tmp_path / "nope"))


def test_flag_combinations_are_checked(tmp_path: Path) -> None:
    src = str(make_src(tmp_path))
    with pytest.raises(ValueError, match="--ds only applies"):
        ingest(src, str(tmp_path / "l"), ds_mode="daily", ds="2024-01-01")
    with pytest.raises(ValueError, match="--catalog-every-day only applies"):
        ingest(src, str(tmp_path / "l"), ds_mode="single", catalog_every_day=True)


def test_cli(tmp_path: Path, capsys) -> None:
    src = make_src(tmp_path)
    rc = ingest_amazon.main(["--src", str(src), "--lake", str(tmp_path / "lake"), "--ds-mode", "single"])
    assert rc == 0
    assert "7 purchase events from 2 users" in capsys.readouterr().out
    rc = ingest_amazon.main(["--src", str(tmp_path / "missing"), "--lake", str(tmp_path / "lake")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.real_data
def test_real_amazon_beauty_counts(amazon_dir: Path, tmp_path: Path) -> None:
    summary = ingest(str(amazon_dir), str(tmp_path), ds_mode="single")
    assert summary.events == 176_139
    assert summary.users == 22_363
    assert summary.catalog_items == 12_101
    assert summary.items_in_events == 12_092
    assert summary.empty_titles == 7
    ds = summary.event_partitions[0]
    assert ds == summary.last_day == "2014-07-23"
    lines = gzip.decompress(
        (tmp_path / "raw" / "events" / f"ds={ds}" / "part-00000.json.gz").read_bytes()
    ).decode().splitlines()
    assert len(lines) == 176_139
    assert len({json.loads(x)["event_id"] for x in lines[:20_000]}) == 20_000
    catalog = validate_raw_partition(str(tmp_path), "catalog", ds)
    assert catalog.lines == 12_101 and catalog.problems == {"missing_title": 7}


def test_event_and_session_ids_are_keyed(tmp_path: Path) -> None:
    """The ids are HMACs under the pseudonymization key: stable for one key, different under
    another, and not the unkeyed SHA-1 anyone could recompute from the public reviewer id."""
    import hashlib
    import hmac

    src = str(make_src(tmp_path))
    key_a, key_b = b"amazon-test-key-a-0123456789", b"amazon-test-key-b-0123456789"
    ingest(src, str(tmp_path / "a"), key=key_a)
    ingest(src, str(tmp_path / "a2"), key=key_a)
    ingest(src, str(tmp_path / "b"), key=key_b)
    a = records(tmp_path / "a", "events", "2024-01-01")
    assert a == records(tmp_path / "a2", "events", "2024-01-01")  # deterministic for a key
    b = records(tmp_path / "b", "events", "2024-01-01")
    assert {r["event_id"] for r in a}.isdisjoint(r["event_id"] for r in b)
    assert a[0]["session_id"] != b[0]["session_id"]
    want = "az" + hmac.new(key_a, b"session\x1fA1\x1f2024-01-01", hashlib.sha256).hexdigest()[:16]
    assert {r["session_id"] for r in a} == {want}
    unkeyed = "az" + hashlib.sha1(b"A1\x1f2024-01-01").hexdigest()[:16]
    assert unkeyed != want
    with pytest.raises(ValueError, match="at least 16 bytes"):
        ingest(src, str(tmp_path / "c"), key=b"short")

