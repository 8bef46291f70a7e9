"""The promotion gate and manual control, end to end through the jobs' ``main``.

A real SQLite MLflow registry (one per module), tiny real pyfunc models (see
tests/test_registry.py) and a tiny lake: 40 items in 5 categories, 60 users who each stay in
one category, so a model whose vectors follow the categories ranks targets well and a
constant model cannot rank at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecrec_lib import tracking
from ecrec_lib.registry import client as reg
from ecrec_lib.registry import promotion, records
from jobs import models as models_job
from jobs import promote_model
from tests.test_registry import DS, log_tiny_model, make_cfg, tiny_loader

REAL_LOADER = promotion.default_loader  # before any test swaps it for the tiny test loader
N_CLUSTERS, PER_CLUSTER, N_USERS, SEQ_LEN = 5, 8, 60, 6
ITEM_IDS = [f"item{k:02d}" for k in range(N_CLUSTERS * PER_CLUSTER)]


def write_lake(lake: Path) -> None:
    """features/user_sequences and clean/catalog partitions for DS (Parquet, Spark layout)."""
    rng = np.random.default_rng(1)
    rows = []
    for u in range(N_USERS):
        c = u % N_CLUSTERS
        items = rng.choice(np.arange(c * PER_CLUSTER, (c + 1) * PER_CLUSTER), SEQ_LEN, False)
        rows.append({
            "user_key": f"u{u}",
            "item_ids": [ITEM_IDS[i] for i in items],
            "event_types": ["view"] * SEQ_LEN,
            "event_times": [1709600000 + 60 * t for t in range(SEQ_LEN)],
            "n_events": SEQ_LEN,
        })
    seq_dir = lake / "features" / "user_sequences" / f"ds={DS}"
    cat_dir = lake / "clean" / "catalog" / f"ds={DS}"
    for d in (seq_dir, cat_dir):
        d.mkdir(parents=True)
        (d / "_SUCCESS").write_text("")
    pd.DataFrame(rows).to_parquet(seq_dir / "part-00000.parquet")
    pd.DataFrame({
        "item_id": ITEM_IDS,
        "title": [f"Item {i}" for i in ITEM_IDS],
        "category": [f"cat{k // PER_CLUSTER}" for k in range(len(ITEM_IDS))],
        "price": [9.99] * len(ITEM_IDS),
    }).to_parquet(cat_dir / "part-00000.parquet")


def vectors(kind: str) -> np.ndarray:
    """good: category one-hots; medium: good for 2 categories only; constant: all equal."""
    rng = np.random.default_rng(2)
    n = len(ITEM_IDS)
    cluster = np.arange(n) // PER_CLUSTER
    good = np.eye(8)[cluster] + 0.05 * rng.normal(size=(n, 8))
    if kind == "good":
        return good
    if kind == "medium":
        out = rng.normal(size=(n, 8))
        out[cluster < 2] = good[cluster < 2]
        return out
    return np.ones((n, 8))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("promote")
    (root / "artifacts").mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").search_experiments()
    return root


@pytest.fixture(scope="module")
def logged(root: Path) -> dict[str, tuple[str, str]]:
    cfg = make_cfg(root)
    return {
        kind: log_tiny_model(cfg, ITEM_IDS, vectors(kind), root, {"test_ndcg_10": 0.1})
        for kind in ("good", "medium", "constant")
    }


@pytest.fixture()
def env(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh model name and lake per test; jobs see them through ECREC_* variables."""
    cfg = make_cfg(root, lake_root=str(tmp_path / "lake"))
    write_lake(tmp_path / "lake")
    for key, value in (("MLFLOW_TRACKING_URI", cfg.mlflow_tracking_uri),
                       ("MLFLOW_ARTIFACT_ROOT", cfg.mlflow_artifact_root),
                       ("REGISTERED_MODEL_NAME", cfg.registered_model_name),
                       ("LAKE_ROOT", cfg.lake_root)):
        monkeypatch.setenv(f"ECREC_{key}", value)
    monkeypatch.delenv("ECREC_CONFIG", raising=False)
    monkeypatch.setattr(promotion, "default_loader", tiny_loader)
    return reg.connect(cfg), cfg


def register(env, logged, kind: str) -> str:
    client, cfg = env
    return reg.register_challenger(cfg, *logged[kind], DS, {"test_ndcg_10": 0.1}, "fp",
                                   commit="c0ffee", client=client)


def decision_file(cfg) -> dict:
    return json.loads(Path(records.decision_path(cfg, DS)).read_text())


