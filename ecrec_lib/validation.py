"""Run Great Expectations (1.x) suites on Spark DataFrames and enforce their severities.

* :func:`run_suite` validates a pyspark DataFrame with an ephemeral GX context and the Spark
  datasource (no GX project on disk): ``BASIC`` without examples for the whole suite (observed
  values and unexpected counts of every expectation), then ``SUMMARY`` (a few unexpected
  values) for the failed expectations only.
* Each expectation's ``meta["severity"]`` is ``critical`` (default when absent) or ``warning``.
* :func:`store_outcome` writes ``results.json`` (the full GX result) and ``index.html`` (a
  small self-contained report rendered here: GX 1.x's Data Docs need a file-backed context and
  a checkpoint action, too heavy for every nightly suite) under ``ops/validation/ds=D/<dataset>/``.
  Example values of personal-data columns (the raw user id, PII fields, and the pseudonym
  column, which holds whatever a broken upstream put there) are withheld from both.
* :func:`write_index` writes ``ops/validation/index.html``: every stored suite run, by day
  and dataset, linking to its page.
* :func:`enforce` logs warnings and raises :class:`DataContractError` with a readable summary
  (expectation, column, observed value, offending examples) when a critical one failed.
* ``ops/`` is outside the restricted zones, so sample values never reach it (nor the logs) as
  they were: :func:`scrub_samples` replaces the samples of ``redact_columns`` (raw ids and
  PII, for the raw suite) by ``<redacted>`` and masks e-mails, phones, IPs and card numbers
  in every other sample (``ecrec_lib.privacy.masking``).
"""

from __future__ import annotations

import copy
import html
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5
# Columns whose example values never leave a suite run, in any suite: the raw id and PII
# fields (schema.PII_FIELDS), and user_key, which holds whatever a broken upstream wrote into it.
SENSITIVE_COLUMNS = ("user_id", "user_key", "ip", "email", "user_agent", "phone", "name",
                     "address")
REDACTED = "<redacted>"
# the keys of a GX result that hold values of the data (not counts or types)
SAMPLE_KEYS = ("partial_unexpected_list", "partial_unexpected_counts", "partial_unexpected_index_list",
               "unexpected_list", "unexpected_index_list", "unexpected_index_query", "observed_value",
               "details")
_PRELOAD: threading.Thread | None = None  # see preload_in_background


class DataContractError(RuntimeError):
    """A critical expectation failed; ``outcome`` holds every result."""

    def __init__(self, outcome: SuiteOutcome) -> None:
        super().__init__(outcome.summary())
        self.outcome = outcome


@dataclass
class ExpectationOutcome:
    expectation: str
    column: str | None
    severity: str
    success: bool
    observed: Any = None
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    examples: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    why: str = ""
    error: str | None = None
    details: dict[str, Any] | None = None

    def describe(self) -> str:
        where = f" on column '{self.column}'" if self.column else ""
        bounds = {k: v for k, v in self.kwargs.items()
                  if k not in {"column", "batch_id", "meta"} and v is not None}
        parts = [f"{self.expectation}{where} {bounds}"]
        if self.why:
            parts.append(f"({self.why})")
        if self.error:
            parts.append(f"raised: {self.error}")
        if self.observed is not None:
            parts.append(f"observed={self.observed!r}")
        if self.unexpected_count:
            pct = f" ({self.unexpected_percent:.2f}%)" if self.unexpected_percent is not None else ""
            parts.append(f"unexpected={self.unexpected_count}{pct}")
        if self.examples:
            parts.append(f"e.g. {self.examples[:MAX_EXAMPLES]!r}")
        if self.details and self.details.get("mismatched"):
            parts.append(f"mismatched={self.details['mismatched']}")
        return " ".join(parts)


@dataclass
class SuiteOutcome:
    dataset: str
    ds: str | None
    results: list[ExpectationOutcome]
    gx_result: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success and r.severity != "warning"]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [r for r in self.results if not r.success and r.severity == "warning"]

    @property
    def success(self) -> bool:
        return not self.critical_failures

    def summary(self) -> str:
        head = (
            f"data contract '{self.dataset}' (ds={self.ds}): "
            f"{len(self.critical_failures)} critical and {len(self.warnings)} warning failure(s) "
            f"out of {len(self.results)} expectations"
        )
        lines = [head]
        lines += [f"  CRITICAL {r.describe()}" for r in self.critical_failures]
        lines += [f"  warning  {r.describe()}" for r in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "ds": self.ds,
            "success": self.success,
            "n_expectations": len(self.results),
            "critical_failures": len(self.critical_failures),
            "warnings": len(self.warnings),
            "results": [asdict(r) for r in self.results],
            "gx_result": self.gx_result,
        }


