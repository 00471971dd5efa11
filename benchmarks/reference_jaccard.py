"""The straightforward dense k-reciprocal Jaccard distance (METHOD.md §5), kept as the yardstick.

This is the algorithm of ClusterContrast's ``compute_jaccard_distance`` as the MULT code runs it
(``search_option=3``: exact faiss ``IndexFlatL2`` on the CPU, then per-sample Python loops over dense
N x N float32 matrices). It is deliberately slow and memory-hungry: the tests and
``benchmarks/bench_jaccard.py`` compare ``mult.train.clustering`` against it, so it must stay a plain,
line-by-line rendering of the published procedure rather than an optimised one.
"""

from __future__ import annotations

import numpy as np


def _as_unit_rows(features) -> np.ndarray:
    """float32 numpy copy of ``features`` (numpy or torch) with L2-normalised rows."""
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    x = np.ascontiguousarray(features, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def reference_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest rows of ``x`` to each row (itself included), nearest first, via faiss."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, rank = index.search(x, k)
    return rank.astype(np.int64)


def k_reciprocal_neighbours(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """Neighbours j among i's first k+1 list entries whose own first k+1 entries contain i.

    ``rank`` holds only k1 columns, so for k = k1 the slice ``:k+1`` silently keeps k1 entries; the
    reference code relies on exactly this.
    """
    forward = rank[i, : k + 1]
    backward = rank[forward, : k + 1]
    return forward[np.any(backward == i, axis=1)]


def reference_jaccard_distance(features, k1: int = 30, k2: int = 6) -> np.ndarray:
    """Dense [N, N] float32 k-reciprocal Jaccard distance, ClusterContrast style (METHOD.md §5)."""
    x = _as_unit_rows(features)
    n = x.shape[0]
    rank = reference_knn(x, k1)
    k1_half = int(np.around(k1 / 2))

    recip = [k_reciprocal_neighbours(rank, i, k1) for i in range(n)]
    recip_half = [k_reciprocal_neighbours(rank, i, k1_half) for i in range(n)]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        base = recip[i]
        expansion = base
        for candidate in base:
            cand_set = recip_half[candidate]
            if len(np.intersect1d(cand_set, base)) > 2 / 3 * len(cand_set):
                expansion = np.append(expansion, cand_set)
        expansion = np.unique(expansion)
        logits = -(2.0 - 2.0 * (x[expansion] @ x[i]))
        weights = np.exp(logits - logits.max())
        v[i, expansion] = weights / weights.sum()

    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = np.mean(v[rank[i, :k2]], axis=0)
        v = v_qe
        del v_qe

    inv_index = [np.where(v[:, col] != 0)[0] for col in range(n)]
    jaccard = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        temp_min = np.zeros(n, dtype=np.float32)
        nonzero = np.where(v[i] != 0)[0]
        for col in nonzero:
            rows = inv_index[col]
            temp_min[rows] += np.minimum(v[i, col], v[rows, col])
        jaccard[i] = 1.0 - temp_min / (2.0 - temp_min)
    jaccard[jaccard < 0] = 0.0
    return jaccard


def clustered_features(
    n: int, dim: int = 2048, *, samples_per_id: float = 30.0, seed: int = 0
) -> np.ndarray:
    """Re-ID-like [n, dim] float32 unit features: identity clusters with anisotropic, shared nuisance.

    Each sample = a direction shared by everybody (real embeddings are far from isotropic) + its
    identity's centre + an identity-and-camera "view" offset (the same person looks different to each
    camera, which is what splits real clusters) + a camera offset + low-rank "pose/lighting" noise with
    decaying scales (anisotropic and shared across identities, so neighbourhoods of different people
    overlap) + isotropic noise. Identity sizes vary (Gamma-distributed). Deterministic by seed. With the
    defaults DBSCAN (eps 0.6, k1 30, k2 6) finds about 1.2 clusters per identity and a few % outliers,
    close to SYSU-MM01's early-epoch statistics (METHOD.md §5).
    """
    rng = np.random.default_rng(seed)
    n_ids = max(1, int(round(n / samples_per_id)))
    sizes = rng.gamma(4.0, 1.0, size=n_ids)
    ids = rng.choice(n_ids, size=n, p=sizes / sizes.sum())
    n_cams, rank_nuisance = 6, 48

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    common = unit(rng.standard_normal(dim))
    centres = unit(rng.standard_normal((n_ids, dim)))
    cam_dirs = unit(rng.standard_normal((n_cams, dim)))
    basis = unit(rng.standard_normal((rank_nuisance, dim)))
    cams = rng.integers(0, n_cams, size=n)
    views, view_of = np.unique(ids * n_cams + cams, return_inverse=True)
    view_dirs = unit(rng.standard_normal((views.size, dim)))
    coeff = rng.standard_normal((n, rank_nuisance)) * (0.25 / np.sqrt(1.0 + np.arange(rank_nuisance)))
    x = (
        common
        + 0.7 * centres[ids]
        + 0.8 * view_dirs[view_of]
        + 0.45 * cam_dirs[cams]
        + coeff @ basis
        + 1.2 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    )
    return unit(x).astype(np.float32)
