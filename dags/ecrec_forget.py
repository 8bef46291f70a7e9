"""
# ecrec_forget — erasure requests (the right to be forgotten)

Drop a request file in the lake, one user per line:

* `requests/forget/<name>.txt` — raw user ids (the shop's `user_id`);
* `requests/forget/<name>.pseudonyms.txt` — pseudonyms (`user_key`).

```
wait_for_requests → forget_users
```

* `wait_for_requests` waits (rescheduling) until a request file is there.
* `forget_users` (`python -m jobs.forget_users --pending`) erases each file's users from every
  lake zone (raw, quarantine_raw, quarantine, clean, features, scores; each partition swapped
  atomically, the day's reconciliation updated), from the warehouse, and flags every model
  version trained on them (the next nightly run retrains, the gate replaces a flagged
  champion). A done file becomes `requests/forget/done/<name>.<request id>.pseudonyms.txt`
  (pseudonyms only); a failed one moves to `requests/forget/failed/` with the reason beside it.
  Audit: `ops/forget/<request id>.json` and `ops/forget/forget_log.jsonl`.

Runs daily at 12:00 UTC, away from `ecrec_nightly` (00:00), so no nightly job rewrites a
partition while it is being erased (`ECREC_FORGET_SCHEDULE` overrides the cron; `none`, or
`ECREC_DAG_SCHEDULE=none`, = manual runs only).
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import dag, task

from ecrec_lib.orchestration import WAREHOUSE_POOL, dag_timetable, task_retries, task_timeouts


def _schedule() -> object:
    """Daily at 12:00 UTC (``ECREC_FORGET_SCHEDULE`` overrides); off with the other DAGs when
    ``ECREC_DAG_SCHEDULE`` says ``none``."""
    if dag_timetable() is None:
        return None
    return dag_timetable(cron_env="ECREC_FORGET_SCHEDULE", default_cron="0 12 * * *")


@dag(
    dag_id="ecrec_forget",
    schedule=_schedule(),
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
    tags=["ecrec", "privacy"],
)
def ecrec_forget() -> None:
    @task.sensor(poke_interval=600, timeout=6 * 3600, mode="reschedule", soft_fail=True)
    def wait_for_requests() -> bool:
        """Wait (rescheduling) until `requests/forget/` holds a `.txt` request file."""
        from pathlib import Path

        from ecrec_lib.config import load_config
        from ecrec_lib.lake import Lake

        folder = Path(Lake(load_config().lake_root).dataset("requests", "forget"))
        return folder.is_dir() and any(p.is_file() for p in folder.glob("*.txt"))

    @task(pool=WAREHOUSE_POOL)  # it deletes warehouse rows: one writer at a time
    def forget_users() -> None:
        """Erase every pending request's users from lake, warehouse and models (audited)."""
        import logging

        from ecrec_lib.orchestration import run_job

        run_job("forget_users", None, logger=logging.getLogger("ecrec.task"), pending=True)

    wait_for_requests() >> forget_users()


ecrec_forget()
