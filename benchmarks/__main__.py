"""Run every side-by-side benchmark in turn (``python -m benchmarks`` or ``make bench``).

Each script compares our implementation with a straightforward reference in ONE run and writes a JSON
result under ``.bench/``; BENCHMARKS.md quotes them. Pass names to run a subset, e.g.
``python -m benchmarks eval jaccard``. Run on a quiet machine: the numbers are wall-clock medians.
"""

from __future__ import annotations

import subprocess
import sys

SUITE = {
    "eval": ["benchmarks.bench_eval"],
    "synth": ["benchmarks.bench_synth", "--format", "sysu", "--ids", "491"],
    "jaccard": ["benchmarks.bench_jaccard"],
    "label_transfer": ["benchmarks.bench_label_transfer"],
    "serving": ["benchmarks.bench_serving"],
    # 1M x 2048 needs ~9 GiB per index and (estimated) tens of minutes of IVF/HNSW building on 2 cores:
    # run it by hand with --sizes 1000000.
    "index": ["benchmarks.bench_index", "--sizes", "10000", "100000"],
    "index_tuning": ["benchmarks.bench_index_tuning"],  # --target-recall per kind at 200k x 256, held-out recall
    "rerank": ["benchmarks.bench_rerank"],  # vectorised re-ranking vs the row-by-row re-statement, per-query cost
    "epoch": ["benchmarks.bench_epoch", "--steps", "5"],  # SYSU-sized SynthVI, one epoch per stage (~8 min)
    "load": ["benchmarks.bench_load", "--page"],  # 16 gRPC clients x 60 s, then 8 page clients x 20 searches
}


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - set(SUITE))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(SUITE)}", file=sys.stderr)
        return 2
    for name in names or list(SUITE):
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, "-m", *SUITE[name]])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
