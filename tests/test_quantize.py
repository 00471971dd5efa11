"""FP16 and INT8 exports (mult.export.quantize and write_model_repository's precision option).

A real ResNet-18 encoder at 64x32: random weights, but BatchNorm statistics re-estimated on images (PreciseBN,
as the CPU presets do before training), so embeddings of different images are far apart (cosine ~0) and a
bound on the cosine to FP32 means something. Real ONNX Runtime quantisation, real image files.
Measured on this model, held-out images (test ids of the tiny SYSU tree; calibration used training ids): FP16
min cosine 0.999996 (max abs 7e-4), INT8 min cosine 0.992 (max abs 0.03); INT8 calibrated on black frames:
cosine ~0. Different images' embeddings have cosines up to ~0.6, so the bounds below separate them.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import build_sysu_tree
from mult.config import preset_config
from mult.data.records import Modality
from mult.errors import MultError
from mult.export.onnx_export import export_onnx, onnx_metadata, onnx_session
from mult.export.quantize import (
    PARITY_TOLERANCES,
    check_precision,
    interface,
    model_precision,
    to_fp16,
    to_int8,
    trunk_nodes,
)
from mult.export.repository import (
    FP32_SCRATCH_FILE,
    MODEL_NAMES,
    int8_calibration_images,
    next_version,
    random_images,
    write_model_repository,
)
from mult.model import PretrainedWeightsWarning, TwoStreamEncoder
from mult.serving.encoders import load_resized
from mult.train.precise_bn import recalibrate_batchnorm

H, W = 64, 32
#: Agreement with the FP32 graph on held-out images (measured values in the module docstring).
FP16_MIN_COSINE = 0.9995
INT8_MIN_COSINE = 0.95


def _embed(path: Path, images: np.ndarray) -> np.ndarray:
    (out,) = onnx_session(path).run(["embeddings"], {"images": images})
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{k:03d}.png")


def _as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def model() -> TwoStreamEncoder:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedWeightsWarning)
        encoder = TwoStreamEncoder("resnet18")
    images = random_images(32, H, W, seed=21)
    recalibrate_batchnorm(encoder, [(_as_input(images[:16]), _as_input(images[16:]))])
    return encoder.eval()


@pytest.fixture(scope="module")
def fp32_path(model, tmp_path_factory) -> Path:
    return export_onnx(model, "infrared", tmp_path_factory.mktemp("fp32") / "ir.onnx", height=H, width=W)


def _save_run(model: TwoStreamEncoder, run: Path, **cfg_overrides) -> Path:
    run.mkdir(parents=True)
    cfg = preset_config("tiny", **cfg_overrides)
    cfg.save(run / "config.json")
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 1}, run / "checkpoint.pt")
    return run


@pytest.fixture(scope="module")
def sysu_run(model, tmp_path_factory) -> tuple[Path, Path]:
    """A run whose config points at a small SYSU-MM01 tree (the default calibration source), and that tree."""
    base = tmp_path_factory.mktemp("quant_run")
    tree = build_sysu_tree(base / "SYSU-MM01")
    return _save_run(model, base / "run", data_root=str(tree.root)), tree.root


@pytest.fixture(scope="module")
def quant_repo(sysu_run, tmp_path_factory):
    """Version 1: INT8 calibrated on 12 training images per stem (the default source); version 2: FP16."""
    repo = tmp_path_factory.mktemp("quant_repo") / "model_repository"
    int8 = write_model_repository(sysu_run[0], repo, precision="int8", calibration_count=12)
    fp16 = write_model_repository(sysu_run[0], repo, precision="fp16")
    return repo, int8, fp16


@pytest.fixture(scope="module")
def converted(quant_repo) -> dict[str, Path]:
    """The infrared models the repository writer converted from its FP32 export."""
    _, int8, fp16 = quant_repo
    return {r.precision: r.models["mult_infrared"].onnx_path for r in (int8, fp16)}


@pytest.fixture(scope="module")
def held_out(sysu_run) -> np.ndarray:
    """Images of test ids (calibration and parity use training ids), the same kind of pictures."""
    images = load_resized(sorted(sysu_run[1].glob("cam[36]/000[246]/*.jpg")), H, W)
    assert len(images) >= 6
    return images


# ---- graph level ---------------------------------------------------------------------------------------


def test_trunk_is_the_resnet18_body(fp32_path):
    """ResNet-18: 1 stem conv + 8 blocks x 2 convs + 3 shortcut convs = 20 Conv; 1 + 8 x 2 = 17 Relu; 8 residual
    Add; 1 MaxPool. The head's Add (GeM's + eps, on [N, C]) and the shape arithmetic are not trunk nodes."""
    model = onnx.load(str(fp32_path))
    by_name = {n.name: n.op_type for n in model.graph.node}
    counts = Counter(by_name[name] for name in trunk_nodes(model))
    assert counts == {"Conv": 20, "Relu": 17, "Add": 8, "MaxPool": 1}
    assert Counter(n.op_type for n in model.graph.node)["Add"] > 8  # there are other Adds to leave alone


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_interface_and_metadata_kept(converted, fp32_path, precision):
    path = converted[precision]
    source, model = onnx.load(str(fp32_path)), onnx.load(str(path))
    assert interface(model) == interface(source)
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("images", onnx.TensorProto.UINT8)
    assert (out.name, out.type.tensor_type.elem_type) == ("embeddings", onnx.TensorProto.FLOAT)
    assert inp.type.tensor_type.shape.dim[0].dim_param and out.type.tensor_type.shape.dim[0].dim_param
    meta, meta_fp32 = onnx_metadata(path), onnx_metadata(fp32_path)
    assert {k: v for k, v in meta.items() if k in meta_fp32} == meta_fp32
    assert meta["precision"] == precision == model_precision(path)
    assert model_precision(fp32_path) == "fp32"
    assert not [k for k in (e.key for e in model.metadata_props) if not k.startswith("mult.")]
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.parametrize("precision,bound", [("fp16", FP16_MIN_COSINE), ("int8", INT8_MIN_COSINE)])
def test_dynamic_batch_unit_norm_and_close_to_fp32(converted, fp32_path, held_out, precision, bound):
    path = converted[precision]
    full = _embed(path, held_out)
    single = _embed(path, held_out[:1])
    assert full.dtype == np.float32 and full.shape == (len(held_out), 512) and single.shape == (1, 512)
    assert np.abs(single - full[:1]).max() < 1e-5  # batch 1 and batch N agree: the batch axis is really dynamic
    assert np.allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    reference = _embed(fp32_path, held_out)
    assert _cosines(full, reference).min() > bound
    assert np.abs(full - reference).max() > 0  # it is really another graph
    # The bound is meaningful: different images are far apart, so another image's embedding could not pass it.
    assert np.abs(np.triu(reference @ reference.T, k=1)).max() < 0.8


def test_fp16_graph_structure(converted, fp32_path):
    """Weights of the trunk are stored in FP16 (file ~half the size); the trunk has one way in (the normalised
    image) and one way out (layer4's last ReLU into GeM), so exactly two Casts are added."""
    model, source = onnx.load(str(converted["fp16"])), onnx.load(str(fp32_path))
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert conv_weights and all(types[w] == onnx.TensorProto.FLOAT16 for w in conv_weights)
    added = Counter(n.op_type for n in model.graph.node) - Counter(n.op_type for n in source.graph.node)
    assert added == {"Cast": 2}
    size, size_fp32 = converted["fp16"].stat().st_size, fp32_path.stat().st_size
    assert 0.45 < size / size_fp32 < 0.55


def test_int8_graph_structure(converted):
    model = onnx.load(str(converted["int8"]))
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    quantized = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(quantized) >= 20  # at least every conv weight
    meta = onnx_metadata(converted["int8"])
    assert meta["calibration_images"] == "12" and meta["calibration_method"] == "minmax"
    assert "uint8" in meta["quantization"]


def test_direct_conversion_calls(fp32_path, held_out, tmp_path):
    """to_fp16 / to_int8 on a file: the result lands under the given name and nothing else is left."""
    fp16 = to_fp16(fp32_path, tmp_path / "fp16.onnx")
    int8 = to_int8(fp32_path, tmp_path / "int8.onnx", held_out[:3], batch_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp16.onnx", "int8.onnx"]
    assert model_precision(fp16) == "fp16" and onnx_metadata(int8)["calibration_images"] == "3"


def test_conversion_input_errors(fp32_path, tmp_path):
    h, w = H, W
    with pytest.raises(MultError, match="non-empty uint8"):
        to_int8(fp32_path, tmp_path / "a.onnx", random_images(2, h, w).astype(np.float32))
    with pytest.raises(MultError, match="non-empty uint8"):
        to_int8(fp32_path, tmp_path / "a.onnx", np.zeros((0, h, w, 3), np.uint8))
    with pytest.raises(MultError, match="expects 64x32"):
        to_int8(fp32_path, tmp_path / "a.onnx", random_images(2, 32, 32))
    with pytest.raises(MultError, match="no ONNX model"):
        to_fp16(tmp_path / "missing.onnx", tmp_path / "a.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all")
    with pytest.raises(MultError, match="not a readable ONNX model"):
        to_fp16(garbage, tmp_path / "a.onnx")
    with pytest.raises(MultError, match="precision 'bf16' unknown"):
        check_precision("bf16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["garbage.onnx"]


# ---- calibration images ----------------------------------------------------------------------------------


def test_calibration_folder_choices(tmp_path):
    split = tmp_path / "split"
    _write_pngs(split / "visible", random_images(3, 20, 10, seed=1))
    _write_pngs(split / "infrared", random_images(5, 20, 10, seed=2))
    ir, note = int8_calibration_images(Modality.infrared, None, 16, 8, calibration_dir=split, n=4)
    assert ir.shape == (4, 16, 8, 3) and ir.dtype == np.uint8 and "4 of 5 images" in note and "infrared" in note
    vis, _ = int8_calibration_images(Modality.visible, None, 16, 8, calibration_dir=split, n=64)
    assert len(vis) == 3
    flat = tmp_path / "flat"
    _write_pngs(flat / "any" / "depth", random_images(2, 20, 10, seed=3))
    both = [int8_calibration_images(m, None, 16, 8, calibration_dir=flat)[0] for m in Modality]
    assert np.array_equal(both[0], both[1]) and len(both[0]) == 2
    half = tmp_path / "half"
    _write_pngs(half / "visible", random_images(1, 20, 10))
    with pytest.raises(MultError, match="no infrared/ subfolder"):
        int8_calibration_images(Modality.infrared, None, 16, 8, calibration_dir=half)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(MultError, match="no image files"):
        int8_calibration_images(Modality.visible, None, 16, 8, calibration_dir=tmp_path / "empty")
    with pytest.raises(MultError, match="no such calibration folder"):
        int8_calibration_images(Modality.visible, None, 16, 8, calibration_dir=tmp_path / "nope")


def test_calibration_defaults_to_training_images(tmp_path):
    tree = build_sysu_tree(tmp_path / "SYSU")
    cfg = preset_config("tiny", data_root=str(tree.root))
    ir, note = int8_calibration_images(Modality.infrared, cfg, 16, 8, n=5)
    assert ir.shape == (5, 16, 8, 3) and "5 infrared training images" in note
    assert np.array_equal(ir[..., 0], ir[..., 2])  # grey SYSU infrared frames: these really are infrared images
    with pytest.raises(MultError, match="records no dataset"):
        int8_calibration_images(Modality.infrared, preset_config("tiny"), 16, 8)
    with pytest.raises(MultError, match="dataset is unavailable"):
        int8_calibration_images(Modality.infrared, preset_config("tiny", data_root=str(tmp_path / "moved")), 16, 8)


# ---- model repository ------------------------------------------------------------------------------------


def test_repository_int8_and_fp16_versions(quant_repo, held_out, model):
    repo, int8, fp16 = quant_repo
    assert (int8.version, int8.precision, fp16.version, fp16.precision) == (1, "int8", 2, "fp16")
    test_images = held_out
    for modality, name in MODEL_NAMES.items():
        assert sorted(p.relative_to(repo / name).as_posix() for p in (repo / name).rglob("*")) == [
            "1", "1/manifest.json", "1/model.onnx", "2", "2/manifest.json", "2/model.onnx", "config.pbtxt"]
        with torch.no_grad():
            reference = model.embed(_as_input(test_images), modality, flip=True).numpy()
        for result, bound in ((int8, INT8_MIN_COSINE), (fp16, FP16_MIN_COSINE)):
            path = result.models[name].onnx_path
            assert model_precision(path) == result.precision and onnx_metadata(path)["modality"] == modality.value
            assert _cosines(_embed(path, test_images), reference).min() > bound


def test_repository_manifest_fields(quant_repo):
    repo, int8, fp16 = quant_repo
    for result in (int8, fp16):
        max_abs_tol, min_cos_tol = PARITY_TOLERANCES[result.precision]
        for modality, name in MODEL_NAMES.items():
            manifest = json.loads((repo / name / str(result.version) / "manifest.json").read_text())
            assert manifest["precision"] == result.precision
            parity, parity_fp32 = manifest["parity"], manifest["parity_fp32"]
            assert parity["batch_sizes"] == parity_fp32["batch_sizes"] == [1, 7]
            assert parity["tolerances"] == {"max_abs": max_abs_tol, "min_cosine": min_cos_tol}
            assert parity_fp32["max_abs_diff"] < 1e-4 and parity_fp32["min_cosine"] > 0.99999
            assert parity["max_abs_diff"] >= parity_fp32["max_abs_diff"]  # the converted model is the coarser one
            assert min_cos_tol < parity["min_cosine"] <= 1.0
            assert manifest["onnx_bytes"] == (repo / name / str(result.version) / "model.onnx").stat().st_size
            if result.precision == "int8":
                calibration = manifest["calibration"]
                assert calibration["count"] == 12 and calibration["method"] == "minmax"
                assert f"12 {modality.value} training images" in calibration["source"]
            else:
                assert manifest["calibration"] is None
    summary = int8.to_dict()
    assert summary["precision"] == "int8" and summary["models"]["mult_visible"]["calibration"]["count"] == 12
    assert "parity_fp32" in summary["models"]["mult_infrared"]


def _nothing_written(repo: Path) -> bool:
    return not repo.exists() or not [p for p in repo.rglob("*") if p.is_file() or p.name[0] in ".0123456789"]


def test_int8_without_calibration_images_fails_cleanly(model, tmp_path):
    """A run that records no dataset: INT8 must refuse rather than calibrate on noise."""
    run = _save_run(model, tmp_path / "run")
    repo = tmp_path / "repo"
    with pytest.raises(MultError, match="calibration-dir"):
        write_model_repository(run, repo, precision="int8")
    assert _nothing_written(repo)
    with pytest.raises(MultError, match="only used by INT8"):
        write_model_repository(run, repo, precision="fp16", calibration_dir=tmp_path)
    with pytest.raises(MultError, match="precision 'int4' unknown"):
        write_model_repository(run, repo, precision="int4")
    assert _nothing_written(repo)


def test_failed_int8_parity_leaves_nothing(sysu_run, tmp_path):
    """Calibrating on black frames gives activation ranges that clip real images (cosine to torch ~0): the
    INT8 parity check must reject the model, and neither version folders nor the FP32 scratch file remain."""
    black = tmp_path / "black"
    _write_pngs(black, np.zeros((4, H, W, 3), np.uint8))
    repo = tmp_path / "repo"
    with pytest.raises(MultError, match="INT8 export: .*differs from torch"):
        write_model_repository(sysu_run[0], repo, precision="int8", calibration_dir=black)
    assert _nothing_written(repo) and next_version(repo) == 1
    assert not list(repo.rglob(FP32_SCRATCH_FILE))
