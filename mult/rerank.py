"""Cross-modality k-reciprocal re-ranking of a query x gallery distance matrix, as in the official MULT code.

Official: ``cross_modality_rerank.py::re_ranking_cross(distmat_ir_rgb, distmat_rgb_ir, distmat_ir_ir,
distmat_rgb_rgb, cross_features_ir, cross_features_rgb, k=20, eta_value=0.1)`` of
FranklinLingfeng/code_for_MULT, switched on by ``--is-reranking`` in ``evaluator.test`` (which passes k=15
for SYSU-MM01 and RegDB). "ir" is the query modality and "rgb" the gallery one, whichever they are. Steps:

1. every distance matrix (squared Euclidean of the L2-normalised features: query-gallery, its transpose,
   query-query, gallery-gallery) is divided by its column maxima;
2. :func:`intra_modality_rerank`: classic k-reciprocal re-ranking of the query-query and gallery-gallery
   distances (k1 = k, k2 = 6, lambda = 0.3), used only for each modality's neighbour order;
3. :func:`reciprocal_weights` for each block of the joint (query + gallery) set: k-reciprocal sets (forward
   list in one order, backward in the other), their 2/3-overlap expansion by half-size sets within the
   target modality, softmax(-d) weights and the query expansion over the source's k nearest rows;
4. :func:`cross_jaccard`: the blocks joined into one (Q+G)^2 weight matrix with unit row sums, and the
   Jaccard distance of its query rows against its gallery rows;
5. ``(1 - eta) * jaccard + eta * d``, d the plain squared distance (``original="pooled"``: the
   commented-out neighbour-pooled distance of the official file, :func:`neighbour_pooled_distance`).

The official code loops over rows in Python and stores weights and Jaccard sums in float16 (its output is
off the exact values by up to a few hundredths on small random cases, enough to swap close ranks). Here:
float32 matrix products, ``argpartition`` neighbour lists, scipy sparse sets and weights, a chunked sparse
join (float64) for the sums of minima; float32 out. ``benchmarks/reference_rerank.py`` is the row-by-row
re-statement it is tested against. Memory: the dense (Q+G)^2 distances, like the official code.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import scipy.sparse as sp

from mult.errors import MultError

#: ``re_ranking_cross`` defaults, the k its ``evaluator.test`` passes, ``intra_modality_re_ranking``'s k2, lambda.
OFFICIAL_K, OFFICIAL_ETA, OFFICIAL_TEST_K, OFFICIAL_INTRA_K2, OFFICIAL_INTRA_LAMBDA = 20, 0.1, 15, 6, 0.3

#: (row, shared column, other row) triples per chunk of the sum of minima (~100 MB of temporaries).
TRIPLES_PER_CHUNK = 4_000_000
#: Output cells per chunk of the sum of minima (32 MB of float64).
CELLS_PER_CHUNK = 4_000_000
#: Rows per argpartition chunk when neighbour lists are taken from a dense matrix.
RANK_CHUNK_ROWS = 512

ORIGINALS, NORMALISATIONS = ("plain", "pooled"), ("columns", "rows")


# ----------------------------------------------------------------------------------------------------
# input checks


def _features(x: np.ndarray, name: str, ndim: int = 2) -> np.ndarray:
    """float32 copy of ``x`` with unit rows; a one-line MultError for a bad shape, dtype or value."""
    a = np.asarray(x)
    if a.ndim != ndim or 0 in a.shape:
        want = "[dim]" if ndim == 1 else "[items, dim]"
        raise MultError(f"{name} must be a non-empty {ndim}-D array {want}, got shape {a.shape}")
    if a.dtype.kind not in "fiu":
        raise MultError(f"{name} must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float32).reshape(-1, a.shape[-1])
    if not np.isfinite(a).all():
        raise MultError(f"{name} contains NaN or infinite values: check the model's output")
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), np.float32(1e-12))


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MultError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value <= 1:
        raise MultError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise MultError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return str(value)


# ----------------------------------------------------------------------------------------------------
# dense helpers


def squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``||x_i - y_j||^2`` [len(x), len(y)] float32 by one matrix product, clipped at 0 against rounding."""
    d = (x * x).sum(axis=1)[:, None] + (y * y).sum(axis=1)[None, :]
    d -= 2.0 * (x @ y.T)
    return np.maximum(d, 0.0, out=d)


