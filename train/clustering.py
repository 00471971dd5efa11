"""Pseudo-labels: k-reciprocal Jaccard distance, DBSCAN and cluster centres (METHOD.md §5, §2, §11).

The MULT code calls ClusterContrast's ``compute_jaccard_distance`` every epoch, which loops over samples
in Python and fills dense N x N float32 matrices (2 GB each at SYSU's 22,258 visible images). Here the
same quantities are computed with the same arithmetic (benchmarks/reference_jaccard.py is the
line-by-line rendering it is tested against), but:

* the exact kNN is a blocked float32 GEMM + top-k in torch that visits each pair of row blocks once
  (the similarity matrix is symmetric), never holding more than one block;
* k-reciprocal sets, the 2/3-overlap expansion and query expansion are sparse-matrix operations;
* the sum of minima over shared supports (the inverted-index step) runs over row chunks in numpy.

Only pairs with J < 1 are stored (every other pair has J = 1 exactly), which is all DBSCAN with
eps < 1 can ever use; the same labels come out as from the dense matrix. ``jaccard_distance`` keeps the
dense contract of DESIGN.md for callers that want it. Torch keeps its default thread count.
"""

from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp
import torch

from mult.errors import MultError

#: Rows per GEMM block in the kNN: a 2048 x 2048 float32 block is 16 MB and keeps MKL near peak.
KNN_BLOCK = 2048
#: Pairs per chunk when a missing x_i . x_j has to be computed (8 MB of gathered rows).
DOT_CHUNK = 1024
#: (row, shared column, other row) triples per chunk of the sum-of-minima step (~100 MB of temporaries).
TRIPLES_PER_CHUNK = 4_000_000
#: Cells of the per-chunk dense accumulator: 2 MB of float64, so the scattered adds stay in L2 cache.
ACCUMULATOR_CELLS = 1 << 18
#: Entries moved per step when the symmetric matrix is assembled (bounds the position arrays).
COPY_CHUNK = 4_000_000
#: Rows per step when a sparse matrix is expanded into a dense one.
DENSE_CHUNK_ROWS = 1024

Timings = dict[str, float]


