"""Quality benchmark on any interactions.csv dataset (full ranking, three protocols).

    python -m jobs.benchmark_quality --data ../shared/data/amazon_beauty --seeds 3 \
        --out bench_quality.json [--protocol loo|temporal|cold_items] [--max-users N]

``--protocol`` (the splits: :mod:`ecrec_lib.evaluation.split`): ``loo`` (default) is described
below; ``temporal`` cuts the log at one date (the last 10% of events after it), tests every
user active after it on their first item after it given their history up to the cut, and
fits every model on the events before an earlier validation cut; ``cold_items`` holds 10% of
the items out of training entirely and tests the users whose last item is one of them, the
two-tower (its text and side vectors for those items) against popularity, brand/category
popularity and the pretrained text's similarity to the history. ``--max-users`` runs on a
seeded sample of users (a quick end-to-end check, not a figure to report).

Runs the platform's own code — the two-tower trainer and the evaluation functions the
nightly jobs use — under the sequential-recommendation protocol: each user's sequence is
ordered by ``seq_pos`` (else ``timestamp``), the last item is the test target, the one
before it the validation target (model selection / early stopping only); every item of the
catalog is ranked and the user's history items are excluded. Reports Recall@{5,10,20} and
NDCG@{5,10,20} (mean ± std over seeds) and training time for: popularity, item-kNN, user-kNN, a
linear item-item model (SLIST: transitions plus whole-sequence similarity), an ID-only
SASRec-style model and the ecrec two-tower model (text + ID). Without items.csv the text model
is reported as "n/a (no items.csv)".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ecrec_lib.config import add_config_args, config_from_args
from ecrec_lib.datasets import DatasetError, load_csv_dataset
from ecrec_lib.evaluation import (
    EvalSet,
    evaluate_scores,
    leave_one_out,
    popularity_scores,
)
from ecrec_lib.evaluation.split import cold_item_split, temporal_split
from ecrec_lib.models.config import ModelConfig
from ecrec_lib.models.neighbourhood import KNN_GRID, LinearTransitions, UserKNN, tune_item_knn
from ecrec_lib.training.data import TrainingData
from jobs.common import setup_logging

if TYPE_CHECKING:
    from ecrec_lib.models.blend import Neighbourhood

log = logging.getLogger("benchmark_quality")

ALL_MODELS = ("pop", "itemknn", "userknn", "linear", "ranker", "sasrec_id", "two_tower")
COLD_MODELS = ("pop", "brandpop", "textsim", "two_tower")  # the cold_items protocol's table
PROTOCOLS = ("loo", "temporal", "cold_items")
DETERMINISTIC = ("pop", "itemknn", "userknn", "linear", "ranker", "brandpop", "textsim")
REPORT_KS = (5, 10, 20)
# The SASRec-style row as SASRec is trained (RecBole 1.2.1's SASRec-CE): its blocks, about 256
# targets a shuffled step at a constant 1e-3, dropout 0.5, no clipping, no co-occurrence loss,
# and early stopping after 5 epochs without a better validation figure, whatever --set says (its
# best epochs on Beauty were 9-15; 30 epochs of it would not fit the 3-seed table's hour).
# On Beauty it comes within 3% of RecBole's own run, where the two-tower's defaults left the
# ID-only tower 12% below it (BENCHMARKS.md).
SASREC_RECIPE: dict[str, Any] = {
    "block_layout": "post_ln", "batch_by_length": False, "batch_size": 52, "lr": 1e-3,
    "lr_schedule": "constant", "warmup_steps": 0, "dropout": 0.5, "grad_clip": 0.0,
    "cooc_loss_weight": 0.0, "patience": 5,
}
REPORT_METRICS = tuple(f"{m}@{k}" for m in ("recall", "ndcg") for k in REPORT_KS)
BLEND = "two_tower+blend"  # the two-tower run's co-occurrence blend (same training run)
MODEL_LABELS = {
    "pop": "popularity",
    "itemknn": "item-kNN",
    "userknn": "user-kNN (session neighbours)",
    "linear": "linear item-item model (SLIST, closed form)",
    "ranker": "learned ranker over item-kNN, user-kNN, SLIST (LambdaRank)",
    "sasrec_id": "SASRec-style, ID only (full CE, SASRec's recipe)",
    "two_tower": "ecrec two-tower (text + ID)",
    "brandpop": "brand popularity (category popularity breaks ties and stands in without a brand)",
    "textsim": "pretrained text similarity to the last 5 history items",
    BLEND: "ecrec two-tower + neighbourhood blend (item-kNN, user-kNN, SLIST, ranker)",
}


@dataclass
class Split:
    train: list[np.ndarray]
    valid: EvalSet
    test: EvalSet
    protocol: str = "loo"
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


PROTOCOL_TEXT = {
    "loo": "leave-one-out per user (ordered by seq_pos, else timestamp); last item = test, "
           "second-to-last = validation (model selection only); full ranking over all items; "
           "history items excluded; pessimistic ties",
    "temporal": "global time cut leaving the last 10% of events after it; each user active after "
                "it is tested on their first item after it with their history up to the cut; "
                "validation the same at an earlier cut (the last 10% of the events before the "
                "test cut); every model fitted on the events before the validation cut; full "
                "ranking over all items; history items excluded; pessimistic ties",
    "cold_items": "10% of the interacted items held out of training entirely (seeded); test = "
                  "users whose last item is one of them, given everything before it; validation "
                  "= the other users' last warm item; full ranking over all items; history items "
                  "excluded; pessimistic ties",
}

# appended to the protocol when the neighbourhood parts are served refitted (the default)
REFIT_TEXT = ("; once validation has chosen their settings, the neighbourhood parts of the served "
              "blend and of the ranker row are refitted on the training events plus the "
              "validation targets (never a test target), as the nightly serves them; the neural "
              "towers and the single-part rows are fitted on the training events only")


def make_split(protocol: str, data: TrainingData) -> Split:
    """The train / validation / test rows of ``protocol`` (see :data:`PROTOCOL_TEXT`)."""
    if protocol == "loo":
        train, valid, test = leave_one_out(data.sequences)
        if len(test) == 0:
            raise DatasetError("no user has 3 or more interactions: nothing to evaluate")
        return Split(train, valid, test, protocol)
    if protocol == "temporal":
        if data.event_times is None:
            raise DatasetError("the temporal protocol needs a timestamp per interaction")
        try:
            train, valid, test, cuts = temporal_split(data.sequences, data.event_times)
        except ValueError as exc:
            raise DatasetError(f"temporal protocol: {exc}") from None
        return Split(train, valid, test, protocol, cuts)
    if protocol == "cold_items":
        try:
            train, valid, test, cold = cold_item_split(data.sequences, data.n_items)
        except ValueError as exc:
            raise DatasetError(f"cold_items protocol: {exc}") from None
        return Split(train, valid, test, protocol, {"cold_items": int(len(cold))})
    raise DatasetError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


def sample_users(data: TrainingData, n: int, seed: int = 0) -> TrainingData:
    """``data`` with a seeded sample of ``n`` users (every item kept: full ranking still ranks
    the whole catalog)."""
    if n <= 0 or n >= len(data.sequences):
        return data
    keep = np.sort(np.random.default_rng(seed).choice(len(data.sequences), n, replace=False))
    pick = (lambda xs: None if xs is None else [xs[u] for u in keep])  # noqa: E731
    return dataclasses.replace(data, user_keys=pick(data.user_keys), sequences=pick(data.sequences),
                               event_types=pick(data.event_types),
                               event_times=pick(data.event_times))


ScoreFn = Callable[[np.ndarray], Any]


def _eval(score_fn: ScoreFn, ev: EvalSet, data: TrainingData, pop: np.ndarray) -> dict[str, float]:
    return evaluate_scores(
        score_fn,
        ev,
        data.n_items,
        ks=REPORT_KS,
        item_popularity=pop,
        item_categories=data.item_category,
    )


def _history_scorer(score_histories: Callable[[list[np.ndarray]], Any], ev: EvalSet) -> ScoreFn:
    return lambda pos: score_histories([ev.histories[i] for i in pos])


def run_popularity(data: TrainingData, split: Split, pop: np.ndarray) -> dict[str, Any]:
    t0 = time.perf_counter()
    scores = popularity_scores(split.train, data.n_items)
    seconds = time.perf_counter() - t0
    fn: ScoreFn = lambda pos: np.broadcast_to(scores, (len(pos), data.n_items))  # noqa: E731
    return {"test": _eval(fn, split.test, data, pop), "train_seconds": seconds, "config": {}}


def run_itemknn(data: TrainingData, split: Split, pop: np.ndarray) -> dict[str, Any]:
    t0 = time.perf_counter()
    valid_ndcg, knn = tune_item_knn(split.train, data.n_items, lambda k: _eval(
        _history_scorer(k.score, split.valid), split.valid, data, pop)["ndcg@10"])
    seconds = time.perf_counter() - t0
    return {
        "test": _eval(_history_scorer(knn.score, split.test), split.test, data, pop),
        "train_seconds": seconds,
        "config": {k: getattr(knn, k) for k in KNN_GRID[0]},
        "valid_ndcg@10": valid_ndcg,
    }


def run_fitted(model: Any, data: TrainingData, split: Split, pop: np.ndarray) -> dict[str, Any]:
    """Fit an untuned history model (``fit(train, n_items)``, ``score(histories)``, a dataclass
    of settings: user-kNN, the linear transition model) and evaluate it on the test targets."""
    t0 = time.perf_counter()
    model.fit(split.train, data.n_items)
    seconds = time.perf_counter() - t0
    return {
        "test": _eval(_history_scorer(model.score, split.test), split.test, data, pop),
        "train_seconds": seconds,
        "config": dataclasses.asdict(model),
    }


def run_brand_popularity(data: TrainingData, split: Split, pop: np.ndarray) -> dict[str, Any]:
    """Each item scores its brand's training interactions (its category's breaks ties and
    stands in for an item without a brand): a cold item inherits its group's popularity."""
    t0 = time.perf_counter()
    counts = popularity_scores(split.train, data.n_items)

    def group_totals(names: Sequence[str]) -> np.ndarray:
        codes, _ = pd.factorize(pd.Series(list(names)).replace("", None))
        known = codes >= 0
        totals = np.bincount(codes[known], counts[known], minlength=int(codes.max()) + 1
                             if known.any() else 1)
        return np.where(known, totals[np.maximum(codes, 0)], 0.0)

    scores = np.log1p(group_totals(data.item_brand)) + 1e-3 * np.log1p(
        group_totals(data.item_category))
    seconds = time.perf_counter() - t0
    fn: ScoreFn = lambda pos: np.broadcast_to(scores, (len(pos), data.n_items))  # noqa: E731
    return {"test": _eval(fn, split.test, data, pop), "train_seconds": seconds, "config": {}}


