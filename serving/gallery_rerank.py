"""Query-time cross-modality re-ranking of a gallery search (``mult search --rerank``, the page's toggle).

What is re-ranked: the top ``top_n`` images of the query's target modality that the index returns (after the
filter, if any) — never the whole gallery. They are the gallery side of :func:`mult.rerank.rerank_candidates`
(the official MULT ``re_ranking_cross`` on the small problem), and their mutual distances give that side's
neighbours. The query side is the query plus, when the gallery holds images of the query's own modality, its
``top_n`` nearest of those: the query's own neighbours, as the other queries are in the official evaluation.
Without them the query stands alone, and re-ranking rests on the candidates' structure only (measured in
:func:`mult.rerank.rerank_candidates`: on a clustered synthetic set it fixes 5 of 16 wrong top matches but
breaks 9 of 104 right ones; with the query's neighbours it fixes 14 and breaks none) — hence off by default.

Cost per query: one extra index search for the neighbours, the stored vectors of at most 2 x ``top_n`` images,
and the re-ranking itself (a few ms at top 50-100 on 2 CPU cores; BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np

from mult.data.records import Modality
from mult.rerank import OFFICIAL_ETA, OFFICIAL_TEST_K, rerank_candidates
from mult.serving.gallery_filter import GalleryFilter
from mult.serving.opened_gallery import Gallery, Hit

#: Candidates re-ranked per query by default (the index's top 100 of the target modality).
DEFAULT_TOP_N = 100


def stored_vectors(gallery: Gallery, ids: list[int]) -> np.ndarray:
    """The indexed vectors of gallery ``ids`` [len(ids), D] (exact for flat, IVF-Flat and HNSW-Flat)."""
    if not ids:
        return np.zeros((0, gallery.embedding_size), np.float32)
    return gallery.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))


def cross_modality_hits(gallery: Gallery, embedding: np.ndarray, k: int, query_modality: Modality, target: Modality,
                        *, where: Optional[GalleryFilter] = None, rerank_top: Optional[int] = None,
                        rerank_k: Optional[int] = None, nprobe: Optional[int] = None,
                        ef_search: Optional[int] = None) -> list[Hit]:
    """The search of ``mult search`` and the page: the top ``k`` of the ``target`` images ``where`` lets through
    (:meth:`Gallery.search_modality`), re-ranked from the index's top ``rerank_top`` when that is given
    (``rerank_k``: default the official evaluator's)."""
    if not rerank_top:
        return gallery.search_modality(embedding, k, target, nprobe=nprobe, ef_search=ef_search, where=where)
    return reranked_search(gallery, embedding, k, query_modality, target, top_n=rerank_top, where=where,
                           rerank_k=rerank_k or OFFICIAL_TEST_K, nprobe=nprobe, ef_search=ef_search)


def reranked_search(gallery: Gallery, embedding: np.ndarray, k: int, query_modality: Modality, target: Modality,
                    *, top_n: int = DEFAULT_TOP_N, where: Optional[GalleryFilter] = None,
                    rerank_k: int = OFFICIAL_TEST_K, eta: float = OFFICIAL_ETA, nprobe: Optional[int] = None,
                    ef_search: Optional[int] = None) -> list[Hit]:
    """The top ``k`` of the index's top ``top_n`` target images, re-ordered by cross-modality re-ranking.

    Each hit keeps its cosine ``score`` and gains ``distance`` (the re-ranked distance, smaller = closer); ranks
    are renumbered. ``rerank_k`` and ``eta`` are the official evaluator's (k 15, eta 0.1) by default.
    """
    query = np.asarray(embedding, dtype=np.float32).reshape(-1)
    candidates = gallery.search_modality(query, max(int(top_n), int(k)), target, nprobe=nprobe,
                                         ef_search=ef_search, where=where)
    if len(candidates) < 2:  # nothing to re-order
        return candidates[:k]
    own = []
    if len(gallery.modalities) >= 2 and gallery.modalities.get(query_modality.value, 0) > 0:
        own = [h.id for h in gallery.search(query, int(top_n), nprobe=nprobe, ef_search=ef_search,
                                            where=GalleryFilter(modality=query_modality))[0]]
    neighbours = stored_vectors(gallery, own) if own else None
    result = rerank_candidates(query, stored_vectors(gallery, [h.id for h in candidates]),
                               same_modality=neighbours, k=rerank_k, eta=eta)
    return [replace(candidates[i], rank=rank, distance=float(d))
            for rank, (i, d) in enumerate(zip(result.order[:k].tolist(), result.distances[:k].tolist()), start=1)]
