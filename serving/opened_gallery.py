"""An opened gallery: the faiss index, one record per vector id and the manifest; search it, add to it.

Building one is :func:`mult.serving.gallery_build.build_gallery`; the files are
:mod:`mult.serving.gallery_format`; :mod:`mult.serving.gallery` is the public face of both.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import faiss
import numpy as np

from mult.data.records import Modality, Record
from mult.errors import MultError
from mult.io import PathLike, atomic_directory
from mult.serving.faiss_index import IndexSpec, add_vectors, measure_recall, search_params
from mult.serving.gallery_embedding import DEFAULT_CHUNK, embed_records
from mult.serving.gallery_filter import GalleryFilter, format_time, id_selector
from mult.serving.gallery_format import (INDEX_FILE, MANIFEST_FILE, METADATA_FILE, modality_counts, read_gallery,
                                         utc_now, write_gallery_files)
from mult.serving.gallery_lock import update_lock
from mult.serving.gallery_model import check_same_model, encoder_info
from mult.serving.gallery_records import absolute_records, timed_records


#: Most candidates an HNSW search visits when a filter keeps few images (efSearch grows as the selection shrinks).
MAX_FILTERED_EF_SEARCH = 2048


@dataclass(frozen=True)
class Hit:
    """One search result. ``rank`` starts at 1; ``score`` is the cosine similarity (1 = identical)."""

    rank: int
    id: int
    score: float
    path: str
    pid: Optional[int]
    camid: int
    modality: str
    time: Optional[float] = None
    #: The re-ranked distance (smaller = closer) when the search was re-ranked (:mod:`mult.serving.gallery_rerank`).
    distance: Optional[float] = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def caption(self) -> str:
        """``#1 0.873 · id 12 · cam 3`` (``id ?`` when the identity is unknown) for rank lists and the app."""
        pid = "?" if self.pid is None else str(self.pid)
        return f"#{self.rank} {self.score:.3f} · id {pid} · cam {self.camid}"


