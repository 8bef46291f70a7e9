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

Tasks own their processes: every job runs in its own process group (a new session), and
:func:`run_job` stops that whole group (SIGTERM, then SIGKILL after a grace period) when the
task is terminated (SIGTERM, Airflow's SIGINT/SIGTERM/SIGKILL escalation, an
``execution_timeout``, any exception) or the job outlives ``timeout_s``. A job started by
:func:`run_job` also binds itself to its task (:func:`bind_to_parent`, called from
``jobs/__init__.py``): if the task process is SIGKILLed, the kernel sends the job SIGTERM and
the job takes the rest of its group down with it. No job process outlives its task.

Only the standard library is imported here: the DAG files import this module lazily
inside tasks, and tests import it without Airflow.
"""

from __future__ import annotations

import atexit
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ecrec_lib.privacy.secrets import redact_text

REPO_ROOT = Path(__file__).resolve().parents[1]

# Jobs that build a SparkSession and may therefore run through spark-submit.
SPARK_JOBS = frozenset({"clean_events", "build_features"})
SPARK_CONN_ID = "ecrec_spark"
SPARK_SUBMIT_ENV = "ECREC_SPARK_SUBMIT"
RETRIES_ENV = "ECREC_TASK_RETRIES"
DEFAULT_RETRIES = 2
# Minutes each class of task may run before Airflow kills it (execution_timeout), overridable
# per class with ECREC_TASK_TIMEOUT_<CLASS>_MIN. "light": validation, decisions, registry,
# publishing, report; "spark": clean and features; "train": training; "score": batch scoring.
TIMEOUT_ENV = "ECREC_TASK_TIMEOUT_{}_MIN"
DEFAULT_TIMEOUT_MIN = {"light": 60, "spark": 180, "train": 360, "score": 180}
# Seconds a stopped job gets between SIGTERM and SIGKILL (Spark needs a few to stop its JVM).
KILL_GRACE_S = 15.0
# Set by run_job in the job's environment: the task process the job belongs to.
PARENT_PID_ENV = "ECREC_PARENT_PID"

# The Airflow pool every task that writes the warehouse runs in (both DAGs): DuckDB allows one
# writer per file, so one slot. Created with `airflow pools set` (scripts/airflow_standalone.sh,
# README "Warehouse writers and readers").
WAREHOUSE_POOL = "ecrec_warehouse"
WAREHOUSE_POOL_SLOTS = 1
WAREHOUSE_POOL_DESCRIPTION = "one writer at a time into the ecrec warehouse (DuckDB file lock)"
# Exit code of a job that found an empty input partition (jobs.clean_events documents it;
# same value as ecrec_lib.pipeline.io.EXIT_NO_DATA): the DAG skips the rest of the run.
EXIT_NO_DATA = 3
# Exit code of a job whose critical data contract failed (ecrec_lib.pipeline.io.EXIT_CONTRACT):
# a retry would fail the same way, so the DAG fails the task at once.
EXIT_CONTRACT = 4
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


class JobTimeout(JobFailed):
    """A job ran past its ``timeout_s`` and was stopped (its whole process group)."""


def stop_process_group(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> int | None:
    """Stop the process group led by ``proc``: SIGTERM, then SIGKILL after ``grace_s``.

    Returns the leader's exit status (``None`` if it could not be reaped). Members of the
    group that outlive their leader (a grandchild ignoring SIGTERM) get the SIGKILL too.
    """
    pgid = proc.pid  # start_new_session: the job leads its own group
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    returncode: int | None = None
    try:
        returncode = proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    # the leader may be gone while members still run: give them what is left of the grace
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
    if returncode is None:
        try:
            returncode = proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:  # unkillable (uninterruptible sleep): say so
            log.error("job process %d did not exit %.0f s after SIGKILL", proc.pid, grace_s)
    return returncode


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the whole group already exited
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed user: it exists
        return True
    return True


def run_job(
    job: str,
    ds: str | None,
    *,
    logger: logging.Logger | None = None,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
    timeout_s: float | None = None,
    grace_s: float = KILL_GRACE_S,
    **flags: Any,
) -> list[str]:
    """Run ``jobs.<job>`` to completion, streaming its output to ``logger``.

    The job runs in its own process group. On SIGTERM to this process, on any exception
    raised here (KeyboardInterrupt from Airflow's SIGINT, Airflow's execution_timeout), and
    after ``timeout_s`` seconds, the whole group is stopped (SIGTERM, SIGKILL after
    ``grace_s``) before this function returns or raises: no job process outlives the call.

    Returns the job's output lines. Raises :class:`JobFailed` on a non-zero exit,
    :class:`JobTimeout` past ``timeout_s``.
    """
    out = logger or log
    cmd = job_command(job, ds, python=python, **flags)
    # Job output reaches the Airflow task log (readable by every UI user): no credential may
    # pass, whether a flag carries one or a library prints one.
    out.info("running: %s (cwd=%s)", redact_text(" ".join(cmd)), REPO_ROOT)
    lines: deque[str] = deque(maxlen=2000)
    job_environment = job_env(env)
    job_environment[PARENT_PID_ENV] = str(os.getpid())
    proc = subprocess.Popen(
        cmd,
        cwd=REPO_ROOT,
        env=job_environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    assert proc.stdout is not None
    stopped: list[str] = []  # why the group was stopped, if it was

    def stop(why: str) -> None:
        if not stopped:
            stopped.append(why)
            out.warning("stopping job '%s' (pid %d, its whole process group): %s",
                        job, proc.pid, why)
            threading.Thread(target=stop_process_group, args=(proc, grace_s),
                             name=f"stop-{job}", daemon=True).start()

    timer = threading.Timer(timeout_s, stop, [f"ran past its timeout of {timeout_s:g} s"]) \
        if timeout_s else None
    previous = _trap_sigterm(lambda signum: stop(f"task received signal {signum}"))
    try:
        if timer is not None:
            timer.daemon = True
            timer.start()
        for raw in proc.stdout:
            line = redact_text(raw.rstrip("\n"))
            lines.append(line)
            out.info("[%s] %s", job, line)
        returncode = proc.wait()
    except BaseException as exc:
        # KeyboardInterrupt (Airflow's first signal), AirflowTaskTimeout, a failing logger...
        stopped.append(f"{type(exc).__name__} in the task")
        out.warning("stopping job '%s' (pid %d, its whole process group): %s",
                    job, proc.pid, stopped[-1])
        stop_process_group(proc, grace_s)
        raise
    finally:
        if timer is not None:
            timer.cancel()
        _restore_sigterm(previous)
        proc.stdout.close()
    if stopped:
        # the stop thread may still be escalating: make sure the group is gone before returning
        stop_process_group(proc, grace_s)
        if stopped[0].startswith("task received signal") and previous is signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGTERM)  # die as the signal meant (no handler of ours)
        exc_type = JobTimeout if stopped[0].startswith("ran past") else JobFailed
        raise exc_type(job, ds or "-", returncode,
                       [*error_tail(list(lines)), f"(stopped: {stopped[0]})"], cmd[3:])
    if returncode != 0:
        raise JobFailed(job, ds or "-", returncode, error_tail(list(lines)),
                        [redact_text(a) for a in cmd[3:]])
    out.info("job '%s' finished for ds=%s", job, ds)
    return list(lines)


_Handler = Any  # a signal handler: callable, SIG_DFL, SIG_IGN or None


def _trap_sigterm(on_term: Any) -> _Handler | None:
    """Install a SIGTERM handler that runs ``on_term(signum)`` then the previous handler (e.g.
    Airflow's, which calls the operator's on_kill). Returns the previous handler, or ``None``
    when signals cannot be trapped here (not the main thread: Airflow runs tasks in it)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:  # whoever runs us chose to survive SIGTERM: so does the job
        return None

    def handler(signum: int, frame: Any) -> None:
        on_term(signum)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)
    return previous


