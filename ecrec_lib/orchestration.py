"""How an Airflow task turns into a job run: commands, environment, log streaming.

The DAGs in ``dags/`` only say what runs after what; every task calls :func:`run_job`,
which launches ``python -m jobs.<name> --ds D ...`` as a subprocess (cwd = repo root,
the parent's ``ECREC_*`` environment passed through), streams the job's log lines into
the Airflow task log and, on failure, raises :class:`JobFailed` carrying the job's last
error lines so the reason is readable in the task's log and in the UI.

Spark jobs can instead go through the Spark provider's ``SparkSubmitOperator``: set
``ECREC_SPARK_SUBMIT=1`` in the scheduler/dag-processor environment and define the
Airflow connection ``ecrec_spark`` (e.g. ``spark://spark-master:7077``). The switch is
an environment variable read when the DAG is parsed, not a connection lookup (looking
up connections at parse time hits the metadata DB on every parse).

Only the standard library is imported here: the DAG files import this module lazily
inside tasks, and tests import it without Airflow.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

# Jobs that build a SparkSession and may therefore run through spark-submit.
SPARK_JOBS = frozenset({"clean_events", "build_features"})
SPARK_CONN_ID = "ecrec_spark"
SPARK_SUBMIT_ENV = "ECREC_SPARK_SUBMIT"
RETRIES_ENV = "ECREC_TASK_RETRIES"
DEFAULT_RETRIES = 2
# Exit code of a job that found an empty input partition (jobs.clean_events documents it;
# same value as ecrec_lib.pipeline.io.EXIT_NO_DATA): the DAG skips the rest of the run.
EXIT_NO_DATA = 3
# Lines that usually carry the reason of a failure (Python logging, tracebacks, Spark).
_ERROR_MARKERS = ("ERROR", "CRITICAL", "Error", "Exception", "Traceback", "FAILED", "failed")

log = logging.getLogger(__name__)


class JobFailed(RuntimeError):
    """A job subprocess exited non-zero; the message holds its last error lines."""

    def __init__(
        self, job: str, ds: str, returncode: int, tail: Sequence[str], args: Sequence[str] = ()
    ) -> None:
        self.job = job
        self.ds = ds
        self.returncode = returncode
        self.tail = list(tail)
        shown = "\n".join(f"    {line}" for line in self.tail) or "    (the job printed nothing)"
        rerun = " ".join(["python", "-m", f"jobs.{job}", *args])
        super().__init__(
            f"job '{job}' failed for ds={ds} with exit code {returncode}. "
            f"Last lines of its log:\n{shown}\n"
            f"Re-run it alone with: {rerun}"
        )


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def job_command(job: str, ds: str | None, python: str | None = None, **flags: Any) -> list[str]:
    """The argv that runs ``jobs.<job>`` for ``ds``.

    Keyword flags become ``--flag-name value``; ``True`` gives a bare ``--flag-name``;
    ``False`` and ``None`` are left out (so optional params pass straight through); a list
    repeats the value after one flag (``--tables a b``).
    """
    if not job.isidentifier():
        raise ValueError(f"job name must be a Python module name under jobs/, got {job!r}")
    cmd = [python or sys.executable, "-m", f"jobs.{job}"]
    if ds is not None:
        cmd += ["--ds", ds]
    for name, value in flags.items():
        if value is None or value is False:
            continue
        if value is True:
            cmd.append(_flag(name))
        elif isinstance(value, list | tuple):
            cmd += [_flag(name), *map(str, value)]
        else:
            cmd += [_flag(name), str(value)]
    return cmd


def job_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a job: the caller's (``ECREC_*`` included) with the repo importable."""
    env = dict(os.environ if base is None else base)
    paths = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    # Loopback only for a local Spark master: on a cluster the driver must be reachable.
    if env.get("ECREC_SPARK_MASTER", "local").startswith("local"):
        env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("GX_ANALYTICS_ENABLED", "False")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Unbuffered: log lines reach the task log as they happen, not at exit.
    env["PYTHONUNBUFFERED"] = "1"
    return env


def error_tail(lines: Sequence[str], n: int = 15) -> list[str]:
    """The lines that explain a failure: error-looking lines near the end, else the last ``n``."""
    recent = [line for line in lines[-200:] if line.strip()]
    errors = [line for line in recent if any(m in line for m in _ERROR_MARKERS)]
    picked = errors[-n:] if errors else recent[-n:]
    # The very last lines usually hold the final exception message: always include them.
    for line in recent[-3:]:
        if line not in picked:
            picked.append(line)
    return picked


def run_job(
    job: str,
    ds: str | None,
    *,
    logger: logging.Logger | None = None,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
    **flags: Any,
) -> list[str]:
    """Run ``jobs.<job>`` to completion, streaming its output to ``logger``.

    Returns the job's output lines. Raises :class:`JobFailed` on a non-zero exit.
    """
    out = logger or log
    cmd = job_command(job, ds, python=python, **flags)
    out.info("running: %s (cwd=%s)", " ".join(cmd), REPO_ROOT)
    lines: deque[str] = deque(maxlen=2000)
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=job_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            out.info("[%s] %s", job, line)
    finally:
        returncode = proc.wait()
    if returncode != 0:
        raise JobFailed(job, ds or "-", returncode, error_tail(list(lines)), cmd[3:])
    out.info("job '%s' finished for ds=%s", job, ds)
    return list(lines)


