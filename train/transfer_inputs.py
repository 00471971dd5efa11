"""Checked inputs of a cross-modality association (MULT and the baselines): features, DBSCAN labels, cluster
centres and MULT's numeric parameters, each rejected with one clear ``MultError`` when unusable."""

from __future__ import annotations

import numpy as np
import torch

from mult.errors import MultError
from mult.train.clustering import as_feature_tensor, cluster_centres

ArrayLike = np.ndarray | torch.Tensor


def checked_features(x: ArrayLike, name: str) -> torch.Tensor:
    """Non-empty, finite [N, D] float32 contiguous tensor on the input's device."""
    t = as_feature_tensor(x)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise MultError(f"{name} must be a non-empty [N, D] matrix, got shape {tuple(t.shape)}")
    t = t.to(torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise MultError(f"{name} contains NaN or Inf; check the feature extractor output")
    return t


def checked_labels(labels: ArrayLike, n: int, name: str) -> np.ndarray:
    """int64 DBSCAN labels, one per feature row, -1 (outlier) or 0..K-1, with at least one cluster."""
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise MultError(f"{name} must hold one label per feature row ({n}), got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise MultError(f"{name} must be integer DBSCAN labels (-1 = outlier), got dtype {lab.dtype}")
    if lab.size and lab.min() < -1:
        raise MultError(f"{name} holds {int(lab.min())}; DBSCAN labels are -1 (outlier) or 0..K-1")
    if not (lab >= 0).any():
        raise MultError(f"{name} has no cluster (all outliers): nothing to transfer labels from; raise DBSCAN eps")
    return lab.astype(np.int64)


def checked_inputs(
    feats_v: ArrayLike, feats_r: ArrayLike, labels_v: ArrayLike, labels_r: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """Checked float32 features (on their device), int64 labels and the raw cluster centres of both modalities:
    (feats_vis, feats_ir, labels_vis, labels_ir, centres_vis, centres_ir)."""
    feats_vis, feats_ir = checked_features(feats_v, "feats_v"), checked_features(feats_r, "feats_r")
    if feats_vis.device != feats_ir.device or feats_vis.shape[1] != feats_ir.shape[1]:
        raise MultError(
            f"feats_v and feats_r must share a device and a dimension, got {feats_vis.device}/{feats_vis.shape[1]} "
            f"and {feats_ir.device}/{feats_ir.shape[1]}"
        )
    labels_vis = checked_labels(labels_v, feats_vis.shape[0], "labels_v")
    labels_ir = checked_labels(labels_r, feats_ir.shape[0], "labels_r")
    centres_vis = cluster_centres(feats_vis, torch.from_numpy(labels_vis))
    centres_ir = cluster_centres(feats_ir, torch.from_numpy(labels_ir))
    return feats_vis, feats_ir, labels_vis, labels_ir, centres_vis, centres_ir


def check_transfer_params(alpha: float, lam: float, temp: float, max_iter: int, tol: float) -> None:
    """MULT's numeric parameters: alpha in [0, 1], lam and temp positive, max_iter >= 1, tol >= 0."""
    if not 0.0 <= alpha <= 1.0:
        raise MultError(f"alpha must be in [0, 1], got {alpha!r}")
    for name, value in (("lam", lam), ("temp", temp)):
        if not (np.isfinite(value) and value > 0):
            raise MultError(f"{name} must be a positive number, got {value!r}")
    if not (isinstance(max_iter, int | np.integer) and max_iter >= 1):
        raise MultError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (np.isfinite(tol) and tol >= 0):
        raise MultError(f"tol must be a non-negative number, got {tol!r}")
