"""ONNX export of one stem of the two-stream encoder, and a torch-vs-ONNX-Runtime parity check.

The exported graph is what Triton serves (DESIGN.md "Served model"):

* input ``images``: UINT8 ``[N, H, W, 3]`` RGB, N dynamic. The client only resizes; the graph does
  ``/255`` and the ImageNet normalisation (inside :class:`~mult.model.StemEmbedder`), so nobody normalises
  twice (fast-reid #147/#177/#465) and the batch axis is never frozen (fast-reid #455).
* output ``embeddings``: FP32 ``[N, D]``, L2-normalised; with ``flip`` the mirror-averaged embedding of the
  evaluation protocol (METHOD.md §8.1).

H, W, D, the modality and the flip setting are also written into the ONNX metadata (``mult.*`` keys) so a
client can read them from the model instead of hard-coding them.

Five-line use::

    from mult.export.onnx_export import export_onnx, parity_check
    export_onnx(model, "infrared", "ir.onnx", height=288, width=144)
    report = parity_check(model, "infrared", "ir.onnx", images_uint8)   # raises MultError on mismatch
    print(report.max_abs_diff, report.min_cosine)
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from mult.data.records import Modality, as_modality
from mult.errors import MultError
from mult.export.layout import INPUT_NAME, META_PREFIX, OUTPUT_NAME
from mult.io import PathLike, atomic_path
from mult.model import TwoStreamEncoder

DEFAULT_OPSET = 17
#: Parity tolerances: ORT vs torch differ by ~5e-5 on ResNet-50 (ENVIRONMENT.md); these leave headroom
#: while still catching a real mistake (double normalisation gives cosines ~0.999, a wrong stem far less).
MAX_ABS_TOL = 1e-3
MIN_COSINE_TOL = 0.9999



class UInt8StemEmbedder(nn.Module):
    """uint8 NHWC RGB -> float [0, 1] NCHW -> one stem's unit embedding (normalisation inside the stem module)."""

    def __init__(self, model: TwoStreamEncoder, modality: Union[Modality, str], flip: bool = True) -> None:
        super().__init__()
        self.embedder = model.stem_module(modality, flip=flip)

    def forward(self, images: Tensor) -> Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return self.embedder(x)


@dataclass(frozen=True)
class ParityReport:
    """Agreement between torch and ONNX Runtime on the same uint8 images."""

    max_abs_diff: float
    min_cosine: float
    batch_sizes: tuple[int, ...]
    num_images: int
    flip: bool

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["batch_sizes"] = list(self.batch_sizes)
        return data


def _check_size(height: int, width: int) -> None:
    if int(height) < 16 or int(width) < 16:
        raise MultError(f"input size {height}x{width} is too small for a ResNet: use at least 16x16 (e.g. 288x144)")


