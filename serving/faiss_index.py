"""The faiss level of the gallery: which index (exact inner product, IVF, HNSW), how it is built and trained, and
how close an approximate index comes to exact search (recall@k measured against exact top-k).

Every index is an ``IndexIDMap2`` around a Flat / IVF-Flat / HNSW-Flat inner-product index, so vector ids are
stable across additions. :mod:`mult.serving.gallery` keeps these indexes in gallery directories.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Optional

import faiss
import numpy as np
from tqdm import tqdm

from mult.errors import MultError


KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")
#: Vectors added to an HNSW index per call (a progress-bar step for its slow insertions).
ADD_CHUNK = 16_384
#: Gallery vectors used as queries when measuring an approximate index's recall@10 against exact search.
RECALL_QUERIES = 1000
RECALL_K = 10
#: faiss k-means wants >= 39 training points per list; fewer lists than that are pointless.
MIN_POINTS_PER_LIST = 39


# ================================================================================================ index spec
@dataclass(frozen=True)
class IndexSpec:
    """Which faiss index, with its parameters. ``nlist=None`` means ~4*sqrt(N) lists (resolved at build).

    IVF lists are trained on the gallery itself (at most ``train_per_list * nlist`` vectors, a seeded sample);
    ``nprobe`` and ``ef_search`` are stored defaults that each search may override.
    """

    kind: str = "flat"
    nlist: Optional[int] = None
    nprobe: int = 16
    train_per_list: int = 64
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 64

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MultError(f"index kind {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        for name in ("nprobe", "train_per_list", "hnsw_m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise MultError(f"index parameter {name}={value!r} must be a positive integer")
        if self.nlist is not None and (isinstance(self.nlist, bool) or not isinstance(self.nlist, (int, np.integer))
                                       or self.nlist < 1):
            raise MultError(f"index parameter nlist={self.nlist!r} must be a positive integer (or left out)")

    def resolved(self, n: int) -> "IndexSpec":
        """This spec with ``nlist`` fixed for a gallery of ``n`` vectors (IVF only)."""
        if self.kind != "ivf":
            return self
        nlist = self.nlist if self.nlist is not None else default_nlist(n)
        if nlist > n:
            raise MultError(f"IVF nlist={nlist} is larger than the gallery ({n} images); use fewer lists or kind 'flat'")
        return replace(self, nlist=int(nlist), nprobe=int(min(self.nprobe, nlist)))  # faiss probes at most nlist

    def params(self) -> dict[str, int]:
        """The parameters that matter for this kind (what the manifest records)."""
        if self.kind == "ivf":
            return {"nlist": int(self.nlist or 0), "nprobe": self.nprobe, "train_per_list": self.train_per_list}
        if self.kind == "hnsw":
            return {"M": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}
        return {}

    @classmethod
    def from_manifest(cls, index: Mapping[str, Any]) -> "IndexSpec":
        params = dict(index.get("params") or {})
        kind = index.get("kind", "flat")
        if kind == "ivf":
            return cls("ivf", nlist=params.get("nlist"), nprobe=params.get("nprobe", 16),
                       train_per_list=params.get("train_per_list", 64))
        if kind == "hnsw":
            return cls("hnsw", hnsw_m=params.get("M", 32), ef_construction=params.get("ef_construction", 40),
                       ef_search=params.get("ef_search", 64))
        return cls(kind)

    def describe(self) -> str:
        if self.kind == "ivf":
            return f"ivf (IVF-Flat, nlist={self.nlist}, nprobe={self.nprobe})"
        if self.kind == "hnsw":
            return f"hnsw (HNSW-Flat, M={self.hnsw_m}, efSearch={self.ef_search})"
        return "flat (exact inner product)"


def default_nlist(n: int) -> int:
    """IVF list count for ``n`` vectors: ~4*sqrt(n) (faiss guidelines), but at most n/39 so that k-means has
    its minimum of 39 training points per list, and at least 1."""
    return int(max(1, min(round(4 * math.sqrt(max(n, 1))), n // MIN_POINTS_PER_LIST)))


def new_index(dim: int, spec: IndexSpec) -> faiss.Index:
    """An empty inner-product index of ``spec`` (resolved) wrapped in ``IndexIDMap2`` for stable ids."""
    metric = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif spec.kind == "ivf":
        if not spec.nlist:
            raise ValueError("resolve the IVF spec (IndexSpec.resolved) before creating the index")
        inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(spec.nlist), metric)
        inner.nprobe = int(spec.nprobe)
        if spec.nlist == 1:
            inner.cp.min_points_per_centroid = 1  # one list: nothing to cluster, so no "too few points" warning
        inner.make_direct_map()  # lets add() reconstruct stored vectors to re-measure recall
    else:
        inner = faiss.IndexHNSWFlat(dim, int(spec.hnsw_m), metric)
        inner.hnsw.efConstruction = int(spec.ef_construction)
        inner.hnsw.efSearch = int(spec.ef_search)
    return faiss.IndexIDMap2(inner)  # faiss's Python layer keeps `inner` alive with the wrapper


def train_sample(n: int, spec: IndexSpec, seed: int = 0) -> np.ndarray:
    """Sorted row numbers of the vectors an IVF index is trained on (all of them when few enough)."""
    size = min(n, int(spec.nlist or 1) * spec.train_per_list)
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def add_vectors(index: faiss.Index, vectors: np.ndarray, first_id: int, *, progress: bool = False) -> None:
    """Append ``vectors`` with ids ``first_id, first_id + 1, ...``.

    Flat and IVF take them in one call: faiss then grows its storage once, whereas each chunked call may
    reallocate (briefly holding old and new buffers). HNSW insertion is slow, so it goes in chunks with a bar.
    """
    n = len(vectors)
    chunk = ADD_CHUNK if isinstance(faiss.downcast_index(index.index), faiss.IndexHNSW) else max(n, 1)
    with tqdm(total=n, desc="index add", unit="vec", disable=not progress or n == 0, leave=False) as bar:
        for start in range(0, n, chunk):
            block = np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32)
            index.add_with_ids(block, np.arange(first_id + start, first_id + start + len(block), dtype=np.int64))
            bar.update(len(block))


def build_index(vectors: np.ndarray, spec: IndexSpec, *, seed: int = 0, progress: bool = False) -> faiss.Index:
    """Create, train (IVF) and fill an index of ``spec`` with ``vectors`` as ids 0..N-1."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    spec = spec.resolved(len(vectors))
    index = new_index(vectors.shape[1], spec)
    if not index.is_trained:
        index.train(vectors[train_sample(len(vectors), spec, seed)])
    add_vectors(index, vectors, 0, progress=progress)
    return index


