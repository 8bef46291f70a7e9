"""Tasks own their processes: run_job stops the job's whole process group on every way a task ends.

A stand-in interpreter plays the job: it binds to its task like a real job (``import jobs``),
starts a grandchild, writes both pids to a file and sleeps. The "task" is a separate Python
process calling run_job, so the tests can signal it the way Airflow's supervisor does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ecrec_lib.orchestration import JobTimeout, run_job, task_timeouts

REPO = Path(__file__).resolve().parents[1]

FAKE_JOB = textwrap.dedent(
    """\
    #!{python}
    import json, os, signal, subprocess, sys, time
    sys.path.insert(0, {repo!r})
    import jobs  # binds the job to its task process, as every real job does
    grandchild = subprocess.Popen([sys.executable, "-c", {grandchild!r}])
    pids = {{"job": os.getpid(), "grandchild": grandchild.pid, "pgid": os.getpgrp()}}
    tmp = {pids!r} + ".tmp"
    with open(tmp, "w") as f:
        json.dump(pids, f)
    os.replace(tmp, {pids!r})
    print("job started", flush=True)
    time.sleep(300)
    """
)
# The grandchild ignores SIGTERM: only the SIGKILL after the grace period stops it.
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
OBEDIENT = "import time; time.sleep(300)"

TASK = textwrap.dedent(
    """\
    import signal, sys
    sys.path.insert(0, {repo!r})
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in an interactive process
    from ecrec_lib.orchestration import run_job
    run_job("clean_events", "2024-01-02", python={fake!r}, grace_s={grace})
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose (its parent has not reaped it yet)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], within_s: float) -> float:
    t0 = time.monotonic()
    while any(_alive(p) for p in pids):
        if time.monotonic() - t0 > within_s:
            alive = [p for p in pids if _alive(p)]
            for p in alive:  # never leave strays behind a failed test
                os.kill(p, signal.SIGKILL)
            pytest.fail(f"processes {alive} still running {within_s} s after the task ended")
        time.sleep(0.05)
    return time.monotonic() - t0


def _wait_file(path: Path, within_s: float = 30.0) -> dict:
    t0 = time.monotonic()
    while not path.exists():
        assert time.monotonic() - t0 < within_s, "the fake job never started"
        time.sleep(0.05)
    return json.loads(path.read_text())


def _fake_job(tmp_path: Path, grandchild: str = OBEDIENT) -> tuple[Path, Path]:
    pids = tmp_path / "pids.json"
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_JOB.format(python=sys.executable, repo=str(REPO), grandchild=grandchild,
                                    pids=str(pids)))
    fake.chmod(0o755)
    return fake, pids


def _start_task(tmp_path: Path, fake: Path, grace: float = 5.0) -> subprocess.Popen:
    script = TASK.format(repo=str(REPO), fake=str(fake), grace=grace)
    env = {k: v for k, v in os.environ.items() if k != "ECREC_PARENT_PID"}
    return subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(
    ("sig", "grandchild"),
    [
        (signal.SIGTERM, OBEDIENT),
        (signal.SIGTERM, STUBBORN),  # escalates to SIGKILL after the grace period
        (signal.SIGINT, OBEDIENT),  # Airflow's supervisor sends SIGINT first
        (signal.SIGKILL, OBEDIENT),  # the task cannot react: the job's death signal does
    ],
)
def test_signal_to_task_stops_the_whole_job_group(tmp_path: Path, sig: int, grandchild: str) -> None:
    fake, pids_file = _fake_job(tmp_path, grandchild)
    task = _start_task(tmp_path, fake, grace=2.0)
    try:
        pids = _wait_file(pids_file)
        assert pids["pgid"] == pids["job"], "the job must lead its own process group"
        assert pids["pgid"] != os.getpgrp()
        assert _alive(pids["job"]) and _alive(pids["grandchild"])
        task.send_signal(sig)
        took = _wait_gone([pids["job"], pids["grandchild"]], within_s=10.0)
        task.wait(timeout=10)
    finally:
        if task.poll() is None:
            task.kill()
            task.wait()
    assert took < 10.0
    if sig == signal.SIGTERM:
        assert task.returncode == -signal.SIGTERM  # the task still dies of its signal
    # nothing of the group is left, zombies aside
    with pytest.raises(ProcessLookupError):
        _signal_live_members(pids["pgid"])


def _signal_live_members(pgid: int) -> None:
    live = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _in_group(p, pgid)]
    if not live:
        raise ProcessLookupError(pgid)


def _in_group(proc_dir: Path, pgid: int) -> bool:
    try:
        fields = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z" and int(fields[2]) == pgid


def test_timeout_stops_the_group_and_raises(tmp_path: Path) -> None:
    fake, pids_file = _fake_job(tmp_path, STUBBORN)
    t0 = time.monotonic()
    with pytest.raises(JobTimeout) as info:
        run_job("build_features", "2024-01-02", python=str(fake), timeout_s=3, grace_s=1)
    pids = json.loads(pids_file.read_text())
    assert time.monotonic() - t0 < 15
    assert not _alive(pids["job"]) and not _alive(pids["grandchild"])
    assert "ran past its timeout of 3 s" in str(info.value)


def test_exception_in_the_task_stops_the_group(tmp_path: Path) -> None:
    """Airflow's execution_timeout raises inside the task: the same path as any exception."""
    import logging

    fake, pids_file = _fake_job(tmp_path)

    class Boom(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "job started" in record.getMessage():
                raise KeyboardInterrupt  # stands in for AirflowTaskTimeout / the task's kill

    logger = logging.getLogger("test.orchestration.boom")
    logger.addHandler(Boom())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with pytest.raises(KeyboardInterrupt):
        run_job("score_topk", "2024-01-02", python=str(fake), logger=logger, grace_s=2)
    pids = json.loads(pids_file.read_text())
    assert not _alive(pids["job"]) and not _alive(pids["grandchild"])


def test_task_timeouts_from_env() -> None:
    default = task_timeouts({})
    assert set(default) == {"light", "spark", "train", "score"}
    assert all(t.total_seconds() > 0 for t in default.values())
    assert task_timeouts({"ECREC_TASK_TIMEOUT_SPARK_MIN": "7"})["spark"].total_seconds() == 420
    for bad in ("0", "-3", "soon"):
        with pytest.raises(ValueError, match="ECREC_TASK_TIMEOUT_TRAIN_MIN"):
            task_timeouts({"ECREC_TASK_TIMEOUT_TRAIN_MIN": bad})


def test_manual_runs_are_not_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from ecrec_lib.orchestration import bind_to_parent

    assert bind_to_parent({}) is False
    # a job whose task already died must not start
    with pytest.raises(SystemExit, match="is gone"):
        bind_to_parent({"ECREC_PARENT_PID": str(os.getppid() + 999_999)})
