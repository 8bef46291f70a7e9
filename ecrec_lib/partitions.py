"""One writer per partition and crash-safe swaps of local lake partitions.

**Locks.** A writer holds :func:`partition_lock` on ``(dataset, ds)`` for its whole
write-validate-publish span. The lock is an ``flock`` on a hidden file beside the partition,
``<dataset>/.lock-ds=D`` (Spark and pyarrow skip dot files), holding the holder's pid, host,
start time and run id as JSON. A second writer does not wait: it gets :class:`PartitionLocked`
naming the holder. The kernel releases an ``flock`` when its holder dies, however it dies, so
a lock of a dead holder (a SIGKILLed job) is free at once: nothing to break by hand, no pid
guessing. The file itself is removed on release; an acquirer checks that the file it locked
is still the one at the path (a releasing holder may have unlinked it meanwhile).

*Limit*: ``flock`` works for local filesystems and NFSv4 mounts (the server arbitrates) only.
For a remote lake root (``s3a://``, ``hdfs://``) the lock files go to a local directory
(``ECREC_LOCK_DIR``, default ``<tmp>/ecrec-locks``): that guards writers on one host only;
several hosts writing one object-store lake need an external lock (Airflow pools, a database
lock) on top.

**Staging and swaps.** Each run stages into ``.staging-<run id>-ds=D`` and publishes with two
renames: ``ds=D -> .old-<run id>-ds=D``, then staging -> ``ds=D``; the old copy is removed
last. A kill between the two renames leaves no ``ds=D``: :func:`recover_partition`, run by
every writer after it takes the lock (and callable on its own), puts the ``.old-`` copy back
when the partition is missing, drops a leftover ``.old-`` beside a present partition, and
removes staging dirs of runs that are gone (the lock says no other writer is alive).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_PREFIX = ".lock-"
STAGING_PREFIX = ".staging-"
OLD_PREFIX = ".old-"
TMP_PREFIX = ".tmp-"
# Written inside a published partition: which run published it (Spark and pyarrow skip "_").
RUN_MARKER = "_run.json"
LOCK_DIR_ENV = "ECREC_LOCK_DIR"
RUN_ID_ENV = "ECREC_RUN_ID"
# Test hook of the fault-injection harness (jobs.chaos): seconds to sleep between the two
# renames of a swap, announced on stderr, so a kill can land in that window on purpose.
FAULT_PAUSE_SWAP_ENV = "ECREC_FAULT_PAUSE_SWAP_S"
FAULT_SWAP_MARKER = "ECREC_FAULT swap window open:"
# Test hook: a file whose appearance ends the pause early (the chaos harness's second writer
# has been refused, so the first need not keep its window open any longer).
FAULT_RELEASE_FILE_ENV = "ECREC_FAULT_RELEASE_FILE"
# Airflow's context variables, when present, say which task instance holds a lock.
_AIRFLOW_CTX = ("AIRFLOW_CTX_DAG_ID", "AIRFLOW_CTX_TASK_ID", "AIRFLOW_CTX_DAG_RUN_ID",
                "AIRFLOW_CTX_TRY_NUMBER")
_RUN_ID = re.compile(r"^[A-Za-z0-9_.:+-]{1,80}$")


class PartitionLocked(RuntimeError):
    """Another live writer holds the partition; the message names it (pid, host, since)."""

    def __init__(self, target: str, holder: LockHolder | None) -> None:
        self.target = target
        self.holder = holder
        who = holder.describe() if holder else "a writer that has not written its details yet"
        super().__init__(
            f"{target} is being written by {who}; a second writer would publish over it. "
            "Wait for that run to finish (or stop it), then re-run"
        )


class RecoveryError(RuntimeError):
    """A partition's leftovers cannot be resolved automatically; the message says what to do."""


def new_run_id() -> str:
    """A run id unique to this writer: ``ECREC_RUN_ID`` plus a random suffix, or random alone.

    Two writers of one partition (an Airflow retry beside a stray, a manual run) never share
    one, so their staging directories never collide.
    """
    base = os.environ.get(RUN_ID_ENV, "").strip()
    suffix = uuid.uuid4().hex[:12]
    if base:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", base)[:60]
        return f"{base}-{suffix}"
    return suffix


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id must be 1-80 characters of [A-Za-z0-9_.:+-], got {run_id!r}")
    return run_id


@dataclass(frozen=True)
class LockHolder:
    """Who holds a partition lock (the JSON content of the lock file)."""

    pid: int
    host: str
    since: float  # epoch seconds
    run_id: str
    task: str = ""  # Airflow dag.task/run/try when the holder runs inside a task

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
        task = f", task {self.task}" if self.task else ""
        return f"run {self.run_id} (pid {self.pid} on host {self.host}, since {since}{task})"