def run_text_similarity(data: TrainingData, split: Split, pop: np.ndarray,
                        cache_dir: str | None) -> dict[str, Any]:
    """Cosine between each item's pretrained text vector and the mean of the history's last
    five: no training, so warm and cold items are alike to it."""
    t0 = time.perf_counter()
    text = pretrained_text_vectors(data, cache_dir).astype(np.float32)
    text /= np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-9)
    seconds = time.perf_counter() - t0

    def score(pos: np.ndarray) -> np.ndarray:
        users = np.stack([text[np.asarray(split.test.histories[i][-5:], dtype=np.int64)].mean(0)
                          if len(split.test.histories[i]) else np.zeros(text.shape[1], np.float32)
                          for i in pos])
        return users @ text.T

    return {"test": _eval(score, split.test, data, pop), "train_seconds": seconds, "config": {}}


def pretrained_text_vectors(data: TrainingData, cache_dir: str | None,
                            mcfg: ModelConfig | None = None) -> np.ndarray:
    """The pretrained text encoder's item vectors (``mcfg``'s, else the default; frozen; read
    from the cache the two-tower training shares when present)."""
    from ecrec_lib.models.text_encoder import (
        TextEncoder,
        cached_text_embeddings,
        resolve_text_model_path,
    )

    mcfg = mcfg or ModelConfig()
    encoder = TextEncoder(resolve_text_model_path(mcfg.text_model_path), "frozen",
                          mcfg.text_max_length, mcfg.finetune_layers, mcfg.lora_r, mcfg.lora_alpha)
    return cached_text_embeddings(encoder, data.item_text, cache_dir, mcfg.text_batch_size)


