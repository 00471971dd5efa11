"""Write a Triton model repository from a training run: one ONNX model per stem, with config and manifest.

```
REPO/
  mult_visible/
    config.pbtxt          platform onnxruntime_onnx (the official Triton container), dynamic batching
    1/model.onnx          uint8 [-1, H, W, 3] RGB -> FP32 [-1, D] unit embeddings
    1/manifest.json       source checkpoint sha256, sizes, opset, flip, precision, parity figures, created time
  mult_infrared/
    ...
```

``precision`` picks what ``model.onnx`` computes in (:mod:`mult.export.quantize`): ``fp32`` (default), ``fp16``
(FP16 trunk) or ``int8`` (static QDQ quantisation calibrated on real images). The served interface is the same
for all three. A reduced-precision version is checked twice: the FP32 export against torch (``parity_fp32``,
FP32 tolerances), then the converted model against torch (``parity``, the precision's tolerances).

Both models always get the same version number, so ``mult_visible/3`` and ``mult_infrared/3`` come from
the same checkpoint. Each version directory is built under a hidden temporary name (``.tmp-*``, which Triton
ignores: it only loads numeric version folders) and renamed into place once both ONNX files passed the
parity check, so a crash never leaves a half-written version behind.

The local ``mult serve`` server has only the python backend (ENVIRONMENT.md); it serves the same
``model.onnx`` files through its own wrapper and does not read these ``config.pbtxt`` files.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from mult.config import TrainConfig
from mult.data.images import IMAGE_EXTENSIONS, is_image_file, load_resized
from mult.data.records import Modality
from mult.errors import MultError
from mult.export.layout import (
    CONFIG_FILE,
    DEFAULT_QUEUE_DELAY_US,
    INPUT_NAME,
    MANIFEST_FILE,
    MODEL_NAMES,
    ONNX_FILE,
    OUTPUT_NAME,
    existing_versions,
)
from mult.export.onnx_export import DEFAULT_OPSET, ParityReport, export_onnx, parity_check
from mult.export.quantize import check_precision, parity_tolerances, to_fp16, to_int8
from mult.io import PathLike, file_sha256, write_text_atomic
from mult.processes import owner_tag, remove_stale

#: Number of images the parity check runs (batch 1 and batch N, N odd so it differs from any export batch).
PARITY_IMAGES = 7
#: INT8 calibration images per stem by default (min/max ranges; more images only widen them slowly).
DEFAULT_CALIBRATION_IMAGES = 64
#: Name of the FP32 export inside a staged version folder while an FP16/INT8 copy is made from it.
FP32_SCRATCH_FILE = "model.fp32.onnx"
INSTANCE_KINDS = ("KIND_AUTO", "KIND_GPU", "KIND_CPU")



@dataclass(frozen=True)
class ExportedModel:
    """One served model of a repository version."""

    name: str
    modality: str
    version: int
    onnx_path: Path
    config_path: Path
    manifest_path: Path
    parity: ParityReport
    parity_images: str
    precision: str = "fp32"
    #: FP32 export's parity (FP16/INT8 versions only; ``parity`` is then the converted model's).
    parity_fp32: Optional[ParityReport] = None
    calibration: Optional[dict[str, Any]] = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "modality": self.modality,
            "precision": self.precision,
            "onnx": str(self.onnx_path),
            "config": str(self.config_path),
            "manifest": str(self.manifest_path),
            "parity": {**self.parity.to_dict(), "images": self.parity_images},
        }
        if self.parity_fp32 is not None:
            data["parity_fp32"] = {**self.parity_fp32.to_dict(), "images": self.parity_images}
        if self.calibration is not None:
            data["calibration"] = dict(self.calibration)
        return data


@dataclass(frozen=True)
class ExportResult:
    """What :func:`write_model_repository` wrote."""

    repo: Path
    version: int
    height: int
    width: int
    embedding_size: int
    models: dict[str, ExportedModel] = field(default_factory=dict)
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for ``mult export --json``)."""
        return {
            "repo": str(self.repo),
            "version": self.version,
            "precision": self.precision,
            "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [-1, self.height, self.width, 3]},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, self.embedding_size]},
            "models": {name: m.to_dict() for name, m in self.models.items()},
        }