def decision_runs(client, cfg, decision: str) -> list:
    exp = client.get_experiment_by_name(records.promotion_experiment(cfg))
    return [r for r in client.search_runs([exp.experiment_id],
                                          f"tags.decision = '{decision}'")
            if r.data.params.get("model") == cfg.registered_model_name]


# ------------------------------------------------------------------ the gate


def test_first_model_becomes_champion_when_it_beats_popularity(env, logged):
    client, cfg = env
    v = register(env, logged, "good")
    assert promote_model.main(["--ds", DS]) == 0
    assert reg.resolve_champion(cfg, client)[0] == v
    d = decision_file(cfg)
    assert d["decision"] == "promoted" and d["new_champion_version"] == v
    assert d["metrics"]["challenger"]["ndcg@10"] > d["metrics"]["popularity"]["ndcg@10"]
    assert d["holdout"]["holdout_users"] == N_USERS
    # the three traces: MLflow decision run, version tags, promotion-log line
    (run,) = decision_runs(client, cfg, "promoted")
    assert run.data.metrics["challenger.ndcg_at_10"] == pytest.approx(
        d["metrics"]["challenger"]["ndcg@10"])
    assert run.data.params["challenger_version"] == v
    mv = client.get_model_version(cfg.registered_model_name, v)
    assert (mv.tags["promotion_decision"], mv.tags["promotion_ds"]) == ("promoted", DS)
    assert mv.tags["champion_action"] == "gate"
    assert "## Promotion gate: newest holdout" in mv.description  # card re-rendered
    lines = [r for r in records.read_promotion_log(cfg) if r["model"] == cfg.registered_model_name]
    assert [(r["kind"], r["ds"], r["decision"]) for r in lines] == [("gate", DS, "promoted")]
    # An Airflow retry of the same ds keeps the promotion instead of rewriting it.
    assert promote_model.main(["--ds", DS]) == 0
    assert decision_file(cfg)["decision"] == "promoted"
    assert len(decision_runs(client, cfg, "promoted")) == 1


def test_gate_run_links_training_runs_versions_and_one_decisions_log(env, logged, root):
    """Traceability in MLflow: gate run <-> training runs <-> versions, one decisions log."""
    import re

    client, cfg = env
    name = cfg.registered_model_name
    reg_kwargs = {"ds": DS, "metrics": {"test_ndcg_10": 0.1}, "fingerprint": "fp"}
    med_run, med_uri = logged["medium"]
    good_run, good_uri = logged["good"]
    v_med = promotion.register_with_card(client, cfg, run_id=med_run, model_uri=med_uri,
                                         **reg_kwargs)
    reg.set_champion(client, name, v_med, action="manual", by="t", reason="seed champion")
    v_good = promotion.register_with_card(client, cfg, run_id=good_run, model_uri=good_uri,
                                          **reg_kwargs)
    assert promote_model.main(["--ds", DS]) == 0

    (run,) = decision_runs(client, cfg, "promoted")
    gate_id = run.info.run_id
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == good_run  # a child of the challenger's training run
    assert (tags["challenger_version"], tags["champion_version"]) == (v_good, v_med)
    assert (tags["challenger_training_run"], tags["champion_training_run"]) == (good_run, med_run)
    assert run.data.params["decision_run_id"] == gate_id
    assert decision_file(cfg)["decision_run_id"] == gate_id
    for version, run_id in ((v_good, good_run), (v_med, med_run)):
        mv = client.get_model_version(name, version)
        assert mv.run_id == run_id and mv.source and mv.tags["training_run"] == run_id
        assert mv.tags["decision_run_id"] == gate_id
        assert not [k for k in mv.tags if DS in k], "no per-ds tag keys"
    assert client.get_run(good_run).data.tags["registered_model_version"] == f"{name}/{v_good}"
    assert client.get_run(good_run).data.tags["latest_decision_run_id"] == gate_id
    # One decisions log, on the gate run and in the lake, holding this decision.
    path = client.download_artifacts(gate_id, records.DECISIONS_ARTIFACT, str(root))
    logged_lines = [json.loads(x) for x in Path(path).read_text().splitlines()]
    assert logged_lines == records.model_decisions(cfg)
    assert logged_lines[-1]["decision_run_id"] == gate_id
    assert logged_lines[-1]["decision"] == "promoted"
    # @challenger leaves the new champion; the history and descriptions read as text.
    assert reg.get_alias_version(client, name, reg.CHALLENGER) is None
    assert reg.resolve_champion(cfg, client)[0] == v_good
    model = client.get_registered_model(name)
    history = json.loads(model.tags[reg.HISTORY_TAG])
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", h["at"]) for h in history)
    assert "Champion history" in model.description
    assert f"| {v_good} | {v_med} | gate |" in model.description
    for exp_name in (cfg.mlflow_experiment, records.promotion_experiment(cfg)):
        assert client.get_experiment_by_name(exp_name).tags.get(records.NOTE_TAG)
    card = client.get_model_version(name, v_good).description
    assert card.index("## Promotion gate: newest holdout") < card.index("## Data window")
    # A retry of the ds after @challenger was removed keeps the decision, adds no run.
    assert promote_model.main(["--ds", DS]) == 0
    assert decision_file(cfg)["decision_run_id"] == gate_id
    assert len(decision_runs(client, cfg, "promoted")) == 1


