"""The faiss level of the gallery: which index (exact inner product, IVF, HNSW, IVF-PQ), how it is built and
trained, and how close an approximate index comes to exact search (recall@k measured against exact top-k).

Every index is an ``IndexIDMap2`` around a Flat / IVF-Flat / HNSW-Flat / IVF-PQ inner-product index, so vector ids
are stable across additions. :mod:`mult.serving.gallery` keeps these indexes in gallery directories;
:mod:`mult.serving.index_tuning` steers nprobe / efSearch to a target recall.

IVF-PQ (kind ``ivfpq``) stores ``pq_m`` one-byte codes per vector instead of its ``4 * d`` float bytes: the kind for
galleries that do not fit in memory as Flat. Its scores are approximate. ``refine=K`` wraps it in
``IndexRefineFlat``, which re-ranks the ``K * k`` best PQ candidates with exact inner products -- but
IndexRefineFlat keeps every full float32 vector beside the codes (in RAM and in ``index.faiss``), so a refined
IVF-PQ needs *more* memory than Flat: it buys speed and exact top-k scores, not memory. Hence ``refine=0`` (the
compressed index alone) is the default. (Re-ranking from vectors kept on disk would need them in the gallery; a
read-only mmap of the refine vectors, ``faiss.IO_FLAG_MMAP_IFC``, searches correctly in faiss 1.15.1 but aborts
the process on ``add``, so the gallery does not use it.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Optional

import faiss
import numpy as np
from tqdm import tqdm

from mult.errors import MultError


KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw", "ivfpq")
#: Kinds with inverted lists (nlist, nprobe, trained on a sample).
IVF_KINDS: tuple[str, ...] = ("ivf", "ivfpq")
#: IVF-PQ code size per sub-quantizer: 8 bits, 256 centroids each (so it needs >= 256 training vectors).
PQ_NBITS = 8
PQ_CODES = 1 << PQ_NBITS
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
    ``nprobe`` and ``ef_search`` are stored defaults that each search may override. IVF-PQ (``ivfpq``) adds
    ``pq_m`` sub-quantizers of :data:`PQ_NBITS` bits (``None``: d/4, resolved with the embedding size) and
    ``refine``, the k_factor of exact re-ranking (0: none; see the module notes for its memory cost).
    ``target_recall`` asks the build to pick nprobe / efSearch for that recall@10 (:mod:`~.index_tuning`).
    """

    kind: str = "flat"
    nlist: Optional[int] = None
    nprobe: int = 16
    train_per_list: int = 64
    hnsw_m: int = 32
    ef_construction: int = 40
    ef_search: int = 64
    pq_m: Optional[int] = None
    refine: int = 0
    target_recall: Optional[float] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise MultError(f"index kind {self.kind!r} is unknown; use one of {', '.join(KINDS)}")
        for name in ("nprobe", "train_per_list", "hnsw_m", "ef_construction", "ef_search", "nlist", "pq_m"):
            value = getattr(self, name)
            if name in ("nlist", "pq_m") and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                hint = " (or left out)" if name in ("nlist", "pq_m") else ""
                raise MultError(f"index parameter {name}={value!r} must be a positive integer{hint}")
        if isinstance(self.refine, bool) or not isinstance(self.refine, (int, np.integer)) or self.refine < 0:
            raise MultError(f"index parameter refine={self.refine!r} must be 0 (no re-ranking) or a positive integer "
                            "(re-rank refine * k candidates exactly)")
        if self.kind != "ivfpq" and (self.pq_m is not None or self.refine):
            raise MultError(f"pq_m and refine (--pq-m, --refine) are IVF-PQ parameters; use them with kind 'ivfpq', "
                            f"not {self.kind!r}")
        if self.target_recall is not None:
            target = self.target_recall
            if isinstance(target, bool) or not isinstance(target, (int, float, np.number)) or not 0 < target <= 1:
                raise MultError(f"target recall {target!r} must be a number in (0, 1], e.g. 0.95")
            if self.kind == "flat":
                raise MultError("a target recall (--target-recall) steers an approximate index; kind 'flat' is "
                                "exact already: use kind ivf, hnsw or ivfpq")

    def resolved(self, n: int, dim: Optional[int] = None) -> "IndexSpec":
        """This spec with ``nlist`` fixed for a gallery of ``n`` vectors (IVF kinds), and for IVF-PQ with ``pq_m``
        fixed for ``dim``-d vectors (when ``dim`` is given; MultError when it does not divide ``dim``)."""
        if self.kind not in IVF_KINDS:
            return self
        nlist = self.nlist if self.nlist is not None else default_nlist(n)
        if nlist > n:
            raise MultError(f"IVF nlist={nlist} is larger than the gallery ({n} images); use fewer lists or kind 'flat'")
        spec = replace(self, nlist=int(nlist), nprobe=int(min(self.nprobe, nlist)))  # faiss probes at most nlist
        if self.kind == "ivfpq":
            if n < PQ_CODES:
                raise MultError(f"IVF-PQ needs at least {PQ_CODES} images to train its {PQ_NBITS}-bit codebooks "
                                f"(the gallery has {n}); use kind 'ivf' or 'flat' for a gallery this small")
            if dim is not None:
                spec = replace(spec, pq_m=checked_pq_m(self.pq_m, int(dim)))
        return spec

    def params(self) -> dict[str, int]:
        """The parameters that matter for this kind (what the manifest records)."""
        if self.kind in IVF_KINDS:
            ivf = {"nlist": int(self.nlist or 0), "nprobe": self.nprobe, "train_per_list": self.train_per_list}
            if self.kind == "ivfpq":
                ivf.update(pq_m=int(self.pq_m or 0), pq_nbits=PQ_NBITS, refine=int(self.refine))
            return ivf
        if self.kind == "hnsw":
            return {"M": self.hnsw_m, "ef_construction": self.ef_construction, "ef_search": self.ef_search}
        return {}

    @classmethod
    def from_manifest(cls, index: Mapping[str, Any]) -> "IndexSpec":
        params = dict(index.get("params") or {})
        kind = index.get("kind", "flat")
        if kind in IVF_KINDS:
            pq = {"pq_m": params.get("pq_m"), "refine": params.get("refine", 0)} if kind == "ivfpq" else {}
            return cls(kind, nlist=params.get("nlist"), nprobe=params.get("nprobe", 16),
                       train_per_list=params.get("train_per_list", 64), **pq)
        if kind == "hnsw":
            return cls("hnsw", hnsw_m=params.get("M", 32), ef_construction=params.get("ef_construction", 40),
                       ef_search=params.get("ef_search", 64))
        return cls(kind)

    def describe(self) -> str:
        if self.kind == "ivf":
            return f"ivf (IVF-Flat, nlist={self.nlist}, nprobe={self.nprobe})"
        if self.kind == "ivfpq":
            rerank = (f"exact re-ranking of {self.refine}*k candidates" if self.refine else
                      "no re-ranking: approximate scores")
            return (f"ivfpq (IVF-PQ, nlist={self.nlist}, {self.pq_m} x {PQ_NBITS}-bit codes, nprobe={self.nprobe}, "
                    f"{rerank})")
        if self.kind == "hnsw":
            return f"hnsw (HNSW-Flat, M={self.hnsw_m}, efSearch={self.ef_search})"
        return "flat (exact inner product)"


