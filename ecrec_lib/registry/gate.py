"""The promotion gate's evidence: the newest holdout, full-ranking evaluation, the decision rule.

The holdout is built from the lake at the gate's ds, not from any model's own validation
split, so challenger, champion and the popularity baseline are compared on the same rows:
each user's last item event is the target, the events before it are the history.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ecrec_lib import schema
from ecrec_lib.config import EcrecConfig
from ecrec_lib.evaluation import EvalSet, evaluate_scores, popularity_scores
from ecrec_lib.evaluation.served import ServedOutputError, served_score_fn
from ecrec_lib.models.api import ItemSet, Recommender, UserHistory

EVAL_KS = (10, 50)
LATENCY_SAMPLE_USERS = 1000
LATENCY_TOP_K = 100  # what batch scoring keeps per user
NDCG = "ndcg@10"
COVERAGE = "coverage@10"
RECALL_50 = "recall@50"
LATENCY = "ms_per_1k_users"


class HoldoutError(ValueError):
    """The lake at ds cannot give a holdout; the message names the dataset and the fix."""


class ModelEvaluationError(RuntimeError):
    """A model loaded but returned unusable output (wrong shape, NaN) on the holdout."""


@dataclass
class Holdout:
    """Evaluation rows over the ds catalog: ``eval_set`` indexes ``catalog`` rows."""

    catalog: pd.DataFrame
    histories: list[UserHistory]
    eval_set: EvalSet
    now_ts: int
    item_popularity: np.ndarray  # history interaction counts per catalog row (no target leak)
    n_users: int
    n_skipped_short: int
    n_skipped_unknown_target: int

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    def summary(self) -> dict[str, float]:
        return {
            "holdout_users": float(len(self.eval_set)),
            "holdout_items": float(self.n_items),
            "holdout_skipped_short": float(self.n_skipped_short),
            "holdout_skipped_unknown_target": float(self.n_skipped_unknown_target),
        }


def end_of_ds_ts(ds: str) -> int:
    """Epoch seconds at the end of the ds day (UTC): the 'now' batch scoring uses."""
    day = dt.date.fromisoformat(ds)
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) + 86400


def build_holdout(sequences: pd.DataFrame, catalog: pd.DataFrame, ds: str) -> Holdout:
    """Last item of each user's sequence = target, the rest = history (fewer than 2: skipped).

    Targets missing from the ds catalog cannot be ranked and are skipped (counted); history
    items missing from it still reach the model but are not masked (they are not candidates).
    """
    missing = [c for c in ("item_ids", "event_types", "event_times") if c not in sequences]
    if missing:
        raise HoldoutError(
            f"user_sequences lacks columns {missing} (expected {schema.USER_SEQUENCE_COLUMNS}); "
            "re-run the featurize job for this ds"
        )
    if "item_id" not in catalog:
        raise HoldoutError("clean catalog lacks the item_id column; re-run the clean job for this ds")
    catalog = catalog.drop_duplicates("item_id").reset_index(drop=True)
    index = {str(item): i for i, item in enumerate(catalog["item_id"])}
    histories: list[UserHistory] = []
    hist_idx: list[np.ndarray] = []
    targets: list[int] = []
    n_short = n_unknown = 0
    for items, types, times in zip(
        sequences["item_ids"], sequences["event_types"], sequences["event_times"], strict=True
    ):
        items = [str(i) for i in (items if items is not None else [])]
        if len(items) < 2:
            n_short += 1
            continue
        target = index.get(items[-1])
        if target is None:
            n_unknown += 1
            continue
        histories.append(
            UserHistory(items[:-1], [str(t) for t in types][:-1], [int(t) for t in times][:-1])
        )
        hist_idx.append(np.asarray([index[i] for i in items[:-1] if i in index], dtype=np.int64))
        targets.append(target)
    if not targets:
        raise HoldoutError(
            f"no user in user_sequences ds={ds} has 2+ item events with a last item in the ds "
            f"catalog ({len(sequences)} users, {n_short} too short, {n_unknown} with unknown "
            "targets); the gate needs newer data: re-run the featurize job or check the catalog"
        )
    eval_set = EvalSet(np.arange(len(targets), dtype=np.int64), hist_idx, np.asarray(targets))
    return Holdout(
        catalog=catalog,
        histories=histories,
        eval_set=eval_set,
        now_ts=end_of_ds_ts(ds),
        item_popularity=popularity_scores(hist_idx, len(catalog)),
        n_users=len(sequences),
        n_skipped_short=n_short,
        n_skipped_unknown_target=n_unknown,
    )


def _check_matrix(name: str, arr: Any, rows: int) -> np.ndarray:
    mat = np.asarray(arr, dtype=np.float32)
    if mat.ndim != 2 or mat.shape[0] != rows:
        raise ModelEvaluationError(f"{name} returned shape {mat.shape}, expected ({rows}, dim)")
    if not np.isfinite(mat).all():
        raise ModelEvaluationError(f"{name} returned NaN or infinite values")
    return mat


def measure_latency_ms_per_1k(
    model: Recommender, holdout: Holdout, items: ItemSet, sample: int = LATENCY_SAMPLE_USERS
) -> float:
    """Wall time of the served ranking (``recommend``: the towers, the blend and its ranker,
    top-K) for a user sample, per 1,000 users.

    The catalog embeddings are computed once per scoring run, so they are not part of the
    per-user cost (their time is reported separately as ``item_encode_s``).
    """
    n = min(sample, len(holdout.histories))
    start = time.perf_counter()
    model.recommend(holdout.histories[:n], holdout.now_ts, min(LATENCY_TOP_K, len(items.item_ids)),
                    items=items)
    return (time.perf_counter() - start) * 1000.0 * 1000.0 / max(n, 1)


def _served_metrics(model: Recommender, holdout: Holdout, items: ItemSet, rows: np.ndarray | None,
                    ks: Sequence[int], popularity: np.ndarray | None) -> dict[str, float]:
    """Metrics of the model's served lists on the holdout (``rows``: a subset of its rows)."""
    eval_set = holdout.eval_set if rows is None else holdout.eval_set.subset(rows)
    histories = holdout.histories if rows is None else [holdout.histories[r] for r in rows]
    fn = served_score_fn(model, histories, eval_set, list(items.item_ids), holdout.now_ts, items)
    try:
        return evaluate_scores(fn, eval_set, holdout.n_items, ks=ks, item_popularity=popularity)
    except ServedOutputError as exc:
        raise ModelEvaluationError(f"recommend on the holdout: {exc}") from exc


