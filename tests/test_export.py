"""ONNX export + parity check + Triton model repository, on a real (random-init) ResNet-18 encoder at 64x32."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import perturbed_encoder
import torch
from PIL import Image

from conftest import build_sysu_tree
from mult.config import preset_config
from mult.errors import MultError
from mult.export.onnx_export import (
    export_onnx,
    onnx_metadata,
    onnx_session,
    parity_check,
    row_cosines,
    torch_embeddings,
)
from mult.export.repository import (
    MODEL_NAMES,
    next_version,
    parity_images,
    random_images,
    write_model_repository,
)
from mult.export.triton_config import triton_config
from mult.data.records import Modality
from mult.model import TwoStreamEncoder

H, W = 64, 32


def _encoder(seed: int) -> TwoStreamEncoder:
    return perturbed_encoder(seed)


@pytest.fixture(scope="module")
def model() -> TwoStreamEncoder:
    return _encoder(0)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return random_images(7, H, W, seed=3)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> Path:
    """Infrared stem, flip on, traced with an example batch of 2."""
    return export_onnx(model, "infrared", tmp_path_factory.mktemp("onnx") / "ir.onnx", height=H, width=W,
                       example_batch=2)


def _run(path: Path, batch: np.ndarray) -> np.ndarray:
    (out,) = onnx_session(path).run(["embeddings"], {"images": batch})
    return out


# ---- ONNX graph ------------------------------------------------------------------------------------------


def test_row_cosines_small_case():
    a = np.array([[1.0, 0.0], [3.0, 4.0]])
    b = np.array([[2.0, 0.0], [4.0, -3.0]])
    assert np.allclose(row_cosines(a, b), [1.0, 0.0])


def test_onnx_matches_torch_at_batch_1_and_7(model, exported, images):
    report = parity_check(model, "infrared", exported, images)
    assert report.batch_sizes == (1, 7) and report.num_images == 7 and report.flip is True
    assert report.max_abs_diff < 1e-4 and report.min_cosine > 0.99999


def test_graph_takes_uint8_nhwc_and_normalises_inside(model, exported, images):
    """Same uint8 image -> same embedding as model.embed(x / 255): the client must not normalise."""
    got = _run(exported, images)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        want = model.embed(x, "infrared", flip=True).numpy()
    assert got.dtype == np.float32 and got.shape == (7, 512)
    assert np.abs(got - want).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Another stem gives other embeddings: the right stem was exported.
    with torch.no_grad():
        other = model.embed(x, "visible", flip=True).numpy()
    assert np.abs(got - other).max() > 1e-3


def test_declared_types_and_dynamic_batch_axis(exported, images):
    import onnx

    graph = onnx.load(str(exported)).graph
    (inp,), (out,) = graph.input, graph.output
    assert (inp.name, out.name) == ("images", "embeddings")
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [H, W, 3]
    assert out.type.tensor_type.shape.dim[0].dim_param
    # Traced at batch 2, run at 3 and 1.
    assert _run(exported, images[:3]).shape == (3, 512)
    assert _run(exported, images[:1]).shape == (1, 512)
    assert not list(exported.parent.glob("*.tmp")) and not list(exported.parent.glob("*.data"))


def test_metadata_records_sizes(exported):
    meta = onnx_metadata(exported)
    assert meta["height"] == str(H) and meta["width"] == str(W)
    assert meta["embedding_size"] == "512" and meta["modality"] == "infrared" and meta["flip"] == "true"


def test_flip_option(model, images, tmp_path, exported):
    path = export_onnx(model, "infrared", tmp_path / "noflip.onnx", height=H, width=W, flip=False)
    got = _run(path, images)
    assert np.abs(got - torch_embeddings(model, "infrared", images, flip=False)).max() < 1e-4
    assert np.abs(got - _run(exported, images)).max() > 1e-4  # flip averaging really is in the other graph
    assert onnx_metadata(path)["flip"] == "false"
    assert parity_check(model, "infrared", path, images).flip is False


def test_parity_check_catches_a_mismatch(exported, images):
    other = _encoder(1)
    with pytest.raises(MultError, match="differs from torch"):
        parity_check(other, "infrared", exported, images)


def test_parity_check_rejects_bad_inputs(model, exported, images):
    with pytest.raises(MultError, match="exported for infrared"):
        parity_check(model, "visible", exported, images)
    with pytest.raises(MultError, match="expects 64x32"):
        parity_check(model, "infrared", exported, random_images(2, 32, 32))
    with pytest.raises(MultError, match="uint8"):
        parity_check(model, "infrared", exported, images.astype(np.float32))
    with pytest.raises(MultError, match="no ONNX model"):
        parity_check(model, "infrared", exported.parent / "missing.onnx", images)


def test_export_errors(model, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MultError, match="cannot write"):
        export_onnx(model, "visible", blocker / "m.onnx", height=H, width=W)
    with pytest.raises(MultError, match="unknown modality"):
        export_onnx(model, "thermal-ish", tmp_path / "m.onnx", height=H, width=W)
    assert not (tmp_path / "m.onnx").exists()


# ---- Triton model repository ---------------------------------------------------------------------------


def _parse_config(text: str):
    """Parse with Triton's own ModelConfig schema (tritonclient), so a misspelt field fails here."""
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_triton_config_fields():
    cfg = _parse_config(triton_config("mult_visible", height=H, width=W, embedding_size=512, max_batch_size=32))
    assert cfg.name == "mult_visible" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 32
    (inp,), (out,) = cfg.input, cfg.output
    assert inp.name == "images" and list(inp.dims) == [H, W, 3]
    assert out.name == "embeddings" and list(out.dims) == [512]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert len(cfg.instance_group) == 1 and cfg.instance_group[0].count == 1
    (warm,) = cfg.model_warmup
    assert warm.batch_size == 1 and warm.inputs["images"].zero_data and list(warm.inputs["images"].dims) == [H, W, 3]
    assert not cfg.optimization.execution_accelerators.gpu_execution_accelerator
    trt = _parse_config(triton_config("m", height=H, width=W, embedding_size=512, tensorrt=True))
    (acc,) = trt.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"


