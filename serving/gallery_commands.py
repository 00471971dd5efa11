"""The work of ``mult index build|add|info`` and ``mult search`` on gallery directories: each function returns a
report with ``render()`` (a plain table) and ``as_dict()`` (for ``--json``); the Typer layer only prints it.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from mult.io import PathLike, write_failure_as_error
from mult.data.records import Modality, as_modality
from mult.errors import MultError
from mult.serving.faiss_index import IndexSpec
from mult.serving.gallery_rerank import cross_modality_hits
from mult.serving.index_tuning import RecallTargetWarning, recall_rows
from mult.serving.gallery import (DEFAULT_CHUNK, Gallery, GalleryFilter, Hit, build_gallery, check_same_model,
                                  encoder_info, parse_time, records_for_gallery, unit_rows)



def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> list[str]:
    """Plain-text table lines; columns listed in ``right`` are right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells]


def _human_bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _model_line(model: Mapping[str, Any]) -> str:
    parts = [str(model.get(k)) for k in ("name", "model_name", "encoder") if model.get(k)][:1]
    for key in ("version", "model_version", "arch"):
        if model.get(key) is not None:
            parts.append(f"{key} {model[key]}")
    if model.get("weights_sha256"):
        parts.append(f"weights {str(model['weights_sha256'])[:12]}")
    return ", ".join(parts) or "unknown"


def _times_line(times: Mapping[str, Any]) -> str:
    """``2026-12-01 08:00:00 UTC to 2026-12-03 21:10:04 UTC, 3 without a time`` (what --since/--until can use)."""
    span = f"{times['first']} to {times['last']}" if times.get("first") else "no capture times"
    return span + (f", {times['unknown']:,} without a time" if times.get("unknown") else "")