def test_first_model_worse_than_popularity_is_not_promoted(env, logged):
    client, cfg = env
    v = register(env, logged, "constant")
    assert promote_model.main(["--ds", DS]) == 0  # a rejection keeps the run green
    with pytest.raises(reg.NoChampionError):
        reg.resolve_champion(cfg, client)
    d = decision_file(cfg)
    assert d["decision"] == "rejected" and d["new_champion_version"] == ""
    assert d["metrics"]["challenger"]["ndcg@10"] == 0.0  # all ties rank the target last
    assert "popularity baseline" in d["reasons"]
    assert client.get_model_version(cfg.registered_model_name, v).tags[
        "promotion_decision"] == "rejected"


def test_better_challenger_promoted_worse_one_rejected_and_rerun_replaces_the_line(env, logged):
    client, cfg = env
    name = cfg.registered_model_name
    v_med = register(env, logged, "medium")
    reg.set_champion(client, name, v_med, action="manual", by="t", reason="seed champion")
    v_good = register(env, logged, "good")
    assert promote_model.main(["--ds", DS]) == 0
    d = decision_file(cfg)
    assert d["decision"] == "promoted" and reg.resolve_champion(cfg, client)[0] == v_good
    assert d["metrics"]["challenger"]["ndcg@10"] > d["metrics"]["champion"]["ndcg@10"]
    assert client.get_model_version(name, v_med).tags["promotion_role"] == "champion"

    # The older, worse model comes back as challenger: evaluated, not promoted, exit 0.
    assert register(env, logged, "medium") == v_med
    assert promote_model.main(["--ds", DS]) == 0
    d = decision_file(cfg)
    assert d["decision"] == "rejected" and reg.resolve_champion(cfg, client)[0] == v_good
    assert "<= champion" in d["reasons"]
    assert client.get_model_version(name, v_med).tags["promotion_decision"] == "rejected"
    assert len(decision_runs(client, cfg, "rejected")) == 1
    # Same ds twice: one gate line in the cumulative log, the latest decision.
    lines = [r for r in records.read_promotion_log(cfg) if r["model"] == name]
    assert [(r["ds"], r["decision"]) for r in lines if r["kind"] == "gate"] == [(DS, "rejected")]


def test_flagged_champion_is_replaced_and_a_flagged_challenger_never_promoted(env, logged):
    client, cfg = env
    name = cfg.registered_model_name
    v_good = register(env, logged, "good")
    reg.set_champion(client, name, v_good, action="manual", by="t", reason="seed champion")
    reg.flag_for_erasure(client, name, v_good, "fr-test")  # jobs.forget_users did this
    v_med = register(env, logged, "medium")
    assert promote_model.main(["--ds", DS]) == 0
    d = decision_file(cfg)
    assert d["decision"] == "promoted" and reg.resolve_champion(cfg, client)[0] == v_med
    assert d["metrics"]["challenger"]["ndcg@10"] < d["metrics"]["champion"]["ndcg@10"]
    assert "erased users" in d["reasons"]
    # The flagged, better model comes back as challenger: evaluated, never promoted.
    assert register(env, logged, "good") == v_good
    assert promote_model.main(["--ds", DS]) == 0
    d = decision_file(cfg)
    assert d["decision"] == "rejected" and reg.resolve_champion(cfg, client)[0] == v_med
    assert "never promoted" in d["reasons"]


def test_guardrail_blocks_a_better_model(env, logged, monkeypatch):
    client, cfg = env
    register(env, logged, "good")
    monkeypatch.setenv("ECREC_GUARDRAIL_MAX_MS_PER_1K_USERS", "0")
    assert promote_model.main(["--ds", DS]) == 0
    d = decision_file(cfg)
    assert d["decision"] == "rejected" and d["guardrails"]["latency"] is False
    assert "scoring latency" in d["reasons"]