def preload_in_background() -> threading.Thread:
    """Import Great Expectations and build one context on a daemon thread; return the thread.

    A job process pays about 4-5 s of CPU-bound Python for that the first time it validates.
    Started before the Spark session, it overlaps the JVM's start and the first Spark jobs,
    during which the driver's Python thread only waits on the JVM. Harmless when the import
    fails: the job's own import later raises the real error. GX keeps the latest context as
    a process-wide "current project", so :func:`run_suite` waits for this thread before it
    builds its own context.
    """
    global _PRELOAD

    def load() -> None:
        try:
            import expectations  # noqa: F401 - the suites' module, imported for its cost

            _ephemeral_context()
        except Exception:  # noqa: BLE001 - the job's own import reports it
            log.debug("background Great Expectations preload failed", exc_info=True)

    thread = threading.Thread(target=load, name="gx-preload", daemon=True)
    _PRELOAD = thread
    thread.start()
    return thread


def _ephemeral_context() -> Any:
    if _PRELOAD is not None and _PRELOAD is not threading.current_thread():
        _PRELOAD.join()
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _outcome(res: Any) -> ExpectationOutcome:
    cfg = res.expectation_config
    meta = cfg.meta or {}
    result = res.result or {}
    kwargs = {k: v for k, v in dict(cfg.kwargs).items() if k != "batch_id"}
    error = None
    if res.exception_info and res.exception_info.get("raised_exception"):
        error = str(res.exception_info.get("exception_message"))
    examples = result.get("partial_unexpected_list") or []
    return ExpectationOutcome(
        expectation=cfg.type,
        column=kwargs.get("column"),
        severity=str(meta.get("severity", "critical")),
        success=bool(res.success),
        observed=result.get("observed_value"),
        unexpected_count=result.get("unexpected_count"),
        unexpected_percent=result.get("unexpected_percent"),
        examples=list(examples)[:MAX_EXAMPLES],
        kwargs=kwargs,
        why=str(meta.get("why", "")),
        error=error,
        details=result.get("details"),
    )


def _mask_values(value: Any) -> Any:
    from ecrec_lib.privacy.masking import mask_text_py

    if isinstance(value, str):
        return mask_text_py(value)
    if isinstance(value, list):
        return [_mask_values(v) for v in value]
    if isinstance(value, dict):
        return {k: _mask_values(v) for k, v in value.items()}
    return value


def _scrub_result(result: dict[str, Any], redact: bool) -> dict[str, Any]:
    out = dict(result)
    for k in SAMPLE_KEYS:
        if k not in out or out[k] is None:
            continue
        numeric = isinstance(out[k], (int, float)) and not isinstance(out[k], bool)
        out[k] = out[k] if numeric else (REDACTED if redact else _mask_values(out[k]))
    return out


def scrub_samples(outcome: SuiteOutcome, redact_columns: tuple[str, ...] = ()) -> SuiteOutcome:
    """``outcome`` with sample values made safe for ``ops/`` and logs (in place; returned):
    those of an expectation on a column of ``redact_columns`` are replaced by ``<redacted>``
    (a raw user id looks like any other string), all others masked by pattern."""
    for r in outcome.results:
        redact = r.column in redact_columns
        r.examples = [REDACTED] * len(r.examples) if redact else _mask_values(r.examples)
        if r.details is not None:
            r.details = REDACTED if redact else _mask_values(r.details)  # type: ignore[assignment]
        if isinstance(r.observed, (str, list, dict)):
            r.observed = REDACTED if redact else _mask_values(r.observed)
    for res in outcome.gx_result.get("results", []):
        kwargs = (res.get("expectation_config") or {}).get("kwargs") or {}
        if isinstance(res.get("result"), dict):
            res["result"] = _scrub_result(res["result"], kwargs.get("column") in redact_columns)
    return outcome


