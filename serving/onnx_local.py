"""In-process ONNX Runtime over a model repository written by ``mult export`` (no server needed).

It runs the very ``model.onnx`` files that ``mult serve`` serves, with the same resize
(:func:`mult.serving.encoders.load_resized`), so local and served embeddings agree to float rounding.

Five-line use::

    from mult.serving.onnx_local import OnnxEncoder
    enc = OnnxEncoder("model_repository")                 # newest version of mult_visible / mult_infrared
    feats = enc.encode(["ir/0001.jpg"], "infrared")        # float32 [1, D], unit rows
    print(enc.height, enc.width, enc.embedding_size, enc.version)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mult.io import PathLike, file_sha256
from mult.data.records import Modality
from mult.errors import MultError
from mult.export.layout import (INPUT_NAME, MANIFEST_FILE, META_PREFIX, MODEL_NAMES, ONNX_FILE, OUTPUT_NAME,
                                existing_versions)
from mult.serving.encoders import ArrayEncoder, export_identity



@dataclass(frozen=True)
class ModelSignature:
    """What a client needs to know about one exported model, read from the ONNX file itself."""

    path: Path
    modality: str
    height: int
    width: int
    embedding_size: int
    flip: bool


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def ort_session(path: PathLike, providers: Optional[Sequence[str]] = None, *, optimize: bool = True):
    """An ONNX Runtime session on ``path`` (CPU unless ``providers`` says otherwise); problems are MultErrors.

    ``optimize=False`` skips graph optimisation: enough to validate a file quickly.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise MultError(f"{path}: no ONNX model here; run `mult export RUN --repo REPO` first")
    available = ort.get_available_providers()
    chosen = list(providers) if providers else ["CPUExecutionProvider"]
    missing = [p for p in chosen if p not in available]
    if missing:
        raise MultError(f"ONNX Runtime provider(s) {', '.join(missing)} not available here (available: "
                        f"{', '.join(available)}); install onnxruntime-gpu for CUDA or leave providers unset")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as err:  # ORT raises its own Fail / InvalidProtobuf / NoSuchFile types
        raise MultError(f"{path}: ONNX Runtime cannot load it ({_first_line(err)}); re-export the model "
                        "with `mult export`") from None


def describe_onnx(session, path: PathLike) -> ModelSignature:
    """Check that ``session`` is a mult served graph and read its H, W, D, modality and flip from the metadata.

    Expected: one input ``images`` uint8 ``[batch, H, W, 3]``, one output ``embeddings`` float ``[batch, D]``,
    and the ``mult.*`` metadata keys that ``mult export`` writes.
    """
    path = Path(path)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
        raise MultError(f"{path}: not a mult model (inputs {[i.name for i in inputs]}, outputs "
                        f"{[o.name for o in outputs]}; expected ['{INPUT_NAME}'] -> ['{OUTPUT_NAME}']); "
                        "export it with `mult export`")
    if inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
        raise MultError(f"{path}: input '{INPUT_NAME}' is {inputs[0].type} {inputs[0].shape}, expected uint8 "
                        "[N, H, W, 3]; re-export it with `mult export`")
    meta = {k[len(META_PREFIX):]: v for k, v in session.get_modelmeta().custom_metadata_map.items()
            if k.startswith(META_PREFIX)}
    try:
        height, width, dim = int(meta["height"]), int(meta["width"]), int(meta["embedding_size"])
        modality = meta["modality"]
    except (KeyError, ValueError):
        raise MultError(f"{path}: the mult.height/width/embedding_size/modality metadata is missing or not a "
                        "number; re-export the model with `mult export`") from None
    static = [d for d in inputs[0].shape[1:] if isinstance(d, int)]
    if len(static) == 3 and tuple(static) != (height, width, 3):
        raise MultError(f"{path}: graph input is {inputs[0].shape} but the metadata says {height}x{width}; "
                        "re-export the model")
    return ModelSignature(path, modality, height, width, dim, meta.get("flip", "true") == "true")


def verified_manifest(onnx_path: PathLike) -> dict:
    """The export manifest beside ``onnx_path``, after checking that the file's sha256 is the manifest's
    ``onnx_sha256`` (a graph edited after `mult export`, e.g. one weight scaled, still loads and runs but ranks
    differently). Hashing reads the file once (tens of MB)."""
    onnx_path = Path(onnx_path)
    path = onnx_path.parent / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MultError(f"{path}: missing, so {onnx_path} cannot be checked against its export; re-export with "
                        "`mult export`") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise MultError(f"{path}: unreadable ({type(err).__name__}); re-export with `mult export`") from None
    expected = manifest.get("onnx_sha256") if isinstance(manifest, dict) else None
    if not isinstance(expected, str):
        raise MultError(f"{path}: no onnx_sha256 to check {onnx_path.name} against; re-export with `mult export`")
    if file_sha256(onnx_path) != expected:
        raise MultError(f"{onnx_path}: sha256 does not match onnx_sha256 in {path.name}; the model was changed after "
                        "`mult export` (or is corrupt): re-export it, or restore the exported file")
    return manifest