def test_no_challenger_is_a_recorded_no_op(env):
    client, cfg = env
    assert promote_model.main(["--ds", DS]) == 0
    d = decision_file(cfg)
    assert d["decision"] == "no_challenger" and "has no 'challenger' alias" in d["reasons"]


def test_corrupted_artifact_is_refused_and_never_promoted(env, logged, root, capsys):
    client, cfg = env
    name = cfg.registered_model_name
    v_med = register(env, logged, "medium")
    reg.set_champion(client, name, v_med, action="manual", by="t", reason="seed champion")
    run_id, uri = log_tiny_model(cfg, ITEM_IDS, vectors("good"), root, {})
    v_bad = reg.register_challenger(cfg, run_id, uri, DS, {}, "fp", commit="x", client=client)
    src = Path(client.get_model_version_download_uri(name, v_bad).removeprefix("file://"))
    (npz,) = src.rglob("*.npz")
    npz.write_bytes(b"garbage, not a zip file")

    assert promote_model.main(["--ds", DS]) == 1
    err = capsys.readouterr().err  # jobs log to stderr
    assert f"model version {v_bad}" in err and "refused" in err
    assert reg.resolve_champion(cfg, client)[0] == v_med
    d = decision_file(cfg)
    assert d["decision"] == "invalid_artifact" and d["new_champion_version"] == v_med
    assert "artifact_invalid" in client.get_model_version(name, v_bad).tags

    # An incomplete artifact (MLmodel deleted) cannot be promoted by hand either.
    (src / "MLmodel").unlink()
    assert models_job.main(["promote", v_bad, "--reason", "try anyway"]) == 1
    assert reg.resolve_champion(cfg, client)[0] == v_med


def test_unreachable_registry_fails_and_touches_nothing(env, tmp_path, monkeypatch, capsys):
    _, cfg = env
    bad = f"sqlite:///{tmp_path}/nowhere/mlflow.db"
    monkeypatch.setenv("ECREC_MLFLOW_TRACKING_URI", bad)
    assert promote_model.main(["--ds", DS]) == 1
    err = capsys.readouterr().err
    assert bad in err and "ECREC_MLFLOW_TRACKING_URI" in err
    assert not Path(cfg.lake_root, "ops").exists()
    assert not (tmp_path / "nowhere").exists()
    assert models_job.main(["list"]) == 1


def test_missing_holdout_data_fails_clearly(env, logged, capsys):
    _, cfg = env
    register(env, logged, "good")
    seq = Path(cfg.lake_root, "features", "user_sequences", f"ds={DS}")
    for f in seq.iterdir():
        f.unlink()
    seq.rmdir()
    assert promote_model.main(["--ds", DS]) == 1
    err = capsys.readouterr().err
    assert "user_sequences" in err and "featurize" in err


# ------------------------------------------------------------------ manual control


def test_models_cli_promote_list_and_rollback_record_who_and_why(env, logged, capsys):
    client, cfg = env
    name = cfg.registered_model_name
    v1, v2 = register(env, logged, "medium"), register(env, logged, "good")
    assert models_job.main(["rollback", "--reason", "nothing yet"]) == 1  # no champion history
    assert models_job.main(["promote", v1, "--reason", "baseline", "--user", "alice"]) == 0
    assert models_job.main(["promote", v2, "--reason", "better on mobile", "--user", "bob"]) == 0
    assert models_job.main(["promote", v2, "--reason", "again"]) == 1  # already champion
    capsys.readouterr()
    assert models_job.main(["list"]) == 0
    table = capsys.readouterr().out
    row2 = next(line for line in table.splitlines() if line.strip().startswith(v2 + " "))
    assert "challenger,champion" in row2 and DS in row2

    assert models_job.main(["rollback", "--reason", "CTR dropped", "--user", "carol"]) == 0
    assert reg.resolve_champion(cfg, client)[0] == v1
    mv1 = client.get_model_version(name, v1)
    assert (mv1.tags["champion_by"], mv1.tags["champion_reason"]) == ("carol", "CTR dropped")
    manual = [r for r in records.read_promotion_log(cfg) if r["model"] == name]
    assert [(r["decision"], r["by"], r["new_champion_version"]) for r in manual] == [
        ("manual_promote", "alice", v1), ("manual_promote", "bob", v2), ("rollback", "carol", v1)]
    (run,) = decision_runs(client, cfg, "rollback")
    assert run.data.params["reason"] == "CTR dropped" and run.data.tags["by"] == "carol"
    assert models_job.main(["rollback", "--reason", "again"]) == 1  # v1 was the first champion


# ------------------------------------------------------------------ the real two-tower artifact


