"""Train the two-tower model on one day's features, log it to MLflow, register a challenger.

    python -m jobs.train_encoders --ds 2024-01-31 [--lake DIR] [--config F] [--epochs N] [--run-name X]

Reads features/user_sequences, features/search_pairs (optional) and clean/catalog of ``ds``;
splits leave-one-out (valid = each user's second-to-last item, test = the last); trains
with early stopping on valid NDCG@10; logs config, data facts, curves, test metrics of the
model and the popularity / item-kNN baselines, a plot and the model to MLflow; registers
the model as the challenger (``ecrec_lib.registry``); writes ops/training/ds=D/summary.json.

Exit codes: 0 trained and registered; 2 bad input (too little data, missing partition or
encoder weights); 3 training diverged (NaN loss, nothing registered).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ecrec_lib.config import EcrecConfig, add_config_args, config_from_args
from ecrec_lib.lake import Lake, ds_range, is_local
from jobs.common import setup_logging

log = logging.getLogger("jobs.train_encoders")

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


class TrainingInputError(ValueError):
    """The lake inputs cannot be trained on; the message names the problem and the fix."""


def read_partition(path: str, what: str, required: bool = True) -> pd.DataFrame | None:
    """A ds partition as pandas (pyarrow), or None when optional and absent."""
    if is_local(path) and not Path(path.removeprefix("file://")).exists():
        if not required:
            return None
        raise TrainingInputError(
            f"{what} partition {path} does not exist; run the pipeline for this ds first "
            "(clean + featurize), or pass the right --ds / --lake"
        )
    return pd.read_parquet(path)


def load_inputs(cfg: EcrecConfig, ds: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    lake = Lake(cfg.lake_root)
    catalog = read_partition(lake.clean("catalog", ds), "clean/catalog")
    sequences = read_partition(lake.features("user_sequences", ds), "features/user_sequences")
    pairs = read_partition(lake.features("search_pairs", ds), "features/search_pairs", required=False)
    assert catalog is not None and sequences is not None
    return catalog, sequences, pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.train_encoders", description=__doc__.split("\n")[0])
    p.add_argument("--ds", required=True, help="logical date YYYY-MM-DD whose features are trained on")
    add_config_args(p)
    p.add_argument("--epochs", type=int, default=None, help="override config epochs")
    p.add_argument("--run-name", default=None, help="MLflow run name (default: train-<ds>)")
    p.add_argument("--encoder-mode", default=None, choices=["frozen", "finetune_top", "lora"],
                   help="override config encoder_mode")
    p.add_argument("--no-register", action="store_true",
                   help="log the run and model but do not register a challenger")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    cfg = config_from_args(args, epochs=args.epochs, encoder_mode=args.encoder_mode)
    try:
        summary = run(cfg, args.ds, run_name=args.run_name, register=not args.no_register,
                      progress=not args.no_progress)
    except _bad_input_errors() as exc:
        log.error("training refused: %s", exc)
        return EXIT_BAD_INPUT
    except FloatingPointError as exc:  # NaNLossError
        log.error("training failed: %s", exc)
        return EXIT_DIVERGED
    log.info("done: %s", json.dumps(summary))
    return 0


def _bad_input_errors() -> tuple[type[BaseException], ...]:
    from ecrec_lib.models.artifact import ArtifactError
    from ecrec_lib.models.text_encoder import TextModelError
    from ecrec_lib.training.trainer import CheckpointError

    return (TrainingInputError, TextModelError, ArtifactError, CheckpointError)


def run(cfg: EcrecConfig, ds: str, run_name: str | None = None, register: bool = True,
        progress: bool = True) -> dict[str, Any]:
    """The whole job; returns the summary written to ops/training/ds=D/summary.json."""
    import mlflow

    from ecrec_lib import tracking
    from ecrec_lib.evaluation import evaluate_scores, leave_one_out, popularity_scores
    from ecrec_lib.evaluation.split import with_validation_targets
    from ecrec_lib.models.artifact import log_recommender
    from ecrec_lib.models.neighbourhood import ItemKNN
    from ecrec_lib.training.data import build_training_data
    from ecrec_lib.training.trainer import model_config_from, train_two_tower

    lake = Lake(cfg.lake_root)
    catalog, sequences, pairs = load_inputs(cfg, ds)
    window = (ds_range(ds, cfg.lookback_days)[0], ds)
    try:
        data, stats = build_training_data(catalog, sequences, pairs, data_window=window)
    except ValueError as exc:
        raise TrainingInputError(str(exc)) from None
    if stats.n_events_missing_item:
        log.warning("dropped %d events on %d-ish items missing from the catalog (e.g. %s)",
                    stats.n_events_missing_item, len(stats.missing_item_examples),
                    stats.missing_item_examples[:3])
    log.info("training data: %s", {k: v for k, v in stats.to_dict().items() if k != "missing_item_examples"})
    if stats.n_users_evaluable < cfg.min_train_users:
        raise TrainingInputError(
            f"only {stats.n_users_evaluable} users have 3 or more item events (need "
            f"min_train_users={cfg.min_train_users}) in features/user_sequences ds={ds}: too "
            "little data to train and evaluate; wait for more data or lower min_train_users"
        )
    train_seqs, valid, test = leave_one_out(data.sequences)
    mcfg = model_config_from(cfg)
    from ecrec_lib.training.data import data_fingerprint

    fingerprint = data_fingerprint(data)
    data_facts = {"ds": ds, "window_start": window[0], "window_end": window[1],
                  "fingerprint": fingerprint, "n_items": data.n_items, "n_users": len(data.sequences),
                  "n_query_pairs": len(data.query_pairs),
                  **{k: v for k, v in stats.to_dict().items() if k != "missing_item_examples"}}

    tracking.configure_mlflow(cfg.mlflow_tracking_uri, cfg.mlflow_experiment,
                              cfg.mlflow_artifact_root, cfg.registry_uri)
    with tracking.training_run(run_name or f"train-{ds}", tags={"ds": ds, "data_fingerprint": fingerprint}) as active:
        run_id = active.info.run_id
        tracking.log_run_config(cfg.to_dict(), mcfg.to_dict(), data_facts)
        mlflow.log_dict(stats.to_dict(), "data/build_stats.json")
        result = train_two_tower(
            data, mcfg, train_seqs, valid, progress=progress,
            checkpoint_dir=os.path.join(lake.models(ds), "checkpoints") if is_local(lake.root) else None,
            cache_dir=lake.cache("text_embeddings") if is_local(lake.root) else None,
            on_epoch=tracking.log_epoch,
            # the blend's parts are served refitted with the validation targets: every user's
            # events but the held-out test target, which the evaluation below still scores
            refit_seqs=with_validation_targets(train_seqs, valid),
        )
        for row in result.history[: result.resumed_from_epoch]:
            tracking.log_epoch(row)  # epochs restored from a checkpoint
        mlflow.log_metric("best_epoch", result.best_epoch)
        pop = popularity_scores(train_seqs, data.n_items)
        knn = ItemKNN().fit(train_seqs, data.n_items)
        kw = {"item_popularity": pop, "item_categories": np.asarray(data.item_category, dtype=object)}
        blend = result.model.blend
        mlflow.log_metric("blend_weight", blend.weight if blend is not None else 0.0)
        mlflow.log_metric("blend_user_share", blend.user_share if blend is not None else 0.0)
        mlflow.log_metric("blend_linear_share", blend.linear_share if blend is not None else 0.0)
        mlflow.log_metric("blend_ranker_share", blend.ranker_share if blend is not None else 0.0)
        mlflow.set_tag("blend_kind", blend.kind if blend is not None else "none")
        results = {
            # as served: with the co-occurrence blend when validation chose one
            "two_tower": evaluate_scores(result.score_fn(test), test, data.n_items, **kw),
            "two_tower_model_only": evaluate_scores(result.score_fn(test, blend=False), test,
                                                    data.n_items, **kw),
            "popularity": evaluate_scores(
                lambda p: np.broadcast_to(pop, (len(p), data.n_items)), test, data.n_items, **kw),
            "item_knn": evaluate_scores(
                lambda p: knn.score([test.histories[i] for i in p]), test, data.n_items, **kw),
        }
        tracking.log_metrics_table(results)
        tracking.log_curves_plot(result.history)
        metrics = results["two_tower"]
        result.model.metadata.update({"ds": ds, "data_window": list(window), "metrics": metrics,
                                      "data_fingerprint": fingerprint})
        model_uri = log_recommender(result.model)
    version = None
    if register:
        version = _register(cfg, run_id, model_uri, ds, metrics, fingerprint)
    summary = {"ds": ds, "run_id": run_id, "model_uri": model_uri, "registered_version": version,
               "best_epoch": result.best_epoch, "fingerprint": fingerprint,
               "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
               "baselines": {m: {"ndcg@10": r["ndcg@10"], "recall@10": r["recall@10"]}
                             for m, r in results.items() if m != "two_tower"},
               "blend": result.model.metadata.get("blend"),
               "data": data_facts}
    _write_summary(lake, ds, summary)
    return summary


def _register(cfg: EcrecConfig, run_id: str, model_uri: str, ds: str,
              metrics: dict[str, float], fingerprint: str) -> str | None:
    try:
        from ecrec_lib.registry import register_challenger
    except ImportError:
        log.warning("ecrec_lib.registry is not available: model logged (%s) but not registered",
                    model_uri)
        return None
    version = register_challenger(cfg, run_id, model_uri, ds, metrics, fingerprint)
    log.info("registered %s version %s as challenger", cfg.registered_model_name, version)
    return str(version)


def _write_summary(lake: Lake, ds: str, summary: dict[str, Any]) -> None:
    path = lake.ops("training", ds) + "/summary.json"
    if is_local(path):
        p = Path(path.removeprefix("file://"))
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=1, default=str))
        tmp.replace(p)
    else:
        import fsspec  # object stores: fsspec ships with pandas' optional stack / mlflow

        with fsspec.open(path, "w") as f:
            f.write(json.dumps(summary, indent=1, default=str))
    log.info("summary written to %s", path)


if __name__ == "__main__":
    raise SystemExit(main())
