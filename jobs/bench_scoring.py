"""Scoring benchmark: the top-K kernel vs numpy, FAISS and Spark ALS on the same embeddings.

    python -m jobs.bench_scoring --users 20000 --items 100000 --dim 64 --k 100 \\
      --baseline-users 20000 --rounds 5 --threads 2 --history 20 --skip als
    python -m jobs.bench_scoring --served synthetic --users 100000 --items 100000
    python -m jobs.bench_scoring --served MODEL_DIR --users 20000

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
      python -m jobs.bench_scoring --users 100000 --items 100000 --dim 64 --k 100
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
      python -m jobs.bench_scoring --users 100000 --items 1000000 --dim 64 --k 100 \\
      --sample-users 10000

(OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, set on some machines, slow numpy's BLAS; unset them for
a fair reference: the report names the BLAS kernel numpy actually ran, from threadpoolctl.)
Random L2-normalized embeddings. The kernel scores every user (or --sample-users); numpy and
FAISS score --baseline-users of them (throughput is linear in users); ``faiss_exact`` is
:func:`ecrec_lib.scoring.topk_faiss.topk_faiss` (torch's GEMM feeding FAISS's result heaps,
with the kernel's exclusions and tie order: the production CPU path) and gets the same --history exclusions as the kernel, while bare
IndexFlatIP gets none. --served times the whole served path instead (jobs/bench_served.py).
Load averages (``uptime``) before and after are part of the report. Spark ALS
recommendForAllUsers (rank = dim) runs on --als-users x --als-items. Top-K sets are compared on
--verify-users users. Prints a Markdown table and writes --out JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time

import numpy as np

from jobs.common import setup_logging

log = logging.getLogger("jobs.bench_scoring")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def random_unit(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), np.float32)
    for i in range(0, n, 1 << 18):  # chunked: bounded temporaries for 1M+ rows
        x = rng.standard_normal((min(1 << 18, n - i), d), dtype=np.float32)
        out[i : i + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def blas_info() -> list[dict]:
    from threadpoolctl import threadpool_info

    keep = ("internal_api", "architecture", "num_threads", "version", "filepath")
    return [{k: i.get(k) for k in keep} for i in threadpool_info() if i.get("user_api") == "blas"]


def random_histories(n_users: int, n_items: int, mean: int, seed: int) -> list[np.ndarray]:
    """Per-user excluded items: geometric lengths with this mean (a few long histories, as in
    real logs), at most 20 x mean."""
    if mean <= 0:
        return [np.empty(0, np.int64) for _ in range(n_users)]
    rng = np.random.default_rng(seed)
    lens = np.minimum(rng.geometric(1.0 / mean, n_users), 20 * mean)
    flat = rng.integers(0, n_items, int(lens.sum()))
    return np.split(flat, np.cumsum(lens)[:-1])


def load_average() -> list[float]:
    """1/5/15-minute load averages, as ``uptime`` prints them."""
    return [round(x, 2) for x in os.getloadavg()]


def set_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([set(x) == set(y) for x, y in zip(a, b, strict=True)]))


def explain_mismatches(users, items, a, b, k, hist=None) -> dict:
    """For rows whose sets differ: the fp64 score gap at the boundary (a float tie if tiny)."""
    rows = [i for i in range(len(a)) if set(a[i]) != set(b[i])]
    gaps = []
    for r in rows:
        s = items.astype(np.float64) @ users[r].astype(np.float64)
        if hist is not None:
            s[hist[r]] = -np.inf
        srt = np.sort(s)[::-1]
        gaps.append(float(srt[k - 1] - srt[k]))
    return {"rows": len(rows), "max_boundary_gap_fp64": max(gaps) if gaps else 0.0}


def bench_als(dim: int, k: int, n_users: int, n_items: int, threads: int) -> dict:
    """Spark ALS recommendForAllUsers with rank=dim on a synthetic ratings set."""
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(f"local[{threads}]").appName("bench-als")
             .config("spark.ui.enabled", "false").config("spark.driver.memory", "6g")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.shuffle.partitions", str(threads * 2)).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    try:
        rng = np.random.default_rng(0)
        u = np.concatenate([np.arange(n_users), rng.integers(0, n_users, n_items)])
        i = np.concatenate([rng.integers(0, n_items, n_users), np.arange(n_items)])
        import pandas as pd

        ratings = spark.createDataFrame(pd.DataFrame(
            {"user": u.astype("int32"), "item": i.astype("int32"),
             "rating": rng.random(len(u)).astype("float32")}))
        model = ALS(rank=dim, maxIter=1, userCol="user", itemCol="item", ratingCol="rating",
                    seed=0).fit(ratings)
        model.userFactors.count()
        t = time.perf_counter()
        n = model.recommendForAllUsers(k).count()
        dt = time.perf_counter() - t
        return {"users": n, "items": n_items, "seconds": dt, "users_per_s": n / dt}
    finally:
        spark.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="users in the problem")
    parser.add_argument("--items", type=int, default=100_000, help="catalog size")
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension")
    parser.add_argument("--k", type=int, default=100, help="list length")
    parser.add_argument("--sample-users", type=int, default=None,
                        help="score only this many of the users with the kernel (big catalogs)")
    parser.add_argument("--baseline-users", type=int, default=10_000,
                        help="users scored by the numpy and FAISS baselines")
    parser.add_argument("--verify-users", type=int, default=1000,
                        help="users whose top-K sets are compared across methods")
    parser.add_argument("--als-users", type=int, default=10_000, help="users for Spark ALS")
    parser.add_argument("--als-items", type=int, default=20_000, help="items for Spark ALS")
    parser.add_argument("--skip", default="", help="comma list of baselines to skip: "
                        "numpy,faiss,als")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="kernel device")
    parser.add_argument("--precision", default="fp32",
                        help="comma list of kernel candidate precisions to time (fp32, bf16)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of kernel/numpy/FAISS on the same baseline "
                        "users (shared machines: best and median of each are reported)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: cores)")
    parser.add_argument("--history", type=int, default=20,
                        help="mean excluded (seen) items per user for the kernel and faiss_exact")
    parser.add_argument("--served", default=None,
                        help="time the whole served path instead: a --save-models directory "
                        "of jobs.benchmark_quality, or 'synthetic'")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed (--served)")
    parser.add_argument("--data", default=None,
                        help="--served MODEL_DIR: serve this interactions.csv dataset's users "
                        "(a seeded sample of --users), each history without its last event")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    setup_logging()
    if args.served:
        from jobs.bench_served import run_served

        return run_served(args)
    import torch

    from ecrec_lib.scoring.topk import resolve_device, topk_inner_product, topk_numpy_argpartition
    from ecrec_lib.scoring.topk_faiss import topk_faiss

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    skip = set(filter(None, args.skip.split(",")))
    device = resolve_device(args.device)
    n_score = min(args.users, args.sample_users or args.users)
    res: dict = {
        "shape": {"users": args.users, "items": args.items, "dim": args.dim, "k": args.k},
        "kernel_users": n_score, "threads": threads, "device": device,
        "env": {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")},
        "numpy_blas": blas_info(), "torch": torch.__version__, "methods": {},
        "history_mean": args.history, "load_average_start": load_average(),
    }
    t = time.perf_counter()
    users = random_unit(n_score, args.dim, seed=1)
    items = random_unit(args.items, args.dim, seed=2)
    log.info("data ready in %.1fs, peak RSS %.0f MB", time.perf_counter() - t, peak_rss_mb())
    res["data_rss_mb"] = peak_rss_mb()
    hist = random_histories(n_score, args.items, args.history, seed=3)
    nv = min(args.verify_users, n_score)
    tops = {}
    for prec in filter(None, args.precision.split(",")):
        t = time.perf_counter()
        r = topk_inner_product(users, items, args.k, exclude=hist, device=device,
                               precision=prec, threads=threads)
        if device == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        tops[f"kernel_{r.stats['precision']}"] = r.indices[:nv]
        res["methods"][f"kernel_{r.stats['precision']}"] = {
            "users": n_score, "seconds": dt, "users_per_s": n_score / dt,
            "peak_rss_mb": peak_rss_mb(), "stats": r.stats}
        log.info("kernel %s: %.0f users/s (%.1fs)", prec, n_score / dt, dt)
    if device == "cuda":
        res["gpu"] = gpu_gemm_share(users, items, res)
    nb = min(args.baseline_users, n_score)
    if "numpy" not in skip:
        t = time.perf_counter()
        np_idx, _ = topk_numpy_argpartition(users[:nb], items, args.k)
        dt = time.perf_counter() - t
        res["methods"]["numpy_matmul_argpartition"] = {
            "users": nb, "seconds": dt, "users_per_s": nb / dt}
        tops["numpy"] = np_idx[:nv]
        log.info("numpy: %.0f users/s", nb / dt)
    if "faiss" not in skip:
        import faiss

        t = time.perf_counter()
        r = topk_faiss(users[:nb], items, args.k, exclude=hist[:nb], threads=threads)
        dt = time.perf_counter() - t
        res["methods"]["faiss_exact"] = {"users": nb, "seconds": dt, "users_per_s": nb / dt,
                                         "stats": r.stats}
        tops["faiss_exact"] = r.indices[:nv]
        log.info("faiss_exact: %.0f users/s", nb / dt)
        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(args.dim)
        index.add(items)
        t = time.perf_counter()
        _, f_idx = index.search(users[:nb], args.k)
        dt = time.perf_counter() - t
        res["methods"]["faiss_IndexFlatIP"] = {"users": nb, "seconds": dt, "users_per_s": nb / dt}
        tops["faiss"] = f_idx[:nv]
        log.info("faiss: %.0f users/s", nb / dt)
        del index
    if args.rounds > 0:
        res["interleaved"] = interleaved(users[:nb], items, args.k, args.rounds, device, threads,
                                         skip, hist[:nb])
    if "als" not in skip:
        res["methods"]["spark_als_recommendForAllUsers"] = bench_als(
            args.dim, args.k, min(args.als_users, args.users), min(args.als_items, args.items),
            threads)
        res["methods"]["spark_als_recommendForAllUsers"]["note"] = "sampled users x items"
    agree = {}
    # Only like with like: the kernel and faiss_exact exclude the histories, the bare
    # baselines do not.
    excluding = {n for n in tops if n.startswith("kernel") or n == "faiss_exact"}
    names = list(tops)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if (a in excluding) != (b in excluding):
                continue
            agree[f"{a}~{b}"] = {
                "set_agreement": set_agreement(tops[a], tops[b]),
                "identical_order": float(np.mean((tops[a] == tops[b]).all(1))),
                **explain_mismatches(users[:nv], items, tops[a], tops[b], args.k,
                                     hist[:nv] if a in excluding else None)}
    res["agreement_on_users"] = nv
    res["agreement"] = agree
    res["peak_rss_mb"] = peak_rss_mb()
    res["load_average_end"] = load_average()
    print(markdown(res))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=2, default=str)
    return 0


def interleaved(users, items, k, rounds, device, threads, skip, hist) -> dict:
    """kernel / numpy / FAISS timed back to back on the same users, ``rounds`` times, so a
    noisy shared machine slows all of them alike. The kernel and faiss_exact exclude ``hist``."""
    import statistics

    from ecrec_lib.scoring.topk import topk_inner_product, topk_numpy_argpartition
    from ecrec_lib.scoring.topk_faiss import topk_faiss

    fns = {"kernel_fp32": lambda: topk_inner_product(users, items, k, exclude=hist,
                                                     device=device, threads=threads)}
    if "numpy" not in skip:
        fns["numpy_matmul_argpartition"] = lambda: topk_numpy_argpartition(users, items, k)
    if "faiss" not in skip:
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexFlatIP(items.shape[1])
        index.add(items)
        fns["faiss_IndexFlatIP"] = lambda: index.search(users, k)
        fns["faiss_exact"] = lambda: topk_faiss(users, items, k, exclude=hist, threads=threads)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    n = len(users)
    out = {name: {"users": n, "best_users_per_s": n / min(ts),
                  "median_users_per_s": n / statistics.median(ts)} for name, ts in times.items()}
    for mine in ("kernel_fp32", "faiss_exact"):
        if mine not in out:
            continue
        kern = out[mine]
        for name in out:
            if name not in {"kernel_fp32", "faiss_exact"}:
                kern[f"speedup_vs_{name}_best"] = (kern["best_users_per_s"]
                                                   / out[name]["best_users_per_s"])
                kern[f"speedup_vs_{name}_median"] = (kern["median_users_per_s"]
                                                     / out[name]["median_users_per_s"])
    return out


def gpu_gemm_share(users: np.ndarray, items: np.ndarray, res: dict) -> dict:
    """Measured fp32/bf16 GEMM throughput on this GPU and the kernel's GEMM share."""
    import torch

    u = torch.from_numpy(users[:8192]).cuda()
    it = torch.from_numpy(items[:65536]).cuda()
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = u.to(dtype), it.to(dtype)
        torch.mm(a, b.T)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b.T)
        torch.cuda.synchronize()
        tflops = 10 * 2 * a.shape[0] * b.shape[0] * a.shape[1] / (time.perf_counter() - t) / 1e12
        flops = 2.0 * res["kernel_users"] * items.shape[0] * items.shape[1]
        m = res["methods"].get(f"kernel_{name}")
        out[name] = {"gemm_tflops": tflops,
                     "kernel_gemm_share": (flops / (tflops * 1e12)) / m["seconds"] if m else None}
    return out