def _restore_sigterm(previous: _Handler | None) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def bind_to_parent(env: Mapping[str, str] | None = None) -> bool:
    """Tie a job started by :func:`run_job` to its task process (Linux).

    * the kernel sends this process SIGTERM when the task process dies, even by SIGKILL
      (``PR_SET_PDEATHSIG``); if the task already died, the job exits at once;
    * SIGTERM becomes ``SystemExit(143)``, so ``finally`` blocks run (Spark is stopped,
      locks released, staging removed);
    * at exit, the rest of the job's process group (Spark's JVM, workers) gets SIGTERM.

    Does nothing (returns False) when the job was not started by :func:`run_job`
    (``ECREC_PARENT_PID`` unset: a manual CLI run, a test).
    """
    if env is None:
        # popped: a subprocess of this job is not bound to the task by inheritance
        raw = os.environ.pop(PARENT_PID_ENV, "").strip()
    else:
        raw = env.get(PARENT_PID_ENV, "").strip()
    if not raw:
        return False
    parent = int(raw)
    _check_parent(parent)
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    _check_parent(parent)  # the task may have died while the death signal was being armed

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    if os.getpgrp() == os.getpid():
        atexit.register(_stop_own_group)
    return True


def _check_parent(parent: int) -> None:
    """Exit when the task process is gone. Our parent may also be an interpreter wrapper that
    did not exec (then the death signal follows the wrapper, which dies with the task)."""
    if os.getppid() == parent:
        return
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        raise SystemExit(f"parent task process {parent} is gone; not starting") from None
    except PermissionError:  # alive, under another user
        return


