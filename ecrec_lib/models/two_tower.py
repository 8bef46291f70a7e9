"""The two-tower network: item tower (text + ID + side features), user tower (causal
transformer over the behaviour sequence) and the query head, in one shared vector space.

The text encoder itself is *not* a submodule: the network consumes its pooled output
(``item_text_emb`` / query text embeddings), so a frozen encoder costs nothing per step
and a trainable one is handled by the trainer.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecrec_lib.models.config import ModelConfig
from ecrec_lib.schema import ITEM_EVENT_TYPES

N_EVENT_CODES = len(ITEM_EVENT_TYPES) + 1  # 0: padding / unknown


def event_type_codes(types: list[str] | tuple[str, ...] | np.ndarray) -> np.ndarray:
    """Event type strings -> codes 1..4 (schema.ITEM_EVENT_TYPES order), 0 when unknown."""
    lookup = {t: i + 1 for i, t in enumerate(ITEM_EVENT_TYPES)}
    return np.asarray([lookup.get(str(t), 0) for t in types], dtype=np.int64)


class TwoTowerModel(nn.Module):
    """Item, user and query towers. All vectors leave L2-normalized (cosine ranking)."""

    def __init__(
        self,
        mcfg: ModelConfig,
        n_items: int,
        text_dim: int,
        item_category: np.ndarray,
        item_brand: np.ndarray,
        n_categories: int,
        n_brands: int,
        has_id: np.ndarray,
    ) -> None:
        super().__init__()
        d = mcfg.dim
        self.mcfg = mcfg
        self.n_items = n_items
        self.text_dim = text_dim
        # Item tower.
        if mcfg.use_text:
            self.text_proj = nn.Sequential(nn.Linear(text_dim, d), nn.GELU(), nn.Linear(d, d))
            self.query_proj = nn.Sequential(nn.Linear(text_dim, d), nn.GELU(), nn.Linear(d, d))
        if mcfg.use_id:
            self.id_emb = nn.Embedding(n_items, d)
            nn.init.normal_(self.id_emb.weight, std=0.02)
        if mcfg.use_side:
            self.cat_emb = nn.Embedding(n_categories + 1, d, padding_idx=0)
            self.brand_emb = nn.Embedding(n_brands + 1, d, padding_idx=0)
            nn.init.normal_(self.cat_emb.weight, std=0.02)
            nn.init.normal_(self.brand_emb.weight, std=0.02)
        self.item_norm = nn.LayerNorm(d) if mcfg.item_norm else nn.Identity()
        # Per-item facts; persistent so a saved state dict restores them.
        self.register_buffer("item_category", torch.as_tensor(item_category, dtype=torch.long))
        self.register_buffer("item_brand", torch.as_tensor(item_brand, dtype=torch.long))
        self.register_buffer("has_id", torch.as_tensor(has_id, dtype=torch.bool))
        # Frozen text embeddings: large, saved separately as .npy, so not in the state dict.
        self.register_buffer("item_text_emb", torch.zeros(n_items, text_dim), persistent=False)
        self.register_buffer("text_center", torch.zeros(text_dim))  # catalog mean (center_text)
        # User tower (SASRec-style, pre-LN, causal).
        self.pos_emb = nn.Embedding(mcfg.max_seq_len, d)
        self.type_emb = nn.Embedding(N_EVENT_CODES, d, padding_idx=0)
        for emb in (self.pos_emb, self.type_emb):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.type_emb.weight[0].zero_()
        self.emb_dropout = nn.Dropout(mcfg.dropout)
        post_ln = mcfg.block_layout == "post_ln"
        self.input_norm = nn.LayerNorm(d, eps=1e-12) if post_ln else nn.Identity()
        layer = nn.TransformerEncoderLayer(
            d_model=d, nhead=mcfg.n_heads, dim_feedforward=4 * d, dropout=mcfg.dropout,
            activation="gelu", batch_first=True, norm_first=not post_ln,
            layer_norm_eps=1e-12 if post_ln else 1e-5,
        )
        if post_ln:
            # SASRec's feed-forward drops out after its output only, not its hidden layer, and
            # every weight starts at N(0, 0.02)
            layer.dropout = nn.Identity()
            for name, w in layer.named_parameters():
                if w.dim() == 2:
                    nn.init.normal_(w, std=0.02)
                elif name.endswith("bias") and "norm" not in name:
                    nn.init.zeros_(w)
        self.blocks = nn.TransformerEncoder(layer, num_layers=mcfg.n_layers, enable_nested_tensor=False)
        self.final_norm = nn.Identity() if post_ln else nn.LayerNorm(d)
        init_t = math.log(1.0 / mcfg.temperature)
        self.log_inv_temp = nn.Parameter(torch.tensor(init_t), requires_grad=mcfg.learn_temperature)

    # ----------------------------------------------------------------- item tower
    def set_text_embeddings(self, emb: np.ndarray | torch.Tensor) -> None:
        t = torch.as_tensor(emb, dtype=torch.float32, device=self.item_category.device)
        if t.shape != (self.n_items, self.text_dim):
            raise ValueError(f"text embeddings must be {(self.n_items, self.text_dim)}, got {tuple(t.shape)}")
        self.item_text_emb = t

    def set_text_center(self, emb: np.ndarray | torch.Tensor) -> None:
        """Fix the centering vector to the mean of the training catalog's text embeddings."""
        with torch.no_grad():
            self.text_center.copy_(torch.as_tensor(emb, dtype=torch.float32).mean(0))

    def prep_text(self, t: torch.Tensor) -> torch.Tensor:
        """Raw pooled text embeddings -> projection input (centered + unit length)."""
        if not self.mcfg.center_text:
            return t
        return F.normalize(t - self.text_center, dim=-1)

    def init_id_from_text(self, text_emb: np.ndarray, seed: int) -> None:
        """Start the ID table from the top principal components of the text embeddings, so
        similar titles start close (it helps sparse items a lot)."""
        if not self.mcfg.use_id:
            return
        x = torch.as_tensor(text_emb, dtype=torch.float64)
        x = x - x.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        k = min(self.mcfg.dim, v.shape[0])
        proj = x @ v[:k].T
        proj = proj / proj.std().clamp_min(1e-8) * 0.02 * 5  # a bit above the random init scale
        with torch.no_grad():
            self.id_emb.weight.zero_()
            self.id_emb.weight[:, :k] = proj.float()

    def item_vectors(
        self,
        idx: torch.Tensor | None = None,
        text_emb: torch.Tensor | None = None,
        id_keep: torch.Tensor | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Vectors of items ``idx`` (all when None). ``text_emb`` overrides the cached text
        rows (trainable encoder); ``id_keep`` (bool per row) zeroes ID parts (ID dropout)."""
        if idx is None:
            idx = torch.arange(self.n_items, device=self.item_category.device)
        parts = []
        if self.mcfg.use_text:
            t = self.item_text_emb[idx] if text_emb is None else text_emb
            parts.append(self.text_proj(self.prep_text(t)))
        if self.mcfg.use_id:
            keep = self.has_id[idx]
            if id_keep is not None:
                keep = keep & id_keep
            parts.append(self.id_emb(idx) * keep.unsqueeze(-1).to(self.id_emb.weight.dtype))
        if self.mcfg.use_side:
            parts.append(self.cat_emb(self.item_category[idx]) + self.brand_emb(self.item_brand[idx]))
        v = self.item_norm(torch.stack(parts, 0).sum(0))
        return F.normalize(v, dim=-1) if normalize else v

    def side_vectors(self, text_emb: torch.Tensor | None, cat: torch.Tensor, brand: torch.Tensor) -> torch.Tensor:
        """Cold-start item vectors (no ID part) from raw text embeddings and side features."""
        parts = []
        if self.mcfg.use_text and text_emb is not None:
            parts.append(self.text_proj(self.prep_text(text_emb)))
        if self.mcfg.use_side:
            parts.append(self.cat_emb(cat) + self.brand_emb(brand))
        if not parts:  # ID-only model, unknown item: nothing to go on
            return torch.zeros(len(cat), self.mcfg.dim, device=cat.device)
        return F.normalize(self.item_norm(torch.stack(parts, 0).sum(0)), dim=-1)

    # ----------------------------------------------------------------- query tower
    def query_vectors(self, text_emb: torch.Tensor) -> torch.Tensor:
        if not self.mcfg.use_text:
            raise ValueError("this model has no text tower (use_text=False): it cannot encode queries")
        return F.normalize(self.query_proj(self.prep_text(text_emb)), dim=-1)

    # ----------------------------------------------------------------- user tower
    def user_states(
        self,
        item_table: torch.Tensor,
        seq: torch.Tensor,
        lengths: torch.Tensor,
        types: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L, dim) normalized outputs of every position (right-padded ``seq``; position j
        sees items 0..j). ``item_table`` holds item input vectors (tied with the output)."""
        b, L = seq.shape
        pos = torch.arange(L, device=seq.device)
        valid = pos.unsqueeze(0) < lengths.unsqueeze(1)
        x = item_table[seq.clamp(0, self.n_items - 1)] * valid.unsqueeze(-1)
        x = x + self.pos_emb(pos).unsqueeze(0)
        if self.mcfg.use_event_types and types is not None:
            x = x + self.type_emb(types * valid)
        x = self.emb_dropout(self.input_norm(x))
        causal = torch.triu(torch.full((L, L), float("-inf"), device=seq.device), diagonal=1)
        x = self.blocks(x, mask=causal)
        return F.normalize(self.final_norm(x), dim=-1)

    def user_vectors(self, item_table: torch.Tensor, seq: torch.Tensor, lengths: torch.Tensor,
                     types: torch.Tensor | None = None) -> torch.Tensor:
        """(B, dim) user vectors: the output at each sequence's last real position."""
        h = self.user_states(item_table, seq, lengths, types)
        last = (lengths - 1).clamp_min(0)
        return h[torch.arange(len(seq), device=seq.device), last]

    @property
    def inv_temperature(self) -> torch.Tensor:
        return self.log_inv_temp.exp().clamp(max=100.0)
