"""Trainer: learning, reproducibility, resume, sampled softmax, NaN guard, data assembly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ecrec_lib.evaluation import evaluate_scores, leave_one_out, popularity_scores
from ecrec_lib.training.data import build_training_data, data_fingerprint
from ecrec_lib.training.trainer import ModelConfig, NaNLossError, train_two_tower
from tests.helpers_two_tower import make_tiny_bert, synthetic_data

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_bert(tmp_path_factory.mktemp("tinybert"))


def small_cfg(tiny_bert: str, **kw) -> ModelConfig:
    base = dict(text_model_path=tiny_bert, dim=16, n_heads=2, n_layers=1, max_seq_len=8,
                batch_size=16, epochs=2, warmup_steps=2, device="cpu", dropout=0.1,
                text_batch_size=64)
    base.update(kw)
    return ModelConfig(**base)


def test_id_model_learns_sequential_pattern(tiny_bert: str) -> None:
    data = synthetic_data(n_items=30, n_users=120, with_queries=False)
    train, valid, test = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, use_text=False, init_id_from_text=False, epochs=12, lr=5e-3,
                     dim=32, patience=20)
    res = train_two_tower(data, mcfg, train, valid, progress=False)
    m = evaluate_scores(res.score_fn(test), test, data.n_items, ks=(10,))
    pop = popularity_scores(train, data.n_items)
    mp = evaluate_scores(lambda p: np.broadcast_to(pop, (len(p), data.n_items)), test,
                         data.n_items, ks=(10,))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert m["recall@10"] > 0.8 > mp["recall@10"] + 0.2
    assert 1 <= res.best_epoch <= 12
    assert "valid_ndcg@10" in res.history[0]


def test_same_seed_same_loss_history(tiny_bert: str) -> None:
    data = synthetic_data(n_items=20, n_users=40)
    train, valid, _ = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, epochs=2)
    a = train_two_tower(data, mcfg, train, valid, progress=False)
    b = train_two_tower(data, mcfg, train, valid, progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert np.array_equal(a.model.item_matrix(), b.model.item_matrix())
    c = train_two_tower(data, mcfg.replace(seed=8), train, valid, progress=False)
    assert [h["loss"] for h in c.history] != [h["loss"] for h in a.history]


def test_interrupted_run_resumes_to_same_result(tiny_bert: str, tmp_path: Path) -> None:
    data = synthetic_data(n_items=20, n_users=40)
    train, valid, _ = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, epochs=3, patience=10)
    full = train_two_tower(data, mcfg, train, valid, progress=False)
    ckpt = tmp_path / "ckpt"

    class Killed(Exception):
        """Stands in for the process dying during epoch 2 (epoch 1's checkpoint is written)."""

    def die_in_epoch_2(row: dict[str, float]) -> None:
        if row["epoch"] >= 2:
            raise Killed

    with pytest.raises(Killed):
        train_two_tower(data, mcfg, train, valid, progress=False, checkpoint_dir=str(ckpt),
                        on_epoch=die_in_epoch_2)
    assert (ckpt / "last.pt").is_file()
    resumed = train_two_tower(data, mcfg, train, valid, progress=False, checkpoint_dir=str(ckpt))
    assert resumed.resumed_from_epoch == 1
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history],
                                                                 rel=1e-6)
    assert np.allclose(resumed.model.item_matrix(), full.model.item_matrix(), atol=1e-6)


def test_checkpoint_of_other_data_is_ignored(tiny_bert: str, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    data = synthetic_data(n_items=20, n_users=40)
    train, valid, _ = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, epochs=1)
    train_two_tower(data, mcfg, train, valid, progress=False, checkpoint_dir=str(ckpt))
    other = synthetic_data(n_items=20, n_users=40, seed=5)
    t2, v2, _ = leave_one_out(other.sequences)
    res = train_two_tower(other, mcfg, t2, v2, progress=False, checkpoint_dir=str(ckpt))
    assert res.resumed_from_epoch == 0 and len(res.history) == 1


def test_sampled_softmax_with_logq_learns(tiny_bert: str) -> None:
    data = synthetic_data(n_items=40, n_users=120)
    train, valid, test = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, loss="sampled_softmax", n_negatives=10, epochs=8, lr=5e-3, dim=32)
    res = train_two_tower(data, mcfg, train, valid, progress=False)
    m = evaluate_scores(res.score_fn(test), test, data.n_items, ks=(10,))
    assert res.history[-1]["next_item_loss"] < res.history[0]["next_item_loss"]
    assert m["recall@10"] > 0.5


