"""MULT: modality-unified label transfer, the formulas of METHOD.md §4.

Given each modality's L2-normalised features, DBSCAN labels and the Jaccard distances used for that
clustering, ``mult_label_transfer`` returns four soft-label matrices exactly as the official
``cross_association.py::MULT`` computes them, but without its dense diagonal GEMMs and dense copies:

* the heterogeneous transport plan lives in ONE [Nv, Nr] float32 buffer (kernel, then plan, in place);
  the transfer matrices S_vr = rownorm(P) and S_rv = rownorm(P^T) are applied as (P @ Y) / row sums and
  (P^T @ X) / column sums, never materialised;
* the homogeneous affinities rownorm(1 - J) are sparse (absent Jaccard entries mean J = 1, affinity 0);
* everything is torch and follows the features' device (CUDA features run on the GPU).

The plan stays dense by default; ``method="sparse"`` / ``"auto"`` propagate with a truncated plan, decided
and built by ``mult.train.plan_truncation`` (which says why truncation rarely pays). The OT-only and
Hungarian baselines (§13) live in ``mult.train.association_baselines``, the oracle diagnostic in
``mult.train.oracle_association``; both are still reachable as attributes of this module.

Naming: ``_vis`` / ``_ir`` suffixes mean visible / infrared. The public parameters keep their short forms
``_v`` (visible) and ``_r`` (infrared, not RGB); the official code's ``rgb`` means visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from mult.errors import MultError
from mult.timing import Stopwatch
from mult.train.plan_truncation import decide_truncation
from mult.train.propagation_trace import PropagationTrace, propagation_record
from mult.train.sinkhorn import (
    SinkhornScalings,
    gibbs_kernel_,
    kernel_from_features,
    plan_,
    plan_argmax,
    sinkhorn_scalings,
    squared_distances,
)
from mult.train.transfer_inputs import ArrayLike, check_transfer_params, checked_inputs
from mult.train.transfer_operators import Operator, TransferMatrices, sparse_times, torch_csr

#: ``method="auto"`` tries truncating the plan only from this many plan entries (Nv * Nr) on.
AUTO_SPARSE_MIN_ENTRIES = 20_000_000
#: ... and keeps the truncation only if both transfer matrices hold at most this share of the entries.
AUTO_SPARSE_MAX_DENSITY = 0.10

JaccardLike = np.ndarray | torch.Tensor | sp.spmatrix | sp.sparray

LABEL_NAMES = ("visible", "infrared", "visible_to_infrared", "infrared_to_visible")

#: The old name of ``torch_csr`` (tests/test_label_transfer.py reaches it as ``label_transfer._csr``).
_csr = torch_csr


# ----------------------------------------------------------------------------------------------------
# result


@dataclass
class LabelTransferResult:
    """Soft labels of both label spaces (rows are distributions), float32 numpy.

    ``visible`` [Nv, Kv] and ``infrared_to_visible`` [Nr, Kv] live in the visible label space (the
    official Ỹᵛ, Ỹʳ→ᵛ); ``infrared`` [Nr, Kr] and ``visible_to_infrared`` [Nv, Kr] in the infrared one
    (Ŷʳ, Ŷᵛ→ʳ). ``info`` holds diagnostics: method used, Sinkhorn steps, propagation iterations and (MULT,
``info["propagation"]``) the change of every propagation iteration in both label spaces, seconds.
    ``initial_cross`` (MULT only): the hard cross-modality labels BEFORE propagation, the row argmax of the
    §4.3 initial labels, keyed ``visible_to_infrared`` / ``infrared_to_visible`` — for "before and after
    MULT" diagnostics; training never reads them.
    """

    visible: np.ndarray
    infrared_to_visible: np.ndarray
    infrared: np.ndarray
    visible_to_infrared: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)
    initial_cross: dict[str, np.ndarray] = field(default_factory=dict)

    def hard_labels(self) -> dict[str, np.ndarray]:
        """Row argmax of each matrix (METHOD.md §4.6), keyed like the attributes.

        Official names: ``visible`` = labels_RGB, ``infrared`` = labels_IR, ``visible_to_infrared`` =
        cm_labels_RGB (RGB instance -> IR cluster), ``infrared_to_visible`` = cm_labels_IR.
        """
        return {name: getattr(self, name).argmax(1).astype(np.int64) for name in LABEL_NAMES}

    def targets(self, beta: float = 0.7) -> dict[str, np.ndarray]:
        """Training targets beta * onehot(argmax) + (1 - beta) * soft for each matrix (METHOD.md §4.6)."""
        return {name: soft_target(getattr(self, name), beta) for name in LABEL_NAMES}


def soft_target(soft: np.ndarray, beta: float = 0.7) -> np.ndarray:
    """y = beta * onehot(argmax_k soft) + (1 - beta) * soft (METHOD.md §4.6: y_rgb, y_ir, y_rgb_cm, y_ir_cm)."""
    if not 0.0 <= beta <= 1.0:
        raise MultError(f"beta must be in [0, 1], got {beta!r}")
    soft = np.asarray(soft, dtype=np.float32)
    out = (1.0 - beta) * soft
    out[np.arange(out.shape[0]), soft.argmax(1)] += beta
    return out



# ----------------------------------------------------------------------------------------------------
# the formulas of METHOD.md §4


def intra_modality_labels(features: torch.Tensor, centres: torch.Tensor, temp: float = 0.05) -> torch.Tensor:
    """Y0 = softmax_row(F C^T / temp) over all instances, outliers included (METHOD.md §4.3).

    ``centres`` are the raw (un-normalised) member means, as in the official code.
    """
    return torch.softmax(features @ centres.T / temp, dim=1)


def one_hot(index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[N, num_classes] float32 one-hot rows of ``index``."""
    out = torch.zeros((index.shape[0], num_classes), dtype=torch.float32, device=index.device)
    out[torch.arange(index.shape[0], device=index.device), index] = 1.0
    return out


