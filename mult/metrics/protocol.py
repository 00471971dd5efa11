"""Multi-trial evaluation (METHOD.md §8): SYSU-MM01's 10 random galleries and RegDB's 10 splits.

Features go in, a :class:`ProtocolSummary` comes out: one :class:`TrialResult` per trial/split
(Rank-1/5/10/20, mAP, mINP in percent) plus their mean and standard deviation, as a JSON-ready dict or a
fixed-width table. The metric itself is :func:`mult.metrics.evaluate_sysu` / ``evaluate_regdb``.

SYSU galleries are subsets of one pool of gallery features extracted once (all RGB test images); which
pool rows form trial ``t``'s gallery is decided by the data reader (``random.seed(t)``, one image per id
and camera), and passed in as row indices. Distances are computed once for the union of those rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Callable, NamedTuple, Sequence

import numpy as np

from mult.errors import MultError
from mult.metrics.ranking import evaluate_regdb, evaluate_sysu

CMC_RANKS = (1, 5, 10, 20)  # the ranks published tables report

#: ``(query_feats, gallery_feats) -> [Nq, Ng]`` distances, smaller = closer (e.g. a re-ranking).
Distance = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------------------------------
# features -> distances


def _as_features(feats: np.ndarray, name: str) -> np.ndarray:
    f = np.asarray(feats)
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise MultError(f"{name} must be a non-empty 2-D array [items, dim], got shape {f.shape}")
    if f.dtype.kind not in "fiu":
        raise MultError(f"{name} must hold real numbers, got dtype {f.dtype}")
    f = f.astype(np.float32, copy=False)
    if not np.isfinite(f).all():
        raise MultError(f"{name} contains NaN or infinite values: check the model's output")
    return f


def l2_normalize(feats: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); all-zero rows stay zero instead of becoming NaN."""
    f = np.asarray(feats, dtype=np.float32)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.maximum(norms, np.float32(1e-12))


