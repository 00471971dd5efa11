"""Pseudo-label quality against ground truth, for logs and plots only (training never sees the truth).

Within a modality: how well the clusters match identities (ARI, NMI, purity) and how many samples DBSCAN
left out. Across modalities: how often an instance's label in the other modality's label space points at a
cluster whose majority identity is its own.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def cluster_majority_ids(labels: np.ndarray, true_ids: np.ndarray, num_clusters: int) -> np.ndarray:
    """For each cluster 0..K-1, the most frequent true id among its members (-1 for an empty cluster)."""
    keep = labels >= 0
    if not keep.any():
        return np.full(num_clusters, -1)
    ids, id_index = np.unique(true_ids[keep], return_inverse=True)
    counts = np.zeros((num_clusters, ids.size), dtype=np.int64)
    np.add.at(counts, (labels[keep], id_index), 1)
    majority = ids[counts.argmax(axis=1)]
    majority[counts.sum(axis=1) == 0] = -1
    return majority


def clustering_quality(labels: np.ndarray, true_ids: np.ndarray) -> dict[str, float]:
    """ARI/NMI over clustered samples, purity (share of clustered samples whose cluster's majority id is
    theirs), outlier fraction and cluster count. Empty dict when the truth is unknown (ids < 0)."""
    labels, true_ids = np.asarray(labels), np.asarray(true_ids)
    if (true_ids < 0).any():
        return {}
    keep = labels >= 0
    num_clusters = int(labels.max()) + 1 if keep.any() else 0
    result = {"clusters": float(num_clusters), "outliers": float(1.0 - keep.mean())}
    if keep.sum() > 1:
        result["ari"] = float(adjusted_rand_score(true_ids[keep], labels[keep]))
        result["nmi"] = float(normalized_mutual_info_score(true_ids[keep], labels[keep]))
        majority = cluster_majority_ids(labels, true_ids, num_clusters)
        result["purity"] = float((majority[labels[keep]] == true_ids[keep]).mean())
    return result


def cross_label_accuracy(cross_labels: np.ndarray, true_ids: np.ndarray, other_labels: np.ndarray,
                         other_true_ids: np.ndarray) -> float:
    """Share of instances whose label in the OTHER modality's label space names a cluster whose majority
    true id is the instance's own id (e.g. a visible image assigned to the infrared cluster of its person)."""
    num_clusters = int(max(other_labels.max(), cross_labels.max())) + 1
    majority = cluster_majority_ids(other_labels, other_true_ids, num_clusters)
    valid = cross_labels >= 0
    if not valid.any():
        return 0.0
    return float((majority[cross_labels[valid]] == true_ids[valid]).mean())
