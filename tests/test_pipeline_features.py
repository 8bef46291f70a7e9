"""Feature tables on tiny literal clean partitions, checked against hand-computed values."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Any

import pytest

from ecrec_lib import schema as S
from ecrec_lib.config import load_config

pytestmark = pytest.mark.spark

DS = "2024-01-03"


def ts(day: int, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, minute)


def ev(eid: str, user: str, etype: str, item: str | None, t: dt.datetime, session: str = "s1",
       query: str | None = None, price: float | None = None, quantity: int | None = None) -> tuple:
    return (eid, t, user, session, etype, item, query, 1, price, quantity, "mobile", "DE")


CLEAN_EVENT_DDL = ("event_id string, event_time timestamp, user_key string, session_id string, "
                   "event_type string, item_id string, query string, position long, price double, "
                   "quantity long, device string, country string")
CATALOG_DDL = ("item_id string, title string, description string, category_path string, "
               "category string, brand string, price double, in_stock boolean, created_at timestamp")


def catalog_rows(with_price: bool = True) -> list[tuple]:
    def it(i: str, cat: str, brand: str, price: float) -> tuple:
        return (i, f"title {i}", None, cat, cat, brand, price if with_price else None, True, ts(1, 0))
    return [it("a", "Beauty", "X", 1.0), it("b", "Beauty", "Y", 5.0), it("c", "Home", "X", 9.0),
            it("d", "Home", "Z", 20.0)]


def events_by_day() -> dict[str, list[tuple]]:
    return {
        "2024-01-01": [
            ev("1", "u1", "view", "a", ts(1, 9)), ev("2", "u1", "click", "a", ts(1, 9, 1)),
            ev("3", "u2", "view", "b", ts(1, 10), session="s9"),
        ],
        # 2024-01-02 is missing on purpose
        "2024-01-03": [
            ev("4", "u1", "search", None, ts(3, 8), session="s2", query="red polish"),
            ev("5", "u1", "click", "b", ts(3, 8, 1), session="s2"),
            ev("6", "u1", "purchase", "b", ts(3, 8, 2), session="s2", price=5.0, quantity=2),
            ev("7", "u1", "view", "zz", ts(3, 8, 3), session="s2"),  # not in catalog: ignored
            ev("8", "u2", "view", "c", ts(3, 9), session="s9"),
            ev("9", "u2", "view", "a", ts(3, 9, 1), session="s9"),
            ev("10", "u2", "add_to_cart", "a", ts(3, 9, 2), session="s9", quantity=1),
            ev("11", "u2", "search", None, ts(3, 8, 30), session="s9", query="jane.doe@example.com"),
        ],
    }


def write_lake(spark, lake: Path, events: dict[str, list[tuple]], catalog: list[tuple]) -> None:
    for day, rows in events.items():
        spark.createDataFrame(rows, CLEAN_EVENT_DDL).write.parquet(str(lake / "clean/events" / f"ds={day}"))
    spark.createDataFrame(catalog, CATALOG_DDL).write.parquet(str(lake / "clean/catalog" / f"ds={DS}"))


def mark_empty_day(lake: Path, day: str) -> None:
    """What jobs.clean_events records for a day whose raw partition held no event."""
    out = lake / "ops" / "reconciliation" / f"ds={day}" / "events.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"dataset": "events", "ds": day, "status": "no_data"}))


def cfg_for(lake: Path, **kw: Any):
    return load_config(env={}, lake_root=str(lake), spark_shuffle_partitions=2, max_seq_len=3,
                       smoothing_prior_weight=2.0, popularity_half_life_days=1.0, **kw)


def test_run_features_tables_and_contracts(spark, lake_dir: Path) -> None:
    from ecrec_lib.pipeline.features import run_features

    write_lake(spark, lake_dir, events_by_day(), catalog_rows())
    mark_empty_day(lake_dir, "2024-01-02")
    # Tiny fixture: one user per query, so k-anonymity is lowered to 1 through the config.
    result = run_features(spark, cfg_for(lake_dir, min_query_users=1), DS, lookback_days=3)
    assert result.days_missing == ["2024-01-02"] and result.days_present == ["2024-01-01", DS]

    def table(name: str) -> list[dict[str, Any]]:
        df = spark.read.parquet(str(lake_dir / "features" / name / f"ds={DS}"))
        assert tuple(df.columns) == getattr(S, {
            "user_sequences": "USER_SEQUENCE_COLUMNS", "item_stats": "ITEM_STATS_COLUMNS",
            "user_profiles": "USER_PROFILE_COLUMNS", "search_pairs": "SEARCH_PAIR_COLUMNS",
            "item_cooccurrence": "COOCCURRENCE_COLUMNS"}[name])
        return [r.asDict(recursive=True) for r in df.collect()]

    seq = {r["user_key"]: r for r in table("user_sequences")}
    # u1 has 4 catalog item events (zz ignored); max_seq_len=3 keeps the last 3, oldest first
    assert seq["u1"]["item_ids"] == ["a", "b", "b"] and seq["u1"]["n_events"] == 4
    assert seq["u1"]["event_types"] == ["click", "click", "purchase"]
    assert seq["u1"]["event_times"] == [int(ts(1, 9, 1).replace(tzinfo=dt.UTC).timestamp()),
                                        int(ts(3, 8, 1).replace(tzinfo=dt.UTC).timestamp()),
                                        int(ts(3, 8, 2).replace(tzinfo=dt.UTC).timestamp())]
    assert seq["u2"]["item_ids"] == ["c", "a", "a"] and seq["u2"]["n_events"] == 4

    stats = {r["item_id"]: r for r in table("item_stats")}
    assert sorted(stats) == ["a", "b", "c", "d"]  # every catalog item, even without events
    # totals: views 4 (a,b,c,a), clicks 2, purchases 1 -> p_ctr = 0.5, p_cvr = 0.5, a = 2
    assert (stats["a"]["views"], stats["a"]["clicks"], stats["a"]["add_to_carts"]) == (2, 1, 1)
    assert stats["a"]["ctr"] == pytest.approx((1 + 2 * 0.5) / (2 + 2))
    assert stats["d"]["ctr"] == pytest.approx(0.5) and stats["d"]["cvr"] == pytest.approx(0.5)
    assert stats["b"]["cvr"] == pytest.approx((1 + 2 * 0.5) / (1 + 2))
    # popularity of b: click + purchase on day 3 at 08:01/08:02 (ages ~0.66 d) + view on day 1
    end = ts(4, 0)
    expect_b = sum(0.5 ** ((end - t).total_seconds() / 86400) for t in (ts(1, 10), ts(3, 8, 1), ts(3, 8, 2)))
    assert stats["b"]["popularity"] == pytest.approx(expect_b, rel=1e-6)
    # trending of d (no event): (0 + 1) / (0 / 2 + 1) = 1; a: last day 2, total 4 over 2 days
    assert stats["d"]["trending_score"] == pytest.approx(1.0)
    assert stats["a"]["trending_score"] == pytest.approx((2 + 1) / (4 / 2 + 1))

    prof = {r["user_key"]: r for r in table("user_profiles")}
    assert prof["u1"]["frequency"] == 2 and prof["u1"]["monetary"] == pytest.approx(10.0)
    assert prof["u1"]["recency_days"] == pytest.approx((end - ts(3, 8, 3)).total_seconds() / 86400)
    assert prof["u1"]["category_affinity"] == {"Beauty": 1.0} and prof["u1"]["top_category"] == "Beauty"
    assert prof["u2"]["category_affinity"] == {"Beauty": 0.75, "Home": 0.25}
    assert prof["u2"]["brand_affinity"] == {"X": 0.75, "Y": 0.25}
    assert prof["u1"]["price_band"] in {"low", "mid"} and prof["u2"]["price_band"] in {"low", "mid", "high"}

    pairs = table("search_pairs")
    assert pairs == [{"query": "red polish", "item_id": "b", "clicks": 1, "purchases": 1, "n": 2}]
    privacy = json.loads((lake_dir / "ops/privacy" / f"ds={DS}" / "search_queries.json").read_text())
    assert privacy["queries_total"] == 2 and privacy["queries_published"] == 1
    assert privacy["queries_pii"]["email"] == 1 and privacy["searches_held_back"] == 1
    assert "jane.doe" not in json.dumps(privacy)  # counts only, never a query
    assert result.query_privacy == privacy

    cooc = {(r["item_id"], r["other_item_id"]): r["count"] for r in table("item_cooccurrence")}
    # u1 [a, b, b] -> (a,b) twice within 3 steps; u2 [c, a, a] -> (c,a) twice
    assert cooc == {("a", "b"): 2, ("b", "a"): 2, ("c", "a"): 2, ("a", "c"): 2}

    for name in ("user_sequences", "item_stats", "user_profiles", "search_pairs", "item_cooccurrence"):
        res = json.loads((lake_dir / "ops/validation" / f"ds={DS}" / name / "results.json").read_text())
        assert res["success"] is True


def test_purchase_only_data_without_sessions_queries_or_prices(spark, lake_dir: Path) -> None:
    """Real Amazon-like data: only purchases, one session per event, no prices, no queries."""
    from ecrec_lib.pipeline.features import build_feature_tables

    rows = [ev(str(i), f"u{i % 2}", "purchase", "abcd"[i % 4], ts(3, 9, i), session=f"x{i}")
            for i in range(6)]
    events = spark.createDataFrame(rows, CLEAN_EVENT_DDL)
    catalog = spark.createDataFrame(catalog_rows(with_price=False), CATALOG_DDL)
    tables = build_feature_tables(events, catalog, DS, 1, cfg_for(lake_dir))

    assert tables["search_pairs"].count() == 0
    assert tuple(tables["search_pairs"].columns) == S.SEARCH_PAIR_COLUMNS
    stats = {r["item_id"]: r for r in tables["item_stats"].collect()}
    assert all(r["ctr"] == 0.0 and r["cvr"] == 0.0 for r in stats.values())  # priors of 0/0 are 0
    assert stats["a"]["purchases"] == 2 and not math.isnan(stats["a"]["popularity"])
    prof = {r["user_key"]: r for r in tables["user_profiles"].collect()}
    assert prof["u0"]["price_band"] is None and prof["u0"]["frequency"] == 3


def test_a_gap_in_the_window_fails_loudly_and_a_killed_swap_is_recovered(spark, lake_dir: Path) -> None:
    """A missing day after the lake's first clean day is an error, not a silent skip; a day
    whose publish was killed between its two renames is restored and used."""
    from ecrec_lib.pipeline.features import run_features
    from ecrec_lib.pipeline.io import InputMissingError

    write_lake(spark, lake_dir, events_by_day(), catalog_rows())
    with pytest.raises(InputMissingError, match=r"missing for \['2024-01-02'\] inside the lookback"):
        run_features(spark, cfg_for(lake_dir), DS, lookback_days=3)
    assert not (lake_dir / "features").exists() or not any((lake_dir / "features").rglob("ds=*"))
    # days before the lake's first clean day are history not there yet: fine
    mark_empty_day(lake_dir, "2024-01-02")
    day3 = lake_dir / "clean/events" / f"ds={DS}"
    day3.rename(day3.parent / f".old-killedrun-ds={DS}")  # killed between the two renames
    result = run_features(spark, cfg_for(lake_dir), DS, lookback_days=5)
    assert day3.is_dir() and result.days_present == ["2024-01-01", DS]
    assert result.days_missing == ["2023-12-30", "2023-12-31", "2024-01-02"]
    assert result.row_counts["user_sequences"] == 2
    # the published set names its run: ops/runs/ds=D/features.json and _run.json per table
    manifest = json.loads((lake_dir / "ops/runs" / f"ds={DS}" / "features.json").read_text())
    assert manifest["tables"] == result.row_counts
    for name in manifest["tables"]:
        part = lake_dir / "features" / name / f"ds={DS}"
        assert json.loads((part / "_run.json").read_text())["run_id"] == manifest["run_id"]
        assert [p.name for p in part.parent.iterdir()] == [f"ds={DS}"]  # no staging, no lock
    assert spark.read.parquet(str(lake_dir / "features/user_sequences")).count() == 2


def test_missing_inputs(spark, lake_dir: Path) -> None:
    from ecrec_lib.pipeline.features import run_features
    from ecrec_lib.pipeline.io import InputMissingError

    with pytest.raises(InputMissingError, match=r"clean catalog .*clean/catalog/ds=2024-01-03"):
        run_features(spark, cfg_for(lake_dir), DS, lookback_days=2)
    spark.createDataFrame(catalog_rows(), CATALOG_DDL).write.parquet(str(lake_dir / "clean/catalog" / f"ds={DS}"))
    with pytest.raises(InputMissingError, match=r"no clean events in the lookback window 2024-01-02..2024-01-03"):
        run_features(spark, cfg_for(lake_dir), DS, lookback_days=2)


def test_user_sequences_order_ties_and_latest_context(spark) -> None:
    """Oldest first by the full timestamp (sub-second too), equal times by event_id; n_events
    counts every event while only the newest max_seq_len are kept; country and device come from
    the newest event, even when that value is null."""
    from ecrec_lib.pipeline.features import user_sequences

    t = dt.datetime(2024, 1, 3, 8)
    ms = dt.timedelta(milliseconds=1)
    rows = [  # user_key, event_time, event_id, item_id, event_type, country, device
        ("u", t, "e9", "old", "view", "FR", "desktop"),
        ("u", t + 2 * ms, "e1", "later_ms", "view", "DE", "mobile"),  # same second, later
        ("u", t + 5 * ms, "e3", "tie_b", "click", "IT", None),
        ("u", t + 5 * ms, "e2", "tie_a", "view", "ES", "tablet"),
        ("v", t, "e5", "x", "purchase", "US", "mobile"),
    ]
    items = spark.createDataFrame(rows, "user_key string, event_time timestamp, event_id string, "
                                  "item_id string, event_type string, country string, device string")
    out = {r["user_key"]: r.asDict() for r in user_sequences(items, 3).collect()}
    u = out["u"]
    assert u["item_ids"] == ["later_ms", "tie_a", "tie_b"] and u["n_events"] == 4
    assert u["event_types"] == ["view", "view", "click"]
    assert u["event_times"] == [int(t.replace(tzinfo=dt.UTC).timestamp())] * 3
    assert u["last_event_time"] == t + 5 * ms
    assert (u["country"], u["device"]) == ("IT", None)  # newest: (t + 5 ms, e3)
    assert out["v"]["item_ids"] == ["x"] and out["v"]["n_events"] == 1


def test_search_pairs_publish_only_k_anonymous_queries_without_pii(spark, lake_dir: Path) -> None:
    """A query reaches search_pairs only when min_query_users distinct users issued it and it
    is not shaped like an email, phone or card number, however many users typed it."""
    from ecrec_lib.pipeline.features import (
        build_feature_tables,
        query_privacy_report,
        query_publication,
    )

    rows = []
    searches = {"red polish": ["u1", "u2", "u3"],  # 3 distinct users: published with k=3
                "blue polish": ["u1", "u1", "u2"],  # 2 distinct users (3 searches): held back
                "jane.doe@example.com": ["u1", "u2", "u3", "u4"],  # email-shaped: never
                "+49 171 2345678": ["u1", "u2", "u3"],
                "4111 1111 1111 1111": ["u1", "u2", "u3"]}
    n = 0
    for q, users in searches.items():
        for u in users:
            n += 1
            session = f"s{n}"
            rows += [ev(f"{n}s", u, "search", None, ts(3, 8, n % 60), session=session, query=q),
                     ev(f"{n}c", u, "click", "b", ts(3, 9, n % 60), session=session)]
    events = spark.createDataFrame(rows, CLEAN_EVENT_DDL)
    catalog = spark.createDataFrame(catalog_rows(), CATALOG_DDL)
    tables = build_feature_tables(events, catalog, DS, 1, cfg_for(lake_dir, min_query_users=3))
    pairs = {r["query"]: r["clicks"] for r in tables["search_pairs"].collect()}
    assert pairs == {"red polish": 3}

    report = query_privacy_report(query_publication(events, 3), DS, 3)
    assert report["queries_total"] == 5 and report["queries_published"] == 1
    assert report["queries_below_k"] == 1
    assert report["queries_pii"] == {"email": 1, "ip": 0, "card": 1, "phone": 1}
    assert report["searches_held_back"] == 3 + 4 + 3 + 3
    # with k=2 the two-user query is published too; the PII-shaped ones still are not
    tables = build_feature_tables(events, catalog, DS, 1, cfg_for(lake_dir, min_query_users=2))
    assert {r["query"] for r in tables["search_pairs"].collect()} == {"red polish", "blue polish"}
