"""Lineage: the Airflow assets each DAG task reads and writes, and the figures they carry.

Every DAG task declares its inlets and outlets from :data:`TASK_LINEAGE`, so Airflow's Assets
view draws raw → clean → features → model → scores → warehouse (→ online cache). After a job
ran, its task attaches the night's key figures to each outlet's asset event (rows in, clean,
quarantined by reason, model version, rows published) from the records the job wrote under
``ops/``; the same figures are the task's XCom. Only the standard library (and pyarrow, for
Parquet row counts from file footers) is used: this runs in the task process, not in a job.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ecrec_lib.lake import FEATURES, Lake

SCHEME = "x-ecrec"  # "x-" schemes are kept verbatim by Airflow (no URI normalizer needed)
SCORE_TABLES = ("user_topk", "item_related", "query_topk", "trending")


def asset_uri(name: str) -> str:
    """``raw/events`` -> ``x-ecrec://lake/raw/events``; ``model`` and ``warehouse/x`` likewise."""
    zone = name.split("/", 1)[0]
    where = {"model": "mlflow", "warehouse": "warehouse", "online": "redis"}.get(zone, "lake")
    return f"{SCHEME}://{where}/{name}"


RAW = ("raw/events", "raw/catalog")
CLEAN = ("clean/events", "clean/catalog")
FEATURE_ASSETS = tuple(f"features/{name}" for name in FEATURES)
SCORES = tuple(f"scores/{t}" for t in SCORE_TABLES)
WAREHOUSE = tuple(f"warehouse/{t}" for t in (*SCORE_TABLES, "items", "published_nights"))
FEEDBACK = ("warehouse/metrics_daily", "warehouse/drift_daily")
MODEL = ("model",)
ONLINE = ("online/user_topk", "online/item_related")

# task id -> (inlets, outlets), by asset name (see asset_uri)
TASK_LINEAGE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "clean": (RAW, CLEAN),
    "build_features": (CLEAN, FEATURE_ASSETS),
    "train": (FEATURE_ASSETS, ()),
    "register": ((), MODEL),
    "promote": (MODEL, MODEL),
    "score": ((*MODEL, *FEATURE_ASSETS), SCORES),
    "publish": ((*SCORES, "clean/catalog"), WAREHOUSE),
    "export_online": (SCORES[:2], ONLINE),
    "compute_feedback": (("warehouse/user_topk", "clean/events"), FEEDBACK),
}


def _read(path: Path) -> dict[str, Any]:
    """A JSON record, or {} when the job wrote none for this night."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def parquet_rows(path: str) -> int | None:
    """Rows of a local Parquet partition from its file footers (no data read); None if absent."""
    import pyarrow.parquet as pq

    files = sorted(p for p in Path(path).glob("*.parquet")) if Path(path).is_dir() else []
    if not files:
        return None
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def figures(task_id: str, lake_root: str, ds: str) -> dict[str, dict[str, Any]]:
    """Asset name -> the figures of tonight's event, for the outlets of ``task_id``."""
    lake = Lake(lake_root)
    out: dict[str, dict[str, Any]] = {}
    if task_id == "clean":
        for asset, source in zip(CLEAN, ("events", "catalog"), strict=True):
            rec = _read(Path(lake.ops("reconciliation", ds)) / f"{source}.json")
            out[asset] = {k: rec[k] for k in (
                "input_rows", "clean_rows", "quarantined_rows", "duplicate_rows",
                "quarantine_by_reason", "status") if k in rec}
    elif task_id == "build_features":
        for asset in FEATURE_ASSETS:
            out[asset] = {"rows": parquet_rows(lake.features(asset.split("/", 1)[1], ds))}
    elif task_id in ("register", "promote"):
        training = _read(Path(lake.ops("training", ds)) / "summary.json")
        decision = _read(Path(lake.ops("promotion", ds)) / "decision.json")
        out["model"] = {k: v for k, v in {
            "version": decision.get("challenger_version") or training.get("registered_version"),
            "decision": decision.get("decision"),
            "champion_version": decision.get("champion_version"),
            "training_run": training.get("run_id"),
        }.items() if v is not None}
    elif task_id == "score":
        summary = _read(Path(lake.ops("scoring", ds)) / "summary.json")
        for asset in SCORES:
            table = asset.split("/", 1)[1]
            out[asset] = {"rows": summary.get("rows", {}).get(table),
                          "model_version": summary.get("model_version")}
    elif task_id == "publish":
        summary = _read(Path(lake.ops("scoring", ds)) / "summary.json")
        for asset in WAREHOUSE:
            table = asset.split("/", 1)[1]
            out[asset] = {"rows_published": summary.get("rows", {}).get(table),
                          "model_version": summary.get("model_version")}
    return out


def key_figures(task_id: str, lake_root: str, ds: str) -> dict[str, Any]:
    """The XCom a task returns: its outlets' figures, flattened to one level per asset."""
    return {asset: figs for asset, figs in figures(task_id, lake_root, ds).items() if figs}
