"""The steps of the SYSU-MM01 check (:func:`mult.data.check.check_sysu`): read the split files, scan the camera
folders, check the splits against each other and the images, count. Each step appends its problems, one line
each, to ``problems``."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

from mult.data import sysu
from mult.data.images import is_image_file
from mult.data.records import Modality
from mult.errors import MultError

#: ``{camid: {pid: sorted image paths}}`` of a SYSU-MM01 tree.
Cameras = dict[int, dict[int, list[str]]]


def short_list(values: Sequence[int], limit: int = 10) -> str:
    """The first ``limit`` values, comma-separated, then ``, ... (N in all)`` when there are more."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def scan_camera(folder: Path, problems: list[str]) -> dict[int, list[str]]:
    """``{pid: sorted image paths}`` of one camera folder; odd or empty id folders become problems."""
    found: dict[int, list[str]] = {}
    with os.scandir(folder) as entries:
        subdirs = sorted(e.name for e in entries if e.is_dir())
    for name in subdirs:
        if name.startswith("."):
            continue
        if not (name.isdigit() and len(name) == 4):
            problems.append(
                f"{folder / name}: folder name is not a 4-digit person id, so readers ignore it; rename it (e.g. 0012) or remove it"
            )
            continue
        with os.scandir(folder / name) as entries:
            images = sorted(e.path for e in entries if is_image_file(e.name) and e.is_file())
        if not images:
            problems.append(f"{folder / name}: no images in this id folder; restore its images or remove the folder")
            continue
        found[int(name)] = images
    if not found:
        problems.append(f"{folder}: empty camera folder (no id folder with images); restore it from the dataset archive")
    return found


def read_splits(root: Path, problems: list[str]) -> dict[str, list[int]]:
    """``{split: listed ids}`` from exp/*_id.txt; a file that cannot be read is a problem and lists no ids."""
    ids: dict[str, list[int]] = {}
    for split, name in sysu.SPLIT_FILES.items():
        try:
            ids[split] = sysu.read_id_file(root / "exp" / name)
        except MultError as err:
            problems.append(str(err))
            ids[split] = []
    return ids


def scan_cameras(root: Path, problems: list[str]) -> Cameras:
    """``{camid: {pid: sorted image paths}}`` of cam1..cam6; a missing camera folder is a problem and empty."""
    cams: Cameras = {}
    for camid in sysu.ALL_CAMERAS:
        folder = root / sysu.camera_folder(camid)
        if not folder.is_dir():
            problems.append(f"{folder}: camera folder missing; a SYSU-MM01 root holds cam1..cam6, restore it")
            cams[camid] = {}
        else:
            cams[camid] = scan_camera(folder, problems)
    return cams


def count_images(cams: Cameras, pids: Iterable[int], cameras: Sequence[int]) -> int:
    """Images of ``pids`` in ``cameras``."""
    return sum(len(cams[c].get(p, ())) for p in pids for c in cameras)


def check_splits(root: Path, ids: dict[str, list[int]], cams: Cameras, problems: list[str]) -> None:
    """The split files against each other and against the images: disjoint, every listed id has images, and
    every test id has images of both modalities."""
    # Overlapping splits leak test identities into training.
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(set(ids[a]) & set(ids[b]))
        if both:
            problems.append(
                f"{root / 'exp'}: {len(both)} id(s) are in both {a} and {b} ({short_list(both)}); the splits must be disjoint"
            )
    for split, listed in ids.items():
        empty = [p for p in listed if count_images(cams, [p], sysu.ALL_CAMERAS) == 0]
        if empty:
            problems.append(
                f"{root / 'exp' / sysu.SPLIT_FILES[split]}: {len(empty)} listed id(s) have no images in cam1..cam6 "
                f"({short_list(empty)}); restore their folders or remove the ids"
            )
    test_file = root / "exp" / sysu.SPLIT_FILES["test"]
    for modality, cameras, role in (
        (Modality.infrared, sysu.INFRARED_CAMERAS, "query"),
        (Modality.visible, sysu.VISIBLE_CAMERAS, "gallery"),
    ):
        lacking = [p for p in ids["test"]
                   if count_images(cams, [p], sysu.ALL_CAMERAS) > 0 and count_images(cams, [p], cameras) == 0]
        if lacking:
            problems.append(
                f"{test_file}: {len(lacking)} test id(s) have no {modality.value} images "
                f"(cams {', '.join(map(str, cameras))}), so they never appear in the {role} ({short_list(lacking)}); "
                "restore those images"
            )


def summary(ids: dict[str, list[int]], cams: Cameras, images_checked: int, unreadable: int) -> dict[str, Any]:
    """The counts of a SYSU-MM01 report: ids per split, images per camera, modality and split, the test set."""
    count = partial(count_images, cams)
    train_ids = sorted(set(ids["train"]) | set(ids["val"]))
    listed = set(ids["train"]) | set(ids["val"]) | set(ids["test"])
    with_images = set().union(*(cams[c].keys() for c in sysu.ALL_CAMERAS))
    return {
        "ids": {split: len(v) for split, v in ids.items()} | {"train+val": len(train_ids)},
        "unlisted_ids_with_images": len(with_images - listed),
        "cameras": {
            f"cam{c}": {"modality": sysu.camera_modality(c).value, "ids": len(cams[c]), "images": count(cams[c], [c])}
            for c in sysu.ALL_CAMERAS
        },
        "images": {
            "visible": count(with_images, sysu.VISIBLE_CAMERAS),
            "infrared": count(with_images, sysu.INFRARED_CAMERAS),
        },
        "splits": {
            split: {"visible": count(v, sysu.VISIBLE_CAMERAS), "infrared": count(v, sysu.INFRARED_CAMERAS)}
            for split, v in (("train", ids["train"]), ("val", ids["val"]), ("train+val", train_ids), ("test", ids["test"]))
        },
        "test": {
            "query_images": count(ids["test"], sysu.INFRARED_CAMERAS),
            "gallery_candidates_all": count(ids["test"], sysu.GALLERY_CAMERAS["all"]),
            "gallery_candidates_indoor": count(ids["test"], sysu.GALLERY_CAMERAS["indoor"]),
            "single_shot_gallery_all": sum(1 for p in ids["test"] for c in sysu.GALLERY_CAMERAS["all"] if p in cams[c]),
            "single_shot_gallery_indoor": sum(1 for p in ids["test"] for c in sysu.GALLERY_CAMERAS["indoor"] if p in cams[c]),
        },
        "images_checked": images_checked,
        "unreadable_images": unreadable,
    }
