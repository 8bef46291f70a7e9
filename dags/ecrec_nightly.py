"""
# ecrec_nightly — the nightly batch of the e-commerce recommender

One run per logical date `ds` (the day whose events are processed; the run starts
after the day ends). Every task launches one job, `python -m jobs.<name> --ds <ds>`,
as a subprocess; the job's log is streamed into the task log.

```
wait_for_raw_events → validate_raw → clean → validate_clean → build_features
  → validate_features → decide_training ─┬─ train → register → promote ─┐
                                          └─ keep_champion ──────────────┴→ score
  → validate_scores → publish ─┬→ report
                               ├→ export_online
                               └→ housekeeping
```

* **Data contracts**: Great Expectations suites run on raw, clean, feature and score
  data; a failed critical expectation stops the run before anything is published.
* **Training** runs only when `decide_training` says so (enough new clean events since
  the last training, no champion yet, or the `force_training` param); `skip_training`
  overrides. The promotion gate moves the `champion` alias only when the challenger wins.
* **Publishing** is atomic: a failed run leaves yesterday's warehouse tables intact.
* **Online serving**: `export_online` writes the user and related-item lists to Redis as a
  new version and switches readers to it atomically; if it fails, readers keep the previous
  night and the warehouse stays published (re-run the task).
* **Publishing** is atomic: a failed run leaves yesterday's warehouse tables intact. It runs
  in the Airflow pool `ecrec_warehouse` (1 slot, shared with the feedback DAG's writes):
  one warehouse writer at a time.
* **Landing and empty days**: the sensor waits for the producers' `_SUCCESS` marker in
  `raw/events/ds=<ds>` and `raw/catalog/ds=<ds>` (its log names the path); a landed day
  without events is skipped as "no data" (validate_raw and clean say so, the rest of the
  run is skipped, nothing is published) and the report states the reason.
* Re-running a date replaces exactly its partitions; backfills work date by date
  (`max_active_runs=1`).
* **Housekeeping** deletes lake partitions and warehouse rows past each zone's retention
  (`*_retention_days`), never the lookback window or the champion's training window.

* **Backfills** (`run_type == backfill`, or the `pin_model_version` param) score with one
  fixed model version (the param, else the champion when scoring starts) and never train or
  move an alias.
* **Tasks own their processes**: every task stops its job's whole process group when it is
  killed or passes its `execution_timeout` (`ECREC_TASK_TIMEOUT_<CLASS>_MIN`, classes light,
  spark, train, score). A job failing its data contract (exit 4) fails at once, unretried.

Params: `k` (top-K per user, default: config `top_k`), `force_training`, `skip_training`,
`pin_model_version` (score with this registry version; no training, no promotion).
Schedule: daily at 00:00 UTC for the day just ended (`ECREC_DAG_SCHEDULE` overrides the
cron; `none` = manual runs only). Retries: `ECREC_TASK_RETRIES` (default 2, exponential backoff). Spark jobs run through
`SparkSubmitOperator` (connection `ecrec_spark`) when `ECREC_SPARK_SUBMIT=1`.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pendulum
from airflow.sdk import Asset, Param, dag, task

from ecrec_lib.lineage import TASK_LINEAGE, asset_uri
from ecrec_lib.orchestration import WAREHOUSE_POOL, dag_timetable, task_retries, task_timeouts

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUTS = task_timeouts()
# Lineage for the Assets view: raw -> clean -> features -> model -> scores -> warehouse/Redis.
ASSETS = {name: Asset(name=name, uri=asset_uri(name), group="ecrec")
          for ins, outs in TASK_LINEAGE.values() for name in (*ins, *outs)}


def _lineage(task_id: str) -> dict[str, list[Asset]]:
    """The inlets and outlets of ``task_id`` (ecrec_lib.lineage.TASK_LINEAGE)."""
    ins, outs = TASK_LINEAGE[task_id]
    return {"inlets": [ASSETS[n] for n in ins], "outlets": [ASSETS[n] for n in outs]}


def _figures(task_id: str) -> dict[str, dict]:
    """Attach the night's figures (from the job's ops records) to each outlet's asset event;
    returned as the task's XCom, so the grid shows them too."""
    from airflow.sdk import get_current_context

    from ecrec_lib.config import load_config
    from ecrec_lib.lineage import figures

    ctx = get_current_context()
    figs = figures(task_id, load_config().lake_root, ctx["ds"])
    for name, extra in figs.items():
        ctx["outlet_events"][ASSETS[name]].extra = {"ds": ctx["ds"], **extra}
    return figs


DEFAULT_ARGS = {
    "owner": "ecrec",
    "retries": task_retries(),
    "retry_delay": dt.timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(minutes=30),
    "execution_timeout": TIMEOUTS["light"],
}


