"""The nightly run's report: rows per table, model versions and decisions, key metrics.

    python -m jobs.daily_report --ds 2024-01-02 [--nights 14] [--no-mlflow] [--lake ./lake]
    python -m jobs.daily_report --summary            # one line per reported ds + registry

Gathers what the night's jobs recorded under ``ops/`` (reconciliation, search queries held
back for privacy, training decision, training summary, promotion decision, scoring summary,
feedback), counts the rows of the
lake score partitions and of the warehouse tables for ``ds``, writes
``ops/report/ds=D/report.md``, ``report.json`` and ``report.html`` (plots of the last
``--nights`` nights: quarantine by reason, feedback metrics, drift, model metric by version,
embedded so the file stands alone; :mod:`ecrec_lib.reporting`), refreshes the validation
index ``ops/validation/index.html``, logs the three files to an MLflow run ``report-<ds>``
in ``<experiment>-reports`` and prints the Markdown (it lands in the Airflow task log).
Missing pieces are reported as missing, never invented. A day
skipped as "no data" (its raw events landed empty) is reported as such, with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ecrec_lib.config import EcrecConfig, add_config_args, config_from_args
from ecrec_lib.lake import SCORES, Lake, parse_ds
from ecrec_lib.privacy.secrets import redact_url
from jobs.common import setup_logging

log = logging.getLogger("jobs.daily_report")

OPS_SOURCES = {
    "reconciliation": ("events.json", "catalog.json"),
    "privacy": ("search_queries.json",),  # written by build_features
    "training_decision": ("decision.json",),
    "training": ("summary.json",),
    "promotion": ("decision.json",),
    "scoring": ("summary.json",),
    "feedback": ("metrics.json",),
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        return {"error": f"unreadable JSON in {path}: {exc}"}


def _json_file(path: Path) -> Any:
    """A JSON file, or the JSON written by Spark as a directory of part files."""
    if path.is_dir():
        parts = sorted(p for p in path.iterdir() if p.name.startswith("part-"))
        return _read_json(parts[0]) if parts else None
    return _read_json(path)


def _lake_rows(lake: Lake, ds: str) -> dict[str, int | None]:
    import pyarrow.dataset as pads

    out: dict[str, int | None] = {}
    for stage, names in (("scores", SCORES), ("clean", ("events", "catalog"))):
        for name in names:
            path = lake.partition(stage, name, ds)
            key = f"{stage}/{name}"
            out[key] = (
                pads.dataset(path, format="parquet").count_rows() if Path(path).is_dir() else None
            )
    return out


def _warehouse_rows(cfg: EcrecConfig, ds: str) -> dict[str, Any]:
    """Rows for ``ds`` in every table of the warehouse schema (total rows if no ds column)."""
    from ecrec_lib.warehouse import WarehouseError, connect

    try:
        with connect(cfg.warehouse_url, cfg.warehouse_schema, read_only=True,
                     lock_wait_s=cfg.warehouse_lock_wait_s) as wh:
            tables = wh.query(
                "SELECT table_name, max(CASE WHEN column_name = 'ds' THEN 1 ELSE 0 END) AS has_ds "
                "FROM information_schema.columns WHERE table_schema = %s "
                "AND table_name IN (SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = %s AND table_type = 'BASE TABLE') "
                "GROUP BY table_name ORDER BY table_name",
                [wh.schema, wh.schema],
            )
            out: dict[str, Any] = {}
            for table, has_ds in tables.itertuples(index=False, name=None):
                where = " WHERE ds = %s" if has_ds else ""
                n = wh.scalar(f"SELECT count(*) FROM {wh.fq(table)}{where}",
                              [parse_ds(ds)] if has_ds else [])
                out[str(table)] = int(n)
            return out
    except WarehouseError as exc:
        return {"error": str(exc)}


def outcome(lake: Lake, ops: dict[str, Any], ds: str) -> dict[str, str]:
    """The night's outcome: ``no_data`` (with the reason) when clean found the raw events
    partition landed without a line, else ``processed``."""
    events = (ops.get("reconciliation") or {}).get("events")
    if isinstance(events, dict) and events.get("status") == "no_data":
        return {
            "status": "no_data",
            "reason": f"raw events partition {lake.raw('events', ds)} landed without any event: "
                      "nothing was cleaned, scored or published for this ds; the published "
                      "warehouse tables were left as they were",
        }
    return {"status": "processed", "reason": "the day's events were processed"}


def collect(cfg: EcrecConfig, ds: str) -> dict[str, Any]:
    """Everything the report shows, as one JSON-ready dict."""
    lake = Lake(cfg.lake_root)
    ops: dict[str, Any] = {}
    for name, files in OPS_SOURCES.items():
        base = Path(lake.ops(name, ds))
        found = {f.removesuffix(".json"): _json_file(base / f) for f in files}
        ops[name] = found[files[0].removesuffix(".json")] if len(files) == 1 else found
    return {
        "ds": ds,
        "outcome": outcome(lake, ops, ds),
        "lake_rows": _lake_rows(lake, ds),
        "warehouse_rows": _warehouse_rows(cfg, ds),
        "ops": ops,
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pick(doc: Any, *keys: str) -> Any:
    """First present key of a dict (jobs name the same fact slightly differently)."""
    if not isinstance(doc, dict):
        return None
    for key in keys:
        cur: Any = doc
        for part in key.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur is not None:
            return cur
    return None


def render(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    ds, ops = report["ds"], report["ops"]
    lines = [f"# ecrec daily report — {ds}", ""]
    out = report.get("outcome")
    if out and out["status"] != "processed":
        lines += [f"**{out['status'].replace('_', ' ')}**: {out['reason']}", ""]
    lines += ["## Rows", "", "| table | rows |", "|---|---|"]
    lines += [f"| lake {k} | {_fmt(v)} |" for k, v in report["lake_rows"].items()]
    wh = report["warehouse_rows"]
    if "error" in wh:
        lines.append(f"| warehouse | {wh['error']} |")
    else:
        lines += [f"| warehouse {k} | {_fmt(v)} |" for k, v in wh.items()]

    lines += ["", "## Data quality", ""]
    for name, rec in (ops["reconciliation"] or {}).items():
        if isinstance(rec, dict):
            scalars = {k: v for k, v in rec.items()
                       if isinstance(v, int | float | str | bool)
                       and k not in {"dataset", "ds", "equation"}}
            if rec.get("quarantine_by_reason"):
                scalars["quarantined_by_reason"] = json.dumps(rec["quarantine_by_reason"])
            lines.append(f"- {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in scalars.items()))
        else:
            lines.append(f"- {name}: missing")

    lines += ["", "## Privacy", ""]
    pq = ops.get("privacy")
    if pq:
        pii = _pick(pq, "queries_pii") or {}
        lines.append(
            f"- search queries in the window: {_fmt(_pick(pq, 'queries_total'))}, published "
            f"{_fmt(_pick(pq, 'queries_published'))}; held back: "
            f"{_fmt(_pick(pq, 'queries_below_k'))} issued by fewer than "
            f"{_fmt(_pick(pq, 'min_query_users'))} users, "
            f"{sum(v for v in pii.values() if isinstance(v, int))} shaped like personal data "
            f"({', '.join(f'{k}={v}' for k, v in pii.items())}); "
            f"{_fmt(_pick(pq, 'searches_held_back'))} searches not published"
        )
    else:
        lines.append("- search queries: missing (build_features did not run for this ds)")

    lines += ["", "## Model", ""]
    dec = ops["training_decision"]
    lines.append(
        f"- training decision: {'train' if _pick(dec, 'train') else 'keep champion'} "
        f"({_fmt(_pick(dec, 'reason'))})" if dec else "- training decision: missing"
    )
    tr = ops["training"]
    if tr:
        metrics = _pick(tr, "metrics") or {}
        shown = {k: v for k, v in metrics.items() if "ndcg" in k or "recall" in k}
        lines.append(
            f"- trained: run {_fmt(_pick(tr, 'run_id'))}, status {_pick(tr, 'status') or 'trained'}, "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(shown.items())[:6])
        )
    else:
        lines.append("- trained: no training for this ds")
    pr = ops["promotion"]
    if pr:
        lines.append(
            f"- promotion gate: {_fmt(_pick(pr, 'decision', 'promoted'))}, challenger version "
            f"{_fmt(_pick(pr, 'challenger_version'))}, champion now "
            f"{_fmt(_pick(pr, 'new_champion_version', 'champion_version') or 'none')}"
            f" — {_fmt(_pick(pr, 'reasons', 'reason'))}"
        )
    else:
        lines.append("- promotion: no gate ran for this ds")
    sc = ops["scoring"]
    lines.append(
        f"- scored with model version {_fmt(_pick(sc, 'model_version'))}, k={_fmt(_pick(sc, 'k'))}, "
        f"users={_fmt(_pick(sc, 'users'))}, by strategy {_fmt(_pick(sc, 'users_by_strategy'))}"
        if sc else "- scoring: missing"
    )

    fb = ops["feedback"]
    lines += ["", "## Feedback", ""]
    overall = next((r for r in (_pick(fb, "metrics") or []) if r.get("strategy") == "all"), None)
    if overall:
        keys = ("hit_rate", "ctr_proxy", "coverage", "diversity", "novelty", "cold_start_share")
        lines.append("- " + ", ".join(f"{k}={_fmt(overall.get(k))}" for k in keys))
    else:
        lines.append(f"- {_fmt(_pick(fb, 'status')) if fb else 'not computed for this ds'}")
    return "\n".join(lines) + "\n"


def _registry_lines(cfg: EcrecConfig) -> list[str]:
    uri = cfg.registry_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return [f"registry {redact_url(uri)}: no database yet"]
    from ecrec_lib.registry.client import RegistryError, aliases_by_version, connect, list_versions

    try:
        client = connect(cfg)
    except RegistryError as exc:
        return [f"registry not reachable: {exc}"]
    name = cfg.registered_model_name
    aliases = aliases_by_version(client, name)
    out = [f"registered model {name} ({redact_url(uri)}):"]
    for mv in list_versions(client, name):
        run = client.get_run(mv.run_id)
        ndcg = run.data.metrics.get("test.two_tower.ndcg_at_10")
        out.append(
            f"  version {mv.version} [{', '.join(aliases.get(str(mv.version), [])) or '-'}] "
            f"run {mv.run_id} test NDCG@10={_fmt(ndcg)}"
        )
    return out if len(out) > 1 else [f"registered model {name}: no versions yet"]


def summary(cfg: EcrecConfig) -> str:
    """One line per reported ds, then the registry's versions and aliases."""
    lake = Lake(cfg.lake_root)
    root = Path(lake.dataset("ops", "report"))
    lines = ["ds         | decision      | model | gate     | user_topk | warehouse user_topk | hit rate"]
    for part in sorted(root.glob("ds=*")) if root.is_dir() else []:
        rep = _read_json(part / "report.json")
        if not isinstance(rep, dict):
            continue
        ops = rep.get("ops", {})
        dec = ops.get("training_decision") or {}
        # Feedback for a ds runs after its nightly report: read it from its own partition.
        fb = _read_json(Path(lake.ops("feedback", rep["ds"])) / "metrics.json")
        fb_rows = _pick(fb, "metrics") or []
        hit = next((r.get("hit_rate") for r in fb_rows if r.get("strategy") == "all"), None)
        wh = rep.get("warehouse_rows", {})
        lines.append(
            f"{rep['ds']} | {'train' if dec.get('train') else 'keep champion':13} | "
            f"{_fmt(_pick(ops.get('scoring'), 'model_version')):5} | "
            f"{_fmt(_pick(ops.get('promotion'), 'decision') or '-'):8} | "
            f"{_fmt(rep.get('lake_rows', {}).get('scores/user_topk')):9} | "
            f"{_fmt(wh.get('user_topk')):19} | {_fmt(hit)}"
        )
    # Feedback runs after the nightly report: read the newest feedback partition directly.
    fb_root = Path(lake.dataset("ops", "feedback"))
    latest = sorted(fb_root.glob("ds=*")) if fb_root.is_dir() else []
    if latest:
        doc = _read_json(latest[-1] / "metrics.json") or {}
        overall = next((r for r in doc.get("metrics", []) if r.get("strategy") == "all"), None)
        if overall:
            lines.append(
                f"feedback {doc.get('ds')} (recommendations of {doc.get('recommendations_ds')}): "
                + ", ".join(
                    f"{k}={_fmt(overall.get(k))}"
                    for k in ("hit_rate", "ctr_proxy", "coverage", "diversity", "novelty",
                              "cold_start_share")
                )
            )
        else:
            lines.append(f"feedback {doc.get('ds')}: {doc.get('status')}")
    lines += _registry_lines(cfg)
    return "\n".join(lines)


