"""Plain image folders (e.g. a folder of infrared crops to index), and modality-name parsing shared by readers.

``read_folder(root, modality)`` returns one :class:`Record` per image file, sorted by relative path, with
``camid = 0``. Identity labels are optional: when an image sits directly in ``<root>/<pid>/<file>`` and the
folder name is an integer (``0012``, ``7``), its ``pid`` is that integer; every other image gets
``pid=None`` (pass ``pids_from_folders=False`` to never parse them).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional, Union

from mult.data.images import scan_image_files
from mult.data.records import Modality, Record, as_modality
from mult.errors import MultError

def _folder_pid(relative: str) -> Optional[int]:
    parts = relative.split(os.sep)
    if len(parts) == 2 and parts[0].isdigit():
        return int(parts[0])
    return None


def read_folder(
    root: Union[str, os.PathLike],
    modality: Union[Modality, str],
    recursive: bool = True,
    *,
    pids_from_folders: bool = True,
    skipped: Optional[list[str]] = None,
) -> list[Record]:
    """Records for every image file (jpg/jpeg/png/bmp/webp) under ``root``, sorted by relative path.

    ``recursive=False`` only looks at files directly in ``root``. Hidden files and folders (``.name``)
    are skipped. Entries with an image name that cannot be read or stored (FIFOs, devices, dangling links,
    names that are not UTF-8: :func:`mult.data.images.scan_image_files`) are left out, one line each appended
    to ``skipped`` when given, else a warning. Raises MultError when ``root`` is not a folder or holds no image.
    """
    folder = Path(root).expanduser()
    wanted = as_modality(modality, optional=True)
    if wanted is None:
        raise MultError("read_folder needs a modality: 'visible' or 'infrared'")
    if not folder.is_dir():
        raise MultError(f"{folder}: not a folder; pass a folder of image files")
    base = str(folder)
    scan = scan_image_files(base, recursive=recursive)
    if not scan.files:
        left_out = f"; left out {len(scan.skipped)}: {scan.skipped[0]}" if scan.skipped else ""
        raise MultError(
            f"{folder}: no image files found{' (searched recursively)' if recursive else ''}; "
            f"expected .jpg, .jpeg, .png, .bmp or .webp files{left_out}"
        )
    if scan.skipped:
        if skipped is not None:
            skipped.extend(scan.skipped)
        else:
            warnings.warn(f"{folder}: left out {len(scan.skipped)} file(s): " + "; ".join(scan.skipped), stacklevel=2)
    return [
        Record(os.path.join(base, rel), _folder_pid(rel) if pids_from_folders else None, 0, wanted)
        for rel in scan.files
    ]
