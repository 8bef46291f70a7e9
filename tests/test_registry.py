"""Registry: registration, aliases, champion history, model card, decision rule, holdout.

Runs against a real SQLite-backed MLflow registry in a temp dir (one per module: MLflow's
schema migration costs a few seconds). Tests isolate themselves by registered-model name.
"""

from __future__ import annotations

import json
import socket
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ecrec_lib import tracking
from ecrec_lib.config import EcrecConfig, load_config
from ecrec_lib.model_card import normalize_metrics, render_model_card, split_baselines
from ecrec_lib.models.api import Recommender
from ecrec_lib.models.served import VectorRecommender
from ecrec_lib.registry import client as reg
from ecrec_lib.registry import gate, records

DS = "2024-03-05"

# ------------------------------------------------------------------ a tiny real model


class TinyRecommender(VectorRecommender):
    """A numpy Recommender: fixed vectors per item id; user = mean of its history vectors.

    Also an ``mlflow.pyfunc.PythonModel`` (duck-typed through :class:`TinyPyfunc`), so it is
    logged, registered, downloaded and loaded like the real two-tower model.
    """

    def __init__(self, item_ids: list[str], vectors: np.ndarray, meta: dict | None = None):
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        self._ids = list(item_ids)
        self._vecs = (vectors / np.maximum(norms, 1e-9)).astype(np.float32)
        self._index = {i: r for r, i in enumerate(self._ids)}
        self._meta = dict(meta or {})

    @property
    def item_ids(self) -> list[str]:
        return list(self._ids)

    def item_matrix(self) -> np.ndarray:
        return self._vecs.copy()

    def _vec(self, item_id: str) -> np.ndarray:
        row = self._index.get(str(item_id))
        if row is not None:
            return self._vecs[row]
        # Cold start: a deterministic vector from the id (stands in for the text encoder).
        rng = np.random.default_rng(abs(hash(str(item_id))) % (2**32))
        v = rng.normal(size=self._vecs.shape[1]).astype(np.float32)
        return v / np.linalg.norm(v)

    def encode_items(self, catalog: pd.DataFrame) -> np.ndarray:
        return np.stack([self._vec(i) for i in catalog["item_id"]]).astype(np.float32)

    def encode_users(self, histories, now_ts: int) -> np.ndarray:
        out = np.stack([np.mean([self._vec(i) for i in h.item_ids], axis=0) for h in histories])
        return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)).astype(
            np.float32
        )

    def encode_queries(self, queries) -> np.ndarray:
        return np.zeros((len(queries), self._vecs.shape[1]), dtype=np.float32)

    @property
    def metadata(self) -> dict:
        return self._meta


def _pyfunc_class():
    import mlflow.pyfunc

    class TinyPyfunc(mlflow.pyfunc.PythonModel):
        """Loads TinyRecommender from the ``vectors`` artifact (an .npz file)."""

        def load_context(self, context) -> None:
            data = np.load(context.artifacts["vectors"], allow_pickle=False)
            self.recommender = TinyRecommender(
                [str(i) for i in data["item_ids"]], data["vectors"], json.loads(str(data["meta"]))
            )

        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    return TinyPyfunc


def tiny_loader(model_uri: str) -> Recommender:
    """Test loader: pyfunc download + load; raises when the artifact is broken."""
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().recommender


def log_tiny_model(
    cfg: EcrecConfig, item_ids: list[str], vectors: np.ndarray, tmp: Path, metrics: dict
) -> tuple[str, str]:
    """Log a TinyRecommender as a pyfunc in a finished run; returns (run_id, model_uri)."""
    import mlflow

    # Experiment artifacts under cfg.mlflow_artifact_root (MLflow's default is ./mlruns).
    tracking.configure_mlflow(cfg.mlflow_tracking_uri, cfg.mlflow_experiment,
                              cfg.mlflow_artifact_root)
    path = tmp / f"vectors-{uuid.uuid4().hex}.npz"
    np.savez(path, item_ids=np.asarray(item_ids), vectors=vectors, meta=json.dumps({"ds": DS}))
    with mlflow.start_run() as run:
        mlflow.log_params({"embedding_dim": vectors.shape[1], "epochs": 1})
        mlflow.log_metrics(metrics)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_pyfunc_class()(),
            artifacts={"vectors": str(path)},
            pip_requirements=["numpy"],
        )
    return run.info.run_id, info.model_uri