def train_real_model(cfg, epochs: int) -> tuple[str, str]:
    """Train a tiny ID-only two-tower model on the test lake's users and log it for real."""
    import mlflow
    import torch

    from ecrec_lib.evaluation import leave_one_out
    from ecrec_lib.models.artifact import log_recommender
    from ecrec_lib.models.config import ModelConfig
    from ecrec_lib.training.data import TrainingData
    from ecrec_lib.training.trainer import train_two_tower

    torch.set_num_threads(1)
    seqs_df = pd.read_parquet(Path(cfg.lake_root, "features", "user_sequences", f"ds={DS}"))
    index = {i: k for k, i in enumerate(ITEM_IDS)}
    seqs = [np.asarray([index[i] for i in s], dtype=np.int64) for s in seqs_df["item_ids"]]
    n = len(ITEM_IDS)
    data = TrainingData(
        item_ids=ITEM_IDS, item_text=[""] * n, item_brand=[""] * n,
        item_category=[f"cat{k // PER_CLUSTER}" for k in range(n)],
        user_keys=list(seqs_df["user_key"]), sequences=seqs,
    )
    train, valid, _ = leave_one_out(seqs)
    mcfg = ModelConfig(use_text=False, init_id_from_text=False, dim=16, n_layers=1, n_heads=1,
                       epochs=epochs, warmup_steps=0, batch_size=64, dropout=0.1, device="cpu")
    result = train_two_tower(data, mcfg, train, valid, progress=False)
    # Experiment artifacts under cfg.mlflow_artifact_root (MLflow's default is ./mlruns).
    tracking.configure_mlflow(cfg.mlflow_tracking_uri, cfg.mlflow_experiment,
                              cfg.mlflow_artifact_root)
    with mlflow.start_run() as run:
        mlflow.log_params({"epochs": epochs, "dim": 16})
        uri = log_recommender(result.model)
    return run.info.run_id, uri


def test_real_two_tower_artifact_promoted_and_corruption_refused(env, monkeypatch, capsys):
    """The registry against the training side's real artifact and loader (no test double)."""
    from jobs import register_model

    client, cfg = env
    name = cfg.registered_model_name
    monkeypatch.setattr(promotion, "default_loader", REAL_LOADER)
    run_id, uri = train_real_model(cfg, epochs=5)
    summary = Path(register_model.summary_path(cfg.lake_root, DS))
    summary.parent.mkdir(parents=True)
    summary.write_text(json.dumps({  # the shape jobs.train_encoders writes
        "ds": DS, "run_id": run_id, "model_uri": uri, "registered_version": None,
        "fingerprint": "fp", "metrics": {"ndcg@10": 0.5, "recall@10": 0.8, "n_eval": 60.0},
        "baselines": {"popularity": {"ndcg@10": 0.04, "recall@10": 0.1},
                      "item_knn": {"ndcg@10": 0.3, "recall@10": 0.6}},
        "data": {"window_start": "2024-02-05", "window_end": DS, "n_users": 60},
    }))
    assert register_model.main(["--ds", DS]) == 0
    mv = reg.get_alias_version(client, name, "challenger")
    assert mv.tags["metric.test_ndcg_10"] == "0.500000"
    assert mv.tags["metric.pop_test_ndcg_10"] == "0.040000"
    assert "| window_start | 2024-02-05 |" in mv.description
    assert "| NDCG@10 | 0.5000 | 0.3000 | 0.0400 |" in mv.description  # model, itemknn, pop
    assert "| dim | 16 |" in mv.description
    assert promote_model.main(["--ds", DS]) == 0
    d = decision_file(cfg)
    assert d["decision"] == "promoted", d["reasons"]  # it learned the categories
    assert d["metrics"]["challenger"]["ndcg@10"] > d["metrics"]["popularity"]["ndcg@10"]
    v1 = reg.resolve_champion(cfg, client)[0]

    # A second real version whose weights file is garbled after registration: refused.
    run_id, uri = train_real_model(cfg, epochs=1)
    v2 = reg.register_challenger(cfg, run_id, uri, DS, {}, "fp", commit="x", client=client)
    src = Path(client.get_model_version_download_uri(name, v2).removeprefix("file://"))
    (weights,) = src.rglob("state_dict.pt")
    weights.write_bytes(weights.read_bytes()[:100])
    capsys.readouterr()
    assert promote_model.main(["--ds", DS]) == 1
    err = capsys.readouterr().err
    assert "corrupted: state_dict.pt does not match its sha256" in err
    assert reg.resolve_champion(cfg, client)[0] == v1
    assert decision_file(cfg)["decision"] == "invalid_artifact"
