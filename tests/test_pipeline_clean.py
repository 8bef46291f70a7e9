"""clean_events on tiny literal raw fixtures: every quarantine rule, reconciliation,
pseudonymization, idempotence, and each bad input the contract lists."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from ecrec_lib import schema as S
from ecrec_lib.config import load_config
from ecrec_lib.pipeline.pseudonymize import keyed_id_py, user_key_py

pytestmark = pytest.mark.spark

DS = "2024-01-01"
KEY = b"unit-test-key-0123456789abcdef"


def write_raw(lake: Path, dataset: str, ds: str, lines: list[Any], name: str = "part-0") -> Path:
    """Write gzipped JSON lines (dicts are dumped, strings written verbatim, bytes as they are)."""
    d = lake / "raw" / dataset / f"ds={ds}"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{name}.json.gz"
    with gzip.open(path, "wb") as fh:
        for line in lines:
            data = line if isinstance(line, bytes) else (
                line if isinstance(line, str) else json.dumps(line)).encode("utf-8")
            fh.write(data + b"\n")
    return path


def kid(event_id: str) -> str:
    """The keyed pseudonym clean gives a raw event id."""
    return keyed_id_py(KEY, "event_id", event_id)


def item(item_id: str, title: str | None = "Red Nail Polish", price: float | None = 9.5,
         path: str = "Beauty > Makeup > Nails", created: str = "2023-06-01T00:00:00+00:00",
         **extra: Any) -> dict[str, Any]:
    return {"item_id": item_id, "title": title, "description": "  a  thing ", "category_path": path,
            "brand": "Acme", "price": price, "in_stock": True, "created_at": created, **extra}


_MINUTE = iter(range(10**6))


def event(eid: str, etype: str = "view", user: str | None = "u1", item_id: str | None = "i1",
          t: str | None = None, **extra: Any) -> dict[str, Any]:
    """One raw event; without ``t`` each call gets its own minute of the DS day (no bot)."""
    if t is None:
        m = next(_MINUTE) % 600
        t = f"{DS}T{8 + m // 60:02d}:{m % 60:02d}:00+00:00"
    return {"event_id": eid, "event_time": t, "user_id": user, "session_id": "s1",
            "event_type": etype, "item_id": item_id, "query": None, "position": 1, "price": 9.5,
            "quantity": None, "device": "Mobile ", "country": "de", "ip": "10.0.0.1",
            "email": "a@b.c", **extra}


def default_catalog() -> list[Any]:
    return [item("i1"), item("i2", path="Beauty>Skin"), item("i3", price=None),
            item("i4", title="  "), item("i5", price=-1.0)]


def cfg_for(lake: Path, **kw: Any):
    return load_config(env={}, lake_root=str(lake), spark_shuffle_partitions=2, **kw)


def read(spark, path: Path) -> list[dict[str, Any]]:
    return [r.asDict() for r in spark.read.parquet(str(path)).collect()]


def test_clean_rules_reconciliation_and_idempotence(spark, lake_dir: Path) -> None:
    from ecrec_lib.pipeline.clean import run_clean

    write_raw(lake_dir, "catalog", DS, default_catalog())
    bot = [event(f"b{i}", user="bot", t=f"{DS}T03:00:{i % 60:02d}+00:00") for i in range(5)]
    good = [
        event("e1", "view"),
        event("e2", "click", t=f"{DS}T11:30:00+01:00"),  # 10:30 UTC
        event("e3", "purchase", quantity=2, new_field="x"),  # schema drift: unknown field
        event("e4", "search", item_id=None, query="  ＮＡＩＬ   Polish "),  # NFKC + case + spaces
        event("e5", "add_to_cart", user="u2", item_id="i3"),
        event("e6", "view", t=f"{DS}T23:59:00-03:00"),  # 02:59 next day: within 6 h tolerance
    ]
    bad = [
        "{not json",
        event("q1", user=None),
        event("q2", etype="view", item_id=None),
        event("q3", t="yesterday-ish"),
        event("q4", etype="hover"),
        event("q5", price=-3.0),
        event("q6", "purchase", quantity=0),
        event("q7", t="2023-12-30T12:00:00+00:00"),
        event("q8", item_id="i4"),  # quarantined in the catalog -> unknown here
    ]
    dup = good[0]
    write_raw(lake_dir, "events", DS, [*good, dup, dict(dup), *bad, *bot])
    cfg = cfg_for(lake_dir, bot_max_events_per_minute=3, min_clean_fraction=0.2)

    result = run_clean(spark, cfg, DS, key=KEY)

    # reconciliation: balanced, per-reason counts, drift reported
    rec = json.loads((lake_dir / "ops/reconciliation" / f"ds={DS}" / "events.json").read_text())
    assert rec["input_rows"] == 22 and rec["duplicate_rows"] == 2 and rec["clean_rows"] == 6
    assert rec["quarantined_rows"] == 14 and rec["balanced"] is True
    assert rec["quarantine_by_reason"] == {
        S.REASON_MALFORMED: 1, S.REASON_MISSING_USER: 1, S.REASON_MISSING_REQUIRED: 1,
        S.REASON_BAD_TIME: 1, S.REASON_BAD_EVENT_TYPE: 1, S.REASON_NEGATIVE_PRICE: 1,
        S.REASON_BAD_QUANTITY: 1, S.REASON_OUT_OF_WINDOW: 1, S.REASON_UNKNOWN_ITEM: 1,
        S.REASON_BOT: 5,
    }
    assert rec["unknown_fields_dropped"] == {"new_field": 1}
    assert result.events is not None and result.events.balanced

    raw_ids = {kid(e): e for e in ("e1", "e2", "e3", "e4", "e5", "e6")}
    clean = {raw_ids.get(r["event_id"], r["event_id"]): r
             for r in read(spark, lake_dir / "clean/events" / f"ds={DS}")}
    assert sorted(clean) == ["e1", "e2", "e3", "e4", "e5", "e6"]
    assert clean["e1"]["session_id"] == keyed_id_py(KEY, "session_id", "s1")
    assert tuple(spark.read.parquet(str(lake_dir / "clean/events" / f"ds={DS}")).columns) == S.CLEAN_EVENT_COLUMNS
    assert clean["e1"]["user_key"] == user_key_py(KEY, "u1") and clean["e5"]["user_key"] == user_key_py(KEY, "u2")
    assert clean["e2"]["event_time"].hour == 10  # normalized to UTC
    assert clean["e6"]["event_time"].day == 2
    assert clean["e4"]["query"] == "nail polish"
    assert clean["e1"]["device"] == "mobile" and clean["e1"]["country"] == "DE"
    blob = json.dumps([list(r.values()) for r in clean.values()], default=str)
    assert "10.0.0.1" not in blob and "a@b.c" not in blob and '"u1"' not in blob

    quarantine = read(spark, lake_dir / "quarantine/events" / f"ds={DS}")
    assert {r["event_id"]: r["reason"] for r in quarantine}[kid("q8")] == S.REASON_UNKNOWN_ITEM
    malformed = [r for r in quarantine if r["reason"] == S.REASON_MALFORMED]
    assert malformed[0]["masked_line"] == "{not json"
    # every quarantined row keeps a masked line: keyed ids, PII redacted, no raw value
    q5 = next(r for r in quarantine if r["event_id"] == kid("q5"))
    assert f'"user_id":"{user_key_py(KEY, "u1")}"' in q5["masked_line"]
    assert f'"event_id":"{kid("q5")}"' in q5["masked_line"] and '"price":-3.0' in q5["masked_line"]
    assert all(r["masked_line"] for r in quarantine)
    blob = json.dumps([list(r.values()) for r in quarantine], default=str)
    assert "10.0.0.1" not in blob and "a@b.c" not in blob and '"u1"' not in blob
    assert '"q5"' not in blob and '"s1"' not in blob
    # the exact lines live only in the restricted zone, one per quarantined row
    raw_q = read(spark, lake_dir / "quarantine_raw/events" / f"ds={DS}")
    assert sorted(r["event_id"] or "" for r in raw_q) == sorted(r["event_id"] or "" for r in quarantine)
    by_id = {r["event_id"]: r for r in raw_q}
    assert json.loads(by_id[kid("q5")]["raw_line"])["ip"] == "10.0.0.1"
    assert by_id[kid("q5")]["line_is_original"] is False  # parsed: the raw fields re-serialized
    garbage = [r for r in raw_q if r["reason"] == S.REASON_MALFORMED]
    assert garbage[0]["raw_line"] == b"{not json" and garbage[0]["line_is_original"] is True

    # catalog: null price kept, blank title and negative price quarantined, category = level 1
    cat = {r["item_id"]: r for r in read(spark, lake_dir / "clean/catalog" / f"ds={DS}")}
    assert sorted(cat) == ["i1", "i2", "i3"]
    assert cat["i2"]["category_path"] == "Beauty > Skin" and cat["i2"]["category"] == "Beauty"
    assert cat["i3"]["price"] is None and cat["i1"]["description"] == "a thing"
    qcat = {r["item_id"]: r["reason"] for r in read(spark, lake_dir / "quarantine/catalog" / f"ds={DS}")}
    assert qcat == {"i4": S.REASON_MISSING_TITLE, "i5": S.REASON_BAD_PRICE}
    raw_cat = {r["item_id"]: r for r in read(spark, lake_dir / "quarantine_raw/catalog" / f"ds={DS}")}
    assert json.loads(raw_cat["i5"]["raw_line"])["price"] == -1.0 and raw_cat["i5"]["line_is_original"]

    # validation results and the HTML report are stored per suite
    for suite in ("raw_events", "clean_events", "catalog"):
        res = json.loads((lake_dir / "ops/validation" / f"ds={DS}" / suite / "results.json").read_text())
        assert res["success"] is True and res["n_expectations"] > 3
        assert "<table>" in (lake_dir / "ops/validation" / f"ds={DS}" / suite / "index.html").read_text()

    # idempotent: a second run replaces the partitions with identical content, no staging left
    run_clean(spark, cfg, DS, key=KEY)
    again = {raw_ids.get(r["event_id"], r["event_id"]): r
             for r in read(spark, lake_dir / "clean/events" / f"ds={DS}")}
    assert again == clean
    leftovers = [p.name for p in (lake_dir / "clean/events").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_missing_and_empty_inputs(spark, lake_dir: Path) -> None:
    from ecrec_lib.pipeline.clean import run_clean
    from ecrec_lib.pipeline.io import InputMissingError

    cfg = cfg_for(lake_dir)
    with pytest.raises(InputMissingError, match=r"catalog snapshot .*raw/catalog/ds=2024-01-01 does not exist"):
        run_clean(spark, cfg, DS, key=KEY)

    write_raw(lake_dir, "catalog", DS, default_catalog())
    with pytest.raises(InputMissingError, match=r"raw events partition .*raw/events/ds=2024-01-01"):
        run_clean(spark, cfg, DS, key=KEY)

    write_raw(lake_dir, "events", DS, [])  # an empty gz file: no line at all
    result = run_clean(spark, cfg, DS, key=KEY)
    assert result.no_data
    marker = json.loads((lake_dir / "ops/reconciliation" / f"ds={DS}" / "events.json").read_text())
    assert marker["status"] == "no_data" and marker["input_rows"] == 0
    assert not (lake_dir / "clean/events" / f"ds={DS}").exists()


def test_failed_catalog_leaves_no_cached_events(spark, lake_dir: Path) -> None:
    """The events are parsed on a second thread while the catalog is cleaned: when the catalog
    fails, that parse is awaited and uncached, and nothing of the events is published."""
    from ecrec_lib.pipeline.clean import run_clean
    from ecrec_lib.pipeline.io import InputMissingError

    write_raw(lake_dir, "catalog", DS, [])  # the snapshot exists but holds no line
    write_raw(lake_dir, "events", DS, [event(f"e{i}") for i in range(20)])
    with pytest.raises(InputMissingError, match=r"catalog snapshot .* is empty"):
        run_clean(spark, cfg_for(lake_dir), DS, key=KEY)
    assert spark._jsparkSession.sharedState().cacheManager().isEmpty()
    assert not (lake_dir / "clean/events" / f"ds={DS}").exists()
    assert not (lake_dir / "ops/reconciliation" / f"ds={DS}" / "events.json").exists()


@pytest.mark.parametrize("case", ["garbage", "bots", "no_event_type"])
def test_bad_days_fail_the_contract(spark, lake_dir: Path, case: str) -> None:
    from ecrec_lib.pipeline.clean import run_clean
    from ecrec_lib.validation import DataContractError

    write_raw(lake_dir, "catalog", DS, default_catalog())
    if case == "garbage":
        lines: list[Any] = ["\x00\x01garbage", "<html>", "{{{", "[1, 2]", "42"]
    elif case == "bots":
        lines = [event(f"b{i}", user=f"bot{i % 2}", t=f"{DS}T03:00:{i:02d}+00:00") for i in range(12)]
    else:
        lines = [{k: v for k, v in event(f"e{i}").items() if k != "event_type"} for i in range(4)]
    write_raw(lake_dir, "events", DS, lines)

    with pytest.raises(DataContractError) as err:
        run_clean(spark, cfg_for(lake_dir, bot_max_events_per_minute=5), DS, key=KEY)
    msg = str(err.value)
    assert not (lake_dir / "clean/events" / f"ds={DS}").exists()  # nothing published
    if case == "no_event_type":
        assert "raw_events" in msg and "event_type" in msg and "CRITICAL" in msg
        return
    assert "clean_events" in msg and "expect_table_row_count_to_be_between" in msg and "observed=0" in msg
    reasons = {r["reason"] for r in read(spark, lake_dir / "quarantine/events" / f"ds={DS}")}
    assert reasons == {S.REASON_MALFORMED if case == "garbage" else S.REASON_BOT}
    rec = json.loads((lake_dir / "ops/reconciliation" / f"ds={DS}" / "events.json").read_text())
    assert rec["clean_rows"] == 0 and rec["quarantined_rows"] == len(lines)


def test_catalog_item_id_collisions(spark, lake_dir: Path) -> None:
    from ecrec_lib.pipeline.clean import run_clean

    write_raw(lake_dir, "catalog", DS, [
        item("i1"), item("i1"),  # exact duplicate: dropped and counted
        item("i1 ", title="Red  Nail Polish"),  # identical after normalization: duplicate too
        item("i2", title="Old", created="2023-01-01T00:00:00+00:00"),
        item("i2", title="New", created="2023-09-01T00:00:00+02:00"),  # newest wins
        item("i2", title="Older", created="2022-01-01T00:00:00+00:00"),
    ])
    write_raw(lake_dir, "events", DS, [event("e1", item_id="i2"), event("e2", item_id="i1")])
    run_clean(spark, cfg_for(lake_dir), DS, key=KEY)

    cat = {r["item_id"]: r for r in read(spark, lake_dir / "clean/catalog" / f"ds={DS}")}
    assert sorted(cat) == ["i1", "i2"] and cat["i2"]["title"] == "New"
    q = sorted((r["item_id"], r["title"], r["reason"])
               for r in read(spark, lake_dir / "quarantine/catalog" / f"ds={DS}"))
    assert q == [("i2", "Old", S.REASON_DUPLICATE_ITEM), ("i2", "Older", S.REASON_DUPLICATE_ITEM)]
    rec = json.loads((lake_dir / "ops/reconciliation" / f"ds={DS}" / "catalog.json").read_text())
    assert (rec["input_rows"], rec["clean_rows"], rec["quarantined_rows"], rec["duplicate_rows"]) == (6, 2, 2, 2)


def test_clean_text_fast_path_matches_the_regex_rule(spark) -> None:
    """clean_text skips the regex when no whitespace run, tab or break is present: same result."""
    import re

    from ecrec_lib.pipeline.normalize import clean_text

    values = ["a", " a ", "a b", "a  b", "\ta", "a\tb", "a\nb\r\n", "a\x0bb", "a\fb", " ", "  ",
              "\t", "", " x  y\t z ", "é  ü", None]
    got = [r[0] for r in spark.createDataFrame([(v,) for v in values], "v string")
           .select(clean_text("v")).collect()]
    want = [None if v is None else (re.sub(r"[ \t\n\x0b\f\r]+", " ", v).strip(" ") or None)
            for v in values]
    assert got == want


def test_classification_reads_the_cached_normalized_parse(spark, lake_dir: Path) -> None:
    """The job caches the parse with normalized copies (``_n_<field>``) beside the raw fields;
    a plain parse gives the same clean and quarantined rows, and the raw fields stay raw."""
    from ecrec_lib.pipeline import clean as C

    write_raw(lake_dir, "events", DS, [
        event(" e1 ", user=" u1 ", device=" MOBILE ", country="de "),
        event("e2", etype=" CLICK ", item_id="i9"),  # unknown item
        event("e3", etype="view", user=None),  # missing user
        event("e1", t=f"{DS}T23:59:00+00:00"),  # a second e1 (duplicate id after trimming)
        "{not json",
    ])
    path = str(lake_dir / "raw" / "events" / f"ds={DS}")
    plain = C._parse(spark, path, S.RAW_EVENT_FIELDS, "events")
    normalized = C.normalize_events(plain).cache()
    catalog = spark.createDataFrame([("i1",)], "item_id string")
    cfg = cfg_for(lake_dir)

    def outputs(parsed: Any) -> tuple[list[Any], list[Any]]:
        keyed = C.key_events(C.classify_events(parsed, catalog, DS, cfg), KEY, parsed)
        clean, quarantine, raw = C.event_outputs(keyed, parsed)
        assert raw.count() == quarantine.count()
        return sorted(map(tuple, clean.collect())), sorted(map(str, quarantine.collect()))

    try:
        raw = {r["event_id"]: r for r in normalized.where("not _malformed").collect()}
        assert raw[" e1 "]["_n_event_id"] == "e1" and raw[" e1 "]["device"] == " MOBILE "
        assert (raw[" e1 "]["_n_device"], raw[" e1 "]["_n_country"]) == ("mobile", "DE")
        assert raw["e2"]["_n_event_type"] == "click"
        clean, quarantine = outputs(normalized)
        assert (clean, quarantine) == outputs(plain)
        assert len(clean) == 1 and clean[0][2] == user_key_py(KEY, "u1")  # e1, once
        assert len(quarantine) == 3  # unknown item, missing user, malformed line
    finally:
        normalized.unpersist()


def test_bad_bytes_are_quarantined_with_a_reason_never_coerced(spark, lake_dir: Path) -> None:
    """A number as user_id, an object as query, a timestamp without offset, invalid UTF-8 in
    user_id and a 200,000-character query each land in quarantine with their own reason,
    counted in a balanced reconciliation; the exact bytes stay in quarantine_raw."""
    from ecrec_lib.pipeline.clean import run_clean

    write_raw(lake_dir, "catalog", DS, default_catalog())
    utf8 = json.dumps(event("b4", user="u#1")).encode().replace(b"u#1", b"u\xff\xfe1")
    lines: list[Any] = [
        event("g1"), event("g2", user="u2"),
        event("g3", "search", item_id=None, query="Mail bob@example.com or +49 170 1234567"),
        event("b1", user=123),  # type: ignore[arg-type]
        event("b2", "search", item_id=None, query={"text": "nail polish"}),
        event("b3", t=f"{DS}T10:00:00"),
        utf8,
        event("b5", "search", item_id=None, query="a" * 200_000),
        event("g1", price=1.0, user=7),  # wrong-typed copy of g1's id: quarantined, not a dup
    ]
    write_raw(lake_dir, "events", DS, [*lines, event("g2", user="u2")])  # one real duplicate
    run_clean(spark, cfg_for(lake_dir, min_clean_fraction=0.2), DS, key=KEY)

    rec = json.loads((lake_dir / "ops/reconciliation" / f"ds={DS}" / "events.json").read_text())
    assert rec["quarantine_by_reason"] == {
        S.REASON_WRONG_TYPE: 3, S.REASON_BAD_TIMESTAMP: 1, S.REASON_INVALID_UTF8: 1,
        S.REASON_TOO_LONG: 1,
    }
    assert (rec["input_rows"], rec["clean_rows"], rec["duplicate_rows"]) == (10, 3, 1)
    assert rec["balanced"] is True
    clean = {r["event_id"]: r for r in read(spark, lake_dir / "clean/events" / f"ds={DS}")}
    assert sorted(clean) == sorted(kid(e) for e in ("g1", "g2", "g3"))
    assert clean[kid("g3")]["query"] == "mail <email> or <phone>"
    assert clean[kid("g1")]["price"] == 9.5  # the good g1 won, not the wrong-typed copy

    quarantine = read(spark, lake_dir / "quarantine/events" / f"ds={DS}")
    reasons = sorted((r["reason"], r["event_id"]) for r in quarantine)
    assert (S.REASON_BAD_TIMESTAMP, kid("b3")) in reasons and (S.REASON_TOO_LONG, kid("b5")) in reasons
    bad_utf8 = next(r for r in quarantine if r["reason"] == S.REASON_INVALID_UTF8)
    assert "\ufffd" not in (bad_utf8["user_key"] or "") and '"user_id":"' in bad_utf8["masked_line"]
    assert "u\ufffd\ufffd1" not in bad_utf8["masked_line"]  # the raw id is masked, even mangled
    raw_q = {r["reason"]: r for r in read(spark, lake_dir / "quarantine_raw/events" / f"ds={DS}")}
    assert raw_q[S.REASON_INVALID_UTF8]["raw_line"] == utf8  # the exact bytes, not a decoding
    assert len(raw_q[S.REASON_TOO_LONG]["raw_line"]) > 200_000


def test_erasure_counts_a_users_lines_as_clean_does(spark, lake_dir: Path) -> None:
    """An erasure request balances a user's raw lines against clean + quarantined rows +
    duplicates per day; it must attribute and dedupe lines exactly as clean does. The lines
    where the two could part: a line cut inside the user id (its fragment "u1" is another
    user's whole id: it names no user), a line cut after the id (still that user's), a
    wrong-typed and an over-long copy of an event id (quarantined, not duplicates), a real
    duplicate, and an id padded with whitespace."""
    from ecrec_lib.pipeline.clean import run_clean
    from ecrec_lib.privacy.forget import (
        ForgetRequest,
        UserMatcher,
        check_balance,
        lake_partitions,
        scan_partition,
    )

    write_raw(lake_dir, "catalog", DS, default_catalog())
    cut_in_id = json.dumps(event("t2", user="u12"))
    cut_in_id = cut_in_id[: cut_in_id.index('"u12"') + 3]  # ... "user_id": "u1
    lines: list[Any] = [
        event("t1", user="u12"), cut_in_id, json.dumps(event("t3", user="u12"))[:120],
        event("t1", "search", item_id=None, query="a" * 2_000, user="u12"),
        event("t4", user="u1"), event("t4", user="u1", query={"text": "x"}),
        event("t6", user="u1"), event("t6", user="u1"), event("t7", user=" u3 "),
    ]
    write_raw(lake_dir, "events", DS, lines)
    run_clean(spark, cfg_for(lake_dir, min_clean_fraction=0.2), DS, key=KEY)

    quarantine = read(spark, lake_dir / "quarantine/events" / f"ds={DS}")
    fragment = next(r for r in quarantine if '"user_id":"<user_id>' in r["masked_line"])
    assert fragment["user_key"] is None and fragment["reason"] == S.REASON_MALFORMED
    assert user_key_py(KEY, "u1") not in fragment["masked_line"]
    expected = {"u12": (3, 1, 2, 0), "u1": (4, 2, 1, 1), "u3": (1, 1, 0, 0)}
    for user, (raw_n, clean_n, quarantined, dups) in expected.items():
        matcher = UserMatcher(ForgetRequest.build([user], KEY), KEY)
        scans = {f"{p.zone}/{p.dataset}": scan_partition(p, matcher)
                 for p in lake_partitions(lake_dir) if p.dataset == "events"}
        got = (scans["raw/events"].rows, scans["clean/events"].rows,
               scans["quarantine/events"].rows, scans["raw/events"].duplicate_lines)
        assert got == (raw_n, clean_n, quarantined, dups), user
        assert check_balance(scans.values(), [DS]) == [], user
