"""Training loop of the two-tower model.

Programmatic API (used by ``jobs.train_encoders`` and ``jobs.benchmark_quality``)::

    from ecrec_lib.evaluation import leave_one_out, evaluate_scores
    from ecrec_lib.training.trainer import ModelConfig, train_two_tower, TrainResult

    train_seqs, valid, test = leave_one_out(data.sequences)
    mcfg = ModelConfig(use_text=True, epochs=50, dim=64)      # or model_config_from(cfg, epochs=5)
    result = train_two_tower(data, mcfg, train_seqs, valid, progress=True, checkpoint_dir=None)
    result.model                 # TwoTowerRecommender (ecrec_lib.models.api.Recommender + helpers)
    result.history               # one dict per epoch: loss, valid_ndcg@10, valid_recall@10, seconds...
    result.best_epoch            # weights of this epoch are the ones kept
    score_fn = result.score_fn(test)   # the served ranking (recommend) as score rows
    metrics = evaluate_scores(score_fn, test, data.n_items)
    # or directly: result.model.recommend(user_histories, now_ts, k) -> (item ids, scores)

``ModelConfig(use_text=False)`` is the ID-only SASRec-style baseline (full softmax CE).
Every prefix of every training sequence predicts its next item in one pass (causal
transformer), and the softmax runs over the whole catalog for the valid positions only, in
cache-sized chunks (:func:`ecrec_lib.training.losses.catalog_cross_entropy`). Reproducible:
same seed and data -> same loss history on CPU; an interrupted run resumes from
``checkpoint_dir/last.pt`` to the same result. The checkpoint holds only tensors and plain
containers and is read with ``torch.load(weights_only=True)``: whoever can write to the lake
must not be able to run code in the training task through a crafted pickle.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ecrec_lib.evaluation import EvalSet, evaluate_scores
from ecrec_lib.evaluation.served import served_score_fn
from ecrec_lib.models.api import UserHistory
from ecrec_lib.models.config import ModelConfig, model_config_from
from ecrec_lib.models.neighbourhood import windowed_pairs
from ecrec_lib.models.recommender import TwoTowerRecommender
from ecrec_lib.models.text_encoder import (
    TextEncoder,
    cached_text_embeddings,
    resolve_text_model_path,
)
from ecrec_lib.models.two_tower import TwoTowerModel
from ecrec_lib.schema import ITEM_EVENT_TYPES
from ecrec_lib.training.data import TrainingData, data_fingerprint
from ecrec_lib.training.losses import catalog_cross_entropy

if TYPE_CHECKING:
    from ecrec_lib.models.blend import Neighbourhood

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "ModelConfig",
    "NaNLossError",
    "TrainResult",
    "build_recommender",
    "model_config_from",
    "train_two_tower",
]

CHECKPOINT_NAME = "last.pt"


class NaNLossError(FloatingPointError):
    """The loss became NaN/inf: training stopped and nothing may be registered."""


class CheckpointError(RuntimeError):
    """A training checkpoint holds something other than tensors and plain data: not loaded."""


def _plain(value: Any) -> Any:
    """``value`` as tensors and plain Python containers and scalars only (numpy scalars become
    Python numbers), so that ``torch.load(weights_only=True)`` reads it back."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value)
    return value


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"training checkpoint {path} holds objects other than tensors and plain data, so "
            "this trainer did not write it (or it was altered); it is not loaded, because "
            f"unpickling it could run code ({str(exc).splitlines()[0][:200]}). Find out who "
            f"wrote it, then delete it to train from scratch: rm {path}"
        ) from None


@dataclass
class TrainResult:
    model: TwoTowerRecommender
    history: list[dict[str, float]]
    best_epoch: int  # 1-based; 0 when no validation happened
    best_valid: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""
    resumed_from_epoch: int = 0
    data: TrainingData | None = None

    def score_fn(self, eval_set: EvalSet, blend: bool = True) -> Callable[[np.ndarray], Any]:
        """A ``score_fn`` for :func:`ecrec_lib.evaluation.evaluate_scores` over ``eval_set``:
        the served ranking (``recommend``, blend and ranker included); ``blend=False``: the
        two towers' cosine alone."""
        if not blend:
            return make_score_fn(self.model, eval_set, self.data)
        return served_score_fn(self.model, eval_histories(self.model.item_ids, eval_set, self.data),
                               eval_set, self.model.item_ids, None)