def _run(job: str, skip_if_no_data: bool = False, **flags: object) -> list[str]:
    """Run one job for the current ds (heavy work happens in the subprocess).

    With ``skip_if_no_data``, the job's documented "no data" exit code (3, an empty raw
    partition) skips this task and, through the trigger rules, the rest of the run. A failed
    critical data contract (exit 4) fails the task without retries: the same data would fail
    the same way; transient failures (any other code) are retried.
    """
    import logging

    from airflow.sdk import get_current_context
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from ecrec_lib.orchestration import EXIT_CONTRACT, EXIT_NO_DATA, JobFailed, run_job

    ctx = get_current_context()
    # the job's run id (lock files, staging names) says which DAG run and try wrote a partition
    try_number = getattr(ctx.get("ti"), "try_number", 0)
    env = {**os.environ, "ECREC_RUN_ID": f"{ctx.get('run_id', 'manual')}-try{try_number}"}
    try:
        return run_job(job, ctx["ds"], logger=logging.getLogger("ecrec.task"), env=env, **flags)
    except JobFailed as exc:
        if skip_if_no_data and exc.returncode == EXIT_NO_DATA:
            raise AirflowSkipException(f"no data for ds={ctx['ds']}: {job} found nothing to do") from exc
        if exc.returncode == EXIT_CONTRACT:
            raise AirflowFailException(f"data contract failed, not retrying: {exc}") from exc
        raise


def _policy(params: dict | None):  # noqa: ANN202 - RunPolicy, imported lazily
    """Backfill or pinned model version of the current run (see RunPolicy)."""
    from airflow.sdk import get_current_context

    from ecrec_lib.orchestration import run_policy

    run_type = getattr(get_current_context().get("dag_run"), "run_type", None)
    return run_policy((params or {}).get("pin_model_version"), run_type)