def model_config(name: str, seed: int, device: str, epochs: int | None,
                 overrides: dict[str, Any]) -> ModelConfig:
    """The two-tower trainer's config for ``name``; ``sasrec_id``: ID only, no side features, no
    blend, trained by SASRec's own recipe (:data:`SASREC_RECIPE`), which ``overrides`` do not
    change: that row reproduces a reference, the overrides try the product's model."""
    values: dict[str, Any] = {"seed": seed, "device": device, "use_text": name == "two_tower"}
    if epochs is not None:
        values["epochs"] = epochs
    values.update(overrides)
    if name == "sasrec_id":
        values.update(use_side=False, use_text=False, init_id_from_text=False, cooc_blend=False,
                      **SASREC_RECIPE)
    return ModelConfig.from_dict({**ModelConfig().to_dict(), **values})


def valid_rows(split: Split, valid_users: int) -> EvalSet:
    """The validation rows the neural models early-stop on and the blend is fitted on: a fixed
    random sample of ``valid_users`` users when 0 < valid_users < all."""
    return split.valid.sample(valid_users, np.random.default_rng(12345))


def fit_shared_neighbourhood(data: TrainingData, split: Split, mcfg: ModelConfig,
                             valid_users: int, cache_dir: str | None,
                             has_items: bool) -> Neighbourhood:
    """The neighbourhood parts of the two-tower blend (item-kNN, user-kNN, SLIST, the learned
    ranker), fitted once by the trainer's own function: none depends on the neural model, so
    every seed's blend and the ranker row use this one fit (its time is reported once, as the
    ranker row's)."""
    from ecrec_lib.training.trainer import fit_blend_neighbourhood

    text = pretrained_text_vectors(data, cache_dir, mcfg) if has_items else None
    return fit_blend_neighbourhood(data, mcfg, split.train, valid_rows(split, valid_users), text)


