"""Gallery indexes at scale: exact Flat vs IVF-Flat vs HNSW-Flat (``mult.serving.faiss_index``), side by side.

    python -m benchmarks.bench_index --sizes 10000                          # a quick look (seconds)
    python -m benchmarks.bench_index --sizes 10000 100000 1000000 --out .bench/index.json

For each size N the parent draws Re-ID-like synthetic embeddings: clustered unit vectors in 2048-d (one
random centre per ~20 vectors, like ~20 images per person, plus isotropic noise), so approximate indexes
face a realistic neighbourhood structure and IVF recall means something. The vectors are generated in
fixed-seed chunks, so every process regenerates the same data without holding a second copy; exact
top-10 ground truth for fresh queries (drawn from the same centres) is computed by streaming the chunks.
Each index kind then runs in its own child process (peak memory is its own) and reports: build time
(IVF training included, data generation excluded), resident memory the index added, single-query latency
(median over ``--repeat-single`` different queries), 100-query batch latency (median of ``--repeat-batch``)
and recall@10 against the exact ground truth on ``--recall-queries`` queries. The indexes are built by the
same functions ``mult index build`` uses (``new_index``, ``train_sample``, ``add_vectors``).

A size whose estimated memory does not fit in this machine's available memory is skipped and reported so
(1M x 2048 float32 vectors alone are 8.2 GB). Run on a quiet machine: the numbers are wall-clock medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.harness import cpu_model, peak_rss_mib, rss_mib, run_child as spawn_child, write_json

KINDS = ("flat", "ivf", "hnsw")
CHUNK = 10_000  # small blocks keep the generation transient (~3 blocks) far below the index itself
K = 10
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------------- data
def centres(n: int, dim: int, seed: int, per_centre: int) -> np.ndarray:
    """``max(1, n // per_centre)`` random unit centres (float32)."""
    c = np.random.default_rng([seed, 0]).standard_normal((max(1, n // per_centre), dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return c


def _around(rng: np.random.Generator, centre_set: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """``size`` unit vectors: a random centre + N(0, sigma^2 / d) noise per coordinate, re-normalised.

    With sigma = 1 two vectors of the same centre have cosine ~0.5, two of different centres ~0 +- 1/sqrt(d).
    """
    dim = centre_set.shape[1]
    x = rng.standard_normal((size, dim), dtype=np.float32)
    x *= np.float32(sigma / math.sqrt(dim))
    x += centre_set[rng.integers(0, len(centre_set), size)]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def vector_chunks(n: int, centre_set: np.ndarray, seed: int, sigma: float) -> Iterator[tuple[int, np.ndarray]]:
    """``(first id, block)`` chunks of the N database vectors; chunk ``i`` depends only on (seed, i)."""
    for i, start in enumerate(range(0, n, CHUNK)):
        yield start, _around(np.random.default_rng([seed, 1, i]), centre_set, min(CHUNK, n - start), sigma)


def queries(count: int, centre_set: np.ndarray, seed: int, sigma: float) -> np.ndarray:
    """Fresh query vectors from the same centres (not in the database)."""
    return _around(np.random.default_rng([seed, 2]), centre_set, count, sigma)


# ---------------------------------------------------------------------------------------------------- memory
def meminfo_mib() -> dict[str, float]:
    out = {}
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                key, value = line.split(":", 1)
                if key in ("MemTotal", "MemAvailable"):
                    out[key] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    return out


def estimate_mib(kind: str, n: int, dim: int, spec_params: dict, per_centre: int) -> float:
    """Rough peak memory of one child for ``kind`` at N (vectors + kind overhead + a chunk + centres), +15%.

    Vectors count twice for flat and HNSW: chunked adds grow faiss's flat storage (a std::vector) by
    reallocation, which briefly holds the old and the new buffer (measured: peak ~1.6x the index at 100k).
    """
    vectors = n * dim * 4 * (1 if kind == "ivf" else 2)
    overhead = {"flat": 0, "ivf": n * 16 + spec_params.get("train", 0) * dim * 4,
                "hnsw": n * spec_params.get("M", 32) * 2 * 4 * 1.2}[kind]
    idmap = n * 64  # IDMap2: id array + reverse hash map
    working = 4 * CHUNK * dim * 4 + (n // per_centre + 1) * dim * 4
    return 1.15 * (vectors + overhead + idmap + working) / MIB + 200


# ---------------------------------------------------------------------------------------------------- child
def run_child(kind: str, work: Path, args: argparse.Namespace) -> dict:
    """Build one index kind over the regenerated vectors, time it, measure latency, memory and recall."""
    import faiss

    from mult.serving.faiss_index import IndexSpec, add_vectors, new_index, recall_at_k, search_params, train_sample

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    q = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    centre_set = centres(args.n, args.dim, args.seed, args.per_centre)
    spec = IndexSpec(kind, nlist=args.nlist, nprobe=args.nprobe, ef_search=args.ef_search,
                     train_per_list=args.train_per_list, hnsw_m=args.hnsw_m).resolved(args.n)
    rss_before = rss_mib()
    index = new_index(args.dim, spec)
    build_s = 0.0
    train_n = 0
    if not index.is_trained:
        rows = train_sample(args.n, spec, args.seed)
        train_n = len(rows)
        sample = np.concatenate([block[rows[(rows >= first) & (rows < first + len(block))] - first]
                                 for first, block in vector_chunks(args.n, centre_set, args.seed, args.sigma)])
        start = time.perf_counter()
        index.train(sample)
        build_s += time.perf_counter() - start
        del sample
    for first, block in vector_chunks(args.n, centre_set, args.seed, args.sigma):
        start = time.perf_counter()
        add_vectors(index, block, first)
        build_s += time.perf_counter() - start
    del block
    rss_after = rss_mib()
    params = search_params(spec)

    single = []
    for i in range(args.repeat_single):
        one = q[i % len(q)][None, :]
        start = time.perf_counter()
        index.search(one, K, params=params)
        single.append(time.perf_counter() - start)
    batch = q[:100]
    batched = []
    for _ in range(args.repeat_batch):
        start = time.perf_counter()
        index.search(batch, K, params=params)
        batched.append(time.perf_counter() - start)
    start = time.perf_counter()
    _, found = index.search(q[:args.recall_queries], K, params=params)
    recall_s = time.perf_counter() - start
    return {
        "kind": kind,
        "params": spec.params(),
        "train_vectors": train_n,
        "build_s": round(build_s, 3),
        "latency_1_ms": round(1000 * statistics.median(single), 3),
        "latency_100_ms": round(1000 * statistics.median(batched), 3),
        "per_query_in_batch_ms": round(1000 * statistics.median(batched) / len(batch), 4),
        "recall_at_10": round(recall_at_k(found, truth[:args.recall_queries]), 4),
        "recall_queries": int(min(args.recall_queries, len(q))),
        "recall_search_s": round(recall_s, 3),
        "index_rss_mib": round(rss_after - rss_before, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def _child_args(args: argparse.Namespace, n: int) -> list[str]:
    pairs = {"--n": n, "--dim": args.dim, "--seed": args.seed, "--sigma": args.sigma, "--per-centre": args.per_centre,
             "--nprobe": args.nprobe, "--ef-search": args.ef_search, "--hnsw-m": args.hnsw_m,
             "--train-per-list": args.train_per_list, "--repeat-single": args.repeat_single,
             "--repeat-batch": args.repeat_batch, "--recall-queries": args.recall_queries, "--threads": args.threads}
    if args.nlist:
        pairs["--nlist"] = args.nlist
    return [str(x) for kv in pairs.items() for x in kv]


# ---------------------------------------------------------------------------------------------------- parent
def bench_size(n: int, args: argparse.Namespace) -> dict:
    """Ground truth for one N, then every kind in its own child (skipping kinds that would not fit)."""
    from mult.serving.faiss_index import IndexSpec, exact_topk

    result: dict = {"n": n, "dim": args.dim, "centres": max(1, n // args.per_centre), "sigma": args.sigma}
    spec = IndexSpec("ivf", nlist=args.nlist, train_per_list=args.train_per_list).resolved(n)
    train = min(n, int(spec.nlist) * args.train_per_list)
    available = meminfo_mib().get("MemAvailable", float("inf"))
    needed = {kind: estimate_mib(kind, n, args.dim, {"train": train, "M": args.hnsw_m}, args.per_centre)
              for kind in args.kinds}
    result["estimated_peak_mib"] = {k: round(v) for k, v in needed.items()}
    result["available_mib_at_start"] = round(available)
    runnable = [k for k in args.kinds if needed[k] < 0.9 * available]
    for kind in set(args.kinds) - set(runnable):
        result[kind] = {"skipped": f"needs ~{needed[kind] / 1024:.1f} GiB, {available / 1024:.1f} GiB available"}
    if not runnable:
        return result
    with tempfile.TemporaryDirectory(prefix="bench_index_") as tmp:
        work = Path(tmp)
        centre_set = centres(n, args.dim, args.seed, args.per_centre)
        q = queries(max(100, args.recall_queries), centre_set, args.seed, args.sigma)
        start = time.perf_counter()
        truth = exact_topk(q[:args.recall_queries], vector_chunks(n, centre_set, args.seed, args.sigma), K)
        result["ground_truth_s"] = round(time.perf_counter() - start, 3)
        np.save(work / "queries.npy", q)
        np.save(work / "truth.npy", truth)
        del centre_set
        for kind in runnable:
            print(f"  N={n:,}: {kind} ...", file=sys.stderr, flush=True)
            result[kind] = spawn_child("benchmarks.bench_index", kind, work, _child_args(args, n))
    return result


def _print_table(results: list[dict]) -> None:
    print(f"{'N':>9} {'kind':>5} {'params':>34} {'build s':>9} {'1 q ms':>8} {'100 q ms':>9} "
          f"{'recall@10':>9} {'index MiB':>10} {'peak MiB':>9}")
    for res in results:
        for kind in KINDS:
            m = res.get(kind)
            if m is None:
                continue
            if "skipped" in m:
                print(f"{res['n']:>9,} {kind:>5}  skipped: {m['skipped']}")
                continue
            params = ",".join(f"{k}={v}" for k, v in m["params"].items() if k != "train_per_list")
            print(f"{res['n']:>9,} {kind:>5} {params:>34} {m['build_s']:>9.2f} {m['latency_1_ms']:>8.3f} "
                  f"{m['latency_100_ms']:>9.2f} {m['recall_at_10']:>9.4f} {m['index_rss_mib']:>10.0f} "
                  f"{m['peak_rss_mib']:>9.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="gallery sizes")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--per-centre", type=int, default=20, help="vectors per cluster centre (images per person)")
    parser.add_argument("--sigma", type=float, default=1.0, help="noise norm relative to the unit centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4*sqrt(N), at most N/39)")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--train-per-list", type=int, default=64, help="IVF training vectors per list")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--repeat-single", type=int, default=50, help="single queries timed (median)")
    parser.add_argument("--repeat-batch", type=int, default=5, help="100-query batches timed (median)")
    parser.add_argument("--recall-queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    parser.add_argument("--out", type=Path, default=Path(".bench/index.json"))
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_child(args.child, args.work, args)))
        return

    import faiss

    load_at_start = os.getloadavg()[0]
    memory = meminfo_mib()
    results = []
    for n in args.sizes:
        results.append(bench_size(n, args))
        _print_table(results[-1:])
    payload = {
        "benchmark": "index",
        "machine": {
            "platform": platform.platform(),
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "faiss_version": faiss.__version__,
            "faiss_threads": args.threads or faiss.omp_get_max_threads(),
            "mem_total_mib": round(memory.get("MemTotal", float("nan"))),
            "mem_available_mib_at_start": round(memory.get("MemAvailable", float("nan"))),
            "load_average_1m_at_start": load_at_start,
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "work", "n", "out")},
        "results": results,
    }
    write_json(args.out, payload)
    largest = max((r["n"] for r in results if any(isinstance(r.get(k), dict) and "build_s" in r[k] for k in KINDS)),
                  default=None)
    print(f"{cpu_model()}, {os.cpu_count()} cores, faiss {faiss.__version__} with "
          f"{payload['machine']['faiss_threads']} threads, {memory.get('MemTotal', 0) / 1024:.1f} GiB RAM "
          f"({memory.get('MemAvailable', 0) / 1024:.1f} GiB available at start), 1-min load {load_at_start:.2f}; "
          f"largest size run: {largest if largest is None else f'{largest:,}'}; wrote {args.out}")


if __name__ == "__main__":
    main()
