"""Run the demo's nights through the real Airflow scheduler (called by scripts/demo.sh).

Starts ``airflow standalone`` (scheduler, API server, DAG processor, triggerer; SQLite,
LocalExecutor) in its own process group, triggers one ``ecrec_nightly`` run per ds through
the REST API with run ids named by the night (``nightly_2024-01-01``), waits for each, then
the feedback run of the last night, pauses the DAGs again and stops Airflow. The runs, their
task logs and real durations stay in ``$AIRFLOW_HOME`` for ``make airflow`` to show.

    python scripts/demo_nights.py 2024-01-01 2024-01-02 2024-01-03 --log demo_out/airflow.log
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecrec_lib.deploy.airflow_api import AirflowApi, run_id_for, wait_for  # noqa: E402
from ecrec_lib.orchestration import (  # noqa: E402
    WAREHOUSE_POOL,
    WAREHOUSE_POOL_DESCRIPTION,
    WAREHOUSE_POOL_SLOTS,
)

RUN_TIMEOUT_S = 3600


def _port(preferred: int) -> int:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT (Airflow's clean stop), then TERM/KILL to the whole group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(5)
    if proc.poll() is None:
        proc.wait(timeout=30)


def run_night(api: AirflowApi, dag_id: str, ds: str, conf: dict | None = None) -> bool:
    run_id = run_id_for(dag_id, ds)
    started = time.monotonic()
    api.trigger(dag_id, run_id, ds, conf)
    state = wait_for(f"{dag_id} {ds}", lambda: (s := api.run_state(dag_id, run_id)) in
                     ("success", "failed") and s, RUN_TIMEOUT_S, every=5)
    tis = api.task_instances(dag_id, run_id)
    durations = ", ".join(f"{t['task_id']} {t['duration']:.0f}s" for t in tis
                          if t.get("duration") and t["state"] == "success")
    print(f"  {state}: {dag_id} {ds} as run {run_id} in {time.monotonic() - started:.0f}s "
          f"({durations})", flush=True)
    if state != "success":
        print(api.failure_report(dag_id, run_id), file=sys.stderr)
    return state == "success"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("days", nargs="+", help="the nights to run, in order (YYYY-MM-DD)")
    parser.add_argument("--log", type=Path, default=Path("demo_out/airflow.log"),
                        help="where airflow standalone's own output goes")
    args = parser.parse_args(argv)
    home = Path(os.environ["AIRFLOW_HOME"])
    port = _port(int(os.environ.get("AIRFLOW__API__PORT", "8080")))
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, AIRFLOW__API__PORT=str(port), AIRFLOW__API__BASE_URL=base,
               AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{base}/execution/",
               AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
               AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="2",
               # Manual runs only while the demo drives Airflow: unpausing must not start a
               # scheduled run of today ahead of the demo's nights.
               ECREC_DAG_SCHEDULE="none")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "ab") as out:
        proc = subprocess.Popen(
            ["airflow", "standalone"], env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    api = AirflowApi(base)
    dags = ("ecrec_nightly", "ecrec_feedback")
    ok = False
    try:
        wait_for("Airflow to be healthy", lambda: proc.poll() is None and api.healthy(), 600,
                 log=args.log)
        passwords = home / "simple_auth_manager_passwords.json.generated"
        wait_for(f"{passwords}", passwords.exists, 120, log=args.log)
        api.login("admin", json.loads(passwords.read_text())["admin"])
        api.ensure_pool(WAREHOUSE_POOL, WAREHOUSE_POOL_SLOTS, WAREHOUSE_POOL_DESCRIPTION)
        for dag_id in dags:
            wait_for(f"the DAG processor to register {dag_id}",
                     lambda d=dag_id: api.call("GET", f"/api/v2/dags/{d}")[0] == 200, 300,
                     log=args.log)
            api.set_paused(dag_id, False)
        ok = all(run_night(api, "ecrec_nightly", ds) for ds in args.days)
        ok = ok and run_night(api, "ecrec_feedback", args.days[-1])
    finally:
        for dag_id in dags:  # paused again: `make airflow` starts no run of its own
            if api.token:
                api.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": True})
        _stop(proc)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