# ---- config.pbtxt --------------------------------------------------------------------------------------


def triton_config(
    name: str,
    *,
    height: int,
    width: int,
    embedding_size: int,
    max_batch_size: int = 64,
    tensorrt: bool = False,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instance_kind: str = "KIND_AUTO",
    instance_count: int = 1,
) -> str:
    """The ``config.pbtxt`` of one model for the official Triton container (onnxruntime backend).

    ``max_batch_size > 0`` makes the batch dimension implicit, so ``dims`` exclude it; the ONNX graph has
    a symbolic batch axis to match. ``model_warmup`` sends one all-zero batch at load (the model is not
    READY before, so the first real request does not pay for lazy initialisation or a TensorRT build).
    ``tensorrt`` adds the ONNX Runtime TensorRT execution accelerator in FP16 (onnxruntime_backend README).
    """
    if int(max_batch_size) < 1:
        raise MultError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if instance_kind not in INSTANCE_KINDS:
        raise MultError(f"instance kind {instance_kind!r} unknown: use one of {', '.join(INSTANCE_KINDS)}")
    dims = f"[ {int(height)}, {int(width)}, 3 ]"
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {int(max_batch_size)}",
        "input [",
        f'  {{ name: "{INPUT_NAME}" data_type: TYPE_UINT8 dims: {dims} }}',
        "]",
        "output [",
        f'  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {int(embedding_size)} ] }}',
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {int(max_queue_delay_us)} }}",
        f"instance_group [ {{ count: {int(instance_count)} kind: {instance_kind} }} ]",
        "model_warmup [",
        "  {",
        '    name: "zeros"',
        "    batch_size: 1",
        f'    inputs {{ key: "{INPUT_NAME}" value {{ data_type: TYPE_UINT8 dims: {dims} zero_data: true }} }}',
        "  }",
        "]",
    ]
    if tensorrt:
        lines += [
            "optimization { execution_accelerators {",
            "  gpu_execution_accelerator : [ {",
            '    name : "tensorrt"',
            '    parameters { key: "precision_mode" value: "FP16" }',
            '    parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
            "  } ]",
            "} }",
        ]
    return "\n".join(lines) + "\n"


# ---- versions ------------------------------------------------------------------------------------------


def next_version(repo: Path) -> int:
    """The first version number free in every mult model of ``repo`` (1 for a new repository)."""
    used = [v for name in MODEL_NAMES.values() for v in existing_versions(repo / name)]
    return max(used, default=0) + 1


# ---- inputs --------------------------------------------------------------------------------------------



def _checkpoint_file(source: Path) -> Path:
    if source.is_dir():
        from mult.runs import RunDir

        return RunDir(source).require().checkpoint_path
    return source


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


# ---- repository ----------------------------------------------------------------------------------------


def _prepare_repo(repo: Path) -> None:
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MultError(f"{repo}: exists and is not a folder; pass a folder for the model repository") from None
    except OSError as err:
        raise MultError(f"{repo}: cannot create the model repository ({err.strerror}); pick a writable place") from None
    if not repo.is_dir():
        raise MultError(f"{repo}: not a folder; pass a folder for the model repository")
    if not os.access(repo, os.W_OK | os.X_OK):
        raise MultError(f"{repo}: not writable; fix its permissions or pass another --repo")


def _make_temp_dir(parent: Path, version: int) -> Path:
    try:
        parent.mkdir(parents=True, exist_ok=True)
        # The owner tag lets a later export tell this folder from a killed export's litter (remove_stale).
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-v{version}-{owner_tag()}", dir=parent))
    except OSError as err:
        raise MultError(f"{parent}: cannot create a version folder ({err.strerror}); check permissions") from None
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a Triton container usually runs as another user
    return tmp


