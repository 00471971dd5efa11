"""Evaluation protocols: the community per-query loop vs mult.metrics, side by side, same inputs.

Times the evaluation from distance matrices (the part the two implementations share the inputs of):
SYSU-MM01 all-search (3,803 IR queries x 301-image gallery, 10 trials) and RegDB (2,060 x 2,060, 10 splits),
on synthetic but realistic features: identities with several images per camera, L2-normalised
``identity centre + modality offset + noise`` vectors, so the rankings look like a half-trained model's.
Also times ours end to end from features (distance matrix included). Checks that both give the same
numbers (CMC bit for bit; mAP/mINP to 1e-12, the only difference being floating-point summation order).

    python -m benchmarks.bench_eval                      # full size, 3 repeats (a few minutes: the loop is slow)
    python -m benchmarks.bench_eval --scale 0.25         # quick look
    python -m benchmarks.bench_eval --no-loop            # ours only, full size
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from mult.io import write_text_atomic
from mult.metrics import evaluate_regdb, evaluate_regdb_splits, evaluate_sysu, evaluate_sysu_trials, feature_distance
from mult.metrics.reference import reference_evaluate_regdb, reference_evaluate_sysu

SYSU_IDS, SYSU_QUERIES, SYSU_GALLERY = 96, 3803, 301  # all-search test set (METHOD.md §8.2)
SYSU_RGB_CAMS, SYSU_IR_CAMS = (1, 2, 4, 5), (3, 6)
REGDB_IDS, REGDB_PER_ID = 206, 10  # 2,060 images per modality (METHOD.md §8.3)


# ----------------------------------------------------------------------------------------------------
# synthetic data


def _embed(
    rng: np.random.Generator, centres: np.ndarray, ids: np.ndarray, offset: np.ndarray, noise: float
) -> np.ndarray:
    """Features of images of ``ids``: identity centre + modality offset + per-image noise, float32."""
    x = centres[ids] + offset + noise * rng.standard_normal((ids.size, centres.shape[1]))
    return x.astype(np.float32)


@dataclass
class SysuCase:
    query: np.ndarray
    q_pids: np.ndarray
    q_cams: np.ndarray
    pool: np.ndarray
    pool_pids: np.ndarray
    pool_cams: np.ndarray
    galleries: list[np.ndarray]  # pool rows per trial


def make_sysu(rng: np.random.Generator, scale: float, trials: int, dim: int, noise: float) -> SysuCase:
    """SYSU-like test set: queries from cam3/cam6, a pool of RGB images, one image per (id, camera) per trial."""
    num_ids = max(2, round(SYSU_IDS * scale))
    centres = rng.standard_normal((num_ids, dim))
    q_pids = np.sort(rng.integers(0, num_ids, max(num_ids, round(SYSU_QUERIES * scale))))
    q_cams = rng.choice(SYSU_IR_CAMS, q_pids.size)
    # Not every id is seen by every RGB camera: keep 301 of the 384 (id, camera) pairs at full size.
    pairs = np.array([(i, c) for i in range(num_ids) for c in SYSU_RGB_CAMS])
    kept_share = SYSU_GALLERY / (SYSU_IDS * len(SYSU_RGB_CAMS))
    present = rng.choice(len(pairs), max(1, round(len(pairs) * kept_share)), replace=False)
    pairs = pairs[np.sort(present)]
    per_pair = rng.integers(5, 31, len(pairs))  # images per (id, camera)
    pool_pids = np.repeat(pairs[:, 0], per_pair)
    pool_cams = np.repeat(pairs[:, 1], per_pair)
    pair_start = np.cumsum(per_pair) - per_pair
    galleries = [
        pair_start + np.random.default_rng(t).integers(0, per_pair)  # trial t = seed t, one image per pair
        for t in range(trials)
    ]
    offset_ir, offset_rgb = rng.standard_normal((2, dim)) * 0.5
    return SysuCase(
        _embed(rng, centres, q_pids, offset_ir, noise), q_pids, q_cams,
        _embed(rng, centres, pool_pids, offset_rgb, noise), pool_pids, pool_cams, galleries,
    )


def make_regdb(rng: np.random.Generator, scale: float, splits: int, dim: int, noise: float) -> list[tuple]:
    """RegDB-like splits: per split, new identities with 10 visible and 10 thermal images each."""
    num_ids = max(2, round(REGDB_IDS * scale))
    ids = np.repeat(np.arange(num_ids), REGDB_PER_ID)
    out = []
    for _ in range(splits):
        centres = rng.standard_normal((num_ids, dim))
        offset_v, offset_t = rng.standard_normal((2, dim)) * 0.5
        out.append((_embed(rng, centres, ids, offset_v, noise), ids, _embed(rng, centres, ids, offset_t, noise), ids))
    return out


# ----------------------------------------------------------------------------------------------------
# timing


def median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls, in ms, and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), result


def check_identical(ours: list[tuple], loop: list[tuple], what: str) -> dict[str, float]:
    """Assert both implementations agree; return the largest mAP/mINP differences seen."""
    diff = {"mAP": 0.0, "mINP": 0.0}
    for (cmc_a, map_a, minp_a), (cmc_b, map_b, minp_b) in zip(ours, loop):
        assert np.array_equal(cmc_a, cmc_b), f"{what}: CMC differs from the loop reference"
        diff["mAP"] = max(diff["mAP"], abs(map_a - map_b))
        diff["mINP"] = max(diff["mINP"], abs(minp_a - minp_b))
    assert max(diff.values()) <= 1e-12, f"{what}: mAP/mINP differ from the loop reference by {diff}"
    return diff


def run(args: argparse.Namespace) -> dict[str, object]:
    rng = np.random.default_rng(args.seed)
    sysu = make_sysu(rng, args.scale, args.trials, args.dim, args.noise)
    regdb = make_regdb(rng, args.scale, args.splits, args.dim, args.noise)

    # Distance matrices once, outside the timed region: both implementations get the same ones.
    sysu_d = feature_distance(sysu.query, sysu.pool)
    sysu_inputs = [
        (np.ascontiguousarray(sysu_d[:, g]), sysu.q_pids, sysu.pool_pids[g], sysu.q_cams, sysu.pool_cams[g])
        for g in sysu.galleries
    ]
    regdb_inputs = [(feature_distance(q, g), qp, gp) for q, qp, g, gp in regdb]
    sysu_shape = f"{sysu.query.shape[0]}x{sysu_inputs[0][0].shape[1]}"
    regdb_shape = f"{regdb_inputs[0][0].shape[0]}x{regdb_inputs[0][0].shape[1]}"

    cases = [
        (f"SYSU {sysu_shape} x{args.trials} trials", evaluate_sysu, reference_evaluate_sysu, sysu_inputs, args.trials),
        (f"RegDB {regdb_shape} x{args.splits} splits", evaluate_regdb, reference_evaluate_regdb, regdb_inputs,
         args.splits),
    ]
    rows, diffs, metrics = [], {}, {}
    for name, ours_fn, loop_fn, inputs, count in cases:
        ours_ms, ours_out = median_ms(lambda: [ours_fn(*x) for x in inputs], args.repeats)
        loop_ms, loop_out = (None, None)
        if not args.no_loop:
            loop_ms, loop_out = median_ms(lambda: [loop_fn(*x) for x in inputs], args.repeats)
            diffs[name] = check_identical(ours_out, loop_out, name)
        rows.append({"case": name, "loop_ms": loop_ms, "ours_ms": ours_ms, "per_eval_ours_ms": ours_ms / count,
                     "per_eval_loop_ms": None if loop_ms is None else loop_ms / count,
                     "speedup": None if loop_ms is None else loop_ms / ours_ms})
        metrics[name] = {"R1": float(np.mean([o[0][0] for o in ours_out])) * 100,
                         "mAP": float(np.mean([o[1] for o in ours_out])) * 100}

    # Ours end to end from features (distance matrix included), as `mult evaluate` would run it.
    e2e_sysu_ms, _ = median_ms(
        lambda: evaluate_sysu_trials(sysu.query, sysu.q_pids, sysu.q_cams, sysu.pool, sysu.pool_pids,
                                     sysu.pool_cams, sysu.galleries), args.repeats)
    e2e_regdb_ms, _ = median_ms(lambda: evaluate_regdb_splits(regdb), args.repeats)
    rows.append({"case": f"SYSU runner from {args.dim}-d features", "loop_ms": None, "ours_ms": e2e_sysu_ms,
                 "per_eval_ours_ms": e2e_sysu_ms / args.trials, "per_eval_loop_ms": None, "speedup": None})
    rows.append({"case": f"RegDB runner from {args.dim}-d features", "loop_ms": None, "ours_ms": e2e_regdb_ms,
                 "per_eval_ours_ms": e2e_regdb_ms / args.splits, "per_eval_loop_ms": None, "speedup": None})

    return {
        "benchmark": "eval",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "numpy": np.__version__},
        "settings": {k: getattr(args, k)
                     for k in ("scale", "trials", "splits", "repeats", "dim", "noise", "seed", "no_loop")},
        "rows": rows,
        "max_abs_diff": diffs,
        "synthetic_metrics_percent": metrics,
    }


def render(result: dict[str, object]) -> str:
    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    lines = [f"{'case':<40}{'loop ms':>11}{'ours ms':>11}{'ours/eval':>11}{'speed-up':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['case']:<40}{fmt(r['loop_ms'], '.1f'):>11}{fmt(r['ours_ms'], '.1f'):>11}"
                     f"{fmt(r['per_eval_ours_ms'], '.1f'):>11}{fmt(r['speedup'], '.1f'):>10}")
    for name, d in result["max_abs_diff"].items():
        lines.append(f"identical on {name}: CMC bit-equal, |dmAP| <= {d['mAP']:.1e}, |dmINP| <= {d['mINP']:.1e}")
    for name, m in result["synthetic_metrics_percent"].items():
        lines.append(f"synthetic {name}: R1 {m['R1']:.1f}%, mAP {m['mAP']:.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".bench/eval.json"), help="JSON result path")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real test-set sizes (ids and images)")
    parser.add_argument("--trials", type=int, default=10, help="SYSU galleries (trials)")
    parser.add_argument("--splits", type=int, default=10, help="RegDB splits")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    parser.add_argument("--dim", type=int, default=256, help="synthetic feature dimension")
    parser.add_argument("--noise", type=float, default=2.5, help="per-image noise (higher = harder ranking)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-loop", action="store_true", help="time ours only (skips the slow loop and the check)")
    args = parser.parse_args(argv)
    if not 0 < args.scale <= 1 or min(args.trials, args.splits, args.repeats, args.dim) < 1:
        parser.error("need 0 < --scale <= 1 and positive --trials/--splits/--repeats/--dim")
    result = run(args)
    print(render(result))
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
