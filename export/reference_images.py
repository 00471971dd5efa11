"""The images an export checks and calibrates on: parity-check images (:func:`parity_images`) and INT8
calibration images (:func:`int8_calibration_images`), each with a note saying where they came from.

Both prefer images the user names, then the run's own training images of the stem's modality (spread evenly
over its dataset); parity falls back to deterministic random images (exporting must not need the training
data), calibration does not (random images would give meaningless ranges).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mult.config import TrainConfig
from mult.data.images import IMAGE_EXTENSIONS, is_image_file, load_resized
from mult.data.records import Modality
from mult.errors import MultError
from mult.io import PathLike

#: Number of images the parity check runs (batch 1 and batch N, N odd so it differs from any export batch).
PARITY_IMAGES = 7
#: INT8 calibration images per stem by default (min/max ranges; more images only widen them slowly).
DEFAULT_CALIBRATION_IMAGES = 64


def random_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic random uint8 images [n, H, W, 3] (used when no dataset image is at hand)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def _spread(count: int, n: int) -> np.ndarray:
    """``min(n, count)`` indices spread evenly over ``range(count)`` (first and last included)."""
    return np.unique(np.linspace(0, count - 1, num=min(int(n), count)).round().astype(int))


def training_image_paths(modality: Modality, cfg: TrainConfig, n: int) -> tuple[list[str], Path]:
    """``n`` training images of ``modality`` spread evenly over the run's dataset, and the dataset root.

    A missing or unreadable dataset is a MultError (the callers decide whether that is fatal).
    """
    from mult.datasets import load_training_set

    root = Path(cfg.data_root).expanduser()
    train = load_training_set(cfg.dataset, root, regdb_split=cfg.regdb_split)
    records = train.visible if modality is Modality.visible else train.infrared
    if not records:
        raise MultError(f"no {modality.value} training images under {root}")
    return [records[i].path for i in _spread(len(records), n)], root


def parity_images(
    modality: Modality,
    cfg: Optional[TrainConfig],
    height: int,
    width: int,
    *,
    n: int = PARITY_IMAGES,
    calibration_images: Optional[Sequence[PathLike]] = None,
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """Images for the parity check and a note saying where they came from.

    Priority: the given files; else ``n`` images of this modality spread evenly over the run's training
    set (``cfg.data_root``); else deterministic random images. A dataset that has moved is not an error
    (exporting must not need the training data): the note records why random images were used.
    """
    if calibration_images:
        paths = [os.fspath(p) for p in calibration_images]
        return load_resized(paths, height, width), f"files ({len(paths)} given)"
    if cfg is None or not cfg.data_root:
        return random_images(n, height, width, seed), "random (no dataset recorded in the run config)"
    try:
        paths, root = training_image_paths(modality, cfg, n)
        images = load_resized(paths, height, width)
    except MultError as err:
        return random_images(n, height, width, seed), f"random (dataset unavailable: {err})"
    return images, f"dataset {cfg.dataset} at {root} ({len(images)} {modality.value} images)"


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def int8_calibration_images(
    modality: Modality,
    cfg: Optional[TrainConfig],
    height: int,
    width: int,
    *,
    calibration_dir: Optional[PathLike] = None,
    n: int = DEFAULT_CALIBRATION_IMAGES,
) -> tuple[np.ndarray, str]:
    """INT8 calibration images of one stem (uint8 ``[k, H, W, 3]``, k <= n spread evenly) and a note.

    ``calibration_dir``: its ``visible/`` and ``infrared/`` subfolders when it has them (each stem calibrated
    on its own modality), else every image under it for both stems. Without it: the run's training images of
    this modality. Random images would give meaningless ranges, so finding none is a MultError.
    """
    if int(n) < 1:
        raise MultError(f"the number of calibration images must be >= 1, got {n}")
    if calibration_dir is not None:
        folder = Path(os.fspath(calibration_dir)).expanduser()
        if not folder.is_dir():
            raise MultError(f"{folder}: no such calibration folder; pass a folder of images to --calibration-dir")
        split = {m: folder / m.value for m in Modality if (folder / m.value).is_dir()}
        if split and modality not in split:
            raise MultError(f"{folder}: has {', '.join(p.name + '/' for p in split.values())} but no "
                            f"{modality.value}/ subfolder; add {modality.value} images there or use one flat folder")
        source = split.get(modality, folder)
        files = _image_files(source)
        if not files:
            raise MultError(f"{source}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) for INT8 calibration; "
                            "put some images of the served kind there")
        picked = [files[i] for i in _spread(len(files), n)]
        return load_resized(picked, height, width), f"folder {source} ({len(picked)} of {len(files)} images)"
    if cfg is None or not cfg.data_root:
        raise MultError("INT8 needs calibration images and the run config records no dataset; pass "
                        "--calibration-dir DIR (a folder of person crops, optionally with visible/ and infrared/)")
    try:
        paths, root = training_image_paths(modality, cfg, n)
    except MultError as err:
        raise MultError(f"INT8 needs calibration images and the run's dataset is unavailable ({err}); pass "
                        "--calibration-dir DIR") from None
    images = load_resized(paths, height, width)
    return images, f"dataset {cfg.dataset} at {root} ({len(images)} {modality.value} training images)"

