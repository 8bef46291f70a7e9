"""The nightly report as one self-contained HTML page: trends over the last nights as plots.

:func:`collect_history` reads what the jobs recorded (the lake's ``ops/`` records and the
warehouse's feedback tables) for the nights up to ``ds``; :func:`render_html` turns it and
the night's facts (``jobs.daily_report``'s report dict) into HTML with the plots embedded as
base64 PNG, so the file opens anywhere (an MLflow artifact, a mail attachment) on its own.
Only aggregates are shown: no user key, raw id or other personal data reaches the page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ecrec_lib.config import EcrecConfig
from ecrec_lib.lake import Lake, parse_ds

FEEDBACK_TREND = ("hit_rate", "coverage", "diversity")
REPORT_EXPERIMENT_SUFFIX = "-reports"
REPORT_EXPERIMENT_DESCRIPTION = (
    "One run per nightly report (run name `report-<ds>`, tag `ds`): `report.html` (plots of "
    "quarantine, feedback metrics, drift and model metrics over the last nights), "
    "`report.md` and `report.json`. A re-run of a night replaces its run's files."
)


@dataclass
class History:
    """The last nights' trends, each a tidy DataFrame (empty when nothing was recorded)."""

    days: list[str]
    quarantine: pd.DataFrame  # ds, source (events | catalog), reason, rows
    feedback: pd.DataFrame  # ds, hit_rate, coverage, diversity (strategy 'all')
    drift: pd.DataFrame  # ds, feature, psi
    model_metrics: pd.DataFrame  # version, source (training test | gate holdout), ndcg_at_10
    notes: list[str] = field(default_factory=list)  # why a section is empty


def window(ds: str, nights: int) -> list[str]:
    """The ``nights`` logical dates ending at ``ds``, oldest first."""
    if nights < 1:
        raise ValueError(f"nights must be >= 1, got {nights}")
    end = parse_ds(ds)
    return [(end - dt.timedelta(days=k)).isoformat() for k in range(nights - 1, -1, -1)]


def _json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); re-run the job that wrote it") from None


def quarantine_history(lake: Lake, days: Sequence[str]) -> pd.DataFrame:
    """Quarantined rows by reason per night, from ``ops/reconciliation/ds=D/*.json``."""
    rows = []
    for day in days:
        for source in ("events", "catalog"):
            rec = _json(Path(lake.ops("reconciliation", day)) / f"{source}.json")
            for reason, n in ((rec or {}).get("quarantine_by_reason") or {}).items():
                rows.append({"ds": day, "source": source, "reason": reason, "rows": int(n)})
    return pd.DataFrame(rows, columns=["ds", "source", "reason", "rows"])


def model_metric_history(lake: Lake, days: Sequence[str]) -> pd.DataFrame:
    """NDCG@10 per model version: its training run's test split (``ops/training``) and the
    promotion gate's newest holdout (``ops/promotion/promotion_log.jsonl``, the latest
    measurement of each version)."""
    rows: dict[tuple[str, str], float] = {}
    for day in days:
        summary = _json(Path(lake.ops("training", day)) / "summary.json") or {}
        version, value = summary.get("registered_version"), (summary.get("metrics") or {}).get("ndcg@10")
        if version and value is not None:
            rows[(str(version), "training test split")] = float(value)
    log = Path(lake.dataset("ops", "promotion")) / "promotion_log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    gate = sorted((json.loads(x) for x in lines if x.strip()), key=lambda r: str(r.get("ds", "")))
    for rec in gate:
        if rec.get("kind") != "gate":
            continue
        for role in ("challenger", "champion"):
            version = rec.get(f"{role}_version")
            value = ((rec.get("metrics") or {}).get(role) or {}).get("ndcg@10")
            if version and value is not None:
                rows[(str(version), "gate holdout")] = float(value)
    out = pd.DataFrame([{"version": v, "source": s, "ndcg_at_10": x} for (v, s), x in rows.items()],
                       columns=["version", "source", "ndcg_at_10"])
    return out.sort_values(["version", "source"], key=lambda c: c.map(_version_key)
                           if c.name == "version" else c).reset_index(drop=True)


def _version_key(v: Any) -> Any:
    return int(v) if str(v).isdigit() else str(v)