@dataclass
class GalleryReport:
    """What ``mult index build|add|info`` prints: the gallery's info, plus what this command changed."""

    action: str
    info: dict[str, Any]
    added: Optional[int] = None
    skipped: Optional[int] = None
    seconds: Optional[float] = None
    #: Entries of --images with an image name that were not indexed: one "path: why" line each.
    left_out: Optional[list[str]] = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "gallery": self.info}
        for key in ("added", "skipped", "seconds", "left_out"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def render(self) -> str:
        info = self.info
        spec = IndexSpec.from_manifest(info["index"])
        modalities = ", ".join(f"{m} {n:,}" for m, n in info.get("modalities", {}).items())
        rows = [
            ("images", f"{info['count']:,} ({modalities})"),
            ("identities", f"{info['identities']:,} known, {info['images_without_id']:,} images without id"),
            ("cameras", ", ".join(f"{cam}: {n:,}" for cam, n in info.get("cameras", {}).items()) or "none"),
            ("captured", _times_line(info.get("times", {}))),
            ("embedding", f"{info['embedding_size']}-d, model {_model_line(info.get('model', {}))}"),
            ("index", spec.describe()),
        ]
        rows += recall_rows(info["index"])  # recall@10, and the tuning (a missed target says so here)
        rows.append(("files", ", ".join(f"{name} {_human_bytes(entry['bytes'])}"
                                        for name, entry in info.get("files", {}).items())))
        rows.append(("created", f"{info.get('created')} (updated {info.get('updated')})"))
        head = {"build": "built gallery", "add": "updated gallery", "info": "gallery"}[self.action]
        lines = [f"{head} {info['directory']}"]
        if self.action == "build" and self.seconds is not None:
            lines[0] += f" in {self.seconds:.1f} s"
        if self.action == "add":
            lines.append(f"  added {self.added:,} image(s), skipped {self.skipped:,} already indexed"
                         + (f", {self.seconds:.1f} s" if self.seconds is not None else ""))
        width = max(len(k) for k, _ in rows)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
        if self.left_out:
            shown = self.left_out[:10]
            lines.append(f"  left out {len(self.left_out):,} file(s) with an image name that cannot be indexed:")
            lines += [f"    {line}" for line in shown]
            if len(self.left_out) > len(shown):
                lines.append(f"    ... and {len(self.left_out) - len(shown):,} more (--json lists them all)")
        return "\n".join(lines)


def index_build(
    encoder: Any,
    out: PathLike,
    *,
    images: Optional[PathLike] = None,
    dataset: Optional[str] = None,
    data_root: Optional[PathLike] = None,
    modality: Union[Modality, str] = Modality.infrared,
    regdb_split: int = 1,
    kind: Union[str, IndexSpec] = "flat",
    nlist: Optional[int] = None,
    nprobe: int = IndexSpec.nprobe,
    hnsw_m: int = IndexSpec.hnsw_m,
    ef_construction: int = IndexSpec.ef_construction,
    ef_search: int = IndexSpec.ef_search,
    pq_m: Optional[int] = None,
    refine: int = 0,
    target_recall: Optional[float] = None,
    batch_size: int = DEFAULT_CHUNK,
    overwrite: bool = False,
    model_info: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
) -> GalleryReport:
    """``mult index build``: index a folder (``images``) or a dataset's test images of ``modality`` at ``out``.

    ``target_recall`` tunes nprobe / efSearch to it (:mod:`mult.serving.index_tuning`); a missed target is the
    report's tuning line (and ``reached: false`` in ``--json``), not a warning. An :class:`IndexSpec` as ``kind``
    is used as it is (the index parameters after it are then ignored)."""
    spec = kind if isinstance(kind, IndexSpec) else IndexSpec(
        kind, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search,
        pq_m=pq_m, refine=refine, target_recall=target_recall)
    left_out: list[str] = []
    records = records_for_gallery(images, dataset, data_root, modality, regdb_split=regdb_split, skipped=left_out)
    source = ({"images": os.path.abspath(os.fspath(images))} if images is not None else
              {"dataset": str(dataset), "data_root": os.path.abspath(os.fspath(data_root or "")),
               **({"regdb_split": regdb_split} if str(dataset).lower() == "regdb" else {})})
    source["modality"] = as_modality(modality, optional=True).value
    started = time.perf_counter()
    unchanged = "the gallery there is unchanged" if Path(out).expanduser().exists() else "no gallery was written"
    with write_failure_as_error(out, unchanged), warnings.catch_warnings():  # a failed write leaves nothing
        warnings.simplefilter("ignore", RecallTargetWarning)  # the report's tuning line says it
        gallery = build_gallery(records, encoder, out, kind=spec, batch_size=batch_size, model_info=model_info,
                                overwrite=overwrite, progress=progress, source=source)
    return GalleryReport("build", gallery.info(), added=len(gallery), seconds=round(time.perf_counter() - started, 3),
                         left_out=left_out)


def index_add(
    encoder: Any,
    gallery_dir: PathLike,
    *,
    images: Optional[PathLike] = None,
    dataset: Optional[str] = None,
    data_root: Optional[PathLike] = None,
    modality: Union[Modality, str, None] = None,
    regdb_split: int = 1,
    batch_size: int = DEFAULT_CHUNK,
    model_info: Optional[Mapping[str, Any]] = None,
    progress: bool = True,
    taken: Union[str, float, None] = None,
) -> GalleryReport:
    """``mult index add``: embed and append new images (``modality`` defaults to the gallery's own). ``taken``
    (ISO 8601 or UNIX seconds) is the new images' capture time; by default each file's modification time."""
    taken_s = parse_time(taken, name="--time")
    gallery = Gallery.open(gallery_dir)
    if modality is None:
        present = list(gallery.modalities)
        if len(present) != 1:
            raise MultError(f"{gallery_dir}: the gallery holds {', '.join(present) or 'no'} images; "
                            "say which modality the new images are (--modality visible|infrared)")
        modality = present[0]
    left_out: list[str] = []
    records = records_for_gallery(images, dataset, data_root, modality, regdb_split=regdb_split, skipped=left_out)
    started = time.perf_counter()
    with write_failure_as_error(gallery_dir, "the gallery is unchanged"):  # add writes a new version, then swaps it in
        counts = gallery.add(records, encoder, batch_size=batch_size, model_info=model_info, progress=progress,
                             taken=taken_s)
    return GalleryReport("add", gallery.info(), added=counts["added"], skipped=counts["skipped"],
                         seconds=round(time.perf_counter() - started, 3), left_out=left_out)


def index_info(gallery_dir: PathLike, *, verify: bool = True) -> GalleryReport:
    """``mult index info``: the gallery's manifest and counts (checksums verified unless ``verify=False``)."""
    return GalleryReport("info", Gallery.open(gallery_dir, verify=verify).info())


@dataclass
class SearchReport:
    """What ``mult search`` prints: the query, the gallery it searched, and the ranked hits."""

    query: str
    query_modality: str
    gallery: str
    gallery_modalities: dict[str, int]
    count: int
    top_k: int
    hits: list[Hit]
    query_pid: Optional[int] = None
    ranklist: Optional[str] = None
    seconds: dict[str, float] = field(default_factory=dict)
    where: GalleryFilter = field(default_factory=GalleryFilter)
    rerank_top: Optional[int] = None

    def as_dict(self) -> dict[str, Any]:
        return {"query": self.query, "query_modality": self.query_modality, "query_pid": self.query_pid,
                "gallery": self.gallery, "gallery_modalities": self.gallery_modalities, "gallery_count": self.count,
                "top_k": self.top_k, "filter": self.where.as_dict(), "rerank_top": self.rerank_top,
                "hits": [h.as_dict() for h in self.hits], "ranklist": self.ranklist, "seconds": self.seconds}

    def render(self) -> str:
        held = ", ".join(self.gallery_modalities) or "empty"
        lines = [f"query {self.query} ({self.query_modality}) -> gallery {self.gallery} "
                 f"({held}, {self.count:,} images), top {self.top_k}"]
        if self.query_modality in self.gallery_modalities and len(self.gallery_modalities) == 1:
            lines.append("note: the query and the gallery have the same modality (not a cross-modality search)")
        if self.where.active:
            lines.append(f"filter: {self.where.describe()} ({len(self.hits)} hit(s))")
        if self.rerank_top:
            lines.append(f"re-ranked: the index's top {self.rerank_top} by cross-modality k-reciprocal re-ranking "
                         "(score = cosine; order = re-ranked distance)")
        rows = [(h.rank, f"{h.score:.4f}", h.id, "-" if h.pid is None else h.pid, h.camid, h.modality, h.path)
                for h in self.hits]
        match = None if self.query_pid is None else [h.pid == self.query_pid for h in self.hits]
        if match is not None:
            rows = [row + ("yes" if m else "no",) for row, m in zip(rows, match)]
        headers = ["rank", "score", "id", "pid", "cam", "modality", "path"] + (["match"] if match is not None else [])
        lines += _table(headers, rows, right=(0, 1, 2, 3, 4))
        if self.ranklist:
            lines.append(f"rank list: {self.ranklist}")
        return "\n".join(lines)


def search_query(
    encoder: Any,
    index_dir: PathLike,
    query: PathLike,
    *,
    query_modality: Union[Modality, str] = Modality.visible,
    top_k: int = 10,
    save_ranklist: Optional[PathLike] = None,
    query_pid: Optional[int] = None,
    nprobe: Optional[int] = None,
    ef_search: Optional[int] = None,
    model_info: Optional[Mapping[str, Any]] = None,
    verify: bool = True,
    where: Optional[GalleryFilter] = None,
    rerank_top: Optional[int] = None,
    rerank_k: Optional[int] = None,
) -> SearchReport:
    """``mult search``: embed ``query`` through its own modality's stem and rank the gallery's images of the
    other modality (all of them when it holds one modality only), as the page does (:meth:`Gallery.search_modality`).

    The query modality defaults to visible (the gallery usually holds infrared crops). ``save_ranklist``
    writes the query + top-k image (:func:`mult.serving.ranklist.save_ranklist`); ``query_pid``, when known,
    colours the hits green/red and adds a match column. ``where`` narrows the gallery (cameras, identity known or
    not, capture time) inside the faiss search. ``rerank_top=N`` re-orders the index's top N by cross-modality
    re-ranking (:mod:`mult.serving.gallery_rerank`; ``rerank_k``: its k, default the official evaluator's 15).
    ``verify=False`` skips the checksums (sizes and
    counts are still checked), which saves reading a multi-GB index twice.
    """
    wanted = as_modality(query_modality, optional=True)
    if save_ranklist is not None:  # before the embedding and search: a path that cannot take the PNG fails now
        from mult.serving.ranklist import check_ranklist_path

        check_ranklist_path(save_ranklist)
    query_path = os.path.abspath(os.fspath(Path(query).expanduser()))
    if not os.path.exists(query_path):
        raise MultError(f"{query_path}: query image not found; pass an existing image file")
    if not os.path.isfile(query_path):  # a folder, FIFO or device: never opened (a FIFO would block)
        raise MultError(f"{query_path}: not a regular file; pass an image file")
    gallery = Gallery.open(index_dir, verify=verify)
    model = dict(model_info) if model_info is not None else encoder_info(encoder)
    check_same_model(gallery.manifest.get("model", {}), model, gallery.directory)
    started = time.perf_counter()
    embedding = unit_rows(encoder.encode([query_path], wanted), [query_path], gallery.embedding_size)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    target = Modality.infrared if wanted is Modality.visible else Modality.visible
    where = where or GalleryFilter()
    hits = cross_modality_hits(gallery, embedding, top_k, wanted, target, where=where, rerank_top=rerank_top,
                               rerank_k=rerank_k, nprobe=nprobe, ef_search=ef_search)
    search_s = time.perf_counter() - started
    report = SearchReport(query_path, wanted.value, str(gallery.directory), gallery.modalities, len(gallery),
                          int(top_k), hits, query_pid=query_pid,
                          seconds={"embed": round(embed_s, 4), "search": round(search_s, 6)}, where=where,
                          rerank_top=rerank_top)
    if save_ranklist is not None:
        from mult.serving.ranklist import save_ranklist as write_ranklist

        report.ranklist = str(write_ranklist(query_path, hits, save_ranklist, query_pid=query_pid,
                                             query_caption=f"query · {wanted.value}"))
    return report
