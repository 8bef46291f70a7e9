"""
# ecrec_nightly — the nightly batch of the e-commerce recommender

One run per logical date `ds` (the day whose events are processed; the run starts
after the day ends). Every task launches one job, `python -m jobs.<name> --ds <ds>`,
as a subprocess; the job's log is streamed into the task log.

```
wait_for_raw_events → validate_raw → clean → validate_clean → build_features
  → validate_features → decide_training ─┬─ train → register → promote ─┐
                                          └─ keep_champion ──────────────┴→ score
  → validate_scores → publish ─┬─ report
                               └─ housekeeping
```

* **Data contracts**: Great Expectations suites run on raw, clean, feature and score
  data; a failed critical expectation stops the run before anything is published.
* **Training** runs only when `decide_training` says so (enough new clean events since
  the last training, no champion yet, or the `force_training` param); `skip_training`
  overrides. The promotion gate moves the `champion` alias only when the challenger wins.
* **Publishing** is atomic: a failed run leaves yesterday's warehouse tables intact.
* Re-running a date replaces exactly its partitions; backfills work date by date
  (`max_active_runs=1`).
* **Housekeeping** deletes lake partitions and warehouse rows past each zone's retention
  (`*_retention_days`), never the lookback window or the champion's training window.

Params: `k` (top-K per user, default: config `top_k`), `force_training`, `skip_training`.
Schedule: daily at 00:00 UTC for the day just ended (`ECREC_DAG_SCHEDULE` overrides the
cron; `none` = manual runs only). Retries: `ECREC_TASK_RETRIES` (default 2, exponential backoff). Spark jobs run through
`SparkSubmitOperator` (connection `ecrec_spark`) when `ECREC_SPARK_SUBMIT=1`.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pendulum
from airflow.sdk import Param, dag, task

from ecrec_lib.orchestration import dag_timetable, task_retries

REPO_ROOT = Path(__file__).resolve().parents[1]


DEFAULT_ARGS = {
    "owner": "ecrec",
    "retries": task_retries(),
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=30),
}


def _run(job: str, skip_if_no_data: bool = False, **flags: object) -> list[str]:
    """Run one job for the current ds (heavy work happens in the subprocess).

    With ``skip_if_no_data``, the job's documented "no data" exit code (3, an empty raw
    partition) skips this task and, through the trigger rules, the rest of the run.
    """
    import logging

    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowSkipException

    from ecrec_lib.orchestration import EXIT_NO_DATA, JobFailed, run_job

    ctx = get_current_context()
    try:
        return run_job(job, ctx["ds"], logger=logging.getLogger("ecrec.task"), **flags)
    except JobFailed as exc:
        if skip_if_no_data and exc.returncode == EXIT_NO_DATA:
            raise AirflowSkipException(f"no data for ds={ctx['ds']}: {job} found nothing to do") from exc
        raise


def _spark_or_python(job: str, python_task):  # noqa: ANN001, ANN202 - Airflow objects
    """The Spark job as SparkSubmitOperator when ECREC_SPARK_SUBMIT=1, else the python task."""
    if os.environ.get("ECREC_SPARK_SUBMIT", "").strip().lower() not in {"1", "true", "yes"}:
        return python_task()
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from ecrec_lib.orchestration import spark_submit_kwargs

    return SparkSubmitOperator(
        task_id=python_task.function.__name__,
        doc_md=python_task.function.__doc__,
        **spark_submit_kwargs(job, "{{ ds }}"),
    )


@dag(
    dag_id="ecrec_nightly",
    schedule=dag_timetable(),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    doc_md=__doc__,
    tags=["ecrec", "nightly"],
    params={
        "k": Param(None, type=["null", "integer"], minimum=1, description="top-K per user"),
        "force_training": Param(False, type="boolean", description="train even without new data"),
        "skip_training": Param(False, type="boolean", description="never train in this run"),
    },
)
def ecrec_nightly() -> None:
    @task.sensor(poke_interval=300, timeout=6 * 3600, mode="reschedule")
    def wait_for_raw_events(ds: str | None = None) -> bool:
        """Wait (rescheduling, 6 h timeout) until `raw/events/ds=<ds>` holds a data file."""
        from ecrec_lib.config import load_config
        from ecrec_lib.lake import Lake
        from ecrec_lib.orchestration import partition_ready

        lake = Lake(load_config().lake_root)
        return partition_ready(lake.raw("events", ds)) and partition_ready(lake.raw("catalog", ds))

    @task
    def validate_raw() -> None:
        """Run the raw-events Great Expectations suite (critical failures stop the run)."""
        _run("validate", dataset="raw_events")

    @task
    def clean() -> None:
        """Spark: parse, deduplicate, pseudonymize and quarantine raw events and catalog."""
        _run("clean_events", skip_if_no_data=True)

    @task
    def validate_clean() -> None:
        """Run the clean-events and catalog suites on the clean partition."""
        _run("validate", dataset=["clean_events", "catalog"])

    @task
    def build_features() -> None:
        """Spark: user sequences, item stats, user profiles, search pairs, co-occurrence."""
        _run("build_features")

    @task
    def validate_features() -> None:
        """Run the feature suites on the feature partitions of `ds`."""
        _run(
            "validate",
            dataset=["user_sequences", "item_stats", "user_profiles", "search_pairs", "item_cooccurrence"],
        )

    @task.branch
    def decide_training(params: dict | None = None, ds: str | None = None) -> str:
        """Decide whether to train (`jobs.should_train` writes ops/training_decision)."""
        import json

        from ecrec_lib.config import load_config
        from ecrec_lib.lake import Lake

        params = params or {}
        _run(
            "should_train",
            force=bool(params.get("force_training")),
            skip=bool(params.get("skip_training")),
        )
        path = Path(Lake(load_config().lake_root).ops("training_decision", ds)) / "decision.json"
        decision = json.loads(path.read_text())
        print(f"training decision for {ds}: train={decision['train']} ({decision['reason']})")
        return "train" if decision["train"] else "keep_champion"

    @task
    def train() -> None:
        """Train the two-tower model; logs the run to MLflow (ops/training summary)."""
        _run("train_encoders", no_register=True, no_progress=True)

    @task
    def register() -> None:
        """Register the trained run as a new model version with alias `challenger`."""
        _run("register_model")

    @task
    def promote() -> None:
        """Promotion gate: challenger becomes `champion` only if it beats it on holdout."""
        _run("promote_model")

    @task
    def keep_champion(ds: str | None = None) -> None:
        """No training tonight: scoring uses the current `champion` model."""
        import json

        from ecrec_lib.config import load_config
        from ecrec_lib.lake import Lake

        path = Path(Lake(load_config().lake_root).ops("training_decision", ds)) / "decision.json"
        print(f"keeping the champion: {json.loads(path.read_text())['reason']}")

    @task(trigger_rule="none_failed_min_one_success")
    def score(params: dict | None = None) -> None:
        """Batch-score top-K recommendations with the champion into lake `scores/`."""
        _run("score_topk", k=(params or {}).get("k"))

    @task
    def validate_scores(params: dict | None = None) -> None:
        """Run the output contracts on the score tables before publishing."""
        _run("validate_scores", k=(params or {}).get("k"))

    @task
    def publish(params: dict | None = None) -> None:
        """Publish the score tables to the warehouse atomically (old tables kept on failure)."""
        _run("publish_scores", k=(params or {}).get("k"))

    @task
    def report() -> None:
        """Write ops/report/ds=<ds>/report.md|json and print it here."""
        _run("daily_report")

    @task
    def housekeeping() -> None:
        """Delete partitions past each zone's retention (never the lookback/training window)."""
        _run("housekeeping")

    decision = decide_training()
    keep = keep_champion()
    trained = train()
    promoted = promote()
    scored = score()

    (
        wait_for_raw_events()
        >> validate_raw()
        >> _spark_or_python("clean_events", clean)
        >> validate_clean()
        >> _spark_or_python("build_features", build_features)
        >> validate_features()
        >> decision
    )
    decision >> trained >> register() >> promoted >> scored
    decision >> keep >> scored
    published = publish()
    scored >> validate_scores() >> published >> report()
    published >> housekeeping()


ecrec_nightly()