def make_cfg(root: Path, **overrides) -> EcrecConfig:
    """A config pointing at ``root``'s registry and lake, ignoring the caller's environment."""
    values = {
        "lake_root": str(root / "lake"),
        "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        "mlflow_artifact_root": str(root / "artifacts"),
        "registered_model_name": f"m-{uuid.uuid4().hex[:8]}",
    }
    values.update(overrides)
    return load_config(env={}, **values)


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite registry (created now) for the whole module."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    (root / "artifacts").mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").search_experiments()  # creates it
    return root


@pytest.fixture(scope="module")
def logged(registry_root: Path) -> dict[str, tuple[str, str]]:
    cfg = make_cfg(registry_root)
    ids = [f"i{k}" for k in range(6)]
    rng = np.random.default_rng(0)
    return {
        name: log_tiny_model(cfg, ids, rng.normal(size=(6, 4)), registry_root,
                             {"test_ndcg_10": val, "pop_test_ndcg_10": 0.1})
        for name, val in (("a", 0.3), ("b", 0.4), ("c", 0.5))
    }


@pytest.fixture()
def client_cfg(registry_root: Path):
    cfg = make_cfg(registry_root)
    return reg.connect(cfg), cfg


# ------------------------------------------------------------------ model card (pure)


def test_model_card_has_every_section_and_compares_to_baselines_and_previous_champion():
    card = render_model_card(
        model_name="ecrec-two-tower",
        version="3",
        ds=DS,
        run_id="abc123",
        data_window={"first_ds": "2024-02-04", "last_ds": DS},
        training_config={"epochs": 30, "encoder_mode": "frozen"},
        metrics={"test_ndcg_10": 0.21, "pop_test_ndcg_10": 0.05, "itemknn_test_ndcg_10": 0.12,
                 "test_recall_10": 0.4},
        fingerprint="f00d",
        previous_champion={"version": "2", "metrics": {"test_ndcg_10": 0.19}},
    )
    for heading in ("## Data window", "## Training configuration", "## Offline metrics",
                    "## Cold start", "## Known limitations"):
        assert heading in card
    row = next(line for line in card.splitlines() if line.startswith("| NDCG@10"))
    # columns: metric | model | itemknn | pop | previous champion
    assert row.split("|")[2:6] == [" 0.2100 ", " 0.1200 ", " 0.0500 ", " 0.1900 "]
    assert "previous champion (v2)" in card
    assert "| last_ds | 2024-03-05 |" in card
    assert "| encoder_mode | frozen |" in card
    assert "not measured" in card  # no cold-start metrics given: the card says so


def test_model_card_states_missing_facts_and_cold_start_metrics():
    card = render_model_card(
        model_name="m", version="1", ds=DS, run_id="r", data_window={}, training_config={},
        metrics={}, previous_champion=None, cold_start_metrics={"ndcg@10": 0.07},
        holdout={"challenger": {"ndcg@10": 0.3}, "popularity": {"ndcg@10": 0.1}},
    )
    assert "Not recorded by the training run." in card
    assert "logged no test metrics" in card
    assert "| ndcg@10 | 0.0700 |" in card
    assert "not measured" not in card
    assert "| ndcg@10 | 0.3000 | 0.1000 |" in card  # the gate's holdout table


def test_normalize_metrics_accepts_flat_mlflow_and_nested_shapes():
    assert normalize_metrics({"test_ndcg_10": 0.2, "status": "ok", "flag": True}) == {
        "test_ndcg_10": 0.2}
    assert normalize_metrics({"test.two_tower.ndcg_at_10": 0.2,
                              "test.popularity.recall_at_50": 0.5}) == {
        "test_ndcg_10": 0.2, "pop_test_recall_50": 0.5}
    assert normalize_metrics({"two_tower": {"ndcg@10": 0.3}, "item_knn": {"ndcg@10": 0.1}}) == {
        "test_ndcg_10": 0.3, "itemknn_test_ndcg_10": 0.1}


def test_split_baselines_groups_prefixed_keys():
    got = split_baselines({"test_ndcg_10": 0.2, "pop_test_ndcg_10": 0.1, "loss": 3.0})
    assert got == {"model": {"test_ndcg_10": 0.2}, "pop": {"test_ndcg_10": 0.1}}


# ------------------------------------------------------------------ decision rule (pure)


