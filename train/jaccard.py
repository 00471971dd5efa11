"""k-reciprocal Jaccard distance (METHOD.md §5): the sum of minima over shared supports (step 5) and the entry
points ``sparse_jaccard_distance`` / ``jaccard_distance``.

The MULT code calls ClusterContrast's ``compute_jaccard_distance`` every epoch, which loops over samples
in Python and fills dense N x N float32 matrices (2 GB each at SYSU's 22,258 visible images). Here the
same quantities are computed with the same arithmetic (benchmarks/reference_jaccard.py is the
line-by-line rendering it is tested against), but:

* the exact kNN, the k-reciprocal sets, their expansion and the weights are computed blockwise and sparse
  (``mult.train.reciprocal_neighbours``, steps 1-4);
* the sum of minima over shared supports (the inverted-index step) runs over row chunks in numpy.

Only pairs with J < 1 are stored (every other pair has J = 1 exactly), which is all DBSCAN with
eps < 1 can ever use; the same labels come out as from the dense matrix. ``jaccard_distance`` keeps the
dense contract of DESIGN.md for callers that want it. Torch keeps its default thread count.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from mult.errors import MultError
from mult.timing import Stopwatch
from mult.train.reciprocal_neighbours import (
    expanded_sets,
    k_reciprocal_sets,
    knn_self_first,
    pair_similarities,
    query_expansion,
    softmax_weights,
)

#: (row, shared column, other row) triples per chunk of the sum-of-minima step (~100 MB of temporaries).
TRIPLES_PER_CHUNK = 4_000_000
#: Cells of the per-chunk dense accumulator: 2 MB of float64, so the scattered adds stay in L2 cache.
ACCUMULATOR_CELLS = 1 << 18
#: Entries moved per step when the symmetric matrix is assembled (bounds the position arrays).
COPY_CHUNK = 4_000_000
#: Rows per step when a sparse matrix is expanded into a dense one.
DENSE_CHUNK_ROWS = 1024

Timings = dict[str, float]


def as_feature_tensor(
    x: np.ndarray | torch.Tensor, device: torch.device | str | None = None
) -> torch.Tensor:
    """``x`` (features, or labels) as a torch tensor, without a copy where it can be: a tensor is detached and
    stays on its device, an array is wrapped by ``torch.from_numpy`` (on the CPU); with ``device`` it is then
    moved there. dtype and shape are kept (callers check them). The one conversion at the entry of every
    pseudo-labelling function that takes numpy or torch (Jaccard, centres, the associations), so that features
    extracted on CUDA are labelled there.
    """
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return t if device is None else t.to(device)


def _unit_rows(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 tensor (on the features' device) with unit rows; rejects bad input.

    Already-normalised float32 input (what the feature extractor produces) is used without a copy:
    at SYSU scale a copy is 180 MB.
    """
    x = as_feature_tensor(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MultError(f"features must be a non-empty [N, D] matrix, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise MultError(f"features must be floating point, got dtype {x.dtype}")
    x = x.to(torch.float32)
    norms = torch.linalg.vector_norm(x, dim=1)  # NaN/Inf anywhere in a row makes its norm non-finite
    if not bool(torch.isfinite(norms).all()):
        raise MultError("features contain NaN or Inf (or values too large to square); check the extractor")
    if bool(((norms - 1.0).abs() > 1e-5).any()):
        x = x / norms.clamp_min(1e-12)[:, None]
    return x.contiguous()


def _check_ks(n: int, k1: int, k2: int) -> None:
    if not (isinstance(k1, int | np.integer) and isinstance(k2, int | np.integer)) or k1 < 1 or k2 < 1:
        raise MultError(f"k1 and k2 must be positive integers, got k1={k1!r}, k2={k2!r}")
    if k1 > n:
        raise MultError(f"k1={k1} exceeds the number of samples N={n}; use k1 <= N")




def jaccard_from_min_sum(min_sum: np.ndarray) -> np.ndarray:
    """J = 1 - S / (2 - S), clipped at 0, where S = sum_k min(V_ik, V_jk) (METHOD.md §5 step 5).

    Rows of V sum to 1, so 2 - S is |V_i| + |V_j| - S, the fuzzy-set union.
    """
    return np.maximum(1.0 - min_sum / (2.0 - min_sum), 0.0)


def _upper_jaccard(v: sp.csr_matrix, limit: float) -> sp.csr_matrix:
    """Jaccard distance for the pairs j >= i whose V rows share support and whose J is below ``limit``
    (or at most ``limit`` when it is < 1); float32 CSR with sorted indices, J_ii = 0 first in each row.

    Inverted index = V's CSC form, rows ascending in each column. For an entry (i, k) of V, the rows
    j >= i holding column k are one contiguous run of the CSC arrays, starting at (i, k)'s own
    position, so the triples (i, j, k) are enumerated with repeat/arange, min(V_ik, V_jk) is summed per
    (i, j) by ``bincount`` into a small dense accumulator (row chunk x columns >= chunk start), and the
    non-zero cells are the output.
    """
    n, nnz = v.shape[0], v.nnz
    by_col = np.argsort(v.indices, kind="stable")  # CSR entry order -> CSC order (rows stay sorted)
    row_of = np.repeat(np.arange(n, dtype=np.int64), np.diff(v.indptr))
    csc_rows, csc_data = row_of[by_col], v.data[by_col]
    col_end = np.cumsum(np.bincount(v.indices, minlength=n))
    csc_pos = np.empty(nnz, dtype=np.int64)
    csc_pos[by_col] = np.arange(nnz)
    fan_out = col_end[v.indices] - csc_pos  # triples generated by each entry: rows j >= i in its column
    del by_col
    row_triples = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_of, weights=fan_out, minlength=n).astype(np.int64), out=row_triples[1:])
    counter = np.arange(TRIPLES_PER_CHUNK + int(np.diff(row_triples).max()), dtype=np.int64)

    out_indptr = np.zeros(n + 1, dtype=np.int64)
    out_indices: list[np.ndarray] = []
    out_data: list[np.ndarray] = []
    start = 0
    while start < n:
        width = n - start  # columns >= start
        stop = int(np.searchsorted(row_triples, row_triples[start] + TRIPLES_PER_CHUNK, side="right")) - 1
        stop = min(max(stop, start + 1), start + max(1, ACCUMULATOR_CELLS // width), n)
        lo, hi = v.indptr[start], v.indptr[stop]
        reps = fan_out[lo:hi]
        total = int(row_triples[stop] - row_triples[start])
        pos = np.repeat(csc_pos[lo:hi] - (np.cumsum(reps) - reps), reps)
        pos += counter[:total]
        mins = np.minimum(np.repeat(v.data[lo:hi], reps), csc_data[pos])
        cell = np.repeat((row_of[lo:hi] - start) * width - start, reps)
        cell += csc_rows[pos]
        acc = np.bincount(cell, weights=mins, minlength=(stop - start) * width)
        flat = np.flatnonzero(acc.view(np.int64) != 0)  # sums of positive weights: non-zero bits
        local_row, col = np.divmod(flat, width)
        col += start
        jac = jaccard_from_min_sum(acc[flat]).astype(np.float32)
        jac[col == local_row + start] = 0.0  # J_ii = 0 exactly (a row of V sums to 1 +- rounding)
        keep = np.flatnonzero(jac <= limit if limit < 1.0 else jac < 1.0)
        out_indices.append(col[keep].astype(np.int32))
        out_data.append(jac[keep])
        out_indptr[start + 1 : stop + 1] = np.bincount(local_row[keep], minlength=stop - start)
        start = stop
    np.cumsum(out_indptr, out=out_indptr)
    upper = sp.csr_matrix(
        (np.concatenate(out_data), np.concatenate(out_indices), out_indptr), shape=(n, n)
    )
    upper.has_sorted_indices = True
    return upper


def _scatter_rows(
    part: sp.csr_matrix, run_start: np.ndarray, indices: np.ndarray, data: np.ndarray
) -> None:
    """Copy each row of ``part`` to ``indices``/``data`` starting at ``run_start[row]``, a few million
    entries at a time so the position arrays stay small."""
    n = part.shape[0]
    row = 0
    while row < n:
        stop = int(np.searchsorted(part.indptr, part.indptr[row] + COPY_CHUNK, side="right")) - 1
        stop = min(max(stop, row + 1), n)
        lo, hi = int(part.indptr[row]), int(part.indptr[stop])
        dest = np.repeat(run_start[row:stop] - part.indptr[row:stop], np.diff(part.indptr[row : stop + 1]))
        dest += np.arange(lo, hi, dtype=dest.dtype)
        indices[dest] = part.indices[lo:hi]
        data[dest] = part.data[lo:hi]
        row = stop


def sparse_jaccard_from_weights(v: sp.csr_matrix, max_distance: float | None = None) -> sp.csr_matrix:
    """Jaccard distances of the pairs whose (query-expanded) V rows share support: CSR, float32.

    J_ii = 0 is stored explicitly, and so is any other J that is exactly 0. Pairs whose shared mass is
    below float32 resolution have J = 1 in float32 and are dropped like every other J = 1 pair; with
    ``max_distance`` only pairs with J <= max_distance are kept.

    Only the upper triangle is computed. Row i of the result = row i of its transpose (columns <= i,
    diagonal last) followed by row i of the upper triangle without the diagonal: two sorted runs, so
    the result is canonical. Each diagonal entry is written twice, to the same slot, with the same 0.
    """
    n = v.shape[0]
    upper = _upper_jaccard(v, 1.0 if max_distance is None else max_distance)
    counts_u = np.diff(upper.indptr)
    if np.any(counts_u == 0) or np.any(upper.indices[upper.indptr[:-1]] != np.arange(n)):
        raise AssertionError("every row of the upper triangle must start with its diagonal entry")
    lower = upper.tocsc()  # CSC of the upper triangle == CSR of the lower one, rows sorted
    counts_l = np.diff(lower.indptr)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts_l + counts_u - 1, out=indptr[1:])
    index_dtype = np.int32 if indptr[-1] < 2**31 else np.int64
    indices = np.empty(int(indptr[-1]), dtype=index_dtype)
    data = np.empty(int(indptr[-1]), dtype=np.float32)
    _scatter_rows(lower, indptr[:-1], indices, data)
    del lower
    _scatter_rows(upper, indptr[:-1] + counts_l - 1, indices, data)
    del upper
    full = sp.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=(n, n))
    full.has_sorted_indices = True
    return full


