"""The OT-only and PGM-style Hungarian association baselines (METHOD.md §13): one-hot labels, no propagation.

Both start from the DBSCAN labels with every outlier given its nearest centre; they differ in how an
instance gets its label in the other modality's label space. They run on the features' device (numpy: the
CPU) and return numpy, like MULT.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mult.errors import MultError
from mult.train.clustering import as_feature_tensor
from mult.train.label_transfer import LabelTransferResult, cross_modality_labels, one_hot
from mult.train.sinkhorn import squared_distances
from mult.train.transfer_inputs import ArrayLike, checked_inputs


def nearest_centre(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the closest raw centre by squared Euclidean distance D (METHOD.md §4.1)."""
    return squared_distances(features, centres).argmin(1)


def filled_labels(features: torch.Tensor, labels: np.ndarray, centres: torch.Tensor) -> torch.Tensor:
    """DBSCAN labels with every outlier (-1) replaced by its nearest centre."""
    lab = as_feature_tensor(labels, features.device)
    out = lab.clone()
    outliers = lab < 0
    if bool(outliers.any()):
        out[outliers] = nearest_centre(features[outliers], centres)
    return out


def filled_inputs(
    feats_v: ArrayLike, feats_r: ArrayLike, labels_v: ArrayLike, labels_r: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Baseline inputs: (feats_vis, feats_ir, filled_vis, filled_ir, centres_vis, centres_ir), the filled labels
    being the DBSCAN labels with every outlier given its nearest centre (``filled_labels``)."""
    feats_vis, feats_ir, labels_vis, labels_ir, centres_vis, centres_ir = checked_inputs(
        feats_v, feats_r, labels_v, labels_r)
    filled_vis = filled_labels(feats_vis, labels_vis, centres_vis)
    filled_ir = filled_labels(feats_ir, labels_ir, centres_ir)
    return feats_vis, feats_ir, filled_vis, filled_ir, centres_vis, centres_ir


def ot_association(
    feats_v: ArrayLike, feats_r: ArrayLike, labels_v: ArrayLike, labels_r: ArrayLike, *, lam: float = 25.0
) -> LabelTransferResult:
    """OT-only baseline (official ``optimal_transport``), no propagation, all labels one-hot:

    * intra-modality labels: the DBSCAN labels, each outlier assigned to its nearest centre (squared
      Euclidean to the raw centres; the official code would index column -1 instead);
    * cross-modality labels: onehot(argmax of the instance -> other-modality-centre Sinkhorn plan),
      i.e. exactly MULT's initial cross labels (METHOD.md §4.3).
    """
    if not (np.isfinite(lam) and lam > 0):
        raise MultError(f"lam must be a positive number, got {lam!r}")
    with torch.inference_mode():
        feats_vis, feats_ir, filled_vis, filled_ir, centres_vis, centres_ir = filled_inputs(
            feats_v, feats_r, labels_v, labels_r)
        y_vis_to_ir, _ = cross_modality_labels(feats_vis, centres_ir, lam)
        y_ir_to_vis, _ = cross_modality_labels(feats_ir, centres_vis, lam)
        y_vis, y_ir = one_hot(filled_vis, centres_vis.shape[0]), one_hot(filled_ir, centres_ir.shape[0])
    return LabelTransferResult(*(t.cpu().numpy() for t in (y_vis, y_ir_to_vis, y_ir, y_vis_to_ir)),
                               info={"method": "ot"})


def centre_cosines(centres_a: torch.Tensor, centres_b: torch.Tensor) -> torch.Tensor:
    """[Ka, Kb] cosine similarities between the L2-normalised cluster centres of two modalities."""
    return torch.nn.functional.normalize(centres_a, dim=1) @ torch.nn.functional.normalize(centres_b, dim=1).T


def match_clusters(centres_v: torch.Tensor, centres_r: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PGM-style one-to-one cluster matching (official ``PGM_matching``): returns (vis_to_ir [Kv], ir_to_vis [Kr]).

    Cost = 1 / exp(cos) between L2-normalised centres. The larger side's clusters are rows; the cost is
    padded with zero columns to a square and solved with the Hungarian algorithm, so every cluster of the
    smaller side gets exactly one partner. Rows left on padding are re-matched by further Hungarian rounds
    on the real columns (the official code runs one such round, which leaves rows unmatched when the larger
    side has more than twice the clusters); re-matched rows get a partner but are not the partner's match.
    """
    from scipy.optimize import linear_sum_assignment

    cos = centre_cosines(centres_v, centres_r)
    cost = (1.0 / torch.exp(cos)).double().cpu().numpy()
    swap = cost.shape[0] < cost.shape[1]
    if swap:
        cost = cost.T
    rows_n, cols_n = cost.shape
    padded = np.concatenate([cost, np.zeros((rows_n, rows_n - cols_n))], axis=1)
    row_ind, col_ind = linear_sum_assignment(padded)
    row_to_col = np.full(rows_n, -1, dtype=np.int64)
    col_to_row = np.full(cols_n, -1, dtype=np.int64)
    real = col_ind < cols_n
    row_to_col[row_ind[real]] = col_ind[real]
    col_to_row[col_ind[real]] = row_ind[real]
    unmatched = np.sort(row_ind[~real])
    while unmatched.size:
        r, c = linear_sum_assignment(cost[unmatched])
        row_to_col[unmatched[r]] = c
        unmatched = np.setdiff1d(unmatched, unmatched[r])
    return (col_to_row, row_to_col) if swap else (row_to_col, col_to_row)


def hungarian_association(
    feats_v: ArrayLike, feats_r: ArrayLike, labels_v: ArrayLike, labels_r: ArrayLike
) -> LabelTransferResult:
    """PGM-style Hungarian baseline (official ``PGM_matching``), all labels one-hot:

    * outliers first take their nearest centre (squared Euclidean to the raw centres), then
    * intra-modality labels are these filled DBSCAN labels, and
    * an instance's cross-modality label is the partner (``match_clusters``) of its own cluster.
    """
    with torch.inference_mode():
        _, _, filled_vis, filled_ir, centres_vis, centres_ir = filled_inputs(feats_v, feats_r, labels_v, labels_r)
        vis_to_ir, ir_to_vis = match_clusters(centres_vis, centres_ir)
        return linked_cluster_labels(filled_vis, filled_ir, vis_to_ir, ir_to_vis, centres_vis.shape[0],
                                     centres_ir.shape[0], {"method": "hungarian"})


def linked_cluster_labels(
    filled_vis: torch.Tensor, filled_ir: torch.Tensor, vis_to_ir: np.ndarray, ir_to_vis: np.ndarray, k_vis: int,
    k_ir: int, info: dict[str, Any],
) -> LabelTransferResult:
    """One-hot labels from filled cluster labels and cluster-to-cluster links: an instance's cross-modality
    label is its own cluster's partner."""
    y_vis_to_ir = one_hot(as_feature_tensor(vis_to_ir, filled_vis.device)[filled_vis], k_ir)
    y_ir_to_vis = one_hot(as_feature_tensor(ir_to_vis, filled_ir.device)[filled_ir], k_vis)
    y_vis, y_ir = one_hot(filled_vis, k_vis), one_hot(filled_ir, k_ir)
    return LabelTransferResult(*(t.cpu().numpy() for t in (y_vis, y_ir_to_vis, y_ir, y_vis_to_ir)), info=info)