def _spark_or_python(job: str, python_task, **operator_kwargs):  # noqa: ANN001, ANN202, ANN003
    """The Spark job as SparkSubmitOperator when ECREC_SPARK_SUBMIT=1, else the python task
    (``operator_kwargs``, e.g. the trigger rule, go to the SparkSubmitOperator; the python
    task carries its own in its decorator)."""
    if os.environ.get("ECREC_SPARK_SUBMIT", "").strip().lower() not in {"1", "true", "yes"}:
        return python_task()
    from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

    from ecrec_lib.orchestration import spark_submit_kwargs

    return SparkSubmitOperator(
        task_id=python_task.function.__name__,
        doc_md=python_task.function.__doc__,
        execution_timeout=TIMEOUTS["spark"],
        **operator_kwargs,
        **_lineage(python_task.function.__name__),
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
        "pin_model_version": Param(
            None, type=["null", "string"],
            description="score with this registry version; no training, no promotion (backfills)",
        ),
    },
)
def ecrec_nightly() -> None:
    @task.sensor(poke_interval=300, timeout=6 * 3600, mode="reschedule", soft_fail=True)
    def wait_for_raw_events(ds: str | None = None) -> bool:
        """Wait (rescheduling, 6 h timeout, then skipped) until `raw/events/ds=<ds>` and
        `raw/catalog/ds=<ds>` have completely landed: the producer's `_SUCCESS` marker, written
        after its last data file, is there (docs/data_contracts.md, "Landing"). Each poke logs
        the paths it waits for. A day that ended more than `landing_grace_hours` ago without
        its data is skipped at once: a past date does not block the runs queued behind it."""
        import datetime
        import logging

        from airflow.sdk.exceptions import AirflowSkipException

        from ecrec_lib.config import load_config
        from ecrec_lib.lake import Lake, parse_ds
        from ecrec_lib.orchestration import partition_ready

        cfg = load_config()
        lake = Lake(cfg.lake_root)
        logger = logging.getLogger("ecrec.task")
        paths = [lake.raw(name, ds) for name in ("events", "catalog")]
        ready = [partition_ready(path, landed=True, logger=logger) for path in paths]
        if all(ready):
            return True
        day_end = datetime.datetime.combine(parse_ds(ds) + datetime.timedelta(days=1),
                                            datetime.time(), datetime.UTC)
        late = datetime.datetime.now(datetime.UTC) - day_end
        if late > datetime.timedelta(hours=cfg.landing_grace_hours):
            raise AirflowSkipException(
                f"no complete landing of ds={ds} in {', '.join(paths)} and the day ended "
                f"{late.total_seconds() / 3600:.0f} h ago (> landing_grace_hours="
                f"{cfg.landing_grace_hours:g}): night skipped. Land the data (with _SUCCESS) "
                "and clear this run to process it.")
        return False

    @task
    def validate_raw() -> None:
        """Run the raw-events Great Expectations suite (critical failures stop the run); a
        landed day without events is skipped as "no data"."""
        _run("validate", skip_if_no_data=True, dataset="raw_events")

    # none_failed: on an empty day validate_raw is skipped and clean still runs, to record the
    # day's "no data" status (ops/reconciliation) that the report states; clean runs the raw
    # suite itself, so it never publishes a day validate_raw did not see.
    @task(execution_timeout=TIMEOUTS["spark"], trigger_rule="none_failed", **_lineage("clean"))
    def clean(ds: str | None = None) -> dict:
        """Spark: parse, deduplicate, pseudonymize and quarantine raw events and catalog.
        Returns (and attaches to the clean assets) rows in / clean / quarantined by reason."""
        from airflow.sdk.exceptions import AirflowSkipException

        from ecrec_lib.config import load_config
        from ecrec_lib.lake import Lake
        from ecrec_lib.orchestration import partition_ready

        events = Lake(load_config().lake_root).raw("events", ds)
        if not partition_ready(events, landed=True):  # the sensor gave up on a past date
            raise AirflowSkipException(f"{events} has not landed: nothing to clean")
        _run("clean_events", skip_if_no_data=True)
        return _figures("clean")

    @task
    def validate_clean() -> None:
        """Run the clean-events and catalog suites on the clean partition."""
        _run("validate", dataset=["clean_events", "catalog"])

    @task(execution_timeout=TIMEOUTS["spark"], **_lineage("build_features"))
    def build_features() -> dict:
        """Spark: user sequences, item stats, user profiles, search pairs, co-occurrence."""
        _run("build_features")
        return _figures("build_features")

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

        policy = _policy(params)
        params = params or {}
        _run(
            "should_train",
            force=bool(params.get("force_training")),
            skip=bool(params.get("skip_training")),
            fixed_model=policy.describe() if policy.fixed_model else None,
        )
        path = Path(Lake(load_config().lake_root).ops("training_decision", ds)) / "decision.json"
        decision = json.loads(path.read_text())
        print(f"training decision for {ds}: train={decision['train']} ({decision['reason']})")
        return "train" if decision["train"] else "keep_champion"

    @task(execution_timeout=TIMEOUTS["train"], **_lineage("train"))
    def train() -> None:
        """Train the two-tower model; logs the run to MLflow (ops/training summary)."""
        _run("train_encoders", no_register=True, no_progress=True)

    @task(**_lineage("register"))
    def register() -> dict:
        """Register the trained run as a new model version with alias `challenger`."""
        _run("register_model")
        return _figures("register")

    @task(**_lineage("promote"))
    def promote(params: dict | None = None) -> dict:
        """Promotion gate: challenger becomes `champion` only if it beats it on holdout."""
        from airflow.sdk.exceptions import AirflowSkipException

        policy = _policy(params)
        if policy.fixed_model:  # never reached through the branch; a guard for manual clears
            raise AirflowSkipException(f"{policy.describe()}: aliases are never moved")
        _run("promote_model")
        return _figures("promote")

    @task
    def keep_champion(ds: str | None = None) -> None:
        """No training tonight: scoring uses the current `champion` model."""
        import json

        from ecrec_lib.config import load_config
        from ecrec_lib.lake import Lake

        path = Path(Lake(load_config().lake_root).ops("training_decision", ds)) / "decision.json"
        print(f"keeping the champion: {json.loads(path.read_text())['reason']}")

    @task(trigger_rule="none_failed_min_one_success", execution_timeout=TIMEOUTS["score"],
          **_lineage("score"))
    def score(params: dict | None = None) -> dict:
        """Batch-score top-K recommendations with the champion (or the pinned version of a
        backfill) into lake `scores/`."""
        _run("score_topk", k=(params or {}).get("k"),
             model_version=_policy(params).model_version)
        return _figures("score")

    @task
    def validate_scores(params: dict | None = None) -> None:
        """Run the output contracts on the score tables before publishing."""
        _run("validate_scores", k=(params or {}).get("k"))

    @task(pool=WAREHOUSE_POOL, **_lineage("publish"))
    def publish(params: dict | None = None) -> dict:
        """Publish the score tables to the warehouse atomically (old tables kept on failure)."""
        _run("publish_scores", k=(params or {}).get("k"))
        return _figures("publish")

    @task(**_lineage("export_online"))
    def export_online() -> None:
        """Write the night's lists to Redis as a new version, then switch readers to it."""
        _run("export_online")

    # none_failed: an empty day (everything after clean skipped) still gets its report, with
    # the reason; a failed run gets none.
    @task(trigger_rule="none_failed")
    def report(ds: str | None = None) -> dict:
        """Write ops/report/ds=<ds>/report.md|json|html (plots; also logged to MLflow) and print it.
        Returns where the report and the validation pages are (the XCom links to them)."""
        from ecrec_lib.config import load_config
        from ecrec_lib.lake import Lake

        _run("daily_report")
        lake = Lake(load_config().lake_root)
        links = {"report_html": f"{lake.ops('report', ds)}/report.html",
                 "validation_index": lake.dataset("ops", "validation") + "/index.html"}
        print("report: " + links["report_html"] + "  validation pages: "
              + links["validation_index"])
        return links

    @task(pool=WAREHOUSE_POOL)  # it trims the warehouse too: one writer at a time
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
        >> _spark_or_python("clean_events", clean, trigger_rule="none_failed")
        >> validate_clean()
        >> _spark_or_python("build_features", build_features)
        >> validate_features()
        >> decision
    )
    decision >> trained >> register() >> promoted >> scored
    decision >> keep >> scored
    published = scored >> validate_scores() >> publish()
    published >> report()
    published >> export_online()
    published >> housekeeping()


ecrec_nightly()
