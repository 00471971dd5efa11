"""MULT: modality-unified label transfer (METHOD.md §4), plus the OT-only and PGM-style baselines (§13).

Given each modality's L2-normalised features, DBSCAN labels and the Jaccard distances used for that
clustering, ``mult_label_transfer`` returns four soft-label matrices exactly as the official
``cross_association.py::MULT`` computes them, but without its dense diagonal GEMMs and dense copies:

* the heterogeneous transport plan lives in ONE [Nv, Nr] float32 buffer (kernel, then plan, in place);
  the transfer matrices S_vr = rownorm(P) and S_rv = rownorm(P^T) are applied as (P @ Y) / row sums and
  (P^T @ X) / column sums, never materialised;
* the homogeneous affinities rownorm(1 - J) are sparse (absent Jaccard entries mean J = 1, affinity 0);
* everything is torch and follows the features' device (CUDA features run on the GPU).

Why the plan stays dense by default: at lambda = 25 the raw kernel is peaked, but the Sinkhorn column
scalings b are not flat. When identities have unequal visible/infrared image counts (SYSU-MM01), a few
percent of every row's mass must flow to other identities, and it spreads over a large fraction of all
columns: keeping 1e-4 accuracy on the labels needs a third or more of the entries of the plan (40% at
8000 x 4000 on the generated features of benchmarks/bench_label_transfer.py, two thirds and more on a
trained model's features: BENCHMARKS.md), where a dense GEMM beats any sparse product.
``method="sparse"`` truncates the exact plan for the propagation step and measures the mass it drops;
``method="auto"`` uses it only when that measured mass is below ``max_truncated_mass`` and the truncated
matrices are sparse enough to be faster.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from mult.errors import MultError
from mult.train.clustering import cluster_centres
from mult.train.sinkhorn import (
    SinkhornScalings,
    gibbs_kernel_,
    kernel_from_features,
    plan_,
    plan_argmax,
    sinkhorn_scalings,
    squared_distances,
)

#: ``method="auto"`` tries truncating the plan only from this many plan entries (Nv * Nr) on.
AUTO_SPARSE_MIN_ENTRIES = 20_000_000
#: ... and keeps the truncation only if both transfer matrices hold at most this share of the entries.
AUTO_SPARSE_MAX_DENSITY = 0.10
#: Rows of the plan scanned per block when truncating it.
TRUNCATE_BLOCK_ROWS = 2048

Operator = Callable[[torch.Tensor], torch.Tensor]
ArrayLike = np.ndarray | torch.Tensor
JaccardLike = np.ndarray | torch.Tensor | sp.spmatrix | sp.sparray

LABEL_NAMES = ("visible", "infrared", "visible_to_infrared", "infrared_to_visible")


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
# input handling


def _features(x: ArrayLike, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise MultError(f"{name} must be a non-empty [N, D] matrix, got shape {tuple(t.shape)}")
    t = t.to(torch.float32).contiguous()
    if not bool(torch.isfinite(t).all()):
        raise MultError(f"{name} contains NaN or Inf; check the feature extractor output")
    return t


def _labels(labels: ArrayLike, n: int, name: str) -> np.ndarray:
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


def _inputs(
    feats_v: ArrayLike, feats_r: ArrayLike, labels_v: ArrayLike, labels_r: ArrayLike
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """Checked float32 features (on their device), int64 labels and the raw cluster centres of both sides."""
    fv, fr = _features(feats_v, "feats_v"), _features(feats_r, "feats_r")
    if fv.device != fr.device or fv.shape[1] != fr.shape[1]:
        raise MultError(
            f"feats_v and feats_r must share a device and a dimension, got {fv.device}/{fv.shape[1]} "
            f"and {fr.device}/{fr.shape[1]}"
        )
    lv, lr = _labels(labels_v, fv.shape[0], "labels_v"), _labels(labels_r, fr.shape[0], "labels_r")
    cv, cr = cluster_centres(fv, torch.from_numpy(lv)), cluster_centres(fr, torch.from_numpy(lr))
    return fv, fr, lv, lr, cv, cr


def _check_params(alpha: float, lam: float, temp: float, max_iter: int, tol: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise MultError(f"alpha must be in [0, 1], got {alpha!r}")
    for name, value in (("lam", lam), ("temp", temp)):
        if not (np.isfinite(value) and value > 0):
            raise MultError(f"{name} must be a positive number, got {value!r}")
    if not (isinstance(max_iter, int | np.integer) and max_iter >= 1):
        raise MultError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (np.isfinite(tol) and tol >= 0):
        raise MultError(f"tol must be a non-negative number, got {tol!r}")


def _csr(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
    """torch CSR (float32) copy of a scipy CSR matrix on ``device``; 32-bit indices when they fit (products
    measured ~15 % faster than with 64-bit ones)."""
    index = np.int32 if max(matrix.nnz, *matrix.shape) < 2**31 else np.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(index)),
            torch.from_numpy(matrix.indices.astype(index)),
            torch.from_numpy(matrix.data.astype(np.float32)),
            size=matrix.shape,
            check_invariants=False,
        ).to(device)


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
    return _csr(mat, device)


#: Columns per product in ``sparse_times``: torch's CSR x dense kernel on CPU slows down 3-4x when the dense
#: rows get long (22,258 x 22,258 Jaccard affinity with 973 entries per row times 880 label columns: 3.6 s
#: at once, 0.97 s in slices of 32 columns; 64: 1.5 s; 16: 1.1 s).
SPARSE_COLUMN_CHUNK = 32


def sparse_times(matrix: torch.Tensor, dense: torch.Tensor, chunk: int = SPARSE_COLUMN_CHUNK) -> torch.Tensor:
    """``matrix @ dense`` for a sparse CSR ``matrix``, on CPU a slice of ``chunk`` columns at a time (the same
    sums in the same order, so the same result)."""
    if dense.is_cuda or dense.shape[1] <= chunk:
        return matrix @ dense
    out = torch.empty((matrix.shape[0], dense.shape[1]), dtype=dense.dtype, device=dense.device)
    for start in range(0, dense.shape[1], chunk):
        cols = slice(start, start + chunk)
        out[:, cols] = matrix @ dense[:, cols].contiguous()
    return out


@dataclass
class TransferMatrices:
    """The heterogeneous transition matrices as operators: S_vr @ Y (visible rows) and S_rv @ X (infrared rows)."""

    visible_from_infrared: Operator  # S_vr = rownorm(P): RGB <- IR
    infrared_from_visible: Operator  # S_rv = rownorm(P^T): IR <- RGB
    info: dict[str, Any]


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


def _cut_masks(plan: torch.Tensor, margin: float) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Row blocks of P with two masks: entries within e^-margin of their row's max, and of their column's max."""
    ratio = float(np.exp(-margin))
    row_cut, col_cut = plan.amax(1) * ratio, (plan.amax(0) * ratio)[None, :]
    for start in range(0, plan.shape[0], TRUNCATE_BLOCK_ROWS):
        rows = slice(start, min(start + TRUNCATE_BLOCK_ROWS, plan.shape[0]))
        block = plan[rows]
        yield rows, block, block >= row_cut[rows, None], block >= col_cut


