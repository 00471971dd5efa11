"""What the in-process ONNX encoder and the Triton client share: pixels, batching, and the choice between them.

Both encoders turn image files into unit-norm embeddings through the same served graph (uint8 NHWC RGB in,
FP32 ``[N, D]`` out, DESIGN.md "Served model"). The only preprocessing outside the graph is the resize, and it
lives once in :func:`mult.data.images.load_resized` (re-exported here) so the ONNX, Triton, page and torch paths see
identical pixels:

* decoding: :func:`mult.data.images.load_image` (corrupt files become a MultError naming the file);
* resize: Pillow bilinear to ``(width, height)``, which is what ``mult.data.transforms.eval_transform``'s
  ``torchvision.transforms.Resize((h, w))`` does to a PIL image (default ``InterpolationMode.BILINEAR``,
  mapped to Pillow's BILINEAR); ``ToTensor`` there is then exactly this uint8 array / 255.

Five-line use::

    from mult.serving.encoders import open_encoder
    with open_encoder(server="127.0.0.1:8001") as enc:       # or open_encoder(local="model_repository")
        gallery = enc.encode(["ir/0001.jpg", "ir/0002.jpg"], "infrared")
        query = enc.encode(["photo.jpg"], "visible")
    scores = query @ gallery.T
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

from mult.io import PathLike, file_sha256
from mult.data.images import load_resized  # noqa: F401  (public here: the serving front end)
from mult.data.records import Modality, as_modality
from mult.errors import MultError


#: Export-manifest fields that say which weights a served version holds. ``mult serve`` publishes them per version
#: in the runtime config's parameters (:func:`identity_parameter`), so a Triton client reads what the server
#: serves rather than what a repository on this machine holds.
IDENTITY_FIELDS: tuple[str, ...] = ("onnx_sha256", "source_sha256", "precision", "flip", "arch")
#: The fields the two stems of one version must share: one checkpoint, one conversion, one flip setting.
STREAM_FIELDS: tuple[str, ...] = ("source_sha256", "precision", "flip", "arch")



def identity_parameter(version: int, field: str) -> str:
    """Name of the Triton config parameter carrying ``field`` of version ``version``'s manifest."""
    return f"mult.v{int(version)}.{field}"


def identity_value(value: Any) -> str:
    """Manifest values compared as text: JSON's booleans (a served config carries strings only)."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def export_identity(version: int, manifests: Mapping[Modality, Mapping[str, Any]], where: str) -> dict[str, Any]:
    """The identity one encoder embeds with (what a gallery records and compares): version and, when known,
    the checkpoint and both ONNX files' sha256.

    ``manifests`` holds each stem's export manifest of ``version`` (only :data:`IDENTITY_FIELDS` are read; an
    empty one means the server does not say). A MultError when the two stems were not exported together
    (another checkpoint, precision or flip): their embeddings would not be comparable across modalities.
    """
    vis, ir = (manifests.get(m) or {} for m in (Modality.visible, Modality.infrared))
    differing = [f for f in STREAM_FIELDS if f in vis and f in ir and identity_value(vis[f]) != identity_value(ir[f])]
    if differing:
        shown = ", ".join(f"{f} {identity_value(vis[f])[:12]!r} vs {identity_value(ir[f])[:12]!r}" for f in differing)
        raise MultError(f"{where}: version {version} of mult_visible and mult_infrared come from different exports "
                        f"({shown}); serve or export both stems from one checkpoint (`mult export RUN`)")
    info: dict[str, Any] = {"version": int(version)}
    if vis.get("source_sha256") or ir.get("source_sha256"):
        info["source_sha256"] = str(vis.get("source_sha256") or ir.get("source_sha256"))
    for modality, manifest in ((Modality.visible, vis), (Modality.infrared, ir)):
        if manifest.get("onnx_sha256"):
            info[f"onnx_sha256_{modality.value}"] = str(manifest["onnx_sha256"])
    return info


def check_images(images: Any, height: int, width: int) -> np.ndarray:
    """``images`` as a C-contiguous uint8 ``[N, height, width, 3]`` array, or a MultError saying what is wrong."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise MultError(f"images must be uint8 RGB 0-255, got dtype {array.dtype}; do not scale or normalise them "
                        "(the model does that)")
    if array.ndim != 4 or array.shape[1:] != (int(height), int(width), 3):
        raise MultError(f"images must have shape [N, {height}, {width}, 3], got {list(array.shape)}; resize them "
                        "with mult.serving.encoders.load_resized or use encode(paths)")
    return np.ascontiguousarray(array)


class ArrayEncoder(ABC):
    """Shared front end: files -> resized uint8 batches -> :meth:`_embed_batch` -> float32 ``[N, D]``.

    Subclasses set ``height``, ``width``, ``embedding_size`` and ``batch_size`` and implement
    :meth:`_embed_batch` for one batch of at most ``batch_size`` images.
    """

    height: int
    width: int
    embedding_size: int
    batch_size: int

    @abstractmethod
    def _embed_batch(self, modality: Modality, images: np.ndarray) -> np.ndarray:
        """Embeddings ``[n, D]`` float32 of one checked uint8 batch ``[n, H, W, 3]`` (1 <= n <= batch_size)."""

    def encode_array(self, images: np.ndarray, modality: Union[Modality, str]) -> np.ndarray:
        """Unit-norm float32 embeddings ``[N, D]`` of already resized uint8 ``[N, H, W, 3]`` RGB images."""
        modality = as_modality(modality)
        images = check_images(images, self.height, self.width)
        if len(images) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        step = max(1, int(self.batch_size))
        chunks = [self._embed_batch(modality, images[i:i + step]) for i in range(0, len(images), step)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def encode(self, paths: Sequence[PathLike], modality: Union[Modality, str]) -> np.ndarray:
        """Unit-norm float32 embeddings ``[len(paths), D]`` of image files through ``modality``'s model.

        Files are decoded and resized one batch at a time, so memory stays at one batch of pixels.
        """
        modality = as_modality(modality)
        paths = list(paths)
        if not paths:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        step = max(1, int(self.batch_size))
        chunks = [self._embed_batch(modality, load_resized(paths[i:i + step], self.height, self.width))
                  for i in range(0, len(paths), step)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def close(self) -> None:
        """Release sessions / connections (nothing by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_encoder(*, server: str | None = None, local: PathLike | None = None, **kwargs: Any) -> ArrayEncoder:
    """The encoder behind the CLI's ``--server URL`` / ``--local REPO`` options: exactly one of the two.

    ``server`` -> :class:`~mult.serving.triton_client.TritonEncoder` (gRPC, e.g. ``"127.0.0.1:8001"``);
    ``local`` -> :class:`~mult.serving.onnx_local.OnnxEncoder` (ONNX Runtime in this process on a model
    repository written by ``mult export``). ``kwargs`` go to the chosen class (e.g. ``batch_size``).
    """
    if (server is None) == (local is None):
        raise MultError("choose exactly one encoder: --server URL (a running `mult serve`) or --local REPO "
                        "(a model repository written by `mult export`)")
    if server is not None:
        from mult.serving.triton_client import TritonEncoder

        return TritonEncoder(str(server), **kwargs)
    from mult.serving.onnx_local import OnnxEncoder

    return OnnxEncoder(Path(os.fspath(local)), **kwargs)
