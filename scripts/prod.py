"""`make prod-up` / `make prod-down`: the production topology as processes on 127.0.0.1.

    python scripts/prod.py up       # Spark master + worker, MLflow server, Airflow, PG warehouse
    python scripts/prod.py status   # what runs, with pids and URLs
    python scripts/prod.py down     # stop each service by its pid (its whole process group)
    python scripts/prod.py env      # the ECREC_* / AIRFLOW_* environment jobs run under

Settings: ECREC_PROD_ROOT (default ./prod: lake, MLflow artifacts, Airflow home, pids, logs),
ECREC_PROD_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432), ECREC_PROD_DB_PREFIX
(default ecrec: databases ecrec_airflow, ecrec_mlflow, ecrec_warehouse) and the ports
ECREC_PROD_{AIRFLOW,MLFLOW,SPARK,SPARK_UI,WORKER_UI}_PORT (8080, 5000, 7077, 8081, 8082).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecrec_lib.deploy import topology  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "env"])
    parser.add_argument("--root", help="topology folder (default $ECREC_PROD_ROOT or ./prod)")
    args = parser.parse_args(argv)
    topo = topology.from_env(args.root)
    if args.action == "up":
        try:
            topology.start(topo)
        except topology.TopologyError as exc:
            print(f"prod-up failed: {exc}\nstopping what started ...", file=sys.stderr)
            topology.stop(topo)
            return 1
        password = topo.path("airflow", "passwords", "passwords.json")
        print(f"Airflow   {topo.airflow_url}  (user admin, password in {password})\n"
              f"MLflow    {topo.mlflow_url}\nSpark     {topo.spark_ui_url}  ({topo.spark_master})\n"
              f"Warehouse {topo.db_url('warehouse')}\nLake      {topo.path('lake')}\n"
              "Stop everything with: make prod-down")
    elif args.action == "down":
        topology.stop(topo)
        left = topology.strays(topo)
        if left:
            print("processes still running:\n  " + "\n  ".join(left), file=sys.stderr)
            return 1
    elif args.action == "status":
        for svc in topology.services(topo):
            state = "running" if topology.running(topo, svc.name) else "stopped"
            print(f"{svc.name:24s} {state:8s} {' '.join(f':{p}' for p in svc.ports.values())}")
    else:
        for key, value in sorted(topo.airflow_env().items()):
            if key.startswith(("ECREC_", "AIRFLOW_CONN", "AIRFLOW__CORE__EXECUTOR")):
                print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