def feature_distance(query_feats: np.ndarray, gallery_feats: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance between L2-normalised features (METHOD.md §8.1), ``[Nq, Ng]`` float32.

    ``||q - g||^2 = ||q||^2 + ||g||^2 - 2 q.g`` with one matrix product; for unit vectors this is
    ``2 - 2 cos(q, g)``, so the ranking is the cosine ranking. Clipped at 0 against rounding.
    """
    q = l2_normalize(query_feats)
    g = l2_normalize(gallery_feats)
    d = np.einsum("ij,ij->i", q, q)[:, None] + np.einsum("ij,ij->i", g, g)[None, :]
    d -= 2.0 * (q @ g.T)
    return np.maximum(d, 0.0, out=d)


# ----------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class TrialResult:
    """One evaluation (a SYSU trial, a RegDB split, or the mean/std row); all numbers in percent."""

    label: str
    rank1: float
    rank5: float
    rank10: float
    rank20: float
    mAP: float
    mINP: float

    @classmethod
    def from_metrics(cls, label: str, cmc: np.ndarray, mAP: float, mINP: float) -> "TrialResult":
        """Build from an ``evaluate_*`` result (fractions in [0, 1]); ``cmc`` needs at least 20 entries."""
        cmc = np.asarray(cmc)
        if cmc.ndim != 1 or cmc.size < max(CMC_RANKS):
            raise MultError(f"cmc must be a 1-D curve of at least {max(CMC_RANKS)} ranks, got shape {cmc.shape}")
        ranks = [100.0 * float(cmc[r - 1]) for r in CMC_RANKS]
        return cls(label, *ranks, 100.0 * float(mAP), 100.0 * float(mINP))

    def values(self) -> list[float]:
        """The six numbers in table order."""
        return [getattr(self, f.name) for f in fields(self)[1:]]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


_COLUMNS = ("R-1", "R-5", "R-10", "R-20", "mAP", "mINP")


@dataclass(frozen=True)
class ProtocolSummary:
    """Results of every trial of one protocol, with their mean and standard deviation.

    ``std`` is the sample standard deviation over trials (``ddof=1``), 0 for a single trial.
    """

    protocol: str
    trials: tuple[TrialResult, ...]
    unit: str = "trial"  # what one row is: "trial" (SYSU galleries) or "split" (RegDB)

    def _stacked(self) -> np.ndarray:
        return np.array([t.values() for t in self.trials], dtype=np.float64)

    @property
    def mean(self) -> TrialResult:
        return TrialResult("mean", *self._stacked().mean(axis=0).tolist())

    @property
    def std(self) -> TrialResult:
        values = self._stacked()
        spread = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
        return TrialResult("std", *spread.tolist())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: protocol name, per-trial rows, mean and std (percent)."""
        return {
            "protocol": self.protocol,
            "unit": self.unit,
            "num_trials": len(self.trials),
            "trials": [t.as_dict() for t in self.trials],
            "mean": self.mean.as_dict(),
            "std": self.std.as_dict(),
        }

    def render(self) -> str:
        """Fixed-width table: one row per trial, then mean and std (percent, 2 decimals)."""
        rows = [*self.trials, self.mean, self.std]
        width = max(len(r.label) for r in rows)
        header = f"{'':<{width}}" + "".join(f"{c:>8}" for c in _COLUMNS)
        count = f"{len(self.trials)} {self.unit}{'s' if len(self.trials) != 1 else ''}"
        lines = [f"{self.protocol} ({count})", header]
        for i, row in enumerate(rows):
            if i == len(self.trials):
                lines.append("-" * len(header))
            lines.append(f"{row.label:<{width}}" + "".join(f"{v:>8.2f}" for v in row.values()))
        return "\n".join(lines)


def _summary(protocol: str, unit: str, labels: Sequence[str], results: Sequence[tuple]) -> ProtocolSummary:
    rows = tuple(TrialResult.from_metrics(lab, *res) for lab, res in zip(labels, results))
    return ProtocolSummary(protocol, rows, unit)


def _labels(labels: Sequence[str] | None, default: list[str]) -> list[str]:
    if labels is None:
        return default
    labels = list(labels)
    if len(labels) != len(default):
        raise MultError(f"got {len(labels)} labels for {len(default)} trials: give one label per trial")
    return labels


# ----------------------------------------------------------------------------------------------------
# runners


def evaluate_sysu_trials(
    query_feats: np.ndarray,
    q_pids: np.ndarray,
    q_cams: np.ndarray,
    pool_feats: np.ndarray,
    pool_pids: np.ndarray,
    pool_cams: np.ndarray,
    gallery_indices: Sequence[np.ndarray],
    *,
    protocol: str = "sysu",
    labels: Sequence[str] | None = None,
    distance: Distance | None = None,
) -> ProtocolSummary:
    """SYSU-MM01 multi-trial protocol (METHOD.md §8.2): one gallery per trial, all sharing the queries.

    Args:
        query_feats: ``[Nq, D]`` IR query features (raw or normalised: they are L2-normalised here).
        q_pids, q_cams: query ids and camera numbers (3 or 6).
        pool_feats: ``[Np, D]`` features of every RGB test image that a gallery may use.
        pool_pids, pool_cams: ids and camera numbers of the pool rows.
        gallery_indices: one integer array of pool row indices per trial (trial ``t`` = seed ``t``).
        protocol: name shown in the table and JSON (e.g. ``"sysu-all"``, ``"sysu-indoor"``).
        labels: one label per trial; default ``"trial 0"``, ``"trial 1"``, ...
        distance: replaces :func:`feature_distance`; it is called once per trial with that trial's
            gallery, since a re-ranking (``mult.rerank``) depends on the whole gallery.

    Returns:
        A :class:`ProtocolSummary` with one row per trial.
    """
    query = _as_features(query_feats, "query_feats")
    pool = _as_features(pool_feats, "pool_feats")
    if query.shape[1] != pool.shape[1]:
        raise MultError(
            f"query features have dim {query.shape[1]} but pool features have {pool.shape[1]}: use one model"
        )
    num_q, num_p = query.shape[0], pool.shape[0]
    for name, arr, n in (("q_pids", q_pids, num_q), ("q_cams", q_cams, num_q),
                         ("pool_pids", pool_pids, num_p), ("pool_cams", pool_cams, num_p)):
        if np.shape(arr) != (n,):
            raise MultError(f"{name} must have shape ({n},) to match the features, got {np.shape(arr)}")
    if len(gallery_indices) == 0:
        raise MultError("gallery_indices is empty: give at least one trial's gallery rows")
    trials = []
    for t, idx in enumerate(gallery_indices):
        idx = np.asarray(idx)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
            raise MultError(f"gallery_indices[{t}] must be a non-empty 1-D integer array, got {idx.dtype} {idx.shape}")
        if idx.min() < 0 or idx.max() >= num_p:
            raise MultError(f"gallery_indices[{t}] has rows outside the pool [0, {num_p}): check the gallery sampling")
        trials.append(idx)

    # Plain distances once, for the pool rows that some trial uses.
    used = np.unique(np.concatenate(trials))
    dist_used = feature_distance(query, pool[used]) if distance is None else None
    pool_pids, pool_cams = np.asarray(pool_pids), np.asarray(pool_cams)
    results = []
    for idx in trials:
        dist = distance(query, pool[idx]) if distance is not None else dist_used[:, np.searchsorted(used, idx)]
        results.append(evaluate_sysu(dist, q_pids, pool_pids[idx], q_cams, pool_cams[idx]))
    return _summary(protocol, "trial", _labels(labels, [f"trial {t}" for t in range(len(trials))]), results)


class RegDBSplit(NamedTuple):
    """Test data of one RegDB split in one direction (e.g. visible queries, thermal gallery)."""

    query_feats: np.ndarray
    q_pids: np.ndarray
    gallery_feats: np.ndarray
    g_pids: np.ndarray


def evaluate_regdb_splits(
    splits: Sequence[RegDBSplit | tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    *,
    protocol: str = "regdb",
    labels: Sequence[str] | None = None,
    distance: Distance | None = None,
) -> ProtocolSummary:
    """RegDB protocol over splits (METHOD.md §8.3): each split has its own model, queries and gallery.

    Args:
        splits: one ``(query_feats, q_pids, gallery_feats, g_pids)`` per split (a :class:`RegDBSplit`
            or plain tuple). For visible-to-thermal the queries are visible; swap for thermal-to-visible.
        protocol: name shown in the table and JSON (e.g. ``"regdb-v2t"``).
        labels: one label per split; default ``"split 1"``, ``"split 2"``, ... (the idx file numbers).
        distance: replaces :func:`feature_distance` (e.g. a re-ranking, ``mult.rerank``).

    Returns:
        A :class:`ProtocolSummary` with one row per split.
    """
    if len(splits) == 0:
        raise MultError("splits is empty: give at least one RegDB split")
    results = []
    for s, split in enumerate(splits):
        if len(split) != 4:
            raise MultError(f"splits[{s}] must be (query_feats, q_pids, gallery_feats, g_pids), got {len(split)} items")
        q, qp, g, gp = split
        q = _as_features(q, f"splits[{s}].query_feats")
        g = _as_features(g, f"splits[{s}].gallery_feats")
        if q.shape[1] != g.shape[1]:
            raise MultError(f"splits[{s}]: query dim {q.shape[1]} != gallery dim {g.shape[1]}: use one model")
        results.append(evaluate_regdb((distance or feature_distance)(q, g), qp, gp))
    return _summary(protocol, "split", _labels(labels, [f"split {s + 1}" for s in range(len(splits))]), results)
