"""Dataset plans: which identity is seen by which camera, how many images, their paths, and the split files.

A plan is pure bookkeeping (no pixels): the list of images to render, each keyed by (pid, camera, index),
plus the text files of the real format (SYSU-MM01 ``exp/*.txt``, RegDB ``idx/*.txt``). Rendering reads
nothing but a job's keys, so any worker can render any job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mult.data.records import Modality
from mult.data.synth.cameras import CameraSpec, regdb_cameras, sysu_cameras
from mult.data.synth.identity import sample_identity
from mult.data.synth.seeding import Stream, stream

SYSU_TEST_SHARE = (96, 491)  # real SYSU-MM01: 96 of 491 identities are test identities
SYSU_VAL_SHARE = (99, 395)  # ... and 99 of the 395 training identities are listed in val_id.txt
SYSU_IMAGES_PER_CAMERA = 15  # with the coverage below: ~56 visible + ~29 infrared images per identity
# Probability that an identity appears in a camera. With 15 images per camera this gives the real set's
# density (22,258 visible + 11,909 infrared training images for 395 identities).
SYSU_COVERAGE = {1: 0.92, 2: 0.92, 3: 0.98, 4: 0.92, 5: 0.92, 6: 0.98}
# Real test identities have ~1.35x more images per camera (3,803 infrared queries and 7,813 visible images for
# 96 ids), which sets the size of the query set and gallery pools of the evaluation protocol.
SYSU_TEST_DENSITY = 1.35
REGDB_IMAGES = 10  # per identity and modality, as in the real set
REGDB_SPLITS = 10
REGDB_PAIR_KEY = 100  # pose stream key shared by RegDB's co-located cameras: both see the same moment


@dataclass(frozen=True)
class ImageJob:
    """One image to render. ``pose_key`` selects the pose stream: the camera's own for SYSU-MM01, one shared
    key for RegDB's co-located pair (same person, same moment, two modalities)."""

    relpath: str
    pid: int
    camid: int
    index: int
    pose_key: int
    view: str | None = None  # forces the facing direction (RegDB file names carry it)


@dataclass
class DatasetPlan:
    fmt: str
    cameras: dict[int, CameraSpec]
    jobs: list[ImageJob]
    text_files: dict[str, str]  # relative path -> content
    splits: dict[str, list[int]]  # SYSU: train / val / test ids; RegDB: split 1 train / test ids
    counts: dict[int, dict[int, int]] = field(default_factory=dict)  # camid -> pid -> images


def default_test_ids(fmt: str, ids: int) -> int:
    """SYSU-MM01's share of test identities (96/491, at least 2), or half for RegDB."""
    if fmt == "sysu":
        return max(2, int(round(ids * SYSU_TEST_SHARE[0] / SYSU_TEST_SHARE[1])))
    return ids // 2


def sysu_coverage(seed: int, ids: int, test: np.ndarray) -> np.ndarray:
    """Which cameras see which identity: bool [ids, 6] (column k-1 is camera k).

    Every identity is seen by at least one visible and one infrared camera; every camera sees someone; a test
    identity is seen by cam1 or cam2 (the indoor-search gallery) and, when seen by cam3, by cam1 (cam3 queries
    skip cam2 under the SYSU protocol, so they need cam1 to have a match in indoor search)."""
    rng = stream(Stream.plan, seed, 0)
    probability = np.array([SYSU_COVERAGE[k] for k in range(1, 7)])
    seen = rng.random((ids, 6)) < probability
    choice = rng.random((ids, 3))  # fallback draws, one row per identity
    visible, infrared = np.array([0, 1, 3, 4]), np.array([2, 5])
    rows = np.arange(ids)
    missing = ~seen[:, visible].any(axis=1)
    seen[rows[missing], visible[(choice[missing, 0] * 4).astype(int)]] = True
    missing = ~seen[:, infrared].any(axis=1)
    seen[rows[missing], infrared[(choice[missing, 1] * 2).astype(int)]] = True
    is_test = np.zeros(ids, bool)
    is_test[test - 1] = True
    missing = is_test & ~seen[:, :2].any(axis=1)
    seen[rows[missing], (choice[missing, 2] * 2).astype(int)] = True
    seen[is_test & seen[:, 2], 0] = True
    for column in np.flatnonzero(~seen.any(axis=0)):
        seen[int(rng.integers(ids)), column] = True
    return seen