def _m(ndcg: float, cov: float = 0.5, r50: float = 0.5, ms: float = 10.0) -> dict[str, float]:
    return {"ndcg@10": ndcg, "coverage@10": cov, "recall@50": r50, "ms_per_1k_users": ms}


def test_decide_promotes_only_past_the_margin():
    cfg = load_config(env={}, promotion_margin=0.01)
    assert gate.decide(cfg, _m(0.30), _m(0.28), _m(0.1)).promote
    assert not gate.decide(cfg, _m(0.285), _m(0.28), _m(0.1)).promote
    worse = gate.decide(cfg, _m(0.20), _m(0.28), _m(0.1))
    assert not worse.promote and "<=" in worse.reasons[-1]


def test_decide_guardrails_block_a_better_challenger():
    cfg = load_config(env={}, guardrail_min_coverage=0.2, guardrail_min_recall_at_50=0.3,
                      guardrail_max_ms_per_1k_users=100.0)
    for bad, name in ((_m(0.9, cov=0.1), "coverage"), (_m(0.9, r50=0.2), "recall_at_50"),
                      (_m(0.9, ms=500.0), "latency")):
        res = gate.decide(cfg, bad, _m(0.1), _m(0.1))
        assert not res.promote and res.guardrails[name] is False
        assert sum(res.guardrails.values()) == 2


def test_decide_first_model_must_beat_popularity():
    cfg = load_config(env={})
    assert gate.decide(cfg, _m(0.2), None, _m(0.1)).promote
    res = gate.decide(cfg, _m(0.1), None, _m(0.15))
    assert not res.promote and "popularity" in res.reasons[-1]


# ------------------------------------------------------------------ holdout (pure)


def test_build_holdout_targets_last_item_and_skips_short_and_unknown():
    seqs = pd.DataFrame({
        "item_ids": [["a", "b", "c"], ["a"], ["b", "zz"], ["c", "x", "a"]],
        "event_types": [["view"] * 3, ["view"], ["view"] * 2, ["view"] * 3],
        "event_times": [[1, 2, 3], [1], [1, 2], [1, 2, 3]],
    })
    catalog = pd.DataFrame({"item_id": ["a", "b", "c"], "title": ["A", "B", "C"]})
    h = gate.build_holdout(seqs, catalog, DS)
    assert list(h.eval_set.targets) == [2, 0]  # "c", "a"
    assert [list(x) for x in h.eval_set.histories] == [[0, 1], [2]]  # "x" not in catalog
    assert list(h.histories[1].item_ids) == ["c", "x"]  # the model still sees unknown items
    assert (h.n_skipped_short, h.n_skipped_unknown_target) == (1, 1)
    assert list(h.item_popularity) == [1.0, 1.0, 1.0]  # history counts only: no target leak
    assert h.now_ts == 1709683200  # end of 2024-03-05 UTC


def test_build_holdout_fails_clearly_without_evaluable_users():
    seqs = pd.DataFrame({"item_ids": [["a"]], "event_types": [["view"]], "event_times": [[1]]})
    with pytest.raises(gate.HoldoutError, match="no user .* has 2\\+ item events"):
        gate.build_holdout(seqs, pd.DataFrame({"item_id": ["a"]}), DS)


def test_evaluate_recommender_ranks_full_catalog_and_rejects_bad_output():
    ids = ["a", "b", "c", "d"]
    model = TinyRecommender(ids, np.eye(4))
    seqs = pd.DataFrame({"item_ids": [["a", "a"], ["b", "c"]],
                         "event_types": [["view"] * 2] * 2, "event_times": [[1, 2]] * 2})
    h = gate.build_holdout(seqs, pd.DataFrame({"item_id": ids}), DS)
    m = gate.evaluate_recommender(model, h)
    # user 1 (history a, target a: repeat allowed) ranks a first; user 2 ranks c last-but-ties
    assert m["recall@10"] == 1.0 and m["ndcg@10"] > 0.5 and m["ms_per_1k_users"] > 0

    class Broken(TinyRecommender):
        def encode_users(self, histories, now_ts):
            return np.full((len(histories), 4), np.nan, dtype=np.float32)

    with pytest.raises(gate.ModelEvaluationError, match="NaN"):
        gate.evaluate_recommender(Broken(ids, np.eye(4)), h)