def cross_modality_labels(
    features: torch.Tensor, centres: torch.Tensor, lam: float = 25.0
) -> tuple[torch.Tensor, SinkhornScalings]:
    """Y0 across modalities = onehot(argmax_k Sinkhorn(D(F, C), lam)) (METHOD.md §4.3).

    D is the squared Euclidean distance to the other modality's raw centres; the row argmax of the plan is
    argmax_k K_ik b_k (§4.2), so the plan itself is never formed.
    """
    kernel = gibbs_kernel_(squared_distances(features, centres), lam)
    scalings = sinkhorn_scalings(kernel)
    return one_hot(plan_argmax(kernel, scalings), centres.shape[0]), scalings


def homogeneous_affinity(jaccard: JaccardLike, n: int, name: str, device: torch.device) -> torch.Tensor:
    """S = rownorm(1 - J) as a torch CSR matrix on ``device`` (METHOD.md §4.4, homogeneous graph).

    ``jaccard`` is the dense [N, N] Jaccard distance or the sparse form of ``sparse_jaccard_distance``
    (absent entries mean J = 1, i.e. affinity 0; the diagonal J_ii = 0 must be stored).
    """
    if sp.issparse(jaccard):
        mat = sp.csr_matrix(jaccard, dtype=np.float64, copy=True)
    else:
        dense = jaccard.detach().cpu().numpy() if isinstance(jaccard, torch.Tensor) else np.asarray(jaccard)
        if dense.ndim != 2:
            raise MultError(f"{name} must be a [{n}, {n}] matrix, got shape {dense.shape}")
        rows, cols = np.nonzero(dense != 1)  # J = 1 means affinity 0: keep only the other entries
        mat = sp.csr_matrix((dense[rows, cols].astype(np.float64), (rows, cols)), shape=dense.shape)
    if mat.shape != (n, n):
        raise MultError(f"{name} must be [{n}, {n}] to match its features, got shape {mat.shape}")
    if mat.nnz and (not np.isfinite(mat.data).all() or mat.data.min() < 0 or mat.data.max() > 1):
        raise MultError(f"{name} must hold Jaccard distances in [0, 1]; pass the matrix used for DBSCAN")
    mat.data = 1.0 - mat.data
    mat.eliminate_zeros()
    sums = np.asarray(mat.sum(axis=1)).ravel()
    if (sums <= 0).any():
        row = int(np.flatnonzero(sums <= 0)[0])
        raise MultError(
            f"row {row} of {name} has no entry below 1 (not even J_ii = 0); pass the matrix from "
            "sparse_jaccard_distance / jaccard_distance unchanged"
        )
    mat.data /= np.repeat(sums, np.diff(mat.indptr))
    return torch_csr(mat, device)


