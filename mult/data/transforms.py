"""Training augmentations and the train/test pipelines of MULT, exactly as METHOD.md §3.2, in pixel space.

The encoder normalises inside (``mult.model``), so every pipeline here ends with float RGB in [0, 1] pixel
space, [3, H, W]. The reference applies ChannelRandomErasing, ChannelExchange and ChannelAdapGray AFTER
``Normalize(ImageNet)``; here they act on pixels and are written so that the model's normalisation of our
output equals the reference op applied to the normalised image. With ``n_c = (p_c - mu_c) / sigma_c``:

* erasing with fill ``f_c`` in normalised space  ->  pixel fill ``mu_c + sigma_c * f_c``;
* any "set every normalised channel to ``g = sum_c w_c n_c``" (channel copy: ``w`` one-hot; grayscale:
  ``w = (0.2989, 0.5870, 0.1140)``)  ->  pixel ``p_d = mu_d + sigma_d * sum_c w_c (p_c - mu_c) / sigma_c``.

So after a channel op the three *normalised* channels are equal, not the three pixel channels, and pixel
values may leave [0, 1] (they stand for the reference's normalised values; nothing clamps them).

Randomness comes from torch: each op takes an optional ``torch.Generator`` (default: torch's global one,
which PyTorch seeds per DataLoader worker), and torchvision's crop/flip/jitter use the global one, so a
seeded worker is deterministic. Ops take one image [3, H, W] and never modify their input.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from PIL import Image
from torch import Tensor

from mult.compat import import_torchvision
from mult.errors import MultError
from mult.model import IMAGENET_MEAN, IMAGENET_STD

ERASE_FILL_NORMALISED: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)  # reference's fill, normalised space
GRAY_WEIGHTS: tuple[float, float, float] = (0.2989, 0.5870, 0.1140)
PAD = 10
STAGES = (1, 2)
STREAMS = ("visible", "visible_ca", "infrared")

Transform = Callable[[Tensor], Tensor]


# ---- the formulas (METHOD.md §3.2), each in one function ------------------------------------------------

def normalised_fill_to_pixel(fill: Sequence[float]) -> Tensor:
    """Pixel value whose ImageNet normalisation is ``fill`` (§3.2 ChannelRandomErasing): ``mu + sigma * fill``."""
    return torch.tensor(IMAGENET_MEAN) + torch.tensor(IMAGENET_STD) * torch.tensor(fill, dtype=torch.float32)


def normalised_channel_mix(img: Tensor, weights: Tensor) -> Tensor:
    """Set every normalised channel to ``g = sum_c w_c n_c``, computed and returned in pixel space (§3.2).

    ``p_d = mu_d + sigma_d * sum_c w_c (p_c - mu_c) / sigma_c``. One-hot ``weights`` is the reference's
    channel replication (ChannelExchange / ChannelAdapGray idx 0-2), ``GRAY_WEIGHTS`` its grayscale.
    ``img`` is [..., 3, H, W]; returns a new tensor.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=img.dtype, device=img.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img.dtype, device=img.device).view(3, 1, 1)
    w = weights.to(dtype=img.dtype, device=img.device).view(3, 1, 1)
    g = (w * (img - mean) / std).sum(dim=-3, keepdim=True)
    return mean + std * g


def arcsine_beta(u: Tensor) -> Tensor:
    """Beta(0.5, 0.5) samples from uniforms by inverse CDF: ``sin(pi u / 2)^2`` (§3.2 LinearTransform).

    Beta(1/2, 1/2) is the arcsine law, CDF ``(2/pi) asin(sqrt x)``; inverting it lets the draw come from a
    seeded ``torch.Generator`` (``torch.distributions.Beta`` only uses the global generator).
    """
    return torch.sin(0.5 * math.pi * u).pow(2)


def erase_box(img: Tensor, top: int, left: int, height: int, width: int, fill: Tensor) -> Tensor:
    """Copy of ``img`` [3, H, W] with rows top:top+height, columns left:left+width set to per-channel ``fill``."""
    out = img.clone()
    out[:, top:top + height, left:left + width] = fill.to(out).view(3, 1, 1)
    return out


def _uniform(n: int, low: float, high: float, generator: Optional[torch.Generator]) -> Tensor:
    return torch.empty(n, dtype=torch.float64).uniform_(low, high, generator=generator)


