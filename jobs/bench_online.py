"""Benchmark the online export and the look-ups a web page makes.

    python -m jobs.bench_online --users 100000 --k 100 [--items 20000] [--n-related 20] \
        [--lookups 10000] [--redis-url redis://127.0.0.1:6379/6]

Writes a synthetic night (user_topk: users x k rows with 64-hex user keys; item_related:
items x n_related) into a temporary lake, runs the real export (lake read, encoding,
pipelined writes, verification, pointer switch) and reports keys/s and rows/s per phase and
the CPU seconds the exporter and the Redis server spent (on a busy machine, wall time mostly
measures waiting for a core). Then a second process makes ``--lookups`` calls of ``get_user_recs`` (pointer + list, the
whole list decoded) for random users and reports p50/p99/max latency. Every key the run wrote
(its own prefix) is deleted at the end. Use a Redis database nobody else uses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ecrec_lib.lake import Lake, replace_local_dir
from ecrec_lib.privacy.secrets import redact_url
from ecrec_lib.scoring.tables import arrow_schema
from ecrec_lib.serving.online import (
    OnlineSettings,
    connect_redis,
    export_night,
    get_user_recs,
)

DS = "2024-06-01"


def user_key(u: int) -> str:
    return hashlib.sha256(f"bench-user-{u}".encode()).hexdigest()


def _write(lake: Lake, table: str, columns: dict[str, pa.Array]) -> None:
    schema = arrow_schema(table)
    schema = schema.remove(schema.get_field_index("ds"))
    data = pa.table(columns, schema=schema)
    replace_local_dir(lake.scores(table, DS),
                      lambda tmp: pq.write_table(data, tmp / "part-00000.parquet"))


def write_synthetic_night(lake: Lake, users: int, k: int, items: int, n_related: int,
                          seed: int = 0) -> None:
    """A night of the real table layout, built in Arrow (no per-row Python objects)."""
    rng = np.random.default_rng(seed)
    item_ids = pa.array([f"B{n:09d}" for n in range(items)])
    keys = pa.array(sorted(user_key(u) for u in range(users)))  # score_topk sorts by user_key
    rows = users * k
    picks = rng.integers(0, items, rows)
    scores = np.sort(rng.random((users, k)), axis=1)[:, ::-1].ravel()
    _write(lake, "user_topk", {
        "user_key": keys.take(pa.array(np.repeat(np.arange(users), k))),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), users)),
        "item_id": item_ids.take(pa.array(picks)),
        "score": pa.array(scores),
        "reason_item_id": item_ids.take(pa.array(rng.integers(0, items, rows))),
        "strategy": pa.array(np.full(rows, "two_tower", dtype=object), pa.string()),
        "model_version": pa.array(np.full(rows, "1", dtype=object), pa.string()),
    })
    rel_rows = items * n_related
    _write(lake, "item_related", {
        "item_id": item_ids.take(pa.array(np.repeat(np.arange(items), n_related))),
        "rank": pa.array(np.tile(np.arange(1, n_related + 1, dtype=np.int32), items)),
        "related_item_id": item_ids.take(pa.array(rng.integers(0, items, rel_rows))),
        "score": pa.array(np.sort(rng.random((items, n_related)), axis=1)[:, ::-1].ravel()),
    })


def lookup_worker(url: str, prefix: str, users: int, k: int, lookups: int) -> dict:
    """Latency of ``lookups`` get_user_recs calls on random users (run in its own process)."""
    r = connect_redis(url)
    rng = np.random.default_rng(1)
    picks = [user_key(int(u)) for u in rng.integers(0, users, lookups)]
    for u in picks[:100]:  # warm the connection and the interpreter
        get_user_recs(r, u, k, prefix=prefix)
    lat = np.empty(lookups)
    missing = 0
    for n, u in enumerate(picks):
        t0 = time.perf_counter()
        recs = get_user_recs(r, u, k, prefix=prefix)
        lat[n] = time.perf_counter() - t0
        missing += len(recs) != k
    ms = lat * 1000
    return {"lookups": lookups, "missing_or_short": missing, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()),
            "mean_ms": float(ms.mean())}


def _redis_cpu(r) -> float:  # noqa: ANN001 - a redis client
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _delete_prefix(r, prefix: str) -> int:  # noqa: ANN001 - a redis client
    n = 0
    batch: list[str] = []
    for key in r.scan_iter(match=f"{prefix}:*", count=10000):
        batch.append(key)
        if len(batch) == 5000:
            n += r.unlink(*batch)
            batch = []
    if batch:
        n += r.unlink(*batch)
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="users in user_topk")
    parser.add_argument("--k", type=int, default=100, help="items per user list")
    parser.add_argument("--items", type=int, default=20_000, help="catalog items (item_related)")
    parser.add_argument("--n-related", type=int, default=20, help="related items per item")
    parser.add_argument("--lookups", type=int, default=10_000, help="timed look-ups")
    parser.add_argument("--batch-size", type=int, default=1000, help="keys per pipeline")
    parser.add_argument("--redis-url", default=os.environ.get("ECREC_BENCH_REDIS_URL",
                                                               "redis://127.0.0.1:6379/6"),
                        help="Redis to use (a database of its own; default db 6)")
    parser.add_argument("--lookup-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.lookup_worker:
        print(json.dumps(lookup_worker(args.redis_url, args.lookup_worker, args.users, args.k,
                                       args.lookups)))
        return 0

    r = connect_redis(args.redis_url)
    prefix = f"ecrecbench_{uuid.uuid4().hex[:8]}"
    mem0 = int(r.info("memory")["used_memory"])
    try:
        with tempfile.TemporaryDirectory(prefix="ecrec-bench-online-") as tmp:
            lake = Lake(str(Path(tmp) / "lake"))
            t0 = time.perf_counter()
            write_synthetic_night(lake, args.users, args.k, args.items, args.n_related)
            gen_s = time.perf_counter() - t0
            cpu0, redis_cpu0 = time.process_time(), _redis_cpu(r)
            res = export_night(r, lake, DS, OnlineSettings(prefix=prefix,
                                                           batch_size=args.batch_size))
            cpu_s, redis_cpu_s = time.process_time() - cpu0, _redis_cpu(r) - redis_cpu0
        mem1 = int(r.info("memory")["used_memory"])
        proc = subprocess.run(
            [sys.executable, "-m", "jobs.bench_online", "--lookup-worker", prefix,
             "--users", str(args.users), "--k", str(args.k), "--lookups", str(args.lookups),
             "--redis-url", args.redis_url],
            capture_output=True, text=True, check=True, timeout=1800,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        look = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        deleted = _delete_prefix(r, prefix)
    sec = res.seconds
    rows = res.counts["user_rows"] + res.counts["item_rows"]
    load = os.getloadavg()
    print(f"redis {redact_url(args.redis_url)} (server {r.info('server')['redis_version']}), "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"night: {res.counts['users']:,} users x {args.k} + {res.counts['items']:,} items x "
          f"{args.n_related} = {res.n_keys:,} keys, {rows:,} rows (synthetic lake written in "
          f"{gen_s:.1f} s); Redis memory +{(mem1 - mem0) / 2**20:.0f} MiB")
    print(f"export total {sec['total']:.1f} s = {res.n_keys / sec['total']:,.0f} keys/s, "
          f"{rows / sec['total']:,.0f} rows/s (read lake {sec['read']:.1f} s, encode+write "
          f"{sec['write']:.1f} s = {res.n_keys / sec['write']:,.0f} keys/s, verify "
          f"{sec['verify']:.1f} s, switch {sec['switch'] * 1000:.1f} ms, retire "
          f"{sec['retire']:.2f} s); CPU: exporter {cpu_s:.1f} s = {res.n_keys / cpu_s:,.0f} "
          f"keys per CPU-second, Redis server {redis_cpu_s:.1f} s (all its clients)")
    print(f"look-ups ({look['lookups']:,} get_user_recs, k={args.k}, second process): "
          f"p50 {look['p50_ms']:.3f} ms, p99 {look['p99_ms']:.3f} ms, max {look['max_ms']:.2f} "
          f"ms, mean {look['mean_ms']:.3f} ms; missing or short lists: {look['missing_or_short']}")
    print(f"cleaned up: {deleted:,} keys under {prefix}:")
    return 0 if look["missing_or_short"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
