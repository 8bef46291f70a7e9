"""Fault injection for the nightly chain: kill jobs at random moments, then prove nothing is lost.

The harness behind ``python -m jobs.chaos`` (issue 31). One *night* is the chain
``clean_events -> build_features -> score_topk --model-version V -> publish_scores`` on a small
generated lake, every job a real ``python -m jobs.<name>`` process in its own process group
(as :func:`ecrec_lib.orchestration.run_job` starts them).

1. **Reference.** Generate the raw lake, run every night once without faults (one model is
   trained once, after the first night's features, and pinned by version, so scores are
   deterministic), and record row-level fingerprints (:func:`fingerprint`) of every partition
   of each night: clean, quarantine, features, scores and the warehouse rows of that ds. The
   state of the lake and warehouse before each job of each night is kept as a snapshot.
2. **Trial.** Restore the snapshot taken before job J of night n, then inject one fault:

   * ``kill``: SIGKILL the job's process group after a random share of its measured duration;
   * ``swap``: SIGKILL it inside the window between the two renames of a partition swap (the
     test hook :data:`ecrec_lib.partitions.FAULT_PAUSE_SWAP_ENV` holds that window open and
     announces it);
   * ``second_writer``: start a second copy of J while the first holds its locks (the hook
     holds the first inside its first swap, or ``publish_scores`` inside its warehouse
     connection, meanwhile). Expected: a second lake writer is refused, exit 5, and the first
     finishes; a second publisher waits for the warehouse lock (DuckDB admits one writing
     process) and publishes the same night after the first. A second writer that only ran
     after the first had finished is no fault and is reported as not landed.

   ``swap`` and ``second_writer`` trials of a lake job start from the state *after* its
   reference run (a swap window opens only when a partition is replaced: a retry or a backfill
   of a finished night); ``kill`` trials start from the state before it.

   Then re-run the night from J on (as an Airflow retry would: the failed task, then its
   downstream tasks) and compare the fingerprints of nights 1..n with the reference.
   ``rows_lost`` counts reference rows missing or different.
3. **Reader.** While a trial runs, a thread polls the lake and the warehouse like a consumer:
   a published scoring run (``ops/runs/ds=D/manifest.json``) whose four score partitions are
   not all of that run with the manifest's row counts, or a warehouse night whose tables do
   not hold the rows ``published_nights`` records, counts as ``half_published_seen``. DuckDB
   admits one writing process and no reader beside it, so the warehouse is polled only while
   no ``publish_scores`` process runs (a killed one included once it is dead): the reader sees
   every state a publisher leaves behind, not the inside of its transaction.
4. **Strays.** After each trial, processes whose environment carries this trial's
   :data:`TRIAL_ENV` token (set on every job) are counted as ``stray_processes`` and killed.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecrec_lib.lake import parse_ds
from ecrec_lib.orchestration import PARENT_PID_ENV, REPO_ROOT, job_command, job_env
from ecrec_lib.partitions import FAULT_PAUSE_SWAP_ENV, FAULT_RELEASE_FILE_ENV, FAULT_SWAP_MARKER

log = logging.getLogger(__name__)

# Every job process of a trial carries this variable (value: the trial's token), so the
# processes a trial leaves behind can be found whatever became of their parents.
TRIAL_ENV = "ECREC_CHAOS_TRIAL"
CHAIN = ("clean_events", "build_features", "score_topk", "publish_scores")
MODES = ("kill", "swap", "second_writer")
# Jobs that publish local partitions with a rename swap (publish_scores writes the warehouse).
SWAPPING_JOBS = frozenset({"clean_events", "build_features", "score_topk"})
DATA_STAGES = ("clean", "quarantine", "features", "scores")
EXIT_LOCKED = 5
# How long the swap hook holds the window open: long enough to land a kill on a loaded box.
SWAP_PAUSE_S = 30.0
# How long a first writer holds its locks (paused in its first swap) for a second writer.
SECOND_WRITER_HOLD_S = 45.0
JOB_TIMEOUT_S = 900.0
# What a publisher logs while it waits for DuckDB's writer lock (warehouse.backend).
WAREHOUSE_LOCKED_LOG = "is locked by"


class ChaosError(RuntimeError):
    """The harness itself cannot proceed (a reference job failed, bad arguments)."""


@dataclass(frozen=True)
class ChaosConfig:
    """One harness run."""

    root: Path  # everything goes under it: work lake, snapshots, MLflow, logs
    nights: int = 3  # consecutive days generated and run
    trials: int = 10
    seed: int = 7  # drives the data, the trial plan and the kill moments
    start: str = "2024-01-01"
    users: int = 300
    items: int = 120
    dirty_rate: float = 0.02
    modes: tuple[str, ...] = MODES  # trial i uses modes[i % len(modes)]
    jobs: tuple[str, ...] = CHAIN  # the jobs faults are injected into
    epochs: int = 2  # of the one reference model; its quality is beside the point

    def __post_init__(self) -> None:
        if self.nights < 1 or self.trials < 0:
            raise ChaosError(f"need nights >= 1 and trials >= 0, got {self.nights}, {self.trials}")
        bad = [m for m in self.modes if m not in MODES] + [j for j in self.jobs if j not in CHAIN]
        if bad or not self.modes or not self.jobs:
            raise ChaosError(f"unknown or empty modes/jobs {bad}: modes are {MODES}, jobs {CHAIN}")

    @property
    def days(self) -> list[str]:
        first = parse_ds(self.start)
        return [(first + dt.timedelta(days=i)).isoformat() for i in range(self.nights)]


# ------------------------------------------------------------------ fingerprints

Fingerprint = dict[str, collections.Counter]


def _row_hash(row: Mapping[str, Any]) -> str:
    text = json.dumps(row, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def _partition_rows(path: Path) -> collections.Counter:
    import pyarrow.parquet as pq

    rows: collections.Counter = collections.Counter()
    for f in sorted(path.rglob("*.parquet")):
        if any(part.startswith((".", "_")) for part in f.relative_to(path).parts):
            continue
        rows.update(_row_hash(r) for r in pq.read_table(f).to_pylist())
    return rows


def fingerprint(lake_root: Path, warehouse_path: Path, days: Sequence[str],
                schema: str = "ecrec") -> Fingerprint:
    """``{"<stage>/<dataset>/ds=D" or "warehouse/<table>/ds=D": Counter of row hashes}`` for
    every data partition and warehouse night of ``days`` (rows as sorted-key JSON, hashed)."""
    out: Fingerprint = {}
    for ds in days:
        for stage in DATA_STAGES:
            stage_dir = lake_root / stage
            if not stage_dir.is_dir():
                continue
            for dataset in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
                part = dataset / f"ds={ds}"
                if part.is_dir():
                    out[f"{stage}/{dataset.name}/ds={ds}"] = _partition_rows(part)
    if warehouse_path.is_file():
        from ecrec_lib.scoring.tables import TABLE_COLUMNS
        from ecrec_lib.warehouse import connect

        with connect(f"duckdb://{warehouse_path}", schema, read_only=True) as wh:
            for table in TABLE_COLUMNS:
                if not wh.relation_exists(table):
                    continue
                for ds in days:
                    df = wh.query(f"SELECT * FROM {wh.fq(table)} WHERE ds = %s", [ds])
                    rows = collections.Counter(_row_hash(r) for r in df.to_dict("records"))
                    if rows:
                        out[f"warehouse/{table}/ds={ds}"] = rows
    return out


def compare(reference: Fingerprint, got: Fingerprint) -> tuple[int, int, list[str]]:
    """(rows lost, rows extra, partitions that differ): reference rows missing or changed in
    ``got``, rows of ``got`` the reference does not hold, and the keys where either happened."""
    lost = extra = 0
    differ: list[str] = []
    for key in sorted(set(reference) | set(got)):
        ref, new = reference.get(key, collections.Counter()), got.get(key, collections.Counter())
        missing, added = (ref - new).total(), (new - ref).total()
        if missing or added:
            differ.append(f"{key}: {missing} lost, {added} extra")
        lost, extra = lost + missing, extra + added
    return lost, extra, differ


# ------------------------------------------------------------------ job processes


class JobProcess:
    """One ``python -m jobs.<name>`` in its own process group, output to a log file."""

    def __init__(self, job: str, ds: str, env: Mapping[str, str], log_path: Path,
                 **flags: Any) -> None:
        self.job, self.ds = job, ds
        self.swap_window = threading.Event()  # set when the swap hook announces its pause
        self.lines: collections.deque[str] = collections.deque(maxlen=400)
        self.started = time.monotonic()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("a")
        self.proc = subprocess.Popen(
            job_command(job, ds, **flags), cwd=REPO_ROOT, env=dict(env),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name=f"out-{job}")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._log.write(line)
            if line.startswith(FAULT_SWAP_MARKER):
                self.swap_window.set()
        self._log.close()

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self) -> bool:
        """SIGKILL the whole process group; True when the job was still running."""
        alive = self.running()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.wait()
        return alive

    def wait(self, timeout: float = JOB_TIMEOUT_S) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
        self._reader.join(timeout=10)
        return rc

    def tail(self, n: int = 12) -> str:
        return "\n".join(list(self.lines)[-n:])


# ------------------------------------------------------------------ the reader


class Reader:
    """Polls the lake and the warehouse as a consumer would, counting half-published states."""

    def __init__(self, lake_root: Path, warehouse_path: Path, days: Sequence[str],
                 schema: str = "ecrec", interval_s: float = 0.25) -> None:
        self.lake_root, self.warehouse_path = lake_root, warehouse_path
        self.days, self.schema, self.interval_s = list(days), schema, interval_s
        # held by the reader while it has the warehouse open, and by the harness while a
        # publish_scores process lives (DuckDB: one writing process, no reader beside it)
        self.warehouse_lock = threading.Lock()
        self.publishers = 0
        self.seen: list[str] = []
        self.polls = self.warehouse_polls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        with self.warehouse_lock:
            self.publishers += 1
        try:
            yield
        finally:
            with self.warehouse_lock:
                self.publishers -= 1

    def __enter__(self) -> Reader:
        self._thread = threading.Thread(target=self._loop, daemon=True, name="chaos-reader")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.poll()  # the state the trial ends in counts too

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self) -> None:
        self.polls += 1
        for ds in self.days:
            problem = self.check_lake_night(ds)
            if problem:
                self.seen.append(problem)
        with self.warehouse_lock:
            if self.publishers == 0 and self.warehouse_path.is_file():
                self.warehouse_polls += 1
                self.seen.extend(self.check_warehouse())

    def check_lake_night(self, ds: str) -> str | None:
        """A manifest names a scoring run whose four tables are not all there, of that run,
        with its row counts. The manifest is read before and after the tables: a change
        meanwhile is a new run publishing (it removes the manifest first), not a torn state."""
        from ecrec_lib.scoring.tables import RUN_MARKER

        manifest_file = self.lake_root / "ops" / "runs" / f"ds={ds}" / "manifest.json"
        before = _read_json(manifest_file)
        if before is None:
            return None
        problems = []
        for table, info in before["tables"].items():
            part = self.lake_root / "scores" / table / f"ds={ds}"
            marker = _read_json(part / RUN_MARKER)
            if marker is None:
                problems.append(f"{table} missing")
            elif marker.get("run_id") != before["run_id"] or marker.get("rows") != info["rows"]:
                problems.append(f"{table} from run {marker.get('run_id')} ({marker.get('rows')} "
                                f"rows), manifest says {before['run_id']} ({info['rows']})")
        if problems and _read_json(manifest_file) == before:
            return f"lake ds={ds}: " + "; ".join(problems)
        return None

    def check_warehouse(self) -> list[str]:
        """Every night of ``published_nights`` has exactly its recorded rows in each table, and
        no table holds a night that ``published_nights`` does not list."""
        import duckdb

        from ecrec_lib.scoring.tables import TABLE_COLUMNS
        from ecrec_lib.warehouse import WarehouseError, connect

        try:
            wh = connect(f"duckdb://{self.warehouse_path}", self.schema, read_only=True)
        except WarehouseError as exc:
            if "lock" in str(exc).lower():  # a writer outside the harness's bookkeeping
                return []
            raise
        problems: list[str] = []
        try:
            if not wh.relation_exists("published_nights"):
                return []
            nights = wh.query(f"SELECT * FROM {wh.fq('published_nights')}")
            recorded = {str(r["ds"])[:10]: r for r in nights.to_dict("records")}
            for table in TABLE_COLUMNS:
                counts = wh.query(f"SELECT ds, count(*) AS n FROM {wh.fq(table)} GROUP BY ds")
                have = {str(r["ds"])[:10]: int(r["n"]) for r in counts.to_dict("records")}
                for ds, row in recorded.items():
                    if have.get(ds, 0) != int(row[f"{table}_rows"]):
                        problems.append(f"warehouse {table} ds={ds}: {have.get(ds, 0)} rows, "
                                        f"published_nights says {row[f'{table}_rows']}")
                for ds in set(have) - set(recorded):
                    problems.append(f"warehouse {table} ds={ds}: not in published_nights")
        except duckdb.Error as exc:
            problems.append(f"warehouse unreadable: {exc}")
        finally:
            wh.close()
        return problems


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # written atomically: a torn file is itself a finding
        return {"run_id": "<unreadable>", "tables": {}}


# ------------------------------------------------------------------ strays


def stray_processes(token: str) -> list[int]:
    """Pids of live processes whose environment has ``ECREC_CHAOS_TRIAL=<token>``."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            if proc.environ().get(TRIAL_ENV) == token and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


