"""What MULT's label propagation did (METHOD.md §4.5): the relative change of every iteration in both label spaces,
kept per epoch as evidence that the alternating update converges (metrics.jsonl, training.png)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
