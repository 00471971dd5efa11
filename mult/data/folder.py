"""Plain image folders (e.g. a folder of infrared crops to index), and modality-name parsing shared by readers.

``read_folder(root, modality)`` returns one :class:`Record` per image file, sorted by relative path, with
``camid = 0``. Identity labels are optional: when an image sits directly in ``<root>/<pid>/<file>`` and the
folder name is an integer (``0012``, ``7``), its ``pid`` is that integer; every other image gets
``pid=None`` (pass ``pids_from_folders=False`` to never parse them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from mult.data.images import is_image_file
from mult.data.records import Modality, Record
from mult.errors import MultError

_MODALITY_NAMES: dict[str, Modality] = {
    "visible": Modality.visible,
    "rgb": Modality.visible,
    "infrared": Modality.infrared,
    "ir": Modality.infrared,
    "thermal": Modality.infrared,
}


def as_modality(modality: Union[Modality, str, None]) -> Optional[Modality]:
    """``Modality`` from an enum or a name (visible/rgb, infrared/ir/thermal); ``None`` passes through."""
    if modality is None or isinstance(modality, Modality):
        return modality
    try:
        return _MODALITY_NAMES[str(modality).strip().lower()]
    except KeyError:
        raise MultError(f"modality {modality!r} is unknown; use 'visible' or 'infrared' (or 'thermal')") from None


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
) -> list[Record]:
    """Records for every image file (jpg/jpeg/png/bmp/webp) under ``root``, sorted by relative path.

    ``recursive=False`` only looks at files directly in ``root``. Hidden files and folders (``.name``)
    are skipped. Raises MultError when ``root`` is not a folder or holds no image.
    """
    folder = Path(root).expanduser()
    wanted = as_modality(modality)
    if wanted is None:
        raise MultError("read_folder needs a modality: 'visible' or 'infrared'")
    if not folder.is_dir():
        raise MultError(f"{folder}: not a folder; pass a folder of image files")
    base = str(folder)
    relative: list[str] = []
    if recursive:
        for current, dirs, files in os.walk(base, followlinks=False):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            prefix = os.path.relpath(current, base)
            relative.extend(
                name if prefix == "." else os.path.join(prefix, name)
                for name in files
                if not name.startswith(".") and is_image_file(name)
            )
    else:
        with os.scandir(base) as entries:
            relative.extend(e.name for e in entries if not e.name.startswith(".") and is_image_file(e.name) and e.is_file())
    if not relative:
        raise MultError(
            f"{folder}: no image files found{' (searched recursively)' if recursive else ''}; "
            "expected .jpg, .jpeg, .png, .bmp or .webp files"
        )
    relative.sort()
    return [
        Record(os.path.join(base, rel), _folder_pid(rel) if pids_from_folders else None, 0, wanted) for rel in relative
    ]