def test_evaluate_recommender_measures_cold_start_on_targets_unseen_in_training():
    ids = ["a", "b", "c", "d"]
    model = TinyRecommender(["a", "b", "c"], np.eye(3))  # "d" is new: ranked cold
    seqs = pd.DataFrame({"item_ids": [["a", "d"], ["b", "c"], ["c", "a"]],
                         "event_types": [["view"] * 2] * 3, "event_times": [[1, 2]] * 3})
    m = gate.evaluate_recommender(model, gate.build_holdout(seqs, pd.DataFrame({"item_id": ids}), DS))
    assert m["cold_n_eval"] == 1.0 and 0.0 <= m["cold_ndcg@10"] <= 1.0
    warm_only = gate.build_holdout(seqs.iloc[1:], pd.DataFrame({"item_id": ids}), DS)
    assert "cold_n_eval" not in gate.evaluate_recommender(model, warm_only)


# ------------------------------------------------------------------ history + log (pure-ish)


def test_champion_stack_replays_promotions_and_rollbacks():
    e = lambda v, a: reg.HistoryEntry(version=v, action=a, at=0.0, by="t", reason="")  # noqa: E731
    assert reg.champion_stack([e("1", "gate"), e("2", "gate"), e("3", "manual")]) == ["1", "2", "3"]
    assert reg.champion_stack([e("1", "gate"), e("2", "gate"), e("1", "rollback")]) == ["1"]


def test_promotion_log_replaces_the_line_of_a_rerun_ds(tmp_path: Path):
    cfg = load_config(env={}, lake_root=str(tmp_path))
    records.write_gate_decision(cfg, {"kind": "gate", "ds": DS, "decision": "rejected"})
    records.append_promotion_log(cfg, {"kind": "manual", "event_id": "e1", "decision": "rollback"})
    records.write_gate_decision(cfg, {"kind": "gate", "ds": DS, "decision": "promoted"})
    lines = records.read_promotion_log(cfg)
    assert [(r["kind"], r["decision"]) for r in lines] == [("manual", "rollback"),
                                                          ("gate", "promoted")]
    per_ds = (tmp_path / "ops" / "promotion" / f"ds={DS}" / "decision.json").read_text()
    assert json.loads(per_ds)["decision"] == "promoted"


# ------------------------------------------------------------------ real registry


def test_register_challenger_tags_and_aliases(client_cfg, logged):
    client, cfg = client_cfg
    run_id, uri = logged["a"]
    v = reg.register_challenger(cfg, run_id, uri, DS, {"test_ndcg_10": 0.3, "loss": 1.0},
                                "fp1", commit="deadbeef", client=client)
    mv = client.get_model_version(cfg.registered_model_name, v)
    assert mv.tags["ds"] == DS and mv.tags["data_fingerprint"] == "fp1"
    assert mv.tags["git_commit"] == "deadbeef"
    assert mv.tags["metric.test_ndcg_10"] == "0.300000" and "metric.loss" not in mv.tags
    assert reg.get_alias_version(client, cfg.registered_model_name, "challenger").version == mv.version
    # Registering the same run again re-aliases instead of creating a duplicate version.
    assert reg.register_challenger(cfg, run_id, uri, DS, {}, "fp1", client=client) == v
    assert len(reg.list_versions(client, cfg.registered_model_name)) == 1


def test_resolve_champion_without_champion_then_honors_a_hand_moved_alias(client_cfg, logged):
    client, cfg = client_cfg
    with pytest.raises(reg.NoChampionError, match="has no 'champion' alias"):
        reg.resolve_champion(cfg, client)
    v1 = reg.register_challenger(cfg, *logged["a"], DS, {}, "fp", commit="x", client=client)
    v2 = reg.register_challenger(cfg, *logged["b"], DS, {}, "fp", commit="x", client=client)
    reg.set_champion(client, cfg.registered_model_name, v1, action="gate", by="t", reason="r")
    assert reg.resolve_champion(cfg, client) == (v1, f"models:/{cfg.registered_model_name}/{v1}")
    # What the MLflow UI does: move the alias directly, outside ecrec.
    client.set_registered_model_alias(cfg.registered_model_name, "champion", v2)
    assert reg.resolve_champion(cfg)[0] == v2  # a fresh client, as the next scoring run
    # ...and rollback after the hand move returns to the champion before it.
    entry = reg.rollback_champion(client, cfg.registered_model_name, by="ops", reason="undo UI")
    assert (entry.version, entry.previous) == (v1, v2)
    history = reg.read_history(client, cfg.registered_model_name)
    assert [h.action for h in history] == ["gate", "external", "rollback"]


