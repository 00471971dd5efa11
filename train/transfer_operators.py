"""The linear operators MULT's label propagation applies (METHOD.md §4.4-4.5): torch CSR products and the pair of
heterogeneous transfer matrices, whether built from the exact plan or from a truncated one."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

Operator = Callable[[torch.Tensor], torch.Tensor]

#: Columns per product in ``sparse_times``: torch's CSR x dense kernel on CPU slows down 3-4x when the dense
#: rows get long (22,258 x 22,258 Jaccard affinity with 973 entries per row times 880 label columns: 3.6 s
#: at once, 0.97 s in slices of 32 columns; 64: 1.5 s; 16: 1.1 s).
SPARSE_COLUMN_CHUNK = 32


@dataclass
class TransferMatrices:
    """The heterogeneous transition matrices as operators: S_vr @ Y (visible rows) and S_rv @ X (infrared rows)."""

    visible_from_infrared: Operator  # S_vr = rownorm(P): RGB <- IR
    infrared_from_visible: Operator  # S_rv = rownorm(P^T): IR <- RGB
    info: dict[str, Any]


def torch_csr(matrix: sp.csr_matrix, device: torch.device) -> torch.Tensor:
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
