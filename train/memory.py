"""Cluster memory (METHOD.md §6.1): one L2-normalised prototype per pseudo-identity.

The reference implements the momentum update inside a custom autograd backward, one sample at a time.
Here the update is an explicit call outside autograd, made after the loss's backward, so the logits of a
step always use the memory as it was before that step (the same order as the reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


class ClusterMemory:
    """A bank of K unit-norm prototypes of dimension D with the reference's hard-label momentum update.

    ``momentum`` is the weight of the OLD prototype (0.1 in the paper's code, so a new sample counts 90 %).
    """

    def __init__(self, prototypes: torch.Tensor, temp: float = 0.05, momentum: float = 0.1):
        self.features = F.normalize(prototypes.detach().float(), dim=1).clone()
        self.temp = temp
        self.momentum = momentum

    @classmethod
    def from_centres(cls, centres: torch.Tensor, temp: float = 0.05, momentum: float = 0.1) -> "ClusterMemory":
        """Initialise from cluster means (normalised here, METHOD.md §6.2)."""
        return cls(centres, temp=temp, momentum=momentum)

    @property
    def num_slots(self) -> int:
        return self.features.shape[0]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Similarity logits of a batch against every prototype (gradient flows to ``features`` only)."""
        return memory_logits(features, self.features.to(features.dtype), self.temp)

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """M[y] ← normalise(m·M[y] + (1 − m)·x) for each (x, y) in batch order (METHOD.md §6.1, backward).

        Samples whose label is negative (outliers) are skipped.
        """
        keep = labels >= 0
        x = F.normalize(features[keep].detach().float(), dim=1).to(self.features.device)
        y = labels[keep].to(self.features.device)
        if y.numel() == 0:
            return
        rank = occurrence_rank(y)
        for r in range(int(rank.max()) + 1):
            sel = rank == r  # at most one sample per label in this round
            slots = y[sel]
            mixed = self.momentum * self.features[slots] + (1.0 - self.momentum) * x[sel]
            self.features[slots] = F.normalize(mixed, dim=1)

    def state_dict(self) -> dict:
        return {"features": self.features.clone(), "temp": self.temp, "momentum": self.momentum}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ClusterMemory":
        memory = cls(state["features"], temp=state["temp"], momentum=state["momentum"])
        memory.features = state["features"].clone()  # already normalised; keep bit-exact
        return memory