def log_report_run(cfg: EcrecConfig, ds: str, files: list[Path]) -> str:
    """Log the report files to the run ``report-<ds>`` of ``<experiment>-reports`` (the same
    run when the night is re-reported); returns its id. Raises RegistryError when MLflow's
    store cannot be reached."""
    from mlflow.tracking import MlflowClient

    from ecrec_lib.registry.client import check_reachable
    from ecrec_lib.registry.records import ensure_experiment
    from ecrec_lib.reporting import REPORT_EXPERIMENT_DESCRIPTION, REPORT_EXPERIMENT_SUFFIX

    check_reachable(cfg.mlflow_tracking_uri)
    client = MlflowClient(tracking_uri=cfg.mlflow_tracking_uri, registry_uri=cfg.registry_uri)
    exp_id = ensure_experiment(client, cfg, cfg.mlflow_experiment + REPORT_EXPERIMENT_SUFFIX,
                               REPORT_EXPERIMENT_DESCRIPTION)
    found = client.search_runs([exp_id], f"tags.ds = '{ds}'", max_results=1)
    run_id = found[0].info.run_id if found else client.create_run(
        exp_id, run_name=f"report-{ds}", tags={"ds": ds}).info.run_id
    status = "FAILED"
    try:
        for path in files:
            client.log_artifact(run_id, str(path))
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id