def markdown(res: dict) -> str:
    s = res["shape"]
    lines = [
        f"Shape: {s['users']:,} users x {s['items']:,} items, dim {s['dim']}, K={s['k']}; "
        f"device {res['device']}, {res['threads']} threads; kernel scored "
        f"{res['kernel_users']:,} users; peak RSS {res['peak_rss_mb']:.0f} MB "
        f"(data alone {res['data_rss_mb']:.0f} MB). numpy BLAS: "
        + ", ".join(f"{b['internal_api']} {b['architecture']} x{b['num_threads']}"
                    for b in res["numpy_blas"])
        + f". Mean excluded items per user (kernel, faiss_exact): {res['history_mean']}. "
        f"Load average at start {res['load_average_start']}, at end {res['load_average_end']}.",
        "",
        "| method | users timed | seconds | users/s |",
        "|---|---:|---:|---:|",
    ]
    for name, m in res["methods"].items():
        extra = f" ({m['items']:,} items)" if "items" in m else ""
        lines.append(f"| {name}{extra} | {m['users']:,} | {m['seconds']:.2f} | "
                     f"{m['users_per_s']:,.0f} |")
    if res.get("interleaved"):
        rounds = res["interleaved"]
        lines += ["", "Interleaved rounds on the same users (best / median users/s):", "",
                  "| method | users | best users/s | median users/s |", "|---|---:|---:|---:|"]
        for name, m in rounds.items():
            lines.append(f"| {name} | {m['users']:,} | {m['best_users_per_s']:,.0f} | "
                         f"{m['median_users_per_s']:,.0f} |")
        for mine in ("kernel_fp32", "faiss_exact"):
            if mine in rounds:
                sp = {k: v for k, v in rounds[mine].items() if k.startswith("speedup")}
                lines += ["", f"{mine} speed-ups: "
                          + ", ".join(f"{k[11:]} {v:.2f}x" for k, v in sp.items())]
    lines += ["", f"Top-K set agreement on {res['agreement_on_users']} users:"]
    for pair, a in res["agreement"].items():
        lines.append(f"- {pair}: sets {a['set_agreement']:.4f}, order "
                     f"{a['identical_order']:.4f} ({a['rows']} differing rows, largest "
                     f"fp64 boundary gap {a['max_boundary_gap_fp64']:.2e})")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