def _dropped_share(kept: torch.Tensor, total: torch.Tensor) -> float:
    return max(float((1.0 - kept / total).max()), 0.0)


def truncation_stats(plan: torch.Tensor, margin: float = 16.0) -> dict[str, float]:
    """What ``truncated_transfer`` would keep, without building it: the share of entries kept by the
    denser of the two matrices (``density``) and the largest share of a row's or column's plan mass it
    drops (``truncated_mass``)."""
    n, m = plan.shape
    row_kept = torch.zeros(n, dtype=torch.float64, device=plan.device)
    col_kept = torch.zeros(m, dtype=torch.float64, device=plan.device)
    row_nnz = col_nnz = 0
    for rows, block, keep_r, keep_c in _cut_masks(plan, margin):
        row_kept[rows] = (block * keep_r).sum(1, dtype=torch.float64)
        col_kept += (block * keep_c).sum(0, dtype=torch.float64)
        row_nnz += int(keep_r.sum())
        col_nnz += int(keep_c.sum())
    dropped = max(
        _dropped_share(row_kept, plan.sum(1, dtype=torch.float64)),
        _dropped_share(col_kept, plan.sum(0, dtype=torch.float64)),
    )
    return {"density": max(row_nnz, col_nnz) / (n * m), "truncated_mass": dropped}