def model_versions(repo: Path, name: str) -> list[int]:
    """Numeric versions of ``repo/name`` that hold a ``model.onnx``, sorted; a missing model is a MultError."""
    if not repo.is_dir():
        raise MultError(f"{repo}: no model repository here; write one with `mult export RUN --repo {repo}`")
    model_dir = repo / name
    if not model_dir.is_dir():
        raise MultError(f"{model_dir}: model {name} is missing from the repository; run `mult export RUN "
                        f"--repo {repo}`")
    versions = [v for v in existing_versions(model_dir) if (model_dir / str(v) / ONNX_FILE).is_file()]
    if not versions:
        raise MultError(f"{model_dir}: no numeric version folder with a {ONNX_FILE}; run `mult export RUN "
                        f"--repo {repo}`")
    return versions


def pick_version(repo: Path, version: Optional[int]) -> int:
    """``version`` if both models have it, else (None) the newest version both models have."""
    per_model = {name: model_versions(repo, name) for name in MODEL_NAMES.values()}
    common = sorted(set.intersection(*(set(v) for v in per_model.values())))
    if version is not None:
        missing = [name for name, versions in per_model.items() if int(version) not in versions]
        if missing:
            raise MultError(f"{repo}: version {version} not found for {', '.join(missing)} (available: "
                            f"{', '.join(str(v) for v in common) or 'none in common'}); pick one of those")
        return int(version)
    if not common:
        raise MultError(f"{repo}: mult_visible and mult_infrared have no version in common; re-export with "
                        "`mult export` so both stems come from one checkpoint")
    return common[-1]


class OnnxEncoder(ArrayEncoder):
    """Both stems of one repository version in ONNX Runtime, with the encoder interface of ``mult.features``.

    Each ``model.onnx`` must match the sha256 its export manifest records, and the two stems must come from one
    export; ``model_info`` is that identity (what a gallery records and compares).
    """

    def __init__(self, repo: PathLike, *, version: Optional[int] = None,
                 providers: Optional[Sequence[str]] = None, batch_size: int = 32) -> None:
        if int(batch_size) < 1:
            raise MultError(f"batch_size must be >= 1, got {batch_size}")
        self.repo = Path(os.fspath(repo)).expanduser()
        self.version = pick_version(self.repo, version)
        self.batch_size = int(batch_size)
        self._sessions = {}
        signatures: dict[Modality, ModelSignature] = {}
        manifests: dict[Modality, dict] = {}
        for modality, name in MODEL_NAMES.items():
            path = self.repo / name / str(self.version) / ONNX_FILE
            session = ort_session(path, providers)
            signatures[modality] = sig = describe_onnx(session, path)
            if sig.modality != modality.value:
                raise MultError(f"{path}: exported for {sig.modality}, but it sits in {name}; re-export the "
                                "repository with `mult export`")
            manifests[modality] = verified_manifest(path)
            self._sessions[modality] = session
        #: What a gallery records about this model (version, checkpoint, both ONNX files' sha256).
        self.model_info = export_identity(self.version, manifests, str(self.repo))
        vis, ir = signatures[Modality.visible], signatures[Modality.infrared]
        if (vis.height, vis.width, vis.embedding_size) != (ir.height, ir.width, ir.embedding_size):
            raise MultError(f"{self.repo}: version {self.version} of mult_visible is {vis.height}x{vis.width}->"
                            f"{vis.embedding_size} but mult_infrared is {ir.height}x{ir.width}->{ir.embedding_size}; "
                            "re-export both from one run")
        self.height, self.width, self.embedding_size = vis.height, vis.width, vis.embedding_size
        self.flip = vis.flip
        self.signatures = signatures

    def _embed_batch(self, modality: Modality, images: np.ndarray) -> np.ndarray:
        if not self._sessions:
            raise MultError("this OnnxEncoder is closed; open a new one")
        (out,) = self._sessions[modality].run([OUTPUT_NAME], {INPUT_NAME: images})
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self._sessions.clear()

    def __repr__(self) -> str:
        return (f"OnnxEncoder({str(self.repo)!r}, version={self.version}, {self.height}x{self.width} -> "
                f"{self.embedding_size})")
