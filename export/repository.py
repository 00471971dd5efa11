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
``model.onnx`` files through its own wrapper and reads only the batching settings of these ``config.pbtxt`` files.

Steps of :func:`write_model_repository`: check the arguments (:func:`_check_arguments`), load the model and
the INT8 calibration images, claim a version number (:func:`_claim_version`), stage each stem
(:func:`_stage_model`, its manifest from :func:`_manifest`), publish both (:func:`_publish`). The images come
from :mod:`mult.export.reference_images`, the ``config.pbtxt`` text from :mod:`mult.export.triton_config`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from mult.config import TrainConfig
from mult.data.records import Modality
from mult.errors import MultError
from mult.export.layout import (
    CONFIG_FILE,
    DEFAULT_MAX_BATCH_SIZE,
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
# Re-exported: callers and tests import these names from here.
from mult.export.reference_images import (  # noqa: F401
    DEFAULT_CALIBRATION_IMAGES,
    PARITY_IMAGES,
    int8_calibration_images,
    parity_images,
    random_images,
    training_image_paths,
)
from mult.export.results import ExportedModel, ExportResult
from mult.export.triton_config import INSTANCE_KINDS, triton_config  # noqa: F401
from mult.io import PathLike, file_sha256, publish_directory, write_text_atomic
from mult.processes import owner_tag, remove_stale

#: Name of the FP32 export inside a staged version folder while an FP16/INT8 copy is made from it.
FP32_SCRATCH_FILE = "model.fp32.onnx"


@dataclass(frozen=True)
class _ExportJob:
    """What every stem of one export shares: the model, where it came from, and the options."""

    model: Any
    cfg: Optional[TrainConfig]
    source: Path
    checkpoint: Path
    version: int
    height: int
    width: int
    flip: bool
    opset: int
    precision: str
    tensorrt: bool
    max_batch_size: int
    calibration_images: Optional[Sequence[PathLike]]
    max_queue_delay_us: int
    instance_kind: str
    instance_count: int
    #: INT8 calibration images and their note per stem (loaded before anything is written).
    calibration: dict[Modality, tuple[np.ndarray, str]]
    #: (max abs, min cosine) the precision's parity check allows.
    tolerances: tuple[float, float]
    source_sha256: str
    created: str


# ---- versions ------------------------------------------------------------------------------------------


def next_version(repo: Path) -> int:
    """The first version number free in every mult model of ``repo`` (1 for a new repository)."""
    used = [v for name in MODEL_NAMES.values() for v in existing_versions(repo / name)]
    return max(used, default=0) + 1


def _claim_version(repo: Path, version: Optional[int]) -> int:
    """Create ``repo`` if needed, remove killed exports' staged versions, and return the version to write
    (``version``, or the next free one when None); a MultError when it exists already."""
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
    return version


# ---- inputs --------------------------------------------------------------------------------------------


def _checkpoint_file(source: Path) -> Path:
    if source.is_dir():
        from mult.runs import RunDir

        return RunDir(source).require().checkpoint_path
    return source


def _check_arguments(source: Path, precision: str, calibration_dir: Optional[PathLike], max_batch_size: int,
                     instance_kind: str) -> str:
    """The checked precision; a MultError for a bad argument, before the expensive export starts."""
    precision = check_precision(precision)
    if calibration_dir is not None and precision != "int8":
        raise MultError(f"a calibration folder ({calibration_dir}) is only used by INT8 exports; add --int8 or "
                        "drop --calibration-dir")
    if not source.exists():
        raise MultError(f"{source}: no such run directory or checkpoint; pass the --out folder of `mult train` "
                        "or a checkpoint.pt")
    triton_config("check", height=16, width=16, embedding_size=1, max_batch_size=max_batch_size,
                  instance_kind=instance_kind)
    return precision


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
    """A staged version folder ``.tmp-v<version>-<owner tag>XXXX`` in ``parent``, mode 0755.

    Not :func:`mult.io.staging_directory`: both stems are staged before either is published (two folders, one
    commit), and the ``.tmp-v*`` names are what :func:`_claim_version` (and earlier mult versions) clean up."""
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


def _stage_model(job: _ExportJob, modality: Modality, tmp: Path) -> dict[str, Any]:
    """Export, convert and check one stem into its staged version folder ``tmp`` and write its manifest; returns
    the stem's :class:`ExportedModel` fields that are not paths."""
    model, precision = job.model, job.precision
    # Images first: a bad parity file fails before the (slower) export.
    images, note = parity_images(modality, job.cfg, job.height, job.width, calibration_images=job.calibration_images)
    onnx_path = tmp / ONNX_FILE
    fp32_path = onnx_path if precision == "fp32" else tmp / FP32_SCRATCH_FILE
    export_onnx(model, modality, fp32_path, height=job.height, width=job.width, flip=job.flip, opset=job.opset)
    report_fp32 = parity_check(model, modality, fp32_path, images, flip=job.flip)
    report, calib_info = report_fp32, None
    if precision != "fp32":
        report, calib_info = _convert_and_check(model, modality, precision, fp32_path, onnx_path, images,
                                                job.flip, job.calibration.get(modality))
    manifest = _manifest(job, modality, onnx_path, report, note, calib_info)
    if precision != "fp32":
        manifest["parity_fp32"] = {**report_fp32.to_dict(), "images": note}
    write_text_atomic(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return {"parity": report, "parity_images": note, "precision": precision,
            "parity_fp32": report_fp32 if precision != "fp32" else None, "calibration": calib_info}


def _manifest(job: _ExportJob, modality: Modality, onnx_path: Path, report: ParityReport, note: str,
              calib_info: Optional[dict[str, Any]]) -> dict[str, Any]:
    """``manifest.json`` of one staged stem (``parity_fp32`` is added by the caller for FP16/INT8)."""
    model, (max_abs_tol, min_cosine_tol) = job.model, job.tolerances
    return {
        "model": MODEL_NAMES[modality],
        "modality": modality.value,
        "version": job.version,
        "created": job.created,
        "source": str(job.source.resolve()),
        "source_checkpoint": str(job.checkpoint.resolve()),
        "source_sha256": job.source_sha256,
        "arch": model.arch,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": [-1, job.height, job.width, 3],
                  "layout": "NHWC RGB 0-255; scaling and ImageNet normalisation inside the graph"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, model.feature_dim],
                   "l2_normalised": True},
        "height": job.height,
        "width": job.width,
        "embedding_size": model.feature_dim,
        "opset": int(job.opset),
        "flip": bool(job.flip),
        "precision": job.precision,
        "tensorrt_fp16": bool(job.tensorrt),
        "max_batch_size": int(job.max_batch_size),
        "parity": {**report.to_dict(), "images": note,
                   "tolerances": {"max_abs": max_abs_tol, "min_cosine": min_cosine_tol}},
        "calibration": calib_info,
        "onnx_sha256": file_sha256(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "versions": _library_versions(),
    }


def _publish(job: _ExportJob, repo: Path, staged: dict[Modality, Path],
             exported: dict[Modality, dict[str, Any]]) -> dict[str, ExportedModel]:
    """Rename both staged version folders into place and (over)write each model's config.pbtxt."""
    models: dict[str, ExportedModel] = {}
    for modality, name in MODEL_NAMES.items():
        final = repo / name / str(job.version)
        publish_directory(staged[modality], final)
        config_path = repo / name / CONFIG_FILE
        write_text_atomic(config_path, triton_config(
            name, height=job.height, width=job.width, embedding_size=job.model.feature_dim,
            max_batch_size=job.max_batch_size, tensorrt=job.tensorrt, max_queue_delay_us=job.max_queue_delay_us,
            instance_kind=job.instance_kind, instance_count=job.instance_count,
        ))
        models[name] = ExportedModel(name, modality.value, job.version, final / ONNX_FILE, config_path,
                                     final / MANIFEST_FILE, **exported[modality])
    return models


def write_model_repository(
    source: PathLike,
    repo: PathLike,
    *,
    version: Optional[int] = None,
    flip: bool = True,
    tensorrt: bool = False,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
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
    precision = _check_arguments(source, precision, calibration_dir, max_batch_size, instance_kind)
    checkpoint = _checkpoint_file(source)
    model, cfg = find_run_model(source)
    height = cfg.height if cfg is not None else TrainConfig.height
    width = cfg.width if cfg is not None else TrainConfig.width
    # INT8 calibration images before anything is written: a missing dataset fails fast and leaves nothing.
    calibration: dict[Modality, tuple[np.ndarray, str]] = {}
    if precision == "int8":
        calibration = {m: int8_calibration_images(m, cfg, height, width, calibration_dir=calibration_dir,
                                                  n=calibration_count) for m in MODEL_NAMES}
    version = _claim_version(repo, version)
    job = _ExportJob(
        model=model, cfg=cfg, source=source, checkpoint=checkpoint, version=version, height=height, width=width,
        flip=flip, opset=opset, precision=precision, tensorrt=tensorrt, max_batch_size=max_batch_size,
        calibration_images=calibration_images, max_queue_delay_us=max_queue_delay_us, instance_kind=instance_kind,
        instance_count=instance_count, calibration=calibration, source_sha256=file_sha256(checkpoint),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        tolerances=parity_tolerances(precision, model.arch))
    staged: dict[Modality, Path] = {}
    try:
        exported: dict[Modality, dict[str, Any]] = {}
        for modality, name in MODEL_NAMES.items():
            staged[modality] = _make_temp_dir(repo / name, version)
            exported[modality] = _stage_model(job, modality, staged[modality])
        # Both models passed: publish them (renames only, nothing left to fail between them but the OS).
        models = _publish(job, repo, staged, exported)
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
