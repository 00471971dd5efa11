"""The two-stream encoder (METHOD.md §3.1): shapes, GeM by hand, pooled BN, eval embeddings, shared trunk,
weight loading and ONNX export of one stem. resnet18 and tiny inputs only: the CPU is shared."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mult.compat import import_torchvision
from mult.errors import MultError
from mult.model import PretrainedWeightsWarning, TwoStreamEncoder, gem_pool

H, W = 64, 32


def build(arch: str = "resnet18", **kwargs) -> TwoStreamEncoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedWeightsWarning)
        return TwoStreamEncoder(arch=arch, **kwargs)


@pytest.fixture(scope="module")
def enc() -> TwoStreamEncoder:
    torch.manual_seed(0)
    return build()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(seed))


def test_gem_by_hand():
    x = torch.tensor([0.0, 1.0, 1.0, 2.0]).view(1, 1, 2, 2)
    # mean of cubes = (0 + 1 + 1 + 8) / 4 = 2.5 -> 2.5^(1/3)
    assert math.isclose(float(gem_pool(x)), 2.5 ** (1 / 3), rel_tol=1e-6)
    # all zeros: the 1e-12 inside the root gives 1e-4, not 0
    assert math.isclose(float(gem_pool(torch.zeros(1, 1, 3, 3))), 1e-4, rel_tol=1e-5)
    # a constant map pools to the constant; channels are independent
    two = torch.stack([torch.full((2, 3), 0.5), torch.full((2, 3), 4.0)]).unsqueeze(0)
    assert torch.allclose(gem_pool(two), torch.tensor([[0.5, 4.0]]), rtol=1e-5)


@pytest.mark.parametrize("arch,dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("mobilenetv2", 1280)])
def test_shapes_per_arch(arch, dim):
    model = build(arch)
    assert model.feature_dim == dim
    fv, fr = model(images(2, 0), images(3, 1))
    assert fv.shape == (2, dim) and fr.shape == (3, dim)
    # last stride 1: layer4 keeps layer3's resolution (H/16 x W/16), i.e. 18x9 at 288x144
    with torch.no_grad():
        fmap = model.trunk(model.visible_stem(images(1, 2)))
    assert fmap.shape == (1, dim, H // 16, W // 16)


def test_last_stride_two_halves_layer4():
    model = build(last_stride=2)
    with torch.no_grad():
        fmap = model.trunk(model.visible_stem(images(1, 0)))
    assert fmap.shape[-2:] == (H // 32, W // 32)


def test_train_forward_pools_bn_over_both_modalities(enc):
    enc.train()
    xv, xr = images(3, 10), images(4, 11)
    norm = lambda x: (x - enc.pixel_mean) / enc.pixel_std  # noqa: E731
    with torch.no_grad():
        fv, fr = enc(xv, xr)
        joint = torch.cat([enc.visible_stem(norm(xv)), enc.infrared_stem(norm(xr))])
        expected = enc.neck(gem_pool(enc.trunk(joint)))
        alone_v, _ = enc(xv, None)  # visible batch alone: different BN statistics
    assert torch.allclose(fv, expected[:3], atol=1e-5) and torch.allclose(fr, expected[3:], atol=1e-5)
    assert not torch.allclose(fv, alone_v, atol=1e-3)
    assert not torch.allclose(F.normalize(fv, dim=1).norm(dim=1), torch.full((3,), 0.5))  # un-normalised
    enc.eval()


def test_forward_accepts_missing_or_empty_modality(enc):
    enc.train()
    with torch.no_grad():
        fv, fr = enc(None, images(2, 0))
        fv2, fr2 = enc(torch.empty(0, 3, H, W), images(2, 0))
    enc.eval()
    assert fv.shape == (0, 512) and fr.shape == (2, 512)
    assert torch.allclose(fr, fr2)
    with pytest.raises(ValueError):
        enc(None, None)


def test_forward_does_not_modify_input(enc):
    x = images(2, 3)
    before = x.clone()
    with torch.no_grad():
        enc.eval().embed(x, "visible", flip=True)
    assert torch.equal(x, before)


def test_eval_embedding_unit_norm_and_matches_pipeline(enc):
    enc.eval()
    x = images(3, 4)
    with torch.no_grad():
        emb = enc.embed(x, "infrared")
        manual = F.normalize(enc.neck(gem_pool(enc.trunk(enc.infrared_stem((x - enc.pixel_mean) / enc.pixel_std)))))
    assert emb.shape == (3, 512)
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(emb, manual, atol=1e-6)


def test_flip_averaging_equals_manual(enc):
    enc.eval()
    x = images(3, 5)
    with torch.no_grad():
        a = enc.embed(x, "visible")
        b = enc.embed(torch.flip(x, dims=[3]), "visible")
        flipped = enc.embed(x, "visible", flip=True)
    manual = F.normalize((a + b) / 2, dim=1)
    assert torch.allclose(flipped, manual, atol=1e-6)
    assert not torch.allclose(flipped, a, atol=1e-4)


def test_embed_rejects_bad_modality_and_uint8(enc):
    with pytest.raises(MultError):
        enc.embed(images(1, 0), "depth")  # thermal is a synonym of infrared (mult.data.records.as_modality)
    with pytest.raises(TypeError):
        enc.embed((images(1, 0) * 255).to(torch.uint8), "visible")


def test_no_dead_params_in_state_dict(enc):
    keys = list(enc.state_dict())
    prefixes = {k.split(".")[0] for k in keys}
    assert prefixes == {"visible_stem", "infrared_stem", "trunk", "neck"}
    assert not any(k.startswith("trunk.") and k.split(".")[1] not in {"layer1", "layer2", "layer3", "layer4"}
                   for k in keys)
    assert not any(".fc." in k or k.startswith("fc.") for k in keys)
    # parameter count = torchvision resnet18 - fc + one extra stem (conv1 + bn1) + BN-neck (weight, bias)
    tv = import_torchvision().models.resnet18(weights=None)
    n_tv = sum(p.numel() for p in tv.parameters())
    n_fc = sum(p.numel() for p in tv.fc.parameters())
    n_stem = sum(p.numel() for p in tv.conv1.parameters()) + sum(p.numel() for p in tv.bn1.parameters())
    assert sum(p.numel() for p in enc.parameters()) == n_tv - n_fc + n_stem + 2 * 512


def test_stems_separate_trunk_shared(enc):
    assert enc.visible_stem.conv1.weight is not enc.infrared_stem.conv1.weight
    assert enc.visible_stem.conv1.weight.data_ptr() != enc.infrared_stem.conv1.weight.data_ptr()
    enc.eval()
    enc.zero_grad(set_to_none=True)
    enc.embed(images(2, 6), "infrared").sum().backward()
    assert enc.visible_stem.conv1.weight.grad is None  # infrared path never touches the visible stem
    assert enc.infrared_stem.conv1.weight.grad is not None
    assert enc.trunk.layer1[0].conv1.weight.grad is not None  # the trunk serves both stems
    enc.zero_grad(set_to_none=True)
    enc.embed(images(2, 7), "visible").sum().backward()
    assert enc.infrared_stem.conv1.weight.grad is None and enc.trunk.layer4[0].conv1.weight.grad is not None
    enc.zero_grad(set_to_none=True)


def test_bn_neck_bias_frozen_at_zero(enc):
    assert not enc.neck.bias.requires_grad and torch.equal(enc.neck.bias, torch.zeros(512))
    assert enc.neck.weight.requires_grad


def saved_resnet18(tmp_path, name="r18.pth"):
    torch.manual_seed(1)
    sd = import_torchvision().models.resnet18(weights=None).state_dict()
    path = tmp_path / name
    torch.save(sd, path)
    return sd, path


def test_load_resnet_pth_into_both_stems_and_trunk(tmp_path):
    sd, path = saved_resnet18(tmp_path)
    model = TwoStreamEncoder("resnet18", pretrained=str(path))
    for stem in (model.visible_stem, model.infrared_stem):
        assert torch.equal(stem.conv1.weight, sd["conv1.weight"])
        assert torch.equal(stem.bn1.running_var, sd["bn1.running_var"])
    assert torch.equal(model.trunk.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    assert torch.equal(model.trunk.layer4[0].downsample[1].running_mean, sd["layer4.0.downsample.1.running_mean"])
    assert model.visible_stem.conv1.weight is not model.infrared_stem.conv1.weight


def test_load_whole_encoder_state(tmp_path, enc):
    path = tmp_path / "enc.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in enc.state_dict().items()}}, path)
    model = TwoStreamEncoder.from_config({"model": {"arch": "resnet18", "pretrained": str(path)}})
    for key, value in enc.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_imagenet_from_hub_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(PretrainedWeightsWarning, match="not in the torch hub cache"):
        TwoStreamEncoder("resnet18", pretrained="imagenet")
    assert not (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()  # nothing downloaded
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    sd, _ = saved_resnet18(tmp_path / "hub" / "checkpoints", name="resnet18-f37072fd.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PretrainedWeightsWarning)
        model = TwoStreamEncoder("resnet18", pretrained="imagenet")
    assert torch.equal(model.infrared_stem.conv1.weight, sd["conv1.weight"])


def test_random_init_warns():
    with pytest.warns(PretrainedWeightsWarning, match="random weights"):
        TwoStreamEncoder("resnet18")


def test_bad_weights_raise_multerror(tmp_path):
    with pytest.raises(MultError, match="not found"):
        build(pretrained=str(tmp_path / "missing.pth"))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(MultError, match="garbage.pth"):
        build(pretrained=str(garbage))
    _, path = saved_resnet18(tmp_path)
    with pytest.raises(MultError, match="resnet34"):
        build("resnet34", pretrained=str(path))  # resnet18 file lacks resnet34's extra blocks
    with pytest.raises(MultError, match="architecture"):
        build("resnet101")


def test_from_config_object_and_defaults():
    class Cfg:
        depth = "resnet18"  # the older name of arch is still read
        last_stride = 2

    model = build_from(Cfg())
    assert model.arch == "resnet18" and model.trunk.layer4[0].conv1.stride == (2, 2)
    assert build_from({"arch": "resnet34"}).arch == "resnet34"


def build_from(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedWeightsWarning)
        return TwoStreamEncoder.from_config(cfg)


@pytest.mark.parametrize("flip", [False, True])
def test_stem_module_onnx_export_dynamic_batch_matches_ort(tmp_path, enc, flip):
    ort = pytest.importorskip("onnxruntime")
    enc.eval()
    stem = enc.stem_module("infrared", flip=flip).eval()
    path = tmp_path / "stem.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(stem, (images(2, 0),), str(path), dynamo=False, input_names=["images"],
                          output_names=["embeddings"], opset_version=17,
                          dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = images(5, 9)  # a batch size the export never saw
    (got,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = enc.embed(x, "infrared", flip=flip).numpy()
    assert got.shape == (5, 512)
    assert np.abs(got - want).max() < 1e-4
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
