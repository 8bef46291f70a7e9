"""ecrec_lib.tracking: what a training run sends to MLflow holds no credential.

A real MLflow store (SQLite + local artifacts in tmp): the params, tags and JSON artifacts of a
run whose config carries a password in ``warehouse_url`` are read back, and the store's files
are searched for the password byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from ecrec_lib import tracking
from ecrec_lib.config import load_config
from ecrec_lib.model_card import render_model_card

PASSWORD = "Wh-Pa55-9f3c"
URL = f"postgresql://ecrec:{PASSWORD}@warehouse-db:5432/ecrec"


@pytest.fixture()
def mlflow_store(tmp_path: Path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    tracking.configure_mlflow(uri, "secrets-test", str(tmp_path / "artifacts"))
    yield tmp_path
    mlflow.set_tracking_uri("")


def test_run_params_tags_and_artifacts_hold_no_password(mlflow_store: Path) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    cfg = load_config(env={"ECREC_WAREHOUSE_URL": URL,
                           "ECREC_MLFLOW_TRACKING_URI": f"http://ml:{PASSWORD}@mlflow:5000"})
    with tracking.training_run("t", tags={"source": f"via {URL}"}) as run:
        # The raw dataclass dict on purpose: tracking must redact whatever it is given.
        tracking.log_run_config(dataclasses.asdict(cfg), {"dim": 64},
                                {"ds": "2024-01-01", "source_url": URL})
    client = MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.params["cfg.warehouse_url"] == "postgresql://ecrec:***@warehouse-db:5432/ecrec"
    assert data.params["cfg.top_k"] == str(cfg.top_k) and data.params["model.dim"] == "64"
    assert data.tags["source"] == "via postgresql://ecrec:***@warehouse-db:5432/ecrec"
    logged = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="config/ecrec_config.json")).read_text())
    assert logged["warehouse_url"] == "postgresql://ecrec:***@warehouse-db:5432/ecrec"
    everything = b"".join(p.read_bytes() for p in mlflow_store.rglob("*") if p.is_file())
    assert PASSWORD.encode() not in everything
    assert b"warehouse-db:5432" in everything  # the store was searched, and it holds the run


def test_model_card_holds_no_password() -> None:
    card = render_model_card(
        model_name="m", version="1", ds="2024-01-01", run_id="r",
        data_window={"source": URL}, training_config={"cfg.warehouse_url": URL, "dim": "64"},
        metrics={"test_ndcg_10": 0.1},
    )
    assert PASSWORD not in card
    assert "postgresql://ecrec:***@warehouse-db:5432/ecrec" in card and "| dim | 64 |" in card
