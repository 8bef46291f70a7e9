"""Nightly batch scoring: champion model -> user_topk, item_related, query_topk, trending.

    python -m jobs.score_topk --ds 2024-01-01 [--k 100] [--engine local|spark]
        [--model-uri URI | --model-version V]

Loads the registry's ``champion`` (``--model-version`` pins a registry version, as backfills
do; ``--model-uri`` overrides it for tests and ad-hoc runs), embeds the catalog snapshot and
every user of features/user_sequences/ds=D, computes the exact top-K by similarity (chunked
torch kernel, GPU when present), re-ranks, adds cold-start lists, and writes
scores/<table>/ds=D/ atomically plus ops/scoring/ds=D/summary.json and, last,
ops/runs/ds=D/manifest.json. The run holds the single-writer lock of those partitions
throughout (a second scorer of the same ds fails at once, naming the first).
Exit 2 when there is no champion or the pinned version cannot be loaded (nothing is written;
published tables stay untouched); 3 an input is missing; 5 another run is writing this ds.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ecrec_lib import partitions
from ecrec_lib.config import EcrecConfig, add_config_args, config_from_args
from ecrec_lib.lake import Lake, parse_ds
from ecrec_lib.models.api import Recommender
from ecrec_lib.scoring.pipeline import (
    ScoringInputError,
    ScoringInputs,
    ScoringParams,
    check_feature_set,
    end_of_ds_ts,
    read_inputs,
    score_all,
)
from ecrec_lib.scoring.tables import (
    TABLE_COLUMNS,
    manifest_path,
    write_atomic,
    write_json_atomic,
    write_manifest,
)
from jobs.common import setup_logging

log = logging.getLogger("jobs.score_topk")
EXIT_NO_CHAMPION = 2
EXIT_BAD_INPUT = 3
EXIT_LOCKED = 5


class ChampionUnavailable(RuntimeError):
    """No model to score with; the message says why and how to fix it."""


def load_model(cfg: EcrecConfig, model_uri: str | None,
               model_version: str | None = None) -> tuple[str, Recommender]:
    """(model_version, recommender): the champion, registry version ``model_version``
    (``models:/<name>/<version>``, whatever the aliases say), or ``model_uri`` when given."""
    if model_version is not None:
        if model_uri is not None:
            raise ValueError("give --model-version or --model-uri, not both")
        from ecrec_lib.registry.client import model_version_uri

        version, model_uri = model_version, model_version_uri(cfg.registered_model_name,
                                                                model_version)
    elif model_uri is None:
        try:
            from ecrec_lib.registry.client import RegistryError, resolve_champion
        except ImportError as exc:  # registry module not installed in this checkout
            raise ChampionUnavailable(f"cannot import the model registry client: {exc}") from None
        try:
            version, model_uri = resolve_champion(cfg)
        except RegistryError as exc:
            raise ChampionUnavailable(str(exc)) from None
    else:
        version = model_uri.rstrip("/").rsplit("/", 1)[-1]
    if model_uri.startswith(("models:/", "runs:/")):
        from ecrec_lib.registry.client import configure_mlflow

        configure_mlflow(cfg)  # the URI is resolved against the configured registry
    from ecrec_lib.models.artifact import ArtifactError, load_recommender
    from ecrec_lib.scoring.topk import resolve_device

    try:
        return version, load_recommender(model_uri, device=resolve_device(cfg.device))
    except ArtifactError as exc:
        if model_version is None:
            raise
        raise ChampionUnavailable(
            f"pinned model version {model_version} ({model_uri}) cannot be loaded: {exc}. "
            "List the registered versions with `python -m jobs.models list`"
        ) from None


def run(
    cfg: EcrecConfig,
    ds: str,
    model: Recommender,
    model_version: str,
    *,
    k: int | None = None,
    engine: str = "local",
    spark=None,
    inputs: ScoringInputs | None = None,
    precision: str = "fp32",
    run_id: str | None = None,
) -> dict:
    """Score and write all tables for ``ds``; returns the summary written to ops/scoring.

    Holds the single-writer lock of every score partition of ``ds`` and of its manifest;
    the manifest (``ops/runs/ds=D/manifest.json``) is removed first and written last, so a
    run killed half-way leaves no manifest and publishing refuses its tables.
    """
    lake = Lake(cfg.lake_root)
    run_id = run_id or partitions.new_run_id()
    targets = [lake.scores(name, ds) for name in TABLE_COLUMNS] + [lake.ops("runs", ds)]
    with partitions.partition_locks(targets, run_id):
        manifest = Path(manifest_path(lake, ds))
        manifest.unlink(missing_ok=True)
        return _score(cfg, ds, model, model_version, lake, run_id, k=k, engine=engine,
                      spark=spark, inputs=inputs, precision=precision)


def _score(cfg: EcrecConfig, ds: str, model: Recommender, model_version: str, lake: Lake,
           run_id: str, *, k: int | None, engine: str, spark, inputs: ScoringInputs | None,
           precision: str) -> dict:
    t0 = time.perf_counter()
    features_run_id = check_feature_set(lake, ds)
    inputs = inputs or read_inputs(lake, ds)
    params = ScoringParams.from_config(cfg, k=k, precision=precision)
    scorer = None
    if engine == "spark":
        from ecrec_lib.scoring.spark_scoring import spark_user_scorer

        if spark is None:
            raise ValueError("engine=spark needs a SparkSession")
        scorer = spark_user_scorer(spark, model, params, end_of_ds_ts(ds), ds, model_version)
    tables, timings = score_all(model, inputs, params, model_version, user_scorer=scorer)
    t = time.perf_counter()
    paths = {name: write_atomic(name, tables[name], lake, ds, run_id) for name in TABLE_COLUMNS}
    timings["write_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    ut = tables["user_topk"]
    summary = {
        "ds": ds,
        "run_id": run_id,
        "features_run_id": features_run_id,
        "model_version": model_version,
        "engine": engine,
        "k": params.k,
        "n_related": params.n_related,
        "exclude_purchased": params.exclude_purchased,
        "rows": {name: int(len(df)) for name, df in tables.items()},
        "users": int(ut["user_key"].nunique()),
        "users_by_strategy": {
            str(s): int(n) for s, n in ut.groupby("strategy")["user_key"].nunique().items()
        },
        "paths": paths,
        "timings_s": {name: round(v, 3) for name, v in timings.items()},
    }
    write_json_atomic(f"{lake.ops('scoring', ds)}/summary.json", summary)
    write_manifest(lake, ds, run_id, model_version, summary["rows"])
    log.info("scored ds=%s with model %s: %s", ds, model_version, summary["rows"])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--ds", required=True, help="logical date YYYY-MM-DD to score")
    parser.add_argument("--k", type=int, default=None, help="list length (default: cfg.top_k)")
    parser.add_argument("--engine", choices=("local", "spark"), default="local",
                        help="local: one process (torch); spark: users partitioned on Spark")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model-uri", default=None,
                       help="score with this MLflow model URI instead of the champion")
    model.add_argument("--model-version", default=None,
                       help="score with this registry version of cfg.registered_model_name "
                       "(backfills: a fixed model, whatever the champion is now)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                        help="candidate pass precision of the top-K kernel (results are exact)")
    args = parser.parse_args(argv)
    setup_logging()
    parse_ds(args.ds)
    cfg = config_from_args(args)
    try:
        version, model = load_model(cfg, args.model_uri, args.model_version)
    except ChampionUnavailable as exc:
        log.error("no model to score with, nothing written: %s", exc)
        return EXIT_NO_CHAMPION
    spark = None
    if args.engine == "spark":
        from jobs.common import spark_session

        spark = spark_session(cfg, "ecrec-score-topk")
    try:
        run(cfg, args.ds, model, version, k=args.k, engine=args.engine, spark=spark,
            precision=args.precision)
    except (ScoringInputError, FileNotFoundError) as exc:
        log.error("cannot score ds=%s: %s", args.ds, exc)
        return EXIT_BAD_INPUT
    except partitions.PartitionLocked as exc:
        log.error("%s", exc)
        return EXIT_LOCKED
    finally:
        if spark is not None:
            spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
