"""RegDB reader (METHOD.md §8.3, §10.2).

Layout: ``<root>/Visible/<id>/...bmp``, ``<root>/Thermal/<id>/...bmp`` and
``<root>/idx/{train,test}_{visible,thermal}_{1..10}.txt``, each line ``<relative path> <label>``
(e.g. ``Thermal/1/male_front_t_00007_1.bmp 0``). As in the community code (``process_test_regdb``), the
person id is the idx file's label and the camera id is 1 for visible, 2 for thermal; evaluation of either
direction removes nothing by camera.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

from mult.data.records import Modality, Record, as_modality
from mult.errors import MultError
from mult.io import read_dataset_text

SPLITS: tuple[int, ...] = tuple(range(1, 11))
PARTS: tuple[str, ...] = ("train", "test")
#: Name of each modality in the idx file names.
IDX_MODALITY: dict[Modality, str] = {Modality.visible: "visible", Modality.infrared: "thermal"}
CAMID: dict[Modality, int] = {Modality.visible: 1, Modality.infrared: 2}
#: (query modality, gallery modality) of each search direction.
DIRECTIONS: dict[str, tuple[Modality, Modality]] = {
    "v2t": (Modality.visible, Modality.infrared),
    "t2v": (Modality.infrared, Modality.visible),
}

Part = Literal["train", "test"]
Direction = Literal["v2t", "t2v"]


@dataclass(frozen=True)
class IdxEntry:
    """One line of an idx file: the image path relative to the root, its label, and the 1-based line number."""

    relpath: str
    label: int
    line: int


def idx_path(root: Path, part: str, modality: Modality, split: int) -> Path:
    """``<root>/idx/<part>_<visible|thermal>_<split>.txt``."""
    return root / "idx" / f"{part}_{IDX_MODALITY[modality]}_{split}.txt"


def check_split(split: object) -> int:
    """The split number as an int, or MultError when it is not one of 1..10."""
    if isinstance(split, bool) or not isinstance(split, int) or split not in SPLITS:
        raise MultError(f"RegDB split {split!r} is out of range; the official splits are 1..10")
    return split


def parse_idx_lines(text: str, source: str) -> tuple[list[IdxEntry], list[str]]:
    """Entries of an idx file's content and one problem line per malformed line (file and line number).

    A line is ``<relative path> <non-negative integer label>``; the path may contain spaces (the label is the
    last field). Blank lines are ignored.
    """
    entries: list[IdxEntry] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.rsplit(None, 1)
        if len(fields) != 2 or not fields[1].isdigit():
            problems.append(
                f"{source} line {number}: {line[:80]!r} is malformed; expected '<relative path> <integer label>'"
            )
            continue
        entries.append(IdxEntry(fields[0], int(fields[1]), number))
    return entries, problems


def read_idx_file(path: Path) -> list[IdxEntry]:
    """Read one idx file; MultError on a missing file or the first malformed line."""
    text = read_dataset_text(path, "RegDB needs idx/{train,test}_{visible,thermal}_{1..10}.txt")
    entries, problems = parse_idx_lines(text, str(path))
    if problems:
        more = f" (and {len(problems) - 1} more malformed lines)" if len(problems) > 1 else ""
        raise MultError(problems[0] + more)
    if not entries:
        raise MultError(f"{path}: no entries; each line must be '<relative path> <integer label>'")
    return entries


class RegDB:
    """Reader for one official RegDB split (1..10; results are averaged over all ten, one model per split).

    Example::

        data = RegDB("~/data/RegDB", split=1)
        train_thermal = data.train("thermal")
        query, gallery = data.query_gallery("v2t")   # visible queries, thermal gallery
    """

    def __init__(self, root: Union[str, os.PathLike], split: int = 1) -> None:
        self.root = Path(root).expanduser()
        self.split = check_split(split)
        if not self.root.is_dir():
            raise MultError(f"{self.root}: RegDB root is not a folder; pass the folder holding Visible/, Thermal/ and idx/")
        if not (self.root / "idx").is_dir():
            raise MultError(f"{self.root / 'idx'}: missing; a RegDB root holds Visible/, Thermal/ and idx/")
        self._cache: dict[tuple[str, Modality], list[Record]] = {}

    def __repr__(self) -> str:
        return f"RegDB({str(self.root)!r}, split={self.split})"

    def _read(self, part: str, modality: Modality) -> list[Record]:
        key = (part, modality)
        if key not in self._cache:
            path = idx_path(self.root, part, modality, self.split)
            entries = read_idx_file(path)
            base = str(self.root)
            paths = [os.path.join(base, entry.relpath) for entry in entries]
            missing = [(entry, p) for entry, p in zip(entries, paths) if not os.path.isfile(p)]
            if missing:
                entry, p = missing[0]
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise MultError(f"{path} line {entry.line}: image {p} does not exist{more}; fix the idx file or restore the images")
            camid = CAMID[modality]
            self._cache[key] = [Record(p, entry.label, camid, modality) for entry, p in zip(entries, paths)]
        return self._cache[key]

    def _modalities(self, modality: Union[Modality, str, None]) -> tuple[Modality, ...]:
        wanted = as_modality(modality, optional=True)
        return (Modality.visible, Modality.infrared) if wanted is None else (wanted,)

    def train(self, modality: Union[Modality, str, None] = None) -> list[Record]:
        """Training records of this split (pid = idx label); both modalities, visible first, when ``None``."""
        return [r for m in self._modalities(modality) for r in self._read("train", m)]

    def test(self, modality: Union[Modality, str, None] = None) -> list[Record]:
        """Test records of this split (pid = idx label); both modalities, visible first, when ``None``."""
        return [r for m in self._modalities(modality) for r in self._read("test", m)]

    def query_gallery(self, direction: Direction = "v2t") -> tuple[list[Record], list[Record]]:
        """``(query, gallery)`` for visible->thermal (``"v2t"``) or thermal->visible (``"t2v"``)."""
        if direction not in DIRECTIONS:
            raise MultError(f"RegDB direction {direction!r} is unknown; use 'v2t' (visible to thermal) or 't2v'")
        query_modality, gallery_modality = DIRECTIONS[direction]
        return list(self._read("test", query_modality)), list(self._read("test", gallery_modality))

