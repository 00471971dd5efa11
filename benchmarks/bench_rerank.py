"""Cross-modality re-ranking: the official row-by-row loops vs ``mult.rerank``, side by side, same features.

    python -m benchmarks.bench_rerank                       # Q=G=200, 500, 1000 (loop at each), 2048-d
    python -m benchmarks.bench_rerank --quick               # smoke run (seconds)

For each size the infrared queries and visible gallery are ``cross_modal_features`` (clustered Re-ID-like
unit vectors, benchmarks/bench_label_transfer.py). ``benchmarks.reference_rerank`` (the official
``re_ranking_cross`` re-stated in float64, Python loops) runs only up to ``--loop-max`` items per side; ours
runs at every size, plus a SYSU-shaped case (3,803 queries x 301 gallery, k=15: one evaluation trial). Then
the query-time cost: ``rerank_candidates`` of one query against its top-N candidates from a gallery of
``--served`` items, for each N of ``--candidates``. Medians of ``--repeats`` runs, wall-clock, in-process.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_eval import median_ms
from benchmarks.bench_label_transfer import cross_modal_features
from benchmarks.harness import cpu_model, write_json

SYSU_SHAPE = (3803, 301)


def _features(num_q: int, num_g: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Infrared queries [num_q, dim] and visible gallery [num_g, dim] of shared identities."""
    fv, fr, _, _ = cross_modal_features(num_g, num_q, dim, seed=seed)
    return fr, fv


def bench_size(num_q: int, num_g: int, k: int, args: argparse.Namespace) -> dict:
    from benchmarks.reference_rerank import reference_cross_modality_rerank
    from mult.rerank import cross_modality_rerank

    q, g = _features(num_q, num_g, args.dim, args.seed)
    row: dict = {"queries": num_q, "gallery": num_g, "k": k}
    row["ours_ms"], ours = median_ms(lambda: cross_modality_rerank(q, g, k=k), args.repeats)
    if max(num_q, num_g) <= args.loop_max:
        row["loop_ms"], ref = median_ms(lambda: reference_cross_modality_rerank(q, g, k=k), args.loop_repeats)
        row["speedup"] = row["loop_ms"] / row["ours_ms"]
        row["max_abs_diff"] = float(np.abs(ours - ref).max())
        row["top1_agreement"] = float((ours.argmin(axis=1) == ref.argmin(axis=1)).mean())
    return row


def bench_candidates(args: argparse.Namespace) -> list[dict]:
    """Per-query cost of re-ranking the top-N of a served gallery (the plain search itself not included)."""
    from mult.rerank import rerank_candidates

    queries, served = _features(args.queries, args.served, args.dim, args.seed + 1)
    plain = served @ queries.T  # cosine, [served, queries]
    rows = []
    for n in args.candidates:
        tops = np.argsort(-plain, axis=0)[:n].T  # [queries, n]
        times = []
        for i, top in enumerate(tops):
            start = time.perf_counter()
            rerank_candidates(queries[i], served[top], k=args.candidate_k)
            times.append((time.perf_counter() - start) * 1e3)
        rows.append({"candidates": n, "k": args.candidate_k, "queries": len(tops),
                     "median_ms_per_query": statistics.median(times), "max_ms": max(times)})
    return rows


def run(args: argparse.Namespace) -> dict:
    sizes = [(n, n, args.k) for n in args.sizes]
    if args.sysu:
        sizes.append((*SYSU_SHAPE, 15))
    results = []
    for num_q, num_g, k in sizes:
        print(f"{num_q}x{num_g} k={k} ...", flush=True)
        results.append(bench_size(num_q, num_g, k, args))
    return {
        "benchmark": "rerank",
        "machine": {"platform": platform.platform(), "processor": cpu_model(), "cpus": os.cpu_count(),
                    "numpy": np.__version__, "load_average_1m_at_start": os.getloadavg()[0]},
        "settings": {key: getattr(args, key) for key in
                     ("sizes", "dim", "k", "repeats", "loop_repeats", "loop_max", "sysu", "served", "queries",
                      "candidates", "candidate_k", "seed", "quick")},
        "sizes": results,
        "candidates": bench_candidates(args),
    }


def render(result: dict) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [f"{'Q x G':>11} {'k':>3} {'loop ms':>10} {'ours ms':>9} {'speed-up':>9} {'max |diff|':>11} {'top-1 same':>10}"]
    for r in result["sizes"]:
        lines.append(f"{r['queries']:>5}x{r['gallery']:<5} {r['k']:>3} {fmt(r.get('loop_ms'), '.1f'):>10} "
                     f"{r['ours_ms']:>9.1f} {fmt(r.get('speedup'), '.1f'):>9} {fmt(r.get('max_abs_diff'), '.1e'):>11} "
                     f"{fmt(r.get('top1_agreement'), '.3f'):>10}")
    for c in result["candidates"]:
        lines.append(f"rerank_candidates: top-{c['candidates']} of {result['settings']['served']}, k={c['k']}: "
                     f"{c['median_ms_per_query']:.2f} ms per query (median of {c['queries']}, max {c['max_ms']:.2f})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 500, 1000], help="Q = G per case")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=20, help="k of the square cases (the official default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours; the median is reported")
    parser.add_argument("--loop-repeats", type=int, default=1, help="timed runs of the loop re-statement")
    parser.add_argument("--loop-max", type=int, default=1000, help="run the loops only up to this many items per side")
    parser.add_argument("--no-sysu", dest="sysu", action="store_false", help="skip the 3803 x 301 SYSU-shaped case")
    parser.add_argument("--served", type=int, default=10000, help="gallery size for the query-time case")
    parser.add_argument("--queries", type=int, default=50, help="queries timed in the query-time case")
    parser.add_argument("--candidates", type=int, nargs="+", default=[50, 100, 200], help="top-N re-ranked per query")
    parser.add_argument("--candidate-k", type=int, default=20, help="k of the query-time case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: Q=G=100 and 200, 256-d, no SYSU case, 2,000 served, 10 queries")
    parser.add_argument("--out", type=Path, default=Path(".bench/rerank.json"), help="JSON result path")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.dim, args.repeats, args.sysu = [100, 200], 256, 1, False
        args.served, args.queries, args.candidates = 2000, 10, [50, 100]
    result = run(args)
    print(render(result))
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