def _local(path: str) -> str | None:
    """The local filesystem path of a lake path, ``None`` for a remote one."""
    if "://" not in path:
        return path
    if path.startswith("file://"):
        return path.removeprefix("file://")
    return None


def lock_file(final_path: str) -> Path:
    """Where the lock of partition ``final_path`` (``.../<dataset>/ds=D``) lives."""
    final_path = final_path.rstrip("/")
    local = _local(final_path)
    parent, _, name = final_path.rpartition("/")
    if local is not None:
        return Path(_local(parent) or parent) / f"{LOCK_PREFIX}{name}"
    root = Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "ecrec-locks")
    # the remote path, flattened into one safe file name
    flat = re.sub(r"[^A-Za-z0-9_.=-]", "_", final_path)
    return root / f"{LOCK_PREFIX}{flat}"


def read_holder(final_path: str) -> LockHolder | None:
    """The details written by the current (or last) holder of the partition's lock."""
    try:
        text = lock_file(final_path).read_text()
    except FileNotFoundError:
        return None
    if not text.strip():
        return None
    try:
        return LockHolder(**json.loads(text))
    except (ValueError, TypeError) as exc:
        log.warning("unreadable lock file %s (%s): %r", lock_file(final_path), exc, text[:200])
        return None


def _airflow_task() -> str:
    parts = [os.environ.get(k, "") for k in _AIRFLOW_CTX]
    return "/".join(parts) if any(parts) else ""


@contextlib.contextmanager
def partition_lock(final_path: str, run_id: str) -> Iterator[LockHolder]:
    """Hold the single-writer lock of one partition; raises :class:`PartitionLocked` at once
    when a live writer holds it."""
    check_run_id(run_id)
    path = lock_file(final_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise PartitionLocked(final_path, read_holder(final_path)) from None
        # the previous holder may have unlinked the file between our open and our flock
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    holder = LockHolder(pid=os.getpid(), host=socket.gethostname(), since=time.time(),
                        run_id=run_id, task=_airflow_task())
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        os.fsync(fd)
        yield holder
    finally:
        # unlink while still holding the lock: a waiter that opened the old file sees the
        # inode change and retries on a fresh file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def partition_locks(final_paths: Sequence[str], run_id: str) -> Iterator[list[LockHolder]]:
    """Hold the locks of several partitions (sorted, so two writers never deadlock), each
    recovered (:func:`recover_partition`) once held. On exit, success or failure, this run's
    unpublished staging dirs are removed, then every lock is released."""
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(partition_lock(p, run_id)) for p in sorted(set(final_paths))]
        for p in final_paths:
            recover_partition(p)
        try:
            yield held
        finally:
            for p in final_paths:
                local = _local(staging_path(p, run_id))
                if local is not None and os.path.isdir(local):
                    shutil.rmtree(local)


def staging_path(final_path: str, run_id: str) -> str:
    """The hidden sibling this run stages ``final_path`` in: ``.staging-<run id>-ds=D``."""
    parent, _, name = final_path.rstrip("/").rpartition("/")
    return f"{parent}/{STAGING_PREFIX}{check_run_id(run_id)}-{name}"


def _siblings(final: Path, prefix: str) -> list[Path]:
    """Hidden siblings ``<prefix><run id>-<name>`` of ``final`` (any run; the unversioned
    ``<prefix><name>`` of older releases matches too)."""
    if not final.parent.is_dir():
        return []
    tail = f"-{final.name}"
    return sorted(p for p in final.parent.iterdir()
                  if p.name.startswith(prefix) and p.name.endswith(tail))