def _renormalised_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    mat = sp.csr_matrix((vals.astype(np.float64), (rows, cols)), shape=shape)
    mat.data /= np.repeat(np.asarray(mat.sum(axis=1)).ravel(), np.diff(mat.indptr))
    return mat


def truncated_transfer(plan: torch.Tensor, margin: float = 16.0) -> TransferMatrices:
    """S_vr and S_rv from the plan entries within e^-margin of their row's (column's) maximum, re-normalised.

    Truncation bound: every kept row is renormalised, so each row of the truncated S differs from the exact
    one by at most 2 * dropped in L1 norm, where ``dropped`` (``info["truncated_mass"]``, measured exactly)
    is the largest share of any row's (column's) plan mass below the cut. One propagation step then moves
    each label entry by at most (1 - alpha) * dropped beyond the previous error, and the steps contract by
    (1 - alpha), so the soft labels move by at most (1 - alpha) / alpha * dropped (4x dropped at alpha 0.2).
    """
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("vr_r", "vr_c", "vr_v", "rv_r", "rv_c", "rv_v")}
    for rows, block, keep_r, keep_c in _cut_masks(plan, margin):
        for tag, keep in (("vr", keep_r), ("rv", keep_c)):
            r, c = torch.nonzero(keep, as_tuple=True)
            parts[f"{tag}_r"].append((r + rows.start).to(torch.int32).cpu().numpy())  # N < 2^31
            parts[f"{tag}_c"].append(c.to(torch.int32).cpu().numpy())
            parts[f"{tag}_v"].append(block[r, c].cpu().numpy())
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    n, m = plan.shape
    s_vr = _renormalised_csr(cat["vr_r"], cat["vr_c"], cat["vr_v"], (n, m))
    s_rv = _renormalised_csr(cat["rv_c"], cat["rv_r"], cat["rv_v"], (m, n))  # rows of S_rv are columns of P
    info = {"transfer": "sparse", **truncation_stats(plan, margin)}
    s_vr_t, s_rv_t = _csr(s_vr, plan.device), _csr(s_rv, plan.device)
    return TransferMatrices(lambda y: sparse_times(s_vr_t, y), lambda x: sparse_times(s_rv_t, x), info)


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


@dataclass
class PropagationTrace:
    """How the fixed-point iteration of METHOD.md §4.5 went: per iteration, the relative L1 change of X and of Y.

    The paper claims the alternating update converges; this is the per-epoch evidence (metrics.jsonl,
    training.png). ``steps`` is the number of iterations used; ``change`` the stopping test's value per iteration.
    """

    change_x: list[float] = field(default_factory=list)
    change_y: list[float] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.change_x)

    @property
    def change(self) -> list[float]:
        return [max(cx, cy) for cx, cy in zip(self.change_x, self.change_y)]


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


