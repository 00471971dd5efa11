"""Recall-steered search parameters: after a build, the smallest nprobe (IVF, IVF-PQ) or efSearch (HNSW) whose
recall@10 against exact search reaches a target (``mult index build --target-recall 0.95``).

The queries are a seeded sample of the gallery's own vectors (:data:`~.faiss_index.RECALL_QUERIES`), each *held
out*: its own id is dropped from the exact and from the approximate neighbour lists
(:class:`~.faiss_index.RecallProbe`), so it is scored like a query image that is not in the gallery, as real
queries never are. (The manifest's ``recall_at_10`` counts the query's own vector, as the standard faiss benchmark
with database vectors as queries does; it is up to 1/k higher.) The exact neighbours are computed once; each value
tried costs one search of the sample.

The value is found by doubling from the smallest (nprobe 1, efSearch :data:`EF_SEARCH_MIN`) until the target is
reached or the maximum was tried (nprobe = nlist; efSearch :data:`EF_SEARCH_CAP`), then by bisection between the
last miss and the first hit: at most about 2 * log2(maximum) measurements. Recall grows with both parameters
(IVF-Flat strictly: more lists probed is a superset; HNSW and IVF-PQ nearly), so that is the smallest value that
reaches the target. When even the maximum misses, the best value measured is kept and the tuning says so.

Held-out gallery vectors are still easier queries than images from outside the gallery: on 200k x 256-d
synthetic data (``benchmarks/bench_index_tuning.py``) a tuned 0.950 gave 0.937 on fresh queries for IVF and 0.905
for HNSW, whose graph still holds the query's own node and leads the search to its neighbourhood.
The gallery stores the chosen value as its search default; ``Gallery.add`` keeps it (and re-measures recall).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Optional

import faiss
import numpy as np

from mult.serving.faiss_index import (IVF_KINDS, RECALL_K, RECALL_QUERIES, IndexSpec, RecallProbe,
                                      search_params)

#: The search parameter tuned for each approximate kind.
TUNED_PARAMETER = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "ef_search"}
#: efSearch values tried: from this (below ~k faiss searches k wide anyway) up to the cap.
EF_SEARCH_MIN = 16
EF_SEARCH_CAP = 2048


class RecallTargetWarning(UserWarning):
    """The target recall was not reached even at the largest value tried (the best one was kept)."""


@dataclass(frozen=True)
class Tuning:
    """What tuning measured: ``sweep`` maps each value tried to its (counted, held-out) recall@k."""

    kind: str
    target: float
    parameter: str
    chosen: int
    maximum: int
    sweep: dict[int, tuple[float, float]]
    queries: int
    k: int

    @property
    def recall(self) -> float:
        """Held-out recall@k at the chosen value."""
        return self.sweep[self.chosen][1]

    @property
    def reached(self) -> bool:
        return self.recall >= self.target

    def as_manifest(self) -> dict[str, Any]:
        """The manifest's ``index.tuning`` entry (the sweep as [value, held-out recall] pairs, by value)."""
        return {"target_recall": self.target, "parameter": self.parameter, "chosen": self.chosen,
                f"recall_at_{RECALL_K}": self.recall, "reached": self.reached, "maximum": self.maximum,
                "held_out": True, "queries": self.queries, "k": self.k,
                "sweep": [[value, self.sweep[value][1]] for value in sorted(self.sweep)]}


def search_range(spec: IndexSpec, n: int) -> tuple[int, int]:
    """The smallest and largest value tuning tries for ``spec`` (resolved) over ``n`` vectors."""
    if spec.kind in IVF_KINDS:
        return 1, int(spec.nlist or 1)
    if spec.kind == "hnsw":
        return EF_SEARCH_MIN, max(EF_SEARCH_MIN, min(EF_SEARCH_CAP, n))
    raise ValueError(f"kind {spec.kind!r} has no search parameter to tune")


def smallest_reaching(measure: Callable[[int], float], lo: int, hi: int, target: float) -> Optional[int]:
    """The smallest value in ``[lo, hi]`` whose ``measure`` reaches ``target`` (doubling from ``lo``, then
    bisection), assuming ``measure`` grows with the value; None when ``hi`` misses too."""
    miss, value = lo - 1, lo
    while measure(value) < target:
        if value >= hi:
            return None
        miss, value = value, min(2 * value, hi)
    while value - miss > 1:  # measure(value) reaches the target, measure(miss) does not (or miss < lo)
        middle = (miss + value) // 2
        if measure(middle) >= target:
            value = middle
        else:
            miss = middle
    return value