def evaluate_recommender(model: Recommender, holdout: Holdout) -> dict[str, float]:
    """Full-ranking metrics of the served ranking over the ds catalog (history excluded) plus
    its scoring latency: every figure reads ``model.recommend``, what batch scoring serves."""
    start = time.perf_counter()
    vectors = _check_matrix("encode_items", model.encode_items(holdout.catalog), holdout.n_items)
    item_s = time.perf_counter() - start
    items = ItemSet(holdout.catalog["item_id"].astype(str).to_numpy(dtype=object), vectors)
    out = _served_metrics(model, holdout, items, None, EVAL_KS, holdout.item_popularity)
    out.update(cold_start_metrics(model, holdout, items))
    out[LATENCY] = measure_latency_ms_per_1k(model, holdout, items)
    out["item_encode_s"] = item_s
    return out


def cold_start_metrics(model: Recommender, holdout: Holdout, items: ItemSet) -> dict[str, float]:
    """NDCG/recall@10 of the served ranking on holdout rows whose target the model never saw
    in training (ranked from text/side features only); empty when there is no such row."""
    known = set(model.item_ids)
    catalog_ids = holdout.catalog["item_id"].astype(str).to_numpy()
    rows = np.flatnonzero([catalog_ids[t] not in known for t in holdout.eval_set.targets])
    if len(rows) == 0:
        return {}
    got = _served_metrics(model, holdout, items, rows, (10,), None)
    return {f"cold_{k}": got[k] for k in ("ndcg@10", "recall@10", "n_eval")}


def evaluate_popularity(holdout: Holdout) -> dict[str, float]:
    """The same metrics for "recommend the most interacted-with items" (history counts)."""
    pop = holdout.item_popularity
    return evaluate_scores(
        lambda pos: np.broadcast_to(pop, (len(pos), len(pop))),
        holdout.eval_set,
        holdout.n_items,
        ks=EVAL_KS,
        item_popularity=pop,
    )