def propagation_record(visible_space: PropagationTrace, infrared_space: PropagationTrace, tol: float,
                       max_iter: int) -> dict[str, Any]:
    """Both label spaces' traces as JSON-ready numbers, each change named by the instances whose labels moved.

    Visible space: X = visible instances (Ỹᵛ), Y = infrared ones (Ỹʳ→ᵛ); infrared space: X = infrared (Ŷʳ),
    Y = visible (Ŷᵛ→ʳ) (METHOD.md §4.5).
    """
    def record(trace: PropagationTrace, visible: list[float], infrared: list[float]) -> dict[str, Any]:
        return {"steps": trace.steps, "change": trace.change, "change_visible": visible, "change_infrared": infrared}

    return {"tol": tol, "max_iter": max_iter,
            "visible_space": record(visible_space, visible_space.change_x, visible_space.change_y),
            "infrared_space": record(infrared_space, infrared_space.change_y, infrared_space.change_x)}


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
    for that clustering, dense [N, N] or the sparse matrix of ``sparse_jaccard_distance``.
    ``homogeneous=False`` skips the homogeneous smoothing (ablation).

    ``method``: "dense" propagates with the exact plan; "sparse" with the plan truncated at ``margin``
    (see ``truncated_transfer`` for the bound: labels move by at most 4x the dropped mass at alpha 0.2,
    for the same number of propagation steps; the dropped mass is measured and returned in ``info``;
    memory grows with the kept entries, so force it only for concentrated plans); "auto" (default) tries the truncation for
    plans of at least AUTO_SPARSE_MIN_ENTRIES entries and keeps it only when the dropped mass is at most
    ``max_truncated_mass`` and it is sparse enough to be faster, else stays dense. The transport plan and
    its Sinkhorn scalings are always computed exactly.
    """
    if method not in ("auto", "dense", "sparse"):
        raise MultError(f"method must be 'auto', 'dense' or 'sparse', got {method!r}")
    _check_params(alpha, lam, temp, max_iter, tol)
    clock = _Clock()
    with torch.inference_mode():
        fv, fr, _, _, cv, cr = _inputs(feats_v, feats_r, labels_v, labels_r)
        s_v = homogeneous_affinity(jaccard_v, fv.shape[0], "jaccard_v", fv.device) if homogeneous else None
        s_r = homogeneous_affinity(jaccard_r, fr.shape[0], "jaccard_r", fr.device) if homogeneous else None
        clock("homogeneous")
        y_v0, y_r0 = intra_modality_labels(fv, cv, temp), intra_modality_labels(fr, cr, temp)
        y_vr0, sk_vr = cross_modality_labels(fv, cr, lam)
        y_rv0, sk_rv = cross_modality_labels(fr, cv, lam)
        initial_cross = {"visible_to_infrared": y_vr0.argmax(1).cpu().numpy(),
                         "infrared_to_visible": y_rv0.argmax(1).cpu().numpy()}
        clock("initial_labels")
        plan, sk = transport_plan(fv, fr, lam)
        clock("transport_plan")
        transfer = _choose_transfer(plan, method, margin, max_truncated_mass)
        if transfer.info["transfer"] == "sparse":
            del plan  # the propagation no longer needs the dense buffer
        clock("transfer_matrices")
        smooth_v = (lambda t: sparse_times(s_v, t)) if s_v is not None else None
        smooth_r = (lambda t: sparse_times(s_r, t)) if s_r is not None else None
        kv, kr = cv.shape[0], cr.shape[0]
        y_v0, y_rv0, y_r0, y_vr0 = (pad_columns(t) for t in (y_v0, y_rv0, y_r0, y_vr0))
        # visible label space: X = RGB instances (anchor Yv0), Y = IR instances (anchor Yr->v0)
        y_v, y_rv, trace_v = label_propagation(
            y_v0, y_rv0, transfer.visible_from_infrared, transfer.infrared_from_visible, smooth_v, smooth_r,
            alpha, max_iter, tol)
        # infrared label space: roles swapped (METHOD.md §4.5)
        y_r, y_vr, trace_r = label_propagation(
            y_r0, y_vr0, transfer.infrared_from_visible, transfer.visible_from_infrared, smooth_r, smooth_v,
            alpha, max_iter, tol)
        y_v, y_rv, y_r, y_vr = (t[:, :k].contiguous() for t, k in ((y_v, kv), (y_rv, kv), (y_r, kr), (y_vr, kr)))
        clock("propagation")
    info = {
        "method": method,
        **transfer.info,
        "sinkhorn_steps": {"plan": sk.steps, "visible_to_infrared_init": sk_vr.steps,
                           "infrared_to_visible_init": sk_rv.steps},
        "propagation_steps": {"visible_space": trace_v.steps, "infrared_space": trace_r.steps},
        "propagation": propagation_record(trace_v, trace_r, tol, max_iter),
        "seconds": clock.seconds,
    }
    return LabelTransferResult(*(t.cpu().numpy() for t in (y_v, y_rv, y_r, y_vr)), info=info,
                               initial_cross=initial_cross)


def sampled_truncation_stats(
    plan: torch.Tensor, margin: float = 16.0, samples: int = 512, seed: int = 0
) -> dict[str, float]:
    """``truncation_stats`` estimated on ``samples`` random rows and columns of P (no full pass)."""
    gen = torch.Generator().manual_seed(seed)
    out = {"density": 0.0, "truncated_mass": 0.0}
    for side in (plan, plan.T):
        pick = torch.randperm(side.shape[0], generator=gen)[:samples].to(plan.device)
        rows = side[pick]  # a copy: for P.T these are sampled columns of P, with their full extent
        cut = rows.amax(1, keepdim=True) * float(np.exp(-margin))
        keep = rows >= cut
        kept = (rows * keep).sum(1, dtype=torch.float64)
        out["density"] = max(out["density"], float(keep.float().mean()))
        out["truncated_mass"] = max(out["truncated_mass"], _dropped_share(kept, rows.sum(1, dtype=torch.float64)))
    return out


def _choose_transfer(plan: torch.Tensor, method: str, margin: float, max_truncated_mass: float) -> TransferMatrices:
    """Dense or truncated transfer matrices per ``method`` (see ``mult_label_transfer``)."""
    if method == "sparse":
        return truncated_transfer(plan, margin)
    if method == "dense" or plan.is_cuda or plan.numel() < AUTO_SPARSE_MIN_ENTRIES:
        return dense_transfer(plan)
    # A cheap look at a sample first: on unbalanced data the cut keeps a third of the plan, and a full
    # scan (a few passes over Nv x Nr) would be wasted.
    stats = sampled_truncation_stats(plan, margin)
    if stats["density"] <= 1.5 * AUTO_SPARSE_MAX_DENSITY and stats["truncated_mass"] <= max_truncated_mass:
        stats = truncation_stats(plan, margin)
        if stats["truncated_mass"] <= max_truncated_mass and stats["density"] <= AUTO_SPARSE_MAX_DENSITY:
            return truncated_transfer(plan, margin)
    dense = dense_transfer(plan)
    dense.info["rejected_truncation"] = stats
    return dense


class _Clock:
    """Seconds per stage, accumulated in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self.last, 4)
        self.last = now