def write_html_report(cfg: EcrecConfig, report: dict[str, Any], markdown: str, nights: int,
                      out_dir: Path) -> Path:
    """report.html (atomically) and the validation index; returns the report's path."""
    from ecrec_lib.reporting import collect_history, render_html
    from ecrec_lib.validation import write_index

    page = render_html(report, collect_history(cfg, report["ds"], nights), markdown)
    tmp = out_dir / ".report.html.tmp"
    tmp.write_text(page)
    tmp.replace(out_dir / "report.html")
    write_index(Lake(cfg.lake_root).dataset("ops", "validation"))
    return out_dir / "report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds", help="logical date YYYY-MM-DD to report on")
    parser.add_argument("--summary", action="store_true",
                        help="print one line per reported ds plus the registry, write nothing")
    parser.add_argument("--nights", type=int, default=14,
                        help="nights ending at --ds shown in the HTML report's trend plots")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="do not log the report files to MLflow")
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = config_from_args(args)
    if args.summary:
        print(summary(cfg))
        return 0
    if not args.ds:
        parser.error("--ds is required unless --summary is given")
    parse_ds(args.ds)
    report = collect(cfg, args.ds)
    text = render(report)
    out_dir = Path(Lake(cfg.lake_root).ops("report", args.ds))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.nights < 1:
        parser.error(f"--nights must be at least 1, got {args.nights}")
    for name, body in (("report.json", json.dumps(report, indent=2, default=str)),
                       ("report.md", text)):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(body)
        tmp.replace(out_dir / name)
    html_path = write_html_report(cfg, report, text, args.nights, out_dir)
    if not args.no_mlflow:
        from ecrec_lib.registry.client import RegistryError

        try:
            run_id = log_report_run(cfg, args.ds, [html_path, out_dir / "report.md",
                                                  out_dir / "report.json"])
            log.info("report logged to MLflow run %s", run_id)
        except RegistryError as exc:
            # The night's data is published by now; a report not in MLflow is said, not fatal.
            log.warning("report written to %s but not logged to MLflow: %s", out_dir, exc)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
