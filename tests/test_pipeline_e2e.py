"""End to end: generator -> clean_events -> build_features -> validate, as subprocesses on a
``local-cluster`` master (separate executor JVMs and Python workers that do not inherit the
driver's PYTHONPATH), so nothing may depend on driver-local state: the HMAC key reaches the
executors only inside the UDF closure (the driver reads it from a key file; no executor has
ECREC_PSEUDO_KEY), and the UDFs must not import ecrec_lib on the executors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ecrec_lib import schema as S
from ecrec_lib.pipeline.pseudonymize import keyed_id_py, user_key_py

pytestmark = [pytest.mark.slow, pytest.mark.spark, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
MASTER = "local-cluster[2,1,1024]"
KEY = "e2e-key-file-secret-0123456789"
DS = "2024-01-01"


def run_job(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=900)
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc


def test_clean_and_features_on_local_cluster(tmp_path: Path, spark) -> None:
    from ecrec_lib.generator import generate

    lake = tmp_path / "lake"
    # One day: each job's own path on separate executors is what this test is for (windows
    # over several days: test_pipeline_features); a second local-cluster clean cost a minute.
    generate(str(lake), DS, days=1, users=150, items=80, seed=7, dirty_rate=0.02)
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    env = {k: v for k, v in os.environ.items() if k != "ECREC_PSEUDO_KEY"}
    # 150 users over 2 days: hardly any query reaches the default k of 5 distinct users, and
    # this test checks that every feature table gets rows (k-anonymity: test_pipeline_features).
    env.update(ECREC_PSEUDO_KEY_FILE=str(key_file), PYTHONPATH=str(REPO), ECREC_SPARK_DRIVER_MEMORY="1g",
               ECREC_MIN_QUERY_USERS="1")

    run_job(["jobs.clean_events", "--ds", DS, "--lake", str(lake), "--master", MASTER], env)
    run_job(["jobs.build_features", "--ds", DS, "--lookback-days", "1", "--lake", str(lake),
             "--master", MASTER], env)
    out = run_job(["jobs.validate", "--dataset", "clean_events", "--ds", DS, "--lake",
                   str(lake), "--master", "local[1]"], env)
    assert "0 critical" in out.stdout

    rec = json.loads((lake / f"ops/reconciliation/ds={DS}/events.json").read_text())
    assert rec["balanced"] and rec["clean_rows"] > 0 and rec["quarantined_rows"] > 0
    # the generator's dirt lands in quarantine with contract reasons
    assert set(rec["quarantine_by_reason"]) <= {
        S.REASON_MALFORMED, S.REASON_MISSING_USER, S.REASON_MISSING_REQUIRED, S.REASON_BAD_TIME,
        S.REASON_BOT, S.REASON_BAD_EVENT_TYPE, S.REASON_NEGATIVE_PRICE, S.REASON_BAD_QUANTITY,
        S.REASON_OUT_OF_WINDOW, S.REASON_UNKNOWN_ITEM}

    # user_key and the keyed event ids computed on the executors equal the HMACs with the key
    # from the file
    clean = spark.read.parquet(str(lake / f"clean/events/ds={DS}"))
    raw = [json.loads(line) for line in _raw_lines(lake / f"raw/events/ds={DS}")]
    by_event = {keyed_id_py(KEY.encode(), "event_id", r["event_id"].strip()): r["user_id"].strip()
                for r in raw
                if isinstance(r, dict) and r.get("event_id") and isinstance(r.get("user_id"), str)}
    for row in clean.select("event_id", "user_key").limit(20).collect():
        assert row["user_key"] == user_key_py(KEY.encode(), by_event[row["event_id"]])
    for name in ("user_sequences", "item_stats", "user_profiles", "search_pairs", "item_cooccurrence"):
        assert spark.read.parquet(str(lake / "features" / name / f"ds={DS}")).count() > 0, name


def _raw_lines(path: Path) -> list[str]:
    import gzip

    lines: list[str] = []
    for f in sorted(path.glob("*.json.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                try:
                    json.loads(line)
                except ValueError:
                    continue
                lines.append(line)
    return lines
