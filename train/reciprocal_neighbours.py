"""k-reciprocal neighbour sets and their weights: steps 1-4 of the Jaccard distance (METHOD.md §5).

The exact kNN is a blocked float32 GEMM + top-k in torch that visits each pair of row blocks once (the
similarity matrix is symmetric), never holding more than one block; the k-reciprocal sets, the 2/3-overlap
expansion and query expansion are sparse-matrix operations. ``mult.train.jaccard`` turns the weights into
distances (step 5).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

#: Rows per GEMM block in the kNN: a 2048 x 2048 float32 block is 16 MB and keeps MKL near peak.
KNN_BLOCK = 2048
#: Pairs per chunk when a missing x_i . x_j has to be computed (8 MB of gathered rows).
DOT_CHUNK = 1024


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
