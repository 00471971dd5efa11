"""``synthesize``: render a planned SynthVI dataset into a folder, atomically and in parallel.

Everything is written into a hidden sibling folder that is renamed onto ``out`` only when complete, so an
interrupted or failed run leaves nothing half-written. Images are rendered in chunks of one camera each (the
camera's background canvas is built once per chunk); with ``workers`` > 1 the chunks go to a process pool.
Every image depends only on its own keys, so the bytes are the same for any number of workers.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_all_start_methods, get_context
from multiprocessing.context import BaseContext
from pathlib import Path

from PIL import Image

from mult.data.records import Modality
from mult.data.synth.cameras import CameraSpec
from mult.data.synth.identity import Identity, sample_identity
from mult.data.synth.plan import (
    SYSU_IMAGES_PER_CAMERA, DatasetPlan, ImageJob, default_test_ids, plan_regdb, plan_sysu,
)
from mult.data.synth.render import render_keyed
from mult.data.synth.scene import background_canvas
from mult.errors import MultError
from mult.io import publish_directory

#: The layouts SynthVI writes: the names of mult.datasets.DATASETS (tests/test_data_check.py keeps them equal).
FORMATS = ("sysu", "regdb")
JPEG_QUALITY = 90
MAX_SIDE = 4096
SYSU_MAX_IDS = 9999  # person folders are four digits


@dataclass(frozen=True)
class SynthSummary:
    """What was written: ids per split, images per camera and modality, time taken, where."""

    format: str
    out: str
    seed: int
    ids: dict[str, int]  # train (SYSU: train_id + val_id), val (SYSU), test
    images: dict[str, dict[str, int]]  # modality -> {"train": n, "test": n} (RegDB: split 1)
    cameras: dict[str, dict[str, object]]  # folder -> modality, ids, images, native size [h, w]
    mean_images_per_camera: float  # over the (identity, camera) pairs that have images
    heat_from_colour: float  # 0 = infrared heat independent of visible colour (the default)
    seconds: float
    workers: int

    @property
    def total_images(self) -> int:
        return sum(int(c["images"]) for c in self.cameras.values())  # type: ignore[call-overload]

    def as_dict(self) -> dict[str, object]:
        payload = asdict(self)
        payload["total_images"] = self.total_images
        return payload

    def render(self) -> str:
        ids = self.ids
        split = f"{ids['train']} train"
        if "val" in ids:
            split += f" ({ids['train'] - ids['val']} train_id + {ids['val']} val_id)"
        if self.format == "regdb":
            split += " / split 1"
        lines = [
            f"SynthVI {self.format} -> {self.out}",
            f"ids: {split}, {ids['test']} test; seed {self.seed}; {self.total_images:,} images in "
            f"{self.seconds:.1f} s with {self.workers} worker(s)",
            f"{'camera':<8} {'modality':<9} {'ids':>5} {'images':>7}  size (h x w)",
        ]
        if self.heat_from_colour:
            lines.insert(2, f"infrared heat tied to visible luminance: {self.heat_from_colour:g}")
        for folder, cam in self.cameras.items():
            h, w = cam["size"]  # type: ignore[misc]
            lines.append(f"{folder:<8} {cam['modality']:<9} {cam['ids']:>5} {cam['images']:>7}  {h} x {w}")
        for modality, parts in self.images.items():
            lines.append(f"{modality}: {parts['train']:,} train + {parts['test']:,} test images")
        lines.append(f"mean images per id and camera: {self.mean_images_per_camera:.1f}")
        return "\n".join(lines)


def _validate(fmt: str, ids: int, test_ids: int | None, images_per_camera: int | None, height: int, width: int,
              seed: int, workers: int | None, heat_from_colour: float) -> int:
    """Check the arguments; return the number of test ids."""
    if fmt not in FORMATS:
        raise MultError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if ids < 4:
        raise MultError(f"--ids {ids} is too small: SynthVI needs at least 4 identities")
    if fmt == "sysu" and ids > SYSU_MAX_IDS:
        raise MultError(f"--ids {ids} is too large for SYSU-MM01's four-digit person folders (at most {SYSU_MAX_IDS})")
    test = default_test_ids(fmt, ids) if test_ids is None else test_ids
    if test < 2 or ids - test < 2:
        raise MultError(f"--test-ids {test} leaves {ids - test} training ids out of --ids {ids}: "
                        "both train and test need at least 2")
    if images_per_camera is not None:
        if fmt == "regdb":
            raise MultError("--images-per-camera applies to sysu only: RegDB has 10 images per id and modality")
        if not 1 <= images_per_camera <= 1000:
            raise MultError(f"--images-per-camera {images_per_camera} must be between 1 and 1000")
    if not (32 <= height <= MAX_SIDE and 16 <= width <= MAX_SIDE):
        raise MultError(f"image size {height} x {width} is out of range: height 32..{MAX_SIDE}, width 16..{MAX_SIDE}")
    if seed < 0:
        raise MultError(f"--seed {seed} must be 0 or positive")
    if workers is not None and workers < 1:
        raise MultError(f"--workers {workers} must be at least 1")
    if not 0.0 <= heat_from_colour <= 1.0:
        raise MultError(f"--heat-from-colour {heat_from_colour} must be between 0 (independent) and 1")
    return test


def _staging_folder(out: Path) -> Path:
    """Refuse an ``out`` that is a file or a non-empty folder; create and return a hidden sibling to fill.

    Not :func:`mult.io.staging_directory`: its ``.{name}.<owner>XXXX.tmp`` name is not the ``.{name}.partial-...``
    one that tests/test_synth.py watches for mid-write, and a folder it cannot create is a bare OSError."""
    if out.exists() and not out.is_dir():
        raise MultError(f"output {out} is a file: choose a new folder for --out")
    if out.is_dir() and any(out.iterdir()):
        raise MultError(f"output folder {out} is not empty: choose a new or empty folder for --out")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staging.mkdir(parents=True)
    except OSError as err:
        raise MultError(f"cannot create a folder beside {out}: {err.strerror}; check the path and permissions") from err
    return staging


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished tree onto ``out`` (replacing it only if it is still an empty folder)."""
    try:
        publish_directory(staging, out)
    except OSError as err:
        raise MultError(f"cannot move the finished dataset to {out}: {err.strerror}; "
                        "it must not exist or be an empty folder") from err