def search_params(spec: IndexSpec, nprobe: Optional[int] = None, ef_search: Optional[int] = None,
                  selector: Optional[faiss.IDSelector] = None):
    """Per-call faiss search parameters (no shared state is mutated, so concurrent searches are safe).

    ``selector`` (a faiss ID selector over gallery ids, :mod:`mult.serving.gallery_filter`) restricts the search
    to the ids it selects; ``IndexIDMap2`` hands it on to the inner index. The caller keeps it alive."""
    extra = {} if selector is None else {"sel": selector}
    if spec.kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=int(nprobe or spec.nprobe), **extra)
    if spec.kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=int(ef_search or spec.ef_search), **extra)
    return faiss.SearchParameters(**extra) if extra else None


def stored_vector_chunks(index: faiss.Index, chunk: int = 65_536) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, vectors)`` blocks of an IDMap2-wrapped index's stored vectors (row = id here)."""
    inner = faiss.downcast_index(index.index)
    for start in range(0, index.ntotal, chunk):
        yield start, inner.reconstruct_n(start, min(chunk, index.ntotal - start))


# ================================================================================================ recall
def exact_topk(queries: np.ndarray, chunks: Iterable[tuple[int, np.ndarray]], k: int) -> np.ndarray:
    """Ids [Q, k] of the ``k`` largest inner products of each query over database blocks ``(first id, block)``.

    Streams the database, so exact ground truth for a gallery larger than memory costs one block at a time.
    Rows with fewer than ``k`` database vectors are padded with -1.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for first, block in chunks:
        scores = queries @ np.asarray(block, dtype=np.float32).T
        ids = np.broadcast_to(np.arange(first, first + scores.shape[1], dtype=np.int64), scores.shape)
        all_scores = np.concatenate([best_scores, scores], axis=1)
        all_ids = np.concatenate([best_ids, ids], axis=1)
        keep = np.argpartition(-all_scores, k - 1, axis=1)[:, :k] if all_scores.shape[1] > k else \
            np.broadcast_to(np.arange(all_scores.shape[1]), (len(queries), all_scores.shape[1]))
        best_scores = np.take_along_axis(all_scores, keep, axis=1)
        best_ids = np.take_along_axis(all_ids, keep, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """k-recall@k: the mean over queries of |found_q ∩ truth_q| / k, with k = ``truth.shape[1]``.

    ``found`` and ``truth`` are id arrays [Q, k]; -1 (no result) never matches. Example: found
    [[1, 2, 3], [4, 5, 6]], truth [[3, 2, 9], [7, 8, 9]] gives (2/3 + 0/3) / 2 = 1/3.
    """
    found = np.asarray(found)
    truth = np.asarray(truth)
    if found.shape != truth.shape or found.ndim != 2 or truth.shape[1] == 0:
        raise ValueError(f"found {found.shape} and truth {truth.shape} must both be [Q, k] with k >= 1")
    if len(truth) == 0:
        return float("nan")
    hit = (found[:, :, None] == truth[:, None, :]) & (found[:, :, None] >= 0)
    return float(hit.any(axis=2).sum() / truth.size)


def measure_recall(index: faiss.Index, spec: IndexSpec, *, k: int = RECALL_K, queries: int = RECALL_QUERIES,
                   seed: int = 0) -> dict[str, Any]:
    """recall@k of ``index`` against exact search, with a seeded sample of its own vectors as queries."""
    n = int(index.ntotal)
    k = min(k, n)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False))
    q = index.reconstruct_batch(rows.astype(np.int64)) if len(rows) else np.zeros((0, index.d), np.float32)
    truth = exact_topk(q, stored_vector_chunks(index), k)
    _, found = index.search(q, k, params=search_params(spec))
    return {f"recall_at_{RECALL_K}": round(recall_at_k(found, truth), 4), "recall_queries": int(len(rows)),
            "recall_k": int(k)}
