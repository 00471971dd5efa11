"""Build a gallery: embed records once, index them, and write the gallery directory atomically."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import faiss
import numpy as np

from mult.data.records import Record
from mult.errors import MultError
from mult.io import PathLike, atomic_directory
from mult.serving.faiss_index import IndexSpec, build_index, measure_recall
from mult.serving.index_tuning import RecallTargetWarning, describe_tuning, tune_index
from mult.serving.gallery_embedding import DEFAULT_CHUNK, embed_records
from mult.serving.gallery_format import FORMAT, FORMAT_VERSION, modality_counts, utc_now, write_gallery_files
from mult.serving.gallery_lock import update_lock
from mult.serving.gallery_model import encoder_info
from mult.serving.gallery_records import absolute_records, timed_records
from mult.serving.opened_gallery import Gallery
from mult.timing import Stopwatch


def build_gallery(
    records: Sequence[Record],
    encoder: Any,
    out: PathLike,
    *,
    kind: Union[str, IndexSpec] = "flat",
    batch_size: int = DEFAULT_CHUNK,
    model_info: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
    progress: bool = True,
    source: Optional[Mapping[str, Any]] = None,
    taken: Optional[float] = None,
) -> Gallery:
    """Embed ``records`` with ``encoder`` and write a gallery directory at ``out`` (atomically).

    ``kind`` is ``"flat"`` (exact), ``"ivf"``, ``"hnsw"`` or ``"ivfpq"``, or an :class:`IndexSpec` with
    parameters; approximate kinds get their recall@10 against exact search measured and stored in the manifest.
    A spec with ``target_recall`` gets nprobe / efSearch tuned to it (:mod:`~mult.serving.index_tuning`): the
    manifest's ``index.tuning`` records target, chosen value, recall and sweep, and a missed target warns
    (:class:`~mult.serving.index_tuning.RecallTargetWarning`, the best value kept).
    ``model_info`` overrides :func:`encoder_info`; ``source`` (e.g. the folder or dataset) is recorded as is.
    ``taken`` (UNIX seconds) is every image's capture time; by default each file's modification time.
    An existing ``out`` is an error unless ``overwrite``; a failure at any point leaves no ``out`` behind
    (and an overwritten gallery untouched).
    """
    spec = kind if isinstance(kind, IndexSpec) else IndexSpec(str(kind))
    target = Path(out).expanduser()
    if target.exists() and not overwrite:
        raise MultError(f"{target}: already exists; add images with `mult index add`, or pass --overwrite to replace it")
    if target.exists() and not target.is_dir():
        raise MultError(f"{target}: exists and is not a folder; choose another gallery path")
    records = timed_records(absolute_records(records), taken)  # capture times for the time filter
    if not records:
        raise MultError("no images to index; the gallery needs at least one image")
    model = dict(model_info) if model_info is not None else encoder_info(encoder)
    known_dim = model.get("embedding_size")
    spec.resolved(len(records), dim=known_dim if isinstance(known_dim, int) else None)  # bad values fail now
    watch = Stopwatch()
    vectors = embed_records(records, encoder, chunk=batch_size, progress=progress)
    embed_s = watch("embed")
    spec = spec.resolved(len(vectors), dim=vectors.shape[1])
    watch("resolve")  # in neither recorded time
    index = build_index(vectors, spec, progress=progress)
    index_s = watch("index")
    model.setdefault("embedding_size", int(vectors.shape[1]))
    created = utc_now()
    index_entry = _index_entry(index, spec, vectors, build_seconds=index_s, embed_seconds=embed_s)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created": created, "updated": created,
        "model": model, "embedding_size": int(vectors.shape[1]), "count": len(records),
        "modalities": modality_counts(records), "index": index_entry, "source": dict(source or {}),
        "history": [{"action": "build", "time": created, "added": len(records), "count": len(records)}],
    }
    with update_lock(target) if target.is_dir() else contextlib.nullcontext():
        with atomic_directory(target, replace=True) as staging:
            manifest = write_gallery_files(staging, index, records, manifest)
    return Gallery(target, index, list(records), manifest)


def _index_entry(index: faiss.Index, spec: IndexSpec, vectors: np.ndarray, **seconds: float) -> dict[str, Any]:
    """The manifest's ``index`` entry: kind, parameters (tuned to ``spec.target_recall`` when set), recall."""
    entry: dict[str, Any] = {"kind": spec.kind, "metric": "inner_product", "wrapper": "IndexIDMap2",
                             "faiss_version": faiss.__version__, **{k: round(v, 3) for k, v in seconds.items()}}
    if spec.target_recall is not None:
        started = Stopwatch()
        spec, tuning, recall = tune_index(index, spec, vectors=vectors)
        entry.update(recall, tuning=tuning.as_manifest(), tune_seconds=round(started("tune"), 3))
        if not tuning.reached:
            warnings.warn(describe_tuning({**entry, "params": spec.params()}), RecallTargetWarning, stacklevel=3)
    elif spec.kind != "flat":
        entry.update(measure_recall(index, spec, vectors=vectors))
    entry["params"] = spec.params()
    return entry
