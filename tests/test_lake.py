"""Local-filesystem helpers of the lake: whole-directory swaps, one writer per partition,
recovery of swaps a kill left half-done."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ecrec_lib.lake import replace_local_dir
from ecrec_lib.partitions import (
    PartitionLocked,
    RecoveryError,
    lock_file,
    partition_lock,
    partition_locks,
    recover_partition,
    staging_path,
    swap_in,
)


def test_replace_local_dir_swaps_whole_directories(tmp_path: Path) -> None:
    final = tmp_path / "models" / "two_tower_seed0"

    def write(files: dict[str, str]):
        def fn(d: Path) -> None:
            for name, text in files.items():
                (d / name).write_text(text)
        return fn

    assert replace_local_dir(final, write({"a": "1", "blend.json": "{}"})) == final
    replace_local_dir(final, write({"a": "2"}))
    assert sorted(p.name for p in final.iterdir()) == ["a"]  # the old blend did not survive
    assert (final / "a").read_text() == "2"

    def fail(d: Path) -> None:
        (d / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        replace_local_dir(final, fail)
    assert (final / "a").read_text() == "2"  # the earlier directory is untouched
    assert sorted(p.name for p in final.parent.iterdir()) == ["two_tower_seed0"]  # no temp left


# --- one writer per partition, crash-safe swaps (ecrec_lib.partitions) -------------------

REPO = Path(__file__).resolve().parents[1]
# A writer in another process: takes the lock, stages its files, waits for "go", publishes.
WRITER = textwrap.dedent(
    """\
    import os, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from ecrec_lib.partitions import partition_locks, staging_path, swap_in
    final, run_id, tag, go = {final!r}, {run_id!r}, {tag!r}, Path({go!r})
    with partition_locks([final], run_id):
        stage = Path(staging_path(final, run_id))
        stage.mkdir(parents=True)
        (stage / "part-0.txt").write_text(tag)
        print("staged", flush=True)
        while not go.exists():
            time.sleep(0.02)
        swap_in(stage, final, run_id)
    print("published", flush=True)
    """
)


def _writer(tmp_path: Path, final: Path, run_id: str, tag: str) -> tuple[subprocess.Popen, Path]:
    go = tmp_path / f"go-{run_id}"
    script = WRITER.format(repo=str(REPO), final=str(final), run_id=run_id, tag=tag, go=str(go))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "staged"
    return proc, go


def _put(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "part-0.txt").write_text(text)
    return path


def test_second_writer_gets_the_lock_error_and_the_first_writer_publishes(tmp_path: Path) -> None:
    final = tmp_path / "scores" / "user_topk" / "ds=2024-01-02"
    _put(final, "yesterday's run")
    first, go = _writer(tmp_path, final, "run-a", "validated by run-a")
    try:
        with pytest.raises(PartitionLocked) as info:
            with partition_locks([str(final)], "run-b"):
                pytest.fail("a second writer got the lock")
        holder = info.value.holder
        assert holder is not None and holder.pid == first.pid and holder.run_id == "run-a"
        assert holder.host == socket.gethostname()
        message = str(info.value)
        assert f"pid {first.pid}" in message and "run run-a" in message and "since 20" in message
        # the refused writer touched nothing: not the partition, not run-a's staging
        assert (final / "part-0.txt").read_text() == "yesterday's run"
        assert Path(staging_path(str(final), "run-a")).is_dir()
        go.touch()
        assert first.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert (final / "part-0.txt").read_text() == "validated by run-a"
    assert sorted(p.name for p in final.parent.iterdir()) == ["ds=2024-01-02"]  # lock file gone
    with partition_locks([str(final)], "run-b"):  # free again once the first writer is done
        pass


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path: Path) -> None:
    final = tmp_path / "clean" / "events" / "ds=2024-01-02"
    stray, _ = _writer(tmp_path, final, "stray", "never validated")
    stray.send_signal(signal.SIGKILL)
    stray.wait(timeout=10)
    # the stray's lock file and staging are still on disk; its flock died with it
    assert json.loads(lock_file(str(final)).read_text())["pid"] == stray.pid
    with partition_locks([str(final)], "retry") as held:
        assert held[0].pid == os.getpid()
        assert json.loads(lock_file(str(final)).read_text())["run_id"] == "retry"
        assert not Path(staging_path(str(final), "stray")).exists()  # recovery removed it
    assert not final.exists()  # nothing of the stray's unvalidated files was published


def test_same_process_cannot_take_a_held_lock_twice(tmp_path: Path) -> None:
    final = str(tmp_path / "features" / "item_stats" / "ds=2024-01-02")
    with partition_lock(final, "one"):
        with pytest.raises(PartitionLocked, match=f"pid {os.getpid()}"):
            with partition_lock(final, "two"):
                pass


def test_recover_restores_a_swap_killed_between_its_renames(tmp_path: Path) -> None:
    final = tmp_path / "clean" / "events" / "ds=2024-01-02"
    _put(final, "published")
    stage = _put(Path(staging_path(str(final), "killed")), "staged, maybe unvalidated")
    # the first rename of swap_in happened, the kill came before the second
    os.rename(final, final.parent / ".old-killed-ds=2024-01-02")
    assert not final.exists()
    done = recover_partition(str(final))
    assert (final / "part-0.txt").read_text() == "published"  # rolled back, nothing lost
    assert not stage.exists()
    assert sorted(p.name for p in final.parent.iterdir()) == ["ds=2024-01-02"]
    assert any("restored" in line for line in done)
    assert recover_partition(str(final)) == []  # idempotent


def test_recover_finishes_a_swap_killed_after_its_renames(tmp_path: Path) -> None:
    final = _put(tmp_path / "clean" / "events" / "ds=2024-01-02", "new")
    _put(final.parent / ".old-killed-ds=2024-01-02", "previous")
    _put(final.parent / ".tmp-0af3-ds=2024-01-02", "half written")  # replace_local_dir's temp
    _put(final.parent / ".old-ds=2024-01-01", "another day's: not ours")
    recover_partition(str(final))
    assert (final / "part-0.txt").read_text() == "new"
    assert sorted(p.name for p in final.parent.iterdir()) == [".old-ds=2024-01-01", "ds=2024-01-02"]


def test_recover_refuses_to_guess_between_two_old_copies(tmp_path: Path) -> None:
    final = tmp_path / "clean" / "events" / "ds=2024-01-02"
    _put(final.parent / ".old-a-ds=2024-01-02", "a")
    _put(final.parent / ".old-b-ds=2024-01-02", "b")
    with pytest.raises(RecoveryError, match="move the right one to ds=2024-01-02 by hand"):
        recover_partition(str(final))
    assert len(list(final.parent.iterdir())) == 2  # nothing deleted


def test_swap_in_and_replace_local_dir_leave_only_the_partition(tmp_path: Path) -> None:
    final = _put(tmp_path / "scores" / "trending" / "ds=2024-01-02", "v1")
    stage = _put(Path(staging_path(str(final), "r2")), "v2")
    swap_in(stage, final, "r2")
    assert (final / "part-0.txt").read_text() == "v2"
    replace_local_dir(final, lambda d: (d / "part-0.txt").write_text("v3"))
    assert sorted(p.name for p in final.parent.iterdir()) == ["ds=2024-01-02"]
    assert (final / "part-0.txt").read_text() == "v3"


def test_a_failed_writer_removes_its_own_staging(tmp_path: Path) -> None:
    final = tmp_path / "features" / "user_sequences" / "ds=2024-01-02"
    with pytest.raises(ValueError, match="suite failed"):
        with partition_locks([str(final)], "bad"):
            _put(Path(staging_path(str(final), "bad")), "rejected")
            raise ValueError("suite failed")
    assert not final.parent.exists() or list(final.parent.iterdir()) == []
    t0 = time.monotonic()
    with partition_locks([str(final)], "next"):
        assert time.monotonic() - t0 < 1


def test_recover_lake_walks_every_partition_and_leaves_live_writers_alone(tmp_path: Path) -> None:
    from ecrec_lib.partitions import recover_lake

    lake = tmp_path / "lake"
    interrupted = lake / "clean" / "events" / "ds=2024-01-02"
    _put(interrupted.parent / ".old-r1-ds=2024-01-02", "events of the 2nd")
    finished = _put(lake / "features" / "item_stats" / "ds=2024-01-02", "new")
    _put(finished.parent / ".old-r2-ds=2024-01-02", "old")
    busy = _put(lake / "scores" / "trending" / "ds=2024-01-02", "published")
    busy_stage = _put(Path(staging_path(str(busy), "live")), "being written")
    untouched = _put(lake / "clean" / "catalog" / "ds=2024-01-02", "catalog")
    with partition_lock(str(busy), "live"):
        done = recover_lake(str(lake))
    assert sorted(done) == [str(interrupted), str(finished)]
    assert (interrupted / "part-0.txt").read_text() == "events of the 2nd"
    assert sorted(p.name for p in finished.parent.iterdir()) == ["ds=2024-01-02"]
    assert busy_stage.is_dir()  # the live writer's staging is its own business
    assert (untouched / "part-0.txt").read_text() == "catalog"
    assert recover_lake(str(lake)) == {str(busy): [f"removed {busy_stage.name} (staged by a run "
                                                   "that is gone)"]}


def test_recover_lake_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import recover_lake

    lake = tmp_path / "lake"
    final = lake / "quarantine" / "events" / "ds=2024-01-02"
    _put(final.parent / ".old-r1-ds=2024-01-02", "quarantined rows")
    assert recover_lake.main(["--lake", str(lake)]) == 0
    assert f"{final}: restored {final}" in capsys.readouterr().out
    assert (final / "part-0.txt").read_text() == "quarantined rows"
    two = lake / "clean" / "events" / "ds=2024-01-03"
    _put(two.parent / ".old-a-ds=2024-01-03", "a")
    _put(two.parent / ".old-b-ds=2024-01-03", "b")
    assert recover_lake.main(["--lake", str(lake)]) == 1


def test_remote_partitions_lock_in_the_local_lock_dir(tmp_path: Path, monkeypatch) -> None:
    """Object stores have no flock: their locks live in ECREC_LOCK_DIR (one host only)."""
    monkeypatch.setenv("ECREC_LOCK_DIR", str(tmp_path / "locks"))
    final = "s3a://bucket/lake/features/item_stats/ds=2024-01-02"
    path = lock_file(final)
    assert path.parent == tmp_path / "locks" and "item_stats" in path.name
    with partition_locks([final], "remote-run"):
        assert json.loads(path.read_text())["run_id"] == "remote-run"
        with pytest.raises(PartitionLocked):
            with partition_lock(final, "other"):
                pass
    assert recover_partition(final) == []