def apply_search_defaults(index: faiss.Index, spec: IndexSpec) -> None:
    """Store ``spec``'s nprobe / efSearch in the faiss index itself (what a plain faiss user of the file gets;
    the gallery passes its manifest's values with every search anyway)."""
    if spec.kind in IVF_KINDS:
        faiss.extract_index_ivf(index).nprobe = int(spec.nprobe)
    elif spec.kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efSearch = int(spec.ef_search)


def tune_index(index: faiss.Index, spec: IndexSpec, *, vectors: Optional[np.ndarray] = None, k: int = RECALL_K,
               queries: int = RECALL_QUERIES, seed: int = 0) -> tuple[IndexSpec, Tuning, dict[str, Any]]:
    """Pick the value of ``spec.target_recall`` for the built ``index`` (ids 0..N-1; ``spec`` resolved).

    ``vectors``: the exact gallery vectors (needed for a true IVF-PQ ground truth). Returns the spec with the
    chosen value, the :class:`Tuning`, and the manifest's recall entry at that value (own vector counted,
    as :func:`~.faiss_index.measure_recall` gives it). The index's own default is set to the chosen value.
    """
    if spec.target_recall is None:
        raise ValueError("tune_index needs a spec with target_recall")
    parameter = TUNED_PARAMETER[spec.kind]
    lo, hi = search_range(spec, int(index.ntotal))
    probe = RecallProbe.sample(index, k=k, queries=queries, seed=seed, vectors=vectors)
    sweep: dict[int, tuple[float, float]] = {}

    def held_out(value: int) -> float:
        if value not in sweep:
            sweep[value] = probe.measure(index, search_params(replace(spec, **{parameter: value})))
        return sweep[value][1]

    chosen = smallest_reaching(held_out, lo, hi, float(spec.target_recall))
    if chosen is None:  # the best value measured (the smallest among equals)
        chosen = max(sweep, key=lambda value: (sweep[value][1], -value))
    tuned = replace(spec, **{parameter: int(chosen)})
    apply_search_defaults(index, tuned)
    tuning = Tuning(spec.kind, float(spec.target_recall), parameter, int(chosen), hi, sweep, int(len(probe.rows)),
                    probe.k)
    return tuned, tuning, probe.entry(tuned, sweep[chosen][0])


# ================================================================================================ reporting
_HINTS = {
    "ivf": "IVF-Flat probing every list is exact search: use kind flat",
    "hnsw": "rebuild with a larger --ef-construction or --hnsw-m, or use kind ivf",
    "ivfpq": "re-rank exactly with --refine (e.g. 10) or use more sub-quantizers (--pq-m)",
}


def describe_tuning(index: Mapping[str, Any]) -> Optional[str]:
    """One line on the tuning recorded in a manifest's ``index`` entry (None when it has none)."""
    tuning = index.get("tuning")
    if not tuning:
        return None
    name = "efSearch" if tuning["parameter"] == "ef_search" else tuning["parameter"]
    recall = tuning[f"recall_at_{RECALL_K}"]
    chosen = f"{name}={tuning['chosen']}"
    sweep = ", ".join(f"{value}:{r:.3f}" for value, r in tuning.get("sweep", []))
    held = f"{tuning.get('queries')} gallery images held out as queries; sweep {sweep}"
    if tuning.get("reached"):
        return f"{chosen}, the smallest reaching recall@{RECALL_K} {tuning['target_recall']}: {recall:.4f} ({held})"
    kind = index.get("kind")
    refined = kind == "ivfpq" and (index.get("params") or {}).get("refine")
    hint = "raise --refine or --pq-m" if refined else _HINTS.get(str(kind), "")
    limit = "nlist" if tuning["parameter"] == "nprobe" else "the cap"
    return (f"target recall@{RECALL_K} {tuning['target_recall']} NOT reached: best {chosen} gives {recall:.4f} "
            f"({name} up to {tuning.get('maximum')} = {limit} tried), kept; {hint} ({held})")


def recall_rows(index: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The ``mult index`` report rows on recall: measured recall@10 and, when tuned, the tuning line."""
    rows = []
    recall = index.get(f"recall_at_{RECALL_K}")
    if recall is not None:
        note = (", against PQ-decoded vectors: optimistic" if index.get("recall_truth") == "pq-decoded vectors"
                else "")
        rows.append((f"recall@{RECALL_K}", f"{recall:.4f} vs exact ({index.get('recall_queries')} gallery images "
                                           f"as queries{note})"))
    tuning = describe_tuning(index)
    if tuning:
        rows.append(("tuning", tuning))
    return rows