def refit_shared_neighbourhood(nb: Neighbourhood, data: TrainingData, split: Split,
                               mcfg: ModelConfig, cache_dir: str | None,
                               has_items: bool) -> Neighbourhood:
    """``nb``'s parts, with the settings validation chose, refitted on the training events
    plus every validation target, as the nightly serves them (the test targets stay out)."""
    from ecrec_lib.evaluation.split import with_validation_targets
    from ecrec_lib.training.trainer import refit_blend_neighbourhood

    text = pretrained_text_vectors(data, cache_dir, mcfg) if has_items else None
    return refit_blend_neighbourhood(nb, data, mcfg, with_validation_targets(split.train, split.valid),
                                     text)


def run_ranker(data: TrainingData, split: Split, pop: np.ndarray, nb: Neighbourhood,
               refit: Neighbourhood | None = None) -> dict[str, Any]:
    """The learned ranker alone (no neural model), from the shared neighbourhood fit: item-kNN
    tuned on validation, user-kNN and SLIST fitted on train, LambdaRank trained on each training
    sequence's last items (:mod:`ecrec_lib.models.ranker`); items outside a user's candidates
    score zero. ``refit``: the same parts refitted with the validation targets, tested instead
    (as served)."""
    import torch

    from ecrec_lib.models.neighbourhood import NeighbourhoodParts
    from ecrec_lib.training.trainer import eval_anchor_times

    if nb.ranker is None:
        why = (nb.ranker_report or {}).get("skipped", "the ranker is switched off (ranker=false)")
        return {"status": f"n/a ({why})"}
    seconds = nb.seconds + (refit.seconds if refit is not None else 0.0)
    nb = refit if refit is not None else nb
    ranker = nb.ranker
    parts = NeighbourhoodParts(nb.item_knn, nb.user_knn, nb.linear)
    anchors = eval_anchor_times(data, split.test)

    def score(pos: np.ndarray) -> Any:
        hist = [split.test.histories[i] for i in pos]
        p = ranker.probs(hist, *parts.distributions(hist), anchors[pos] if anchors is not None else None,
                         parts.last_item_tables)
        return torch.as_tensor(p)

    report = nb.ranker_report or {}
    return {"test": _eval(score, split.test, data, pop), "train_seconds": seconds,
            "config": {"ranker": {k: v for k, v in report.items() if k != "feature_gain"}}}


