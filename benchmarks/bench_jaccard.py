"""Jaccard + DBSCAN at SYSU scale: the dense reference vs ``mult.train.clustering``, side by side.

    python -m benchmarks.bench_jaccard --n 11909 22258 --dim 2048 --out .bench/jaccard.json

For each N the script draws Re-ID-like clustered features (fixed seed), then runs each method in its
own subprocess so that its peak resident memory (``VmHWM`` of that child, see ``_peak_rss_mb``) is its
own. Each child times the Jaccard step and the DBSCAN step separately, and saves its labels and a few
rows of its distance matrix; the parent checks that the DBSCAN labels are identical and that those
rows agree. Run it on a quiet machine: other processes on the same cores stall torch's threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import cpu_model, peak_rss_mib, run_child as spawn_child, write_json

METHODS = ("reference", "mult")


def run_child(method: str, work: Path, k1: int, k2: int, eps: float, rows: np.ndarray) -> dict:
    """One method on the saved features, in this (child) process; returns its measurements."""
    import sklearn.cluster  # noqa: F401  (imported before any timing, so neither method pays for it)
    import torch  # noqa: F401

    from benchmarks.reference_jaccard import reference_jaccard_distance
    from mult.train.clustering import dbscan_cluster, sparse_jaccard_distance

    features = np.load(work / "features.npy")
    base_rss = peak_rss_mib()
    stages: dict[str, float] = {}
    start = time.perf_counter()
    if method == "reference":
        distance = reference_jaccard_distance(features, k1, k2)
        jaccard_s = time.perf_counter() - start
        sample = distance[rows]
        stored = sum(int(np.count_nonzero(block < 1)) for block in np.array_split(distance, 64))
    else:
        distance = sparse_jaccard_distance(features, k1, k2, timings=stages)
        jaccard_s = time.perf_counter() - start
        picked = distance[rows]
        sample = np.ones(picked.shape, dtype=np.float32)  # absent pairs are J = 1
        sample[np.repeat(np.arange(rows.size), np.diff(picked.indptr)), picked.indices] = picked.data
        stored = int(distance.nnz)
    start = time.perf_counter()
    labels = dbscan_cluster(distance, eps)
    dbscan_s = time.perf_counter() - start
    np.save(work / f"{method}_labels.npy", labels)
    np.save(work / f"{method}_rows.npy", sample)
    return {
        "jaccard_s": round(jaccard_s, 3),
        "dbscan_s": round(dbscan_s, 3),
        "peak_rss_mb": round(peak_rss_mib(), 1),
        "rss_before_mb": round(base_rss, 1),
        "pairs_below_1": stored,
        "clusters": int(labels.max() + 1),
        "outliers": int(np.count_nonzero(labels < 0)),
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
    }


def _spawn(method: str, work: Path, args: argparse.Namespace) -> dict:
    return spawn_child("benchmarks.bench_jaccard", method, work,
                       ["--k1", str(args.k1), "--k2", str(args.k2), "--eps", str(args.eps)])


def _median_of(runs: list[dict]) -> dict:
    """Median times and the largest peak over repeated runs of one method (labels are deterministic)."""
    out = dict(runs[-1])
    for key in ("jaccard_s", "dbscan_s"):
        out[key] = round(float(np.median([r[key] for r in runs])), 3)
    out["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    out["runs"] = len(runs)
    return out


def bench_one(n: int, args: argparse.Namespace) -> dict:
    """Generate features for one N, run every requested method, compare."""
    from benchmarks.reference_jaccard import clustered_features

    result: dict = {"n": n, "dim": args.dim, "k1": args.k1, "k2": args.k2, "eps": args.eps}
    with tempfile.TemporaryDirectory(prefix="bench_jaccard_") as tmp:
        work = Path(tmp)
        np.save(work / "features.npy", clustered_features(n, args.dim, seed=args.seed))
        rows = np.random.default_rng(args.seed).choice(n, size=min(args.check_rows, n), replace=False)
        np.save(work / "rows.npy", np.sort(rows))
        for method in args.methods:
            print(f"  N={n}: {method} x{args.repeat} ...", file=sys.stderr, flush=True)
            result[method] = _median_of([_spawn(method, work, args) for _ in range(args.repeat)])
        if len(args.methods) == 2:
            ref, ours = (np.load(work / f"{m}_labels.npy") for m in METHODS)
            result["labels_identical"] = bool(np.array_equal(ref, ours))
            result["labels_differing"] = int(np.count_nonzero(ref != ours))
            a, b = (np.load(work / f"{m}_rows.npy") for m in METHODS)
            both = (a < 1) | (b < 1)
            result["rows_checked"] = int(len(rows))
            result["rows_max_abs_diff"] = float(np.abs(a - b)[both].max()) if both.any() else 0.0
            result["rows_same_support"] = bool(np.array_equal(a < 1, b < 1))
            r, m = result["reference"], result["mult"]
            result["speedup_jaccard"] = round(r["jaccard_s"] / m["jaccard_s"], 2)
            result["memory_ratio"] = round(r["peak_rss_mb"] / m["peak_rss_mb"], 2)
    return result






def _print_table(results: list[dict]) -> None:
    print(f"{'N':>7} {'method':>10} {'jaccard s':>10} {'dbscan s':>9} {'peak MB':>9} {'clusters':>9} "
          f"{'outliers':>9}")
    for res in results:
        for method in METHODS:
            if method in res:
                m = res[method]
                print(f"{res['n']:>7} {method:>10} {m['jaccard_s']:>10.2f} {m['dbscan_s']:>9.2f} "
                      f"{m['peak_rss_mb']:>9.0f} {m['clusters']:>9} {m['outliers']:>9}")
        if "labels_identical" in res:
            print(f"{'':>7} speed-up x{res['speedup_jaccard']}, memory /{res['memory_ratio']}, "
                  f"labels identical: {res['labels_identical']}, "
                  f"max |dJ| on {res['rows_checked']} rows: {res['rows_max_abs_diff']:.2e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[11909, 22258], help="sample counts")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k1", type=int, default=30)
    parser.add_argument("--k2", type=int, default=6)
    parser.add_argument("--eps", type=float, default=0.6, help="DBSCAN eps for the label comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-rows", type=int, default=64, help="distance rows compared value by value")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; times are medians")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path(".bench/jaccard.json"))
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        rows = np.load(args.work / "rows.npy")
        print(json.dumps(run_child(args.child, args.work, args.k1, args.k2, args.eps, rows)))
        return

    import torch

    load_at_start = os.getloadavg()[0]
    results = [bench_one(n, args) for n in args.n]
    payload = {
        "benchmark": "jaccard",
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1m_at_start": load_at_start,
        },
        "results": results,
    }
    write_json(args.out, payload)
    _print_table(results)
    print(f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"1-min load average at start {load_at_start:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
