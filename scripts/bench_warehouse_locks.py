"""DuckDB lock semantics across two processes, and the cost of the BI read copy.

    python scripts/bench_warehouse_locks.py [--users 20000] [--nights 3]

Prints, for a second process holding the file read-only or read-write, whether this process
can open it read-only / read-write; then publishes ``--nights`` nights of ``users x 100``
``user_topk`` rows into a temporary DuckDB warehouse and times the publish and the read-copy
refresh after each (BENCHMARKS.md, "Warehouse concurrency").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ecrec_lib.scoring.tables import TABLE_COLUMNS  # noqa: E402
from ecrec_lib.warehouse import connect, publish  # noqa: E402

HOLD = ("import sys, time, duckdb; c = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == 'ro');"
        " print('open', flush=True); time.sleep(30)")


def lock_matrix(db: Path) -> None:
    duckdb.connect(str(db)).close()
    for holder in ("ro", "rw"):
        for opener in ("ro", "rw"):
            proc = subprocess.Popen([sys.executable, "-c", HOLD, str(db), holder],
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None and proc.stdout.readline().startswith("open")
            try:
                duckdb.connect(str(db), read_only=opener == "ro").close()
                result = "opens"
            except duckdb.IOException as exc:
                result = "blocked: " + str(exc).split(". However")[0]
            finally:
                proc.kill()
                proc.wait()
            print(f"other process holds it {holder}, we open {opener}: {result}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000, help="users per night (x 100 rows)")
    parser.add_argument("--nights", type=int, default=3, help="nights to publish")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-wh-"))
    print("duckdb", duckdb.__version__, "| cpus", os.cpu_count(), "| load", os.getloadavg()[0])
    lock_matrix(work / "locks.duckdb")
    k, rng = 100, np.random.default_rng(0)
    url = f"duckdb://{work}/warehouse.duckdb"
    users = np.repeat([f"u{i:07d}" for i in range(args.users)], k)
    for night in range(args.nights):
        ds = f"2024-01-{night + 1:02d}"
        n = args.users * k
        frame = pd.DataFrame({
            "ds": ds, "user_key": users, "rank": np.tile(np.arange(1, k + 1), args.users),
            "item_id": [f"i{x}" for x in rng.integers(0, 50_000, n)],
            "score": np.tile(np.linspace(1.0, 0.0, k), args.users), "reason_item_id": None,
            "strategy": "two_tower", "model_version": "1",
        })[list(TABLE_COLUMNS["user_topk"])]
        with connect(url, "ecrec") as wh:
            t0 = time.perf_counter()
            publish(wh, {"user_topk": frame}, ds, retention_days=14)
            t1 = time.perf_counter()
            wh.refresh_read_copy()
            t2 = time.perf_counter()
        size = (work / "warehouse.duckdb").stat().st_size / 1e6
        print(f"{ds}: publish {n:,} rows {t1 - t0:.2f} s; read copy of {(night + 1) * n:,} rows "
              f"({size:.0f} MB) {t2 - t1:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
