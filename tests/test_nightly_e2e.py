"""End to end: `airflow dags test` of ecrec_nightly and ecrec_feedback on tiny generated data.

Day 1 trains (no champion yet), registers, promotes and publishes; day 2 keeps the champion
(min_new_events_to_train set out of reach) and publishes (these two nights are the session's
shared ones, :func:`tests.e2e_support.build_two_nights`); re-running day 2 replaces its
partitions; Redis serves the newest night online; the feedback DAG judges day 1's lists on
day 2's events; a corrupted catalog on day 3 fails the run on a critical data-contract
expectation and leaves the published tables (and the list Redis serves) as they were, with
the reason in the log.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from ecrec_lib.landing import manifest_text
from tests.e2e_support import (
    D1,
    D2,
    D3,
    KEEP_CHAMPION,
    PLANTED_SECRET,
    dags_test,
    restore_two_nights,
    tail,
)
from tests.privacy_support import PLANTED, format_hits, scan_tree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SCORE_TABLES = ("user_topk", "item_related", "query_topk", "trending")


def _warehouse_counts(env: dict[str, str]) -> dict[tuple[str, str], int]:
    from ecrec_lib.warehouse import connect

    with connect(env["ECREC_WAREHOUSE_URL"], "ecrec", read_only=True) as wh:
        out = {}
        for table in SCORE_TABLES:
            df = wh.query(f"SELECT CAST(ds AS VARCHAR) AS ds, count(*) AS n FROM ecrec.{table} "
                          "GROUP BY ds")
            out.update({(table, str(ds)): int(n) for ds, n in zip(df["ds"], df["n"], strict=True)})
        return out


@pytest.fixture(scope="module")
def platform(two_nights: dict, redis_url: str) -> dict:
    """The shared two nights (day 1 with planted PII, a Redis URL with a password), then day 2
    again and the feedback DAG."""
    root = restore_two_nights(two_nights)
    env = dict(two_nights["env"])
    runs: dict[str, tuple[bool, str]] = dict(two_nights["runs"])
    counts_after_d2 = _warehouse_counts(env)
    runs["d2_again"] = dags_test(dict(env, **KEEP_CHAMPION), "ecrec_nightly", D2)
    runs["feedback"] = dags_test(env, "ecrec_feedback", D2)
    import redis

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    return {"root": root, "env": env, "lake": Path(env["ECREC_LAKE_ROOT"]), "runs": runs,
            "counts_after_d2": counts_after_d2, "redis": r}


def test_day1_trains_registers_promotes_and_publishes(platform: dict) -> None:
    lake = platform["lake"]
    for part in ("clean/events", "clean/catalog", "features/user_sequences",
                 "features/item_stats", "scores/user_topk", "scores/trending"):
        assert any((lake / part / f"ds={D1}").glob("*.parquet")), f"{part}/ds={D1} not written"
    decision = json.loads((lake / f"ops/training_decision/ds={D1}/decision.json").read_text())
    assert decision["train"] is True and "no champion" in decision["reason"]
    summary = json.loads((lake / f"ops/training/ds={D1}/summary.json").read_text())
    assert summary["run_id"]

    from mlflow.tracking import MlflowClient

    uri = platform["env"]["ECREC_MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("ecrec-two-tower", "champion")
    assert champion.run_id == summary["run_id"]

    counts = platform["counts_after_d2"]
    for table in SCORE_TABLES:
        assert counts.get((table, D1), 0) > 0, f"warehouse {table} has no rows for {D1}"
    report = (lake / f"ops/report/ds={D1}/report.md").read_text()
    assert f"# ecrec daily report — {D1}" in report
    assert "| warehouse user_topk |" in report
    # The report is printed into the task log too.
    assert f"ecrec daily report — {D1}" in platform["runs"]["d1"][1]


def test_personal_data_and_secrets_stay_inside_their_boundary(platform: dict) -> None:
    """After the nights, the raw id, e-mail, phone and IP planted in day 1 and the Redis password
    appear nowhere but raw/ and quarantine_raw/: not in the rest of the lake, the MLflow store
    and its artifacts, the warehouse, Airflow's files, or any task's log."""
    root = platform["root"]
    needles = [*PLANTED, PLANTED_SECRET]
    restricted = ("lake/raw/", "lake/quarantine_raw/")
    hits = scan_tree(root, needles)
    leaks = [h for h in hits if not h.path.startswith(restricted)]
    assert leaks == [], "personal data or the secret outside the restricted zones:\n" + format_hits(leaks)
    # the scan would have found them: every planted value is in the restricted zone
    assert {h.needle for h in hits if h.path.startswith("lake/quarantine_raw/")} == set(PLANTED)
    for name, (_, log) in platform["runs"].items():  # task logs: dags test prints them
        found = [n for n in needles if n.lower() in log.lower()]
        assert found == [], f"{name}'s task logs hold {found}"


def test_day2_keeps_champion_and_publishes(platform: dict) -> None:
    lake = platform["lake"]
    decision = json.loads((lake / f"ops/training_decision/ds={D2}/decision.json").read_text())
    assert decision["train"] is False and decision["has_champion"] is True
    assert "keep champion" in decision["reason"]
    assert not (lake / f"ops/training/ds={D2}").exists(), "training ran although it was skipped"
    assert "keeping the champion" in platform["runs"]["d2"][1]
    assert platform["counts_after_d2"].get(("user_topk", D2), 0) > 0


def test_rerun_replaces_exactly_its_partitions(platform: dict) -> None:
    ok, out = platform["runs"]["d2_again"]
    assert ok, tail(out)
    assert _warehouse_counts(platform["env"]) == platform["counts_after_d2"]
    lake = platform["lake"]
    assert sorted(p.name for p in (lake / "scores/user_topk").iterdir()
                  if p.name.startswith("ds=")) == [f"ds={D1}", f"ds={D2}"]


def test_redis_serves_the_newest_night(platform: dict) -> None:
    from ecrec_lib.lake import Lake
    from ecrec_lib.scoring.tables import read_table
    from ecrec_lib.serving.online import current_version, get_user_recs

    r, prefix = platform["redis"], platform["env"]["ECREC_ONLINE_KEY_PREFIX"]
    version = current_version(r, prefix)
    assert version is not None and version.startswith(f"{D2}-")
    lists = read_table("user_topk", Lake(str(platform["lake"])), D2)
    user = lists["user_key"].iat[0]
    expected = lists[lists["user_key"] == user].sort_values("rank")["item_id"].tolist()
    assert [rec.item_id for rec in get_user_recs(r, user, 100, prefix=prefix)] == expected


def test_feedback_dag_writes_metrics(platform: dict) -> None:
    ok, out = platform["runs"]["feedback"]
    assert ok, tail(out)
    from ecrec_lib.warehouse import connect

    with connect(platform["env"]["ECREC_WAREHOUSE_URL"], "ecrec", read_only=True) as wh:
        metrics = wh.query("SELECT * FROM ecrec.metrics_daily")
        drift = wh.query("SELECT * FROM ecrec.drift_daily")
    overall = metrics[metrics["strategy"] == "all"]
    assert len(overall) == 1
    assert 0.0 <= overall["hit_rate"].iloc[0] <= 1.0
    assert overall["n_users_with_recs"].iloc[0] > 0
    assert set(drift["feature"]) == {"item_popularity", "user_sequence_length", "score"}
    assert "hit rate" in out  # the alert check states its comparison in the task log


def test_critical_expectation_failure_keeps_published_tables(platform: dict) -> None:
    env, lake = platform["env"], platform["lake"]
    before = _warehouse_counts(env)
    from ecrec_lib.serving.online import current_version

    prefix = env["ECREC_ONLINE_KEY_PREFIX"]
    served = current_version(platform["redis"], prefix)
    # Corrupt day 3's catalog: every price negative -> every item quarantined -> the clean
    # catalog is empty and its critical row-count expectation fails.
    part = next((lake / f"raw/catalog/ds={D3}").glob("*.json.gz"))
    rows = [json.loads(line) for line in gzip.decompress(part.read_bytes()).splitlines()]
    part.write_bytes(gzip.compress(
        "\n".join(json.dumps({**r, "price": -1.0}) for r in rows).encode() + b"\n"
    ))
    # re-landed as a producer would: the marker (a manifest of sizes) is written again, last
    (part.parent / "_SUCCESS").write_text(
        manifest_text({part.name: part.stat().st_size}, len(rows)))
    ok, out = dags_test(env, "ecrec_nightly", D3)
    assert not ok, "the run should have failed on the corrupted catalog"
    assert "state=failed" in [ln for ln in out.splitlines() if "DagRun Finished" in ln][-1]
    assert f"job 'clean_events' failed for ds={D3} with exit code 4" in out
    assert "data contract 'catalog'" in out and "CRITICAL" in out
    assert _warehouse_counts(env) == before, "a failed run changed the published tables"
    assert current_version(platform["redis"], prefix) == served
    assert not (lake / f"scores/user_topk/ds={D3}").exists()
    assert not (lake / f"ops/report/ds={D3}").exists()
