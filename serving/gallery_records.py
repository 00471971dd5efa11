"""Which images a gallery indexes: a plain folder, or a dataset's test images of one modality."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Optional, Union

from mult.data.folder import read_folder
from mult.data.records import Modality, Record, as_modality
from mult.errors import MultError
from mult.io import PathLike


def records_for_gallery(
    images_dir: Optional[PathLike] = None,
    dataset: Optional[str] = None,
    data_root: Optional[PathLike] = None,
    modality: Union[Modality, str] = Modality.infrared,
    *,
    regdb_split: int = 1,
    skipped: Optional[list[str]] = None,
) -> list[Record]:
    """The images a gallery indexes: a plain folder, or a dataset's test images of one modality.

    * ``images_dir``: every image under the folder (recursively), ``pid`` from ``<pid>/`` sub-folders when
      they are integers (:func:`mult.data.folder.read_folder`); entries it cannot index (FIFOs, names that
      are not UTF-8, ...) are left out, one line each appended to ``skipped`` when given, else a warning.
    * ``dataset="sysu"`` + ``data_root``: all test-id images of ``modality`` in all its cameras (visible:
      cams 1, 2, 4, 5; infrared: cams 3, 6).
    * ``dataset="regdb"`` + ``data_root``: split ``regdb_split``'s test images of ``modality``.
    """
    wanted = as_modality(modality, optional=True)
    if wanted is None:
        raise MultError("the gallery needs a modality: 'visible' or 'infrared'")
    if (images_dir is None) == (dataset is None):
        raise MultError("give either a folder of images or a dataset (sysu/regdb) with its data root, not both")
    if images_dir is not None:
        return read_folder(images_dir, wanted, skipped=skipped)
    name = str(dataset).strip().lower()
    if data_root is None:
        raise MultError(f"dataset {name!r} needs its data root (the folder holding the dataset)")
    if name == "sysu":
        from mult.data.sysu import SYSUMM01

        data = SYSUMM01(data_root)
        # query() is every IR test image (cams 3, 6); gallery_pool("all") every visible one (cams 1, 2, 4, 5).
        return data.query("all") if wanted is Modality.infrared else data.gallery_pool("all")
    if name == "regdb":
        from mult.data.regdb import RegDB

        return RegDB(data_root, split=regdb_split).test(wanted)
    raise MultError(f"dataset {dataset!r} is unknown; use 'sysu' or 'regdb' (or a folder of images)")


def absolute_records(records: Sequence[Record]) -> list[Record]:
    """Records with absolute paths, so the gallery works from any working directory."""
    return [r if os.path.isabs(r.path) else replace(r, path=os.path.abspath(r.path)) for r in records]


def timed_records(records: Sequence[Record], taken: Optional[float] = None) -> list[Record]:
    """Records with a capture time for the gallery's time filter: ``taken`` (UNIX seconds) for all of them when
    given, else each keeps its own or gets its file's modification time (None when the file cannot be read:
    embedding it then names the problem)."""
    def when(record: Record) -> Optional[float]:
        if taken is not None:
            return float(taken)
        if record.time is not None:
            return record.time
        try:
            return os.stat(record.path).st_mtime
        except OSError:
            return None

    return [replace(r, time=when(r)) for r in records]