def resolve_device(mcfg: ModelConfig) -> torch.device:
    if mcfg.device == "cuda" or (mcfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device=cuda requested but no CUDA GPU is available; use device=auto")
        return torch.device("cuda")
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 matmuls natively (AVX512-BF16 or AMX tiles), the only
    case where ``cpu_bf16`` autocast speeds training up instead of slowing it down."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def _vocab(values: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Sorted vocabulary of non-empty values and 1-based codes (0 = unknown)."""
    vocab = sorted({v for v in values if v})
    lookup = {v: i + 1 for i, v in enumerate(vocab)}
    return vocab, np.asarray([lookup.get(v, 0) for v in values], dtype=np.int64)


def build_recommender(
    data: TrainingData,
    mcfg: ModelConfig,
    train_seqs: Sequence[np.ndarray],
    cache_dir: str | None = None,
) -> tuple[TwoTowerRecommender, TextEncoder | None, np.ndarray | None]:
    """An untrained recommender for ``data`` (text embeddings computed or read from cache)."""
    device = resolve_device(mcfg)
    need_text = mcfg.use_text or (mcfg.init_id_from_text and mcfg.use_id)
    encoder: TextEncoder | None = None
    text_emb: np.ndarray | None = None
    text_dim = 1
    if need_text:
        path = resolve_text_model_path(mcfg.text_model_path)
        mode = mcfg.encoder_mode if mcfg.use_text else "frozen"
        encoder = TextEncoder(path, mode, mcfg.text_max_length, mcfg.finetune_layers,
                              mcfg.lora_r, mcfg.lora_alpha)
        t0 = time.time()
        text_emb = cached_text_embeddings(encoder, data.item_text, cache_dir, mcfg.text_batch_size)
        log.info("item text embeddings %s in %.1fs", text_emb.shape, time.time() - t0)
        text_dim = encoder.hidden_size
        encoder.to(device)
    categories, cat_codes = _vocab(data.item_category)
    brands, brand_codes = _vocab(data.item_brand)
    has_id = np.zeros(data.n_items, dtype=bool)
    for s in train_seqs:
        has_id[np.asarray(s, dtype=np.int64)] = True
    model = TwoTowerModel(mcfg, data.n_items, text_dim, cat_codes, brand_codes,
                          len(categories), len(brands), has_id)
    if text_emb is not None and mcfg.use_text:
        model.set_text_embeddings(text_emb)
        model.set_text_center(text_emb)
    if text_emb is not None and mcfg.init_id_from_text and mcfg.use_id:
        model.init_id_from_text(text_emb, mcfg.seed)
    model.to(device)
    if text_emb is not None and mcfg.use_text:
        model.set_text_embeddings(text_emb)
    rec = TwoTowerRecommender(
        model, mcfg, data.item_ids, data.item_text, categories, brands,
        text_encoder=encoder if mcfg.use_text else None,
    )
    return rec, (encoder if mcfg.use_text else None), text_emb


# ---------------------------------------------------------------------- batches
@dataclass
class _SeqArrays:
    """Right-padded training windows: position j of ``inp`` predicts ``tgt[:, j]``."""

    inp: np.ndarray  # (N, L) item idx
    tgt: np.ndarray  # (N, L) next item idx, -1 where no target
    lengths: np.ndarray  # (N,)
    types: np.ndarray  # (N, L)


def _aligned_types(data: TrainingData, train_seqs: Sequence[np.ndarray]) -> list:
    """Event types aligned with ``train_seqs`` when they are prefixes of ``data.sequences``
    (what leave_one_out returns); None entries otherwise."""
    types: list[np.ndarray | None] = []
    aligned = len(train_seqs) == len(data.sequences)
    for u, s in enumerate(train_seqs):
        n = len(s)
        ok = aligned and n <= len(data.sequences[u]) and np.array_equal(data.sequences[u][:n], s)
        types.append(data.event_types[u][:n] if ok and data.event_types is not None else None)
    return types


def _training_arrays(data: TrainingData, train_seqs: Sequence[np.ndarray], L: int) -> _SeqArrays:
    types = _aligned_types(data, train_seqs)
    rows = [u for u, s in enumerate(train_seqs) if len(s) >= 2]
    n = len(rows)
    inp = np.zeros((n, L), dtype=np.int64)
    tgt = np.full((n, L), -1, dtype=np.int64)
    lengths = np.zeros(n, dtype=np.int64)
    typ = np.zeros((n, L), dtype=np.int64)
    for r, u in enumerate(rows):
        w = np.asarray(train_seqs[u], dtype=np.int64)[-(L + 1):]
        k = len(w) - 1
        inp[r, :k] = w[:-1]
        tgt[r, :k] = w[1:]
        lengths[r] = k
        if types[u] is not None:
            typ[r, :k] = types[u][-(L + 1):][:-1]
    return _SeqArrays(inp, tgt, lengths, typ)


def _eval_types(data: TrainingData | None, eval_set: EvalSet) -> list | None:
    """Event types of eval rows (None without them, or when a history is not a prefix of its
    user's sequence)."""
    if data is None or data.event_types is None:
        return None
    types = []
    for u, h in zip(eval_set.users, eval_set.histories, strict=True):
        n = len(h)
        seq = data.sequences[int(u)]
        if len(seq) < n or not np.array_equal(seq[:n], h):
            return None
        types.append(data.event_types[int(u)][:n])
    return types


def eval_anchor_times(data: TrainingData | None, eval_set: EvalSet) -> np.ndarray | None:
    """Each eval row's time context (:func:`~ecrec_lib.models.ranker.time_context`: its last
    history event time, the one before, the events in the last day): the learned ranker's
    "now" (NaN for an empty history); None without event times, or when a history is not a
    prefix of its user's sequence."""
    from ecrec_lib.models.ranker import time_context

    if data is None or data.event_times is None:
        return None
    times = []
    for u, h in zip(eval_set.users, eval_set.histories, strict=True):
        seq = data.sequences[int(u)]
        if len(seq) < len(h) or not np.array_equal(seq[:len(h)], h):
            return None
        times.append(data.event_times[int(u)][:len(h)])
    return time_context(times)


def make_score_fn(rec: TwoTowerRecommender, eval_set: EvalSet, data: TrainingData | None = None,
                  ) -> Callable[[np.ndarray], torch.Tensor]:
    """The two towers' cosine rows for ``eval_set`` (early stopping and the blend's search)."""
    types = _eval_types(data, eval_set)

    def score_fn(pos: np.ndarray) -> torch.Tensor:
        hist = [eval_set.histories[i] for i in pos]
        t = [types[i] for i in pos] if types is not None else None
        return rec.score_histories(hist, t).cpu()

    return score_fn


def eval_histories(item_ids: Sequence[str], eval_set: EvalSet, data: TrainingData | None = None,
                   ) -> list[UserHistory]:
    """Eval rows as served histories (item ids; event types and times where ``data`` has them
    and the row's history is a prefix of its user's sequence)."""
    ids = np.asarray(item_ids, dtype=object)
    out = []
    for u, h in zip(eval_set.users, eval_set.histories, strict=True):
        h = np.asarray(h, dtype=np.int64)
        types: list[str] = []
        times: list[int] = []
        seq = data.sequences[int(u)] if data is not None else None
        if seq is not None and len(seq) >= len(h) and np.array_equal(seq[:len(h)], h):
            # each on its own: a dataset with times and no event types (Amazon reviews) must
            # still give the ranker its time context, or its time features go missing
            if data.event_types is not None:
                names = ("", *ITEM_EVENT_TYPES)  # codes 1..4, 0 unknown (event_type_codes)
                types = [names[int(c)] for c in data.event_types[int(u)][:len(h)]]
            if data.event_times is not None:
                times = [int(t) for t in data.event_times[int(u)][:len(h)]]
        out.append(UserHistory(ids[h].tolist(), types, times))
    return out


# ---------------------------------------------------------------------- training
def _lr_lambda(mcfg: ModelConfig, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if mcfg.warmup_steps and step < mcfg.warmup_steps:
            return (step + 1) / mcfg.warmup_steps
        if mcfg.lr_schedule == "cosine":
            rest = max(1, total_steps - mcfg.warmup_steps)
            p = min(1.0, (step - mcfg.warmup_steps) / rest)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p))
        return 1.0

    return f