def reap_strays(token: str, settle_s: float = 5.0) -> list[int]:
    """Strays still alive ``settle_s`` after the trial (they had time to exit); killed."""
    deadline = time.monotonic() + settle_s
    strays = stray_processes(token)
    while strays and time.monotonic() < deadline:
        time.sleep(0.25)
        strays = stray_processes(token)
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return strays


# ------------------------------------------------------------------ the harness


@dataclass
class TrialResult:
    trial: int
    night: str
    job: str
    mode: str
    fault_landed: bool  # the job was still running when killed / a second writer ran beside it
    detail: str
    recovered: bool
    rows_lost: int
    rows_extra: int
    half_published_seen: int
    stray_processes: int
    seconds: float
    differ: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class Harness:
    """Reference run, snapshots and trials under ``cfg.root`` (see the module docstring)."""

    def __init__(self, cfg: ChaosConfig, progress: Callable[[str], None] = log.info) -> None:
        self.cfg = cfg
        self.root = cfg.root.resolve()
        self.work = self.root / "work"
        self.lake = self.work / "lake"
        self.warehouse = self.work / "warehouse" / "warehouse.duckdb"
        self.snapshots = self.root / "snapshots"
        self.logs = self.root / "logs"
        self.rng = random.Random(cfg.seed)
        self.progress = progress
        self.pseudo_key = secrets.token_hex(24)  # this run's own; every job of it shares it
        self.model_version: str | None = None
        self.durations: dict[tuple[str, str], float] = {}
        self.reference: dict[str, Fingerprint] = {}

    def env(self, token: str, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items()
                if not k.startswith(("AIRFLOW", "ECREC_", "PYTEST"))}
        base.update(
            ECREC_LAKE_ROOT=str(self.lake),
            ECREC_WAREHOUSE_URL=f"duckdb://{self.warehouse}",
            ECREC_MLFLOW_TRACKING_URI=f"sqlite:///{self.root / 'mlruns' / 'mlflow.db'}",
            ECREC_MLFLOW_ARTIFACT_ROOT=str(self.root / "mlruns" / "artifacts"),
            ECREC_PSEUDO_KEY=self.pseudo_key,
            ECREC_EPOCHS=str(self.cfg.epochs),
            ECREC_BATCH_SIZE="64",
            ECREC_SPARK_SHUFFLE_PARTITIONS="2",
            ECREC_SPARK_MASTER="local[2]",
            ECREC_SPARK_DRIVER_MEMORY="1g",
            ECREC_TOP_K="20",
            ECREC_N_QUERIES="20",
            ECREC_MIN_QUERY_USERS="2",
            ECREC_GUARDRAIL_MAX_MS_PER_1K_USERS="600000",
            OMP_NUM_THREADS="2",
            MKL_NUM_THREADS="2",
        )
        base.update(extra)
        env = job_env(base)
        env[TRIAL_ENV] = token
        # the jobs die with the harness (bind_to_parent), as they die with an Airflow task
        env[PARENT_PID_ENV] = str(os.getpid())
        return env

    def _flags(self, job: str) -> dict[str, Any]:
        return {"model_version": self.model_version} if job == "score_topk" else {}

    def _start(self, job: str, ds: str, token: str, tag: str, **extra: str) -> JobProcess:
        return JobProcess(job, ds, self.env(token, **extra), self.logs / f"{tag}-{job}-{ds}.log",
                          **self._flags(job))

    def _run(self, job: str, ds: str, token: str, tag: str, reader: Reader | None = None) -> int:
        with reader.publishing() if reader and job == "publish_scores" else contextlib.nullcontext():
            p = self._start(job, ds, token, tag)
            rc = p.wait()
        if rc != 0:
            log.warning("%s ds=%s exited %d:\n%s", job, ds, rc, p.tail())
        return rc

    def snapshot_dir(self, ds: str, job: str) -> Path:
        return self.snapshots / f"ds={ds}" / job

    # ---------------------------------------------------------------- reference

    def build_reference(self) -> None:
        """Generate the raw lake, run every night without faults, keep snapshots and prints."""
        if self.root.exists():
            shutil.rmtree(self.root)
        self.lake.mkdir(parents=True)
        (self.root / "mlruns").mkdir()
        cfg = self.cfg
        token = "reference-" + secrets.token_hex(4)
        gen = subprocess.run(
            [sys.executable, "-m", "jobs.generate_events", "--lake", str(self.lake), "--start",
             cfg.start, "--days", str(cfg.nights), "--users", str(cfg.users), "--items",
             str(cfg.items), "--seed", str(cfg.seed), "--dirty-rate", str(cfg.dirty_rate)],
            cwd=REPO_ROOT, env=self.env(token), capture_output=True, text=True, timeout=600)
        if gen.returncode != 0:
            raise ChaosError(f"generate_events failed:\n{gen.stderr[-2000:]}")
        for n, ds in enumerate(cfg.days):
            for job in CHAIN:
                shutil.copytree(self.work, self.snapshot_dir(ds, job), symlinks=True)
                if job == "score_topk" and self.model_version is None:
                    self._train_once(ds, token)
                t0 = time.monotonic()
                if self._run(job, ds, token, "reference") != 0:
                    raise ChaosError(f"reference run: {job} failed for ds={ds} (log under "
                                     f"{self.logs}); the harness needs a clean night to compare")
                self.durations[(ds, job)] = time.monotonic() - t0
            self.reference[ds] = fingerprint(self.lake, self.warehouse, cfg.days[: n + 1])
            self.progress(f"reference night ds={ds}: {len(self.reference[ds])} partitions, "
                          f"{sum(c.total() for c in self.reference[ds].values())} rows")
        reap_strays(token)

    def _train_once(self, ds: str, token: str) -> None:
        """The one model every scoring run of every trial uses (pinned by registry version);
        its snapshot copies made before training hold no model, so it lives outside work/."""
        if self._run("train_encoders", ds, token, "reference") != 0:
            raise ChaosError(f"training the reference model on ds={ds} failed (log under "
                             f"{self.logs})")
        summary = json.loads((self.lake / "ops" / "training" / f"ds={ds}" /
                              "summary.json").read_text())
        if not summary.get("registered_version"):
            raise ChaosError(f"training on ds={ds} registered no model version: {summary}")
        self.model_version = str(summary["registered_version"])
        for later in CHAIN[CHAIN.index("score_topk"):]:  # their snapshots must hold the summary
            snap = self.snapshot_dir(ds, later)
            if snap.exists():
                shutil.rmtree(snap)
                shutil.copytree(self.work, snap, symlinks=True)

    # ---------------------------------------------------------------- trials

    def plan(self, i: int) -> tuple[str, str, str]:
        """(night, job, mode) of trial ``i``: the mode cycles, night and job are drawn."""
        mode = self.cfg.modes[i % len(self.cfg.modes)]
        jobs = [j for j in self.cfg.jobs if mode != "swap" or j in SWAPPING_JOBS]
        if not jobs:
            raise ChaosError(f"mode {mode} needs one of {sorted(SWAPPING_JOBS)} in jobs")
        return self.rng.choice(self.cfg.days), self.rng.choice(jobs), mode

    def run_trial(self, i: int) -> TrialResult:
        ds, job, mode = self.plan(i)
        t0 = time.monotonic()
        token = f"trial-{i}-{secrets.token_hex(4)}"
        tag = f"trial{i:03d}"
        if self.work.exists():
            shutil.rmtree(self.work)
        # a swap window opens only when a partition is replaced: start from the state after
        # the job's reference run (a re-run of a finished night, as a retry or a backfill)
        start = CHAIN[CHAIN.index(job) + 1] if job in SWAPPING_JOBS and mode != "kill" else job
        shutil.copytree(self.snapshot_dir(ds, start), self.work, symlinks=True)
        days = self.cfg.days[: self.cfg.days.index(ds) + 1]
        failures: list[str] = []
        with Reader(self.lake, self.warehouse, days) as reader:
            landed, detail, rerun_from = self._inject(job, ds, mode, token, tag, reader, failures)
            for later in CHAIN[CHAIN.index(job) + (0 if rerun_from else 1):]:
                rc = self._run(later, ds, token, f"{tag}-retry", reader)
                if rc != 0:
                    failures.append(f"re-run of {later} exited {rc}")
                    break
        strays = reap_strays(token)
        got = fingerprint(self.lake, self.warehouse, days)
        lost, extra, differ = compare(self.reference[ds], got)
        result = TrialResult(
            trial=i, night=ds, job=job, mode=mode, fault_landed=landed, detail=detail,
            recovered=not failures and not lost and not extra, rows_lost=lost, rows_extra=extra,
            half_published_seen=len(reader.seen), stray_processes=len(strays),
            seconds=round(time.monotonic() - t0, 1), differ=differ[:20],
            failures=failures + reader.seen[:10] + [f"stray pid {p}" for p in strays],
        )
        self.progress(f"trial {i}: {mode} {job} ds={ds} landed={landed} -> recovered="
                      f"{result.recovered} lost={lost} half={len(reader.seen)} strays="
                      f"{len(strays)} ({result.seconds} s) {detail}"
                      + "".join(f"\n  {line}" for line in result.failures + result.differ))
        return result

    def _inject(self, job: str, ds: str, mode: str, token: str, tag: str, reader: Reader,
                failures: list[str]) -> tuple[bool, str, bool]:
        """Run ``job`` with the fault; returns (landed, what happened, whether ``job`` itself
        must be re-run)."""
        publishing = reader.publishing() if job == "publish_scores" else contextlib.nullcontext()
        if mode == "second_writer":
            # the first writer pauses inside its first swap (a lake job) or inside the warehouse
            # writer's connection (publish_scores), its locks held, so the second (which needs
            # seconds to start) surely meets it there; released once the second has ended or,
            # for the warehouse, has been seen waiting for the lock
            release = self.root / f"release-{tag}"
            hold = {FAULT_PAUSE_SWAP_ENV: str(SECOND_WRITER_HOLD_S),
                    FAULT_RELEASE_FILE_ENV: str(release)}
            warehouse = job == "publish_scores"
            with publishing:
                first = self._start(job, ds, token, f"{tag}-first", **hold)
                self._wait_for_lock(first)
                held = first.running() and first.swap_window.is_set()
                second = self._start(job, ds, token, f"{tag}-second")
                if warehouse:
                    overlapped = held and self._wait_for_second(second)
                else:
                    second.wait()
                    overlapped = held and first.running()  # the first still held its locks
                release.touch()
                rc1, rc2 = first.wait(), second.wait()
            detail = f"first exited {rc1}, second exited {rc2}"
            if not overlapped:
                detail += " (the first had finished: no overlap, no fault)"
            elif warehouse:
                detail += " (the second waited for the warehouse lock the first held)"
                # the warehouse admits one writer: the second publishes the same night after
                # the first (or gives up with a lock error), never beside it
                if rc2 not in (0, EXIT_LOCKED):
                    failures.append(f"second publisher exited {rc2}")
            elif rc2 == 0:
                failures.append(f"second writer of {job} succeeded beside the first")
            if rc1 != 0:
                failures.append(f"first writer of {job} exited {rc1} (second exited {rc2})")
            return overlapped, detail, rc1 != 0 or (warehouse and rc2 != 0)
        extra = {FAULT_PAUSE_SWAP_ENV: str(SWAP_PAUSE_S)} if mode == "swap" else {}
        with publishing:
            p = self._start(job, ds, token, f"{tag}-fault", **extra)
            if mode == "swap":
                deadline = time.monotonic() + JOB_TIMEOUT_S
                while not p.swap_window.wait(0.05) and p.running() \
                        and time.monotonic() < deadline:
                    pass
                at = time.monotonic() - p.started
                opened = p.swap_window.is_set()
                landed = p.kill_group() and opened
                detail = f"killed in the swap window at {at:.1f} s" if landed \
                    else "the job ended before any swap window opened"
            else:
                delay = self.rng.uniform(0.05, 1.0) * self.durations[(ds, job)]
                while p.running() and time.monotonic() - p.started < delay:
                    time.sleep(0.02)
                landed = p.kill_group()
                detail = f"SIGKILL at {delay:.1f} s of ~{self.durations[(ds, job)]:.0f} s" \
                    if landed else f"the job finished before the kill at {delay:.1f} s"
        return landed, detail, True

    def _wait_for_lock(self, first: JobProcess) -> None:
        """Until the first writer is paused in its fault window, its locks held (or it ended)."""
        while first.running() and not first.swap_window.wait(0.05):
            pass

    def _wait_for_second(self, second: JobProcess) -> bool:
        """Until a second publisher logs that the warehouse is locked (True) or ends (False)."""
        deadline = time.monotonic() + SECOND_WRITER_HOLD_S
        while True:
            if any(WAREHOUSE_LOCKED_LOG in line for line in list(second.lines)):
                return True
            if not second.running() or time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def run(self, on_trial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Reference, then every trial; the report (see :func:`summarize`). ``on_trial`` gets
        the report so far after each trial (a long run keeps a readable partial report)."""
        t0 = time.monotonic()
        self.build_reference()
        reference_s = time.monotonic() - t0
        results: list[TrialResult] = []
        for i in range(self.cfg.trials):
            results.append(self.run_trial(i))
            if on_trial is not None:
                on_trial(summarize(self.cfg, results, reference_s, self.model_version))
        return summarize(self.cfg, results, reference_s, self.model_version)


def summarize(cfg: ChaosConfig, results: Sequence[TrialResult], reference_s: float,
              model_version: str | None) -> dict[str, Any]:
    """The JSON report: totals first, then one entry per trial."""
    return {
        "trials": len(results),
        "trials_planned": cfg.trials,
        "faults_injected": sum(r.fault_landed for r in results),
        "recovered": sum(r.recovered for r in results),
        "rows_lost": sum(r.rows_lost for r in results),
        "rows_extra": sum(r.rows_extra for r in results),
        "half_published_seen": sum(r.half_published_seen for r in results),
        "stray_processes": sum(r.stray_processes for r in results),
        "by_mode": {m: sum(r.mode == m for r in results) for m in cfg.modes},
        "nights": cfg.nights,
        "seed": cfg.seed,
        "model_version": model_version,
        "reference_s": round(reference_s, 1),
        "trial_s": [r.seconds for r in results],
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "results": [asdict(r) for r in results],
    }


__all__ = [
    "CHAIN",
    "MODES",
    "TRIAL_ENV",
    "ChaosConfig",
    "ChaosError",
    "Harness",
    "JobProcess",
    "Reader",
    "TrialResult",
    "compare",
    "fingerprint",
    "reap_strays",
    "stray_processes",
    "summarize",
]