def run_suite(df: DataFrame, suite: Any, dataset: str, ds: str | None = None,
              redact_columns: tuple[str, ...] = ()) -> SuiteOutcome:
    """Validate ``df`` against ``suite`` (a ``gx.ExpectationSuite``); never raises on failures.

    Two passes, same verdicts as one SUMMARY run: the whole suite first with
    ``result_format=BASIC`` and ``partial_unexpected_count=0``, then only the failed expectations
    again with ``SUMMARY`` for the readable message (examples). BASIC returns the observed value
    and unexpected count GX computed for the verdict anyway (BOOLEAN_ONLY drops them, leaving the
    pages empty); with a count of 0 its per-expectation query for unexpected values is a
    ``LIMIT 0``, which Spark answers without reading the data.
    """
    import great_expectations as gx

    started = time.perf_counter()
    context = _ephemeral_context()
    # persist=False: GX's default caches the validated DataFrame and never releases it, so a job
    # kept every suite's input in memory (each day's raw and clean events, every feature
    # table). Without it a suite on a staged 1M-event day took 2.8-4.2 s instead of 4.1-9.9 s.
    source = context.data_sources.add_or_update_spark(name="ecrec_spark", persist=False)
    asset = source.add_dataframe_asset(name=dataset)
    batch_def = asset.add_batch_definition_whole_dataframe(f"{dataset}_whole")
    suite = context.suites.add_or_update(suite)
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    result = batch.validate(
        suite, result_format={"result_format": "BASIC", "partial_unexpected_count": 0}
    )
    results = list(result.results)
    failed = [i for i, r in enumerate(results) if not r.success]
    if failed:
        detail_suite = context.suites.add_or_update(gx.ExpectationSuite(
            name=f"{suite.name}__failed",
            expectations=[copy.copy(results[i].expectation_config.to_domain_obj()) for i in failed],
        ))
        detail = batch.validate(
            detail_suite,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES},
        )
        # match by configuration (GX may reorder results); fall back to the boolean result
        by_cfg = {_cfg_key(r.expectation_config): r for r in detail.results}
        for i in failed:
            results[i] = by_cfg.get(_cfg_key(results[i].expectation_config), results[i])
        result.results = results
    outcome = SuiteOutcome(
        dataset=dataset,
        ds=ds,
        results=[_outcome(r) for r in results],
        gx_result=json.loads(json.dumps(result.to_json_dict(), default=str)),
    )
    scrub_samples(outcome, (*SENSITIVE_COLUMNS, *redact_columns))
    log.info("suite '%s' (ds=%s): %d expectations (%d re-run for details) in %.1f s", dataset, ds,
             len(outcome.results), len(failed), time.perf_counter() - started)
    return outcome


def _cfg_key(cfg: Any) -> str:
    kwargs = {k: v for k, v in dict(cfg.kwargs).items() if k != "batch_id"}
    return json.dumps([cfg.type, kwargs, cfg.meta or {}], sort_keys=True, default=str)


def _gx_column(res: Mapping[str, Any]) -> str | None:
    return ((res.get("expectation_config") or {}).get("kwargs") or {}).get("column")


def _observed_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)[:300]
    return str(value)