def _checkpoint_key(mcfg: ModelConfig, fingerprint: str) -> dict[str, Any]:
    d = mcfg.to_dict()
    for volatile in ("epochs", "patience", "device", "num_threads"):
        d.pop(volatile, None)  # may change between the interrupted and the resumed run
    return {"config": d, "fingerprint": fingerprint}


def _state_copy(module: torch.nn.Module | None) -> dict[str, torch.Tensor] | None:
    if module is None:
        return None
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def train_two_tower(
    data: TrainingData,
    mcfg: ModelConfig,
    train_seqs: Sequence[np.ndarray],
    valid: EvalSet | None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    cache_dir: str | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    neighbourhood: Neighbourhood | None = None,
    refit_seqs: Sequence[np.ndarray] | None = None,
    refit_neighbourhood: Neighbourhood | None = None,
) -> TrainResult:
    """Train on ``train_seqs`` (item-index sequences, e.g. leave_one_out's train part);
    early-stop on ``valid`` NDCG@10 and return the best weights.

    ``checkpoint_dir``: the state is saved there after every epoch and a run with the
    same config and data resumes from it. ``cache_dir``: where frozen text embeddings are
    cached. ``on_epoch`` gets each epoch's history row (MLflow logging).
    ``neighbourhood``: the blend's parts already fitted on ``train_seqs`` and ``valid``
    (:func:`fit_blend_neighbourhood`, the same for every seed), reused instead of refitted.
    ``refit_seqs``: once validation has chosen the blend, its neighbourhood parts are fitted
    again with the same settings on these sequences (``train_seqs`` with the validation
    targets, :func:`~ecrec_lib.evaluation.split.with_validation_targets`) and served;
    ``refit_neighbourhood``: that refit already done (shared by the benchmark's seeds). With
    neither, or ``mcfg.refit_neighbourhood`` off, the parts fitted on ``train_seqs`` are served.
    Raises :class:`NaNLossError` when the loss is not finite.
    """
    data.validate()
    if mcfg.num_threads:
        torch.set_num_threads(mcfg.num_threads)
    torch.manual_seed(mcfg.seed)
    fingerprint = data_fingerprint(data)
    arrays = _training_arrays(data, train_seqs, mcfg.max_seq_len)
    if len(arrays.lengths) == 0:
        raise ValueError("no training sequence has 2 or more items: nothing to learn from")
    device = resolve_device(mcfg)
    rec, encoder, text_emb = build_recommender(data, mcfg, train_seqs, cache_dir)
    model = rec.model
    n_items = data.n_items
    use_full = mcfg.loss == "full_softmax" or (
        mcfg.loss == "auto" and n_items <= mcfg.full_softmax_max_items)
    trainable_text = encoder is not None and encoder.trainable

    queries = _QueryPairs.build(data.query_pairs if mcfg.use_text else [], encoder,
                                trainable_text, mcfg, device)
    # Popularity of targets: proposal of in-batch negatives for the logQ correction.
    counts = np.bincount(arrays.tgt[arrays.tgt >= 0], minlength=n_items).astype(np.float64)
    log_unigram = torch.as_tensor(np.log((counts + 1e-3) / (counts + 1e-3).sum()), device=device)
    # Co-occurrence pairs (both directions) for the item-item loss.
    cooc_a, cooc_b = (torch.as_tensor(p, device=device) for p in (
        _cooccurrence_pairs(train_seqs, mcfg.cooc_window) if mcfg.cooc_loss_weight > 0
        else (np.zeros(0, np.int64), np.zeros(0, np.int64))))

    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params, "lr": mcfg.lr}]
    if trainable_text:
        groups.append({"params": [p for p in encoder.parameters() if p.requires_grad],
                       "lr": mcfg.text_lr})
    opt = torch.optim.AdamW(groups, lr=mcfg.lr, weight_decay=mcfg.weight_decay, foreach=True)
    n_rows = len(arrays.lengths)
    steps_per_epoch = math.ceil(n_rows / mcfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(mcfg, steps_per_epoch * mcfg.epochs))

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"epoch": 0, "ndcg": -1.0, "model": None, "text": None, "valid": {}}
    bad_epochs = 0
    start_epoch = 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    key = _checkpoint_key(mcfg, fingerprint)
    if ckpt_path is not None and ckpt_path.is_file():
        state = _load_checkpoint(ckpt_path, device)
        if state.get("key") == key:
            model.load_state_dict(state["model"])
            if trainable_text and state.get("text") is not None:
                encoder.load_state_dict(state["text"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history, best, bad_epochs = state["history"], state["best"], state["bad_epochs"]
            start_epoch = state["epoch"]
            log.info("resumed from %s after epoch %d", ckpt_path, start_epoch)
        else:
            log.warning("ignoring checkpoint %s: it belongs to another config or data set", ckpt_path)
    resumed_from = start_epoch

    autocast = _autocast(mcfg, device)
    runner = _EpochRunner(model, encoder, trainable_text, opt, sched, params, groups, arrays,
                          queries, cooc_a, cooc_b, log_unigram, data.item_text, use_full,
                          autocast, mcfg, device, progress)

    valid_eval = valid if valid is not None and len(valid) else None
    if valid_eval is not None:
        # A fixed random subset: early stopping needs a stable signal, not every user.
        valid_eval = valid_eval.sample(mcfg.valid_sample_users, np.random.default_rng(mcfg.seed))

    for epoch in range(start_epoch + 1, mcfg.epochs + 1):
        row = runner.run(epoch, first=epoch == start_epoch + 1)
        rec.invalidate()
        if valid_eval is not None:
            m = _validate(rec, valid_eval, data, mcfg)
            row.update(m)
            if m["valid_ndcg@10"] > best["ndcg"]:
                best = {"epoch": epoch, "ndcg": m["valid_ndcg@10"], "model": _state_copy(model),
                        "text": _state_copy(encoder) if trainable_text else None,
                        "valid": {"ndcg@10": m["valid_ndcg@10"], "recall@10": m["valid_recall@10"]}}
                bad_epochs = 0
            else:
                bad_epochs += 1
        history.append(row)
        log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
        if on_epoch is not None:
            on_epoch(row)
        if ckpt_path is not None:
            _save_checkpoint(ckpt_path, {
                "key": key, "epoch": epoch, "model": _state_copy(model),
                "text": _state_copy(encoder) if trainable_text else None,
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "history": history, "best": best, "bad_epochs": bad_epochs,
            })
        if valid_eval is not None and bad_epochs >= mcfg.patience:
            log.info("early stop after epoch %d (best epoch %d)", epoch, best["epoch"])
            break

    if best["model"] is not None:
        model.load_state_dict(best["model"])
        if trainable_text and best["text"] is not None:
            encoder.load_state_dict(best["text"])
    if trainable_text:
        model.set_text_embeddings(encoder.embed(data.item_text, mcfg.text_batch_size))
    model.eval()
    rec.invalidate()
    rec.metadata.update({"best_epoch": best["epoch"], "fingerprint": fingerprint,
                          "model_config": mcfg.to_dict()})
    if mcfg.cooc_blend and valid_eval is not None:
        rec.blend, report, neighbourhood = _fit_blend(rec, data, train_seqs, valid_eval, mcfg,
                                                      text_emb, neighbourhood)
        if rec.blend is not None and mcfg.refit_neighbourhood and (
                refit_neighbourhood is not None or refit_seqs is not None):
            if refit_neighbourhood is None:
                assert refit_seqs is not None
                refit_neighbourhood = refit_blend_neighbourhood(neighbourhood, data, mcfg,
                                                                refit_seqs, text_emb)
            rec.blend = rec.blend.with_parts(refit_neighbourhood)
            report["refit"] = refit_report(refit_neighbourhood)
        rec.metadata["blend"] = report
    return TrainResult(rec, history, best["epoch"], best["valid"], fingerprint, resumed_from, data)


@dataclass
class _QueryPairs:
    """Search-box (query, item, weight) pairs for the query loss; ``emb``: frozen query text
    embeddings computed once (None when the encoder trains, which re-encodes each step)."""

    texts: list[str]
    rows: np.ndarray  # query row of each pair
    items: np.ndarray
    weights: np.ndarray
    emb: torch.Tensor | None

    @property
    def n(self) -> int:
        return len(self.rows)

    @classmethod
    def build(cls, pairs: Sequence[tuple[str, int, float]], encoder: TextEncoder | None,
              trainable_text: bool, mcfg: ModelConfig, device: torch.device) -> _QueryPairs:
        texts = sorted({q for q, _, _ in pairs})
        index = {q: i for i, q in enumerate(texts)}
        emb = None
        if len(pairs) and not trainable_text:
            assert encoder is not None
            emb = torch.as_tensor(encoder.embed(texts, mcfg.text_batch_size), device=device)
        return cls(texts, np.asarray([index[q] for q, _, _ in pairs], dtype=np.int64),
                   np.asarray([i for _, i, _ in pairs], dtype=np.int64),
                   np.asarray([w for _, _, w in pairs], dtype=np.float32), emb)


def _autocast(mcfg: ModelConfig, device: torch.device) -> Any:
    """bf16 autocast on CUDA (``amp``) or on CPU (``cpu_bf16``), else a no-op context."""
    if mcfg.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if mcfg.cpu_bf16 and device.type == "cpu":
        if not cpu_has_native_bf16():
            log.warning(
                "cpu_bf16=true on a CPU without native bf16 (no AVX512-BF16 or AMX; torch reports "
                "%s): bf16 is emulated there and training runs several times slower (3.7-3.8x "
                "per step on a 2-core AVX2 EPYC, BENCHMARKS.md); set cpu_bf16=false",
                torch.backends.cpu.get_cpu_capability())
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return _NullCtx()


def _candidate_ids(seq: torch.Tensor, targets: torch.Tensor, neg: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampled softmax: the step's candidate items (history, targets, uniform negatives) and
    the history and targets as positions in them."""
    cand, inverse = torch.unique(torch.cat([seq.reshape(-1), targets, neg]), return_inverse=True)
    return (cand, inverse[: seq.numel()].view_as(seq),
            inverse[seq.numel(): seq.numel() + len(targets)])


def _unseen_bias(model: TwoTowerModel, cand: torch.Tensor) -> torch.Tensor | None:
    """A logit bias removing the candidates with no training interaction from a softmax (-inf),
    or None when every candidate has one. Such an item (new to the catalog, or held out) is never
    a target, so as a negative it would only ever be pushed down, and its text vector would rank
    below every trained item's when it is new and only its text can recommend it."""
    unseen = ~model.has_id[cand]
    if not bool(unseen.any()):
        return None
    return torch.zeros(len(cand), dtype=torch.float32, device=cand.device).masked_fill_(
        unseen, float("-inf"))


def _fresh_text_rows(model: TwoTowerModel, encoder: TextEncoder, texts: Sequence[str],
                     cand: torch.Tensor, batch_items: torch.Tensor, mcfg: ModelConfig) -> torch.Tensor:
    """The candidates' text rows, the step's own items re-encoded with gradient (finetune)."""
    rows = model.item_text_emb[cand].clone()
    sub = batch_items[: mcfg.max_text_items_per_step]
    fresh = encoder([texts[i] for i in sub.tolist()]).to(rows.dtype)
    return rows.index_put((torch.searchsorted(cand, sub),), fresh)


def _next_item_loss(model: TwoTowerModel, items: torch.Tensor, seq: torch.Tensor,
                    seq_c: torch.Tensor, lengths: torch.Tensor, typ: torch.Tensor,
                    valid_pos: torch.Tensor, targets: torch.Tensor, tgt_c: torch.Tensor,
                    cand: torch.Tensor, log_unigram: torch.Tensor, use_full: bool,
                    mcfg: ModelConfig) -> torch.Tensor:
    """Softmax cross-entropy of every position's next item over the candidates (the whole
    catalog, or sampled with a logQ correction), the position's seen items masked out."""
    states = model.user_states(items, seq_c, lengths, typ)
    # Temperature folded into the (N, d) side: one pass less over (N, n_items).
    h = states[valid_pos] * model.inv_temperature
    m_rows = m_cols = log_q = None
    if use_full and mcfg.exclude_history_negatives:
        m_rows, m_cols = _history_mask(seq, valid_pos, targets)
    if not use_full:
        # logQ correction: candidates were proposed by popularity (in-batch) and uniformly;
        # subtracting log q keeps the softmax unbiased.
        n_items = model.n_items
        q = len(targets) * log_unigram[cand].exp() + mcfg.n_negatives / n_items
        log_q = -torch.log(q.clamp_min(1e-12))
    unseen = _unseen_bias(model, cand)
    if unseen is not None:
        log_q = unseen if log_q is None else log_q + unseen
    return catalog_cross_entropy(h, items, tgt_c, m_rows, m_cols, log_q)


def _query_loss(model: TwoTowerModel, queries: _QueryPairs, items: torch.Tensor,
                neg: torch.Tensor | None, encoder: TextEncoder | None, trainable_text: bool,
                rng: np.random.Generator, use_full: bool, mcfg: ModelConfig) -> torch.Tensor:
    """Weighted cross-entropy of a sample of search queries against their clicked items."""
    device = items.device
    sel = rng.choice(queries.n, size=min(mcfg.query_batch_size, queries.n), replace=False)
    if trainable_text:
        assert encoder is not None
        qv = model.query_vectors(encoder([queries.texts[r] for r in queries.rows[sel]]))
    else:
        assert queries.emb is not None
        qv = model.query_vectors(queries.emb[torch.as_tensor(queries.rows[sel], device=device)])
    q_tgt = torch.as_tensor(queries.items[sel], device=device)
    if use_full:
        logits, labels = (qv * model.inv_temperature) @ items.T, q_tgt
    else:
        assert neg is not None
        q_cand = torch.unique(torch.cat([q_tgt, neg]))
        logits = (qv * model.inv_temperature) @ model.item_vectors(q_cand).T
        labels = torch.searchsorted(q_cand, q_tgt)
    w = torch.as_tensor(queries.weights[sel], device=device)
    return (F.cross_entropy(logits.float(), labels, reduction="none") * w).sum() / w.sum()


def _cooc_loss(model: TwoTowerModel, items: torch.Tensor, cooc_a: torch.Tensor,
               cooc_b: torch.Tensor, neg: torch.Tensor | None, id_keep: torch.Tensor | None,
               rng: np.random.Generator, use_full: bool, mcfg: ModelConfig) -> torch.Tensor:
    """Item-item cross-entropy: an item predicts an item bought near it (both orders)."""
    device = items.device
    sel = torch.as_tensor(rng.integers(0, len(cooc_a), mcfg.cooc_batch_size), device=device)
    a, b = cooc_a[sel], cooc_b[sel]
    if use_full:
        c_idx, c_items, a_pos, b_pos = torch.arange(model.n_items, device=device), items, a, b
    else:
        assert neg is not None
        c_idx = torch.unique(torch.cat([a, b, neg]))
        c_items = model.item_vectors(c_idx, id_keep=id_keep[c_idx] if id_keep is not None else None)
        a_pos, b_pos = torch.searchsorted(c_idx, a), torch.searchsorted(c_idx, b)
    # an item is trivially closest to itself: it is not a candidate
    return catalog_cross_entropy(c_items[a_pos] * model.inv_temperature, c_items, b_pos,
                                 torch.arange(len(a_pos), device=device), a_pos,
                                 _unseen_bias(model, c_idx))


def _validate(rec: TwoTowerRecommender, valid: EvalSet, data: TrainingData,
              mcfg: ModelConfig) -> dict[str, float]:
    """The epoch's validation row: the towers' NDCG@10 and recall@10 (early stopping)."""
    t0 = time.time()
    m = evaluate_scores(make_score_fn(rec, valid, data), valid, data.n_items, ks=(10,),
                        batch_size=mcfg.eval_batch_size, beyond_accuracy=False)
    return {"valid_ndcg@10": m["ndcg@10"], "valid_recall@10": m["recall@10"],
            "eval_seconds": time.time() - t0}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write the state atomically: an interruption never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(_plain(state), tmp)
    tmp.replace(path)


class _EpochRunner:
    """One pass over the training windows: the step's candidates, its three losses (next
    item, search queries, co-occurrence), the update, and the epoch's history row."""

    def __init__(self, model: TwoTowerModel, encoder: TextEncoder | None, trainable_text: bool,
                 opt: torch.optim.Optimizer, sched: Any, params: list[torch.nn.Parameter],
                 groups: list[dict[str, Any]], arrays: _SeqArrays, queries: _QueryPairs,
                 cooc_a: torch.Tensor, cooc_b: torch.Tensor, log_unigram: torch.Tensor,
                 texts: Sequence[str], use_full: bool, autocast: Any, mcfg: ModelConfig,
                 device: torch.device, progress: bool) -> None:
        self.model, self.encoder, self.trainable_text = model, encoder, trainable_text
        self.opt, self.sched, self.params, self.groups = opt, sched, params, groups
        self.lengths = arrays.lengths
        self.t_inp, self.t_tgt = torch.as_tensor(arrays.inp), torch.as_tensor(arrays.tgt)
        self.t_len, self.t_typ = torch.as_tensor(arrays.lengths), torch.as_tensor(arrays.types)
        self.queries, self.cooc_a, self.cooc_b = queries, cooc_a, cooc_b
        self.log_unigram, self.texts, self.use_full = log_unigram, texts, use_full
        self.autocast, self.mcfg, self.device, self.progress = autocast, mcfg, device, progress
        self.n_items = model.n_items
        self.all_idx = torch.arange(self.n_items, device=device)
        self.use_id_dropout = mcfg.use_id and mcfg.id_dropout > 0 and (mcfg.use_text or mcfg.use_side)

    def run(self, epoch: int, first: bool) -> dict[str, float]:
        """Train one epoch (``first``: the first of this call, resumed or not); its row."""
        mcfg, model, encoder = self.mcfg, self.model, self.encoder
        # Per-epoch seeds: data order, dropout and ID-dropout do not depend on whether the
        # run was resumed, so an interrupted run ends where an uninterrupted one does.
        torch.manual_seed(mcfg.seed * 100_003 + epoch)
        rng = np.random.default_rng([mcfg.seed, epoch])
        if self.trainable_text and first:
            model.set_text_embeddings(encoder.embed(self.texts, mcfg.text_batch_size))
        model.train()
        if encoder is not None:
            encoder.train(self.trainable_text)
        if mcfg.batch_by_length:
            batches = _length_bucketed_batches(self.lengths, mcfg.batch_size, rng)
        else:
            order = rng.permutation(len(self.lengths))
            batches = [order[i:i + mcfg.batch_size] for i in range(0, len(order), mcfg.batch_size)]
        t0 = time.time()
        tot = tot_next = tot_q = tot_c = 0.0
        bar = _progress(range(len(batches)), self.progress, f"epoch {epoch}/{mcfg.epochs}")
        for step in bar:
            loss, loss_next, loss_q, loss_c = self._step(batches[step], rng)
            if not torch.isfinite(loss):
                raise NaNLossError(
                    f"loss became {loss.item()} at epoch {epoch}, step {step + 1}: training stopped "
                    "and nothing is registered; lower the learning rate (learning_rate) or check "
                    "the input data for extreme values"
                )
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if mcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for g in self.groups for p in g["params"]],
                                               mcfg.grad_clip)
            self.opt.step()
            self.sched.step()
            tot += loss.item()
            tot_next += loss_next.item()
            tot_q += loss_q.item()
            tot_c += loss_c.item()
            if self.progress and hasattr(bar, "set_postfix"):
                done = min((step + 1) * mcfg.batch_size, len(self.lengths))
                bar.set_postfix(loss=f"{tot / (step + 1):.4f}", seq_s=f"{done / (time.time() - t0):.0f}")
        secs = time.time() - t0
        if not all(torch.isfinite(p).all() for p in self.params):
            raise NaNLossError(
                f"model weights became NaN/inf in epoch {epoch}: training stopped and nothing is "
                "registered; lower the learning rate (learning_rate)"
            )
        if self.trainable_text:  # the cached item text rows must follow the encoder's updates
            model.set_text_embeddings(encoder.embed(self.texts, mcfg.text_batch_size))
        return {
            "epoch": float(epoch),
            "loss": tot / len(batches),
            "next_item_loss": tot_next / len(batches),
            "query_loss": tot_q / len(batches),
            "cooc_loss": tot_c / len(batches),
            "lr": float(self.sched.get_last_lr()[0]),
            "train_seconds": secs,
            "seq_per_s": len(self.lengths) / max(secs, 1e-9),
        }

    def _step(self, rows_np: np.ndarray, rng: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total loss, next-item loss, query loss, co-occurrence loss) of one batch."""
        mcfg, model, device = self.mcfg, self.model, self.device
        rows = torch.as_tensor(rows_np)
        seq, tgt = self.t_inp[rows].to(device), self.t_tgt[rows].to(device)
        lengths, typ = self.t_len[rows].to(device), self.t_typ[rows].to(device)
        L_used = int(lengths.max())
        seq, tgt, typ = seq[:, :L_used], tgt[:, :L_used], typ[:, :L_used]
        valid_pos = tgt >= 0
        targets = tgt[valid_pos]
        id_keep = ((torch.rand(self.n_items, device=device) >= mcfg.id_dropout)
                   if self.use_id_dropout else None)
        batch_items = torch.unique(torch.cat([seq[valid_pos], targets]))
        with self.autocast:
            neg = None if self.use_full else torch.randint(0, self.n_items, (mcfg.n_negatives,),
                                                           device=device)
            cand, seq_c, tgt_c = ((self.all_idx, seq, targets) if self.use_full
                                  else _candidate_ids(seq, targets, neg))
            text_rows = None
            if self.trainable_text:
                text_rows = _fresh_text_rows(model, self.encoder, self.texts, cand, batch_items, mcfg)
            items = model.item_vectors(cand, text_emb=text_rows,
                                       id_keep=id_keep[cand] if id_keep is not None else None)
            loss_next = _next_item_loss(model, items, seq, seq_c, lengths, typ, valid_pos, targets,
                                        tgt_c, cand, self.log_unigram, self.use_full, mcfg)
            loss = loss_next
            loss_q = torch.zeros((), device=device)
            if self.queries.n:
                loss_q = _query_loss(model, self.queries, items, neg, self.encoder,
                                     self.trainable_text, rng, self.use_full, mcfg)
                loss = loss + mcfg.query_loss_weight * loss_q
            loss_c = torch.zeros((), device=device)
            if len(self.cooc_a):
                loss_c = _cooc_loss(model, items, self.cooc_a, self.cooc_b, neg, id_keep, rng,
                                    self.use_full, mcfg)
                loss = loss + mcfg.cooc_loss_weight * loss_c
        return loss, loss_next, loss_q, loss_c


def _fit_blend(rec: TwoTowerRecommender, data: TrainingData, train_seqs: Sequence[np.ndarray],
               valid: EvalSet, mcfg: ModelConfig, text_emb: np.ndarray | None = None,
               neighbourhood: Neighbourhood | None = None
               ) -> tuple[Any, dict[str, Any], Neighbourhood]:
    """Fit the co-occurrence blend on the training sequences; weight chosen on ``valid``
    (``text_emb``: the pretrained text encoder's item vectors, for the learned ranker's text
    features; ``neighbourhood``: the parts already fitted, reused).
    Returns (blend, report, the parts it was chosen with); the blend is None when validation
    prefers the model alone (weight 0)."""
    from ecrec_lib.models.blend import BLEND_CACHE_FLOATS, fit_blend

    n_valid = len(valid)
    valid = blend_rows(valid, data.n_items, BLEND_CACHE_FLOATS, mcfg.seed)
    if len(valid) < n_valid:
        log.info("blend search on %d of %d validation rows (a seeded sample: all of them would "
                 "not fit the search's cache)", len(valid), n_valid)
    model_scores = make_score_fn(rec, valid, data)
    valid_eval = _blend_valid_eval(valid, data, mcfg)
    if neighbourhood is None:
        neighbourhood = fit_blend_neighbourhood(data, mcfg, train_seqs, valid, text_emb)
    t0 = time.time()
    blend, report = fit_blend(train_seqs, data.n_items, float(rec.model.inv_temperature.detach()),
                              valid.histories, valid_eval, model_scores,
                              valid_anchor_ts=eval_anchor_times(data, valid),
                              neighbourhood=neighbourhood)
    report["valid_rows"] = len(valid)
    report["seconds"] = round(time.time() - t0 + neighbourhood.seconds, 1)
    report["neighbourhood_seconds"] = round(neighbourhood.seconds, 1)
    return (blend if blend.weight > 0 else None), report, neighbourhood


def blend_rows(valid: EvalSet, n_items: int, cache_floats: int, seed: int) -> EvalSet:
    """``valid``, or a seeded sample of its rows small enough for the blend search to hold its
    parts (5 floats per row and item within ``cache_floats``; at least 1,000 rows): the search
    evaluates hundreds of settings, and without its cache each recomputes every part."""
    from ecrec_lib.models.blend import cacheable_rows

    limit = max(1_000, cacheable_rows(n_items, cache_floats))
    return valid.sample(limit, np.random.default_rng([seed, 1]))


def _blend_valid_eval(valid: EvalSet, data: TrainingData, mcfg: ModelConfig
                      ) -> Callable[[Callable[[np.ndarray], torch.Tensor]], float]:
    def valid_eval(fn: Callable[[np.ndarray], torch.Tensor]) -> float:
        return evaluate_scores(fn, valid, data.n_items, ks=(10,), batch_size=mcfg.eval_batch_size,
                               beyond_accuracy=False)["ndcg@10"]
    return valid_eval


def fit_blend_neighbourhood(data: TrainingData, mcfg: ModelConfig, train_seqs: Sequence[np.ndarray],
                            valid: EvalSet, text_emb: np.ndarray | None = None) -> Neighbourhood:
    """The blend's neighbourhood parts (item-kNN tuned on ``valid``, user-kNN, the linear
    model, and the learned ranker when ``mcfg.ranker``), exactly as :func:`train_two_tower`
    fits them after training; none depends on the neural model, so one fit serves every model
    trained on the same split (pass it as ``train_two_tower(..., neighbourhood=)``).
    ``text_emb``: the pretrained text encoder's item vectors (the ranker's text features)."""
    from ecrec_lib.models.blend import fit_neighbourhood

    return fit_neighbourhood(train_seqs, data.n_items, valid.histories,
                             _blend_valid_eval(valid, data, mcfg),
                             ranker_fit=_ranker_fit(data, train_seqs, mcfg, text_emb)
                             if mcfg.ranker else None)


def refit_blend_neighbourhood(neighbourhood: Neighbourhood, data: TrainingData,
                              mcfg: ModelConfig, seqs: Sequence[np.ndarray],
                              text_emb: np.ndarray | None = None) -> Neighbourhood:
    """``neighbourhood``'s parts, with the settings validation chose, fitted again on ``seqs``
    (the training sequences with the validation targets): what the blend serves."""
    from ecrec_lib.models.blend import refit_neighbourhood

    refit = refit_neighbourhood(neighbourhood, seqs, data.n_items,
                                _ranker_fit(data, seqs, mcfg, text_emb) if mcfg.ranker else None)
    log.info("neighbourhood parts refitted on %d events (the validation targets included) in "
             "%.0fs", sum(len(s) for s in seqs), refit.seconds)
    return refit


def refit_report(refit: Neighbourhood) -> dict[str, Any]:
    """What the blend report records of a refit: its time and the refitted ranker's report."""
    out: dict[str, Any] = {"seconds": round(refit.seconds, 1)}
    if refit.ranker_report is not None:
        out["ranker"] = refit.ranker_report
    return out


