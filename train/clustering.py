"""Per-modality clustering (METHOD.md §5, §2): the cluster centres, and the clustering entry points in one place.

The pipeline lives in three modules; its entry points are re-exported here for ``from mult.train.clustering``:

* ``mult.train.reciprocal_neighbours``: kNN, k-reciprocal sets, their expansion and weights (§5 steps 1-4);
* ``mult.train.jaccard``: the Jaccard distance from those weights (§5 step 5), sparse and dense;
* ``mult.train.dbscan``: DBSCAN labels from that distance.
"""

from __future__ import annotations

import numpy as np
import torch

from mult.errors import MultError
from mult.train.dbscan import dbscan_cluster
from mult.train.jaccard import as_feature_tensor, jaccard_distance, sparse_jaccard_distance

__all__ = ["as_feature_tensor", "cluster_centres", "dbscan_cluster", "jaccard_distance", "sparse_jaccard_distance"]


def cluster_centres(
    features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> np.ndarray | torch.Tensor:
    """[K, D] mean feature of each cluster 0..K-1, outliers (-1) excluded, NOT re-normalised (METHOD.md §2).

    Returns the input's kind: numpy float32 for numpy features, a float32 tensor on the features'
    device for torch features. One ``index_add_`` over all rows: outliers go to a spare row K that is
    dropped, so no masked copy of the features is made.
    """
    is_torch = isinstance(features, torch.Tensor)
    x, lab = as_feature_tensor(features), as_feature_tensor(labels)
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