def test_history_mask_removes_seen_items_but_never_the_target() -> None:
    from ecrec_lib.training.trainer import _history_mask

    seq = torch.tensor([[3, 1, 4, 0], [2, 2, 0, 0]])
    tgt = torch.tensor([[1, 4, 1, -1], [2, 5, -1, -1]])
    valid = tgt >= 0
    rows, items = _history_mask(seq, valid, tgt[valid])
    masked = [sorted(set(items[rows == r].tolist())) for r in range(int(valid.sum()))]
    # rows: (u0, pos0) saw {3}; (u0, pos1) saw {3, 1}; (u0, pos2) saw {3, 1, 4} but its target
    # is the repeat 1; (u1, pos0) saw only its target 2; (u1, pos1) saw {2}
    assert masked == [[3], [1, 3], [3, 4], [], [2]]


def test_cooccurrence_pairs_are_symmetric_within_the_window() -> None:
    from ecrec_lib.training.trainer import _cooccurrence_pairs

    a, b = _cooccurrence_pairs([np.array([1, 2, 3]), np.array([4]), np.array([5, 5, 6])], window=1)
    assert sorted(zip(a.tolist(), b.tolist(), strict=True)) == [(1, 2), (2, 1), (2, 3), (3, 2), (5, 6), (6, 5)]
    a, b = _cooccurrence_pairs([np.array([1, 2, 3])], window=2)
    assert (1, 3) in set(zip(a.tolist(), b.tolist(), strict=True))
    assert len(_cooccurrence_pairs([], window=3)[0]) == 0


@pytest.mark.parametrize("opts", [{"exclude_history_negatives": True}, {"cpu_bf16": True},
                                  {"cooc_loss_weight": 1.0},
                                  {"cooc_loss_weight": 1.0, "loss": "sampled_softmax", "n_negatives": 10},
                                  {"block_layout": "post_ln", "batch_by_length": False,
                                   "cooc_loss_weight": 0.0, "grad_clip": 0.0}])
def test_training_options_still_learn(tiny_bert: str, opts: dict) -> None:
    data = synthetic_data(n_items=30, n_users=120, with_queries=False)
    train, valid, test = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, use_text=False, init_id_from_text=False, epochs=8, lr=5e-3,
                     dim=32, patience=20, **opts)
    res = train_two_tower(data, mcfg, train, valid, progress=False)
    m = evaluate_scores(res.score_fn(test), test, data.n_items, ks=(10,))
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    assert m["recall@10"] > 0.6


@pytest.mark.parametrize("mode", ["finetune_top", "lora"])
def test_trainable_encoder_modes_update_encoder(tiny_bert: str, mode: str) -> None:
    data = synthetic_data(n_items=15, n_users=30)
    train, valid, _ = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, encoder_mode=mode, epochs=1, text_lr=1e-2, finetune_layers=1)
    res = train_two_tower(data, mcfg, train, valid, progress=False)
    enc = res.model.text_encoder
    assert enc.trainable
    from ecrec_lib.models.text_encoder import TextEncoder

    fresh = TextEncoder(tiny_bert, "frozen", mcfg.text_max_length)
    texts = data.item_text[:3]
    assert not np.allclose(enc.embed(texts), fresh.embed(texts), atol=1e-5)
    # The cached item text rows follow the trained encoder.
    assert np.allclose(res.model.model.item_text_emb[:3].numpy(), enc.embed(texts), atol=1e-5)
    assert np.isfinite(res.history[0]["loss"])


def test_diverging_training_raises_nan_error(tiny_bert: str) -> None:
    data = synthetic_data(n_items=20, n_users=40)
    train, valid, _ = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, lr=1e30, warmup_steps=0, grad_clip=0.0, epochs=3)
    with pytest.raises(NaNLossError, match="learning rate"):
        train_two_tower(data, mcfg, train, valid, progress=False)


def test_no_trainable_sequence_is_an_error(tiny_bert: str) -> None:
    data = synthetic_data(n_items=10, n_users=5)
    data.sequences = [s[:1] for s in data.sequences]
    data.event_types = [t[:1] for t in data.event_types]
    data.event_times = [t[:1] for t in data.event_times]
    with pytest.raises(ValueError, match="2 or more items"):
        train_two_tower(data, small_cfg(tiny_bert), data.sequences, None, progress=False)