@dataclass
class GateResult:
    """The rule's verdict and every reason behind it (recorded with the decision)."""

    promote: bool
    reasons: list[str] = field(default_factory=list)
    guardrails: dict[str, bool] = field(default_factory=dict)


def check_guardrails(cfg: EcrecConfig, metrics: Mapping[str, float]) -> tuple[dict[str, bool], list[str]]:
    """Each guardrail -> passed, and a sentence for each failure."""
    checks = {
        "coverage": (metrics[COVERAGE] >= cfg.guardrail_min_coverage,
                     f"coverage@10 {metrics[COVERAGE]:.4f} < minimum {cfg.guardrail_min_coverage}"),
        "recall_at_50": (metrics[RECALL_50] >= cfg.guardrail_min_recall_at_50,
                         f"recall@50 {metrics[RECALL_50]:.4f} < minimum "
                         f"{cfg.guardrail_min_recall_at_50}"),
        "latency": (metrics[LATENCY] <= cfg.guardrail_max_ms_per_1k_users,
                    f"scoring latency {metrics[LATENCY]:.1f} ms per 1k users > maximum "
                    f"{cfg.guardrail_max_ms_per_1k_users}"),
    }
    return {k: ok for k, (ok, _) in checks.items()}, [msg for ok, msg in checks.values() if not ok]


def decide(
    cfg: EcrecConfig,
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    popularity: Mapping[str, float],
    *,
    champion_flagged: bool = False,
    challenger_flagged: bool = False,
) -> GateResult:
    """Promote iff the challenger beats the reference on NDCG@10 and breaks no guardrail.

    The reference is the champion plus ``cfg.promotion_margin``; with no champion yet, the
    popularity baseline on the same holdout (a first model must at least beat it).
    Erasure flags (``jobs.forget_users``) override the comparison: a flagged challenger is never
    promoted; a clean challenger that passes the guardrails replaces a flagged champion even
    when it is not better, because the champion holds erased users' data.
    """
    guardrails, failures = check_guardrails(cfg, challenger)
    reasons = list(failures)
    if challenger_flagged:
        reasons.append("challenger holds data of erased users (erasure flag): never promoted")
        return GateResult(promote=False, reasons=reasons, guardrails=guardrails)
    if champion is not None and champion_flagged:
        reasons.append(
            f"champion holds data of erased users (erasure flag): replaced by a clean challenger "
            f"that passes the guardrails (challenger NDCG@10 {challenger[NDCG]:.4f}, champion "
            f"{champion[NDCG]:.4f})"
        )
        return GateResult(promote=not failures, reasons=reasons, guardrails=guardrails)
    if champion is not None:
        bar = champion[NDCG] + cfg.promotion_margin
        better = challenger[NDCG] > bar
        reasons.append(
            f"challenger NDCG@10 {challenger[NDCG]:.4f} {'>' if better else '<='} champion "
            f"{champion[NDCG]:.4f} + margin {cfg.promotion_margin}"
        )
    else:
        better = challenger[NDCG] > popularity[NDCG]
        reasons.append(
            f"no champion yet: challenger NDCG@10 {challenger[NDCG]:.4f} "
            f"{'>' if better else '<='} popularity baseline {popularity[NDCG]:.4f}"
        )
    return GateResult(promote=better and not failures, reasons=reasons, guardrails=guardrails)


def read_holdout(cfg: EcrecConfig, ds: str) -> Holdout:
    """Build the holdout from features/user_sequences/ds=D and clean/catalog/ds=D."""
    from ecrec_lib.lake import Lake
    from ecrec_lib.registry.records import read_parquet_dir

    lake = Lake(cfg.lake_root)
    seq_cols: Sequence[str] = ("item_ids", "event_types", "event_times")
    sequences = read_parquet_dir(lake.features("user_sequences", ds), seq_cols, "featurize")
    catalog = read_parquet_dir(lake.clean("catalog", ds), None, "clean")
    return build_holdout(sequences, catalog, ds)