@dataclass(frozen=True)
class _Chunk:
    """Work for one task: jobs of a single camera, rendered into ``root``."""

    root: str
    seed: int
    camera: CameraSpec
    jobs: tuple[ImageJob, ...]
    heat_from_colour: float = 0.0


def _render_chunk(chunk: _Chunk) -> int:
    """Render and save the chunk's images (in a worker process or inline); returns how many were written."""
    camera, seed = chunk.camera, chunk.seed
    canvas = background_canvas(camera, seed)
    identities: dict[int, Identity] = {}
    for job in chunk.jobs:
        who = identities.get(job.pid)
        if who is None:
            who = identities[job.pid] = sample_identity(seed, job.pid, chunk.heat_from_colour)
        pixels = render_keyed(who, camera, canvas, seed, job.index, job.pose_key, job.view)
        path = os.path.join(chunk.root, job.relpath)
        if job.relpath.endswith(".jpg"):
            Image.fromarray(pixels).save(path, format="JPEG", quality=JPEG_QUALITY)
        else:
            Image.fromarray(pixels).save(path, format="BMP")
    return len(chunk.jobs)


def _chunks(plan: DatasetPlan, root: Path, seed: int, workers: int, heat_from_colour: float = 0.0) -> list[_Chunk]:
    """Split each camera's jobs into chunks: small enough to balance the workers, big enough that building the
    camera's canvas once per chunk costs little."""
    size = max(16, min(128, math.ceil(len(plan.jobs) / (8 * workers))))
    by_camera: dict[int, list[ImageJob]] = {}
    for job in plan.jobs:
        by_camera.setdefault(job.camid, []).append(job)
    return [
        _Chunk(str(root), seed, plan.cameras[camid], tuple(jobs[i:i + size]), heat_from_colour)
        for camid, jobs in by_camera.items()
        for i in range(0, len(jobs), size)
    ]


def _pool_context() -> BaseContext:
    """fork where the OS has it: workers need only numpy and Pillow (as torch's DataLoader workers, they
    tolerate a parent holding threads), and unlike spawn it does not re-import the caller's main module, so a
    plain script calling :func:`synthesize` without an ``if __name__ == "__main__"`` guard works."""
    return get_context("fork" if "fork" in get_all_start_methods() else "spawn")


