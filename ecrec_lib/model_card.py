"""Model cards: one Markdown page per registered version (data, config, metrics, limits).

:func:`render_model_card` is pure: it formats what it is given and never reads the registry,
so it is tested on literal inputs. The registry code logs the result to the version's run as
``model_card.md`` and sets it as the version description (shown in the MLflow UI).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ecrec_lib.privacy.secrets import redact_text

DEFAULT_LIMITATIONS = (
    "Trained on implicit feedback (views, clicks, carts, purchases) of a short lookback window: "
    "tastes older than the window are invisible to it.",
    "Offline metrics are leave-one-out next-item metrics; they measure retrieval of the next "
    "interaction, not revenue or long-term satisfaction.",
    "Popular items dominate the training signal; long-tail items are recommended less often "
    "than their relevance alone would justify.",
    "Users with fewer than two item events get no personal history; scoring falls back to "
    "popularity / trending lists for them.",
)

COLD_START_MECHANISM = (
    "Items unseen in training are embedded from their text (title, brand, category) by the "
    "shared MiniLM item encoder, without the learned ID embedding, so they land in the same "
    "space and can be retrieved from the first day they appear in the catalog."
)

# Model metric key -> label; baselines use the same key with a "<name>_" prefix.
METRIC_LABELS = {
    "test_ndcg_10": "NDCG@10",
    "test_recall_10": "Recall@10",
    "test_recall_50": "Recall@50",
    "test_mrr_10": "MRR@10",
    "test_coverage_10": "Coverage@10",
}


MODEL_NAMES = ("model", "two_tower", "twotower", "ecrec")  # the trained model's own rows
BASELINE_ALIASES = {"popularity": "pop", "item_knn": "itemknn", "knn": "itemknn"}


def normalize_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flat ``test_ndcg_10`` / ``pop_test_ndcg_10`` keys from any of the shapes training uses.

    Accepted: flat keys as above; the model's own evaluate_scores keys (``ndcg@10``); MLflow
    keys ``test.<model>.<metric>`` (``ndcg_at_10``); and nested ``{"<model>": {"ndcg@10":
    ...}}`` (e.g. the training summary's ``baselines``). Non-numeric values are dropped.
    """
    out: dict[str, float] = {}

    def emit(model: str, metric: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        metric = metric.replace("_at_", "_").replace("@", "_")
        prefix = "" if model in MODEL_NAMES else BASELINE_ALIASES.get(model, model) + "_"
        out[f"{prefix}test_{metric}"] = float(value)

    for key, value in metrics.items():
        if isinstance(value, Mapping):
            for metric, v in value.items():
                emit(str(key), str(metric), v)
        elif key.startswith("test.") and key.count(".") >= 2:
            _, model, metric = key.split(".", 2)
            emit(model, metric, value)
        elif "@" in key:
            emit("model", key, value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return lines


def split_baselines(
    metrics: Mapping[str, float], metric_keys: Sequence[str] = tuple(METRIC_LABELS)
) -> dict[str, dict[str, float]]:
    """``{"model": {...}, "<baseline>": {...}}`` from flat keys such as ``pop_test_ndcg_10``."""
    out: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        for mkey in metric_keys:
            if key == mkey:
                out.setdefault("model", {})[mkey] = float(value)
            elif key.endswith("_" + mkey):
                out.setdefault(key[: -len(mkey) - 1], {})[mkey] = float(value)
    return out


def render_model_card(
    *,
    model_name: str,
    version: str,
    ds: str,
    run_id: str,
    data_window: Mapping[str, Any],
    training_config: Mapping[str, Any],
    metrics: Mapping[str, float],
    fingerprint: str = "",
    git_commit: str = "",
    previous_champion: Mapping[str, Any] | None = None,
    holdout: Mapping[str, Mapping[str, float]] | None = None,
    cold_start_metrics: Mapping[str, float] | None = None,
    limitations: Sequence[str] = DEFAULT_LIMITATIONS,
    decision: str = "",
) -> str:
    """The Markdown model card of one version.

    ``metrics`` are the flat training-run metrics (model keys like ``test_ndcg_10``, baselines
    prefixed, e.g. ``pop_test_ndcg_10``). ``previous_champion`` is ``{"version", "metrics"}``
    of the champion at registration time (None when there was none). ``holdout`` is the
    promotion gate's side-by-side evaluation ``{"challenger": {...}, "champion": {...},
    "popularity": {...}}`` on the newest data. ``cold_start_metrics`` are metrics on targets
    unseen in training, when measurable; otherwise the card states the mechanism.
    """
    lines = [f"# {model_name} — version {version}", ""]
    lines += [
        f"- **Trained for ds**: {ds}",
        f"- **Training run**: `{run_id}`",
        f"- **Data fingerprint**: `{fingerprint or 'unknown'}`",
        f"- **Code commit**: `{git_commit or 'unknown'}`",
    ]
    if decision:
        lines.append(f"- **Promotion decision**: {decision}")
    if holdout:
        # First: the side-by-side comparison on the newest data is what a reviewer decides on.
        lines += ["", "## Promotion gate: newest holdout", ""]
        names = list(holdout)
        hkeys = sorted({k for m in holdout.values() for k in m})
        lines += _table(["metric", *names], [[k, *(holdout[n].get(k) for n in names)] for k in hkeys])
    lines += ["", "## Data window", ""]
    if data_window:
        lines += _table(["key", "value"], sorted(data_window.items()))
    else:
        lines.append("Not recorded by the training run.")

    lines += ["", "## Training configuration", ""]
    if training_config:
        lines += _table(["parameter", "value"], sorted(training_config.items()))
    else:
        lines.append("Not recorded by the training run.")

    lines += ["", "## Offline metrics (training run's test split)", ""]
    groups = split_baselines(metrics)
    keys = [k for k in METRIC_LABELS if any(k in g for g in groups.values())]
    if keys:
        names = ["model"] + sorted(g for g in groups if g != "model")
        prev = dict(previous_champion["metrics"]) if previous_champion else {}
        header = ["metric", *names]
        if previous_champion:
            header.append(f"previous champion (v{previous_champion['version']})")
        rows = []
        for k in keys:
            row: list[Any] = [METRIC_LABELS[k], *(groups.get(n, {}).get(k) for n in names)]
            if previous_champion:
                row.append(prev.get(k))
            rows.append(row)
        lines += _table(header, rows)
        if previous_champion:
            lines += [
                "",
                "The previous champion's figures come from its own training run (an older "
                "test split); the promotion gate compares both on the same, newest holdout.",
            ]
        elif previous_champion is None:
            lines += ["", "There was no champion when this version was registered."]
    else:
        lines.append("The training run logged no test metrics.")

    lines += ["", "## Cold start", ""]
    if cold_start_metrics:
        lines.append("Evaluation on held-out targets that were absent from training:")
        lines.append("")
        lines += _table(["metric", "value"], sorted(cold_start_metrics.items()))
        lines.append("")
    lines.append(COLD_START_MECHANISM)
    if not cold_start_metrics:
        lines.append(
            "No held-out interaction with a never-trained item was available, so cold-start "
            "quality was not measured for this version."
        )

    lines += ["", "## Known limitations", ""]
    lines += [f"- {item}" for item in limitations]
    # The card is the version's public description: no credential from a logged config.
    return redact_text("\n".join(lines) + "\n")
