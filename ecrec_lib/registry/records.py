"""Where promotion decisions are recorded: the lake's promotion log and MLflow.

- ``ops/promotion/ds=D/decision.json``: the gate's decision for ds D (one JSON line,
  replaced when the ds is re-run).
- ``ops/promotion/promotion_log.jsonl``: every decision and manual action, one JSON line
  each; gate lines are keyed by ds, so re-running a ds replaces its line instead of adding one.
- an MLflow run per decision in the ``<experiment>-promotion`` experiment (a child of the
  challenger's training run), holding the decision and ``decisions.jsonl``: the model's whole
  promotion log as it stood after this decision; and a fixed set of tags on the versions
  involved (latest decision, reason, ds, decision run).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ecrec_lib.config import EcrecConfig
from ecrec_lib.lake import Lake, is_local
from ecrec_lib.privacy.secrets import redact, redact_text
from ecrec_lib.tracking import artifact_location

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

LOG_FILE = "promotion_log.jsonl"
DECISION_FILE = "decision.json"
DECISIONS_ARTIFACT = "decisions.jsonl"
NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as an experiment's description
PROMOTION_EXPERIMENT_DESCRIPTION = (
    "One run per promotion decision of ecrec's registered model: the nightly gate "
    "(challenger vs. champion vs. popularity on the newest holdout) and manual promote / "
    "rollback (`python -m jobs.models`). Each gate run is a child of the challenger's training "
    "run, names both versions and their training runs in its tags, and holds "
    "`decisions.jsonl`: every decision on the model so far."
)


# ------------------------------------------------------------------ file helpers


def _filesystem(path: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    if is_local(path):
        return pafs.LocalFileSystem(), path.removeprefix("file://")
    uri = "s3://" + path.removeprefix("s3a://") if path.startswith("s3a://") else path
    return pafs.FileSystem.from_uri(uri)


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    import pyarrow.fs as pafs

    fs, p = _filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(p) as f:
        return f.read().decode("utf-8")


def write_text(path: str, text: str) -> None:
    """Write a whole file (atomically when local: write a temp file, then rename)."""
    fs, p = _filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    if is_local(path):
        tmp = Path(p + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
        return
    with fs.open_output_stream(p) as f:
        f.write(text.encode("utf-8"))


def read_parquet_dir(path: str, columns: Sequence[str] | None, producer: str) -> pd.DataFrame:
    """A Parquet partition as pandas; a clear error naming the job to run when it is missing."""
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    fs, p = _filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        raise FileNotFoundError(
            f"{path} does not exist; run the {producer} job for this ds first "
            f"(`python -m jobs.{producer} --ds D`)"
        )
    table = pq.read_table(p, filesystem=fs, columns=list(columns) if columns else None)
    return table.to_pandas()


# ------------------------------------------------------------------ promotion log


def decision_path(cfg: EcrecConfig, ds: str) -> str:
    return Lake(cfg.lake_root).ops("promotion", ds) + "/" + DECISION_FILE


def log_path(cfg: EcrecConfig) -> str:
    return Lake(cfg.lake_root).dataset("ops", "promotion") + "/" + LOG_FILE


def _line_key(record: Mapping[str, Any]) -> tuple[str, str]:
    """Gate decisions are unique per ds; manual actions are unique per event."""
    if record.get("kind") == "gate":
        return ("gate", str(record.get("ds")))
    return ("manual", str(record.get("event_id")))


def read_promotion_log(cfg: EcrecConfig) -> list[dict[str, Any]]:
    text = read_text(log_path(cfg)) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def append_promotion_log(cfg: EcrecConfig, record: Mapping[str, Any]) -> None:
    """Add ``record`` to the cumulative log, replacing an earlier line with the same key."""
    key = _line_key(record)
    lines = [r for r in read_promotion_log(cfg) if _line_key(r) != key]
    lines.append(dict(record))
    write_text(log_path(cfg), "".join(json.dumps(r, sort_keys=True) + "\n" for r in lines))


def write_gate_decision(cfg: EcrecConfig, record: Mapping[str, Any]) -> str:
    """Write ``ops/promotion/ds=D/decision.json`` and the log line for it; returns the path."""
    path = decision_path(cfg, str(record["ds"]))
    write_text(path, json.dumps(dict(record), sort_keys=True) + "\n")
    append_promotion_log(cfg, record)
    return path


# ------------------------------------------------------------------ MLflow records


def ensure_experiment(
    client: MlflowClient, cfg: EcrecConfig, name: str, description: str = ""
) -> str:
    """The id of experiment ``name``, created with its artifacts under mlflow_artifact_root.

    ``description`` is set when the experiment has none (a description edited in the UI stays).
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        exp_id = exp.experiment_id
        has_note = bool((exp.tags or {}).get(NOTE_TAG))
    else:
        exp_id = client.create_experiment(
            name, artifact_location=artifact_location(cfg.mlflow_artifact_root, name))
        has_note = False
    if description and not has_note:
        client.set_experiment_tag(exp_id, NOTE_TAG, description)
    return exp_id