def run_neural(
    name: str,
    data: TrainingData,
    split: Split,
    pop: np.ndarray,
    seed: int,
    device: str,
    epochs: int | None,
    overrides: dict[str, Any],
    cache_dir: str | None,
    valid_users: int = 0,
    save_dir: str | None = None,
    neighbourhood: Neighbourhood | None = None,
    refit_neighbourhood: Neighbourhood | None = None,
) -> dict[str, Any]:
    """Train the platform's two-tower model (``use_text`` False for the ID-only model).

    ``valid_users`` > 0 early-stops on a fixed random sample of that many validation users
    (cheaper epochs on CPU); test always covers every user. ``save_dir``: also write the trained
    model (blend included) there as a loadable artifact, ``<save_dir>/<name>_seed<seed>``.
    ``neighbourhood``: the blend's parts fitted once for every seed (its time is not counted
    here); ``refit_neighbourhood``: those parts refitted with the validation targets, served."""
    from ecrec_lib.training.trainer import train_two_tower

    mcfg = model_config(name, seed, device, epochs, overrides)
    valid = valid_rows(split, valid_users)
    t0 = time.perf_counter()
    result = train_two_tower(data, mcfg, split.train, valid, progress=False, cache_dir=cache_dir,
                             neighbourhood=neighbourhood, refit_neighbourhood=refit_neighbourhood)
    seconds = time.perf_counter() - t0
    test = _eval(result.score_fn(split.test, blend=False), split.test, data, pop)
    blend = result.model.blend
    blended = test
    if blend is not None:
        blended = _eval(result.score_fn(split.test, blend=True), split.test, data, pop)
    saved = None
    if save_dir:
        from ecrec_lib.models.artifact import save_recommender

        saved = str(save_recommender(result.model, Path(save_dir) / f"{name}_seed{seed}"))
        log.info("saved the %s model of seed %d to %s", name, seed, saved)
    return {
        "test": test,
        "blend_test": blended,
        "blend": result.model.metadata.get("blend"),
        "train_seconds": seconds,
        "config": mcfg.to_dict(),
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "valid_ndcg@10": result.best_valid.get("ndcg@10"),
        "saved_to": saved,
    }


def _summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"metrics": {}, "runs": [r["test"] for r in runs]}
    for key in REPORT_METRICS + ("coverage@10", "diversity@10", "novelty@10", "popularity_bias@10"):
        vals = [r["test"][key] for r in runs if key in r["test"]]
        if vals:
            out["metrics"][key] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))}
    secs = [r["train_seconds"] for r in runs]
    out["train_seconds"] = {"mean": float(np.mean(secs)), "std": float(np.std(secs))}
    out["config"] = runs[0]["config"]
    for extra in ("epochs_run", "best_epoch", "valid_ndcg@10", "saved_to"):
        if runs[0].get(extra) is not None:
            out[extra] = [r.get(extra) for r in runs]
    out["status"] = "ok"
    return out


def machine_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    return requested