def _convert_and_check(
    model: Any,
    modality: Modality,
    precision: str,
    fp32_path: Path,
    onnx_path: Path,
    images: np.ndarray,
    flip: bool,
    calibration: Optional[tuple[np.ndarray, str]],
) -> tuple[ParityReport, Optional[dict[str, Any]]]:
    """Convert the staged FP32 export to ``precision`` at ``onnx_path``, drop the FP32 file, and check the result
    against torch with the precision's tolerances. Returns the parity report and the calibration record."""
    info: Optional[dict[str, Any]] = None
    if precision == "fp16":
        to_fp16(fp32_path, onnx_path)
    else:
        assert calibration is not None  # loaded up front for INT8
        images_int8, note = calibration
        to_int8(fp32_path, onnx_path, images_int8)
        info = {"count": int(len(images_int8)), "source": note, "method": "minmax"}
    fp32_path.unlink()
    max_abs_tol, min_cosine_tol = parity_tolerances(precision, model.arch)
    try:
        report = parity_check(model, modality, onnx_path, images, flip=flip, max_abs_tol=max_abs_tol,
                              min_cosine_tol=min_cosine_tol)
    except MultError as err:
        hint = " or calibrate on other images (--calibration-dir)" if precision == "int8" else ""
        raise MultError(f"{precision.upper()} export: {err} (tolerances for {precision}: max abs {max_abs_tol:g}, "
                        f"min cosine {min_cosine_tol}); export FP32 instead{hint}") from None
    return report, info


