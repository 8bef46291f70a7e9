# Environment of the embedded (single-machine) deployment; sourced by scripts/demo.sh and
# scripts/airflow_standalone.sh from the repository root. Everything stays inside the repo:
# lake ./lake, warehouse ./warehouse/warehouse.duckdb, MLflow ./mlruns, Airflow ./.airflow.
REPO_ROOT=$(pwd)
export PATH="$REPO_ROOT/.venv/bin:$PATH"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

export AIRFLOW_HOME=${AIRFLOW_HOME:-$REPO_ROOT/.airflow}
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$REPO_ROOT/dags"
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-4}
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=True

export ECREC_LAKE_ROOT=${ECREC_LAKE_ROOT:-./lake}
export ECREC_WAREHOUSE_URL=${ECREC_WAREHOUSE_URL:-duckdb:///./warehouse/warehouse.duckdb}
export ECREC_MLFLOW_TRACKING_URI=${ECREC_MLFLOW_TRACKING_URI:-sqlite:///./mlruns/mlflow.db}
export ECREC_MLFLOW_ARTIFACT_ROOT=${ECREC_MLFLOW_ARTIFACT_ROOT:-./mlruns/artifacts}
export SPARK_LOCAL_IP=${SPARK_LOCAL_IP:-127.0.0.1}
export GX_ANALYTICS_ENABLED=False MLFLOW_DISABLE_TELEMETRY=true
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$AIRFLOW_HOME" mlruns warehouse .secrets
chmod 700 .secrets

# Secrets are generated locally once and never printed: the pseudonymization key (HMAC of
# user ids) and the JWT secret of the Airflow API.
if [ -z "${ECREC_PSEUDO_KEY:-}" ] && [ -z "${ECREC_PSEUDO_KEY_FILE:-}" ]; then
  if [ ! -s .secrets/pseudo_key ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > .secrets/pseudo_key)
  fi
  export ECREC_PSEUDO_KEY_FILE="$REPO_ROOT/.secrets/pseudo_key"
fi
if [ -z "${AIRFLOW__API_AUTH__JWT_SECRET:-}" ]; then
  if [ ! -s .secrets/airflow_jwt_secret ]; then
    (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' > .secrets/airflow_jwt_secret)
  fi
  AIRFLOW__API_AUTH__JWT_SECRET=$(cat .secrets/airflow_jwt_secret)
  export AIRFLOW__API_AUTH__JWT_SECRET
fi