def test_triton_config_rejects_bad_values():
    with pytest.raises(MultError, match="max_batch_size"):
        triton_config("m", height=H, width=W, embedding_size=8, max_batch_size=0)
    with pytest.raises(MultError, match="instance kind"):
        triton_config("m", height=H, width=W, embedding_size=8, instance_kind="KIND_TPU")


@pytest.fixture(scope="module")
def run_dir(model, tmp_path_factory) -> Path:
    """A fake `mult train` run (tiny preset) whose config points at a small SYSU-MM01 tree."""
    base = tmp_path_factory.mktemp("export_run")
    tree = build_sysu_tree(base / "SYSU-MM01")
    run = base / "run"
    run.mkdir()
    cfg = preset_config("tiny", data_root=str(tree.root))
    cfg.save(run / "config.json")
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 3}, run / "checkpoint.pt")
    return run


@pytest.fixture(scope="module")
def repo_v1(run_dir, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    return repo, write_model_repository(run_dir, repo)


def test_repository_layout_and_config(repo_v1):
    repo, result = repo_v1
    assert result.version == 1 and (result.height, result.width, result.embedding_size) == (H, W, 512)
    for modality, name in MODEL_NAMES.items():
        files = sorted(p.relative_to(repo / name).as_posix() for p in (repo / name).rglob("*"))
        assert files == ["1", "1/manifest.json", "1/model.onnx", "config.pbtxt"]
        text = (repo / name / "config.pbtxt").read_text()
        assert re.search(rf'^name: "{name}"$', text, re.M) and 'platform: "onnxruntime_onnx"' in text
        assert re.search(r"^max_batch_size: 64$", text, re.M) and "TYPE_UINT8" in text and "TYPE_FP32" in text
        cfg = _parse_config(text)
        assert list(cfg.input[0].dims) == [H, W, 3] and list(cfg.output[0].dims) == [512]
        assert onnx_metadata(repo / name / "1" / "model.onnx")["modality"] == modality.value


def test_repository_manifest(repo_v1, run_dir):
    repo, result = repo_v1
    sha = hashlib.sha256((run_dir / "checkpoint.pt").read_bytes()).hexdigest()
    for modality, name in MODEL_NAMES.items():
        manifest = json.loads((repo / name / "1" / "manifest.json").read_text())
        assert manifest["source_sha256"] == sha and manifest["version"] == 1 and manifest["modality"] == modality.value
        assert manifest["input"]["shape"] == [-1, H, W, 3] and manifest["input"]["dtype"] == "uint8"
        assert manifest["embedding_size"] == 512 and manifest["opset"] == 17 and manifest["flip"] is True
        assert dt.datetime.fromisoformat(manifest["created"]).tzinfo is not None
        parity = manifest["parity"]
        assert parity["max_abs_diff"] < 1e-4 and parity["min_cosine"] > 0.99999 and parity["batch_sizes"] == [1, 7]
        assert parity["images"].startswith("dataset sysu") and f"{modality.value} images" in parity["images"]
        onnx_bytes = (repo / name / "1" / "model.onnx").read_bytes()
        assert manifest["onnx_sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert result.to_dict()["models"]["mult_infrared"]["parity"]["images"].startswith("dataset sysu")


def test_second_export_is_version_2_from_checkpoint_file(repo_v1, run_dir, tmp_path):
    repo, _ = repo_v1
    pngs = []
    for k in range(2):
        pngs.append(tmp_path / f"q{k}.png")
        Image.fromarray(random_images(1, 40, 20, seed=k)[0]).save(pngs[-1])
    result = write_model_repository(run_dir / "checkpoint.pt", repo, flip=False, tensorrt=True,
                                    max_batch_size=8, calibration_images=pngs)
    assert result.version == 2 and next_version(repo) == 3
    for name in MODEL_NAMES.values():
        assert sorted(p.name for p in (repo / name).iterdir()) == ["1", "2", "config.pbtxt"]  # no temp dirs
        manifest = json.loads((repo / name / "2" / "manifest.json").read_text())
        assert manifest["flip"] is False and manifest["parity"]["images"] == "files (2 given)"
        assert manifest["parity"]["num_images"] == 2 and manifest["tensorrt_fp16"] is True
        cfg = _parse_config((repo / name / "config.pbtxt").read_text())
        assert cfg.max_batch_size == 8
        assert cfg.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"


def test_failed_export_leaves_nothing(run_dir, tmp_path):
    repo = tmp_path / "repo"
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(MultError, match="broken.png"):
        write_model_repository(run_dir, repo, calibration_images=[bad])
    leftovers = [p for p in repo.rglob("*") if p.is_file() or p.name[0] in ".0123456789"]
    assert leftovers == [] and next_version(repo) == 1


def test_repository_errors(run_dir, tmp_path):
    with pytest.raises(MultError, match="no such run directory or checkpoint"):
        write_model_repository(tmp_path / "nope", tmp_path / "repo")
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(MultError, match="not a readable mult checkpoint"):
        write_model_repository(not_a_checkpoint, tmp_path / "repo")
    half_run = tmp_path / "half_run"
    half_run.mkdir()
    with pytest.raises(MultError, match="config.json: missing"):
        write_model_repository(half_run, tmp_path / "repo")
    with pytest.raises(MultError, match="not a folder"):
        write_model_repository(run_dir, not_a_checkpoint)
    taken = tmp_path / "taken"
    (taken / "mult_infrared" / "4").mkdir(parents=True)
    assert next_version(taken) == 5
    with pytest.raises(MultError, match="version 4 exists"):
        write_model_repository(run_dir, taken, version=4)
    with pytest.raises(MultError, match="max_batch_size"):
        write_model_repository(run_dir, tmp_path / "repo", max_batch_size=0)


def test_parity_images_sources(tmp_path):
    cfg = preset_config("tiny", data_root=str(tmp_path / "moved"))
    imgs, note = parity_images(Modality.visible, cfg, H, W)
    assert imgs.shape == (7, H, W, 3) and imgs.dtype == np.uint8 and note.startswith("random (dataset unavailable")
    again, _ = parity_images(Modality.visible, None, H, W)
    assert np.array_equal(imgs, again)  # deterministic
    tree = build_sysu_tree(tmp_path / "SYSU")
    ir, note = parity_images(Modality.infrared, preset_config("tiny", data_root=str(tree.root)), H, W, n=3)
    assert ir.shape == (3, H, W, 3) and "3 infrared images" in note
    # SYSU infrared frames are grey: replicated to 3 equal channels.
    assert np.array_equal(ir[..., 0], ir[..., 1]) and np.array_equal(ir[..., 1], ir[..., 2])
