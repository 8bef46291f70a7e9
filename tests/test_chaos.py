"""The fault-injection harness (jobs.chaos) and its swap-window test hook."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ecrec_lib.chaos import Reader, compare, fingerprint, stray_processes
from ecrec_lib.partitions import (
    FAULT_PAUSE_SWAP_ENV,
    FAULT_RELEASE_FILE_ENV,
    FAULT_SWAP_MARKER,
    fault_pause,
    recover_partition,
)

REPO = Path(__file__).resolve().parents[1]


def _partition(path: Path, content: str) -> Path:
    path.mkdir(parents=True)
    (path / "part-0").write_text(content)
    return path


@pytest.mark.parametrize("writer", ["swap_in", "replace_local_dir"])
def test_swap_hook_holds_the_window_open_and_a_kill_there_is_recovered(
        tmp_path: Path, writer: str) -> None:
    final = _partition(tmp_path / "scores" / "t" / "ds=2024-01-01", "old rows")
    stage = _partition(tmp_path / "scores" / "t" / ".staging-r2-ds=2024-01-01", "new rows")
    call = (f"swap_in({str(stage)!r}, {str(final)!r}, 'r2')" if writer == "swap_in" else
            f"replace_local_dir({str(final)!r}, lambda d: (d / 'part-0').write_text('new rows'))")
    code = textwrap.dedent(f"""
        from ecrec_lib.lake import replace_local_dir
        from ecrec_lib.partitions import swap_in
        {call}
    """)
    env = {**os.environ, FAULT_PAUSE_SWAP_ENV: "60", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.startswith(FAULT_SWAP_MARKER), line
    assert not final.exists()  # inside the window: the first rename happened, not the second
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = recover_partition(str(final))
    assert any("restored" in d for d in done)
    assert (final / "part-0").read_text() == "old rows"
    assert [p.name for p in final.parent.iterdir()] == [final.name]


def test_swap_hook_is_off_unless_set_and_names_a_bad_value(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(FAULT_PAUSE_SWAP_ENV, raising=False)
    fault_pause(tmp_path)  # returns at once
    monkeypatch.setenv(FAULT_PAUSE_SWAP_ENV, "soon")
    with pytest.raises(ValueError, match=FAULT_PAUSE_SWAP_ENV):
        fault_pause(tmp_path)


def test_swap_hook_pause_ends_when_the_release_file_appears(monkeypatch, tmp_path: Path) -> None:
    release = tmp_path / "release"
    monkeypatch.setenv(FAULT_PAUSE_SWAP_ENV, "60")
    monkeypatch.setenv(FAULT_RELEASE_FILE_ENV, str(release))
    threading.Timer(0.3, release.touch).start()
    t0 = time.monotonic()
    fault_pause(tmp_path)
    assert time.monotonic() - t0 < 10  # not the 60 s asked for
    assert FAULT_PAUSE_SWAP_ENV not in os.environ  # one pause per process


def test_compare_counts_missing_changed_and_extra_rows() -> None:
    ref = {"scores/a/ds=1": collections.Counter({"r1": 1, "r2": 2}),
           "clean/e/ds=1": collections.Counter({"x": 3})}
    got = {"scores/a/ds=1": collections.Counter({"r1": 1, "r2": 1, "r9": 1})}
    lost, extra, differ = compare(ref, got)
    assert (lost, extra) == (4, 1)  # one r2 changed into r9, the whole clean partition missing
    assert len(differ) == 2
    assert compare(ref, ref)[:2] == (0, 0)


def test_fingerprint_is_row_order_free_and_sees_a_changed_value(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(lake: Path, rows: list[dict]) -> None:
        part = lake / "clean" / "events" / "ds=2024-01-01"
        part.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), part / "part-0.parquet")
        (part / ".part-0.parquet.crc").write_text("skipped")

    rows = [{"u": "a", "n": 1}, {"u": "b", "n": 2}]
    write(tmp_path / "l1", rows)
    write(tmp_path / "l2", rows[::-1])
    write(tmp_path / "l3", [{"u": "a", "n": 1}, {"u": "b", "n": 3}])
    prints = [fingerprint(tmp_path / d, tmp_path / "none.duckdb", ["2024-01-01"])
              for d in ("l1", "l2", "l3")]
    assert prints[0] == prints[1]
    assert compare(prints[0], prints[2])[:2] == (1, 1)


def test_reader_flags_a_manifest_whose_tables_come_from_another_run(tmp_path: Path) -> None:
    from ecrec_lib.scoring.tables import RUN_MARKER, TABLE_COLUMNS

    ds = "2024-01-01"
    manifest = tmp_path / "ops" / "runs" / f"ds={ds}" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"ds": ds, "run_id": "A", "tables": {
        t: {"rows": 5, "run_id": "A"} for t in TABLE_COLUMNS}}))
    for t in TABLE_COLUMNS:
        part = tmp_path / "scores" / t / f"ds={ds}"
        part.mkdir(parents=True)
        (part / RUN_MARKER).write_text(json.dumps({"run_id": "A", "rows": 5}))
    reader = Reader(tmp_path, tmp_path / "none.duckdb", [ds])
    assert reader.check_lake_night(ds) is None
    first = next(iter(TABLE_COLUMNS))
    (tmp_path / "scores" / first / f"ds={ds}" / RUN_MARKER).write_text(
        json.dumps({"run_id": "B", "rows": 7}))
    problem = reader.check_lake_night(ds)
    assert problem and first in problem and "run B" in problem
    manifest.unlink()  # a new scoring run removes the manifest first: nothing is published
    assert reader.check_lake_night(ds) is None


def test_stray_scan_finds_processes_by_their_trial_marker() -> None:
    token = f"test-{os.getpid()}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, "ECREC_CHAOS_TRIAL": token})
    try:
        assert stray_processes(token) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
    assert stray_processes(token) == []


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.spark
def test_chaos_two_trials_recover_with_nothing_lost(tmp_path: Path) -> None:
    """One night, then a SIGKILL inside a swap window of the scorer and a second publisher."""
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECREC_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.chaos", "--lake", str(tmp_path / "chaos"), "--nights", "1",
         "--trials", "2", "--modes", "swap,second_writer", "--jobs", "score_topk",
         "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.is_file(), proc.stderr[-4000:]
    report = json.loads(out.read_text())
    why = json.dumps([{k: r[k] for k in ("mode", "detail", "failures", "differ")}
                      for r in report["results"]], indent=1)
    assert report["trials"] == 2
    assert report["faults_injected"] == 2, why
    assert report["recovered"] == 2, why
    assert report["rows_lost"] == 0 and report["rows_extra"] == 0
    assert report["half_published_seen"] == 0
    assert report["stray_processes"] == 0
    assert proc.returncode == 0, proc.stderr[-4000:]