def run_benchmark(
    data: TrainingData,
    has_items: bool,
    models: Sequence[str],
    seeds: Sequence[int],
    device: str,
    epochs: int | None = None,
    overrides: dict[str, Any] | None = None,
    cache_dir: str | None = None,
    valid_users: int = 0,
    save_dir: str | None = None,
    protocol: str = "loo",
) -> dict[str, Any]:
    """All requested models over all seeds under ``protocol``; a JSON-serializable result."""
    split = make_split(protocol, data)
    train, test = split.train, split.test
    # Popularity over training data only, so beyond-accuracy figures do not peek at targets.
    pop = popularity_scores(train, data.n_items)
    results: dict[str, Any] = {}
    shared: dict[bool, tuple[Neighbourhood, Neighbourhood | None]] = {}

    def neighbourhood(ranker_row: bool = False) -> tuple[Neighbourhood, Neighbourhood | None]:
        """The one neighbourhood fit of the run and its refit with the validation targets (None
        when ``refit_neighbourhood`` is off); a second pair only for the ranker row when the
        overrides switch the blend's ranker off."""
        mcfg = model_config("two_tower", seeds[0], device, epochs, overrides or {})
        if ranker_row and not mcfg.ranker:
            mcfg = dataclasses.replace(mcfg, ranker=True)
        if mcfg.ranker not in shared:
            log.info("fitting the neighbourhood parts once for the ranker row and every seed")
            nb = fit_shared_neighbourhood(data, split, mcfg, valid_users, cache_dir, has_items)
            refit = (refit_shared_neighbourhood(nb, data, split, mcfg, cache_dir, has_items)
                     if mcfg.refit_neighbourhood else None)
            shared[mcfg.ranker] = (nb, refit)
        return shared[mcfg.ranker]

    for name in models:
        if name == "two_tower" and not has_items:
            results[name] = {"status": "n/a (no items.csv)"}
            continue
        if name == "linear" and data.n_items > LinearTransitions.max_items:
            # Its dense solve would not fit; every other model still runs (and the two-tower
            # blend goes on without a linear part).
            log.warning("model linear: %s items > max_items %d, reported as n/a",
                        data.n_items, LinearTransitions.max_items)
            results[name] = {"status": f"n/a ({data.n_items} items > max_items "
                                       f"{LinearTransitions.max_items})"}
            continue
        runs = []
        for seed in seeds:
            log.info("model %s seed %d", name, seed)
            if name == "pop":
                runs.append(run_popularity(data, split, pop))
            elif name == "itemknn":
                runs.append(run_itemknn(data, split, pop))
            elif name == "userknn":
                runs.append(run_fitted(UserKNN(), data, split, pop))
            elif name == "linear":
                runs.append(run_fitted(LinearTransitions(), data, split, pop))
            elif name == "brandpop":
                runs.append(run_brand_popularity(data, split, pop))
            elif name == "textsim":
                if not has_items:
                    results[name] = {"status": "n/a (no items.csv)"}
                    break
                runs.append(run_text_similarity(data, split, pop, cache_dir))
            elif name == "ranker":
                run = run_ranker(data, split, pop, *neighbourhood(ranker_row=True))
                if "status" in run:
                    log.warning("model ranker: %s", run["status"])
                    results[name] = run
                    break
                runs.append(run)
            else:
                runs.append(
                    run_neural(
                        name,
                        data,
                        split,
                        pop,
                        seed,
                        device,
                        epochs,
                        overrides or {},
                        cache_dir,
                        valid_users,
                        save_dir,
                        *(neighbourhood() if name == "two_tower" and model_config(
                            name, seed, device, epochs, overrides or {}).cooc_blend
                          else (None, None)),
                    )
                )
            if runs:
                log.info("model %s seed %d: %s", name, seed, _fmt_run(runs[-1]))
            if name in DETERMINISTIC:
                break  # deterministic: one run is every seed's run
        if not runs:  # the model reported why it could not run
            continue
        results[name] = _summary(runs)
        results[name]["seeds"] = (
            list(seeds) if name not in DETERMINISTIC else ["deterministic"]
        )
        if name == "two_tower" and runs[0].get("blend") is not None:
            blended = [{**r, "test": r["blend_test"]} for r in runs]
            results[BLEND] = _summary(blended)
            results[BLEND]["seeds"] = list(seeds)
            results[BLEND]["blend"] = [r["blend"] for r in runs]
    n_inter = int(sum(len(s) for s in data.sequences))
    return {
        "protocol": PROTOCOL_TEXT[protocol] + (
            REFIT_TEXT if model_config("two_tower", seeds[0], device, epochs,
                                       overrides or {}).refit_neighbourhood else ""),
        "protocol_name": protocol,
        "split": {**split.info, "n_train_interactions": int(sum(len(s) for s in train)),
                  "n_valid_rows": len(split.valid), "n_test_rows": len(test)},
        "dataset": {
            "n_users": len(data.sequences),
            "n_items": data.n_items,
            "n_interactions": n_inter,
            "n_eval_users": len(test),
            "has_items_csv": has_items,
        },
        "models": results,
        # fitted once for the ranker row and every seed's blend, then refitted with the
        # validation targets; not in the two-tower's time
        "neighbourhood_seconds": {"with_ranker" if k else "without_ranker": round(v.seconds, 1)
                                  for k, (v, _) in shared.items()},
        "neighbourhood_refit_seconds": {"with_ranker" if k else "without_ranker":
                                        round(r.seconds, 1)
                                        for k, (_, r) in shared.items() if r is not None},
    }