def sparse_jaccard_distance(
    features: np.ndarray | torch.Tensor,
    k1: int = 30,
    k2: int = 6,
    *,
    max_distance: float | None = None,
    timings: Timings | None = None,
) -> sp.csr_matrix:
    """k-reciprocal Jaccard distance (METHOD.md §5) as a CSR matrix holding only pairs with J < 1.

    Entries missing from the matrix have J = 1. The diagonal is stored as explicit zeros (DBSCAN counts
    a point as its own neighbour only if its entry exists), as is any other J = 0. ``max_distance``
    (in [0, 1)) keeps only pairs with J <= max_distance: with DBSCAN's eps it gives the same labels
    from a far smaller matrix, for callers that need nothing else. Pass a dict as ``timings`` to
    receive the seconds spent in each stage.
    """
    if max_distance is not None and not (
        isinstance(max_distance, int | float | np.number) and 0 <= max_distance < 1
    ):
        raise MultError(f"max_distance must be in [0, 1) or None, got {max_distance!r}")
    clock = Stopwatch(into=timings)
    x = _unit_rows(features)
    n = x.shape[0]
    _check_ks(n, k1, k2)
    rank, sim = knn_self_first(x, k1)
    clock("knn")
    recip = k_reciprocal_sets(rank, k1)
    recip_half = k_reciprocal_sets(rank, int(np.around(k1 / 2)))
    pattern = expanded_sets(recip, recip_half)
    del recip, recip_half
    clock("reciprocal")
    v = softmax_weights(pattern, pair_similarities(x, pattern, rank, sim))
    del x, pattern, sim
    clock("weights")
    v = query_expansion(v, rank, k2)
    clock("query_expansion")
    jac = sparse_jaccard_from_weights(v, max_distance)
    clock("min_sum")
    return jac


def jaccard_distance(features: np.ndarray | torch.Tensor, k1: int = 30, k2: int = 6) -> np.ndarray:
    """Dense [N, N] float32 k-reciprocal Jaccard distance (METHOD.md §5; DESIGN.md contract).

    Same values as ``sparse_jaccard_distance``, with the absent pairs filled with 1. At SYSU scale the
    dense matrix alone is ~2 GB: the trainer should use the sparse form.
    """
    jac = sparse_jaccard_distance(features, k1, k2)
    dense = np.ones(jac.shape, dtype=np.float32)
    for r0 in range(0, jac.shape[0], DENSE_CHUNK_ROWS):
        part = jac[r0 : r0 + DENSE_CHUNK_ROWS]
        rows = np.repeat(np.arange(part.shape[0]), np.diff(part.indptr))
        dense[r0 : r0 + part.shape[0]][rows, part.indices] = part.data
    return dense