def _ranker_fit(data: TrainingData, train_seqs: Sequence[np.ndarray], mcfg: ModelConfig,
                text_emb: np.ndarray | None = None) -> Callable[..., tuple[Any, dict[str, Any]]]:
    """The blend's hook that fits the learned ranker from its fitted parts; time features
    when every training sequence is a prefix of its user's timed sequence, text features with
    the pretrained text vectors (``text_emb``: never trained on interactions)."""
    from ecrec_lib.models.ranker import RankerConfig, fit_ranker

    times = None
    if data.event_times is not None and len(train_seqs) == len(data.sequences) and all(
            len(s) <= len(q) and np.array_equal(q[:len(s)], s)
            for s, q in zip(train_seqs, data.sequences, strict=True)):
        times = [t[:len(s)] for s, t in zip(train_seqs, data.event_times, strict=True)]

    def fit(item_knn: Any, user_knn: Any, linear: Any) -> tuple[Any, dict[str, Any]]:
        return fit_ranker(train_seqs, data.n_items, data.item_brand, data.item_category,
                          (item_knn, user_knn, linear), times,
                          RankerConfig(seed=mcfg.seed, boosters=mcfg.ranker_boosters), text_emb)

    return fit


def _cooccurrence_pairs(seqs: Sequence[np.ndarray], window: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) item pairs at most ``window`` steps apart in a sequence, in both directions
    (distinct items only): what item-kNN counts, as training pairs for the item tower."""
    a_parts, b_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for _, earlier, later in windowed_pairs(seqs, window):
        distinct = earlier != later
        a_parts += [earlier[distinct], later[distinct]]
        b_parts += [later[distinct], earlier[distinct]]
    return np.concatenate(a_parts), np.concatenate(b_parts)


def _history_mask(seq: torch.Tensor, valid_pos: torch.Tensor,
                  targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, items) to remove from each position's softmax negatives: the items it has seen.

    Evaluation and serving exclude the user's history from the ranking, so spending
    probability mass pushing those items down is wasted; the target itself is never masked
    (a repeat purchase stays learnable). Rows count the True entries of ``valid_pos``.
    """
    b, L = seq.shape
    row_of = torch.cumsum(valid_pos.reshape(-1), 0).view(b, L) - 1  # logits row of (b, j)
    seen = torch.tril(torch.ones(L, L, dtype=torch.bool, device=seq.device))  # k <= j
    pick = valid_pos.unsqueeze(-1) & seen.unsqueeze(0)  # (b, j, k)
    bi, ji, ki = pick.nonzero(as_tuple=True)
    rows = row_of[bi, ji]
    items = seq[bi, ki]
    keep = items != targets[rows]
    return rows[keep], items[keep]


def _length_bucketed_batches(lengths: np.ndarray, batch_size: int,
                             rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar-length rows: a batch is cut to its longest row, so mixing
    a 50-item user into 255 short ones would multiply the transformer cost."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * 32
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class _NullCtx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(it: range, enabled: bool, desc: str):  # noqa: ANN202 - tqdm or a plain range
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, leave=False, mininterval=1.0)