def _fmt_run(run: dict[str, Any]) -> str:
    m = run["test"]
    return f"R@10={m['recall@10']:.4f} N@10={m['ndcg@10']:.4f} ({run['train_seconds']:.1f}s)"


def format_table(result: dict[str, Any]) -> str:
    head = ["model"] + [k.replace("recall", "R").replace("ndcg", "N") for k in REPORT_METRICS]
    head.append("train s")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in result["models"].items():
        label = MODEL_LABELS.get(name, name)
        if r["status"] != "ok":
            lines.append("| " + " | ".join([label] + [r["status"]] * (len(head) - 1)) + " |")
            continue
        cells = [label]
        for key in REPORT_METRICS:
            s = r["metrics"][key]
            cells.append(f"{s['mean']:.4f} ± {s['std']:.4f}")
        t = r["train_seconds"]
        cells.append(f"{t['mean']:.0f} ± {t['std']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _parse_models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    known = ALL_MODELS + tuple(m for m in COLD_MODELS if m not in ALL_MODELS)
    bad = [m for m in models if m not in known]
    if bad or not models:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {bad or text!r}; choose from {','.join(known)}"
        )
    return models


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_config_args(p)
    p.add_argument("--data", required=True, help="dataset dir with interactions.csv [items.csv]")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (neural models)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. +seeds-1")
    p.add_argument("--out", default=None, help="write the JSON result here")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device")
    p.add_argument(
        "--protocol",
        default="loo",
        choices=PROTOCOLS,
        help="loo: leave-one-out per user; temporal: one global time cut; cold_items: 10%% of "
        "the items held out of training (see the module docstring)",
    )
    p.add_argument(
        "--models",
        type=_parse_models,
        default=None,
        help=f"comma-separated subset of {','.join(ALL_MODELS)} (loo, temporal; default all) or "
        f"of {','.join(COLD_MODELS)} (cold_items; default all)",
    )
    p.add_argument(
        "--max-users",
        type=int,
        default=0,
        help="run on a seeded sample of this many users (0: all); a quick end-to-end check",
    )
    p.add_argument("--epochs", type=int, default=None, help="max epochs (default: ModelConfig's)")
    p.add_argument(
        "--set",
        type=_parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="ModelConfig override for the neural models, e.g. --set dim=128 (repeatable); the "
        "SASRec-style row keeps its recipe's fields (SASREC_RECIPE)",
    )
    p.add_argument(
        "--valid-users",
        type=int,
        default=0,
        help="early-stop on a fixed sample of this many validation users (0: all)",
    )
    p.add_argument(
        "--save-models",
        default=None,
        metavar="DIR",
        help="write each trained neural model (with its blend) to DIR/<model>_seed<N> as a "
        "loadable artifact, to inspect or rescore later without retraining",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="text-embedding cache dir (default: <lake>/ops/text_cache under the config's lake)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit("--epochs must be >= 1")
    from ecrec_lib.models.config import ModelConfig

    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(k for k, _ in args.set if k not in known)
    if unknown:
        log.error("--set: unknown ModelConfig field(s) %s; known: %s", unknown, sorted(known))
        return 2
    cfg = config_from_args(args)
    try:
        data, has_items = load_csv_dataset(args.data)
    except DatasetError as exc:
        log.error("%s", exc)
        return 2
    data = sample_users(data, args.max_users)
    models = args.models or list(COLD_MODELS if args.protocol == "cold_items" else ALL_MODELS)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cache_dir = args.cache_dir or str(Path(cfg.lake_root) / "ops" / "text_cache")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    t0 = time.perf_counter()
    try:
        result = run_benchmark(
            data,
            has_items,
            models,
            seeds,
            device,
            epochs=args.epochs,
            overrides=dict(args.set),
            cache_dir=cache_dir,
            valid_users=args.valid_users,
            save_dir=args.save_models,
            protocol=args.protocol,
        )
    except DatasetError as exc:
        log.error("%s", exc)
        return 2
    result["dataset"]["path"] = str(Path(args.data).resolve())
    result["machine"] = machine_info(device)
    result["total_seconds"] = time.perf_counter() - t0
    result["command"] = "python -m jobs.benchmark_quality " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    table = format_table(result)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
