"""The official MULT label transfer (METHOD.md §4), re-stated plainly: the yardstick for tests and benchmarks.

This follows ``cross_association.py::MULT`` of the official code step by step, in float32 torch on the
CPU, including what makes it slow: the Sinkhorn plan is returned as ``diag(a) @ K @ diag(b)`` (two dense
GEMMs with an n x n and an m x m diagonal matrix), every affinity is a dense matrix, and label propagation
multiplies dense matrices. It is deliberately NOT optimised: ``mult.train.label_transfer`` is checked
against it, so it must stay a line-by-line rendering of the published procedure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def reference_sqdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i||^2 + ||y_j||^2 - 2 x_i.y_j, computed as the official ``pairwise_distance`` (addmm)."""
    dist = (x * x).sum(1, keepdim=True) + (y * y).sum(1, keepdim=True).T
    return dist.addmm(x, y.T, beta=1, alpha=-2)


def reference_sinkhorn(cost: torch.Tensor, lam: float = 25.0, max_iter: int = 500) -> torch.Tensor:
    """Official ``sinkhorn_solver``: the plan diag(a) K diag(b), built with dense diagonal matrices."""
    n, m = cost.shape
    a = torch.ones((n, 1)) / n
    b = torch.ones((m, 1)) / m
    kernel = torch.exp(-lam * cost)
    err, step = 1e6, 0
    while err > 1e-1 and step < max_iter:
        a = (1.0 / n) / kernel.mm(b)
        b_new = (1.0 / m) / a.T.mm(kernel).T
        if step % 10 == 0:
            err = float(np.nansum(np.abs((b / b_new - 1).numpy())))
        b = b_new
        step += 1
    return torch.diag(a.squeeze(1)).mm(kernel).mm(torch.diag(b.squeeze(1)))


def reference_one_hot(index: torch.Tensor, num_classes: int) -> torch.Tensor:
    out = torch.zeros(index.shape[0], num_classes)
    out[torch.arange(index.shape[0]), index] = 1
    return out


def reference_centres(features: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Mean member feature of clusters 0..K-1 (outliers skipped), float32, not normalised."""
    return torch.stack([features[torch.from_numpy(labels == k)].mean(0) for k in range(int(labels.max()) + 1)])


def reference_lp(
    s_xy: torch.Tensor,
    s_yx: torch.Tensor,
    s_x: torch.Tensor,
    s_y: torch.Tensor,
    x0: torch.Tensor,
    y0: torch.Tensor,
    alpha: float,
    max_iter: int = 20,
    tol: float = 1e-2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Official ``lp``: Gauss-Seidel heterogeneous transfer then lazy homogeneous smoothing, dense."""
    x_old, y_old = x0.clone(), y0.clone()
    x_new, y_new = x0.clone(), y0.clone()
    eps, it = 1e6, 0
    while eps > tol and it < max_iter:
        x_new = (1 - alpha) * s_xy.mm(y_new) + alpha * x0
        y_new = (1 - alpha) * s_yx.mm(x_new) + alpha * y0
        x_new = 0.5 * s_x.mm(x_new) + 0.5 * x_new
        y_new = 0.5 * s_y.mm(y_new) + 0.5 * y_new
        eps = float(torch.max((y_new - y_old).abs().sum() / y_old.sum(), (x_new - x_old).abs().sum() / x_old.sum()))
        x_old, y_old = x_new.clone(), y_new.clone()
        it += 1
    return x_new, y_new


@dataclass
class ReferenceResult:
    visible: np.ndarray
    infrared_to_visible: np.ndarray
    infrared: np.ndarray
    visible_to_infrared: np.ndarray


def reference_mult_label_transfer(
    feats_v: np.ndarray,
    feats_r: np.ndarray,
    labels_v: np.ndarray,
    labels_r: np.ndarray,
    jaccard_v: np.ndarray,
    jaccard_r: np.ndarray,
    *,
    alpha: float = 0.2,
    lam: float = 25.0,
    temp: float = 0.05,
    max_iter: int = 20,
    tol: float = 1e-2,
) -> ReferenceResult:
    """Official ``MULT`` (dense Jaccard matrices in, the four soft-label matrices out, float32 numpy)."""
    fv = torch.from_numpy(np.ascontiguousarray(feats_v, dtype=np.float32))
    fr = torch.from_numpy(np.ascontiguousarray(feats_r, dtype=np.float32))
    cv, cr = reference_centres(fv, np.asarray(labels_v)), reference_centres(fr, np.asarray(labels_r))
    kv, kr = cv.shape[0], cr.shape[0]

    y_v = torch.softmax(fv.mm(cv.T) / temp, dim=1)
    y_r = torch.softmax(fr.mm(cr.T) / temp, dim=1)
    y_vr = reference_one_hot(reference_sinkhorn(reference_sqdist(fv, cr), lam).argmax(1), kr)
    y_rv = reference_one_hot(reference_sinkhorn(reference_sqdist(fr, cv), lam).argmax(1), kv)

    plan = reference_sinkhorn(reference_sqdist(fv, fr), lam)
    aff_v = 1 - torch.from_numpy(np.asarray(jaccard_v, dtype=np.float32))
    aff_r = 1 - torch.from_numpy(np.asarray(jaccard_r, dtype=np.float32))
    aff_v = aff_v / aff_v.sum(1).unsqueeze(1)
    aff_r = aff_r / aff_r.sum(1).unsqueeze(1)
    s_vr = plan / plan.sum(1).unsqueeze(1)
    s_rv = plan.T / plan.T.sum(1).unsqueeze(1)

    # Same argument order as the official calls: infrared label space first, then visible.
    y_r_new, y_vr_new = reference_lp(s_rv, s_vr, aff_r, aff_v, y_r, y_vr, alpha, max_iter, tol)
    y_v_new, y_rv_new = reference_lp(s_vr, s_rv, aff_v, aff_r, y_v, y_rv, alpha, max_iter, tol)
    return ReferenceResult(y_v_new.numpy(), y_rv_new.numpy(), y_r_new.numpy(), y_vr_new.numpy())
