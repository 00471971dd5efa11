"""Cluster memory (METHOD.md §6.1-6.2): one L2-normalised prototype per pseudo-identity.

The losses read a memory through :meth:`ClusterMemory.logits`. A read that passes hard labels also WRITES the
memory with its samples, M[y] <- normalise(m·M[y] + (1 - m)·x) one sample after another in batch order. When the
writes happen is the run's ``memory_update`` (``TrainConfig.memory_update``):

* ``"official"`` (default): inside the backward pass, as the official code's ``CM`` autograd function does
  (:class:`MemoryReadWrite`). Autograd runs the backward nodes newest first, so the writes come in reverse order
  of the reads, and a memory read by several labelled calls gives each later-running node its gradient against
  the memory already overwritten by this batch's earlier-running nodes (METHOD.md §6.1, "Order and timing").
* ``"after-step"``: the labelled reads are recorded and :meth:`ClusterMemory.write_pending` applies them after
  ``optimizer.step()`` in forward order, so every gradient of the step sees the memory as it was before the step
  (this project's loop before issue 15; a different algorithm, kept as an ablation).

A read without labels (the OCLR targets of METHOD.md §7) is a plain product whose backward also uses the memory
as it is then; autograd refuses (version-counter error) if a write came first. In the official reading order
(labelled reads first, the targets' plain reads last) their nodes run before every write, as in the official code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mult.config import MEMORY_UPDATES

Gather = Callable[[torch.Tensor], torch.Tensor]


def memory_logits(features: torch.Tensor, prototypes: torch.Tensor, temp: float) -> torch.Tensor:
    """z = L2norm(f) · Mᵀ / τ (METHOD.md §6.1, forward). ``prototypes`` rows are unit vectors."""
    return F.normalize(features, dim=1) @ prototypes.t() / temp


def occurrence_rank(labels: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions carry the same label (0 for the first one).

    Lets the sequential per-sample update be replayed in a few vectorised rounds: round r updates every
    label's r-th sample at once, which is exactly what a per-sample loop in batch order does.
    """
    n = labels.numel()
    order = torch.argsort(labels, stable=True)  # equal labels stay in batch order
    sorted_labels = labels[order]
    index = torch.arange(n, device=labels.device)
    starts = torch.ones(n, dtype=torch.bool, device=labels.device)
    starts[1:] = sorted_labels[1:] != sorted_labels[:-1]
    group_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=0).values
    rank = torch.empty_like(index)
    rank[order] = index - group_start
    return rank


@torch.no_grad()
def momentum_write_(prototypes: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, momentum: float) -> None:
    """M[y] <- normalise(m·M[y] + (1 - m)·x) for each (x, y) in batch order, in place (METHOD.md §6.1).

    The official ``CM.backward`` loops over the samples. Samples with distinct labels touch distinct rows, so one
    round writes every label's r-th sample at once; rounds run in order, so samples sharing a label compose in
    batch order exactly as the loop does. ``x`` rows are unit vectors; negative labels (outliers) are skipped.
    """
    keep = labels >= 0
    x, y = x[keep].to(prototypes), labels[keep].to(prototypes.device)
    if y.numel() == 0:
        return
    rank = occurrence_rank(y)
    for r in range(int(rank.max()) + 1):
        sel = rank == r  # at most one sample per label in this round
        slots = y[sel]
        prototypes[slots] = F.normalize(momentum * prototypes[slots] + (1.0 - momentum) * x[sel], dim=1)


