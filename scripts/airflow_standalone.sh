#!/usr/bin/env bash
# `make airflow`: the Airflow UI (and scheduler) on http://localhost:8080 with the demo's
# environment, so the runs `make demo` made show up. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ecrec_env.sh
export AIRFLOW__API__PORT=${AIRFLOW__API__PORT:-8080}
[ -f "$AIRFLOW_HOME/airflow.db" ] || airflow db migrate >/dev/null
# One warehouse writer at a time (DuckDB file lock): publish and the feedback writes share it.
airflow pools set ecrec_warehouse 1 "one writer at a time into the ecrec warehouse" >/dev/null
echo "Airflow UI: http://localhost:${AIRFLOW__API__PORT}  (user admin)"
echo "admin password: see $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
echo "  (written when the API server starts; cat it in another terminal)"
exec airflow standalone
