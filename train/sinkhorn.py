"""Entropic optimal transport as the MULT code runs it (METHOD.md §4.2), without the dense diagonal products.

The official ``sinkhorn_solver`` returns ``diag(a) @ K @ diag(b)``: two GEMMs with an n x n and an m x m
diagonal matrix (≈9e12 multiply-adds and 2.5 GB of diagonals at SYSU size). Every consumer of the plan
only needs the scalings a, b and element-wise products, so this module returns the scalings and offers
the plan and its row argmax through the identities of §4.2 (``label_transfer`` applies the two row
normalisations as (P @ Y) / row sums and (P^T @ X) / column sums):

* plan_ij = a_i K_ij b_j                       (element-wise, in place in the kernel buffer)
* argmax_j plan_ij = argmax_j K_ij b_j         (a_i > 0 does not move a row's argmax)
* columns of the plan sum to 1/m               (b was computed from the last a; exact up to rounding)

Everything is torch and follows the kernel's device, so a CUDA kernel runs on the GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Rows of the cost matrix built per GEMM block (a 1024 x 12k float32 block is ~49 MB).
COST_BLOCK_ROWS = 1024


@dataclass
class SinkhornScalings:
    """a [n], b [m] (float64) with plan = diag(a) K diag(b); ``steps`` iterations ran; ``err`` the last check."""

    a: torch.Tensor
    b: torch.Tensor
    steps: int
    err: float


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """D(X, Y)_ij = ||x_i||^2 + ||y_j||^2 - 2 x_i.y_j (METHOD.md §4.1), float32 as the official addmm."""
    dist = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None, :]
    return dist.addmm_(x, y.T, beta=1, alpha=-2)


def gibbs_kernel_(cost: torch.Tensor, lam: float) -> torch.Tensor:
    """K = exp(-lam * cost) (METHOD.md §4.2 step 1), computed in place in ``cost`` and returned."""
    return cost.mul_(-lam).exp_()


def kernel_from_features(x: torch.Tensor, y: torch.Tensor, lam: float, block: int = COST_BLOCK_ROWS) -> torch.Tensor:
    """Dense K = exp(-lam D(X, Y)) built in row blocks into one [n, m] buffer.

    The only n x m allocation of the whole transport: each block of distances (block x m) is turned into
    its kernel and copied into its slice of the output, so no second n x m temporary ever exists.
    """
    out = torch.empty((x.shape[0], y.shape[0]), dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], block):
        rows = slice(start, min(start + block, x.shape[0]))
        out[rows] = gibbs_kernel_(squared_distances(x[rows], y), lam)
    return out


def sinkhorn_scalings(kernel: torch.Tensor, max_iter: int = 500, tol: float = 0.1) -> SinkhornScalings:
    """Sinkhorn-Knopp scalings of ``kernel`` with uniform marginals, exactly the official loop (METHOD.md §4.2).

    Steps 2-4: a = 1/n, b = 1/m; repeat a <- (1/n)/(K b), b_new <- (1/m)/(K^T a); at steps 0, 10, 20, ...
    err = nansum |b / b_new - 1|; b <- b_new; stop once err <= tol or after ``max_iter`` steps. The
    matrix-vector products run in the kernel's dtype (float32, as the official code); the scalings are
    kept in float64 so that isolated rows or columns cannot overflow them.
    """
    n, m = kernel.shape
    if n == 0 or m == 0:
        raise ValueError(f"Sinkhorn needs a non-empty kernel, got shape {tuple(kernel.shape)}")
    dev, dt = kernel.device, kernel.dtype
    b = torch.full((m,), 1.0 / m, dtype=torch.float64, device=dev)
    a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=dev)
    err, step = math.inf, 0
    while err > tol and step < max_iter:
        a = (1.0 / n) / torch.mv(kernel, b.to(dt)).to(torch.float64)
        b_new = (1.0 / m) / torch.mv(kernel.T, a.to(dt)).to(torch.float64)
        if step % 10 == 0:
            err = float(torch.nansum((b / b_new - 1).abs()))
        b = b_new
        step += 1
    return SinkhornScalings(a, b, step, err)


def plan_argmax(kernel: torch.Tensor, scalings: SinkhornScalings) -> torch.Tensor:
    """argmax_j of each row of the plan diag(a) K diag(b), i.e. argmax_j K_ij b_j (METHOD.md §4.2 identity)."""
    return (kernel * scalings.b.to(kernel.dtype)[None, :]).argmax(1)


def plan_(kernel: torch.Tensor, scalings: SinkhornScalings) -> torch.Tensor:
    """Turn ``kernel`` into the plan T = diag(a) K diag(b) in place (METHOD.md §4.2 step 5), element-wise."""
    kernel.mul_(scalings.a.to(kernel.dtype)[:, None])
    kernel.mul_(scalings.b.to(kernel.dtype)[None, :])
    return kernel
