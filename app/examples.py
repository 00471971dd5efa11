"""The page's example queries: photos of people in the gallery, held out of it where the gallery's dataset is
known (:func:`example_sets`), and the images whose person id the page therefore knows."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from mult.app.search_service import DEFAULT_DIRECTION, DIRECTIONS, parse_direction
from mult.data.images import scan_image_files
from mult.data.records import Modality, Record
from mult.errors import MultError
from mult.io import PathLike
from mult.serving.gallery import Gallery
from mult.serving.query_ids import KnownImages, source_records

log = logging.getLogger(__name__)

#: Example queries per set shown on the page.
N_EXAMPLES = 4


def spread_over_people(records: Sequence[Record], n: int) -> list[Record]:
    """Up to ``n`` of ``records``, one per person id, the ids evenly spread over their sorted order.

    Each chosen person's image is taken at a different place in its own list (SYSU-MM01 lists a person camera by
    camera), so the picks also vary in camera. Deterministic: the same records give the same picks.
    """
    by_pid: dict[int, list[Record]] = {}
    for record in records:
        if record.pid is not None:
            by_pid.setdefault(int(record.pid), []).append(record)
    pids = sorted(by_pid)
    if not pids or n < 1:
        return []
    chosen = np.unique(np.linspace(0, len(pids) - 1, num=min(n, len(pids))).round().astype(int))
    picked = []
    for j, row in enumerate(chosen.tolist()):
        images = sorted(by_pid[pids[row]], key=lambda r: r.path)
        picked.append(images[(j * len(images)) // len(chosen)])
    return picked


def held_out_examples(gallery: Gallery, dataset: Sequence[Record], direction: str = DEFAULT_DIRECTION,
                      n: int = N_EXAMPLES) -> list[Record]:
    """Example queries for ``direction``: ``dataset`` images of its query modality, of people the search can find
    in the gallery, that are not in the gallery themselves. Up to ``n``, spread over people.

    ``dataset`` is what the gallery was built from (:func:`mult.serving.query_ids.source_records`). "People the
    search can find" are the ids of the gallery's images of the target modality (of all its images when it holds
    one modality, as the search then ranks them all). An example must be held out, or the demo would show an
    image finding itself: so an infrared SYSU-MM01 gallery, which holds every infrared test image, has visible
    examples only.
    """
    query_modality, target = parse_direction(direction)
    mixed = len(gallery.modalities) > 1
    findable = {r.pid for r in gallery.records if r.pid is not None and (not mixed or r.modality == target)}
    indexed = {os.path.abspath(r.path) for r in gallery.records}
    candidates = [r for r in dataset if r.modality == query_modality and r.pid in findable
                  and os.path.abspath(r.path) not in indexed and os.path.isfile(r.path)]
    return spread_over_people(candidates, n)


def gallery_examples(gallery: Gallery, n: int = N_EXAMPLES) -> list[Record]:
    """Up to ``n`` example queries from the gallery's own images, spread over distinct person ids: the fallback
    for a gallery that knows no dataset (a plain folder), which has no other images of its people to offer.

    Visible images when the gallery also holds infrared ones (queries for the default direction), else its
    images of the one modality it holds (which then find themselves). Files that are gone are skipped.
    """
    records = gallery.records
    if not records or n < 1:
        return []
    is_visible = np.fromiter((r.modality == Modality.visible for r in records), bool, len(records))
    candidates = np.flatnonzero(is_visible) if 0 < is_visible.sum() < len(records) else np.arange(len(records))
    picked: list[Record] = []
    seen: set[Optional[int]] = set()
    for row in np.unique(np.linspace(0, len(candidates) - 1, num=min(len(candidates), 8 * n)).astype(int)):
        record = records[int(candidates[row])]
        if (record.pid is None or record.pid not in seen) and os.path.isfile(record.path):
            seen.add(record.pid)
            picked.append(record)
            if len(picked) == n:
                break
    return picked


def gallery_dataset(gallery: Gallery) -> Optional[list[Record]]:
    """The records of the dataset the gallery was built from (:func:`source_records`), or None.

    None too when that dataset cannot be read any more (moved, say): the page then still works, like a page
    over a plain folder, and the log says why it knows no identities.
    """
    try:
        return source_records(gallery.manifest.get("source") or {})
    except MultError as err:
        log.warning("%s: no example queries or known identities from the gallery's dataset (%s)",
                    gallery.directory, err)
        return None


def folder_examples(folder: PathLike, n: int = N_EXAMPLES) -> list[str]:
    """The first ``n`` image files (sorted) directly inside ``folder`` (regular files only, so a FIFO named
    ``*.jpg`` is never opened)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MultError(f"{root}: no examples folder here; pass a folder of query images")
    return [str(root / name) for name in scan_image_files(root, recursive=False).files][:n]


@dataclass(frozen=True)
class ExampleSet:
    """Example queries shown together: label, element id, image paths, and the direction a click also sets
    (None: the click leaves the direction as it is)."""

    label: str
    elem_id: str
    paths: list[str]
    direction: Optional[str] = None


def example_sets(gallery: Gallery, examples: Union[None, PathLike, Sequence[PathLike]],
                 dataset: Optional[Sequence[Record]]) -> tuple[list[ExampleSet], KnownImages]:
    """The page's example queries, and the images whose person id the page knows.

    ``examples`` None: with the gallery's ``dataset`` (:func:`gallery_dataset`), one labelled set per direction
    that has held-out images (:func:`held_out_examples`; a click also sets the direction), and every image of the
    dataset is known; without one, the gallery's own images (:func:`gallery_examples`), known by its metadata.
    A folder takes its first images, a list is used as is, an empty list shows none; their ids are known only
    when they are images of the gallery's dataset.
    """
    known = KnownImages(dataset or [])
    if examples is not None:
        is_folder = isinstance(examples, (str, os.PathLike))
        paths = folder_examples(examples) if is_folder else [os.fspath(p) for p in examples]
        return ([ExampleSet("example queries", "examples", paths)] if paths else []), known
    if dataset is None:
        records = gallery_examples(gallery)
        sets = [ExampleSet("example queries (images from the gallery itself)", "examples", [r.path for r in records])]
        return (sets if records else []), KnownImages(records)
    sets = []
    for direction, (query_modality, _) in DIRECTIONS.items():
        records = held_out_examples(gallery, dataset, direction)
        if records:
            sets.append(ExampleSet(f"examples for {direction} ({query_modality.value} photos of people in the "
                                   "gallery)", f"examples-{query_modality.value}", [r.path for r in records],
                                   direction))
    return sets, known