def checked_pq_m(pq_m: Optional[int], dim: int) -> int:
    """IVF-PQ sub-quantizers for ``dim``-d vectors: ``pq_m`` when it divides ``dim`` (MultError otherwise), else
    the largest divisor of ``dim`` up to d/4 (4 dimensions per one-byte code: 16x smaller than float32)."""
    if pq_m is None:
        return next(m for m in range(max(1, dim // 4), 0, -1) if dim % m == 0)
    if dim % int(pq_m):
        divisors = [m for m in range(1, dim + 1) if dim % m == 0]
        raise MultError(f"IVF-PQ pq_m={pq_m} (--pq-m) does not divide the embedding size {dim}; use one of "
                        f"{', '.join(map(str, divisors))}")
    return int(pq_m)


def default_nlist(n: int) -> int:
    """IVF list count for ``n`` vectors: ~4*sqrt(n) (faiss guidelines), but at most n/39 so that k-means has
    its minimum of 39 training points per list, and at least 1."""
    return int(max(1, min(round(4 * math.sqrt(max(n, 1))), n // MIN_POINTS_PER_LIST)))


def new_index(dim: int, spec: IndexSpec) -> faiss.Index:
    """An empty inner-product index of ``spec`` (resolved) wrapped in ``IndexIDMap2`` for stable ids."""
    metric = faiss.METRIC_INNER_PRODUCT
    if spec.kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif spec.kind in IVF_KINDS:
        if not spec.nlist or (spec.kind == "ivfpq" and not spec.pq_m):
            raise ValueError("resolve the IVF spec (IndexSpec.resolved, with dim for ivfpq) before creating the index")
        if spec.kind == "ivf":
            inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(spec.nlist), metric)
        else:
            inner = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, int(spec.nlist), int(spec.pq_m), PQ_NBITS, metric)
            inner.pq.cp.min_points_per_centroid = 1  # build_index warns once about a small sample, not once per code
        inner.nprobe = int(spec.nprobe)
        if spec.nlist == 1:
            inner.cp.min_points_per_centroid = 1  # one list: nothing to cluster, so no "too few points" warning
        if spec.kind == "ivfpq" and spec.refine:
            # Exact re-ranking: the full vectors are kept beside the codes (module notes), and reconstruct()
            # returns them, so no direct map is needed.
            inner = faiss.IndexRefineFlat(inner)
            inner.k_factor = float(spec.refine)
        else:
            inner.make_direct_map()  # lets add() reconstruct stored vectors to re-measure recall
    else:
        inner = faiss.IndexHNSWFlat(dim, int(spec.hnsw_m), metric)
        inner.hnsw.efConstruction = int(spec.ef_construction)
        inner.hnsw.efSearch = int(spec.ef_search)
    return faiss.IndexIDMap2(inner)  # faiss's Python layer keeps `inner` alive with the wrapper


def train_sample(n: int, spec: IndexSpec, seed: int = 0) -> np.ndarray:
    """Sorted row numbers of the vectors an IVF index is trained on (all of them when few enough)."""
    size = min(n, int(spec.nlist or 1) * spec.train_per_list)
    if spec.kind == "ivfpq":  # the codebooks want train_per_list vectors for each of their 256 codes too
        size = min(n, max(size, PQ_CODES * spec.train_per_list))
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
    spec = spec.resolved(len(vectors), dim=vectors.shape[1])
    index = new_index(vectors.shape[1], spec)
    if not index.is_trained:
        sample = train_sample(len(vectors), spec, seed)
        if spec.kind == "ivfpq" and len(sample) < PQ_CODES * MIN_POINTS_PER_LIST:
            warnings.warn(f"IVF-PQ codebooks trained on {len(sample):,} vectors, fewer than the "
                          f"{PQ_CODES * MIN_POINTS_PER_LIST:,} faiss advises for {PQ_CODES} codes: IVF-PQ is meant "
                          "for large galleries (kind 'ivf' or 'flat' suit this one)", stacklevel=2)
        index.train(vectors[sample])
    add_vectors(index, vectors, 0, progress=progress)
    return index


def search_params(spec: IndexSpec, nprobe: Optional[int] = None, ef_search: Optional[int] = None,
                  selector: Optional[faiss.IDSelector] = None):
    """Per-call faiss search parameters (no shared state is mutated, so concurrent searches are safe).

    ``selector`` (a faiss ID selector over gallery ids, :mod:`mult.serving.gallery_filter`) restricts the search
    to the ids it selects; ``IndexIDMap2`` hands it on to the inner index. The caller keeps it alive."""
    extra = {} if selector is None else {"sel": selector}
    if spec.kind in IVF_KINDS:
        ivf = faiss.SearchParametersIVF(nprobe=int(nprobe or spec.nprobe), **extra)
        if spec.kind == "ivfpq" and spec.refine:
            # IndexRefine ignores its own `sel`: the selector filters the PQ candidates, in base_index_params.
            # IDMap2 does not translate it there, which is right here: gallery ids are the inner rows 0..N-1.
            return faiss.IndexRefineSearchParameters(k_factor=float(spec.refine), base_index_params=ivf)
        return ivf
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


def without_ids(ids: np.ndarray, drop: np.ndarray, width: int) -> np.ndarray:
    """The first ``width`` entries of each row of ``ids`` [Q, W] other than that row's ``drop`` id, in order."""
    keep = ids != np.asarray(drop)[:, None]
    return np.take_along_axis(ids, np.argsort(~keep, axis=1, kind="stable"), axis=1)[:, :width]


@dataclass(frozen=True)
class RecallProbe:
    """A seeded sample of gallery vectors as queries, with their exact neighbours: computed once, then
    :meth:`measure` any search parameters against it (what tuning does many times).

    Two recalls come from one search of ``k + 1`` neighbours. *Counted*: the query's own vector is one of its
    exact top-k, as in the standard faiss benchmark with database vectors as queries (what ``recall_at_10``
    in the manifest has always been). *Held out*: the query's own id is removed from both lists, so the query
    is scored like an image that is not in the gallery (a real query never is); an index almost always
    finds a vector itself, so counting it flatters recall by up to 1/k. Tuning steers the held-out one.
    """

    rows: np.ndarray
    queries: np.ndarray
    truth: np.ndarray
    k: int
    #: "gallery vectors", or "pq-decoded vectors" when the index keeps only IVF-PQ codes and no vectors were given
    #: (then the truth shares the codes' error and recall only sees what probing misses: optimistic).
    truth_from: str

    @classmethod
    def sample(cls, index: faiss.Index, *, k: int = RECALL_K, queries: int = RECALL_QUERIES, seed: int = 0,
               vectors: Optional[np.ndarray] = None) -> "RecallProbe":
        """Probe ``index`` (ids 0..N-1) with ``queries`` of its vectors; ``vectors`` [N, d], when given, are the
        exact originals (an IVF-PQ index stores only codes), else the index reconstructs them."""
        n = int(index.ntotal)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False)).astype(np.int64)
        if vectors is not None:
            vectors = np.asarray(vectors, dtype=np.float32)
            q = np.ascontiguousarray(vectors[rows])
            chunks: Iterable[tuple[int, np.ndarray]] = ((s, vectors[s:s + 65_536]) for s in range(0, n, 65_536))
        else:
            q = index.reconstruct_batch(rows) if len(rows) else np.zeros((0, index.d), np.float32)
            chunks = stored_vector_chunks(index)
        codes_only = vectors is None and isinstance(faiss.downcast_index(index.index), faiss.IndexIVFPQ)
        truth = exact_topk(q, chunks, min(k + 1, n))
        return cls(rows, q, truth, min(k, n), "pq-decoded vectors" if codes_only else "gallery vectors")

    def measure(self, index: faiss.Index, params: Any) -> tuple[float, float]:
        """``(counted, held_out)`` recall@k of ``index`` searched with faiss ``params`` (4 decimals)."""
        _, found = index.search(self.queries, self.truth.shape[1], params=params)
        counted = recall_at_k(found[:, :self.k], self.truth[:, :self.k])
        width = min(self.k, self.truth.shape[1] - 1)  # a gallery of k vectors has only k - 1 others
        held_out = 1.0 if width < 1 else recall_at_k(without_ids(found, self.rows, width),
                                                     without_ids(self.truth, self.rows, width))
        return round(counted, 4), round(held_out, 4)

    def entry(self, spec: IndexSpec, counted: float) -> dict[str, Any]:
        """The manifest's recall keys for a counted recall measured with this probe."""
        out: dict[str, Any] = {f"recall_at_{RECALL_K}": counted, "recall_queries": int(len(self.rows)),
                               "recall_k": int(self.k)}
        if spec.kind == "ivfpq":
            out["recall_truth"] = self.truth_from
        return out


def measure_recall(index: faiss.Index, spec: IndexSpec, *, k: int = RECALL_K, queries: int = RECALL_QUERIES,
                   seed: int = 0, vectors: Optional[np.ndarray] = None) -> dict[str, Any]:
    """recall@k of ``index`` against exact search, with a seeded sample of its own vectors as queries (each
    query's own vector counted, :class:`RecallProbe`); ``vectors``: the exact originals, when at hand."""
    probe = RecallProbe.sample(index, k=k, queries=queries, seed=seed, vectors=vectors)
    return probe.entry(spec, probe.measure(index, search_params(spec))[0])