def use_spark_submit(env: Mapping[str, str] | None = None) -> bool:
    """Whether Spark jobs go through SparkSubmitOperator (``ECREC_SPARK_SUBMIT=1``)."""
    env = os.environ if env is None else env
    return env.get(SPARK_SUBMIT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def spark_submit_kwargs(job: str, ds: str, **flags: Any) -> dict[str, Any]:
    """Arguments of a ``SparkSubmitOperator`` running ``jobs/<job>.py`` (client mode)."""
    if job not in SPARK_JOBS:
        raise ValueError(f"{job!r} is not a Spark job; Spark jobs are {sorted(SPARK_JOBS)}")
    argv = job_command(job, ds, **flags)[3:]  # drop "python -m jobs.x"
    return {
        "application": str(REPO_ROOT / "jobs" / f"{job}.py"),
        "application_args": argv,
        "conn_id": SPARK_CONN_ID,
        "name": f"ecrec-{job}",
        # The driver imports ecrec_lib/jobs from the repo; executors get the same image.
        "env_vars": {"PYTHONPATH": str(REPO_ROOT)},
        "conf": {"spark.sql.sources.partitionOverwriteMode": "dynamic"},
    }


def task_retries(env: Mapping[str, str] | None = None) -> int:
    """Task retries: ``ECREC_TASK_RETRIES`` (tests and the demo use 0), default 2."""
    env = os.environ if env is None else env
    raw = env.get(RETRIES_ENV, "").strip()
    if not raw:
        return DEFAULT_RETRIES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{RETRIES_ENV} must be a non-negative integer, got {raw!r}") from None
    if value < 0:
        raise ValueError(f"{RETRIES_ENV} must be a non-negative integer, got {raw!r}")
    return value


def dag_timetable(env: Mapping[str, str] | None = None) -> Any:
    """The DAGs' schedule: a daily interval [D, D+1) UTC, so the run for ds=D starts once D is over.

    ``ECREC_DAG_SCHEDULE`` overrides the cron; ``none`` keeps a DAG manual-only (triggered runs
    and backfills still work) -- the UI test uses it so unpausing does not start a run of its own.
    """
    from airflow.timetables.interval import CronDataIntervalTimetable

    env = os.environ if env is None else env
    cron = env.get("ECREC_DAG_SCHEDULE", "0 0 * * *").strip()
    if cron.lower() in {"none", "off", "manual", ""}:
        return None
    return CronDataIntervalTimetable(cron, timezone="UTC")


def partition_ready(path: str) -> bool:
    """True when a lake partition exists and holds a data file or a ``_SUCCESS`` marker.

    Hidden files (``.crc``, staging leftovers) do not count. A partition holding only
    ``_SUCCESS`` is an empty day: the clean job turns it into the "no data" outcome.
    """
    if "://" in path and not path.startswith("file://"):
        from pyarrow import fs  # remote lakes only; pyarrow is light next to Spark

        filesystem, root = fs.FileSystem.from_uri(path)
        info = filesystem.get_file_info(fs.FileSelector(root, allow_not_found=True))
        names = [Path(i.path).name for i in info if i.type == fs.FileType.File]
    else:
        local = Path(path.removeprefix("file://"))
        if not local.is_dir():
            return False
        names = [p.name for p in local.iterdir() if p.is_file()]
    return any(n == "_SUCCESS" or not n.startswith(("_", ".")) for n in names)


# --- the training decision -----------------------------------------------------------


@dataclass(frozen=True)
class TrainingDecision:
    """Whether tonight's run trains a challenger, and why (written as decision.json)."""

    ds: str
    train: bool
    reason: str
    new_events: int
    min_new_events: int
    last_training_ds: str | None
    has_champion: bool
    force: bool
    skip: bool
    champion_flagged: bool = False  # the champion holds erased users' data (jobs.forget_users)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


def decide_training(
    ds: str,
    *,
    new_events: int,
    min_new_events: int,
    last_training_ds: str | None,
    has_champion: bool,
    force: bool = False,
    skip: bool = False,
    champion_flagged: bool = False,
) -> TrainingDecision:
    """Train when forced, when there is no champion yet, when the champion is flagged by an
    erasure request (it holds erased users' data), or past ``min_new_events``.

    ``skip`` wins over everything (an operator's explicit "do not train tonight").
    """
    if new_events < 0:
        raise ValueError(f"new_events must be >= 0, got {new_events}")
    if skip:
        train, reason = False, "skip_training param set: keeping the current champion"
    elif force:
        train, reason = True, "force_training param set"
    elif not has_champion:
        train, reason = True, "no champion model registered yet"
    elif champion_flagged:
        train, reason = True, "the champion holds data of erased users (erasure flag): retrain"
    elif new_events >= min_new_events:
        since = f"since {last_training_ds}" if last_training_ds else "in the data"
        train, reason = True, f"{new_events} new clean events {since} >= {min_new_events}"
    else:
        since = f"since {last_training_ds}" if last_training_ds else "in the data"
        train = False
        reason = f"only {new_events} new clean events {since} < {min_new_events}: keep champion"
    return TrainingDecision(
        ds=ds,
        train=train,
        reason=reason,
        new_events=new_events,
        min_new_events=min_new_events,
        last_training_ds=last_training_ds,
        has_champion=has_champion,
        force=force,
        skip=skip,
        champion_flagged=champion_flagged,
    )


__all__ = [
    "EXIT_NO_DATA",
    "JobFailed",
    "REPO_ROOT",
    "SPARK_CONN_ID",
    "SPARK_JOBS",
    "TrainingDecision",
    "decide_training",
    "error_tail",
    "job_command",
    "job_env",
    "partition_ready",
    "run_job",
    "spark_submit_kwargs",
    "task_retries",
    "use_spark_submit",
]
