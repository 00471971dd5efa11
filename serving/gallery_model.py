"""The model a gallery was embedded with: what its manifest records (:func:`encoder_info`) and the one check
that a gallery and an encoder embed alike (:func:`check_same_model`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mult.errors import MultError
from mult.io import PathLike

#: Manifest ``model`` keys that identify the weights: when both sides have one, they must agree.
MODEL_IDENTITY_KEYS: tuple[str, ...] = (
    "name", "model_name", "version", "model_version", "weights_sha256", "arch", "flip", "height", "width",
    "source_sha256", "onnx_sha256_visible", "onnx_sha256_infrared",
)
#: The exported graphs themselves: when both sides know them, a version number is only a folder name.
GRAPH_KEYS: tuple[str, ...] = ("onnx_sha256_visible", "onnx_sha256_infrared")


def encoder_info(encoder: Any) -> dict[str, Any]:
    """What the manifest records about the model that made the embeddings (provenance + identity).

    Uses ``encoder.model_info`` (a dict, or a method returning one) when present, then simple attributes
    (``model_name``, ``model_version``, ``name``, ``version``, ``embedding_size``, ``height``, ``width``,
    ``flip``, ``server``); an in-process :class:`mult.features.TorchEncoder` gives its architecture, flip and a
    sha256 of the weights through ``model_info``.
    """
    info: dict[str, Any] = {"encoder": type(encoder).__name__}
    provided = getattr(encoder, "model_info", None)
    if callable(provided):
        provided = provided()
    if isinstance(provided, Mapping):
        info.update({str(k): v for k, v in provided.items() if isinstance(v, (str, int, float, bool, type(None)))})
    for attr in ("model_name", "model_version", "name", "version", "embedding_size", "height", "width", "flip",
                 "server"):
        value = getattr(encoder, attr, None)
        if attr not in info and isinstance(value, (str, int, float, bool)) and not callable(value):
            info[attr] = value
    return info


def check_same_model(gallery_model: Mapping[str, Any], model: Mapping[str, Any], directory: PathLike) -> None:
    """MultError when an identity key (:data:`MODEL_IDENTITY_KEYS`) set in both descriptions differs.

    This is the one check between a gallery and the encoder about to search or extend it (``mult search``,
    ``mult index add``, ``mult app``); both encoders describe the model they embed with in ``model_info``
    (the local repository's version, or the version a Triton server serves, read from it, with the export's
    checkpoint and ONNX sha256). Values compare as text (a local export's version 3 is a Triton client's
    "3"); empty values (galleries built before a Triton client read the served version stored "") say nothing
    and are skipped. When both sides know both ONNX files' sha256, those decide and the version numbers are not
    compared (the same files copied to another version folder embed identically).
    """
    def known(info: Mapping[str, Any], key: str) -> bool:
        return info.get(key) not in (None, "")

    def differs(key: str) -> bool:
        return known(gallery_model, key) and known(model, key) and str(gallery_model[key]) != str(model[key])

    keys = MODEL_IDENTITY_KEYS
    if all(known(gallery_model, k) and known(model, k) for k in GRAPH_KEYS):
        keys = tuple(k for k in keys if k not in ("version", "model_version"))
    differing = [key for key in keys if differs(key)]
    if differing:
        if "version" not in differing and differs("version"):
            differing.insert(0, "version")  # not what decided, but what a user recognises first
        shown = ", ".join(f"{k}: gallery {str(gallery_model[k])[:16]!r} vs encoder {str(model[k])[:16]!r}"
                          for k in differing)
        raise MultError(f"{directory}: the gallery was embedded with a different model ({shown}); "
                        "use the same model, or build a new gallery with this one")
