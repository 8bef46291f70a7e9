"""DAG integrity: import errors, parse time, task graph, docs, no heavy imports at parse.

Parsing happens in a fresh subprocess (own AIRFLOW_HOME, no examples) so ``sys.modules``
shows exactly what parsing the DAG files imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ecrec_lib.orchestration import (
    EXIT_CONTRACT,
    EXIT_NO_DATA,
    WAREHOUSE_POOL,
    JobFailed,
    decide_training,
    error_tail,
    job_command,
    job_env,
    partition_ready,
    run_job,
    run_policy,
    spark_submit_kwargs,
    task_retries,
)

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pyspark", "mlflow", "great_expectations", "transformers")

_PROBE = textwrap.dedent(
    """
    import json, sys, time
    HEAVY = tuple(sys.argv[1:])
    import airflow.sdk  # warm the Airflow import so timings measure the DAG files
    from airflow.dag_processing.dagbag import DagBag
    out = {"parse_s": {}, "dags": {}}
    for f in sorted(__import__("pathlib").Path("dags").glob("*.py")):
        t0 = time.perf_counter()
        DagBag(dag_folder=str(f))
        out["parse_s"][f.name] = time.perf_counter() - t0
    bag = DagBag(dag_folder="dags")
    out["import_errors"] = {k: str(v) for k, v in bag.import_errors.items()}
    for dag_id, dag in bag.dags.items():
        out["dags"][dag_id] = {
            "doc_md": dag.doc_md or "",
            "max_active_runs": dag.max_active_runs,
            "catchup": dag.catchup,
            "schedule": getattr(dag.timetable, "summary", "None"),
            "params": sorted(dag.params.keys()),
            "tasks": {
                t.task_id: {
                    "downstream": sorted(t.downstream_task_ids),
                    "doc_md": t.doc_md or "",
                    "trigger_rule": str(t.trigger_rule.value if hasattr(t.trigger_rule, "value")
                                        else t.trigger_rule),
                    "retries": t.retries,
                    "timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout
                    else None,
                    "type": type(t).__name__,
                    "mode": getattr(t, "mode", None),
                    "pool": t.pool,
                }
                for t in dag.tasks
            },
        }
    out["heavy"] = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    print("JSON:" + json.dumps(out))
    """
)


def _probe(tmp_path: Path, **env_extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        PYTHONPATH=str(REPO),
        **env_extra,
    )
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *HEAVY], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:"))
    return json.loads(line[5:])


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _probe(tmp_path_factory.mktemp("dagbag"), ECREC_TASK_RETRIES="2")


NIGHTLY_EDGES = {
    "wait_for_raw_events": ["validate_raw"],
    "validate_raw": ["clean"],
    "clean": ["validate_clean"],
    "validate_clean": ["build_features"],
    "build_features": ["validate_features"],
    "validate_features": ["decide_training"],
    "decide_training": ["keep_champion", "train"],
    "train": ["register"],
    "register": ["promote"],
    "promote": ["score"],
    "keep_champion": ["score"],
    "score": ["validate_scores"],
    "validate_scores": ["publish"],
    "publish": ["export_online", "housekeeping", "report"],
    "report": [],
    "export_online": [],
    "housekeeping": [],
}
FORGET_EDGES = {"wait_for_requests": ["forget_users"], "forget_users": []}
FEEDBACK_EDGES = {
    "wait_for_clean_events": ["compute_feedback"],
    "compute_feedback": ["check_hit_rate"],
    "check_hit_rate": [],
}


def test_no_import_errors_and_fast_parse(parsed: dict) -> None:
    assert parsed["import_errors"] == {}
    assert set(parsed["dags"]) == {"ecrec_nightly", "ecrec_feedback", "ecrec_forget"}
    for name, seconds in parsed["parse_s"].items():
        assert seconds < 2.0, f"{name} took {seconds:.2f}s to parse (budget 2 s)"


def test_parsing_imports_no_heavy_module(parsed: dict) -> None:
    assert parsed["heavy"] == [], f"DAG parsing imported {parsed['heavy']}"


@pytest.mark.parametrize(
    ("dag_id", "edges"),
    [("ecrec_nightly", NIGHTLY_EDGES), ("ecrec_feedback", FEEDBACK_EDGES),
     ("ecrec_forget", FORGET_EDGES)],
)
def test_task_graph(parsed: dict, dag_id: str, edges: dict) -> None:
    tasks = parsed["dags"][dag_id]["tasks"]
    assert {t: v["downstream"] for t, v in tasks.items()} == edges


@pytest.mark.parametrize("dag_id", ["ecrec_nightly", "ecrec_feedback"])
def test_docs_and_run_policy(parsed: dict, dag_id: str) -> None:
    dag = parsed["dags"][dag_id]
    assert dag["doc_md"].lstrip().startswith(f"# {dag_id}")
    assert dag["max_active_runs"] == 1
    assert dag["catchup"] is False
    assert dag["schedule"] == "0 0 * * *"
    for task_id, task in dag["tasks"].items():
        assert len(task["doc_md"].strip()) > 20, f"{dag_id}.{task_id} has no doc_md"
        assert task["retries"] == 2


def test_forget_dag_docs_and_run_policy(parsed: dict) -> None:
    dag = parsed["dags"]["ecrec_forget"]
    assert dag["doc_md"].lstrip().startswith("# ecrec_forget")
    assert "requests/forget/" in dag["doc_md"]
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    assert dag["schedule"] == "0 12 * * *"  # away from the nightly run's partitions
    tasks = dag["tasks"]
    assert tasks["wait_for_requests"]["mode"] == "reschedule"
    for task_id, task in tasks.items():
        assert len(task["doc_md"].strip()) > 20, f"ecrec_forget.{task_id} has no doc_md"
        assert task["retries"] == 2


def test_nightly_branch_join_sensor_and_params(parsed: dict) -> None:
    dag = parsed["dags"]["ecrec_nightly"]
    tasks = dag["tasks"]
    assert tasks["score"]["trigger_rule"] == "none_failed_min_one_success"
    assert tasks["decide_training"]["type"] == "_BranchPythonDecoratedOperator"
    assert tasks["wait_for_raw_events"]["mode"] == "reschedule"
    assert dag["params"] == ["force_training", "k", "pin_model_version", "skip_training"]


def test_every_task_has_an_execution_timeout_from_env(tmp_path: Path, parsed: dict) -> None:
    for dag in parsed["dags"].values():
        for task_id, task in dag["tasks"].items():
            assert task["timeout_s"], f"{task_id} has no execution_timeout"
    tasks = parsed["dags"]["ecrec_nightly"]["tasks"]
    assert tasks["train"]["timeout_s"] > tasks["validate_raw"]["timeout_s"]
    custom = _probe(tmp_path, ECREC_TASK_TIMEOUT_SPARK_MIN="5", ECREC_TASK_TIMEOUT_LIGHT_MIN="2")
    tasks = custom["dags"]["ecrec_nightly"]["tasks"]
    assert tasks["clean"]["timeout_s"] == tasks["build_features"]["timeout_s"] == 300
    assert tasks["publish"]["timeout_s"] == 120


def test_empty_day_skips_through_and_is_reported(parsed: dict) -> None:
    tasks = parsed["dags"]["ecrec_nightly"]["tasks"]
    # validate_raw skips an empty day; clean still runs to record no_data; the report runs
    # after a skipped tail but not after a failure.
    assert tasks["clean"]["trigger_rule"] == "none_failed"
    assert tasks["report"]["trigger_rule"] == "none_failed"
    assert tasks["validate_clean"]["trigger_rule"] == "all_success"


def test_warehouse_writers_share_one_pool(parsed: dict) -> None:
    assert WAREHOUSE_POOL == "ecrec_warehouse"
    pools = {(dag_id, t): v["pool"] for dag_id, d in parsed["dags"].items()
             for t, v in d["tasks"].items()}
    # every task that writes the warehouse: publication, feedback tables, retention, erasure
    writers = {("ecrec_nightly", "publish"), ("ecrec_feedback", "compute_feedback"),
               ("ecrec_nightly", "housekeeping"), ("ecrec_forget", "forget_users")}
    assert {k for k, pool in pools.items() if pool == WAREHOUSE_POOL} == writers


def test_retries_and_spark_submit_from_env(tmp_path: Path) -> None:
    parsed = _probe(tmp_path, ECREC_TASK_RETRIES="0", ECREC_SPARK_SUBMIT="1",
                    ECREC_DAG_SCHEDULE="none")
    assert parsed["import_errors"] == {}
    assert {d["schedule"] for d in parsed["dags"].values()} == {"None"}
    tasks = parsed["dags"]["ecrec_nightly"]["tasks"]
    assert {t["retries"] for t in tasks.values()} == {0}
    assert tasks["clean"]["type"] == "SparkSubmitOperator"
    assert tasks["clean"]["trigger_rule"] == "none_failed"
    assert tasks["build_features"]["type"] == "SparkSubmitOperator"
    assert tasks["train"]["type"] == "_PythonDecoratedOperator"
    assert {t: v["downstream"] for t, v in tasks.items()} == NIGHTLY_EDGES


# --- ecrec_lib.orchestration ---------------------------------------------------------


def test_job_command_flags() -> None:
    cmd = job_command("score_topk", "2024-01-02", python="py", k=50, force=True, skip=False,
                      model=None, tables=["a", "b"])
    assert cmd == ["py", "-m", "jobs.score_topk", "--ds", "2024-01-02", "--k", "50", "--force",
                   "--tables", "a", "b"]
    with pytest.raises(ValueError, match="module name"):
        job_command("rm -rf", "2024-01-02")


def test_job_env_puts_repo_first_and_keeps_ecrec_vars() -> None:
    env = job_env({"PYTHONPATH": "/x", "ECREC_LAKE_ROOT": "/lake"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/x"]
    assert env["ECREC_LAKE_ROOT"] == "/lake"


def test_run_job_streams_and_reports_failure(tmp_path: Path) -> None:
    import logging

    script = tmp_path / "fake_python"
    # A stand-in interpreter: prints like a job, then fails with the documented no-data code.
    script.write_text(
        "#!/bin/sh\necho \"starting $2 $3 $4\"\necho 'ERROR jobs.x: raw partition is empty' >&2\n"
        f"exit {EXIT_NO_DATA}\n"
    )
    script.chmod(0o755)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test.run_job")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    with pytest.raises(JobFailed) as info:
        run_job("clean_events", "2024-01-02", logger=logger, python=str(script))
    assert info.value.returncode == EXIT_NO_DATA
    assert "raw partition is empty" in str(info.value)
    assert "python -m jobs.clean_events --ds 2024-01-02" in str(info.value)
    assert any("starting jobs.clean_events --ds 2024-01-02" in r for r in records)


def test_run_job_success_returns_lines() -> None:
    lines = run_job("__init__", None, python=sys.executable)  # jobs/__init__ runs and exits 0
    assert lines == []


def test_error_tail_prefers_error_lines() -> None:
    lines = [f"info {i}" for i in range(50)] + ["ERROR boom: bad column"] + ["info end"]
    tail = error_tail(lines, n=5)
    assert "ERROR boom: bad column" in tail and tail[-1] == "info end"


def test_task_retries_env() -> None:
    assert task_retries({}) == 2
    assert task_retries({"ECREC_TASK_RETRIES": "0"}) == 0
    with pytest.raises(ValueError, match="ECREC_TASK_RETRIES"):
        task_retries({"ECREC_TASK_RETRIES": "-1"})


def test_spark_submit_kwargs() -> None:
    kw = spark_submit_kwargs("clean_events", "{{ ds }}")
    assert kw["application"].endswith("jobs/clean_events.py")
    assert kw["application_args"] == ["--ds", "{{ ds }}"]
    assert kw["conn_id"] == "ecrec_spark"
    with pytest.raises(ValueError, match="not a Spark job"):
        spark_submit_kwargs("train_encoders", "2024-01-01")


def test_partition_ready(tmp_path: Path) -> None:
    part = tmp_path / "ds=2024-01-01"
    assert not partition_ready(str(part))
    part.mkdir()
    (part / ".part-0.crc").write_text("")
    assert not partition_ready(str(part))
    (part / "part-0.json.gz").write_bytes(b"")
    assert partition_ready(str(part))
    empty_day = tmp_path / "ds=2024-01-02"
    empty_day.mkdir()
    (empty_day / "_SUCCESS").write_text("")
    assert partition_ready(str(empty_day))


def test_partition_ready_landed_waits_for_the_marker(tmp_path: Path, caplog) -> None:
    import logging

    logger = logging.getLogger("test.sensor")
    part = tmp_path / "raw" / "events" / "ds=2024-01-01"
    with caplog.at_level(logging.INFO, logger="test.sensor"):
        assert not partition_ready(str(part), landed=True, logger=logger)
        part.mkdir(parents=True)
        (part / "part-00000.json.gz").write_bytes(b"x" * 10)
        assert partition_ready(str(part))  # the generic check sees a data file...
        assert not partition_ready(str(part), landed=True, logger=logger)  # ...landing is not done
        (part / "_SUCCESS").write_text("")
        assert partition_ready(str(part), landed=True, logger=logger)
    messages = [r.getMessage() for r in caplog.records]
    marker = f"{part}/_SUCCESS"
    assert messages[0].startswith(f"waiting for {marker}: partition ") and "does not exist" in messages[0]
    assert messages[1].startswith(f"waiting for {marker}: 1 data file(s) but no _SUCCESS")
    assert messages[2] == f"ready: {marker}: landed: _SUCCESS present, 1 data file(s)"


@pytest.mark.parametrize(
    ("kwargs", "train", "reason"),
    [
        ({"new_events": 5, "has_champion": True}, False, "only 5 new clean events"),
        ({"new_events": 5000, "has_champion": True}, True, "5000 new clean events"),
        ({"new_events": 0, "has_champion": False}, True, "no champion"),
        ({"new_events": 0, "has_champion": True, "force": True}, True, "force_training"),
        ({"new_events": 5000, "has_champion": False, "force": True, "skip": True}, False,
         "skip_training"),
        ({"new_events": 5, "has_champion": True, "champion_flagged": True}, True, "erased users"),
        ({"new_events": 5, "has_champion": True, "champion_flagged": True, "skip": True}, False,
         "skip_training"),
    ],
)
def test_decide_training(kwargs: dict, train: bool, reason: str) -> None:
    d = decide_training("2024-01-02", min_new_events=1000, last_training_ds="2024-01-01", **kwargs)
    assert d.train is train
    assert reason in d.reason
    assert json.loads(d.to_json())["train"] is train


def test_decide_training_rejects_negative_count() -> None:
    with pytest.raises(ValueError, match="new_events"):
        decide_training("2024-01-02", new_events=-1, min_new_events=1, last_training_ds=None,
                        has_champion=True)


# --- jobs.should_train on a tiny lake -------------------------------------------------


def _clean_events(lake: Path, ds: str, n: int) -> None:
    import pandas as pd

    part = lake / "clean" / "events" / f"ds={ds}"
    part.mkdir(parents=True)
    pd.DataFrame({"event_id": [f"e{i}" for i in range(n)]}).to_parquet(part / "part-0.parquet")


def test_should_train_counts_events_since_last_training(tmp_path: Path, monkeypatch) -> None:
    from jobs import should_train

    lake = tmp_path / "lake"
    for ds, n in (("2024-01-01", 5), ("2024-01-02", 7), ("2024-01-03", 11)):
        _clean_events(lake, ds, n)
    trained = lake / "ops" / "training" / "ds=2024-01-01"
    trained.mkdir(parents=True)
    (trained / "summary.json").write_text("{}")
    # A training of the same ds (a re-run) must not reset the count.
    (lake / "ops" / "training" / "ds=2024-01-03").mkdir(parents=True)
    (lake / "ops" / "training" / "ds=2024-01-03" / "summary.json").write_text("{}")
    monkeypatch.setenv("ECREC_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'none' / 'm.db'}")
    monkeypatch.setenv("ECREC_MIN_NEW_EVENTS_TO_TRAIN", "10")
    argv = ["--ds", "2024-01-03", "--lake", str(lake)]
    assert should_train.main(argv) == 0
    out = lake / "ops" / "training_decision" / "ds=2024-01-03" / "decision.json"
    decision = json.loads(out.read_text())
    assert decision["last_training_ds"] == "2024-01-01"
    assert decision["new_events"] == 7 + 11
    assert decision["has_champion"] is False and decision["train"] is True
    assert should_train.main([*argv, "--skip"]) == 0
    assert json.loads(out.read_text())["train"] is False


def test_should_train_refuses_to_guess_without_registry(tmp_path: Path, monkeypatch) -> None:
    from jobs import should_train

    lake = tmp_path / "lake"
    _clean_events(lake, "2024-01-01", 3)
    monkeypatch.setenv("ECREC_MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens
    assert should_train.main(["--ds", "2024-01-01", "--lake", str(lake)]) == 1
    assert not (lake / "ops" / "training_decision").exists()


# --- backfills and failure policy ---------------------------------------------------------


@pytest.mark.parametrize(
    ("pin", "run_type", "backfill", "version"),
    [
        (None, "scheduled", False, None),
        (None, "backfill", True, None),
        ("3", "manual", False, "3"),
        (" 4 ", "backfill", True, "4"),
        ("", "manual", False, None),
    ],
)
def test_run_policy(pin, run_type, backfill: bool, version) -> None:
    policy = run_policy(pin, run_type)
    assert (policy.backfill, policy.model_version) == (backfill, version)
    assert policy.fixed_model == (backfill or version is not None)


def test_run_policy_reads_airflow_run_types_and_rejects_bad_versions() -> None:
    from airflow.utils.types import DagRunType

    assert run_policy(None, DagRunType.BACKFILL_JOB).backfill
    assert not run_policy(None, DagRunType.SCHEDULED).fixed_model
    with pytest.raises(ValueError, match="registry version number"):
        run_policy("champion", "manual")


def test_backfill_never_trains_even_when_forced() -> None:
    why = run_policy(None, "backfill").describe()
    d = decide_training("2024-01-05", new_events=10**6, min_new_events=1, last_training_ds=None,
                        has_champion=False, force=True, fixed_model=why)
    assert d.train is False and d.reason == why and "no training, no promotion" in why
    assert json.loads(d.to_json())["fixed_model"] == why


def test_should_train_job_records_a_backfill(tmp_path: Path, monkeypatch) -> None:
    from jobs import should_train

    monkeypatch.setattr(should_train, "champion_state", lambda cfg: (True, True))
    lake = tmp_path / "lake"
    args = ["--ds", "2024-01-05", "--lake", str(lake), "--force",
            "--fixed-model", "backfill run: scores with the champion, no training, no promotion"]
    assert should_train.main(args) == 0
    decision = json.loads((lake / "ops/training_decision/ds=2024-01-05/decision.json").read_text())
    # a backfill never trains, not even to replace a champion flagged for erasure
    assert decision["train"] is False and decision["reason"].startswith("backfill run")


def _nightly_run(monkeypatch, returncode: int):
    """dags/ecrec_nightly.py's _run with a job that exits ``returncode``."""
    import importlib.util

    import airflow.sdk

    from ecrec_lib import orchestration

    spec = importlib.util.spec_from_file_location("ecrec_nightly_dag", REPO / "dags/ecrec_nightly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(airflow.sdk, "get_current_context", lambda: {"ds": "2024-01-05"})

    def job(name, ds, **kwargs):
        raise JobFailed(name, ds, returncode, ["ERROR critical expectation failed"])

    monkeypatch.setattr(orchestration, "run_job", job)
    return module._run


def test_contract_failure_is_not_retried_transient_failure_is(monkeypatch) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    run = _nightly_run(monkeypatch, EXIT_CONTRACT)
    with pytest.raises(AirflowFailException, match="not retrying"):
        run("validate", dataset="clean_events")
    run = _nightly_run(monkeypatch, 1)
    with pytest.raises(JobFailed) as info:  # a plain failure: Airflow retries it
        run("validate", dataset="clean_events")
    assert not isinstance(info.value, AirflowFailException)


def test_backfill_scores_with_the_pinned_version_and_never_promotes(monkeypatch) -> None:
    """The nightly DAG's own task callables: score passes --model-version, promote skips."""
    import collections
    import importlib.util
    import types

    import airflow.sdk
    from airflow.sdk.exceptions import AirflowSkipException

    from ecrec_lib import orchestration

    spec = importlib.util.spec_from_file_location("ecrec_nightly_dag", REPO / "dags/ecrec_nightly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.ecrec_nightly()
    calls: list[tuple[str, dict]] = []
    monkeypatch.setattr(orchestration, "run_job",
                        lambda job, ds, **kw: calls.append((job, kw)) or [])

    events = collections.defaultdict(types.SimpleNamespace)  # outlet asset -> its event

    def context(run_type: str):
        run = types.SimpleNamespace(run_type=run_type)
        monkeypatch.setattr(airflow.sdk, "get_current_context",
                            lambda: {"ds": "2024-01-05", "dag_run": run, "outlet_events": events})

    context("backfill")
    dag.get_task("score").python_callable(params={"k": None, "pin_model_version": "3"})
    assert calls[-1][0] == "score_topk" and calls[-1][1]["model_version"] == "3"
    # every score table's asset event carries the night (figures: none recorded in this lake)
    assert {a.name for a in events} == {f"scores/{t}" for t in
                                         ("user_topk", "item_related", "query_topk", "trending")}
    assert all(e.extra["ds"] == "2024-01-05" for e in events.values())
    with pytest.raises(AirflowSkipException, match="aliases are never moved"):
        dag.get_task("promote").python_callable(params={})
    assert [c[0] for c in calls] == ["score_topk"]  # promote_model never ran
    context("scheduled")
    dag.get_task("score").python_callable(params={"k": 5})
    assert calls[-1][1]["model_version"] is None and calls[-1][1]["k"] == 5
    dag.get_task("promote").python_callable(params={})
    assert calls[-1][0] == "promote_model"


def test_tasks_declare_their_lineage_and_a_past_night_without_data_is_skipped_fast(
    monkeypatch, tmp_path
) -> None:
    """Assets: each task's inlets/outlets are ecrec_lib.lineage's; the sensor skips at once a
    day long over with nothing landed, naming the paths (it must not block the queue 6 h)."""
    import importlib.util

    from airflow.sdk.exceptions import AirflowSkipException

    from ecrec_lib.lineage import TASK_LINEAGE, asset_uri

    spec = importlib.util.spec_from_file_location("ecrec_nightly_dag2", REPO / "dags/ecrec_nightly.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.ecrec_nightly()
    for task_id, (ins, outs) in TASK_LINEAGE.items():
        if task_id not in dag.task_ids:
            continue  # the feedback DAG's task
        task = dag.get_task(task_id)
        assert [a.uri for a in task.outlets] == [asset_uri(n) for n in outs], task_id
        assert [a.uri for a in task.inlets] == [asset_uri(n) for n in ins], task_id

    monkeypatch.setenv("ECREC_LAKE_ROOT", str(tmp_path / "lake"))
    sensor = dag.get_task("wait_for_raw_events")
    assert sensor.soft_fail
    with pytest.raises(AirflowSkipException, match=r"raw/events/ds=2024-01-05.*landing_grace"):
        sensor.python_callable(ds="2024-01-05")
    # today's night is not over yet: keep waiting
    import datetime

    assert sensor.python_callable(ds=datetime.date.today().isoformat()) is False