def test_model_config_validation() -> None:
    with pytest.raises(ValueError, match="encoder_mode"):
        ModelConfig(encoder_mode="huge")
    with pytest.raises(ValueError, match="use_text / use_id"):
        ModelConfig(use_text=False, use_id=False)
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(dim=10, n_heads=3)
    with pytest.raises(ValueError, match="block_layout must be one of"):
        ModelConfig(block_layout="sandwich")


def test_model_config_from_ecrec_config() -> None:
    from ecrec_lib.config import load_config
    from ecrec_lib.training.trainer import model_config_from

    cfg = load_config(env={}, embedding_dim=32, epochs=4, encoder_mode="lora")
    m = model_config_from(cfg, dropout=0.5)
    assert (m.dim, m.epochs, m.encoder_mode, m.dropout) == (32, 4, "lora", 0.5)


# ---------------------------------------------------------------- data assembly
def _frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    catalog = pd.DataFrame({
        "item_id": ["a", "b", "c", "d"],
        "title": ["Red Lipstick", "Blue Mascara", "Green Nail Polish", "Face Cream"],
        "description": ["matte", None, "", "rich"],
        "category_path": ["Beauty > Makeup > Lips", "Beauty > Makeup > Eyes", None, "Beauty > Skin"],
        "category": ["Beauty", "Beauty", None, "Beauty"],
        "brand": ["L'Oreal", None, "OPI", "Nivea"],
    })
    seqs = pd.DataFrame({
        "user_key": ["u1", "u2", "u3", "u4"],
        "item_ids": [["a", "b", "zzz", "c"], ["d"], ["ghost"], ["a", "c", "d", "b"]],
        "event_types": [["view", "click", "view", "purchase"], ["view"], ["view"],
                        ["view", "view", "add_to_cart", "purchase"]],
        "event_times": [[10, 20, 30, 40], [5], [7], [1, 2, 3, 4]],
    })
    pairs = pd.DataFrame({"query": ["lipstick", "cream", "nothing"], "item_id": ["a", "d", "nope"],
                          "clicks": [3, 1, 1], "purchases": [1, 0, 0], "n": [5, 2, 1]})
    return catalog, seqs, pairs


def test_build_training_data_drops_and_counts_missing_items() -> None:
    catalog, seqs, pairs = _frames()
    data, stats = build_training_data(catalog, seqs, pairs)
    assert stats.n_events_missing_item == 2  # "zzz" and "ghost"
    assert stats.missing_item_examples == ["ghost", "zzz"]
    assert stats.n_users_emptied == 1  # u3 had only a missing item
    assert data.user_keys == ["u1", "u2", "u4"]
    assert [data.item_ids[i] for i in data.sequences[0]] == ["a", "b", "c"]
    assert list(data.event_types[0]) == [1, 2, 4]  # view, click, purchase (zzz's view dropped)
    assert list(data.event_times[0]) == [10, 20, 40]
    assert stats.n_single_event_users == 1 and len(data.sequences[1]) == 1  # kept for training
    assert stats.n_users_evaluable == 2
    assert stats.n_query_pairs_missing_item == 1 and len(data.query_pairs) == 2
    assert data.item_text[0] == "Red Lipstick | L'Oreal | Beauty > Makeup > Lips | matte"
    assert data.item_category == ["Beauty", "Beauty", "", "Beauty"]


def test_build_training_data_requires_columns() -> None:
    catalog, seqs, _ = _frames()
    with pytest.raises(ValueError, match="item_ids"):
        build_training_data(catalog, seqs.drop(columns=["item_ids"]))


def test_fingerprint_tracks_items_and_sequences() -> None:
    a = synthetic_data(n_items=10, n_users=5)
    b = synthetic_data(n_items=10, n_users=5)
    assert data_fingerprint(a) == data_fingerprint(b)
    b.sequences[0] = b.sequences[0][:-1]
    assert data_fingerprint(a) != data_fingerprint(b)


@pytest.mark.gpu
def test_cuda_bf16_training_matches_cpu_quality(tiny_bert: str) -> None:
    data = synthetic_data(n_items=30, n_users=120, with_queries=True)
    train, valid, test = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, epochs=8, lr=5e-3, dim=32, device="cuda", amp=True)
    res = train_two_tower(data, mcfg, train, valid, progress=False)
    assert all(np.isfinite(h["loss"]) for h in res.history)
    assert res.model.device.type == "cuda"
    m = evaluate_scores(res.score_fn(test), test, data.n_items, ks=(10,))
    assert m["recall@10"] > 0.5


