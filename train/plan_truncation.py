"""When MULT propagates with a truncated transport plan instead of the exact one (``method`` of
``mult_label_transfer``), and the truncated transfer matrices themselves (METHOD.md §4.4, an approximation).

Why the plan stays dense by default: at lambda = 25 the raw kernel is peaked, but the Sinkhorn column
scalings b are not flat. When identities have unequal visible/infrared image counts (SYSU-MM01), a few
percent of every row's mass must flow to other identities, and it spreads over a large fraction of all
columns: keeping 1e-4 accuracy on the labels needs a third or more of the entries of the plan (40% at
8000 x 4000 on the generated features of benchmarks/bench_label_transfer.py, two thirds and more on a
trained model's features: BENCHMARKS.md), where a dense GEMM beats any sparse product.
``method="sparse"`` truncates the exact plan for the propagation step and measures the mass it drops;
``method="auto"`` uses it only when that measured mass is below ``max_truncated_mass`` and the truncated
matrices are sparse enough to be faster (``decide_truncation``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from mult.train.transfer_operators import TransferMatrices, sparse_times, torch_csr

#: Rows of the plan scanned per block when truncating it.
TRUNCATE_BLOCK_ROWS = 2048


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
    """float64 CSR of the (row, column, value) triplets, each row divided by its sum."""
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
    s_vr_t, s_rv_t = torch_csr(s_vr, plan.device), torch_csr(s_rv, plan.device)
    return TransferMatrices(lambda y: sparse_times(s_vr_t, y), lambda x: sparse_times(s_rv_t, x), info)


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


def decide_truncation(
    plan: torch.Tensor, method: str, margin: float, max_truncated_mass: float, *, min_entries: int,
    max_density: float,
) -> tuple[TransferMatrices | None, dict[str, float] | None]:
    """The truncated transfer matrices when ``method`` is "sparse" or "auto" certifies them, else None; with the
    statistics of a truncation "auto" measured and rejected (None when it measured none).

    "auto" looks only at plans of at least ``min_entries`` entries on the CPU, and keeps the truncation when
    the dropped mass is at most ``max_truncated_mass`` and both matrices hold at most ``max_density`` of the
    entries.
    """
    if method == "sparse":
        return truncated_transfer(plan, margin), None
    if method == "dense" or plan.is_cuda or plan.numel() < min_entries:
        return None, None
    # A cheap look at a sample first: on unbalanced data the cut keeps a third of the plan, and a full
    # scan (a few passes over Nv x Nr) would be wasted.
    stats = sampled_truncation_stats(plan, margin)
    if stats["density"] <= 1.5 * max_density and stats["truncated_mass"] <= max_truncated_mass:
        stats = truncation_stats(plan, margin)
        if stats["truncated_mass"] <= max_truncated_mass and stats["density"] <= max_density:
            return truncated_transfer(plan, margin), None
    return None, stats