def transport_plan(
    feats_v: torch.Tensor, feats_r: torch.Tensor, lam: float = 25.0
) -> tuple[torch.Tensor, SinkhornScalings]:
    """P = Sinkhorn(D(Fv, Fr), lam) as one dense [Nv, Nr] float32 buffer (METHOD.md §4.4, heterogeneous)."""
    buffer = kernel_from_features(feats_v, feats_r, lam)
    scalings = sinkhorn_scalings(buffer)
    return plan_(buffer, scalings), scalings


def dense_transfer(plan: torch.Tensor) -> TransferMatrices:
    """S_vr = rownorm(P), S_rv = rownorm(P^T) (METHOD.md §4.4) applied from the plan without copies."""
    row_sums = plan.sum(1, keepdim=True)
    col_sums = plan.sum(0)[:, None]
    return TransferMatrices(
        lambda y: (plan @ y).div_(row_sums),
        lambda x: (plan.T @ x).div_(col_sums),
        {"transfer": "dense"},
    )



def propagation_step(
    x: torch.Tensor,
    y: torch.Tensor,
    x0: torch.Tensor,
    y0: torch.Tensor,
    transfer_xy: Operator,
    transfer_yx: Operator,
    smooth_x: Operator | None,
    smooth_y: Operator | None,
    alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``lp()`` update (METHOD.md §4.5), Gauss-Seidel order:

    X <- (1-alpha) S_xy Y + alpha X0;  Y <- (1-alpha) S_yx X + alpha Y0  (uses the new X);
    X <- 1/2 S_x X + 1/2 X;  Y <- 1/2 S_y Y + 1/2 Y  (homogeneous smoothing, skipped when S is None).
    """
    x = transfer_xy(y).mul_(1 - alpha).add_(x0, alpha=alpha)
    y = transfer_yx(x).mul_(1 - alpha).add_(y0, alpha=alpha)
    if smooth_x is not None:
        x = smooth_x(x).add_(x).mul_(0.5)
    if smooth_y is not None:
        y = smooth_y(y).add_(y).mul_(0.5)
    return x, y


#: Label matrices are padded with zero columns to a multiple of this for the propagation GEMMs: MKL's sgemm
#: on the 2-core AMD CPU runs at ~135 instead of ~195 GFLOP/s when the column count is not one (874 columns:
#: 3.4 s per plan product, 880: 2.4 s). Zero columns stay zero (every step is linear), so nothing changes.
GEMM_COLUMN_MULTIPLE = 16


def pad_columns(labels: torch.Tensor, multiple: int = GEMM_COLUMN_MULTIPLE) -> torch.Tensor:
    """``labels`` with zero columns appended up to a multiple of ``multiple`` (the same tensor if none needed)."""
    extra = -labels.shape[1] % multiple
    return torch.nn.functional.pad(labels, (0, extra)) if extra else labels


def relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """||new - old||_1 / ||old||_1 over the whole matrix (the stopping test of METHOD.md §4.5)."""
    return float((new - old).abs().sum() / old.sum())


def label_propagation(
    x0: torch.Tensor,
    y0: torch.Tensor,
    transfer_xy: Operator,
    transfer_yx: Operator,
    smooth_x: Operator | None,
    smooth_y: Operator | None,
    alpha: float = 0.2,
    max_iter: int = 20,
    tol: float = 1e-2,
) -> tuple[torch.Tensor, torch.Tensor, PropagationTrace]:
    """Iterate ``propagation_step`` from (X0, Y0) until max(relative change of X, of Y) <= tol or
    ``max_iter`` steps (METHOD.md §4.5). Returns (X, Y, the changes of every iteration)."""
    x, y = x0, y0
    trace = PropagationTrace()
    for _ in range(max_iter):
        x_new, y_new = propagation_step(x, y, x0, y0, transfer_xy, transfer_yx, smooth_x, smooth_y, alpha)
        trace.change_x.append(relative_change(x_new, x))
        trace.change_y.append(relative_change(y_new, y))
        x, y = x_new, y_new
        if trace.change[-1] <= tol:
            break
    return x, y, trace


# ----------------------------------------------------------------------------------------------------
# MULT



def mult_label_transfer(
    feats_v: ArrayLike,
    feats_r: ArrayLike,
    labels_v: ArrayLike,
    labels_r: ArrayLike,
    jaccard_v: JaccardLike,
    jaccard_r: JaccardLike,
    *,
    alpha: float = 0.2,
    lam: float = 25.0,
    temp: float = 0.05,
    max_iter: int = 20,
    tol: float = 1e-2,
    homogeneous: bool = True,
    method: str = "auto",
    margin: float = 16.0,
    max_truncated_mass: float = 1e-6,
) -> LabelTransferResult:
    """MULT label transfer, the official ``MULT()`` semantics (METHOD.md §4.3-4.5).

    ``feats_*``: L2-normalised features (numpy or torch; torch tensors keep their device, e.g. CUDA).
    ``labels_*``: DBSCAN labels (-1 = outlier, K = max + 1). ``jaccard_*``: the Jaccard distances used
    for that clustering, dense [N, N] or the sparse matrix of ``sparse_jaccard_distance``. ``_v`` is the
    visible modality, ``_r`` the infrared one. ``homogeneous=False`` skips the homogeneous smoothing (ablation).

    ``method``: "dense" propagates with the exact plan; "sparse" with the plan truncated at ``margin`` (see
    ``plan_truncation.truncated_transfer`` for the bound: labels move by at most 4x the dropped mass at alpha
    0.2, for the same number of propagation steps; the dropped mass is measured and returned in ``info``;
    memory grows with the kept entries, so force it only for concentrated plans); "auto" (default) tries the
    truncation for plans of at least AUTO_SPARSE_MIN_ENTRIES entries and keeps it only when the dropped mass is
    at most ``max_truncated_mass`` and it is sparse enough to be faster, else stays dense. The transport plan
    and its Sinkhorn scalings are always computed exactly.
    """
    if method not in ("auto", "dense", "sparse"):
        raise MultError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    check_transfer_params(alpha, lam, temp, max_iter, tol)
    clock = Stopwatch()
    with torch.inference_mode():
        feats_vis, feats_ir, _, _, centres_vis, centres_ir = checked_inputs(feats_v, feats_r, labels_v, labels_r)
        affinity_vis = affinity_ir = None
        if homogeneous:
            affinity_vis = homogeneous_affinity(jaccard_v, feats_vis.shape[0], "jaccard_v", feats_vis.device)
            affinity_ir = homogeneous_affinity(jaccard_r, feats_ir.shape[0], "jaccard_r", feats_ir.device)
        clock("homogeneous")
        y_vis0 = intra_modality_labels(feats_vis, centres_vis, temp)
        y_ir0 = intra_modality_labels(feats_ir, centres_ir, temp)
        y_vis_to_ir0, sinkhorn_vis_to_ir = cross_modality_labels(feats_vis, centres_ir, lam)
        y_ir_to_vis0, sinkhorn_ir_to_vis = cross_modality_labels(feats_ir, centres_vis, lam)
        initial_cross = {"visible_to_infrared": y_vis_to_ir0.argmax(1).cpu().numpy(),
                         "infrared_to_visible": y_ir_to_vis0.argmax(1).cpu().numpy()}
        clock("initial_labels")
        plan, sinkhorn_plan = transport_plan(feats_vis, feats_ir, lam)
        clock("transport_plan")
        transfer = _choose_transfer(plan, method, margin, max_truncated_mass)
        if transfer.info["transfer"] == "sparse":
            del plan  # the propagation no longer needs the dense buffer
        clock("transfer_matrices")
        smooth_vis = (lambda t: sparse_times(affinity_vis, t)) if affinity_vis is not None else None
        smooth_ir = (lambda t: sparse_times(affinity_ir, t)) if affinity_ir is not None else None
        anchors = tuple(pad_columns(t) for t in (y_vis0, y_ir_to_vis0, y_ir0, y_vis_to_ir0))
        del y_vis0, y_ir_to_vis0, y_ir0, y_vis_to_ir0  # from here on only the padded anchors are needed
        labels, trace_vis_space, trace_ir_space = _propagate_both_spaces(
            anchors, transfer, smooth_vis, smooth_ir, (centres_vis.shape[0], centres_ir.shape[0]), alpha, max_iter, tol)
        clock("propagation")
    info = {
        "method": method,
        **transfer.info,
        "sinkhorn_steps": {"plan": sinkhorn_plan.steps, "visible_to_infrared_init": sinkhorn_vis_to_ir.steps,
                           "infrared_to_visible_init": sinkhorn_ir_to_vis.steps},
        "propagation_steps": {"visible_space": trace_vis_space.steps, "infrared_space": trace_ir_space.steps},
        "propagation": propagation_record(trace_vis_space, trace_ir_space, tol, max_iter),
        "seconds": {stage: round(spent, 4) for stage, spent in clock.seconds.items()},
    }
    return LabelTransferResult(*(t.cpu().numpy() for t in labels), info=info, initial_cross=initial_cross)


def _propagate_both_spaces(
    anchors: tuple[torch.Tensor, ...], transfer: TransferMatrices, smooth_vis: Operator | None,
    smooth_ir: Operator | None, num_clusters: tuple[int, int], alpha: float, max_iter: int, tol: float,
) -> tuple[tuple[torch.Tensor, ...], PropagationTrace, PropagationTrace]:
    """``label_propagation`` in the visible and then the infrared label space (METHOD.md §4.5).

    ``anchors``: the column-padded initial labels (Yv0, Yr->v0, Yr0, Yv->r0); ``num_clusters``: (Kv, Kr).
    Returns the four propagated matrices in that order, trimmed to their K columns, and both traces.
    """
    y_vis0, y_ir_to_vis0, y_ir0, y_vis_to_ir0 = anchors
    k_vis, k_ir = num_clusters
    # visible label space: X = visible instances (anchor Yv0), Y = infrared instances (anchor Yr->v0)
    y_vis, y_ir_to_vis, trace_vis_space = label_propagation(
        y_vis0, y_ir_to_vis0, transfer.visible_from_infrared, transfer.infrared_from_visible, smooth_vis, smooth_ir,
        alpha, max_iter, tol)
    # infrared label space: roles swapped (METHOD.md §4.5)
    y_ir, y_vis_to_ir, trace_ir_space = label_propagation(
        y_ir0, y_vis_to_ir0, transfer.infrared_from_visible, transfer.visible_from_infrared, smooth_ir, smooth_vis,
        alpha, max_iter, tol)
    trimmed = tuple(t[:, :k].contiguous()
                    for t, k in ((y_vis, k_vis), (y_ir_to_vis, k_vis), (y_ir, k_ir), (y_vis_to_ir, k_ir)))
    return trimmed, trace_vis_space, trace_ir_space


def _choose_transfer(plan: torch.Tensor, method: str, margin: float, max_truncated_mass: float) -> TransferMatrices:
    """Dense or truncated transfer matrices per ``method`` (see ``mult_label_transfer``); a dense choice made
    after measuring a truncation records it as ``info["rejected_truncation"]``."""
    truncated, rejected = decide_truncation(
        plan, method, margin, max_truncated_mass, min_entries=AUTO_SPARSE_MIN_ENTRIES,
        max_density=AUTO_SPARSE_MAX_DENSITY)
    if truncated is not None:
        return truncated
    dense = dense_transfer(plan)
    if rejected is not None:
        dense.info["rejected_truncation"] = rejected
    return dense


# ----------------------------------------------------------------------------------------------------
# names that moved out of this module


_BASELINE_NAMES = ("nearest_centre", "ot_association", "centre_cosines", "match_clusters", "hungarian_association")
_ORACLE_NAMES = ("oracle_partners", "corrupt_partners", "oracle_association")


def __getattr__(name: str) -> Any:
    """``label_transfer.<name>`` for the baselines (§13, ``mult.train.association_baselines``) and the oracle
    diagnostic (``mult.train.oracle_association``), as before they moved out. Looked up on first use: those
    modules build on the formulas here, so importing them at the top would be an import cycle."""
    if name in _BASELINE_NAMES:
        from mult.train import association_baselines

        return getattr(association_baselines, name)
    if name in _ORACLE_NAMES:
        from mult.train import oracle_association

        return getattr(oracle_association, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