def divide_by_max(d: np.ndarray, axis: int) -> np.ndarray:
    """``d / max(d, axis)`` (axis 0: column maxima, as the official code; 1: row maxima). A zero maximum
    (a 1 x 1 self-distance) divides by 1, where the official code would produce NaN."""
    top = d.max(axis=axis, keepdims=True)
    return d / np.where(top > 0, top, 1).astype(d.dtype)


def top_ranks(d: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` columns of ``np.argsort(d, axis=1)`` (all if the row is shorter), int64, by
    ``argpartition`` in row chunks; only exact ties can come out in another order than a full argsort's."""
    m, n = d.shape
    width = min(width, n)
    out = np.empty((m, width), dtype=np.int64)
    for r in range(0, m, RANK_CHUNK_ROWS):
        part = d[r : r + RANK_CHUNK_ROWS]
        if width < n:
            idx = np.argpartition(part, width - 1, axis=1)[:, :width]
        else:
            idx = np.broadcast_to(np.arange(n), part.shape)
        order = np.argsort(np.take_along_axis(part, idx, axis=1), axis=1)
        out[r : r + RANK_CHUNK_ROWS] = np.take_along_axis(idx, order, axis=1)
    return out


# ----------------------------------------------------------------------------------------------------
# sparse sets and weights


def _membership(rank: np.ndarray, width: int, num_cols: int) -> sp.csr_matrix:
    """M[i, j] = 1 iff j is among the first ``width`` entries of ``rank[i]`` (float64 CSR)."""
    cols = rank[:, :width]
    m, w = cols.shape
    indptr = np.arange(0, m * w + 1, w, dtype=np.int64)
    member = sp.csr_matrix((np.ones(cols.size), cols.ravel(), indptr), shape=(m, num_cols))
    member.sort_indices()
    return member


def k_reciprocal_sets(forward: np.ndarray, backward: np.ndarray, k: int) -> sp.csr_matrix:
    """R[i, j] = 1 iff j is in ``forward[i, :k+1]`` and i is in ``backward[j, :k+1]`` (official
    ``k_reciprocal_neigh``). ``forward`` ranks the n target items for each of m sources; ``backward`` ranks
    the m sources for each target. Within one modality both are the same neighbour lists.
    """
    there = _membership(forward, k + 1, backward.shape[0])  # [m, n]
    back = _membership(backward, k + 1, forward.shape[0])  # [n, m]
    recip = there.multiply(back.T).tocsr()
    recip.sort_indices()
    return recip


def expand_sets(recip: sp.csr_matrix, half: sp.csr_matrix) -> sp.csr_matrix:
    """E(i) = R(i) plus each half-size set H(c), c in R(i), that shares more than 2/3 of its members with
    R(i) (the official expansion; R(i) is not updated while it grows). ``recip`` is [m, n], ``half``
    [n, n]; the result is a 0/1 CSR pattern with sorted indices.
    """
    shared = (recip @ half.T).multiply(recip).tocsr()  # |R(i) & H(c)| for c in R(i)
    rows = np.repeat(np.arange(shared.shape[0]), np.diff(shared.indptr))
    half_size = np.diff(half.indptr)
    keep = shared.data > 2.0 / 3 * half_size[shared.indices]  # the official float test
    chosen = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], shared.indices[keep])), shape=shared.shape)
    grown = (recip + chosen @ half).tocsr()
    grown.data[:] = 1.0
    grown.sort_indices()
    return grown


def reciprocal_weights(
    dist: np.ndarray,
    forward: np.ndarray,
    backward: np.ndarray,
    half: np.ndarray,
    source_rank: np.ndarray,
    k: int,
    expansion: int,
) -> sp.csr_matrix:
    """The official ``cal_v``: sparse weights V [m, n] of m sources over n targets.

    Args:
        dist: [m, n] scaled distances; the weights are ``exp(-dist)`` over each expanded set, normalised
            to sum 1 (a row with an empty k-reciprocal set stays zero).
        forward: neighbour lists of the sources among the targets ([m, >= k+1], nearest first).
        backward: neighbour lists of the targets among the sources ([n, >= k+1]).
        half: neighbour lists of the targets among themselves; their k-reciprocal sets with
            ``round(k / 2)`` (numpy's half-to-even, as the official code) are the expansion candidates.
        source_rank: neighbour lists of the sources among themselves, for the query expansion.
        k: the k of the k-reciprocal sets.
        expansion: query expansion width: row i becomes the mean of the rows of its first ``expansion``
            ``source_rank`` entries (skipped when 1, as in the official code).
    """
    recip = k_reciprocal_sets(forward, backward, k)
    pattern = expand_sets(recip, k_reciprocal_sets(half, half, int(np.around(k / 2))))
    rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
    weight = np.exp(-dist[rows, pattern.indices].astype(np.float64))
    total = np.bincount(rows, weights=weight, minlength=pattern.shape[0])
    v = sp.csr_matrix((weight / total[rows], pattern.indices, pattern.indptr), shape=pattern.shape)
    if expansion != 1:
        mean = _membership(source_rank, expansion, source_rank.shape[0])
        mean.data /= min(expansion, source_rank.shape[1])  # every row has that many entries
        v = (mean @ v).tocsr()
        v.sort_indices()
    return v


def _min_sums(a: sp.csr_matrix, b: sp.csr_matrix) -> Iterator[tuple[slice, np.ndarray]]:
    """``S[i, j] = sum_l min(a[i, l], b[j, l])`` for non-negative CSR rows, as (row slice, dense float64 block).

    The inverted index of the official loop (which rows of ``b`` hold column l) is ``b``'s CSC form: each
    entry (i, l) of ``a`` meets the run of column l, the (i, j, l) triples are enumerated with
    repeat/arange and their minima summed per (i, j) with ``bincount``, a chunk of rows at a time.
    """
    m, n = a.shape[0], b.shape[0]
    by_col = b.tocsc()
    by_col.sort_indices()
    fan = np.diff(by_col.indptr)[a.indices]  # triples made by each entry of a
    row_of = np.repeat(np.arange(m), np.diff(a.indptr))
    row_end = np.cumsum(np.bincount(row_of, weights=fan, minlength=m).astype(np.int64))
    start = 0
    while start < m:
        base = row_end[start - 1] if start else 0
        stop = int(np.searchsorted(row_end, base + TRIPLES_PER_CHUNK, side="right"))
        stop = min(max(stop, start + 1), start + max(1, CELLS_PER_CHUNK // n), m)
        lo, hi = a.indptr[start], a.indptr[stop]
        reps = fan[lo:hi]
        total = int(reps.sum())
        at = np.repeat(by_col.indptr[a.indices[lo:hi]] - (np.cumsum(reps) - reps), reps) + np.arange(total)
        mins = np.minimum(np.repeat(a.data[lo:hi], reps), by_col.data[at])
        cell = np.repeat((row_of[lo:hi] - start) * n, reps) + by_col.indices[at]
        block = np.bincount(cell, weights=mins, minlength=(stop - start) * n).reshape(stop - start, n)
        yield slice(start, stop), block
        start = stop


def jaccard_from_min_sums(s: np.ndarray) -> np.ndarray:
    """``1 - S / (2 - S)``: for rows with unit sums, 2 - S is the fuzzy union, so this is 1 - |A & B| / |A | B|."""
    return 1.0 - s / (2.0 - s)


# ----------------------------------------------------------------------------------------------------
# the named steps


def intra_modality_rerank(dist: np.ndarray, *, k1: int = OFFICIAL_K, k2: int = OFFICIAL_INTRA_K2,
                          lambda_value: float = OFFICIAL_INTRA_LAMBDA) -> np.ndarray:
    """k-reciprocal re-ranking within one modality (official ``intra_modality_re_ranking(original_dist,
    k1=20, k2=6, lambda_value=0.3)``), dense [N, N] float32.

    ``dist`` [N, N] is divided by its column maxima and transposed (for a symmetric matrix: each row
    divided by its maximum), giving D. Each row's neighbour list is D's order; V = softmax(-D) over the
    expanded k1-reciprocal set, query-expanded over the k2 nearest rows; J = max(0, Jaccard(V_i, V_j)).
    The result is ``(1 - lambda_value) * J + lambda_value * D``; the cross re-ranking uses only its order.
    """
    d = np.ascontiguousarray(divide_by_max(np.asarray(dist, dtype=np.float32), axis=0).T)
    rank = top_ranks(d, max(k1 + 1, k2))
    v = reciprocal_weights(d, rank, rank, rank, rank, k1, k2)
    out = np.empty_like(d)
    for rows, s in _min_sums(v, v):
        jac = np.maximum(jaccard_from_min_sums(s), 0.0)
        out[rows] = jac * (1.0 - lambda_value) + d[rows] * lambda_value
    return out


def cross_jaccard(v_qq: sp.csr_matrix, v_qg: sp.csr_matrix, v_gq: sp.csr_matrix, v_gg: sp.csr_matrix
                  ) -> np.ndarray:
    """Jaccard distance [Q, G] between the query rows and the gallery rows of the joint weight matrix
    ``[[V_qq, V_qg], [V_gq, V_gg]]`` after each row is divided by its sum (official ``cal_jaccard_dist``
    on ``v_all_norm``, of which only the query x gallery block is used; not clipped, as there). An
    all-zero row stays zero (distance 1 to everything) where the official code would divide by zero.
    """
    joint = []
    for left, right in ((v_qq, v_qg), (v_gq, v_gg)):
        half = sp.hstack([left, right], format="csr")
        total = np.asarray(half.sum(axis=1)).ravel()
        half.data /= np.where(total > 0, total, 1.0)[np.repeat(np.arange(half.shape[0]), np.diff(half.indptr))]
        joint.append(half)
    out = np.empty((v_qq.shape[0], v_gg.shape[0]), dtype=np.float64)
    for rows, s in _min_sums(*joint):
        out[rows] = jaccard_from_min_sums(s)
    return out


def neighbour_pooled_distance(query: np.ndarray, gallery: np.ndarray, query_rank: np.ndarray,
                              gallery_rank: np.ndarray, k: int, normalise: str = "columns") -> np.ndarray:
    """Official ``original_dist_pool`` (unused by its ``re_ranking_cross``: the call is commented out):
    each feature replaced by the mean of its first k intra-modality neighbours (self included, in the
    re-ranked order of ``query_rank`` / ``gallery_rank``), the squared distance of those means, divided
    by its column maxima (``normalise="rows"``: row maxima). [Q, G] float32.
    """
    def pooled(x: np.ndarray, rank: np.ndarray) -> np.ndarray:
        mean = _membership(rank, k, x.shape[0])
        return np.asarray(mean @ x, dtype=np.float32) / np.float32(min(k, x.shape[0]))

    d = squared_distances(pooled(query, query_rank), pooled(gallery, gallery_rank))
    return divide_by_max(d, axis=0 if normalise == "columns" else 1)


def cross_modality_rerank(
    query: np.ndarray,
    gallery: np.ndarray,
    *,
    k: int = OFFICIAL_K,
    eta: float = OFFICIAL_ETA,
    intra_k2: int = OFFICIAL_INTRA_K2,
    intra_lambda: float = OFFICIAL_INTRA_LAMBDA,
    original: str = "plain",
    normalise: str = "columns",
) -> np.ndarray:
    """Re-ranked query x gallery distances [Q, G] float32 (smaller = closer), official ``re_ranking_cross``.

    Args:
        query: [Q, D] features of the query modality (SYSU: infrared); rows are L2-normalised here, as
            the official ``evaluator.test`` does before computing its distances.
        gallery: [G, D] features of the other modality.
        k: official ``k`` (default 20; its evaluator passes 15, :data:`OFFICIAL_TEST_K`): the k of every
            k-reciprocal set, the width of the cross query expansion and the k1 of the intra step.
        eta: official ``eta_value``: weight of the original distance against the Jaccard distance.
        intra_k2, intra_lambda: ``k2`` and ``lambda_value`` of the intra-modality step (official defaults
            6 and 0.3, not exposed by ``re_ranking_cross``).
        original: the distance blended with the Jaccard one: ``"plain"`` (official: the squared distance of
            the features, not rescaled) or ``"pooled"`` (the commented-out :func:`neighbour_pooled_distance`).
        normalise: ``"columns"`` (official): every distance matrix is divided by its column maxima before
            neighbour lists and weights are taken from it. With very few queries this is degenerate (one
            query: every query-gallery distance becomes 1); ``"rows"`` divides by row maxima instead, so
            each row keeps its plain order (what :func:`rerank_candidates` uses).

    The re-ranked matrix replaces the plain one before CMC/mAP; the two must never be mixed in a table.
    """
    q, g = _features(query, "query"), _features(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise MultError(f"query has dim {q.shape[1]} but gallery has {g.shape[1]}: embed both with one model")
    k = _positive_int(k, "k")
    intra_k2 = _positive_int(intra_k2, "intra_k2")
    eta, intra_lambda = _fraction(eta, "eta"), _fraction(intra_lambda, "intra_lambda")
    original = _choice(original, "original", ORIGINALS)
    axis = 0 if _choice(normalise, "normalise", NORMALISATIONS) == "columns" else 1

    d_qg = squared_distances(q, g)
    d_qq, d_gg = squared_distances(q, q), squared_distances(g, g)
    rank_qq = top_ranks(intra_modality_rerank(d_qq, k1=k, k2=intra_k2, lambda_value=intra_lambda), k + 1)
    rank_gg = top_ranks(intra_modality_rerank(d_gg, k1=k, k2=intra_k2, lambda_value=intra_lambda), k + 1)
    n_qg, n_gq = divide_by_max(d_qg, axis), divide_by_max(np.ascontiguousarray(d_qg.T), axis)
    rank_qg, rank_gq = top_ranks(n_qg, k + 1), top_ranks(n_gq, k + 1)
    v_qq = reciprocal_weights(divide_by_max(d_qq, axis), rank_qq, rank_qq, rank_qq, rank_qq, k, k)
    v_gg = reciprocal_weights(divide_by_max(d_gg, axis), rank_gg, rank_gg, rank_gg, rank_gg, k, k)
    v_qg = reciprocal_weights(n_qg, rank_qg, rank_gq, rank_gg, rank_qq, k, k)
    v_gq = reciprocal_weights(n_gq, rank_gq, rank_qg, rank_qq, rank_gg, k, k)
    jac = cross_jaccard(v_qq, v_qg, v_gq, v_gg)
    if original == "pooled":
        base = neighbour_pooled_distance(q, g, rank_qq, rank_gg, k, normalise)
    else:
        base = d_qg
    return (jac * (1.0 - eta) + base * eta).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# query time


class RerankedCandidates(NamedTuple):
    """``order``: candidate row indices, best first; ``distances``: their re-ranked distances, in that order."""

    order: np.ndarray
    distances: np.ndarray


def rerank_candidates(
    query: np.ndarray,
    candidates: np.ndarray,
    *,
    same_modality: np.ndarray | None = None,
    k: int = OFFICIAL_K,
    eta: float = OFFICIAL_ETA,
) -> RerankedCandidates:
    """Re-rank the N candidates an index returned for one query (:func:`cross_modality_rerank` on the
    small problem).

    The gallery side is the N candidates (their mutual distances give its intra-modality neighbours). The
    query side is the query alone unless ``same_modality`` [M, D] adds other images of the query's
    modality (e.g. more frames of the same person): they become extra query rows, as the other queries
    are in the official evaluation, and only the query's own row is returned. With so few query rows the
    official column-max scaling is degenerate (a single query makes every query-gallery distance 1), so
    here every matrix is divided by its row maxima (``normalise="rows"``), which keeps each row's order.
    With k >= N every set is the whole candidate list. Alone, the query has no neighbours of its own and the
    Jaccard term rests on the candidates' structure only: on the clustered set of tests/test_rerank.py (top-30,
    k=6) that fixes 5 of 16 wrong top matches but breaks 9 of 104 right ones; with the other queries as
    ``same_modality`` it fixes 14 and breaks none. Pass ``same_modality`` where there is one.

    Args:
        query: [D] feature; candidates: [N, D] features of the other modality (L2-normalised here).
        same_modality: optional [M, D] features of the query's modality.
        k, eta: as :func:`cross_modality_rerank`.

    Returns:
        :class:`RerankedCandidates`, ``order`` int64 [N] into ``candidates``, ``distances`` float32 [N].
    """
    q, cands = _features(query, "query", ndim=1), _features(candidates, "candidates")
    extra = q[:0] if same_modality is None else _features(same_modality, "same_modality")
    for name, arr in (("candidates", cands), ("same_modality", extra)):
        if arr.shape[1] != q.shape[1]:
            raise MultError(f"{name} has dim {arr.shape[1]} but query has {q.shape[1]}: embed both with one model")
    dist = cross_modality_rerank(np.concatenate([q, extra]), cands, k=k, eta=eta, normalise="rows")[0]
    order = np.argsort(dist, kind="stable")
    return RerankedCandidates(order, dist[order])