def render_html(outcome: SuiteOutcome) -> str:
    """A self-contained HTML report of one suite run (Data Docs-like, no JS).

    Render :func:`redacted` outcomes only: the page shows example values as they are.
    """
    esc = html.escape
    status = "PASSED" if outcome.success else "FAILED"
    rows = []
    for r in sorted(outcome.results, key=lambda r: (r.success, r.severity != "critical")):
        cls = "ok" if r.success else ("crit" if r.severity != "warning" else "warn")
        observed = r.error or _observed_text(r.observed)
        unexpected = "" if r.unexpected_count is None else f"{r.unexpected_count} ({r.unexpected_percent or 0:.2f}%)"
        kwargs = {k: v for k, v in r.kwargs.items() if k not in {"column"}}
        rows.append(
            f"<tr class='{cls}'><td>{'✔' if r.success else '✘'}</td><td>{esc(r.severity)}</td>"
            f"<td>{esc(r.expectation)}</td><td>{esc(str(r.column or ''))}</td>"
            f"<td><code>{esc(json.dumps(kwargs, default=str))}</code></td>"
            f"<td>{esc(observed)}</td><td>{esc(unexpected)}</td>"
            f"<td><code>{esc(json.dumps(r.examples, default=str))}</code></td><td>{esc(r.why)}</td></tr>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{esc(outcome.dataset)} ds={esc(str(outcome.ds))}</title>
<style>{_CSS}</style></head>
<body><p><a href="../../index.html">&larr; all validation runs</a></p>
<h1>Validation: {esc(outcome.dataset)} &mdash; ds={esc(str(outcome.ds))} &mdash; {status}</h1>
<p>{len(outcome.results)} expectations, {len(outcome.critical_failures)} critical failure(s),
{len(outcome.warnings)} warning(s). Full result: <a href="results.json">results.json</a>.
Example values of personal-data columns are withheld.</p>
<table><tr><th></th><th>severity</th><th>expectation</th><th>column</th><th>arguments</th>
<th>observed</th><th>unexpected</th><th>examples</th><th>why</th></tr>
{''.join(rows)}
</table></body></html>
"""


_CSS = """body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}
tr.crit,td.crit{background:#fdd}tr.warn,td.warn{background:#ffe9b3}tr.ok,td.ok{background:#efe}"""


def store_outcome(spark: SparkSession, outcome: SuiteOutcome, out_dir: str) -> None:
    """Write ``results.json`` and ``index.html`` for one suite run under ``out_dir`` (the
    outcome's samples were scrubbed by :func:`run_suite`: see :func:`scrub_samples`)."""
    from ecrec_lib.lake_files import write_json, write_text

    write_json(spark, f"{out_dir}/results.json", outcome.to_dict())
    write_text(spark, f"{out_dir}/index.html", render_html(outcome))


# ------------------------------------------------------------------ the index across days


@dataclass(frozen=True)
class IndexEntry:
    """One stored suite run, as the index shows it."""

    ds: str
    dataset: str
    success: bool
    n_expectations: int
    critical_failures: int
    warnings: int
    rows: int | None  # observed row count, when the suite checks it


def index_entry(ds: str, dataset: str, stored: Mapping[str, Any]) -> IndexEntry:
    """An index entry from a stored ``results.json``."""
    rows = next((r.get("observed") for r in stored.get("results", [])
                 if r.get("expectation") == "expect_table_row_count_to_be_between"
                 and isinstance(r.get("observed"), int)), None)
    return IndexEntry(ds, dataset, bool(stored.get("success")), int(stored.get("n_expectations", 0)),
                      int(stored.get("critical_failures", 0)), int(stored.get("warnings", 0)), rows)


def render_index(entries: list[IndexEntry]) -> str:
    """``ops/validation/index.html``: days (newest first) x datasets, each cell linking to its
    page, with the verdict, failures, warnings and row count."""
    esc = html.escape
    days = sorted({e.ds for e in entries}, reverse=True)
    datasets = sorted({e.dataset for e in entries})
    cell = {(e.ds, e.dataset): e for e in entries}
    head = "".join(f"<th>{esc(d)}</th>" for d in datasets)
    body = []
    for day in days:
        tds = []
        for name in datasets:
            e = cell.get((day, name))
            if e is None:
                tds.append("<td></td>")
                continue
            cls = "ok" if e.success and not e.warnings else ("warn" if e.success else "crit")
            verdict = "passed" if e.success else f"FAILED ({e.critical_failures} critical)"
            extra = f", {e.warnings} warning(s)" if e.warnings else ""
            rows = f"<br>{e.rows:,} rows" if e.rows is not None else ""
            tds.append(f"<td class='{cls}'><a href='ds={esc(day)}/{esc(name)}/index.html'>"
                       f"{verdict}</a>{extra}{rows}</td>")
        body.append(f"<tr><th>{esc(day)}</th>{''.join(tds)}</tr>")
    n_failed = sum(not e.success for e in entries)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>ecrec data validation</title><style>{_CSS}</style></head>
<body><h1>Data validation: every suite run</h1>
<p>{len(entries)} suite runs over {len(days)} day(s) and {len(datasets)} dataset(s);
{n_failed} failed. Each cell links to the run's page.</p>
<table><tr><th>ds</th>{head}</tr>
{''.join(body)}
</table></body></html>
"""


def write_index(validation_root: str | Path) -> Path:
    """Scan ``<root>/ds=*/<dataset>/results.json`` and write ``<root>/index.html`` atomically
    (local lake only); returns its path."""
    root = Path(str(validation_root).removeprefix("file://"))
    entries = []
    for path in sorted(root.glob("ds=*/*/results.json")):
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); re-run the job that wrote it "
                             "or delete the file") from None
        entries.append(index_entry(path.parent.parent.name.removeprefix("ds="),
                                   path.parent.name, stored))
    root.mkdir(parents=True, exist_ok=True)
    out = root / "index.html"
    tmp = root / ".index.html.tmp"
    tmp.write_text(render_index(entries))
    tmp.replace(out)
    return out


def enforce(outcome: SuiteOutcome) -> None:
    """Log warnings; raise :class:`DataContractError` if any critical expectation failed."""
    for w in outcome.warnings:
        log.warning("data contract '%s' warning: %s", outcome.dataset, w.describe())
    if not outcome.success:
        raise DataContractError(outcome)
    log.info("data contract '%s' (ds=%s): %d expectations passed", outcome.dataset, outcome.ds,
             len(outcome.results) - len(outcome.warnings))


def validate(
    spark: SparkSession, df: DataFrame, suite: Any, dataset: str, ds: str, out_dir: str | None,
    redact_columns: tuple[str, ...] = (),
) -> SuiteOutcome:
    """run_suite + store_outcome (when ``out_dir``) + enforce; samples of ``redact_columns``
    never leave the process (:func:`scrub_samples`)."""
    outcome = run_suite(df, suite, dataset, ds, redact_columns)
    if out_dir:
        store_outcome(spark, outcome, out_dir)
    enforce(outcome)
    return outcome