def _stop_own_group() -> None:
    """At exit of a group leader: SIGTERM to the other members of the group."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _signal_group(os.getpgrp(), signal.SIGTERM)


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


def task_timeouts(env: Mapping[str, str] | None = None) -> dict[str, dt.timedelta]:
    """``execution_timeout`` per task class (see :data:`DEFAULT_TIMEOUT_MIN`), read at DAG parse
    from ``ECREC_TASK_TIMEOUT_<CLASS>_MIN`` (minutes, > 0)."""
    env = os.environ if env is None else env
    out: dict[str, dt.timedelta] = {}
    for cls, default in DEFAULT_TIMEOUT_MIN.items():
        name = TIMEOUT_ENV.format(cls.upper())
        raw = env.get(name, "").strip()
        try:
            minutes = float(raw) if raw else float(default)
        except ValueError:
            raise ValueError(f"{name} must be a number of minutes > 0, got {raw!r}") from None
        if minutes <= 0:
            raise ValueError(f"{name} must be a number of minutes > 0, got {raw!r}")
        out[cls] = dt.timedelta(minutes=minutes)
    return out


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


def dag_timetable(env: Mapping[str, str] | None = None, *, cron_env: str = "ECREC_DAG_SCHEDULE",
                  default_cron: str = "0 0 * * *") -> Any:
    """The DAGs' schedule: a daily interval [D, D+1) UTC, so the run for ds=D starts once D is over.

    ``ECREC_DAG_SCHEDULE`` overrides the cron; ``none`` keeps a DAG manual-only (triggered runs
    and backfills still work) -- the UI test uses it so unpausing does not start a run of its own.
    """
    from airflow.timetables.interval import CronDataIntervalTimetable

    env = os.environ if env is None else env
    cron = env.get(cron_env, default_cron).strip()
    if cron.lower() in {"none", "off", "manual", ""}:
        return None
    return CronDataIntervalTimetable(cron, timezone="UTC")


def partition_ready(path: str, *, landed: bool = False, logger: logging.Logger | None = None) -> bool:
    """True when a lake partition exists and holds a data file or a ``_SUCCESS`` marker.

    Hidden files (``.crc``, staging leftovers) do not count. A partition holding only
    ``_SUCCESS`` is an empty day: the clean job turns it into the "no data" outcome.

    ``landed=True`` applies the raw landing contract (:mod:`ecrec_lib.landing`): ready only once
    the producer's ``_SUCCESS`` marker (written after its last data file) is there and agrees
    with the files, so a half-copied day is waited for, never processed. The marker's path
    and what is still missing go to ``logger`` on every check.
    """
    if landed:
        from ecrec_lib.landing import landing_status

        status = landing_status(path)
        (logger or log).info("%s %s: %s", "ready:" if status.ready else "waiting for",
                             status.marker, status.reason)
        return status.ready
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


# --- backfills ------------------------------------------------------------------------

BACKFILL_RUN_TYPE = "backfill"


@dataclass(frozen=True)
class RunPolicy:
    """How a DAG run treats the model: a backfill or a pinned version scores with one fixed
    model version and never trains or moves an alias (a backfill of an old ds would otherwise
    train on old data, pass the gate on an old holdout and replace today's champion)."""

    backfill: bool
    model_version: str | None  # None: the champion when scoring starts

    @property
    def fixed_model(self) -> bool:
        return self.backfill or self.model_version is not None

    def describe(self) -> str:
        what = "backfill run" if self.backfill else "pinned run"
        version = f"model version {self.model_version}" if self.model_version else "the champion"
        return f"{what}: scores with {version}, no training, no promotion"


def run_policy(pin_model_version: object, run_type: object) -> RunPolicy:
    """The :class:`RunPolicy` of a DAG run from its ``pin_model_version`` param and
    ``dag_run.run_type`` (a ``DagRunType`` or its string value)."""
    kind = str(getattr(run_type, "value", run_type) or "")
    version = None if pin_model_version in (None, "") else str(pin_model_version).strip()
    if version is not None and not version.isdigit():
        raise ValueError(
            f"pin_model_version must be a registry version number such as '3', got "
            f"{pin_model_version!r}"
        )
    return RunPolicy(backfill=kind == BACKFILL_RUN_TYPE, model_version=version)


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
    fixed_model: str | None = None  # why this run must not train (backfill / pinned version)
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
    fixed_model: str | None = None,
    champion_flagged: bool = False,
) -> TrainingDecision:
    """Train when forced, when there is no champion yet, when the champion is flagged by an
    erasure request (it holds erased users' data), or past ``min_new_events``.

    ``fixed_model`` (a backfill or pinned run, :meth:`RunPolicy.describe`) wins over
    everything, then ``skip`` (an operator's explicit "do not train tonight").
    """
    if new_events < 0:
        raise ValueError(f"new_events must be >= 0, got {new_events}")
    if fixed_model:
        train, reason = False, fixed_model
    elif skip:
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
        fixed_model=fixed_model or None,
        champion_flagged=champion_flagged,
    )


__all__ = [
    "EXIT_CONTRACT",
    "EXIT_NO_DATA",
    "JobFailed",
    "JobTimeout",
    "REPO_ROOT",
    "RunPolicy",
    "SPARK_CONN_ID",
    "SPARK_JOBS",
    "TrainingDecision",
    "WAREHOUSE_POOL",
    "WAREHOUSE_POOL_SLOTS",
    "decide_training",
    "bind_to_parent",
    "error_tail",
    "job_command",
    "job_env",
    "partition_ready",
    "run_job",
    "run_policy",
    "spark_submit_kwargs",
    "stop_process_group",
    "task_retries",
    "task_timeouts",
    "use_spark_submit",
]
