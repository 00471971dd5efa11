"""Who is in a query image, when the gallery can tell: the dataset it was built from and the images of it.

A gallery built from a dataset (``mult index build --dataset sysu|regdb``) records the dataset, its root and (RegDB)
its split in the manifest's ``source``. The test images of that dataset, of both modalities, are then images of
known people in the gallery's own id space: a visible SYSU-MM01 test image of person 12 is a query whose correct
matches are the gallery's infrared images of person 12. That is what lets the search page frame hits green or red
and say where the first correct match ranks, as rank lists do when ``--query-pid`` is given.

A query is recognised by its path, or by its bytes: the search page never sees the path a browser chose, only
Gradio's copy of the file (uploads and clicked examples alike), so an identical copy of a known image counts as
that image. Files are compared by sha256, and only with known images of the same size, whose digests are taken
once, on the first lookup of that size (JPEG crops rarely share a size; RegDB's BMPs all do, so its first lookup
reads the split once). A plain folder gallery knows no dataset; its images' ids come from its own metadata only.

    known = KnownImages(source_records(gallery) or [])
    known.pid_of("/tmp/gradio/3f2a.../0007.jpg")     # 12, or None when the image is not a known one
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

from mult.data.records import Record
from mult.errors import MultError
from mult.io import PathLike, file_sha256


def source_records(source: Mapping[str, Any]) -> Optional[list[Record]]:
    """The test images, both modalities, of the dataset a gallery manifest's ``source`` names; None for a folder.

    These are the images whose person ids share the gallery's id space (SYSU-MM01: the test ids; RegDB: the
    split's test labels). A dataset that cannot be read any more (moved, deleted) is a MultError naming it.
    """
    name = str(source.get("dataset") or "").strip().lower()
    root = source.get("data_root")
    if not name or not root:
        return None
    if name == "sysu":
        from mult.data.sysu import SYSUMM01

        data = SYSUMM01(root)
        return data.gallery_pool("all") + data.query("all")  # visible (cams 1, 2, 4, 5), then infrared (3, 6)
    if name == "regdb":
        from mult.data.regdb import RegDB

        return RegDB(root, split=int(source.get("regdb_split", 1))).test()
    raise MultError(f"the gallery was built from dataset {name!r}, which this mult does not know; use sysu or regdb")


class KnownImages:
    """Person ids of known image files, looked up by path or, for copies of them, by identical bytes.

    Only records with a person id count. Two known files with the same bytes but different ids make a copy of
    them ambiguous: its id is then unknown (None), never a guess. Safe to share between threads.
    """

    def __init__(self, records: Iterable[Record]) -> None:
        self._by_path: dict[str, int] = {}
        self._by_size: dict[int, list[str]] = {}
        self._digests: dict[int, dict[str, set[int]]] = {}  # size -> sha256 -> ids, filled on first need
        self._lock = threading.Lock()
        for record in records:
            if record.pid is None:
                continue
            path = os.path.abspath(record.path)
            try:
                size = os.path.getsize(path)
            except OSError:
                continue  # gone since the dataset was listed: it cannot be a query's twin
            if path not in self._by_path:
                self._by_path[path] = int(record.pid)
                self._by_size.setdefault(size, []).append(path)

    def __len__(self) -> int:
        return len(self._by_path)

    def pid_of(self, path: PathLike) -> Optional[int]:
        """The person id of the image at ``path`` (a known file, or a byte-identical copy of one); None if unknown."""
        path = os.path.abspath(os.fspath(path))
        if path in self._by_path:
            return self._by_path[path]
        try:
            size = os.path.getsize(path)
            if size not in self._by_size:
                return None
            pids = self._same_size(size).get(file_sha256(Path(path)), set())
        except OSError:
            return None
        return next(iter(pids)) if len(pids) == 1 else None

    def _same_size(self, size: int) -> dict[str, set[int]]:
        """sha256 -> ids of the known files of ``size`` bytes (computed once per size)."""
        with self._lock:
            if size not in self._digests:
                digests: dict[str, set[int]] = {}
                for known in self._by_size[size]:
                    try:
                        digests.setdefault(file_sha256(Path(known)), set()).add(self._by_path[known])
                    except OSError:
                        continue  # deleted since: it can match nothing
                self._digests[size] = digests
            return self._digests[size]
