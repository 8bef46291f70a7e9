"""End to end: forget two users after two nights, then the next night retrains without them.

Two `airflow dags test ecrec_nightly` nights on tiny generated data (the first trains and
promotes, the second keeps the champion: the session's shared nights,
:func:`tests.e2e_support.build_two_nights`), then a request file with two raw user ids active on
both days is dropped in `requests/forget/` and `ecrec_forget` runs. Checked: no row of theirs (raw id or
pseudonym) in any live lake zone or warehouse table, the reconciliation still balances
against the rewritten partitions, the champion is flagged, the audit record holds no raw id;
then night 3 retrains (the flagged champion forces it), the gate replaces the champion, and
the new champion was trained on data without them.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e_support import (
    D1,
    D2,
    D3,
    KEEP_CHAMPION,
    NIGHT_S,
    TEST_PSEUDO_KEY,
    dags_test,
    drop_redis_prefix,
    key_prefix,
    restore_two_nights,
    tail,
)

MODEL = "ecrec-two-tower"
# Lake folders that may name the users by design: the generator's truth sidecar (tests only),
# the erasure audit and the done request files (pseudonyms), training scratch (checkpoints).
NOT_LIVE = ("raw/_truth", "ops/forget", "requests/forget/done", "models", "cache")


def _pseudonym(raw_id: str) -> str:
    return hmac.new(TEST_PSEUDO_KEY.encode(), raw_id.encode(), hashlib.sha256).hexdigest()


def _raw_users(lake: Path, ds: str) -> Counter[str]:
    users: Counter[str] = Counter()
    for f in (lake / f"raw/events/ds={ds}").glob("*.json.gz"):
        for line in gzip.decompress(f.read_bytes()).splitlines():
            try:
                uid = json.loads(line).get("user_id")
            except ValueError:  # a malformed line (the shared nights plant one): nobody's
                continue
            if uid:
                users[uid] += 1
    return users


def _leaks(lake: Path, raw_ids: list[str], keys: list[str]) -> list[str]:
    """Files of live zones that still name one of the users (raw id or pseudonym)."""
    import pyarrow.parquet as pq

    needles = [f'"{r}"'.encode() for r in raw_ids] + [k.encode() for k in keys]
    found = []
    for f in sorted(p for p in lake.rglob("*") if p.is_file()):
        rel = f.relative_to(lake).as_posix()
        if rel.startswith(NOT_LIVE) or f.name.endswith(".crc"):
            continue
        if f.name.endswith(".parquet"):
            values = pq.read_table(f).to_pylist()
            text = json.dumps(values, default=str).encode()
            hits = [n for n in needles if n in text or n.strip(b'"') in
                    {str(v).encode() for row in values for v in row.values()}]
        else:
            data = f.read_bytes()
            if f.name.endswith(".gz"):
                data = gzip.decompress(data)
            hits = [n for n in needles if n in data]
        if hits:
            found.append(rel)
    return found


def _warehouse_rows(env: dict[str, str], keys: list[str]) -> dict[str, int]:
    from ecrec_lib.warehouse import connect

    with connect(env["ECREC_WAREHOUSE_URL"], "ecrec", read_only=True) as wh:
        tables = wh.query("SELECT table_name FROM information_schema.columns WHERE "
                          "table_schema = 'ecrec' AND column_name = 'user_key'")["table_name"]
        marks = ", ".join(["%s"] * len(keys))
        return {t: int(wh.scalar(f"SELECT count(*) FROM ecrec.{t} WHERE user_key IN ({marks})", keys))
                for t in sorted(set(tables))}


def _parquet_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in folder.glob("*.parquet"))


def _raw_lines(folder: Path) -> int:
    return sum(len([ln for ln in gzip.decompress(f.read_bytes()).split(b"\n") if ln])
               for f in folder.glob("*.json.gz"))


@pytest.fixture(scope="module")
def platform(two_nights: dict, redis_url: str) -> Iterator[dict]:
    from mlflow.tracking import MlflowClient

    restore_two_nights(two_nights)
    # its own Redis prefix: night 3 here must not change what the nightly module reads there
    env = dict(two_nights["env"], ECREC_ONLINE_KEY_PREFIX=key_prefix())
    lake = Path(env["ECREC_LAKE_ROOT"])
    keep = dict(env, **KEEP_CHAMPION)

    # Two users active on days 1 and 2 (inside the champion's training window and scored).
    first, second = _raw_users(lake, D1), _raw_users(lake, D2)
    raw_ids = [u for u, _ in (first + second).most_common() if u in first and u in second][:2]
    keys = [_pseudonym(u) for u in raw_ids]
    uri = env["ECREC_MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    old_champion = client.get_model_version_by_alias(MODEL, "champion")
    before = {"leaks": _leaks(lake, raw_ids, keys), "warehouse": _warehouse_rows(env, keys)}

    request = lake / "requests/forget/two_users.txt"
    request.parent.mkdir(parents=True)
    request.write_text("\n".join(raw_ids) + "\n")
    ok, forget_out = dags_test(env, "ecrec_forget", D2)
    assert ok, "ecrec_forget failed:\n" + tail(forget_out)
    after_forget = {"leaks": _leaks(lake, raw_ids, keys), "warehouse": _warehouse_rows(env, keys)}

    ok, out3 = dags_test(keep, "ecrec_nightly", D3, timeout=NIGHT_S)
    assert ok, "nightly day 3 failed:\n" + tail(out3)
    yield {"env": env, "lake": lake, "raw_ids": raw_ids, "keys": keys, "client": client,
           "old_champion": old_champion, "before": before, "after_forget": after_forget,
           "forget_out": forget_out}
    drop_redis_prefix(redis_url, env["ECREC_ONLINE_KEY_PREFIX"])


@pytest.mark.e2e
@pytest.mark.slow
def test_no_row_of_theirs_remains(platform: dict) -> None:
    assert len(platform["raw_ids"]) == 2
    before, after = platform["before"], platform["after_forget"]
    # the check can see them: before the request they were everywhere
    for zone in ("raw/events", "clean/events", "features/user_sequences", "scores/user_topk"):
        assert any(p.startswith(zone) for p in before["leaks"]), f"no row of theirs in {zone}"
    assert before["warehouse"]["user_topk"] > 0
    assert after["leaks"] == [], f"still naming them after the erasure: {after['leaks']}"
    assert set(after["warehouse"].values()) == {0}
    # night 3 read the rewritten lake: they do not come back
    assert _leaks(platform["lake"], platform["raw_ids"], platform["keys"]) == []
    assert set(_warehouse_rows(platform["env"], platform["keys"]).values()) == {0}


@pytest.mark.e2e
@pytest.mark.slow
def test_reconciliation_still_balances(platform: dict) -> None:
    lake = platform["lake"]
    for ds in (D1, D2, D3):
        rec = json.loads((lake / f"ops/reconciliation/ds={ds}/events.json").read_text())
        assert rec["balanced"] is True
        assert rec["input_rows"] == _raw_lines(lake / f"raw/events/ds={ds}")
        assert rec["clean_rows"] == _parquet_rows(lake / f"clean/events/ds={ds}")
        assert rec["quarantined_rows"] == _parquet_rows(lake / f"quarantine/events/ds={ds}")
        assert rec["input_rows"] == rec["clean_rows"] + rec["quarantined_rows"] + rec["duplicate_rows"]
        if ds in (D1, D2):
            assert rec["forgotten"]["input_rows"] > 0 and len(rec["forgotten"]["requests"]) == 1


@pytest.mark.e2e
@pytest.mark.slow
def test_audit_record_and_request_file(platform: dict) -> None:
    lake, raw_ids, keys = platform["lake"], platform["raw_ids"], platform["keys"]
    records = list((lake / "ops/forget").glob("fr-*.json"))
    assert len(records) == 1
    text = records[0].read_text() + (lake / "ops/forget/forget_log.jsonl").read_text()
    assert not any(r in text for r in raw_ids), "the audit names a raw id"
    record = json.loads(records[0].read_text())
    assert record["status"] == "done" and sorted(record["pseudonyms"]) == sorted(keys)
    for zone in ("raw", "clean", "features", "scores"):
        assert record["rows_removed_by_zone"][zone] > 0
    assert record["warehouse_rows_removed"]["user_topk"] > 0
    assert any(p.startswith("clean/events/") for p in record["partitions_touched"])
    assert not (lake / "requests/forget/two_users.txt").exists()
    done = list((lake / "requests/forget/done").iterdir())
    assert len(done) == 1 and sorted(done[0].read_text().split()) == sorted(keys)
    assert not any(r in platform["forget_out"] for r in raw_ids), "a raw id reached the task log"


@pytest.mark.e2e
@pytest.mark.slow
def test_next_night_retrains_and_replaces_flagged_champion(platform: dict) -> None:
    from ecrec_lib.registry.client import ERASURE_TAG

    lake, client, old = platform["lake"], platform["client"], platform["old_champion"]
    flagged = client.get_model_version(MODEL, old.version)
    assert ERASURE_TAG in flagged.tags
    decision = json.loads((lake / f"ops/training_decision/ds={D3}/decision.json").read_text())
    assert decision["train"] is True and decision["champion_flagged"] is True
    assert "erased users" in decision["reason"]
    new = client.get_model_version_by_alias(MODEL, "champion")
    assert new.version != old.version and ERASURE_TAG not in (new.tags or {})
    gate = json.loads((lake / f"ops/promotion/ds={D3}/decision.json").read_text())
    assert gate["decision"] == "promoted" and "erased users" in gate["reasons"]

    # The new champion was trained on night 3's features, which hold no row of theirs (checked
    # above); its per-user matrix (if the blend kept one) has exactly one row per training user.
    import mlflow
    import scipy.sparse as sp

    summary = json.loads((lake / f"ops/training/ds={D3}/summary.json").read_text())
    assert summary["run_id"] == new.run_id
    uri = platform["env"]["ECREC_MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(uri)  # a models:/ source resolves through the process-wide URIs
    mlflow.set_registry_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=new.source))
    users = list(local.rglob("blend_users.npz"))
    for f in users:
        assert sp.load_npz(f).shape[0] == summary["data"]["n_users"]


# ============================================================================ fast unit tests
# A tiny literal lake: user "U1" is erased, "U2" stays. Day D: U1 has two clean events, one
# exact re-sent duplicate line, one truncated line (quarantined as malformed_json) and one
# unknown-item event (quarantined); U2 has one clean event.

DS = "2024-02-01"
KEY = TEST_PSEUDO_KEY.encode()
U1, U2 = "U1", "U2"
K1, K2 = _pseudonym(U1), _pseudonym(U2)


def _line(eid: str, user: str, item: str = "i1") -> str:
    return json.dumps({"event_id": eid, "event_time": f"{DS}T10:00:00Z", "user_id": user,
                       "session_id": "s", "event_type": "view", "item_id": item,
                       "email": f"{user.lower()}@example.com"})


RAW_LINES = [_line("e1", U1), _line("e2", U1), _line("e1", U1), _line("e3", U2),
             _line("e4", U1)[:80], _line("e5", U1, "nope")]


def _write_parquet(folder: Path, rows: list[dict], name: str = "part-00000.parquet") -> None:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(folder / name, index=False)


@pytest.fixture()
def tiny_lake(tmp_path: Path) -> dict:
    import datetime as dt

    lake = tmp_path / "lake"
    raw = lake / f"raw/events/ds={DS}"
    raw.mkdir(parents=True)
    (raw / "part-00000.json.gz").write_bytes(gzip.compress("\n".join(RAW_LINES).encode() + b"\n"))
    t = dt.datetime(2024, 2, 1, 10, tzinfo=dt.UTC)
    _write_parquet(lake / f"clean/events/ds={DS}", [
        {"event_id": "e1", "event_time": t, "user_key": K1, "item_id": "i1"},
        {"event_id": "e2", "event_time": t, "user_key": K1, "item_id": "i1"},
        {"event_id": "e3", "event_time": t, "user_key": K2, "item_id": "i1"}])
    # as clean writes them: quarantine keeps masked lines (the user id replaced by its
    # pseudonym), the restricted quarantine_raw the exact bytes of each quarantined line
    _write_parquet(lake / f"quarantine/events/ds={DS}", [
        {"user_key": None, "reason": "malformed_json",
         "masked_line": RAW_LINES[4].replace(U1, K1)},
        {"user_key": K1, "reason": "unknown_item_id", "masked_line": RAW_LINES[5].replace(U1, K1)}])
    _write_parquet(lake / f"quarantine_raw/events/ds={DS}", [
        {"event_id": None, "user_key": None, "reason": "malformed_json",
         "raw_line": RAW_LINES[4].encode(), "line_is_original": True},
        {"event_id": "e5", "user_key": K1, "reason": "unknown_item_id",
         "raw_line": RAW_LINES[5].encode(), "line_is_original": True}])
    _write_parquet(lake / f"features/user_sequences/ds={DS}",
                   [{"user_key": K1, "item_ids": ["i1", "i1"]}, {"user_key": K2, "item_ids": ["i1"]}])
    _write_parquet(lake / f"features/item_stats/ds={DS}", [{"item_id": "i1", "views": 3}])
    _write_parquet(lake / f"scores/user_topk/ds={DS}", [
        {"user_key": K1, "rank": 1, "item_id": "i2"}, {"user_key": K2, "rank": 1, "item_id": "i2"}])
    rec_dir = lake / f"ops/reconciliation/ds={DS}"
    rec_dir.mkdir(parents=True)
    (rec_dir / "events.json").write_text(json.dumps({
        "dataset": "events", "ds": DS, "status": "ok", "input_rows": 6, "clean_rows": 3,
        "quarantined_rows": 2, "duplicate_rows": 1,
        "quarantine_by_reason": {"malformed_json": 1, "unknown_item_id": 1}, "balanced": True}))
    wh_path = tmp_path / "wh" / "warehouse.duckdb"
    from ecrec_lib.warehouse import connect

    with connect(f"duckdb://{wh_path}", "ecrec") as wh:
        wh.execute("CREATE SCHEMA ecrec")
        wh.execute("CREATE TABLE ecrec.user_topk (ds DATE, user_key TEXT, item_id TEXT)")
        wh.execute("CREATE TABLE ecrec.trending (ds DATE, item_id TEXT)")
        wh.execute("INSERT INTO ecrec.user_topk VALUES (%s, %s, 'i2'), (%s, %s, 'i2')",
                   [DS, K1, DS, K2])
    from ecrec_lib.config import load_config

    cfg = load_config(None, env={}, lake_root=str(lake), warehouse_url=f"duckdb://{wh_path}",
                      mlflow_tracking_uri=f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}")
    return {"lake": lake, "cfg": cfg}


def _request(ids: list[str] | None = None, pseudonyms: bool = False):
    from ecrec_lib.privacy.forget import ForgetRequest

    return ForgetRequest.build(ids or [U1], KEY, pseudonyms=pseudonyms)


def test_request_file_and_id(tmp_path: Path) -> None:
    from ecrec_lib.privacy.forget import ForgetError, read_users_file

    f = tmp_path / "users.txt"
    f.write_text(f"# erasure\n{U1}\n\n {U2} \n{U1}\n")
    assert read_users_file(f) == [U1, U2, U1]
    by_raw, by_key = _request([U1, U2]), _request([K2, K1], pseudonyms=True)
    assert by_raw.request_id == by_key.request_id  # the same users: the same request
    assert by_raw.pseudonyms == {K1, K2} and by_key.raw_ids == frozenset()
    with pytest.raises(ForgetError, match="line 2 is not a pseudonym"):
        read_users_file(f, pseudonyms=True)
    f.write_text(f"{K1}\n")
    with pytest.raises(ForgetError, match="line 1 looks like a pseudonym") as info:
        read_users_file(f)
    assert K1 not in str(info.value)
    f.write_text("\n# nobody\n")
    with pytest.raises(ForgetError, match="names no user"):
        read_users_file(f)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_users_file(tmp_path / "missing.txt")


def _live_text(lake: Path) -> bytes:
    import pyarrow.parquet as pq

    out = b""
    for f in sorted(lake.rglob("*")):
        rel = f.relative_to(lake).as_posix()
        if not f.is_file() or rel.startswith(("ops/forget", "requests")):
            continue
        if f.suffix == ".parquet":
            out += json.dumps(pq.read_table(f).to_pylist(), default=str).encode()
        elif f.name.endswith(".gz"):
            out += gzip.decompress(f.read_bytes())
        else:
            out += f.read_bytes()
    return out


def test_forget_removes_them_everywhere_and_balances(tiny_lake: dict) -> None:
    from ecrec_lib.privacy.forget import forget_users
    from ecrec_lib.warehouse import connect

    lake, cfg = tiny_lake["lake"], tiny_lake["cfg"]
    stats = lake / f"features/item_stats/ds={DS}/part-00000.parquet"
    inode = stats.stat().st_ino
    record = forget_users(cfg, _request(), KEY)

    text = _live_text(lake)
    assert b'"U1"' not in text and K1.encode() not in text and b"u1@example.com" not in text
    assert b'"U2"' in text and K2.encode() in text  # the other user is untouched
    assert record["rows_removed_by_zone"] == {"clean": 2, "features": 1, "quarantine": 2,
                                              "quarantine_raw": 2, "raw": 5, "scores": 1}
    assert record["warehouse_rows_removed"] == {"user_topk": 1}
    with connect(cfg.warehouse_url, "ecrec", read_only=True) as wh:
        assert wh.query("SELECT user_key FROM ecrec.user_topk")["user_key"].tolist() == [K2]
    # unaffected partitions are not rewritten; affected ones hold no leftover copy
    assert stats.stat().st_ino == inode
    assert not [p for p in lake.rglob(".*") if p.is_dir()]
    rec = json.loads((lake / f"ops/reconciliation/ds={DS}/events.json").read_text())
    assert (rec["input_rows"], rec["clean_rows"], rec["quarantined_rows"], rec["duplicate_rows"]) \
        == (1, 1, 0, 0)
    assert rec["balanced"] is True and rec["quarantine_by_reason"] == {}
    assert rec["forgotten"]["input_rows"] == 5 and rec["forgotten"]["requests"] == [record["request_id"]]
    audit = (lake / f"ops/forget/{record['request_id']}.json").read_text()
    log_text = (lake / "ops/forget/forget_log.jsonl").read_text()
    assert U1 not in audit.replace(K1, "") and '"U1"' not in log_text and K1 in log_text
    assert json.loads(audit)["status"] == "done"


def test_forget_is_idempotent(tiny_lake: dict) -> None:
    from ecrec_lib.privacy.forget import forget_users

    lake, cfg = tiny_lake["lake"], tiny_lake["cfg"]
    first = forget_users(cfg, _request(), KEY)
    snapshot = _live_text(lake)
    rec = (lake / f"ops/reconciliation/ds={DS}/events.json").read_text()
    again = forget_users(cfg, _request([K1], pseudonyms=True), KEY)  # same users, as pseudonyms
    assert again["request_id"] == first["request_id"] and again["rows_removed_this_run"] == 0
    assert _live_text(lake) == snapshot
    assert (lake / f"ops/reconciliation/ds={DS}/events.json").read_text() == rec
    assert again["rows_removed_by_zone"] == first["rows_removed_by_zone"]
    assert again["warehouse_rows_removed"] == first["warehouse_rows_removed"] == {"user_topk": 1}
    assert len((lake / "ops/forget/forget_log.jsonl").read_text().splitlines()) == 1


def test_kill_midway_leaves_partitions_whole_and_rerun_finishes(tiny_lake: dict, monkeypatch) -> None:
    from ecrec_lib.privacy import forget

    lake, cfg = tiny_lake["lake"], tiny_lake["cfg"]
    real = forget.rewrite_partition
    done: list[str] = []

    def killed_after_two(part, matcher):  # noqa: ANN001, ANN202
        if len(done) == 2:
            raise KeyboardInterrupt("killed")
        done.append(part.name)
        return real(part, matcher)

    monkeypatch.setattr(forget, "rewrite_partition", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        forget.forget_users(cfg, _request(), KEY)
    record = json.loads(next((lake / "ops/forget").glob("fr-*.json")).read_text())
    assert record["status"] == "in_progress"
    # every partition is either the old or the new one, and still readable
    clean = lake / f"clean/events/ds={DS}"
    import pyarrow.parquet as pq

    assert pq.read_table(clean).num_rows == 1  # rewritten before the kill (sorted first)
    assert pq.read_table(lake / f"scores/user_topk/ds={DS}").num_rows == 2  # not yet
    monkeypatch.setattr(forget, "rewrite_partition", real)
    final = forget.forget_users(cfg, _request(), KEY)
    assert final["status"] == "done"
    assert final["rows_removed_by_zone"]["clean"] == 2  # from the first attempt's plan
    assert K1.encode() not in _live_text(lake)
    rec = json.loads((lake / f"ops/reconciliation/ds={DS}/events.json").read_text())
    assert rec["input_rows"] == 1 and rec["balanced"] is True


def test_a_raw_day_not_cleaned_yet_is_erased_without_balance(tiny_lake: dict) -> None:
    from ecrec_lib.privacy.forget import forget_users

    lake, cfg = tiny_lake["lake"], tiny_lake["cfg"]
    landed = lake / "raw/events/ds=2024-02-02"  # tonight's raw day, the nightly has not run
    landed.mkdir(parents=True)
    (landed / "part-00000.json.gz").write_bytes(gzip.compress(
        (_line("e7", U1) + "\n" + _line("e8", U2) + "\n").encode()))
    record = forget_users(cfg, _request(), KEY)
    assert record["rows_removed_by_zone"]["raw"] == 6
    assert b'"U1"' not in gzip.decompress((landed / "part-00000.json.gz").read_bytes())
    assert not (lake / "ops/reconciliation/ds=2024-02-02").exists()


def test_unbalanced_rows_change_nothing(tiny_lake: dict) -> None:
    from ecrec_lib.privacy.forget import ForgetError, forget_users

    lake, cfg = tiny_lake["lake"], tiny_lake["cfg"]
    # a clean row of U1 the raw partition does not explain: some derivation would be missed
    _write_parquet(lake / f"clean/events/ds={DS}", [{"event_id": "e9", "user_key": K1}],
                   name="part-00001.parquet")
    before = _live_text(lake)
    with pytest.raises(ForgetError, match="do not balance.*3 clean"):
        forget_users(cfg, _request(), KEY)
    assert _live_text(lake) == before


def test_rewrite_keeps_schema_drops_stale_crc_and_refuses_unknown_files(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ecrec_lib.privacy.forget import (
        ForgetError,
        Partition,
        UserMatcher,
        rewrite_partition,
        scan_partition,
    )

    folder = tmp_path / "clean/events" / f"ds={DS}"
    folder.mkdir(parents=True)
    table = pa.table({"user_key": [K1, K2], "t": pa.array([1, 2], pa.timestamp("ns", "UTC"))},
                     metadata={b"org.apache.spark.sql.parquet.row.metadata": b"{}"})
    pq.write_table(table, folder / "part-0.parquet")
    (folder / ".part-0.parquet.crc").write_bytes(b"stale")
    (folder / "_SUCCESS").write_bytes(b"")
    part = Partition("clean", "events", DS, folder)
    matcher = UserMatcher(_request(), KEY)
    assert scan_partition(part, matcher).rows == 1
    assert rewrite_partition(part, matcher) == 1
    out = pq.read_table(folder / "part-0.parquet")
    assert out.column("user_key").to_pylist() == [K2]
    assert out.schema.field("t").type == pa.timestamp("us", "UTC")  # what Spark can read
    assert out.schema.metadata[b"org.apache.spark.sql.parquet.row.metadata"] == b"{}"
    assert sorted(p.name for p in folder.iterdir()) == ["_SUCCESS", "part-0.parquet"]
    (folder / "notes.csv").write_text("x")
    with pytest.raises(ForgetError, match="neither Parquet nor JSON lines"):
        scan_partition(part, matcher)


def test_masked_quarantine_line_matches_by_pseudonym() -> None:
    from ecrec_lib.privacy.forget import UserMatcher

    matcher = UserMatcher(_request(), KEY)
    masked = json.dumps({"event_id": "e1", "user_id": K1, "email": "***"}).encode()
    other = json.dumps({"event_id": "e1", "note": K1}).encode()
    assert matcher.line_matches(masked)
    assert not matcher.line_matches(other) and matcher.line_matches(other, scan_pseudonyms=True)
    assert matcher.line_matches(_line("e1", U1)[:80].encode())  # truncated, user_id survived
    assert not matcher.line_matches(_line("e1", "U10").encode())


@pytest.mark.spark
def test_spark_reads_a_rewritten_partition(spark, tmp_path: Path) -> None:
    import datetime as dt

    from ecrec_lib.privacy.forget import Partition, UserMatcher, rewrite_partition

    folder = tmp_path / f"clean/events/ds={DS}"
    t = dt.datetime(2024, 2, 1, 10, tzinfo=dt.UTC)
    spark.createDataFrame([(K1, t, {"a": 1.0}), (K2, t, {"b": 2.0})],
                          "user_key string, event_time timestamp, aff map<string,double>") \
        .coalesce(1).write.parquet(str(folder))
    assert rewrite_partition(Partition("clean", "events", DS, folder), UserMatcher(_request(), KEY)) == 1
    rows = spark.read.parquet(str(folder)).collect()
    assert [(r.user_key, r.event_time.replace(tzinfo=None), r.aff) for r in rows] == \
        [(K2, t.replace(tzinfo=None), {"b": 2.0})]


# ---------------------------------------------------------------------- registry and gate


def test_gate_replaces_flagged_champion_and_never_promotes_flagged_challenger() -> None:
    from ecrec_lib.config import load_config
    from ecrec_lib.registry.gate import decide

    cfg = load_config(None, env={})
    good = {"ndcg@10": 0.30, "coverage@10": 0.5, "recall@50": 0.5, "ms_per_1k_users": 1.0}
    worse = dict(good, **{"ndcg@10": 0.10})
    pop = dict(good, **{"ndcg@10": 0.05})
    assert not decide(cfg, worse, good, pop).promote
    flagged = decide(cfg, worse, good, pop, champion_flagged=True)
    assert flagged.promote and "erased users" in flagged.reasons[-1]
    broken = dict(worse, **{"coverage@10": 0.0})
    assert not decide(cfg, broken, good, pop, champion_flagged=True).promote
    assert not decide(cfg, good, worse, pop, challenger_flagged=True).promote
    assert not decide(cfg, good, None, pop, challenger_flagged=True).promote


def test_flag_models_by_training_window(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from ecrec_lib.config import load_config
    from ecrec_lib.privacy.forget import flag_models, version_window
    from ecrec_lib.registry import client as reg
    from ecrec_lib.registry.promotion import manual_promote

    db = tmp_path / "mlflow.db"
    cfg = load_config(None, env={}, mlflow_tracking_uri=f"sqlite:///{db}", lookback_days=3,
                      mlflow_artifact_root=str(tmp_path / "art"))
    client = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri, registry_uri=cfg.registry_uri)
    client.create_registered_model(cfg.registered_model_name)
    src = tmp_path / "model"
    src.mkdir()
    windows = {"2024-01-03": None, "2024-01-10": None, "2024-01-20": '{"data_window": '
               '{"window_start": "2024-01-01", "window_end": "2024-01-20"}}'}
    for ds, card in windows.items():
        tags = {"ds": ds, **({"card_inputs": card} if card else {})}
        client.create_model_version(cfg.registered_model_name, str(src), tags=tags)
    assert version_window({"ds": "2024-01-10"}, 3) == ("2024-01-08", "2024-01-10")
    # active on Jan 2: version 1 (window Jan 1-3) and version 3 (card: Jan 1-20), not version 2
    assert flag_models(cfg, "fr-a", ["2024-01-02"]) == ["3", "1"]
    assert flag_models(cfg, "fr-a", ["2024-01-02"]) == ["3", "1"]  # idempotent
    flag_models(cfg, "fr-b", ["2024-01-02"])
    assert reg.erasure_requests(client.get_model_version(cfg.registered_model_name, "1")) == \
        ["fr-a", "fr-b"]
    assert not reg.is_flagged(client.get_model_version(cfg.registered_model_name, "2"))
    with pytest.raises(reg.RegistryError, match="erased users"):
        manual_promote(client, cfg, "1", by="t", reason="r", check_artifact=False)
    from jobs.should_train import champion_state

    assert champion_state(cfg) == (False, False)
    client.set_registered_model_alias(cfg.registered_model_name, "champion", "2")
    assert champion_state(cfg) == (True, False)
    client.set_registered_model_alias(cfg.registered_model_name, "champion", "1")
    assert champion_state(cfg) == (True, True)  # the next night must retrain
    from jobs.models import format_rows, version_rows

    rows = version_rows(reg.list_versions(client, cfg.registered_model_name))
    assert [r["erasure_pending"] for r in rows] == [True, False, True]
    assert "ERASURE PENDING" in format_rows(rows)


@pytest.mark.postgres
def test_erase_from_postgres_warehouse(postgres_url: str) -> None:
    import uuid

    from ecrec_lib.config import load_config
    from ecrec_lib.privacy.forget import erase_from_warehouse
    from ecrec_lib.warehouse import connect

    schema = f"ecrec_forget_{uuid.uuid4().hex[:10]}"
    cfg = load_config(None, env={}, warehouse_url=postgres_url, warehouse_schema=schema)
    with connect(postgres_url, schema) as wh:
        wh.execute(f"CREATE SCHEMA {schema}")
        wh.execute(f"CREATE TABLE {schema}.user_topk (ds DATE, user_key TEXT, item_id TEXT)")
        wh.execute(f"CREATE TABLE {schema}.metrics_daily (ds DATE, hit_rate DOUBLE PRECISION)")
        wh.execute(f"CREATE VIEW {schema}.user_topk_latest AS SELECT * FROM {schema}.user_topk")
        wh.execute(f"INSERT INTO {schema}.user_topk VALUES (%s, %s, 'i'), (%s, %s, 'i'), "
                   "(%s, %s, 'j')", [DS, K1, DS, K2, DS, K1])
        wh.execute(f"INSERT INTO {schema}.metrics_daily VALUES (%s, 0.5)", [DS])
    try:
        assert erase_from_warehouse(cfg, [K1]) == {"user_topk": 2}
        assert erase_from_warehouse(cfg, [K1]) == {"user_topk": 0}
        with connect(postgres_url, schema) as wh:
            assert wh.query(f"SELECT user_key FROM {schema}.user_topk")["user_key"].tolist() == [K2]
            assert wh.scalar(f"SELECT count(*) FROM {schema}.metrics_daily") == 1
    finally:
        with connect(postgres_url, schema) as wh:
            wh.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def test_a_rewritten_raw_day_still_reads_as_landed(tiny_lake: dict) -> None:
    """The producer's landing manifest lists file sizes: erasure rewrites it with the new ones,
    or the sensor would wait for a landing that never ends (and the night be skipped)."""
    from ecrec_lib.landing import landing_status
    from ecrec_lib.privacy.forget import forget_users

    lake, cfg = tiny_lake["lake"], tiny_lake["cfg"]
    raw = lake / f"raw/events/ds={DS}"
    part = raw / "part-00000.json.gz"
    (raw / "_SUCCESS").write_text(json.dumps({"files": {part.name: part.stat().st_size},
                                              "lines": len(RAW_LINES)}))
    assert landing_status(str(raw)).ready
    forget_users(cfg, _request(), KEY)
    status = landing_status(str(raw))
    assert status.ready, status
    manifest = json.loads((raw / "_SUCCESS").read_text())
    assert manifest["files"] == {part.name: part.stat().st_size}
    assert manifest["lines"] == 1  # U2's one line is all that is left
