"""The official MULT cross-modality re-ranking written plainly, one row at a time: the yardstick of ``mult.rerank``.

Same procedure as ``cross_modality_rerank.py::re_ranking_cross`` of FranklinLingfeng/code_for_MULT (Python
loops over rows, dense matrices, an inverted index for the Jaccard sums), re-stated in float64 instead of
the official float16 storage of the weights and Jaccard sums. Deliberately slow: tests/test_rerank.py and
benchmarks/bench_rerank.py compare the vectorised module against it. Two options go beyond the official
call and are mirrored so that they are tested too: ``normalise="rows"`` (row instead of column maxima) and
``original="pooled"`` (the neighbour-pooled distance the official call has commented out). The one
deliberate difference: a zero maximum divides by 1 (the official code gives NaN for a 1 x 1 matrix).
"""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1, np.shape(x)[-1])
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _sq_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x ** 2).sum(1)[:, None] + (y ** 2).sum(1)[None, :] - 2.0 * x @ y.T


def _by_max(d: np.ndarray, axis: int) -> np.ndarray:
    top = d.max(axis=axis, keepdims=True)
    return d / np.where(top > 0, top, 1.0)


def reciprocal(forward_rank: np.ndarray, backward_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Entries j of ``forward_rank[i, :k+1]`` whose ``backward_rank[j, :k+1]`` holds i, in forward order."""
    forward = forward_rank[i, : k + 1]
    backward = backward_rank[forward, : k + 1]
    hit_rows = [row for row in range(len(forward)) if i in backward[row]]
    return forward[hit_rows]


def expanded(forward_rank, backward_rank, half_rank, i: int, k: int) -> np.ndarray:
    """R(i) grown by every half-size set that shares more than 2/3 of its members with R(i)."""
    base = reciprocal(forward_rank, backward_rank, i, k)
    members = list(base)
    for candidate in base:
        cand_set = reciprocal(half_rank, half_rank, candidate, int(np.around(k / 2)))
        if len(np.intersect1d(cand_set, base)) > 2.0 / 3 * len(cand_set):
            members.extend(cand_set)
    return np.unique(np.array(members, dtype=np.int64))


def weights(dist, forward_rank, backward_rank, half_rank, source_rank, k: int, k2: int) -> np.ndarray:
    """Official ``cal_v``: dense [m, n] softmax(-dist) weights over each expanded set, then the mean over
    the k2 nearest source rows (skipped for k2 = 1)."""
    v = np.zeros(dist.shape)
    for i in range(dist.shape[0]):
        members = expanded(forward_rank, backward_rank, half_rank, i, k)
        if len(members):
            w = np.exp(-dist[i, members])
            v[i, members] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[source_rank[i, :k2]].mean(axis=0) for i in range(v.shape[0])])
    return v


def jaccard(v: np.ndarray) -> np.ndarray:
    """Official ``cal_jaccard_dist``: 1 - S / (2 - S) with S the sum of minima, through an inverted index."""
    n = v.shape[0]
    holders = [np.flatnonzero(v[:, col]) for col in range(v.shape[1])]
    out = np.zeros((n, n))
    for i in range(n):
        shared = np.zeros(n)
        for col in np.flatnonzero(v[i]):
            rows = holders[col]
            shared[rows] += np.minimum(v[i, col], v[rows, col])
        out[i] = 1.0 - shared / (2.0 - shared)
    return out


def intra_rerank(dist: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Official ``intra_modality_re_ranking``: classic k-reciprocal re-ranking of one square matrix."""
    d = _by_max(dist, 0).T
    rank = np.argsort(d, axis=1)
    v = weights(d, rank, rank, rank, rank, k1, k2)
    jac = np.maximum(jaccard(v), 0.0)
    return jac * (1 - lambda_value) + d * lambda_value


def reference_cross_modality_rerank(query, gallery, k: int = 20, eta: float = 0.1, intra_k2: int = 6,
                                    intra_lambda: float = 0.3, original: str = "plain",
                                    normalise: str = "columns") -> np.ndarray:
    """Official ``re_ranking_cross`` as ``evaluator.test`` calls it (query = the "ir" side), [Q, G] float64."""
    q, g = _unit(query), _unit(gallery)
    axis = 0 if normalise == "columns" else 1
    d_qg_raw = _sq_dist(q, g)
    d_qg, d_gq = _by_max(d_qg_raw, axis), _by_max(d_qg_raw.T, axis)
    d_qq, d_gg = _by_max(_sq_dist(q, q), axis), _by_max(_sq_dist(g, g), axis)
    # The official code hands the column-scaled matrices to the intra step, which rescales by column maxima
    # (a no-op then); the raw matrices give the same result and keep the "rows" option's intra step official.
    intra_q = intra_rerank(_sq_dist(q, q), k, intra_k2, intra_lambda)
    intra_g = intra_rerank(_sq_dist(g, g), k, intra_k2, intra_lambda)
    r_qg, r_gq = np.argsort(d_qg, axis=1), np.argsort(d_gq, axis=1)
    r_qq, r_gg = np.argsort(intra_q, axis=1), np.argsort(intra_g, axis=1)
    v_qq = weights(d_qq, r_qq, r_qq, r_qq, r_qq, k, k)
    v_gg = weights(d_gg, r_gg, r_gg, r_gg, r_gg, k, k)
    v_qg = weights(d_qg, r_qg, r_gq, r_gg, r_qq, k, k)
    v_gq = weights(d_gq, r_gq, r_qg, r_qq, r_gg, k, k)
    v_all = np.block([[v_qq, v_qg], [v_gq, v_gg]])
    v_all = v_all / v_all.sum(axis=1, keepdims=True)
    jac = jaccard(v_all)[: len(q), len(q):]
    if original == "pooled":
        pooled_q = np.stack([q[r_qq[i, :k]].mean(axis=0) for i in range(len(q))])
        pooled_g = np.stack([g[r_gg[j, :k]].mean(axis=0) for j in range(len(g))])
        base = _by_max(_sq_dist(pooled_q, pooled_g), axis)
    else:
        base = d_qg_raw
    return jac * (1 - eta) + base * eta
