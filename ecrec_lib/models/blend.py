"""Co-occurrence blend: the two-tower softmax mixed with an item-kNN distribution.

The two-tower model generalizes (text, categories, long histories); item-to-item
co-occurrence memorizes "bought together" pairs exactly, including pairs bought in either
order. Mixing the two *distributions* over the catalog is a standard, well-behaved ensemble:

    p(i | u) = (1 - w) * softmax(cos(u, .) / tau)_i + w * knn(u, i) / sum_j knn(u, j)

``w`` and the kNN settings are chosen on the validation targets after training (``w = 0``
when the blend does not help), so the blend can only match or beat the model on validation.
Scores are reported on the cosine scale, ``s'(u, i) = tau * log(p(u, i) * Z_u)`` with
``Z_u = sum_j exp(cos(u, j) / tau)``, so an item without co-occurrence keeps
``cos(u, i) + tau * log(1 - w)``: downstream re-ranking weights keep their meaning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ecrec_lib.evaluation.baselines import ItemKNN, tune_item_knn

log = logging.getLogger(__name__)
WEIGHT_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
PARAMS_FILE = "blend.json"
SIM_FILE = "blend_sim.npz"


@dataclass
class CoocBlend:
    """A fitted item-kNN plus the mixing weight and the model's softmax temperature."""

    knn: ItemKNN
    weight: float
    inv_temperature: float

    # ------------------------------------------------------------------ scoring
    def knn_probs(self, histories: Sequence[np.ndarray],
                  columns: np.ndarray | None = None, n_columns: int = 0) -> torch.Tensor:
        """(len(histories), n_items) kNN distribution per user (rows sum to 1). ItemKNN adds a
        tiny popularity prior, so a user without co-occurrences gets the popularity
        distribution. ``histories`` hold model item indices. With ``columns``
        (model index -> column, -1 = absent), the distribution is laid out over ``n_columns``
        columns (e.g. a catalog snapshot) and renormalized over the items present there."""
        k = torch.as_tensor(self.knn.score(histories), dtype=torch.float32).clamp_min(0)
        if columns is not None:
            cols = np.asarray(columns, dtype=np.int64)
            present = np.flatnonzero(cols >= 0)
            out = torch.zeros(k.shape[0], n_columns, dtype=torch.float32)
            out[:, torch.as_tensor(cols[present])] = k[:, torch.as_tensor(present)]
            k = out
        return k / k.sum(1, keepdim=True).clamp_min(1e-12)

    def mix(self, cos: torch.Tensor, histories: Sequence[np.ndarray],
            columns: np.ndarray | None = None) -> torch.Tensor:
        """Blended scores on the cosine scale for full rows ``cos`` (n, n_columns); ``columns``
        as in :meth:`knn_probs` when the columns are not the model's items."""
        cos = torch.as_tensor(cos).float().cpu()
        if self.weight <= 0:
            return cos
        t = self.inv_temperature
        log_p_model = torch.log_softmax(cos * t, dim=1) + float(np.log1p(-self.weight))
        log_z = torch.logsumexp(cos * t, dim=1, keepdim=True)
        p_knn = self.knn_probs(histories, columns, cos.shape[1])
        log_p_knn = torch.log(self.weight * p_knn)  # -inf where no co-occurrence
        return (torch.logaddexp(log_p_model, log_p_knn) + log_z) / t

    def rescore(self, cand_idx: np.ndarray, cand_cos: np.ndarray, log_z: np.ndarray,
                histories: Sequence[np.ndarray], columns: np.ndarray | None = None,
                n_columns: int = 0) -> np.ndarray:
        """Blended scores for candidate lists (n, c) of column indices (-1 = none), given
        their cosines and each user's ``log_z = logsumexp(cos / tau)`` over all columns."""
        if self.weight <= 0:
            return cand_cos.astype(np.float64)
        t = self.inv_temperature
        p_knn = self.knn_probs(histories, columns, n_columns).numpy().astype(np.float64)
        safe = np.where(cand_idx >= 0, cand_idx, 0)
        pk = np.take_along_axis(p_knn, safe, 1) * (cand_idx >= 0)
        lz = log_z.reshape(-1, 1).astype(np.float64)
        p_model = np.exp(cand_cos.astype(np.float64) * t - lz)
        with np.errstate(divide="ignore"):
            return (np.log((1 - self.weight) * p_model + self.weight * pk) + lz) / t

    def knn_candidates(self, histories: Sequence[np.ndarray], n: int,
                       columns: np.ndarray | None = None, n_columns: int = 0) -> np.ndarray:
        """(len(histories), n) columns with the highest kNN probability (-1 where none)."""
        p = self.knn_probs(histories, columns, n_columns)
        n = min(n, p.shape[1])
        vals, idx = torch.topk(p, n, dim=1)
        return torch.where(vals > 1e-9, idx, torch.full_like(idx, -1)).numpy()

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: str | Path) -> list[str]:
        """Write the blend next to a model artifact; returns the file names written."""
        out = Path(out_dir)
        sp.save_npz(out / SIM_FILE, self.knn.sim.tocsr(), compressed=True)
        np.save(out / "blend_popularity.npy", self.knn.popularity)
        params = {"weight": self.weight, "inv_temperature": self.inv_temperature,
                  "knn": {k: getattr(self.knn, k) for k in
                          ("window", "backward_weight", "alpha", "decay", "max_history")}}
        (out / PARAMS_FILE).write_text(json.dumps(params, indent=1))
        return [SIM_FILE, "blend_popularity.npy", PARAMS_FILE]

    @classmethod
    def load(cls, root: str | Path) -> CoocBlend | None:
        root = Path(root)
        if not (root / PARAMS_FILE).is_file():
            return None
        params = json.loads((root / PARAMS_FILE).read_text())
        knn = ItemKNN(**params["knn"]).with_tables(sp.load_npz(root / SIM_FILE),
                                                   np.load(root / "blend_popularity.npy"))
        return cls(knn, float(params["weight"]), float(params["inv_temperature"]))

    def to_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "inv_temperature": self.inv_temperature,
                "knn": asdict(self.knn)}