def test_history_reads_epoch_seconds_as_iso_dates(client_cfg, logged):
    client, cfg = client_cfg
    name = cfg.registered_model_name
    v = reg.register_challenger(cfg, *logged["a"], DS, {}, "fp", commit="x", client=client)
    assert client.get_registered_model(name).description.startswith(reg.MODEL_DESCRIPTION)
    legacy = [{"version": v, "action": "gate", "at": 1709600000.0, "by": "g", "reason": "r"}]
    client.set_registered_model_tag(name, reg.HISTORY_TAG, json.dumps(legacy))
    client.set_registered_model_alias(name, reg.CHAMPION, v)
    (entry,) = reg.read_history(client, name)
    assert entry.at == "2024-03-05T00:53:20Z"


def test_rollback_walks_back_and_fails_clearly_at_the_first_champion(client_cfg, logged):
    client, cfg = client_cfg
    name = cfg.registered_model_name
    vs = [reg.register_challenger(cfg, *logged[k], DS, {}, "fp", commit="x", client=client)
          for k in ("a", "b", "c")]
    for v in vs:
        reg.set_champion(client, name, v, action="gate", by="gate", reason="better")
    assert reg.rollback_champion(client, name, by="u", reason="r").version == vs[1]
    assert reg.rollback_champion(client, name, by="u", reason="r").version == vs[0]
    with pytest.raises(reg.RegistryError, match="no previous champion to roll back to"):
        reg.rollback_champion(client, name, by="u", reason="r")
    assert reg.resolve_champion(cfg, client)[0] == vs[0]
    mv = client.get_model_version(name, vs[0])
    assert mv.tags["champion_action"] == "rollback" and mv.tags["champion_by"] == "u"


def test_unreachable_sqlite_registry_names_the_uri_and_the_fix(tmp_path: Path):
    cfg = load_config(env={}, mlflow_tracking_uri=f"sqlite:///{tmp_path}/missing/dir/mlflow.db")
    with pytest.raises(reg.RegistryUnreachableError) as err:
        reg.connect(cfg)
    assert str(tmp_path / "missing" / "dir") in str(err.value)
    assert "ECREC_MLFLOW_TRACKING_URI" in str(err.value)
    assert not (tmp_path / "missing").exists()  # nothing created


def test_unreachable_http_registry_fails_fast():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(env={}, mlflow_tracking_uri=f"http://127.0.0.1:{port}")
    with pytest.raises(reg.RegistryUnreachableError, match=f"127.0.0.1:{port} is unreachable"):
        reg.connect(cfg)


# ------------------------------------------------------------------ register_model job


def test_register_model_job(registry_root: Path, logged, monkeypatch):
    from jobs import register_model

    cfg = make_cfg(registry_root)
    for key, value in (("MLFLOW_TRACKING_URI", cfg.mlflow_tracking_uri),
                       ("MLFLOW_ARTIFACT_ROOT", cfg.mlflow_artifact_root),
                       ("REGISTERED_MODEL_NAME", cfg.registered_model_name)):
        monkeypatch.setenv(f"ECREC_{key}", value)
    argv = ["--ds", DS, "--lake", cfg.lake_root]
    assert register_model.main(argv) == 1  # no summary yet

    path = Path(register_model.summary_path(cfg.lake_root, DS))
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "skipped", "reason": "only 12 new events"}))
    with pytest.raises(register_model.SummaryError, match="skipped \\(only 12 new events\\)"):
        register_model.parse_summary(path.read_text(), str(path))
    assert register_model.main(argv) == 1

    run_id, uri = logged["c"]
    path.write_text(json.dumps({
        "run_id": run_id, "model_uri": uri, "fingerprint": "fp9",
        "metrics": {"test_ndcg_10": 0.5, "pop_test_ndcg_10": 0.1},
        "data_window": ["2024-02-05", DS],
    }))
    assert register_model.main(argv) == 0
    client = reg.connect(cfg)
    mv = reg.get_alias_version(client, cfg.registered_model_name, "challenger")
    assert mv is not None and mv.tags["data_fingerprint"] == "fp9"
    assert "| last_ds | 2024-03-05 |" in mv.description  # the model card, shown in the UI
    card = client.download_artifacts(run_id, "model_card.md", str(registry_root))
    assert "| NDCG@10 | 0.5000 | 0.1000 |" in Path(card).read_text()
