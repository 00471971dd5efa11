"""Recall-steered gallery indexes (``mult index build --target-recall``): IVF, HNSW, IVF-PQ and IVF-PQ with exact
re-ranking, each built and tuned to a target recall@10, then checked on queries the gallery has never seen.

    python -m benchmarks.bench_index_tuning                          # 200k x 256-d, target 0.95 (minutes, 2 cores)
    python -m benchmarks.bench_index_tuning --n 50000 --dim 128 --target-recall 0.9

The data are bench_index's: clustered unit vectors (one random centre per ``--per-centre`` vectors, plus noise).
Each kind is built by the functions ``mult index build`` uses (``build_index``: IVF lists ~4*sqrt(N), IVF-PQ with
d/4 one-byte codes) and tuned by ``index_tuning.tune_index`` exactly as the build does (1,000 gallery vectors held
out as queries, doubling then bisection). At the chosen value it reports: recall@10 of 1,000 *fresh* queries
(same centres, not in the gallery) against exact search -- does the held-out tuning carry over? --, the median
single-query latency, the median latency of 100 queries at once, the single-query speed-up over flat, and memory: the bytes faiss writes for the index (a gallery's index.faiss) and the resident
memory its build added (approximate: freed memory is not always returned to the system). ``flat`` is the exact
reference (not tuned). Everything runs in this one process, one kind after the other.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.bench_index import centres, queries, vector_chunks
from benchmarks.harness import cpu_model, rss_mib, write_json

KINDS = ("flat", "ivf", "hnsw", "ivfpq", "ivfpq+refine")
K = 10
#: Batch latency: the median of this many searches of BATCH fresh queries.
BATCHES, BATCH = 5, 100
MIB = 1024 * 1024


def spec_for(kind: str, args: argparse.Namespace):
    from mult.serving.faiss_index import IndexSpec

    if kind == "flat":
        return IndexSpec("flat")
    base = kind.split("+")[0]
    options = {"ivfpq": {"pq_m": args.pq_m, "refine": args.refine if kind.endswith("+refine") else 0},
               "hnsw": {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}}.get(base, {})
    given = {name: value for name, value in options.items() if value is not None}  # None: IndexSpec's default
    return IndexSpec(base, target_recall=args.target_recall, **given).resolved(args.n, dim=args.dim)


def bench_kind(kind: str, vectors: np.ndarray, fresh: np.ndarray, truth: np.ndarray, args) -> dict:
    """Build, tune, then measure one kind at its chosen value."""
    import faiss

    from mult.serving.faiss_index import build_index, recall_at_k, search_params
    from mult.serving.index_tuning import tune_index

    spec = spec_for(kind, args)
    before = rss_mib()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        index = build_index(vectors, spec)
    build_s = time.perf_counter() - start
    added = rss_mib() - before
    out: dict = {"kind": kind, "build_s": round(build_s, 2), "rss_added_mib": round(added)}
    if spec.target_recall is not None:
        start = time.perf_counter()
        spec, tuning, _ = tune_index(index, spec, vectors=vectors)
        out.update(tune_s=round(time.perf_counter() - start, 2), tuning=tuning.as_manifest())
    params = search_params(spec)
    _, found = index.search(fresh, K, params=params)
    single = []
    for i in range(args.repeat_single):
        start = time.perf_counter()
        index.search(fresh[i % len(fresh)][None, :], K, params=params)
        single.append(time.perf_counter() - start)
    batches = []
    for i in range(BATCHES):
        batch = np.roll(fresh, -i * BATCH, axis=0)[:BATCH]
        start = time.perf_counter()
        index.search(batch, K, params=params)
        batches.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory(prefix="bench_tuning_") as tmp:
        faiss.write_index(index, os.path.join(tmp, "index.faiss"))
        size = os.path.getsize(os.path.join(tmp, "index.faiss"))
    out.update(params=spec.params(), fresh_recall_at_10=round(recall_at_k(found, truth), 4),
               latency_1_ms=round(1000 * statistics.median(single), 3),
               latency_100_ms=round(1000 * statistics.median(batches), 2), index_bytes=int(size),
               bytes_per_vector=round(size / len(vectors), 1))
    del index
    gc.collect()
    return out


def render(result: dict) -> str:
    lines = [f"N={result['n']:,} x {result['dim']}-d, target recall@10 {result['target_recall']} "
             f"(tuned on {1000} held-out gallery vectors; 'fresh': {result['fresh_queries']} queries not in the gallery)",
             f"{'kind':<13} {'chosen':>14} {'held-out':>9} {'fresh':>7} {'tries':>5} {'build s':>8} {'tune s':>7} "
             f"{'1 q ms':>7} {'100 q ms':>8} {'x flat':>6} {'index MiB':>10} {'B/vec':>7} {'RSS+ MiB':>9}"]
    flat = next((m for m in result["kinds"] if m["kind"] == "flat"), None)
    for m in result["kinds"]:
        speed_up = f"{flat['latency_1_ms'] / m['latency_1_ms']:.1f}" if flat else "-"  # single-query speed-up
        t = m.get("tuning")
        chosen = f"{t['parameter']}={t['chosen']}" if t else "exact"
        held = f"{t['recall_at_10']:.4f}" + ("" if t["reached"] else "!") if t else "-"
        lines.append(f"{m['kind']:<13} {chosen:>14} {held:>9} {m['fresh_recall_at_10']:>7.4f} "
                     f"{len(t['sweep']) if t else 0:>5} {m['build_s']:>8.1f} {m.get('tune_s', 0):>7.1f} "
                     f"{m['latency_1_ms']:>7.3f} {m['latency_100_ms']:>8.1f} {speed_up:>6} "
                     f"{m['index_bytes'] / MIB:>10.1f} {m['bytes_per_vector']:>7.0f} "
                     f"{m['rss_added_mib']:>9}")
    lines.append("held-out ending in '!': the target was not reached (the best value kept). Parameters:")
    lines += [f"  {m['kind']}: {', '.join(f'{k}={v}' for k, v in m['params'].items())}"
              for m in result["kinds"] if m["params"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--pq-m", type=int, default=None, help="IVF-PQ codes per vector (default d/4)")
    parser.add_argument("--refine", type=int, default=10, help="k_factor of ivfpq+refine")
    parser.add_argument("--hnsw-m", type=int, default=None, help="HNSW links per node (default: mult's)")
    parser.add_argument("--ef-construction", type=int, default=None, help="HNSW build breadth (default: mult's)")
    parser.add_argument("--per-centre", type=int, default=20)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh-queries", type=int, default=1000)
    parser.add_argument("--repeat-single", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    parser.add_argument("--out", type=Path, default=Path(".bench/index_tuning.json"))
    args = parser.parse_args(argv)

    import faiss

    from mult.serving.faiss_index import exact_topk

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    load = os.getloadavg()[0]
    centre_set = centres(args.n, args.dim, args.seed, args.per_centre)
    vectors = np.concatenate([block for _, block in vector_chunks(args.n, centre_set, args.seed, args.sigma)])
    fresh = queries(args.fresh_queries, centre_set, args.seed, args.sigma)
    truth = exact_topk(fresh, vector_chunks(args.n, centre_set, args.seed, args.sigma), K)
    result = {"benchmark": "index_tuning", "n": args.n, "dim": args.dim, "target_recall": args.target_recall,
              "fresh_queries": len(fresh), "kinds": []}
    for kind in args.kinds:
        result["kinds"].append(bench_kind(kind, vectors, fresh, truth, args))
    result["machine"] = {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                         "faiss_version": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
                         "load_average_1m_at_start": load}
    print(render(result))
    print(f"{cpu_model()}, {os.cpu_count()} cores, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} "
          f"threads, 1-min load at start {load:.2f}; wrote {args.out}")
    write_json(args.out, result)


if __name__ == "__main__":
    main()
