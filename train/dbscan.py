"""DBSCAN pseudo-labels from a precomputed (dense or sparse Jaccard) distance (METHOD.md §5)."""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from mult.errors import MultError


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
