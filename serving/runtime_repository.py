"""The *runtime* folders ``mult serve`` hands to Triton: python-backend models beside the export, and the backend
directory (:func:`backend_dir`).

The Triton build in the nvidia-pytriton wheel has only the python backend (ENVIRONMENT.md), so the exported
repository is not served as is: :func:`build_runtime_repository` writes a runtime repository beside it whose
models use ``backend: "python"`` with the same names, tensors and batching, and whose ``model.py``
(``serving/python_backend_model.py``) runs the exported ``model.onnx`` in ONNX Runtime. Clients cannot tell the
difference (same gRPC API as the official container with the onnxruntime backend).

Versions: the runtime repository holds every numeric version that both stems hold from one export (each file
checked against its manifest's sha256) and whose input size and embedding size match the newest one, with
``version_policy: { all { } }`` by default, so a client may pin ``version="2"`` while ``version=""`` gets the
newest; the config names each version's checkpoint and ONNX sha256 for the client (:func:`runtime_config`).
Each served version is one python stub process (~300-750 MB with ResNet-50), so ``version_policy="latest"``
serves only the newest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

from mult.data.records import Modality
from mult.errors import MultError
from mult.export.layout import (CONFIG_FILE, DEFAULT_MAX_BATCH_SIZE, DEFAULT_QUEUE_DELAY_US, MANIFEST_FILE,
                                MODEL_NAMES, ONNX_FILE)
from mult.export.triton_config import config_text, model_spec, read_config
from mult.io import PathLike, atomic_directory, write_text_atomic
from mult.serving.encoders import IDENTITY_FIELDS, export_identity, identity_parameter, identity_value
from mult.serving.onnx_local import ModelSignature, describe_onnx, model_versions, ort_session, verified_manifest
from mult.serving.triton_install import TritonInstall

MODEL_TEMPLATE = Path(__file__).with_name("python_backend_model.py")
VERSION_POLICIES = ("all", "latest")
#: Identity values written into a runtime config as they are (hex digests, precision and architecture names).
_PLAIN = re.compile(r"[A-Za-z0-9._-]+")

#: One served version of one stem: its number, its checked signature and its export manifest.
_Served = tuple[int, ModelSignature, dict]


def check_version_policy(version_policy: str) -> None:
    if version_policy not in VERSION_POLICIES:
        raise MultError(f"version policy {version_policy!r} unknown: use one of {', '.join(VERSION_POLICIES)}")


def _export_batching(model_dir: Path, newest: int) -> tuple[int, int]:
    """(max_batch_size, max_queue_delay_us) from the exported config.pbtxt, else the manifest, else defaults."""
    config = model_dir / CONFIG_FILE
    if config.is_file():
        parsed = read_config(config)
        delay = parsed.dynamic_batching.max_queue_delay_microseconds if parsed.HasField("dynamic_batching") \
            else DEFAULT_QUEUE_DELAY_US
        if parsed.max_batch_size > 0:
            return int(parsed.max_batch_size), int(delay)
    manifest = model_dir / str(newest) / MANIFEST_FILE
    if manifest.is_file():
        try:
            value = int(json.loads(manifest.read_text(encoding="utf-8")).get("max_batch_size", 0))
        except (ValueError, TypeError, UnicodeDecodeError):
            value = 0
        if value > 0:
            return value, DEFAULT_QUEUE_DELAY_US
    return DEFAULT_MAX_BATCH_SIZE, DEFAULT_QUEUE_DELAY_US


def runtime_config(name: str, sig: ModelSignature, *, max_batch_size: int, max_queue_delay_us: int,
                   version_policy: str = "all", instance_count: int = 1,
                   identities: Optional[Mapping[int, Mapping[str, Any]]] = None) -> str:
    """``config.pbtxt`` of one python-backend model: same tensors and batching as the exported model.

    ``identities`` (version -> export manifest) become parameters ``mult.v<version>.<field>``: how a client
    learns from the server which checkpoint and ONNX file each served version holds.
    """
    published = [(identity_parameter(version, field), identity_value(manifest[field]))
                 for version, manifest in sorted((identities or {}).items()) for field in IDENTITY_FIELDS
                 if manifest.get(field) is not None]
    spec = model_spec(name, height=sig.height, width=sig.width, embedding_size=sig.embedding_size,
                      max_batch_size=max_batch_size, max_queue_delay_us=max_queue_delay_us, instance_kind="KIND_CPU",
                      instance_count=instance_count)
    spec["backend"] = "python"
    spec["version_policy"] = {"all": {}} if version_policy == "all" else {"latest": {"num_versions": 1}}
    # Hashes and names only: a value of other characters is left out (clients compare these as they are).
    spec["parameters"] = {"onnx_file": {"string_value": ONNX_FILE},
                          **{key: {"string_value": value} for key, value in published if _PLAIN.fullmatch(value)}}
    return config_text(spec)


def backend_dir(install: TritonInstall, parent: Path) -> Path:
    """A backend folder whose ``python/`` holds the backend library, its utils and this Python's stub."""
    python_dir = parent / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in install.python_backend.iterdir():
        if src.is_file():
            link_or_copy(src, python_dir / src.name)
    link_or_copy(install.stub, python_dir / "triton_python_backend_stub")
    return parent


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` -> ``src`` as a symlink, else a hard link, else a copy (a file system without links)."""
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.symlink(src.resolve(), dst)
        return
    except OSError:
        pass
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _served_versions(repo: Path, version_policy: str) -> tuple[dict[Modality, list[_Served]], list[str]]:
    """Checked (version, signature, export manifest) per stem, newest last, and why other versions are left out.

    Only versions both stems serve together: one that a stem lacks (a half-published export) or whose two
    manifests name different exports would answer each modality from another model. Every served file must
    match the sha256 in its manifest (:func:`verified_manifest`), or nothing is served.
    """
    per_model = {m: model_versions(repo, name) for m, name in MODEL_NAMES.items()}
    common = set(per_model[Modality.visible]) & set(per_model[Modality.infrared])
    skipped = [f"not serving {MODEL_NAMES[m]}/{v}: {MODEL_NAMES[other]} has no version {v} (a half-published "
               "export?)" for m, other in ((Modality.visible, Modality.infrared), (Modality.infrared, Modality.visible))
               for v in per_model[m] if v not in common]
    served: dict[Modality, list[_Served]] = {m: [] for m in MODEL_NAMES}
    newest: dict[Modality, ModelSignature] = {}
    for version in sorted(common, reverse=True):
        if version_policy == "latest" and served[Modality.visible]:
            break
        pair: dict[Modality, tuple[ModelSignature, dict]] = {}
        for modality, name in MODEL_NAMES.items():
            path = repo / name / str(version) / ONNX_FILE
            sig = describe_onnx(ort_session(path, optimize=False), path)
            if sig.modality != modality.value:
                raise MultError(f"{path}: exported for {sig.modality}, but it sits in {name}; re-export with "
                                "`mult export`")
            ref = newest.get(modality)
            if ref is not None and (sig.height, sig.width, sig.embedding_size) != (ref.height, ref.width,
                                                                                   ref.embedding_size):
                skipped.append(f"not serving version {version}: {name}/{version} ({sig.height}x{sig.width}->"
                               f"{sig.embedding_size}, newest is {ref.height}x{ref.width}->{ref.embedding_size}); one "
                               "Triton config cannot describe both sizes")
                break
            pair[modality] = (sig, verified_manifest(path))
        else:
            try:
                export_identity(version, {m: manifest for m, (_, manifest) in pair.items()}, str(repo))
            except MultError as err:
                skipped.append(f"not serving version {version}: {err}")
                continue
            for modality, (sig, manifest) in pair.items():
                newest.setdefault(modality, sig)
                served[modality].append((version, sig, manifest))
    if not served[Modality.visible]:
        raise MultError(f"{repo}: no version that mult_visible and mult_infrared can serve together ("
                        f"{'; '.join(skipped) or 'none in common'}); export both with `mult export RUN --repo {repo}`")
    return {m: versions[::-1] for m, versions in served.items()}, skipped




def build_runtime_repository(repo: PathLike, out_dir: PathLike, *, version_policy: str = "all",
                             instance_count: int = 1) -> Path:
    """Write the python-backend runtime repository for ``repo`` (written by ``mult export``) into ``out_dir``.

    For each of ``mult_visible`` / ``mult_infrared``: ``config.pbtxt`` (python backend, same tensors,
    ``max_batch_size`` and queue delay as the export, ``KIND_CPU``), and per served version ``model.py``
    (the template) and ``model.onnx`` (a link to the exported file). Every ONNX file is opened with ONNX
    Runtime first and checked against the sha256 in its export manifest, so a missing model, a model without
    versions, a broken or edited file is a one-line MultError here, not a server that never becomes ready or one
    that serves other weights. Left out with a warning: older versions whose input/embedding size differ from
    the newest (one config describes all served versions), and versions the two stems do not share from one
    export (a half-published export would answer each modality from another model). The config publishes each
    served version's identity (:func:`runtime_config`). Returns ``out_dir``.
    """
    check_version_policy(version_policy)
    repo = Path(os.fspath(repo)).expanduser()
    out_dir = Path(os.fspath(out_dir))
    if out_dir.resolve() == repo.resolve() or repo.resolve() in out_dir.resolve().parents:
        raise MultError(f"{out_dir}: the runtime repository must live outside the export {repo}; pick another folder")
    plans, skipped = _served_versions(repo, version_policy)
    for note in skipped:
        warnings.warn(note, stacklevel=2)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for modality, name in MODEL_NAMES.items():
            _write_runtime_model(repo / name, out_dir / name, plans[modality], version_policy, instance_count)
    except OSError as err:
        raise MultError(f"{out_dir}: cannot write the runtime model repository ({type(err).__name__}: "
                        f"{err.strerror}); pick a writable folder") from None
    return out_dir


def _write_runtime_model(export_dir: Path, model_dir: Path, served: list[_Served], version_policy: str,
                         instance_count: int) -> None:
    """One runtime model: built in a hidden staging folder and renamed into place, replacing a previous build of
    this runtime folder whole (:func:`mult.io.atomic_directory`): a failure leaves no half-written model behind."""
    max_batch, delay = _export_batching(export_dir, served[-1][0])
    with atomic_directory(model_dir, replace=True) as staging:
        write_text_atomic(staging / CONFIG_FILE, runtime_config(
            model_dir.name, served[-1][1], max_batch_size=max_batch, max_queue_delay_us=delay,
            version_policy=version_policy, instance_count=instance_count,
            identities={version: manifest for version, _, manifest in served}))
        for version, sig, _ in served:
            version_dir = staging / str(version)
            version_dir.mkdir()
            shutil.copyfile(MODEL_TEMPLATE, version_dir / "model.py")
            link_or_copy(sig.path, version_dir / ONNX_FILE)