def plan_sysu(seed: int, ids: int, test_ids: int, images_per_camera: int, height: int, width: int) -> DatasetPlan:
    """The SYSU-MM01 tree: ``camK/<pid:04d>/<img:04d>.jpg`` and ``exp/{train,val,test}_id.txt``."""
    order = stream(Stream.split, seed, 0).permutation(np.arange(1, ids + 1))
    test = np.sort(order[:test_ids])
    rest = order[test_ids:]
    n_val = int(np.clip(round(len(rest) * SYSU_VAL_SHARE[0] / SYSU_VAL_SHARE[1]), 1, len(rest) - 1))
    val, train = np.sort(rest[:n_val]), np.sort(rest[n_val:])

    seen = sysu_coverage(seed, ids, test)
    spread = stream(Stream.plan, seed, 1).uniform(0.5, 1.5, size=(ids, 6))
    spread[test - 1] *= SYSU_TEST_DENSITY
    counts = np.where(seen, np.maximum(1, np.round(images_per_camera * spread)), 0).astype(int)

    cameras = sysu_cameras(seed, height, width)
    jobs = [
        ImageJob(f"{cameras[camid].folder}/{pid:04d}/{index:04d}.jpg", pid, camid, index, cameras[camid].key)
        for camid in sorted(cameras)
        for pid in range(1, ids + 1)
        for index in range(1, counts[pid - 1, camid - 1] + 1)
    ]
    text_files = {
        f"exp/{name}_id.txt": ",".join(str(int(p)) for p in split)  # one line, no newline, like the real files
        for name, split in (("train", train), ("val", val), ("test", test))
    }
    per_camera = {camid: {pid: int(counts[pid - 1, camid - 1]) for pid in range(1, ids + 1)
                          if counts[pid - 1, camid - 1]} for camid in cameras}
    return DatasetPlan(
        fmt="sysu", cameras=cameras, jobs=jobs, text_files=text_files,
        splits={"train": train.tolist(), "val": val.tolist(), "test": test.tolist()}, counts=per_camera,
    )


def regdb_split(seed: int, ids: int, test_ids: int, split: int) -> tuple[list[int], list[int]]:
    """Split ``split`` (1..10): its own seeded random partition into train and test identities."""
    order = stream(Stream.split, seed, split).permutation(np.arange(1, ids + 1))
    return sorted(int(p) for p in order[test_ids:]), sorted(int(p) for p in order[:test_ids])


def plan_regdb(seed: int, ids: int, test_ids: int, height: int, width: int) -> DatasetPlan:
    """The RegDB tree: ``Visible|Thermal/<id>/<gender>_<view>_<v|t>_<frame>_<id>.bmp`` and
    ``idx/{train,test}_{visible,thermal}_{1..10}.txt`` with ``<relative path> <id - 1>`` lines."""
    cameras = regdb_cameras(seed, height, width)
    rng = stream(Stream.plan, seed, 2)
    views = np.where(rng.random(ids) < 0.5, "front", "back")
    frames = rng.integers(1, 90_000, size=(ids, 1)) + np.cumsum(rng.integers(1, 9, size=(ids, REGDB_IMAGES)), axis=1)
    genders = [sample_identity(seed, pid).gender for pid in range(1, ids + 1)]
    letter = {Modality.visible: "v", Modality.infrared: "t"}
    files: dict[tuple[int, int], list[str]] = {}  # (camid, pid) -> relative paths
    jobs = []
    for camid in sorted(cameras):
        camera = cameras[camid]
        for pid in range(1, ids + 1):
            names = [f"{camera.folder}/{pid}/{genders[pid - 1]}_{views[pid - 1]}_{letter[camera.modality]}_"
                     f"{int(frames[pid - 1, j]):05d}_{pid}.bmp" for j in range(REGDB_IMAGES)]
            files[camid, pid] = names
            jobs.extend(ImageJob(name, pid, camid, j + 1, REGDB_PAIR_KEY, str(views[pid - 1]))
                        for j, name in enumerate(names))

    text_files = {}
    for split in range(1, REGDB_SPLITS + 1):
        train, test = regdb_split(seed, ids, test_ids, split)
        for part, members in (("train", train), ("test", test)):
            for camid, modality in ((1, "visible"), (2, "thermal")):
                lines = [f"{name} {pid - 1}" for pid in members for name in files[camid, pid]]
                text_files[f"idx/{part}_{modality}_{split}.txt"] = "\n".join(lines) + "\n"
    train, test = regdb_split(seed, ids, test_ids, 1)
    return DatasetPlan(
        fmt="regdb", cameras=cameras, jobs=jobs, text_files=text_files, splits={"train": train, "test": test},
        counts={camid: {pid: REGDB_IMAGES for pid in range(1, ids + 1)} for camid in cameras},
    )
