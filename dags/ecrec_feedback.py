"""
# ecrec_feedback — did yesterday's recommendations work?

One run per logical date `ds`, after `ecrec_nightly` has cleaned that day's events.

```
wait_for_clean_events → compute_feedback → check_hit_rate
```

* `compute_feedback` (`python -m jobs.feedback --ds <ds>`) joins the recommendations
  published for `ds-1` (lake `scores/user_topk/ds=<ds-1>`, the same rows the warehouse
  serves) with the clean events of `ds`: hit rate, CTR proxy of recommended items,
  catalog coverage, diversity, novelty and share of cold-start users, per strategy and
  model version, into the warehouse table `metrics_daily`; plus drift (PSI) of item
  popularity, user sequence length and score distribution into `drift_daily`.
  Definitions: `ecrec_lib/feedback.py`.
* `check_hit_rate` fails the run with an `ALERT:` message when the hit rate falls below
  `(1 - feedback_drop_threshold)` x its trailing 7-day mean.
* A day the nightly run skipped as "no data" (`ops/reconciliation/ds=<ds>/events.json`
  status `no_data`) skips this run too: there are no events to judge the lists against.
* `compute_feedback` writes the warehouse, so it runs in the Airflow pool `ecrec_warehouse`
  (1 slot, shared with the nightly `publish`): one warehouse writer at a time.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pendulum
from airflow.sdk import Asset, dag, task

from ecrec_lib.lineage import TASK_LINEAGE, asset_uri
from ecrec_lib.orchestration import WAREHOUSE_POOL, dag_timetable, task_retries, task_timeouts


def _run(job: str, **flags: object) -> list[str]:
    """Run one job for the current ds; its log lines stream into this task's log."""
    import logging

    from airflow.sdk import get_current_context

    from ecrec_lib.orchestration import run_job

    ctx = get_current_context()
    return run_job(job, ctx["ds"], logger=logging.getLogger("ecrec.task"), **flags)


@dag(
    dag_id="ecrec_feedback",
    schedule=dag_timetable(),
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={
        "owner": "ecrec",
        "retries": task_retries(),
        "retry_delay": dt.timedelta(minutes=2),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(minutes=30),
        "execution_timeout": task_timeouts()["light"],
    },
    doc_md=__doc__,
    tags=["ecrec", "feedback"],
)
def ecrec_feedback() -> None:
    @task.sensor(poke_interval=300, timeout=12 * 3600, mode="reschedule")
    def wait_for_clean_events(ds: str | None = None) -> bool:
        """Wait until the nightly run has written `clean/events/ds=<ds>`; skip the run when the
        nightly run recorded the day as "no data" (its raw events landed empty)."""
        import json

        from airflow.sdk.exceptions import AirflowSkipException

        from ecrec_lib.config import load_config
        from ecrec_lib.lake import Lake
        from ecrec_lib.orchestration import partition_ready

        lake = Lake(load_config().lake_root)
        rec = Path(lake.ops("reconciliation", ds)) / "events.json"
        if rec.is_file() and json.loads(rec.read_text()).get("status") == "no_data":
            raise AirflowSkipException(f"no data for ds={ds}: no events landed, nothing to judge")
        return partition_ready(lake.clean("events", ds))

    @task(pool=WAREHOUSE_POOL, **{
        key: [Asset(name=n, uri=asset_uri(n), group="ecrec") for n in names]
        for key, names in zip(("inlets", "outlets"), TASK_LINEAGE["compute_feedback"],
                              strict=True)})
    def compute_feedback() -> None:
        """Metrics of yesterday's recommendations + drift, into `metrics_daily`/`drift_daily`."""
        _run("feedback")

    @task
    def check_hit_rate() -> None:
        """Fail with an `ALERT:` when the hit rate drops below the trailing 7-day mean band."""
        _run("feedback", check_only=True)

    wait_for_clean_events() >> compute_feedback() >> check_hit_rate()


ecrec_feedback()