def warehouse_history(cfg: EcrecConfig, days: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(feedback trend, drift) from ``metrics_daily`` / ``drift_daily`` for the nights, and
    notes for what is missing. Raises WarehouseError when the warehouse cannot be opened."""
    from ecrec_lib.warehouse import connect

    lo, hi = parse_ds(days[0]), parse_ds(days[-1])
    notes = []
    feedback = pd.DataFrame(columns=["ds", *FEEDBACK_TREND])
    drift = pd.DataFrame(columns=["ds", "feature", "psi"])
    with connect(cfg.warehouse_url, cfg.warehouse_schema, read_only=True) as wh:
        if wh.relation_exists("metrics_daily"):
            feedback = wh.query(
                f"SELECT ds, {', '.join(FEEDBACK_TREND)} FROM {wh.fq('metrics_daily')} "
                "WHERE strategy = 'all' AND ds BETWEEN %s AND %s ORDER BY ds", [lo, hi])
        else:
            notes.append("metrics_daily does not exist yet: the feedback job has not run")
        if wh.relation_exists("drift_daily"):
            drift = wh.query(
                f"SELECT ds, feature, psi FROM {wh.fq('drift_daily')} "
                "WHERE ds BETWEEN %s AND %s ORDER BY ds, feature", [lo, hi])
        else:
            notes.append("drift_daily does not exist yet: the feedback job has not run")
    for df in (feedback, drift):
        df["ds"] = [str(pd.Timestamp(d).date()) for d in df["ds"]]
    return feedback, drift, notes


def collect_history(cfg: EcrecConfig, ds: str, nights: int) -> History:
    """Everything the report's plots need for the ``nights`` nights ending at ``ds``."""
    from ecrec_lib.warehouse import WarehouseError

    lake = Lake(cfg.lake_root)
    days = window(ds, nights)
    notes: list[str] = []
    try:
        feedback, drift, wh_notes = warehouse_history(cfg, days)
        notes += wh_notes
    except WarehouseError as exc:
        feedback = pd.DataFrame(columns=["ds", *FEEDBACK_TREND])
        drift = pd.DataFrame(columns=["ds", "feature", "psi"])
        notes.append(f"warehouse not readable, feedback and drift plots left out: {exc}")
    return History(days, quarantine_history(lake, days), feedback, drift,
                   model_metric_history(lake, days), notes)


# ------------------------------------------------------------------ plots


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 8.0, height: float = 3.2) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def plot_quarantine(q: pd.DataFrame, days: Sequence[str]) -> str | None:
    """Stacked bars: quarantined rows per night by source/reason (None when nothing)."""
    if q.empty:
        return None
    table = (q.assign(what=q["source"] + ": " + q["reason"])
             .pivot_table(index="ds", columns="what", values="rows", aggfunc="sum")
             .reindex(days).fillna(0))
    fig, ax = _figure()
    bottom = pd.Series(0.0, index=table.index)
    for col in table.columns:
        ax.bar(table.index, table[col], bottom=bottom, label=col)
        bottom += table[col]
    ax.set_ylabel("rows quarantined")
    ax.set_title("Quarantine by reason")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def plot_feedback(fb: pd.DataFrame) -> str | None:
    """Lines: hit rate, coverage and diversity per night (all lists)."""
    if fb.empty:
        return None
    fig, ax = _figure()
    for key in FEEDBACK_TREND:
        ax.plot(fb["ds"], fb[key].astype(float), marker="o", label=key)
    ax.set_ylim(0, 1)
    ax.set_title("Feedback: yesterday's lists on today's behaviour")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_drift(drift: pd.DataFrame) -> str | None:
    """Lines: PSI per feature per night, with the 0.1 / 0.25 thresholds."""
    if drift.empty:
        return None
    fig, ax = _figure()
    for feature, group in drift.groupby("feature", sort=True):
        ax.plot(group["ds"], group["psi"].astype(float), marker="o", label=str(feature))
    for level, name in ((0.1, "moderate"), (0.25, "major")):
        ax.axhline(level, linestyle="--", linewidth=0.8, color="grey")
        ax.text(0, level, f" {name}", fontsize=7, va="bottom")
    ax.set_ylabel("PSI")
    ax.set_title("Drift (population stability index, day over day)")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    return _png(fig)


def plot_model_metrics(mm: pd.DataFrame) -> str | None:
    """Grouped bars: NDCG@10 per model version, training test split vs. gate holdout."""
    if mm.empty:
        return None
    table = mm.pivot_table(index="version", columns="source", values="ndcg_at_10", aggfunc="last")
    table = table.loc[sorted(table.index, key=_version_key)]
    fig, ax = _figure()
    width = 0.8 / max(len(table.columns), 1)
    xs = range(len(table.index))
    for k, col in enumerate(table.columns):
        ax.bar([x + k * width for x in xs], table[col].fillna(0), width=width, label=col)
    ax.set_xticks([x + width * (len(table.columns) - 1) / 2 for x in xs],
                  [f"v{v}" for v in table.index])
    ax.set_ylabel("NDCG@10")
    ax.set_title("Model metric by version")
    ax.legend(fontsize=8)
    return _png(fig)


# ------------------------------------------------------------------ the page


def _img(b64: str | None, alt: str, missing: str) -> str:
    if b64 is None:
        return f"<p class='missing'>{html.escape(missing)}</p>"
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{b64}'>"


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping):
        return json.dumps(value, default=str)
    return str(value)


def render_html(report: Mapping[str, Any], history: History, markdown: str) -> str:
    """The report page: the night's facts (tables) and the trend plots, one file."""
    esc = html.escape
    ds = str(report["ds"])
    wh = report.get("warehouse_rows") or {}
    rows = [(f"lake {k}", v) for k, v in (report.get("lake_rows") or {}).items()]
    rows += ([("warehouse", wh["error"])] if "error" in wh else
             [(f"warehouse {k}", v) for k, v in wh.items()])
    plots = [
        ("Quarantine", plot_quarantine(history.quarantine, history.days),
         "no quarantine record in these nights"),
        ("Feedback trend", plot_feedback(history.feedback), "no feedback metrics in these nights"),
        ("Drift", plot_drift(history.drift), "no drift record in these nights"),
        ("Model metric by version", plot_model_metrics(history.model_metrics),
         "no training summary or gate decision in these nights"),
    ]
    sections = "".join(f"<h2>{esc(title)}</h2>{_img(img, title, missing)}"
                       for title, img, missing in plots)
    notes = "".join(f"<li>{esc(n)}</li>" for n in history.notes)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ecrec daily report {esc(ds)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px}}
img{{max-width:100%}}.missing{{color:#777}}pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap}}
</style></head>
<body><h1>ecrec daily report &mdash; {esc(ds)}</h1>
<p>Trends over the {len(history.days)} nights {esc(history.days[0])} .. {esc(history.days[-1])}.
Validation pages: <a href="../../validation/index.html">all suite runs</a>.</p>
{f"<ul>{notes}</ul>" if notes else ""}
{sections}
<h2>Rows</h2>{_table(rows, ["table", "rows"])}
<h2>The night in text</h2><pre>{esc(markdown)}</pre>
</body></html>
"""
