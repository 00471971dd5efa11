"""The one stopwatch: seconds spent per named stage of a long job (clustering, label transfer, indexing)."""

from __future__ import annotations

import time
from typing import Optional


class Stopwatch:
    """Each call ``watch("stage")`` adds the seconds since the previous call (or since creation) to that stage.

    ``seconds`` is the running tally; pass ``into`` to accumulate into a dict the caller already holds.
    """

    def __init__(self, into: Optional[dict[str, float]] = None) -> None:
        self.seconds: dict[str, float] = {} if into is None else into
        self._last = time.perf_counter()

    def __call__(self, stage: str) -> float:
        now = time.perf_counter()
        spent = now - self._last
        self.seconds[stage] = self.seconds.get(stage, 0.0) + spent
        self._last = now
        return spent