def _unit_rows(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 tensor (on the features' device) with unit rows; rejects bad input.

    Already-normalised float32 input (what the feature extractor produces) is used without a copy:
    at SYSU scale a copy is 180 MB.
    """
    if isinstance(features, torch.Tensor):
        x = features.detach()
    else:
        x = torch.from_numpy(np.asarray(features))
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


def _merge_topk(
    best_val: torch.Tensor, best_idx: torch.Tensor, rows: slice, sims: torch.Tensor, col0: int
) -> None:
    """Fold the top entries of each row of ``sims`` (columns offset by col0) into the running top-k."""
    k = best_val.shape[1]
    val, idx = torch.topk(sims, min(k, sims.shape[1]), dim=1)
    val = torch.cat([best_val[rows], val], dim=1)
    idx = torch.cat([best_idx[rows], idx + col0], dim=1)
    val, pos = torch.topk(val, k, dim=1)
    best_val[rows] = val
    best_idx[rows] = torch.gather(idx, 1, pos)


def knn_self_first(x: torch.Tensor, k: int, block: int = KNN_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each unit row of ``x`` by cosine, i.e. by L2 (METHOD.md §5 step 1).

    Returns ``(rank [N, k] int64, sim [N, k] float32)``, nearest first, with the sample itself in column
    0 (the reference's faiss ``IndexFlatL2`` puts it there too except for exact duplicates, where its
    order is arbitrary). Each unordered pair of row blocks is multiplied once and the product serves
    both blocks, halving the GEMM work; memory stays O(block^2 + N k). Runs on x's device, in full
    float32 (TF32 would reorder near-ties).
    """
    n = x.shape[0]
    k = min(k, n)
    best_val = torch.full((n, k), -math.inf, dtype=torch.float32, device=x.device)
    best_idx = torch.zeros((n, k), dtype=torch.int64, device=x.device)
    self_sim = torch.empty(n, dtype=torch.float32, device=x.device)
    starts = range(0, n, block)
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.inference_mode():
            for a in starts:
                rows_a = slice(a, min(a + block, n))
                for b in starts[a // block :]:
                    rows_b = slice(b, min(b + block, n))
                    sims = x[rows_a] @ x[rows_b].T
                    if a == b:
                        self_sim[rows_a] = sims.diagonal()
                        sims.fill_diagonal_(math.inf)  # self first, whatever the rounding of x_i . x_i
                    _merge_topk(best_val, best_idx, rows_a, sims, b)
                    if a != b:
                        _merge_topk(best_val, best_idx, rows_b, sims.T.contiguous(), a)
            best_val[:, 0] = self_sim  # the +inf marker back to the computed x_i . x_i (~1)
    finally:
        torch.set_float32_matmul_precision(precision)
    return best_idx.cpu().numpy(), best_val.cpu().numpy()


def _neighbour_matrix(rank: np.ndarray, width: int) -> sp.csr_matrix:
    """Boolean CSR A with A[i, j] = True iff j is among the first ``width`` entries of i's kNN list."""
    n = rank.shape[0]
    cols = rank[:, :width]
    indptr = np.arange(0, n * width + 1, width, dtype=np.int64)
    a = sp.csr_matrix((np.ones(cols.size, dtype=bool), cols.ravel(), indptr), shape=(n, n))
    a.sort_indices()
    return a


def k_reciprocal_sets(rank: np.ndarray, k: int) -> sp.csr_matrix:
    """R[i, j] = True iff j is in i's first k+1 neighbours and i in j's (METHOD.md §5 step 2).

    Mirrors ClusterContrast's ``k_reciprocal_neigh``: the list slice is ``[:k+1]`` of a kNN list that
    holds only k1 columns, so for k = k1 it really means the first k1 entries (self included).
    """
    a = _neighbour_matrix(rank, min(k + 1, rank.shape[1]))
    return a.multiply(a.T).tocsr()


def expanded_sets(recip: sp.csr_matrix, recip_half: sp.csr_matrix) -> sp.csr_matrix:
    """k-reciprocal expansion (METHOD.md §5 step 2): E(i) = R(i) plus every half-set R_half(c), c in R(i),
    that shares more than 2/3 of its members with R(i). Boolean CSR with sorted column indices.
    """
    r = recip.astype(np.int32)
    overlap = (r @ recip_half.T.astype(np.int32)).multiply(r).tocsr()  # |R_half(c) & R(i)| on R's pattern
    overlap.sort_indices()
    half_size = np.diff(recip_half.indptr)
    # Same float test as the reference (len(intersection) > 2/3 * len(candidate set)).
    overlap.data = overlap.data > 2 / 3 * half_size[overlap.indices]
    overlap.eliminate_zeros()
    grown = r + overlap.astype(np.int32) @ recip_half.astype(np.int32)
    grown = grown.astype(bool).tocsr()
    grown.sort_indices()
    return grown


def _dot_pairs(x: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """x_i . x_j for pairs sorted by row, in chunks; each chunk's rows are one contiguous slice of x,
    so only the column side is gathered from memory. On the CPU this runs in numpy: thousands of tiny
    multi-threaded torch calls stall badly when other processes share the cores."""
    out = np.empty(rows.size, dtype=np.float32)
    on_cpu = x.device.type == "cpu"
    xs = x.numpy() if on_cpu else x
    for s in range(0, rows.size, DOT_CHUNK):
        r, c = rows[s : s + DOT_CHUNK], cols[s : s + DOT_CHUNK]
        block = xs[int(r[0]) : int(r[-1]) + 1]
        if on_cpu:
            out[s : s + DOT_CHUNK] = np.einsum("ij,ij->i", block[r - r[0]], xs[c])
        else:
            local, other = (torch.from_numpy(a).to(x.device) for a in (r - r[0], c))
            out[s : s + DOT_CHUNK] = (block[local] * xs[other]).sum(dim=1).cpu().numpy()
    return out


def pair_similarities(
    x: torch.Tensor, pattern: sp.csr_matrix, rank: np.ndarray, knn_sim: np.ndarray
) -> np.ndarray:
    """x_i . x_j on every entry of ``pattern`` (CSR order), float32.

    Most pairs are kNN pairs in one direction or the other, so their value is looked up in the kNN
    output; the rest (neighbours of neighbours brought in by the expansion) are computed.
    """
    n = rank.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(pattern.indptr))
    cols = pattern.indices.astype(np.int64)
    known_keys = (np.arange(n, dtype=np.int64)[:, None] * n + rank).ravel()
    order = np.argsort(known_keys)
    known_keys, known_sim = known_keys[order], knn_sim.ravel()[order]
    sims = np.empty(rows.size, dtype=np.float32)
    missing = np.arange(rows.size)
    for key in (rows * n + cols, cols * n + rows):  # the pair may sit in either endpoint's list
        wanted = key[missing]
        pos = np.minimum(np.searchsorted(known_keys, wanted), known_keys.size - 1)
        hit = known_keys[pos] == wanted
        sims[missing[hit]] = known_sim[pos[hit]]
        missing = missing[~hit]
    sims[missing] = _dot_pairs(x, rows[missing], cols[missing])
    return sims


def softmax_weights(pattern: sp.csr_matrix, sims: np.ndarray) -> sp.csr_matrix:
    """V[i, j] = softmax over j in E(i) of -(2 - 2 x_i . x_j) (METHOD.md §5 step 3).

    ``sims`` are the cosines on ``pattern``'s entries in CSR order; 2 - 2cos is the squared distance of
    unit vectors. Computed in float64 (the reference uses float32; the difference is ~1e-7). Every row
    of ``pattern`` is non-empty (i is always in E(i)), which the segment reductions rely on.
    """
    logits = -(2.0 - 2.0 * sims.astype(np.float64))
    starts = pattern.indptr[:-1]
    row_of = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
    weights = np.exp(logits - np.maximum.reduceat(logits, starts)[row_of])
    weights /= np.add.reduceat(weights, starts)[row_of]
    return sp.csr_matrix((weights, pattern.indices, pattern.indptr), shape=pattern.shape)


def query_expansion(v: sp.csr_matrix, rank: np.ndarray, k2: int) -> sp.csr_matrix:
    """V_qe[i] = mean of V over i's first k2 kNN entries, self included (METHOD.md §5 step 4).

    With k2 = 1 the reference skips the step; the mean over self alone is the same thing.
    """
    n = rank.shape[0]
    width = min(k2, rank.shape[1])
    if width == 1:
        return v
    indptr = np.arange(0, n * width + 1, width, dtype=np.int64)
    q = sp.csr_matrix(
        (np.full(n * width, 1.0 / width), rank[:, :width].ravel(), indptr), shape=(n, n)
    )
    out = (q @ v).tocsr()
    out.sort_indices()
    return out


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
    clock = _Stopwatch(timings)
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


def dbscan_cluster(
    distance: np.ndarray | sp.spmatrix | sp.sparray, eps: float, min_samples: int = 4
) -> np.ndarray:
    """DBSCAN pseudo-labels (int64, -1 = outlier) from a precomputed distance (METHOD.md §5).

    ``sklearn.cluster.DBSCAN(eps, min_samples, metric='precomputed')`` as in the MULT code. A sparse
    matrix counts only its stored entries as candidate neighbours, which matches the dense matrix when
    every absent pair is at distance 1 and eps < 1 (the Jaccard case).
    """
    from sklearn.cluster import DBSCAN

    if not isinstance(eps, int | float | np.number) or not 0 < eps < math.inf:
        raise MultError(f"DBSCAN eps must be a positive number, got {eps!r}")
    if not isinstance(min_samples, int | np.integer) or min_samples < 1:
        raise MultError(f"DBSCAN min_samples must be a positive integer, got {min_samples!r}")
    if distance.ndim != 2 or distance.shape[0] != distance.shape[1]:
        raise MultError(f"distance must be a square [N, N] matrix, got shape {distance.shape}")
    if sp.issparse(distance):
        if eps >= 1:
            raise MultError(
                f"eps={eps} >= 1 with a sparse Jaccard matrix: absent pairs (J = 1) would be neighbours; "
                "use eps < 1 or a dense matrix"
            )
        distance = _neighbour_graph(sp.csr_matrix(distance), eps)
    model = DBSCAN(eps=float(eps), min_samples=int(min_samples), metric="precomputed", n_jobs=-1)
    return model.fit_predict(distance).astype(np.int64)


def _entries_where(matrix: sp.csr_matrix, keep: np.ndarray) -> sp.csr_matrix:
    """The CSR matrix restricted to the stored entries flagged in ``keep`` (explicit zeros survive)."""
    kept = np.flatnonzero(keep)
    indptr = np.searchsorted(kept, matrix.indptr)  # kept entries before each row boundary
    return sp.csr_matrix((matrix.data[kept], matrix.indices[kept], indptr), shape=matrix.shape)


def _neighbour_graph(distance: sp.csr_matrix, eps: float) -> sp.csr_matrix:
    """Only the stored entries <= eps, each row ordered by distance: what sklearn's radius search
    reads. Entries > eps can never be neighbours, and pre-sorting (vectorised) spares sklearn its
    per-row Python loop over the whole graph."""
    graph = _entries_where(distance, distance.data <= eps)
    row_of = np.repeat(np.arange(graph.shape[0]), np.diff(graph.indptr))
    order = np.lexsort((graph.data, row_of))
    return sp.csr_matrix((graph.data[order], graph.indices[order], graph.indptr), shape=graph.shape)


def cluster_centres(
    features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> np.ndarray | torch.Tensor:
    """[K, D] mean feature of each cluster 0..K-1, outliers (-1) excluded, NOT re-normalised (METHOD.md §2).

    Returns the input's kind: numpy float32 for numpy features, a float32 tensor on the features'
    device for torch features. One ``index_add_`` over all rows: outliers go to a spare row K that is
    dropped, so no masked copy of the features is made.
    """
    is_torch = isinstance(features, torch.Tensor)
    x = features.detach() if is_torch else torch.from_numpy(np.asarray(features))
    lab = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    if x.ndim != 2 or lab.ndim != 1 or lab.shape[0] != x.shape[0]:
        raise MultError(
            f"features [N, D] and labels [N] disagree: shapes {tuple(x.shape)} and {tuple(lab.shape)}"
        )
    if lab.is_floating_point() or lab.is_complex() or lab.dtype == torch.bool:
        raise MultError(f"labels must be integers (cluster ids, -1 = outlier), got dtype {lab.dtype}")
    lab = lab.to(device=x.device, dtype=torch.int64)
    if lab.numel() and int(lab.min()) < -1:
        raise MultError(f"labels must be >= -1 (-1 = outlier), got {int(lab.min())}")
    k = int(lab.max()) + 1 if lab.numel() else 0
    slot = torch.where(lab >= 0, lab, k)
    sums = torch.zeros((k + 1, x.shape[1]), dtype=torch.float32, device=x.device)
    sums.index_add_(0, slot, x.to(torch.float32))
    counts = torch.bincount(slot, minlength=k + 1)[:k]
    if bool((counts == 0).any()):
        empty = int(torch.nonzero(counts == 0)[0])
        raise MultError(f"cluster label {empty} has no members; labels must be 0..K-1 (and -1 for outliers)")
    centres = sums[:k] / counts[:, None].to(torch.float32)
    return centres if is_torch else centres.numpy()


class _Stopwatch:
    """Records seconds since the previous call under a stage name, if a dict was given."""

    def __init__(self, sink: Timings | None) -> None:
        self.sink, self.last = sink, time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        if self.sink is not None:
            self.sink[stage] = self.sink.get(stage, 0.0) + now - self.last
        self.last = now
