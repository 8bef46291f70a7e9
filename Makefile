# ecrec — two commands: `make demo` and `make test`. Both set up first when needed.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SPARK_LOCAL_IP ?= 127.0.0.1
export GX_ANALYTICS_ENABLED ?= False
export MLFLOW_DISABLE_TELEMETRY ?= true
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PYTHONPATH := $(CURDIR)

.PHONY: clean-venv setup demo test test-fast lint airflow mlflow browser clean bench-pipeline bench-scoring bench-quality prod-up prod-down

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt scripts/check_prereqs.sh
	@bash scripts/check_prereqs.sh $(PY)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -r requirements-nodeps.txt
	$(BIN)/python -c "import pyspark, sys; v = pyspark.__version__; sys.exit(0 if v.startswith('4.3') else 'pyspark ' + v + ' shadows 4.3: run make clean-venv setup')"
	@touch $(STAMP)

browser:
	@bash scripts/ensure_chromium.sh

demo: setup
	@bash scripts/demo.sh

test: setup browser
	$(BIN)/ruff check .
	$(BIN)/pytest -m "not real_data" --timeout=1800

test-fast: setup
	$(BIN)/pytest -m "not slow and not e2e and not browser and not real_data"

lint: setup
	$(BIN)/ruff check .

airflow: setup
	@bash scripts/airflow_standalone.sh

mlflow: setup
	$(BIN)/python -m jobs.mlflow_ui

# The production topology as processes on 127.0.0.1 (README "Production"): Spark standalone,
# an MLflow server and Airflow on PostgreSQL, the warehouse on PostgreSQL.
prod-up: setup
	$(BIN)/python scripts/prod.py up

prod-down:
	$(BIN)/python scripts/prod.py down

bench-pipeline: setup
	$(BIN)/python -m jobs.bench_pipeline --events 1000000

bench-scoring: setup
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BIN)/python -m jobs.bench_scoring --users 100000 --items 100000 --dim 64 --k 100 --baseline-users 5000 --rounds 3
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(BIN)/python -m jobs.bench_scoring --users 100000 --items 1000000 --dim 64 --k 100 --sample-users 5000 --baseline-users 1000 --rounds 2

bench-quality: setup
	$(BIN)/python -m jobs.benchmark_quality --data ../shared/data/amazon_beauty --seeds 3 --threads 1 --valid-users 4000 --out benchmark_results.json

clean-venv:
	rm -rf $(VENV)

clean:
	rm -rf lake mlruns warehouse .airflow demo_out test-artifacts prod