# ----------------------------------------------------------------------------------------------------
# baselines (METHOD.md §13)


def nearest_centre(features: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the closest raw centre by squared Euclidean distance D (METHOD.md §4.1)."""
    return squared_distances(features, centres).argmin(1)


def _filled_labels(features: torch.Tensor, labels: np.ndarray, centres: torch.Tensor) -> torch.Tensor:
    """DBSCAN labels with every outlier (-1) replaced by its nearest centre."""
    lab = torch.from_numpy(labels).to(features.device)
    out = lab.clone()
    outliers = lab < 0
    if bool(outliers.any()):
        out[outliers] = nearest_centre(features[outliers], centres)
    return out


def _prepare(feats_v: ArrayLike, feats_r: ArrayLike, labels_v: ArrayLike, labels_r: ArrayLike):
    """Baseline inputs: features, outlier-filled labels of both sides, and the raw centres."""
    fv, fr, lv, lr, cv, cr = _inputs(feats_v, feats_r, labels_v, labels_r)
    return fv, fr, _filled_labels(fv, lv, cv), _filled_labels(fr, lr, cr), cv, cr


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
        fv, fr, hv, hr, cv, cr = _prepare(feats_v, feats_r, labels_v, labels_r)
        y_vr, _ = cross_modality_labels(fv, cr, lam)
        y_rv, _ = cross_modality_labels(fr, cv, lam)
        y_v, y_r = one_hot(hv, cv.shape[0]), one_hot(hr, cr.shape[0])
    return LabelTransferResult(*(t.cpu().numpy() for t in (y_v, y_rv, y_r, y_vr)), info={"method": "ot"})


def centre_cosines(centres_a: torch.Tensor, centres_b: torch.Tensor) -> torch.Tensor:
    """[Ka, Kb] cosine similarities between the L2-normalised cluster centres of two modalities."""
    return torch.nn.functional.normalize(centres_a, dim=1) @ torch.nn.functional.normalize(centres_b, dim=1).T


def match_clusters(centres_v: torch.Tensor, centres_r: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PGM-style one-to-one cluster matching (official ``PGM_matching``): returns (v_to_r [Kv], r_to_v [Kr]).

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
        _, _, hv, hr, cv, cr = _prepare(feats_v, feats_r, labels_v, labels_r)
        v_to_r, r_to_v = match_clusters(cv, cr)
        return _linked_clusters(hv, hr, v_to_r, r_to_v, cv.shape[0], cr.shape[0], {"method": "hungarian"})


def _linked_clusters(hv: torch.Tensor, hr: torch.Tensor, v_to_r: np.ndarray, r_to_v: np.ndarray, kv: int, kr: int,
                     info: dict[str, Any]) -> LabelTransferResult:
    """One-hot labels from filled cluster labels and cluster-to-cluster links: an instance's cross-modality
    label is its own cluster's partner."""
    y_vr = one_hot(torch.from_numpy(v_to_r).to(hv.device)[hv], kr)
    y_rv = one_hot(torch.from_numpy(r_to_v).to(hr.device)[hr], kv)
    y_v, y_r = one_hot(hv, kv), one_hot(hr, kr)
    return LabelTransferResult(*(t.cpu().numpy() for t in (y_v, y_rv, y_r, y_vr)), info=info)


def oracle_partners(labels: np.ndarray, true_ids: np.ndarray, other_labels: np.ndarray, other_true_ids: np.ndarray,
                    other_centres: torch.Tensor, centres: torch.Tensor) -> np.ndarray:
    """For each cluster, the other modality's cluster holding the most images of its majority true id.

    A person with no clustered image on the other side falls back to the most similar other centre (cosine).
    """
    from mult.train.diagnostics import cluster_majority_ids

    majority = cluster_majority_ids(labels, true_ids, centres.shape[0])
    keep = other_labels >= 0
    ids, index = np.unique(np.concatenate([majority, other_true_ids[keep]]), return_inverse=True)
    counts = np.zeros((other_centres.shape[0], ids.size), dtype=np.int64)
    np.add.at(counts, (other_labels[keep], index[majority.size:]), 1)
    per_cluster = counts[:, index[:majority.size]].T  # [K, K_other]: images of my majority id per other cluster
    partner = per_cluster.argmax(1)
    unseen = (per_cluster.max(1) == 0) | (majority < 0)
    if unseen.any():
        partner[unseen] = centre_cosines(centres, other_centres).argmax(1).cpu().numpy()[unseen]
    return partner.astype(np.int64)


def corrupt_partners(partner: np.ndarray, num_other: int, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """Keep each link with probability ``accuracy``; send the others to a uniformly random *different* cluster."""
    if not 0.0 <= accuracy <= 1.0:
        raise MultError(f"oracle_accuracy must be in [0, 1], got {accuracy!r}")
    out = partner.copy()
    wrong = rng.random(partner.size) >= accuracy
    if num_other > 1 and wrong.any():
        draw = rng.integers(0, num_other - 1, int(wrong.sum()))
        out[wrong] = draw + (draw >= partner[wrong])  # skip the right partner
    return out


def oracle_association(
    feats_v: ArrayLike, feats_r: ArrayLike, labels_v: ArrayLike, labels_r: ArrayLike,
    pids_v: np.ndarray, pids_r: np.ndarray, *, accuracy: float = 1.0, seed: int = 0,
) -> LabelTransferResult:
    """DIAGNOSTIC upper bound, not the method: the cross-modality association read off the ground truth.

    Intra-modality labels as the Hungarian baseline (outliers filled by their nearest centre); each cluster's
    partner is the other modality's cluster that holds most images of its majority true id
    (``oracle_partners``), then a share ``1 - accuracy`` of the links is redirected at random
    (``corrupt_partners``). It answers "how good must the association be before stage 2 pays off", with
    everything else of stage 2 (six memories, alternation, OCLR) unchanged. All labels one-hot.
    """
    pids_v, pids_r = np.asarray(pids_v), np.asarray(pids_r)
    if (pids_v < 0).any() or (pids_r < 0).any():
        raise MultError("the oracle association needs the true id of every training image (a labelled or SynthVI set)")
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        _, _, hv, hr, cv, cr = _prepare(feats_v, feats_r, labels_v, labels_r)
        lv, lr = hv.cpu().numpy(), hr.cpu().numpy()
        v_to_r = corrupt_partners(oracle_partners(lv, pids_v, lr, pids_r, cr, cv), cr.shape[0], accuracy, rng)
        r_to_v = corrupt_partners(oracle_partners(lr, pids_r, lv, pids_v, cv, cr), cv.shape[0], accuracy, rng)
        return _linked_clusters(hv, hr, v_to_r, r_to_v, cv.shape[0], cr.shape[0],
                                {"method": "oracle", "accuracy": accuracy})