def sample_boxes(n: int, img_h: int, img_w: int, area: tuple[float, float], aspect_min: float,
                 generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``n`` candidate rectangles drawn as the reference's random-erasing attempts (§3.2), all at once.

    Target area ~ U(area) * H * W, aspect ~ U(aspect_min, 1 / aspect_min), ``h = round(sqrt(A r))``,
    ``w = round(sqrt(A / r))``; a candidate is valid when ``h < H`` and ``w < W``, and its corner is uniform
    over the valid positions (the reference's inclusive ``randint(0, H - h)``). Returns (valid, top, left, h, w).
    """
    target = _uniform(n, area[0], area[1], generator) * (img_h * img_w)
    ratio = _uniform(n, aspect_min, 1.0 / aspect_min, generator)
    h = torch.round(torch.sqrt(target * ratio)).long()  # round half to even vs Python's round: same rule
    w = torch.round(torch.sqrt(target / ratio)).long()
    valid = (h < img_h) & (w < img_w)
    corner = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = (corner[:, 0] * (img_h - h + 1).clamp(min=1)).long()
    left = (corner[:, 1] * (img_w - w + 1).clamp(min=1)).long()
    return valid, top, left, h, w


def _coin(p: float, generator: Optional[torch.Generator]) -> bool:
    """True with probability ``p`` (the reference's ``not random.uniform(0, 1) > p``)."""
    return bool(torch.rand((), generator=generator) <= p)


# ---- the ops ------------------------------------------------------------------------------------------

class ChannelRandomErasing:
    """Random erasing (Zhong et al.) with the reference's normalised fill (0.4914, 0.4822, 0.4465), §3.2.

    With probability ``p``: up to ``attempts`` (100) rectangles are drawn; the first that fits is filled
    with ``normalised_fill_to_pixel(fill)`` so that after the model's normalisation it reads ``fill``.
    """

    def __init__(self, p: float = 0.5, area: tuple[float, float] = (0.02, 0.4), aspect_min: float = 0.3,
                 fill: Sequence[float] = ERASE_FILL_NORMALISED, attempts: int = 100,
                 generator: Optional[torch.Generator] = None) -> None:
        self.p, self.area, self.aspect_min, self.attempts = p, area, aspect_min, attempts
        self.fill_pixel = normalised_fill_to_pixel(fill)
        self.generator = generator

    def __call__(self, img: Tensor) -> Tensor:
        if not _coin(self.p, self.generator):
            return img
        valid, top, left, h, w = sample_boxes(self.attempts, img.shape[-2], img.shape[-1], self.area,
                                              self.aspect_min, self.generator)
        hits = torch.nonzero(valid)
        if hits.numel() == 0:
            return img
        i = int(hits[0])
        return erase_box(img, int(top[i]), int(left[i]), int(h[i]), int(w[i]), self.fill_pixel)


class ChannelExchange:
    """The reference's ``ChannelExchange(gray=2)``, §3.2: ``idx = randint(0, 2)`` (inclusive) picks R, G or B
    and its *normalised* value is copied to all three channels. With gray = 2 the grayscale branch is never
    reached, so it is always single-channel replication.
    """

    def __init__(self, generator: Optional[torch.Generator] = None) -> None:
        self.generator = generator

    def __call__(self, img: Tensor) -> Tensor:
        idx = int(torch.randint(0, 3, (), generator=self.generator))
        return normalised_channel_mix(img, torch.eye(3)[idx])


class ChannelAdapGray:
    """The reference's ``ChannelAdapGray(p)``, §3.2: ``idx = randint(0, 3)`` (inclusive); 0-2 replicate that
    normalised channel; 3 turns the normalised image to grayscale ``0.2989 R + 0.5870 G + 0.1140 B`` with
    probability ``p`` and otherwise leaves it unchanged.
    """

    def __init__(self, p: float = 0.5, generator: Optional[torch.Generator] = None) -> None:
        self.p = p
        self.generator = generator

    def __call__(self, img: Tensor) -> Tensor:
        idx = int(torch.randint(0, 4, (), generator=self.generator))
        if idx < 3:
            return normalised_channel_mix(img, torch.eye(3)[idx])
        if _coin(self.p, self.generator):
            return normalised_channel_mix(img, torch.tensor(GRAY_WEIGHTS))
        return img


class LinearTransform:
    """The reference's ``LinearTransform(p)``, §3.2, applied to [0, 1] pixels (before Normalize, as there).

    With probability ``p``, repeat: draw a rectangle as random erasing does; for each channel whose maximum
    in it is > 0, scale the rectangle by ``alpha = Beta(0.5, 0.5) / max`` and multiply a running scale map
    ``M`` there by ``alpha``; stop once ``min(M) <= tmin``.

    Bound: the reference loops ``while True``, which never ends when every rectangle it draws is black
    (e.g. an all-black image). Here at most ``max_rounds`` (100) rectangles are drawn, then the image is
    returned as it is. Simulating the reference rule on 288x144 and 72x36 images (uniform noise, sparse
    dark images, half-black images; 200-300 runs each) it always stopped within 35 rounds (median 11-14), so
    the bound only changes degenerate inputs.
    """

    def __init__(self, p: float = 0.9, area: tuple[float, float] = (0.02, 0.4), aspect_min: float = 0.3,
                 tmin: float = 1e-6, max_rounds: int = 100, generator: Optional[torch.Generator] = None) -> None:
        self.p, self.area, self.aspect_min, self.tmin, self.max_rounds = p, area, aspect_min, tmin, max_rounds
        self.generator = generator

    def __call__(self, img: Tensor) -> Tensor:
        if not _coin(self.p, self.generator):
            return img
        out = img.clone()
        scale = torch.ones_like(img)
        # All draws up front (vectorised); the rounds themselves are sequential by nature (each reads the last).
        valid, top, left, h, w = sample_boxes(self.max_rounds, img.shape[-2], img.shape[-1], self.area,
                                              self.aspect_min, self.generator)
        targets = arcsine_beta(torch.rand(self.max_rounds, img.shape[0], generator=self.generator)).to(img.dtype)
        for r in torch.nonzero(valid).flatten().tolist():
            rows = slice(int(top[r]), int(top[r] + h[r]))
            cols = slice(int(left[r]), int(left[r] + w[r]))
            alpha = scale_to_target(out[:, rows, cols], targets[r])
            out[:, rows, cols] *= alpha
            scale[:, rows, cols] *= alpha
            if bool(scale[:, rows, cols].min() <= self.tmin):  # M only changed inside this box
                break
        return out


def scale_to_target(region: Tensor, target: Tensor) -> Tensor:
    """Per-channel factor [C, 1, 1] of LinearTransform (§3.2): ``target / max(region)``; 1 where the max is 0.

    Applying it makes each channel's maximum in the region equal to its ``target`` (a Beta(0.5, 0.5) draw).
    """
    peak = region.amax(dim=(-2, -1))
    alpha = torch.where(peak > 0, target / peak.clamp(min=torch.finfo(region.dtype).tiny), torch.ones_like(peak))
    return alpha.view(-1, 1, 1)


# ---- pipelines ----------------------------------------------------------------------------------------

class StageTransforms(NamedTuple):
    """The three training streams of one stage: visible view 0, visible view 1 ("ca") and infrared."""

    visible: Callable[[Image.Image], Tensor]
    visible_ca: Callable[[Image.Image], Tensor]
    infrared: Callable[[Image.Image], Tensor]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Decoders hand over RGB; a grayscale/thermal file opened elsewhere is expanded to 3 equal channels."""
    return img if img.mode == "RGB" else img.convert("RGB")


def _check_size(height: int, width: int) -> None:
    if int(height) <= 0 or int(width) <= 0:
        raise MultError(f"image size must be positive, got height={height} width={width}")


def _geometry(height: int, width: int, pad: int, jitter: bool) -> list[Callable]:
    """Resize -> Pad -> RandomCrop -> RandomHorizontalFlip [-> ColorJitter] -> ToTensor, on PIL like §3.2."""
    T = import_torchvision().transforms
    steps: list[Callable] = [_to_rgb, T.Resize((height, width)), T.Pad(pad), T.RandomCrop((height, width)),
                             T.RandomHorizontalFlip(p=0.5)]
    if jitter:
        steps.append(T.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5))
    steps.append(T.ToTensor())
    return steps


def train_transform(stage: int, stream: str, height: int = 288, width: int = 144,
                    pad: int = PAD) -> Callable[[Image.Image], Tensor]:
    """The §3.2 pipeline for one stream of one stage: PIL RGB image -> float [3, height, width] pixels.

    ====================  ==========================================  ================================
    stream                stage 1                                     stage 2
    ====================  ==========================================  ================================
    ``visible``           LinearTransform(0.9), CRE(0.9)              CRE(0.5)
    ``visible_ca``        ColorJitter(.5,.5,.5,.5), CRE(0.9), CE(2)   CRE(0.5), CE(2)
    ``infrared``          ColorJitter(.5,.5,.5,.5), CRE(0.9), CAG(.5)  CRE(0.5), CAG(0.5)
    ====================  ==========================================  ================================
    """
    if stage not in STAGES:
        raise MultError(f"training stage must be 1 or 2, got {stage!r}")
    if stream not in STREAMS:
        raise MultError(f"unknown training stream {stream!r}: use one of {', '.join(STREAMS)}")
    _check_size(height, width)
    p_erase = 0.9 if stage == 1 else 0.5
    jitter = stage == 1 and stream != "visible"
    ops: list[Callable] = []
    if stage == 1 and stream == "visible":
        ops.append(LinearTransform(p=0.9))
    ops.append(ChannelRandomErasing(p=p_erase))
    if stream == "visible_ca":
        ops.append(ChannelExchange())
    elif stream == "infrared":
        ops.append(ChannelAdapGray(p=0.5))
    return import_torchvision().transforms.Compose(_geometry(int(height), int(width), pad, jitter) + ops)


def train_transforms(stage: int, height: int = 288, width: int = 144) -> StageTransforms:
    """All three stream pipelines of ``stage`` (1: DCL, 2: MULT + AMIRL)."""
    return StageTransforms(*(train_transform(stage, s, height, width) for s in STREAMS))


def eval_transform(height: int = 288, width: int = 144) -> Callable[[Image.Image], Tensor]:
    """Extraction / test pipeline (§3.2): Resize -> ToTensor; no randomness (flip averaging is in the model)."""
    _check_size(height, width)
    T = import_torchvision().transforms
    return T.Compose([_to_rgb, T.Resize((int(height), int(width))), T.ToTensor()])