def fault_pause(where: str | Path) -> None:
    """Test hook: sleep ``ECREC_FAULT_PAUSE_SWAP_S`` seconds at the first fault window of this
    process -- between the two renames of a partition swap, or inside the warehouse publisher's
    writer lock (unset or 0: return at once). Prints :data:`FAULT_SWAP_MARKER` and ``where``
    first, so the chaos harness can SIGKILL the writer while the partition is swapped out, or
    start a second writer while this one surely holds its locks; the pause ends early when the
    file ``ECREC_FAULT_RELEASE_FILE`` names appears. Never set in production."""
    # popped: one pause per process, however many partitions it swaps
    raw = os.environ.pop(FAULT_PAUSE_SWAP_ENV, "").strip()
    release = os.environ.pop(FAULT_RELEASE_FILE_ENV, "").strip()
    if not raw:
        return
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{FAULT_PAUSE_SWAP_ENV} must be a number of seconds, got {raw!r}") from None
    if seconds <= 0:
        return
    print(f"{FAULT_SWAP_MARKER} {where}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (release and os.path.exists(release)):
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def swap_in(staged: str | Path, final: str | Path, run_id: str) -> None:
    """Move the staged directory into place: ``final -> .old-<run id>-<name>``,
    ``staged -> final``, old removed. A kill anywhere leaves a state
    :func:`recover_partition` resolves; readers only ever see a whole partition or, between
    the two renames, none."""
    staged, final = Path(staged), Path(final)
    old = final.parent / f"{OLD_PREFIX}{check_run_id(run_id)}-{final.name}"
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.rename(final, old)
        fault_pause(final)
    os.rename(staged, final)
    if old.exists():
        shutil.rmtree(old)


def recover_partition(final_path: str) -> list[str]:
    """Finish or roll back a half-done swap of the local partition ``final_path``.

    Call it holding the partition's lock (every writer does, through
    :func:`partition_locks`): every staging or temp dir then belongs to a dead run.

    * partition missing, one ``.old-`` copy: the copy is put back (the interrupted swap is
      rolled back; the staged data it was replacing with is dropped, never half-trusted);
    * partition present: leftover ``.old-`` copies are removed (the swap had finished);
    * staging / temp dirs of dead runs are removed.

    Returns what was done, one line per action (logged). Remote paths: nothing to do (their
    publish is Spark's partition overwrite, not a rename swap). Raises
    :class:`RecoveryError` when the partition is missing and several ``.old-`` copies exist.
    """
    local = _local(final_path.rstrip("/"))
    if local is None:
        return []
    final = Path(local)
    done: list[str] = []
    olds = _siblings(final, OLD_PREFIX)
    if not final.exists() and olds:
        if len(olds) > 1:
            raise RecoveryError(
                f"{final} is missing and {len(olds)} previous copies exist "
                f"({', '.join(p.name for p in olds)}): move the right one to {final.name} by "
                "hand (the newest complete one), delete the others, then re-run"
            )
        os.rename(olds[0], final)
        done.append(f"restored {final} from {olds[0].name} (a swap was interrupted)")
        olds = []
    for old in olds:
        shutil.rmtree(old)
        done.append(f"removed {old.name} beside {final} (a swap had finished)")
    for leftover in _siblings(final, STAGING_PREFIX) + _siblings(final, TMP_PREFIX):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        done.append(f"removed {leftover.name} (staged by a run that is gone)")
    for line in done:
        log.warning("recovery: %s", line)
    return done


_PARTITION_NAME = re.compile(r"^(?:\.(?:staging|old|tmp)-.*-)?(ds=\d{4}-\d{2}-\d{2})$")


def recover_lake(lake_root: str) -> dict[str, list[str]]:
    """Recover every half-done swap under a local lake (each partition under its lock).

    Walks ``<stage>/<dataset>/`` for partitions and leftovers (``.old-*``, ``.staging-*``,
    ``.tmp-*``); a partition whose lock is held by a live writer is left to that writer (its
    own recovery runs when it started). Returns ``{partition path: actions}`` for those that
    needed work (an operator's or a chaos harness's entry point; each writer already recovers
    the partitions it writes). Raises :class:`RecoveryError` at the end, after recovering all
    the others, when some partition cannot be resolved automatically.
    """
    root = Path(_local(lake_root.rstrip("/")) or "")
    if _local(lake_root) is None:
        raise ValueError(f"{lake_root}: recovery walks local lakes only (remote publishes are "
                         "Spark partition overwrites, with no rename swap to recover)")
    finals: set[Path] = set()
    for dataset in (d for stage in sorted(root.iterdir()) if stage.is_dir()
                    for d in sorted(stage.iterdir()) if d.is_dir()):
        for entry in dataset.iterdir():
            m = _PARTITION_NAME.match(entry.name)
            if m and entry.is_dir():
                finals.add(dataset / m.group(1))
    out: dict[str, list[str]] = {}
    stuck: list[str] = []
    for final in sorted(finals):
        try:
            with partition_lock(str(final), new_run_id()):
                done = recover_partition(str(final))
        except PartitionLocked as exc:
            log.info("recovery: %s", exc)
            continue
        except RecoveryError as exc:  # the others are still recovered; this one needs a person
            stuck.append(str(exc))
            continue
        if done:
            out[str(final)] = done
    if stuck:
        raise RecoveryError(f"recovered {len(out)} partitions; {len(stuck)} need a person: "
                            + " | ".join(stuck))
    return out


__all__ = [
    "LockHolder",
    "PartitionLocked",
    "RecoveryError",
    "check_run_id",
    "fault_pause",
    "lock_file",
    "new_run_id",
    "partition_lock",
    "partition_locks",
    "read_holder",
    "recover_lake",
    "recover_partition",
    "staging_path",
    "swap_in",
]