def promotion_experiment(cfg: EcrecConfig) -> str:
    return f"{cfg.mlflow_experiment}-promotion"


def _flat_params(record: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in record.items():
        if isinstance(value, str | int | float | bool) or value is None:
            out[key] = redact_text(str(value))[:6000]
    return out


def model_decisions(cfg: EcrecConfig) -> list[dict[str, Any]]:
    """The promotion-log lines of the config's registered model, oldest first."""
    return [r for r in read_promotion_log(cfg) if r.get("model") == cfg.registered_model_name]


def log_decision_run(
    client: MlflowClient,
    cfg: EcrecConfig,
    record: Mapping[str, Any],
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    *,
    parent_run_id: str = "",
    tags: Mapping[str, str] | None = None,
    persist: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """One finished MLflow run holding a decision; returns its id.

    The run is a child of ``parent_run_id`` (the challenger's training run) when given. The
    record gets the run's id as ``decision_run_id``; ``persist`` then writes it to the lake,
    and the model's promotion log as it stands afterwards is logged as ``decisions.jsonl``.
    A failure marks the run FAILED and propagates.
    """
    exp_id = ensure_experiment(client, cfg, promotion_experiment(cfg),
                               PROMOTION_EXPERIMENT_DESCRIPTION)
    name = f"{record.get('kind', 'decision')}-{record.get('ds') or record.get('event_id')}"
    run_tags = {
        "decision": str(record["decision"]),
        "kind": str(record.get("kind", "")),
        "ds": str(record.get("ds", "")),
        "by": str(record.get("by", "")),
        "model": cfg.registered_model_name,
        "mlflow.runName": name,
        **dict(tags or {}),
    }
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, tags=run_tags, run_name=name)
    run_id = run.info.run_id
    full = {**record, "decision_run_id": run_id}
    status = "FAILED"
    try:
        for key, value in _flat_params(full).items():
            client.log_param(run_id, key, value)
        for model, values in (metrics or {}).items():
            for key, value in values.items():
                safe = key.replace("@", "_at_")
                client.log_metric(run_id, f"{model}.{safe}", float(value))
        client.log_text(run_id, json.dumps(redact(full), indent=2, sort_keys=True),
                        "decision.json")
        if persist is not None:
            persist(full)
        lines = model_decisions(cfg)
        client.log_text(run_id, "".join(json.dumps(redact(r), sort_keys=True) + "\n"
                                        for r in lines), DECISIONS_ARTIFACT)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id


def log_model_card(client: MlflowClient, name: str, version: str, run_id: str, card: str) -> None:
    """Attach the card to the version's training run and show it as the version description."""
    if run_id:
        client.log_text(run_id, card, "model_card.md")
    client.update_model_version(name, version, description=card)