class Gallery:
    """An opened gallery directory: the faiss index, one :class:`Record` per id, and the manifest."""

    def __init__(self, directory: Path, index: faiss.Index, records: list[Record], manifest: dict[str, Any]):
        self.directory = Path(directory)
        self.index = index
        self.records = records
        self.manifest = manifest
        self.spec = IndexSpec.from_manifest(manifest["index"])
        self._index_columns()
        self._gpu: Any = None

    def _index_columns(self) -> None:
        """The per-id arrays that filters and ``info`` read (pid -1 and time NaN where unknown)."""
        records = self.records
        self._pids = np.array([-1 if r.pid is None else r.pid for r in records], dtype=np.int64)
        self._camids = np.array([r.camid for r in records], dtype=np.int64)
        self._modalities = np.array([Modality(r.modality).value for r in records], dtype=object)
        self._times = np.array([np.nan if r.time is None else r.time for r in records], dtype=np.float64)

    def filter_mask(self, where: GalleryFilter) -> np.ndarray:
        """Boolean [N]: the ids ``where`` lets through."""
        return where.mask(self._camids, self._pids, self._modalities, self._times)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"Gallery({str(self.directory)!r}, count={len(self)}, kind={self.spec.kind!r})"

    @property
    def embedding_size(self) -> int:
        return int(self.manifest["embedding_size"])

    @property
    def modalities(self) -> dict[str, int]:
        return dict(self.manifest.get("modalities", {}))

    # ------------------------------------------------------------------------------------------ open
    @classmethod
    def open(cls, directory: PathLike, *, verify: bool = True) -> "Gallery":
        """Open and validate a gallery: checksums (``verify``), format, and index/metadata/manifest counts
        (:func:`~mult.serving.gallery_format.read_gallery`)."""
        return cls(*read_gallery(directory, verify=verify))

    # ------------------------------------------------------------------------------------------ info
    def info(self) -> dict[str, Any]:
        """The manifest plus what is derived from the metadata (directory, identities, images without id)."""
        out = {k: v for k, v in self.manifest.items()}
        out["directory"] = str(self.directory)
        known = self._pids[self._pids >= 0]
        out["identities"] = int(np.unique(known).size)
        out["images_without_id"] = int(np.count_nonzero(self._pids < 0))
        out["cameras"] = {str(int(c)): int(n) for c, n in zip(*np.unique(self._camids, return_counts=True))}
        known_times = self._times[np.isfinite(self._times)]
        out["times"] = {"first": format_time(known_times.min()) if known_times.size else None,
                        "last": format_time(known_times.max()) if known_times.size else None,
                        "unknown": int(len(self._times) - known_times.size)}
        return out

    # ------------------------------------------------------------------------------------------ search
    def _gpu_searcher(self) -> Any:
        """The inner flat/IVF index copied to the GPU(s) when faiss sees one; None on CPU builds or on failure."""
        if self._gpu is None:
            self._gpu = False
            if self.spec.kind in ("flat", "ivf") and hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0:
                try:
                    inner = faiss.index_cpu_to_all_gpus(faiss.downcast_index(self.index.index))
                    self._gpu = (inner, faiss.vector_to_array(self.index.id_map).astype(np.int64))
                except Exception as err:  # optional speed-up only: fall back to the CPU index
                    warnings.warn(f"faiss GPU search unavailable ({err}); searching on the CPU")
        return self._gpu or None

    def search_ids(self, embeddings: np.ndarray, k: int = 10, *, nprobe: Optional[int] = None,
                   ef_search: Optional[int] = None,
                   where: Optional[GalleryFilter] = None) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(scores [Q, k], ids [Q, k])`` for unit query embeddings [Q, D] (or one [D] vector); -1 = none.

        ``where`` restricts the search to the images it lets through, inside faiss (an ID selector): flat
        search stays exact; IVF probes ``nprobe`` lists of selected images, and HNSW widens its search as the
        selection shrinks (efSearch / fraction selected, at most :data:`MAX_FILTERED_EF_SEARCH`), yet either
        may return fewer than k hits when a filter keeps few images.
        """
        queries = np.asarray(embeddings, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.ndim != 2 or queries.shape[1] != self.embedding_size:
            raise MultError(f"query embeddings of shape {queries.shape} do not match the gallery's "
                            f"{self.embedding_size}-d embeddings; embed the query with the gallery's model")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise MultError(f"top-k {k!r} must be a positive integer")
        k = int(min(k, len(self)))
        if k == 0 or len(queries) == 0:
            return np.zeros((len(queries), k), np.float32), np.full((len(queries), k), -1, np.int64)
        queries = np.ascontiguousarray(queries)
        selected = id_selector(self.filter_mask(where)) if where is not None and where.active else None
        if selected is not None:
            if selected.count == 0:
                return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
            if self.spec.kind == "hnsw":
                wanted = int(ef_search or self.spec.ef_search)
                ef_search = int(min(max(wanted, np.ceil(wanted / selected.fraction)), MAX_FILTERED_EF_SEARCH))
            # faiss holds only a pointer to the selector: `selected` stays referenced until the search returns
            return self.index.search(queries, k, params=search_params(self.spec, nprobe, ef_search,
                                                                      selected.selector))
        params = search_params(self.spec, nprobe, ef_search)
        gpu = self._gpu_searcher()
        if gpu is not None:
            inner, id_map = gpu
            try:
                scores, rows = inner.search(queries, k, params=params)
                return scores, np.where(rows >= 0, id_map[np.maximum(rows, 0)], -1)
            except Exception:  # e.g. a faiss build whose GPU IVF ignores SearchParameters: use the CPU index
                self._gpu = False
        return self.index.search(queries, k, params=params)

    def search(self, embeddings: np.ndarray, k: int = 10, *, nprobe: Optional[int] = None,
               ef_search: Optional[int] = None, where: Optional[GalleryFilter] = None) -> list[list[Hit]]:
        """Top-``k`` hits per query embedding (one list per row of ``embeddings``), among the images ``where``
        lets through (all when None)."""
        scores, ids = self.search_ids(embeddings, k, nprobe=nprobe, ef_search=ef_search, where=where)
        results: list[list[Hit]] = []
        for row_scores, row_ids in zip(scores.tolist(), ids.tolist()):
            hits = []
            for rank, (score, idx) in enumerate(zip(row_scores, row_ids), start=1):
                if idx < 0:
                    break
                r = self.records[idx]
                hits.append(Hit(rank, int(idx), float(score), r.path, r.pid, int(r.camid), Modality(r.modality).value,
                                r.time))
            results.append(hits)
        return results

    def search_modality(self, embedding: np.ndarray, k: int, target: Modality, *, nprobe: Optional[int] = None,
                        ef_search: Optional[int] = None, where: Optional[GalleryFilter] = None) -> list[Hit]:
        """Top-``k`` hits of one query among the gallery's ``target`` images that ``where`` lets through — the
        cross-modality search of ``mult search`` and the page. A gallery holding one modality only (or none of
        ``target``) is ranked whole. The modality is one more condition of the faiss ID selector.
        """
        where = where or GalleryFilter()
        counts = self.modalities
        if len(counts) >= 2 and counts.get(target.value, 0) > 0:
            where = where.with_modality(target)
        return self.search(embedding, k, nprobe=nprobe, ef_search=ef_search, where=where)[0]

    # ------------------------------------------------------------------------------------------ add
    def latest(self) -> "Gallery":
        """This gallery, or the newer version another process wrote to its directory after this one was opened.

        Compares manifests (they carry the count and the update time), which costs one small file read.
        """
        try:
            on_disk = json.loads((self.directory / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            on_disk = None  # open() below names the problem
        return self if on_disk == self.manifest else Gallery.open(self.directory, verify=False)

    def add(self, records: Sequence[Record], encoder: Any, *, batch_size: int = DEFAULT_CHUNK,
            model_info: Optional[Mapping[str, Any]] = None, progress: bool = True,
            taken: Optional[float] = None) -> dict[str, int]:
        """Embed and append ``records`` not already in the gallery (same path); old ids never change.

        Each new image's capture time is ``taken`` (UNIX seconds) when given, else its record's, else its file's
        modification time (:func:`~mult.serving.gallery_records.timed_records`).

        Refuses (MultError) an encoder of another embedding size or model. Rewrites the gallery atomically
        (a new version in a temporary directory, swapped in) and re-measures recall for IVF/HNSW.
        Returns ``{"added": M, "skipped": S, "count": N + M}``.
        """
        model = dict(model_info) if model_info is not None else encoder_info(encoder)
        check_same_model(self.manifest.get("model", {}), model, self.directory)
        if model.get("embedding_size") not in (None, self.embedding_size):
            raise MultError(f"{self.directory}: the encoder gives {model['embedding_size']}-d embeddings but the "
                            f"gallery holds {self.embedding_size}-d ones; build a new gallery for this model")
        with update_lock(self.directory):
            latest = self.latest()  # another process may have added images since this one opened the gallery
            if latest is not self:
                self.__dict__.update(latest.__dict__)
            return self._append(records, encoder, batch_size=batch_size, progress=progress, taken=taken)

    def _append(self, records: Sequence[Record], encoder: Any, *, batch_size: int, progress: bool,
                taken: Optional[float]) -> dict[str, int]:
        """The work of ``add``, under the update lock."""
        seen = {r.path for r in self.records}
        fresh: list[Record] = []
        for record in absolute_records(records):  # new paths only, each once (the first record wins)
            if record.path not in seen:
                seen.add(record.path)
                fresh.append(record)
        skipped = len(records) - len(fresh)
        if not fresh:
            return {"added": 0, "skipped": skipped, "count": len(self)}
        fresh = timed_records(fresh, taken)
        vectors = embed_records(fresh, encoder, chunk=batch_size, dim=self.embedding_size, progress=progress)
        old_count = len(self)
        index = self.index  # appended in place (no second copy of a large index); restored from disk on failure
        try:
            with atomic_directory(self.directory, replace=True) as staging:
                add_vectors(index, vectors, old_count, progress=progress)
                manifest = dict(self.manifest)
                manifest["count"] = old_count + len(fresh)
                manifest["updated"] = utc_now()
                manifest["modalities"] = _merge_counts(self.modalities, modality_counts(fresh))
                manifest["index"] = dict(manifest["index"])
                if self.spec.kind != "flat":
                    manifest["index"].update(measure_recall(index, self.spec))
                manifest["history"] = list(manifest.get("history", [])) + [
                    {"action": "add", "time": manifest["updated"], "added": len(fresh), "count": manifest["count"]}]
                manifest = write_gallery_files(staging, index, fresh, manifest,
                                               old_metadata=self.directory / METADATA_FILE, old_count=old_count)
        except BaseException:
            if index.ntotal != old_count:  # forget the appended vectors: reload what is on disk
                try:
                    self.index = faiss.read_index(str(self.directory / INDEX_FILE))
                except RuntimeError:
                    pass  # the original error below says more than a failed reload would
            raise
        self.records = self.records + fresh
        self.manifest = manifest
        self._index_columns()
        self._gpu = None
        return {"added": len(fresh), "skipped": skipped, "count": len(self)}


def _merge_counts(a: Mapping[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {key: int(a.get(key, 0)) + int(b.get(key, 0)) for key in sorted(set(a) | set(b))}