def _render_all(chunks: list[_Chunk], total: int, workers: int, progress: bool, label: str) -> None:
    from tqdm import tqdm

    with tqdm(total=total, desc=f"SynthVI {label}", unit="img", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        if workers == 1 or len(chunks) == 1:
            for chunk in chunks:
                bar.update(_render_chunk(chunk))
            return
        with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=_pool_context()) as pool:
            pending = {pool.submit(_render_chunk, chunk) for chunk in chunks}
            try:
                while pending:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)  # result() re-raises a failure
                    for future in done:
                        bar.update(future.result())
            except BaseException:
                for future in pending:
                    future.cancel()
                raise


def _summary(plan: DatasetPlan, out: Path, seed: int, seconds: float, workers: int,
             heat_from_colour: float = 0.0) -> SynthSummary:
    test_ids = set(plan.splits["test"])
    images = {m.value: {"train": 0, "test": 0} for m in Modality}
    cameras: dict[str, dict[str, object]] = {}
    for camid in sorted(plan.cameras):
        camera, per_pid = plan.cameras[camid], plan.counts[camid]
        cameras[camera.folder] = {"modality": camera.modality.value, "ids": len(per_pid),
                                  "images": sum(per_pid.values()), "size": [camera.height, camera.width]}
        for pid, n in per_pid.items():
            images[camera.modality.value]["test" if pid in test_ids else "train"] += n
    pairs = sum(len(per_pid) for per_pid in plan.counts.values())
    ids = {"train": len(plan.splits["train"]) + len(plan.splits.get("val", [])), "test": len(test_ids)}
    if "val" in plan.splits:
        ids["val"] = len(plan.splits["val"])
    return SynthSummary(
        format=plan.fmt, out=str(out), seed=seed, ids=ids, images=images, cameras=cameras,
        mean_images_per_camera=round(len(plan.jobs) / max(pairs, 1), 2), heat_from_colour=heat_from_colour,
        seconds=round(seconds, 2), workers=workers,
    )


def synthesize(out: Path, fmt: str, *, ids: int, test_ids: int | None = None, images_per_camera: int | None = None,
               height: int = 288, width: int = 144, seed: int = 0, workers: int | None = None,
               progress: bool = True, heat_from_colour: float = 0.0) -> SynthSummary:
    """Render a SynthVI dataset of ``ids`` identities into ``out`` in the real SYSU-MM01 or RegDB layout.

    ``test_ids`` defaults to SYSU-MM01's share (96 of 491) or half for RegDB; ``images_per_camera`` (SYSU only)
    is the mean number of images per identity and camera (default 15, varying per identity and camera).
    The same arguments give byte-identical files whatever ``workers`` is (default: all CPU cores).
    ``heat_from_colour`` (0..1) ties infrared heat to visible luminance: an easier modality gap for controlled
    experiments (``sample_identity``).
    """
    start = time.perf_counter()
    n_test = _validate(fmt, ids, test_ids, images_per_camera, height, width, seed, workers, heat_from_colour)
    n_workers = workers or os.cpu_count() or 1
    if fmt == "sysu":
        plan = plan_sysu(seed, ids, n_test, images_per_camera or SYSU_IMAGES_PER_CAMERA, height, width)
    else:
        plan = plan_regdb(seed, ids, n_test, height, width)
    out = Path(out).expanduser().absolute()
    staging = _staging_folder(out)
    try:
        for folder in sorted({os.path.dirname(job.relpath) for job in plan.jobs} | {"exp" if fmt == "sysu" else "idx"}):
            (staging / folder).mkdir(parents=True, exist_ok=True)
        for relpath, text in plan.text_files.items():
            (staging / relpath).write_text(text)
        _render_all(_chunks(plan, staging, seed, n_workers, heat_from_colour), len(plan.jobs), n_workers, progress, fmt)
        _publish(staging, out)
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise MultError(f"writing the dataset beside {out} failed: {err}; check free space and permissions") from err
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _summary(plan, out, seed, time.perf_counter() - start, n_workers, heat_from_colour)
