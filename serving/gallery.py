"""The FAISS gallery: embed a folder (or a dataset's test gallery) once, then search it by image.

A gallery is a directory::

    GALLERY_DIR/index.faiss      faiss.write_index of an IndexIDMap2 over Flat / IVF-Flat / HNSW-Flat / IVF-PQ (inner
                                 product)
    GALLERY_DIR/metadata.jsonl   one JSON object per vector id, in id order: id, path, pid (or null), camid, modality,
                                 time (capture time, UNIX seconds, or null)
    GALLERY_DIR/manifest.json    format version, model, embedding size, count, index kind + params (+ recall@10
                                 against exact search for approximate kinds), sha256 of both files, history,
                                 and the sha256 of its own content (manifest_sha256)

Embeddings are unit vectors, so inner product is cosine similarity and a score of 1 is the same image.
Vector ids are the metadata row numbers: ``add`` appends ids ``count..count+M-1`` and never renumbers, so
an id printed today still names the same image after any number of additions.

Nothing is half-written: ``build_gallery`` fills a temporary directory beside the target and renames it into
place; ``Gallery.add`` writes the new version into a temporary directory and swaps it in. ``Gallery.open``
checks the checksums and that index, metadata and manifest agree on the count, so a truncated or edited
gallery is a one-line :class:`~mult.errors.MultError`, never a wrong answer. Writers take turns through a lock
on the gallery directory (``update_lock``), so two ``mult index add`` runs on one gallery keep both additions.

Five-line use::

    from mult.serving.gallery import Gallery, build_gallery, records_for_gallery
    records = records_for_gallery(images_dir="crops/ir", modality="infrared")
    gallery = build_gallery(records, encoder, "galleries/ir")          # any object with encode(paths, modality)
    hits = gallery.search(encoder.encode(["me.jpg"], "visible"), k=10)[0]
    print(hits[0].path, hits[0].score)

Filtered (camera, modality, known/unknown identity, capture time), inside the faiss search::

    night = GalleryFilter(cameras=(3, 6), since="2026-12-03T20:00", until="2026-12-04T06:00", identity="unknown")
    hits = gallery.search(query_embedding, k=10, where=night)[0]

The index itself (kinds, building, recall) is :mod:`mult.serving.faiss_index`; the work of the
``mult index`` and ``mult search`` commands is :mod:`mult.serving.gallery_commands`.

This module is the gallery's public face; each job lives in its own module and is re-exported here:

* :mod:`mult.serving.gallery_records`: which images a gallery indexes (``records_for_gallery``)
* :mod:`mult.serving.gallery_model`: the model description and identity check (``encoder_info``,
  ``check_same_model``)
* :mod:`mult.serving.gallery_embedding`: the embedding loop (``embed_records``, ``unit_rows``)
* :mod:`mult.serving.gallery_format`: the files, their checksums, reading them back validated
* :mod:`mult.serving.gallery_lock`: the writers' update lock (``update_lock``)
* :mod:`mult.serving.opened_gallery`: the opened gallery (``Gallery``, ``Hit``): search and add
* :mod:`mult.serving.gallery_filter`: metadata filters and the faiss ID selector (``GalleryFilter``)
* :mod:`mult.serving.gallery_rerank`: query-time cross-modality re-ranking of the index's top N
* :mod:`mult.serving.index_tuning`: nprobe / efSearch steered to a target recall (``--target-recall``)
* :mod:`mult.serving.gallery_build`: ``build_gallery``

Writing a folder atomically (staging beside the target, swap) is :func:`mult.io.atomic_directory`.
"""

from __future__ import annotations

from mult.serving.gallery_build import build_gallery
from mult.serving.gallery_embedding import DEFAULT_CHUNK, embed_records, unit_rows
from mult.serving.gallery_format import (FORMAT, FORMAT_VERSION, INDEX_FILE, MANIFEST_CHECKSUM_KEY, MANIFEST_FILE,
                                         METADATA_FILE, manifest_checksum, read_metadata)
from mult.serving.gallery_lock import LOCK_POLL_S, VANISHED_AFTER_S, update_lock
from mult.serving.gallery_model import GRAPH_KEYS, MODEL_IDENTITY_KEYS, check_same_model, encoder_info
from mult.serving.gallery_filter import GalleryFilter, filter_from_options, parse_time
from mult.serving.gallery_records import records_for_gallery
from mult.serving.opened_gallery import Gallery, Hit

__all__ = [
    "DEFAULT_CHUNK", "FORMAT", "FORMAT_VERSION", "GRAPH_KEYS", "INDEX_FILE", "LOCK_POLL_S", "MANIFEST_CHECKSUM_KEY",
    "MANIFEST_FILE", "METADATA_FILE", "MODEL_IDENTITY_KEYS", "VANISHED_AFTER_S", "Gallery", "GalleryFilter", "Hit", "build_gallery",
    "check_same_model", "embed_records", "encoder_info", "filter_from_options", "manifest_checksum", "parse_time", "read_metadata", "records_for_gallery",
    "unit_rows", "update_lock",
]