def export_onnx(
    model: TwoStreamEncoder,
    modality: Union[Modality, str],
    path: PathLike,
    *,
    height: int,
    width: int,
    flip: bool = True,
    opset: int = DEFAULT_OPSET,
    example_batch: int = 2,
) -> Path:
    """Export one stem of ``model`` to ``path`` (uint8 NHWC in, unit FP32 embeddings out, dynamic batch).

    Uses the TorchScript-based exporter (``dynamo=False``: simplest, verified with ORT here, and it keeps the
    weights inside the file); its deprecation warning is silenced. The file
    appears only when complete (temporary name + rename). The model's train/eval mode is restored afterwards.
    """
    modality = as_modality(modality)
    _check_size(height, width)
    path = Path(path)
    wrapper = UInt8StemEmbedder(model, modality, flip=flip)
    device = next(model.parameters()).device
    example = torch.zeros(int(example_batch), int(height), int(width), 3, dtype=torch.uint8, device=device)
    was_training = model.training
    model.eval()  # BN running statistics, as served
    try:
        with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is chosen on purpose (see above)
            torch.onnx.export(
                wrapper,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=int(opset),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
            _finish_onnx_file(tmp, {
                "modality": modality.value,
                "height": str(int(height)),
                "width": str(int(width)),
                "embedding_size": str(model.feature_dim),
                "flip": str(bool(flip)).lower(),
                "arch": model.arch,
                "input_layout": "NHWC uint8 RGB; /255 and ImageNet normalisation inside the graph",
            })
    except OSError as err:
        raise MultError(f"{path}: cannot write the ONNX file ({type(err).__name__}: {err.strerror}); "
                        "check the folder exists and is writable") from None
    finally:
        model.train(was_training)
    return path


def _finish_onnx_file(path: Path, metadata: dict[str, str]) -> None:
    """Add the ``mult.*`` metadata, check the graph and re-save it as one self-contained file."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, value
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path), save_as_external_data=False)


def onnx_metadata(path: PathLike) -> dict[str, str]:
    """The ``mult.*`` metadata of an exported model (prefix stripped), e.g. ``{"height": "288", ...}``."""
    session = onnx_session(path)
    custom = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: v for k, v in custom.items() if k.startswith(META_PREFIX)}


def onnx_session(path: PathLike):
    """An ONNX Runtime CPU session on ``path``; a missing or unreadable file is a MultError."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise MultError(f"{path}: no ONNX model here; run `mult export` first")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own Fail/InvalidProtobuf types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MultError(f"{path}: ONNX Runtime cannot load it ({first}); re-export the model") from None


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows of ``a`` and ``b`` [N, D] (not assuming unit norm)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(denom, 1e-12)


def torch_embeddings(model: TwoStreamEncoder, modality: Union[Modality, str], images_uint8: np.ndarray,
                     flip: bool) -> np.ndarray:
    """Reference embeddings from the eager model: ``model.embed(uint8 / 255)`` in eval mode."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).to(device).permute(0, 3, 1, 2).float() / 255.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model.embed(x, modality, flip=flip).cpu().numpy()
    finally:
        model.train(was_training)


def _check_images(images_uint8: np.ndarray, height: Optional[int], width: Optional[int]) -> np.ndarray:
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
        raise MultError(
            f"parity images must be a non-empty uint8 array [N, H, W, 3], got {images.dtype} {tuple(images.shape)}"
        )
    if height is not None and width is not None and images.shape[1:3] != (height, width):
        raise MultError(
            f"parity images are {images.shape[1]}x{images.shape[2]} but the model expects {height}x{width}; "
            "resize them first"
        )
    return images


def parity_check(
    model: TwoStreamEncoder,
    modality: Union[Modality, str],
    onnx_path: PathLike,
    images_uint8: np.ndarray,
    *,
    flip: Optional[bool] = None,
    batch_sizes: Optional[Sequence[int]] = None,
    max_abs_tol: float = MAX_ABS_TOL,
    min_cosine_tol: float = MIN_COSINE_TOL,
) -> ParityReport:
    """Compare the ONNX model (ONNX Runtime, CPU) with the eager model on the same uint8 NHWC images.

    Runs ONNX Runtime at batch 1 (the first image) and at batch N (all images), so a graph whose batch
    axis was frozen fails here. ``flip`` defaults to the setting stored in the ONNX metadata. Returns the
    worst absolute difference and the smallest row cosine; raises MultError beyond the tolerances.
    """
    modality = as_modality(modality)
    session = onnx_session(onnx_path)
    meta = {k[len(META_PREFIX):]: v for k, v in session.get_modelmeta().custom_metadata_map.items()
            if k.startswith(META_PREFIX)}
    if flip is None:
        flip = meta.get("flip", "true") == "true"
    if "modality" in meta and meta["modality"] != modality.value:
        raise MultError(f"{onnx_path}: exported for {meta['modality']}, not {modality.value}; pick the matching model")
    height = int(meta["height"]) if "height" in meta else None
    width = int(meta["width"]) if "width" in meta else None
    images = _check_images(images_uint8, height, width)
    sizes = tuple(batch_sizes) if batch_sizes is not None else tuple(sorted({1, len(images)}))
    reference = torch_embeddings(model, modality, images, flip)
    worst_abs, worst_cos = 0.0, 1.0
    for size in sizes:
        batch = images[:size]
        try:
            (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise MultError(f"{onnx_path}: ONNX Runtime failed at batch {size} ({first}); re-export the model") from None
        want = reference[:size]
        if got.shape != want.shape:
            raise MultError(f"{onnx_path}: output shape {got.shape} at batch {size}, expected {want.shape}")
        worst_abs = max(worst_abs, float(np.abs(got - want).max()))
        worst_cos = min(worst_cos, float(row_cosines(got, want).min()))
    report = ParityReport(worst_abs, worst_cos, sizes, len(images), bool(flip))
    if not (worst_abs <= max_abs_tol and worst_cos >= min_cosine_tol):  # also catches NaN
        raise MultError(
            f"{onnx_path}: ONNX output differs from torch (max abs {worst_abs:.2e} > {max_abs_tol:g} or min cosine "
            f"{worst_cos:.6f} < {min_cosine_tol}); do not deploy it, re-export and check the onnx/torch versions"
        )
    return report