def index_histories(model_item_ids: Sequence[str], histories: Sequence[Any]) -> list[np.ndarray]:
    """Item-id histories -> model item indices (ids the model does not know are skipped)."""
    index = {iid: i for i, iid in enumerate(model_item_ids)}
    return [np.asarray([index[str(i)] for i in (h if h is not None else []) if str(i) in index],
                       dtype=np.int64) for h in histories]


def log_partition(users: np.ndarray, items: np.ndarray, inv_temperature: float,
                  chunk: int = 32768) -> np.ndarray:
    """(n_users,) ``logsumexp(users @ items.T * inv_temperature)`` over all items, in chunks
    of items so memory stays at (n_users, chunk)."""
    u = torch.as_tensor(np.ascontiguousarray(users, dtype=np.float32))
    acc = torch.full((u.shape[0],), float("-inf"))
    for start in range(0, items.shape[0], chunk):
        e = torch.as_tensor(np.ascontiguousarray(items[start:start + chunk], dtype=np.float32))
        acc = torch.logaddexp(acc, torch.logsumexp(u @ e.T * inv_temperature, dim=1))
    return acc.numpy()


def fit_blend(
    train_seqs: Sequence[np.ndarray],
    n_items: int,
    inv_temperature: float,
    valid_histories: Sequence[np.ndarray],
    valid_eval: Callable[[Callable[[np.ndarray], torch.Tensor]], float],
    model_scores: Callable[[np.ndarray], torch.Tensor],
    weights: Sequence[float] = WEIGHT_GRID,
) -> tuple[CoocBlend, dict[str, Any]]:
    """Fit item-kNN on ``train_seqs`` (settings picked by validation NDCG@10), then the mixing
    weight. ``valid_eval(score_fn) -> ndcg@10`` evaluates a score function over the validation
    rows; ``model_scores(pos)`` returns the model's cosine rows for those rows."""
    best_knn = tune_item_knn(train_seqs, n_items, lambda knn: valid_eval(
        lambda pos: torch.as_tensor(knn.score([valid_histories[i] for i in pos]))))
    report: dict[str, Any] = {"knn_valid_ndcg@10": best_knn[0], "weights": {}}
    best: tuple[float, float] = (-1.0, 0.0)
    for w in weights:
        blend = CoocBlend(best_knn[1], float(w), inv_temperature)
        ndcg = valid_eval(lambda pos, b=blend: b.mix(model_scores(pos),
                                                      [valid_histories[i] for i in pos]))
        report["weights"][str(w)] = ndcg
        if ndcg > best[0] + 1e-12:
            best = (ndcg, float(w))
    report["weight"] = best[1]
    report["valid_ndcg@10"] = best[0]
    log.info("co-occurrence blend: weight %.2f (valid NDCG@10 %.4f; model alone %.4f, kNN alone %.4f)",
             best[1], best[0], report["weights"].get("0.0", float("nan")), best_knn[0])
    return CoocBlend(best_knn[1], best[1], inv_temperature), report