class MemoryReadWrite(torch.autograd.Function):
    """The official ``CM`` (METHOD.md §6.1-6.2): memory logits forward, momentum writes in backward.

    forward(x, labels, memory): x·Mᵀ for L2-normalised features x; M is held by reference, not saved, so later
    writes are what this node's backward will see (the official ``ctx.features = features``).
    backward: the input gradient g·M against M AS IT IS WHEN THIS NODE RUNS, then this call's samples (every
    rank's: ``memory.write`` gathers them) write M in batch order. Autograd runs the nodes of one backward pass
    newest first, so with the reads v0, v1, r of one memory the writes come r, v1, v0, and the v1 and v0 nodes
    get their gradients against the memory the r (and v1) samples have already overwritten. Every rank runs the
    same graph, so every rank makes the same gathers in the same order and writes the same memory state.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, labels: torch.Tensor, memory: "ClusterMemory") -> torch.Tensor:
        ctx.memory = memory
        ctx.save_for_backward(x, labels)
        return x @ memory.features.to(x.dtype).t()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logits: torch.Tensor):
        x, labels = ctx.saved_tensors
        memory = ctx.memory
        grad_x = grad_logits @ memory.features.to(grad_logits.dtype)  # read before this node's own writes
        memory.write(x, labels)
        return grad_x, None, None


class ClusterMemory:
    """A bank of K unit-norm prototypes of dimension D with the reference's hard-label momentum update.

    ``momentum`` is the weight of the OLD prototype (0.1 in the paper's code, so a new sample counts 90 %).
    ``update``: when labelled reads write the memory, "official" (in backward) or "after-step" (module docstring).
    ``gather``: every rank's rows in rank order (``DistContext.gather_rows``), so that all ranks write the same
    samples and keep identical memories; the identity in a single process.
    """

    def __init__(self, prototypes: torch.Tensor, temp: float = 0.05, momentum: float = 0.1, *,
                 update: str = "official", gather: Optional[Gather] = None):
        if update not in MEMORY_UPDATES:
            raise ValueError(f"update must be one of {MEMORY_UPDATES}, got {update!r}")
        self.features = F.normalize(prototypes.detach().float(), dim=1).clone()
        self.temp = temp
        self.momentum = momentum
        self.update_mode = update
        self.gather: Gather = gather if gather is not None else (lambda rows: rows)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # "after-step": labelled reads of this step

    @classmethod
    def from_centres(cls, centres: torch.Tensor, temp: float = 0.05, momentum: float = 0.1,
                     **options) -> "ClusterMemory":
        """Initialise from cluster means (normalised here, METHOD.md §6.2)."""
        return cls(centres, temp=temp, momentum=momentum, **options)

    @property
    def num_slots(self) -> int:
        return self.features.shape[0]

    def logits(self, features: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Similarity logits z = L2norm(f)·Mᵀ/τ of a batch against every prototype (METHOD.md §6.1).

        With ``labels`` (one hard label per row) this batch also writes the memory: in backward ("official") or
        at :meth:`write_pending` ("after-step"). Without, the memory is only read (OCLR targets, METHOD.md §7).
        """
        if labels is None or self.update_mode == "after-step":
            if labels is not None:
                self._pending.append((F.normalize(features.detach().float(), dim=1), labels.detach()))
            return memory_logits(features, self.features.to(features.dtype), self.temp)
        return MemoryReadWrite.apply(F.normalize(features, dim=1), labels, self) / self.temp

    def write(self, x: torch.Tensor, labels: torch.Tensor) -> None:
        """Every rank's unit rows ``x`` with their hard labels write the memory in rank-then-batch order."""
        momentum_write_(self.features, self.gather(x.detach().float()), self.gather(labels), self.momentum)

    def write_pending(self) -> None:
        """"after-step": apply this step's labelled reads in forward order (call after ``optimizer.step()``).

        A no-op in "official" mode, whose writes already happened in backward.
        """
        pending, self._pending = self._pending, []
        for x, labels in pending:
            self.write(x, labels)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Write a batch of raw features now (normalised here; METHOD.md §6.1 backward, outside autograd)."""
        self.write(F.normalize(features.detach().float(), dim=1), labels)

    def state_dict(self) -> dict:
        return {"features": self.features.clone(), "temp": self.temp, "momentum": self.momentum}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ClusterMemory":
        memory = cls(state["features"], temp=state["temp"], momentum=state["momentum"])
        memory.features = state["features"].clone()  # already normalised; keep bit-exact
        return memory
