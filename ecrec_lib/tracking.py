"""MLflow run helpers: config, data facts, curves, metric tables and plots of a training run."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ecrec_lib.privacy.secrets import redact

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 500  # MLflow's limit on a param value
NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as an experiment's description
TRAINING_EXPERIMENT_DESCRIPTION = (
    "ecrec training runs: one per nightly `train_encoders` (run name `train-<ds>`), with the "
    "full config, the data window and fingerprint, per-epoch curves, the test-split metrics "
    "against popularity and item-kNN, and the logged two-tower model. A registered run carries "
    "the tag `registered_model_version` and its model card; the promotion gate's runs (in the "
    "`-promotion` experiment) are its children (tag `latest_decision_run_id`)."
)


def git_commit(repo_dir: str | Path | None = None) -> str:
    """The current git commit of the code, or 'unknown' (no git, not a repo)."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else "unknown"


def flatten_params(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    """``{prefix.key: str(value)}`` clipped to MLflow's param length, credentials redacted."""
    return {f"{prefix}.{k}": str(v)[:MAX_PARAM_CHARS] for k, v in redact(dict(values)).items()}


def configure_mlflow(tracking_uri: str, experiment: str, artifact_root: str = "",
                     registry_uri: str = "",
                     description: str = TRAINING_EXPERIMENT_DESCRIPTION) -> str:
    """Point MLflow at ``tracking_uri`` and make sure ``experiment`` exists; returns its id.

    A new experiment stores artifacts under ``artifact_root`` when given (local dir or URI).
    ``description`` is set when the experiment has none (one edited in the UI stays).
    """
    import mlflow

    _ensure_sqlite_dir(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    # Always set: an MLFLOW_REGISTRY_URI inherited from the parent process would otherwise win.
    mlflow.set_registry_uri(registry_uri or tracking_uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        location = artifact_location(artifact_root, experiment) if artifact_root else None
        exp_id = mlflow.create_experiment(experiment, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    if description and not (exp is not None and (exp.tags or {}).get(NOTE_TAG)):
        mlflow.MlflowClient().set_experiment_tag(exp_id, NOTE_TAG, description)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def artifact_location(root: str, experiment: str) -> str:
    """Where experiment ``experiment`` keeps its artifacts under ``root``.

    ``root`` is a local folder (made absolute) or any URI with a scheme: ``s3://...``, or
    ``mlflow-artifacts:/`` for the store a tracking server serves (``--serve-artifacts``).
    """
    # A scheme (two letters at least, so a Windows drive is a path) means a URI.
    base = root if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", root) else Path(root).resolve().as_uri()
    return f"{base.rstrip('/')}/{experiment}"


def _ensure_sqlite_dir(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


@contextmanager
def training_run(run_name: str | None, tags: Mapping[str, str] | None = None) -> Iterator[Any]:
    """An MLflow run tagged with the git commit; marked FAILED when the body raises."""
    import mlflow

    all_tags = redact({"git_commit": git_commit(), **(tags or {})})
    with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
        yield run


def log_run_config(ecrec_cfg: Mapping[str, Any], model_cfg: Mapping[str, Any],
                   data_facts: Mapping[str, Any]) -> None:
    """Full configs as params + JSON artifacts; data window/fingerprint/counts as params.

    Every value goes through :func:`ecrec_lib.privacy.secrets.redact` first, whatever the
    caller passed: MLflow is readable by everyone who can read the experiment.
    """
    import mlflow

    ecrec_cfg, model_cfg, data_facts = redact(dict(ecrec_cfg)), redact(dict(model_cfg)), \
        redact(dict(data_facts))
    mlflow.log_params({**flatten_params("cfg", ecrec_cfg), **flatten_params("model", model_cfg),
                       **flatten_params("data", data_facts)})
    mlflow.log_dict(dict(ecrec_cfg), "config/ecrec_config.json")
    mlflow.log_dict(dict(model_cfg), "config/model_config.json")
    mlflow.log_dict(json.loads(json.dumps(dict(data_facts), default=str)), "config/data.json")


def log_epoch(row: Mapping[str, float]) -> None:
    """One epoch's history row as metrics with step = epoch."""
    import mlflow

    step = int(row.get("epoch", 0))
    mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in row.items() if k != "epoch"},
                       step=step)


def log_metrics_table(results: Mapping[str, Mapping[str, float]], name: str = "test_metrics") -> None:
    """``{model_name: {metric: value}}`` as flat metrics (``test.<model>.<metric>``), an
    MLflow table and CSV + Markdown artifacts."""
    import mlflow
    import pandas as pd

    flat = {f"test.{m}.{k.replace('@', '_at_')}": float(v)
            for m, vals in results.items() for k, v in vals.items()}
    mlflow.log_metrics(flat)
    df = pd.DataFrame([{"model": m, **vals} for m, vals in results.items()])
    mlflow.log_table(df, artifact_file=f"{name}.json")
    with tempfile.TemporaryDirectory() as tmp:
        df.to_csv(Path(tmp) / f"{name}.csv", index=False)
        (Path(tmp) / f"{name}.md").write_text(markdown_table(df))
        mlflow.log_artifact(str(Path(tmp) / f"{name}.csv"), "metrics")
        mlflow.log_artifact(str(Path(tmp) / f"{name}.md"), "metrics")


def markdown_table(df: Any) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(history: Sequence[Mapping[str, float]], path: str | Path) -> Path:
    """PNG of training loss and validation NDCG@10 / Recall@10 per epoch."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(epochs, [h["loss"] for h in history], marker="o", label="train loss")
    a1.set_xlabel("epoch")
    a1.set_title("training loss")
    a1.legend()
    for key in ("valid_ndcg@10", "valid_recall@10"):
        if any(key in h for h in history):
            a2.plot([h["epoch"] for h in history if key in h], [h[key] for h in history if key in h],
                    marker="o", label=key)
    a2.set_xlabel("epoch")
    a2.set_title("validation")
    a2.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def log_curves_plot(history: Sequence[Mapping[str, float]]) -> None:
    import mlflow

    if not history:
        return
    with tempfile.TemporaryDirectory() as tmp:
        p = plot_curves(history, Path(tmp) / "training_curves.png")
        mlflow.log_artifact(str(p), "plots")
