"""Per-query loop form of the community metrics (METHOD.md §8), kept only to check the vectorised code.

This is the algorithm of ``eval_sysu`` / ``eval_regdb`` in the AGW/CAJ baseline, written plainly, one
query at a time; :mod:`mult.metrics.ranking` must give the same numbers. The tests and
``benchmarks/bench_eval.py`` both import it from here. It is slow (seconds at SYSU size): never use it
for real evaluation.

One deliberate difference from the community code: every per-query curve is cut or padded (with its last
value) to ``max_rank`` entries, where the original shortens ``max_rank`` to the gallery size and would
stack curves of unequal length. At real SYSU/RegDB sizes (>= 20 ids) the two agree.
"""

from __future__ import annotations

import numpy as np

from mult.errors import MultError


def _fit(curve: np.ndarray, max_rank: int) -> np.ndarray:
    """Cut or pad (with the last value) a per-query curve to ``max_rank`` entries."""
    curve = np.asarray(curve)[:max_rank]
    if curve.size < max_rank:
        fill = curve[-1] if curve.size else 0
        curve = np.concatenate([curve, np.full(max_rank - curve.size, fill, dtype=curve.dtype)])
    return curve


def _ap_inp(hits: np.ndarray) -> tuple[float, float]:
    """AP and INP of one query from its 0/1 hit vector over the kept ranking (at least one hit)."""
    found = hits.cumsum()
    precision_at = np.asarray([found[i] / (i + 1.0) for i in range(hits.size)]) * hits
    ap = precision_at.sum() / hits.sum()
    last = np.flatnonzero(hits == 1).max()
    inp = found[last] / (last + 1.0)
    return ap, inp


def reference_evaluate(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray | None = None,
    g_camids: np.ndarray | None = None,
    max_rank: int = 20,
    *,
    sysu: bool,
) -> tuple[np.ndarray, float, float]:
    """Loop reference for both protocols: ``sysu=True`` is ``eval_sysu``, ``sysu=False`` is ``eval_regdb``."""
    num_q, num_g = distmat.shape
    order = np.argsort(distmat, axis=1)
    ranked_pids = g_pids[order]
    hits_all = (ranked_pids == q_pids[:, None]).astype(np.int32)

    dedup_curves, std_curves, aps, inps = [], [], [], []
    num_valid = 0.0
    for qi in range(num_q):
        keep = np.ones(num_g, dtype=bool)
        if sysu:
            # cam3 (IR) queries ignore cam2 (RGB) gallery items: same scene
            keep = ~((q_camids[qi] == 3) & (g_camids[order[qi]] == 2))
            # CMC on the kept ranked id list with repeats dropped (first occurrence), for every query
            kept_pids = ranked_pids[qi][keep]
            _, first_at = np.unique(kept_pids, return_index=True)
            distinct = kept_pids[np.sort(first_at)]
            dedup_curves.append(_fit((distinct == q_pids[qi]).astype(np.int32).cumsum(), max_rank))
        hits = hits_all[qi][keep]
        if not hits.any():
            continue
        curve = hits.cumsum()
        curve[curve > 1] = 1
        std_curves.append(_fit(curve, max_rank))
        num_valid += 1.0
        ap, inp = _ap_inp(hits)
        aps.append(ap)
        inps.append(inp)

    if num_valid == 0:
        raise MultError("no query has a true match in the gallery")
    curves = dedup_curves if sysu else std_curves
    cmc = np.asarray(curves).astype(np.float32).sum(0) / num_valid
    return cmc, float(np.mean(aps)), float(np.mean(inps))


def reference_evaluate_sysu(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 20,
) -> tuple[np.ndarray, float, float]:
    """Loop form of ``eval_sysu`` (de-duplicated CMC, cam3/cam2 rule)."""
    return reference_evaluate(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, sysu=True)


def reference_evaluate_regdb(
    distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, max_rank: int = 20
) -> tuple[np.ndarray, float, float]:
    """Loop form of ``eval_regdb`` (standard CMC, nothing removed)."""
    return reference_evaluate(distmat, q_pids, g_pids, max_rank=max_rank, sysu=False)