def write_model_repository(
    source: PathLike,
    repo: PathLike,
    *,
    version: Optional[int] = None,
    flip: bool = True,
    tensorrt: bool = False,
    max_batch_size: int = 64,
    calibration_images: Optional[Sequence[PathLike]] = None,
    opset: int = DEFAULT_OPSET,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instance_kind: str = "KIND_AUTO",
    instance_count: int = 1,
    precision: str = "fp32",
    calibration_dir: Optional[PathLike] = None,
    calibration_count: int = DEFAULT_CALIBRATION_IMAGES,
) -> ExportResult:
    """Export a run (directory or checkpoint file) as ``mult_visible`` and ``mult_infrared`` into ``repo``.

    ``version=None`` takes the next free number. Each model's ONNX file is checked against torch before the
    version folders are renamed into place; ``calibration_images`` (image files) replace the dataset images
    used for that check. Writes/overwrites each model's ``config.pbtxt`` (it describes the newest version).

    ``precision`` ``"fp16"`` / ``"int8"`` serves a converted copy of the FP32 export (same interface), checked
    against torch with that precision's tolerances (:func:`mult.export.quantize.parity_tolerances`). INT8 is
    calibrated on ``calibration_count`` images per stem from ``calibration_dir`` or, by default, the run's
    training images (:func:`int8_calibration_images`).
    """
    from mult.runs import find_run_model

    source = Path(source).expanduser()
    repo = Path(repo).expanduser()
    precision = check_precision(precision)
    if calibration_dir is not None and precision != "int8":
        raise MultError(f"a calibration folder ({calibration_dir}) is only used by INT8 exports; add --int8 or "
                        "drop --calibration-dir")
    if not source.exists():
        raise MultError(f"{source}: no such run directory or checkpoint; pass the --out folder of `mult train` "
                        "or a checkpoint.pt")
    # Validate the cheap arguments before the expensive export.
    triton_config("check", height=16, width=16, embedding_size=1, max_batch_size=max_batch_size,
                  instance_kind=instance_kind)
    checkpoint = _checkpoint_file(source)
    model, cfg = find_run_model(source)
    height = cfg.height if cfg is not None else TrainConfig.height
    width = cfg.width if cfg is not None else TrainConfig.width
    # INT8 calibration images before anything is written: a missing dataset fails fast and leaves nothing.
    calibration: dict[Modality, tuple[np.ndarray, str]] = {}
    if precision == "int8":
        calibration = {m: int8_calibration_images(m, cfg, height, width, calibration_dir=calibration_dir,
                                                  n=calibration_count) for m in MODEL_NAMES}
    _prepare_repo(repo)
    for name in MODEL_NAMES.values():  # staged versions of exports killed mid-write (tens of MB each)
        remove_stale(repo / name, ".tmp-v*")
    if version is None:
        version = next_version(repo)
    elif int(version) < 1:
        raise MultError(f"version must be a positive integer, got {version}")
    version = int(version)
    for name in MODEL_NAMES.values():
        if (repo / name / str(version)).exists():
            raise MultError(f"{repo / name / str(version)}: version {version} exists; omit --version to take "
                            f"the next free one ({next_version(repo)})")
    sha = file_sha256(checkpoint)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    max_abs_tol, min_cosine_tol = parity_tolerances(precision, model.arch)
    staged: dict[Modality, Path] = {}
    exported: dict[Modality, dict[str, Any]] = {}
    try:
        for modality, name in MODEL_NAMES.items():
            staged[modality] = tmp = _make_temp_dir(repo / name, version)
            # Images first: a bad parity file fails before the (slower) export.
            images, note = parity_images(modality, cfg, height, width, calibration_images=calibration_images)
            onnx_path = tmp / ONNX_FILE
            fp32_path = onnx_path if precision == "fp32" else tmp / FP32_SCRATCH_FILE
            export_onnx(model, modality, fp32_path, height=height, width=width, flip=flip, opset=opset)
            report_fp32 = parity_check(model, modality, fp32_path, images, flip=flip)
            report, calib_info = report_fp32, None
            if precision != "fp32":
                report, calib_info = _convert_and_check(model, modality, precision, fp32_path, onnx_path, images,
                                                        flip, calibration.get(modality))
            manifest = {
                "model": name,
                "modality": modality.value,
                "version": version,
                "created": created,
                "source": str(source.resolve()),
                "source_checkpoint": str(checkpoint.resolve()),
                "source_sha256": sha,
                "arch": model.arch,
                "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [-1, height, width, 3],
                          "layout": "NHWC RGB 0-255; scaling and ImageNet normalisation inside the graph"},
                "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, model.feature_dim],
                           "l2_normalised": True},
                "height": height,
                "width": width,
                "embedding_size": model.feature_dim,
                "opset": int(opset),
                "flip": bool(flip),
                "precision": precision,
                "tensorrt_fp16": bool(tensorrt),
                "max_batch_size": int(max_batch_size),
                "parity": {**report.to_dict(), "images": note,
                           "tolerances": {"max_abs": max_abs_tol, "min_cosine": min_cosine_tol}},
                "calibration": calib_info,
                "onnx_sha256": file_sha256(onnx_path),
                "onnx_bytes": onnx_path.stat().st_size,
                "versions": _library_versions(),
            }
            if precision != "fp32":
                manifest["parity_fp32"] = {**report_fp32.to_dict(), "images": note}
            write_text_atomic(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            exported[modality] = {"parity": report, "parity_images": note, "precision": precision,
                                  "parity_fp32": report_fp32 if precision != "fp32" else None,
                                  "calibration": calib_info}
        # Both models passed: publish them (renames only, nothing left to fail between them but the OS).
        models: dict[str, ExportedModel] = {}
        for modality, name in MODEL_NAMES.items():
            final = repo / name / str(version)
            os.rename(staged[modality], final)
            config_path = repo / name / CONFIG_FILE
            write_text_atomic(config_path, triton_config(
                name, height=height, width=width, embedding_size=model.feature_dim, max_batch_size=max_batch_size,
                tensorrt=tensorrt, max_queue_delay_us=max_queue_delay_us, instance_kind=instance_kind,
                instance_count=instance_count,
            ))
            models[name] = ExportedModel(name, modality.value, version, final / ONNX_FILE, config_path,
                                         final / MANIFEST_FILE, **exported[modality])
    except OSError as err:
        raise MultError(f"{repo}: writing the model repository failed ({type(err).__name__}: {err.strerror}); "
                        "check free space and permissions") from None
    finally:
        for tmp in staged.values():
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return ExportResult(repo, version, height, width, model.feature_dim, models, precision)


def _library_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from mult import __version__

    return {"mult": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__}