def test_cpu_bf16_warns_on_a_cpu_without_native_bf16(tiny_bert: str, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import ecrec_lib.training.trainer as trainer

    data = synthetic_data(n_items=20, n_users=40, with_queries=False)
    train, valid, _ = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, use_text=False, init_id_from_text=False, epochs=1, dim=16,
                     cpu_bf16=True, device="cpu")
    for native, warned in ((False, True), (True, False)):
        monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda native=native: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger="ecrec_lib.training.trainer"):
            train_two_tower(data, mcfg, train, valid, progress=False)
        assert any("cpu_bf16=false" in r.getMessage() for r in caplog.records) is warned


class _CreatesFile:
    """Unpickling this object creates a file: the harm a crafted checkpoint could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.path), "w"))


def test_checkpoint_that_would_run_code_is_refused(tiny_bert: str, tmp_path: Path) -> None:
    from ecrec_lib.training.trainer import CheckpointError, _checkpoint_key

    data = synthetic_data(n_items=20, n_users=40)
    train, valid, _ = leave_one_out(data.sequences)
    mcfg = small_cfg(tiny_bert, epochs=1)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    marker = tmp_path / "pwned"
    # The right key, so only the safe loader stands between the file and the training task.
    torch.save({"key": _checkpoint_key(mcfg, data_fingerprint(data)), "epoch": _CreatesFile(marker)},
               ckpt / "last.pt")
    with pytest.raises(CheckpointError, match=r"not loaded.*rm .*last\.pt"):
        train_two_tower(data, mcfg, train, valid, progress=False, checkpoint_dir=str(ckpt))
    assert not marker.exists()


def test_checkpoint_holds_only_tensors_and_plain_data(tiny_bert: str, tmp_path: Path) -> None:
    data = synthetic_data(n_items=20, n_users=40)
    train, valid, _ = leave_one_out(data.sequences)
    train_two_tower(data, small_cfg(tiny_bert, epochs=1), train, valid, progress=False,
                    checkpoint_dir=str(tmp_path))
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # raises on anything else
    assert state["epoch"] == 1 and isinstance(state["history"][0]["loss"], float)


@pytest.mark.parametrize("loss", ["full_softmax", "sampled_softmax"])
def test_items_without_training_interactions_are_no_negatives(tiny_bert: str, loss: str) -> None:
    """A new (or held-out) item is never a target, so as a negative it would only be pushed
    down: the next-item and co-occurrence losses give its vector no gradient at all."""
    from ecrec_lib.training.trainer import (
        _cooc_loss,
        _cooccurrence_pairs,
        _next_item_loss,
        _training_arrays,
        build_recommender,
    )

    data = synthetic_data(n_items=30, n_users=80, with_queries=False)
    unseen = np.arange(25, 30)
    train = [s[~np.isin(s, unseen)] for s in data.sequences]
    mcfg = small_cfg(tiny_bert, loss=loss, n_negatives=30)
    rec, _, _ = build_recommender(data, mcfg, train)
    model = rec.model
    assert not model.has_id[torch.as_tensor(unseen)].any()
    arrays = _training_arrays(data, train, mcfg.max_seq_len)
    seq, tgt = torch.as_tensor(arrays.inp[:16]), torch.as_tensor(arrays.tgt[:16])
    lengths, typ = torch.as_tensor(arrays.lengths[:16]), torch.as_tensor(arrays.types[:16])
    valid = tgt >= 0
    cand = torch.arange(data.n_items)  # every item a candidate: the sampled path keeps them all
    # the item text rows as a leaf: every loss path builds item vectors from them
    model.item_text_emb = model.item_text_emb.clone().requires_grad_()
    items = model.item_vectors(cand)
    log_unigram = torch.full((data.n_items,), -np.log(data.n_items))
    use_full = loss == "full_softmax"
    a, b = (torch.as_tensor(p) for p in _cooccurrence_pairs(train, 2))
    total = (_next_item_loss(model, items, seq, seq, lengths, typ, valid, tgt[valid], tgt[valid],
                             cand, log_unigram, use_full, mcfg)
             + _cooc_loss(model, items, a, b, cand, None, np.random.default_rng(0), use_full,
                          mcfg.replace(cooc_batch_size=64)))
    assert torch.isfinite(total)
    total.backward()
    grad = model.item_text_emb.grad.abs().sum(1)
    assert grad[torch.as_tensor(unseen)].eq(0).all()
    seen_negatives = np.setdiff1d(np.arange(25), tgt[valid].numpy())
    assert grad[torch.as_tensor(seen_negatives)].gt(0).all()
