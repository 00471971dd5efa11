"""SYSU-MM01 reader: training records and the community evaluation protocol (METHOD.md §8.2, §10.1).

Layout: ``<root>/camK/<pid:04d>/<img:04d>.jpg`` for K = 1..6 and ``<root>/exp/{train_id,val_id,test_id}.txt``,
each one comma-separated line of integer ids. Visible (RGB) cameras are 1, 2 (indoor), 4, 5 (outdoor);
infrared cameras are 3 (indoor) and 6 (outdoor).

The query and single-shot gallery reproduce ``process_query_sysu`` / ``process_gallery_sysu`` of the
community code (AGW/CAJ, ADCA, MULT) draw for draw, so trial ``k`` here is trial ``k`` of published numbers.
Two documented deviations, neither of which changes anything on the real dataset:

* only image files (:data:`mult.data.images.IMAGE_EXTENSIONS`) are listed, so a stray ``Thumbs.db`` can
  never be drawn (the community code lists every file), and an existing but empty folder is skipped
  instead of crashing ``random.choice``;
* multi-shot: the community code calls ``np.random.choice(files, 10, replace=False)`` on numpy's global,
  unseeded generator, which is not reproducible. Here one ``np.random.RandomState(trial)`` is created per
  trial before the loop and used for every (id, camera) in order; a folder with fewer than 10 images
  contributes all of them and draws nothing.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Literal, Sequence, Union

import numpy as np

from mult.data.images import list_image_files
from mult.data.records import Modality, Record, as_modality
from mult.errors import MultError
from mult.io import read_dataset_text

VISIBLE_CAMERAS: tuple[int, ...] = (1, 2, 4, 5)
INFRARED_CAMERAS: tuple[int, ...] = (3, 6)
ALL_CAMERAS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
#: Visible cameras that form the gallery in each search mode (§8.2); queries always use both IR cameras.
GALLERY_CAMERAS: dict[str, tuple[int, ...]] = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
SPLIT_FILES: dict[str, str] = {"train": "train_id.txt", "val": "val_id.txt", "test": "test_id.txt"}
#: Images per (id, camera) in the multi-shot gallery.
MULTI_SHOT = 10

SearchMode = Literal["all", "indoor"]
Shot = Literal["single", "multi"]
Split = Literal["train", "val", "test"]


def camera_modality(camid: int) -> Modality:
    """Modality seen by SYSU-MM01 camera ``camid`` (3 and 6 are infrared, 1, 2, 4, 5 visible)."""
    if camid in INFRARED_CAMERAS:
        return Modality.infrared
    if camid in VISIBLE_CAMERAS:
        return Modality.visible
    raise MultError(f"SYSU-MM01 camera {camid!r} does not exist; cameras are 1..6")


def camera_folder(camid: int) -> str:
    return f"cam{camid}"


def pid_folder(pid: int) -> str:
    """The community code looks ids up as ``"%04d" % pid``."""
    return f"{pid:04d}"


def parse_sysu_path(path: Union[str, os.PathLike]) -> tuple[int, int]:
    """``(camid, pid)`` from the ``.../camK/<pid>/<file>`` path parts (not fixed character offsets)."""
    parts = Path(path).parts
    if len(parts) < 3 or not parts[-3].startswith("cam") or not parts[-3][3:].isdigit() or not parts[-2].isdigit():
        raise MultError(f"{os.fspath(path)}: not a SYSU-MM01 image path; expected .../camK/<pid>/<file>")
    return int(parts[-3][3:]), int(parts[-2])


def parse_id_line(text: str, source: str) -> list[int]:
    """Ids of one ``exp/*_id.txt`` file's content: one comma-separated line of integers.

    Blank lines around the line and a trailing comma are tolerated; anything else raises MultError naming
    ``source``.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise MultError(f"{source}: empty; it must hold one comma-separated line of person ids (e.g. 1,2,5)")
    if len(lines) > 1:
        raise MultError(
            f"{source}: {len(lines)} non-empty lines; it must hold ONE comma-separated line of person ids "
            "(the community code reads only the first line)"
        )
    tokens = [token.strip() for token in lines[0].split(",")]
    if tokens and tokens[-1] == "":
        tokens = tokens[:-1]
    bad = [token for token in tokens if not token.isdigit()]
    if bad:
        raise MultError(f"{source}: {bad[0]!r} is not a non-negative integer id; the line must look like 1,2,5")
    ids = [int(token) for token in tokens]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise MultError(f"{source}: id {dup} is listed more than once; remove the duplicate")
    return ids


def read_id_file(path: Path) -> list[int]:
    """Read one ``exp/*_id.txt`` file (see :func:`parse_id_line`)."""
    text = read_dataset_text(path, "SYSU-MM01 needs exp/train_id.txt, val_id.txt and test_id.txt")
    return parse_id_line(text, str(path))


def _check_mode(mode: str) -> tuple[int, ...]:
    if mode not in GALLERY_CAMERAS:
        raise MultError(f"SYSU-MM01 search mode {mode!r} is unknown; use 'all' or 'indoor'")
    return GALLERY_CAMERAS[mode]


class SYSUMM01:
    """Reader for a SYSU-MM01 tree. Cheap to construct (checks the layout); folders are listed on first use.

    Example::

        data = SYSUMM01("~/data/SYSU-MM01")
        train_rgb = data.train(Modality.visible)
        query = data.query("all")
        pool = data.gallery_pool("all")              # extract features once ...
        for trial in range(10):                     # ... then index them per trial
            rows = data.gallery_indices("all", trial)
    """

    def __init__(self, root: Union[str, os.PathLike]) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise MultError(f"{self.root}: SYSU-MM01 root is not a folder; pass the folder holding cam1..cam6 and exp/")
        missing = [camera_folder(c) for c in ALL_CAMERAS if not (self.root / camera_folder(c)).is_dir()]
        if missing:
            raise MultError(
                f"{self.root}: camera folder(s) {', '.join(missing)} missing; a SYSU-MM01 root holds cam1..cam6 and exp/"
            )
        self._ids = {split: read_id_file(self.root / "exp" / name) for split, name in SPLIT_FILES.items()}
        self._listing: dict[tuple[int, int], list[str]] = {}
        self._pools: dict[str, tuple[list[Record], np.ndarray, np.ndarray]] = {}

    def __repr__(self) -> str:
        return f"SYSUMM01({str(self.root)!r})"

    # ----------------------------------------------------------------------------------------- listing
    def ids(self, split: Split) -> list[int]:
        """Person ids of ``split`` ('train', 'val' or 'test') in file order."""
        if split not in self._ids:
            raise MultError(f"SYSU-MM01 split {split!r} is unknown; use 'train', 'val' or 'test'")
        return list(self._ids[split])

    def image_paths(self, camid: int, pid: int) -> list[str]:
        """Sorted image paths of ``pid`` in camera ``camid``; empty when the folder does not exist."""
        camera_modality(camid)  # validates the camera number
        return list(self._paths(camid, pid))

    def _paths(self, camid: int, pid: int) -> list[str]:
        key = (camid, pid)
        if key not in self._listing:
            folder = os.path.join(str(self.root), camera_folder(camid), pid_folder(pid))
            names = list_image_files(Path(folder)) if os.path.isdir(folder) else []
            # Same string the community code builds (os.path.join(root, cam, id) + '/' + name on POSIX).
            self._listing[key] = [os.path.join(folder, name) for name in names]
        return self._listing[key]

    def _records(self, order: Sequence[tuple[int, int]]) -> list[Record]:
        """Records of the (camera, pid) folders in ``order``, files sorted within each folder."""
        return [
            Record(path, pid, camid, camera_modality(camid)) for camid, pid in order for path in self._paths(camid, pid)
        ]

    def _require_images(self, pids: Sequence[int], split_name: str) -> None:
        empty = [p for p in pids if not any(self._paths(c, p) for c in ALL_CAMERAS)]
        if empty:
            shown = ", ".join(str(p) for p in empty[:5]) + (" ..." if len(empty) > 5 else "")
            raise MultError(
                f"{self.root}: {len(empty)} {split_name} id(s) listed in exp/ have no images in cam1..cam6 ({shown}); "
                "restore the images or remove the ids (run `mult data check`)"
            )

    # ----------------------------------------------------------------------------------------- training
    def train(self, modality: Union[Modality, str, None] = None) -> list[Record]:
        """Records of train ∪ val ids (395 on the real set), sorted by camera folder, pid, file name.

        ``modality`` keeps only the visible (cams 1, 2, 4, 5) or infrared (cams 3, 6) images.
        """
        pids = sorted(set(self._ids["train"]) | set(self._ids["val"]))
        self._require_images(pids, "train/val")
        wanted = as_modality(modality, optional=True)
        cameras = [c for c in ALL_CAMERAS if wanted is None or camera_modality(c) == wanted]
        return self._records([(c, p) for c in cameras for p in pids])

    # ----------------------------------------------------------------------------------------- testing
    def query(self, mode: SearchMode = "all") -> list[Record]:
        """All infrared images (cams 3 and 6) of the test ids, id-major like ``process_query_sysu``.

        Both search modes use both IR cameras; ``mode`` is validated for symmetry with :meth:`gallery`.
        """
        _check_mode(mode)
        pids = sorted(self._ids["test"], key=pid_folder)
        self._require_images(pids, "test")
        return self._records([(c, p) for p in pids for c in INFRARED_CAMERAS])

    def _pool(self, mode: SearchMode) -> tuple[list[Record], np.ndarray, np.ndarray]:
        """Gallery candidates grouped per (id, camera) in community order, with group starts and sizes."""
        cameras = _check_mode(mode)
        if mode not in self._pools:
            # sorted() of the "%04d" strings, exactly as the community code iterates the ids.
            pids = sorted(self._ids["test"], key=pid_folder)
            self._require_images(pids, "test")
            groups = [(c, p) for p in pids for c in cameras if self._paths(c, p)]
            sizes = np.array([len(self._paths(c, p)) for c, p in groups], dtype=np.int64)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if len(sizes) else sizes
            records = self._records(groups)
            self._pools[mode] = (records, starts, sizes)
        return self._pools[mode]

    def gallery_pool(self, mode: SearchMode = "all") -> list[Record]:
        """Every gallery candidate of ``mode`` (all visible images of the test ids in its cameras).

        Extract features for these once; :meth:`gallery_indices` selects each trial's rows.
        """
        return list(self._pool(mode)[0])

    def gallery_indices(self, mode: SearchMode = "all", trial: int = 0, shot: Shot = "single") -> np.ndarray:
        """Row indices into :meth:`gallery_pool` of trial ``trial``'s gallery (METHOD.md §8.2).

        single: ``random.Random(trial)`` draws one image per (id, camera) with ``choice`` over the sorted
        files, in the community order — the same sequence as ``random.seed(trial)`` + ``random.choice``.
        multi: ``np.random.RandomState(trial).choice(n, 10, replace=False)`` per (id, camera), all images
        when fewer than 10 (a documented deviation: the community code is unseeded there).
        """
        _, starts, sizes = self._pool(mode)
        if not isinstance(trial, (int, np.integer)) or isinstance(trial, bool) or trial < 0:
            raise MultError(f"gallery trial {trial!r} must be a non-negative integer (the protocol uses 0..9)")
        if shot == "single":
            rng = random.Random(int(trial))
            # choice() over a range consumes exactly the draws choice() over the file list would.
            return np.array([rng.choice(range(s, s + n)) for s, n in zip(starts.tolist(), sizes.tolist())], dtype=np.int64)
        if shot == "multi":
            state = np.random.RandomState(int(trial))
            chunks = [
                s + (state.choice(n, MULTI_SHOT, replace=False) if n >= MULTI_SHOT else np.arange(n))
                for s, n in zip(starts.tolist(), sizes.tolist())
            ]
            return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, dtype=np.int64)
        raise MultError(f"gallery shot {shot!r} is unknown; use 'single' or 'multi'")

    def gallery(self, mode: SearchMode = "all", trial: int = 0, shot: Shot = "single") -> list[Record]:
        """The gallery records of one trial (see :meth:`gallery_indices`)."""
        pool = self._pool(mode)[0]
        return [pool[i] for i in self.gallery_indices(mode, trial, shot).tolist()]
