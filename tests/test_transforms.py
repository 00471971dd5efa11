"""Augmentations of METHOD.md §3.2 in pixel space: each op by hand, its equivalence with the reference op
applied after ImageNet normalisation, and the pipelines' shape, dtype and determinism."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from mult.data.transforms import (
    ERASE_FILL_NORMALISED,
    GRAY_WEIGHTS,
    STREAMS,
    ChannelAdapGray,
    ChannelExchange,
    ChannelRandomErasing,
    LinearTransform,
    arcsine_beta,
    erase_box,
    eval_transform,
    normalised_channel_mix,
    normalised_fill_to_pixel,
    sample_boxes,
    scale_to_target,
    train_transform,
    train_transforms,
)
from mult.errors import MultError
from mult.model import IMAGENET_MEAN, IMAGENET_STD

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def normalise(img: torch.Tensor) -> torch.Tensor:
    """What the encoder does to its input (mult.model): (p - mean) / std."""
    return (img - MEAN) / STD


# Direct re-statements of the reference ops, acting IN PLACE on a NORMALISED image as ChannelAug.py does.
def ref_erase(n, top, left, h, w, fill=ERASE_FILL_NORMALISED):
    for c in range(3):
        n[c, top:top + h, left:left + w] = fill[c]
    return n


def ref_copy_channel(n, idx):
    for c in range(3):
        if c != idx:
            n[c, :, :] = n[idx, :, :]
    return n


def ref_gray(n):
    tmp = 0.2989 * n[0, :, :] + 0.5870 * n[1, :, :] + 0.1140 * n[2, :, :]
    n[0, :, :] = tmp
    n[1, :, :] = tmp
    n[2, :, :] = tmp
    return n


def rand_img(seed: int, h: int = 24, w: int = 12) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- formulas by hand --------------------------------------------------------------------------------

def test_fill_to_pixel_by_hand():
    # mu + sigma * f: 0.485 + 0.229*0.4914, 0.456 + 0.224*0.4822, 0.406 + 0.225*0.4465
    expected = torch.tensor([0.5975306, 0.5640128, 0.5064625])
    assert torch.allclose(normalised_fill_to_pixel(ERASE_FILL_NORMALISED), expected, atol=1e-6)


def test_gray_mix_by_hand():
    # Pixels whose normalised values are (1, 2, 3) everywhere: gray = 0.2989*1 + 0.5870*2 + 0.1140*3 = 1.8149.
    n = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1).expand(3, 2, 2)
    out = normalised_channel_mix(MEAN + STD * n, torch.tensor(GRAY_WEIGHTS))
    assert torch.allclose(normalise(out), torch.full((3, 2, 2), 1.8149), atol=1e-5)
    # In pixel space the channels differ: p_d = mu_d + sigma_d * 1.8149.
    assert torch.allclose(out[:, 0, 0], torch.tensor([0.485 + 0.229 * 1.8149, 0.456 + 0.224 * 1.8149,
                                                      0.406 + 0.225 * 1.8149]), atol=1e-5)


def test_channel_copy_by_hand():
    # Copy G (c=1) to all: p_d = mu_d + sigma_d * (p_G - mu_G) / sigma_G. With p_G = 0.456 + 0.224 -> n_G = 1.
    img = torch.tensor([0.1, 0.456 + 0.224, 0.9]).view(3, 1, 1)
    out = normalised_channel_mix(img, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(out.flatten(), torch.tensor([0.485 + 0.229, 0.456 + 0.224, 0.406 + 0.225]), atol=1e-6)


def test_arcsine_beta_by_hand_and_distribution():
    assert torch.allclose(arcsine_beta(torch.tensor([0.0, 0.5, 1.0])), torch.tensor([0.0, 0.5, 1.0]), atol=1e-7)
    # sin(pi/12)^2 = (1 - cos(pi/6)) / 2
    assert math.isclose(float(arcsine_beta(torch.tensor(1 / 6, dtype=torch.float64))),
                        (1 - math.cos(math.pi / 6)) / 2, rel_tol=1e-12)
    draws = arcsine_beta(torch.rand(20000, generator=gen(0), dtype=torch.float64)).numpy()
    assert stats.kstest(draws, stats.beta(0.5, 0.5).cdf).pvalue > 0.01
    assert stats.kstest(draws, stats.uniform().cdf).pvalue < 1e-6  # the test can tell a wrong law


def test_scale_to_target_by_hand():
    region = torch.tensor([[[0.2, 0.4]], [[0.0, 0.0]], [[0.5, 0.25]]])
    alpha = scale_to_target(region, torch.tensor([0.5, 0.3, 0.1]))
    # channel 0: 0.5/0.4; channel 1 is black -> untouched (reference skips max <= 0); channel 2: 0.1/0.5
    assert torch.allclose(alpha.flatten(), torch.tensor([1.25, 1.0, 0.2]))
    assert torch.allclose((region * alpha)[0], torch.tensor([[0.25, 0.5]]))


# ---- equivalence with the reference ops in normalised space --------------------------------------------

def test_erase_equals_reference_after_normalisation():
    img = rand_img(1)
    out = erase_box(img, 3, 2, 5, 4, normalised_fill_to_pixel(ERASE_FILL_NORMALISED))
    assert torch.allclose(normalise(out), ref_erase(normalise(img), 3, 2, 5, 4), atol=1e-6)


@pytest.mark.parametrize("idx", [0, 1, 2])
def test_channel_copy_equals_reference_after_normalisation(idx):
    img = rand_img(2)
    out = normalised_channel_mix(img, torch.eye(3)[idx])
    assert torch.allclose(normalise(out), ref_copy_channel(normalise(img), idx), atol=1e-6)


def test_gray_equals_reference_after_normalisation():
    img = rand_img(3)
    out = normalised_channel_mix(img, torch.tensor(GRAY_WEIGHTS))
    assert torch.allclose(normalise(out), ref_gray(normalise(img)), atol=1e-6)


def test_composed_erase_then_exchange_equals_reference():
    # The "ca" order: erase then channel copy, both in normalised space in the reference.
    img = rand_img(4)
    fill = normalised_fill_to_pixel(ERASE_FILL_NORMALISED)
    ours = normalised_channel_mix(erase_box(img, 0, 1, 6, 5, fill), torch.eye(3)[2])
    ref = ref_copy_channel(ref_erase(normalise(img), 0, 1, 6, 5), 2)
    assert torch.allclose(normalise(ours), ref, atol=1e-6)


# ---- the random ops ----------------------------------------------------------------------------------

def test_random_erasing_region_fill_and_area_bounds():
    fill_n = torch.tensor(ERASE_FILL_NORMALISED)
    h_img, w_img = 48, 24
    for seed in range(30):
        img = rand_img(seed, h_img, w_img)
        before = img.clone()
        out = ChannelRandomErasing(p=1.0, generator=gen(seed))(img)
        assert torch.equal(img, before)  # input untouched
        changed = (out != img).any(dim=0)
        rows, cols = torch.nonzero(changed, as_tuple=True)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        h, w = int(bottom - top), int(right - left)
        assert int(changed.sum()) == h * w  # one filled rectangle
        region = normalise(out)[:, top:bottom, left:right]
        assert torch.allclose(region, fill_n.view(3, 1, 1).expand_as(region), atol=1e-6)
        # area 0.02-0.4 and aspect 0.3-3.3 of the target box, up to rounding of h and w to integers
        area = h * w / (h_img * w_img)
        assert 0.02 - (h + w + 1) / (h_img * w_img) <= area <= 0.4 + (h + w + 1) / (h_img * w_img)
        assert h < h_img and w < w_img


def test_random_erasing_probability():
    img = rand_img(0)
    assert torch.equal(ChannelRandomErasing(p=0.0, generator=gen(0))(img), img)
    erase = ChannelRandomErasing(p=0.5, generator=gen(1))
    hits = sum(not torch.equal(erase(img), img) for _ in range(400))
    assert 160 < hits < 240  # Binomial(400, 0.5): +-4 sigma


def test_sample_boxes_area_and_aspect_law():
    valid, top, left, h, w = sample_boxes(4000, 288, 144, (0.02, 0.4), 0.3, gen(0))
    h, w, top, left = h[valid].double(), w[valid].double(), top[valid], left[valid]
    assert valid.float().mean() > 0.5
    area = h * w / (288 * 144)
    assert area.min() > 0.015 and area.max() < 0.42
    assert (h / w).min() > 0.25 and (h / w).max() < 3.6
    assert (top >= 0).all() and (top + h <= 288).all() and (left >= 0).all() and (left + w <= 144).all()
    assert top.min() == 0  # corner covers the inclusive range, from 0 ...
    assert (top + h == 288).any()  # ... to H - h


def test_channel_exchange_makes_normalised_channels_equal_and_never_gray():
    img = rand_img(5)
    n_img = normalise(img)
    seen = set()
    for seed in range(60):
        n_out = normalise(ChannelExchange(generator=gen(seed))(img))
        assert torch.allclose(n_out[0], n_out[1], atol=1e-6) and torch.allclose(n_out[1], n_out[2], atol=1e-6)
        idx = [c for c in range(3) if torch.allclose(n_out[0], n_img[c], atol=1e-6)]
        assert len(idx) == 1  # a copy of one channel, not a grayscale mix
        seen.add(idx[0])
    assert seen == {0, 1, 2}


def test_channel_adap_gray_outcome_frequencies():
    img = rand_img(6)
    n_img = normalise(img)
    gray = ref_gray(normalise(img))
    counts = {"same": 0, "gray": 0, 0: 0, 1: 0, 2: 0}
    op = ChannelAdapGray(p=0.5, generator=gen(7))
    trials = 800
    for _ in range(trials):
        n_out = normalise(op(img))
        if torch.allclose(n_out, n_img, atol=1e-6):
            counts["same"] += 1
        elif torch.allclose(n_out, gray, atol=1e-6):
            counts["gray"] += 1
        else:
            idx = [c for c in range(3) if torch.allclose(n_out, n_img[c].expand(3, -1, -1), atol=1e-6)]
            assert len(idx) == 1
            counts[idx[0]] += 1
    # idx 0..3 uniform; idx 3 -> gray with p=0.5: expected 1/4 each copy, 1/8 gray, 1/8 unchanged.
    for key, prob in ((0, 0.25), (1, 0.25), (2, 0.25), ("gray", 0.125), ("same", 0.125)):
        sigma = math.sqrt(trials * prob * (1 - prob))
        assert abs(counts[key] - trials * prob) < 4 * sigma, (key, counts)


def test_linear_transform_stops_at_tmin():
    img = rand_img(8, 72, 36) * 0.8 + 0.1  # strictly positive, so out / in is the scale map M
    for seed in range(5):
        out = LinearTransform(p=1.0, generator=gen(seed))(img)
        m = out / img
        assert m.min() <= 1e-6 * 1.001  # stopped because some accumulated scale reached tmin
        assert (out <= 1.0 + 1e-6).all()  # every rescaled box has its max at a Beta draw <= 1
        assert not torch.equal(out, img)


def test_linear_transform_is_bounded_on_black_image():
    black = torch.zeros(3, 16, 8)
    out = LinearTransform(p=1.0, max_rounds=100, generator=gen(0))(black)  # reference would spin forever
    assert torch.equal(out, black)


def test_linear_transform_probability_zero_is_identity():
    img = rand_img(9)
    assert torch.equal(LinearTransform(p=0.0, generator=gen(0))(img), img)


# ---- pipelines ---------------------------------------------------------------------------------------

def pil_image(seed: int, h: int = 50, w: int = 22, mode: str = "RGB") -> Image.Image:
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr, "RGB")
    return img if mode == "RGB" else img.convert(mode)


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("stream", STREAMS)
def test_pipeline_shape_dtype_and_determinism(stage, stream):
    t = train_transform(stage, stream, height=32, width=16)
    img = pil_image(0)
    torch.manual_seed(123)
    a = t(img)
    torch.manual_seed(123)
    b = t(img)
    assert a.shape == (3, 32, 16) and a.dtype == torch.float32
    assert torch.equal(a, b)
    torch.manual_seed(321)
    outs = [t(img) for _ in range(4)]
    assert any(not torch.equal(a, o) for o in outs)


def test_stage_transforms_bundle_and_grayscale_input():
    bundle = train_transforms(2, height=32, width=16)
    assert bundle._fields == ("visible", "visible_ca", "infrared")
    torch.manual_seed(0)
    out = bundle.infrared(pil_image(1, mode="L"))  # a one-channel thermal file comes out as 3 channels
    assert out.shape == (3, 32, 16)


def test_eval_transform_is_resize_only():
    img = pil_image(2)
    out = eval_transform(32, 16)(img)
    expected = torch.from_numpy(np.asarray(img.resize((16, 32), Image.BILINEAR), dtype=np.float32) / 255.0)
    assert out.shape == (3, 32, 16) and out.dtype == torch.float32
    assert torch.allclose(out, expected.permute(2, 0, 1), atol=1 / 255 + 1e-6)
    torch.manual_seed(5)
    assert torch.equal(eval_transform(32, 16)(img), out)  # no randomness


def test_stage_one_visible_pipeline_differs_from_stage_two():
    # Stage 1 adds LinearTransform(0.9) and erases with p=0.9: the same seed must give a different image.
    img = pil_image(3)
    torch.manual_seed(7)
    a = train_transform(1, "visible", 32, 16)(img)
    torch.manual_seed(7)
    b = train_transform(2, "visible", 32, 16)(img)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("kwargs", [dict(stage=3, stream="visible"), dict(stage=1, stream="thermal"),
                                    dict(stage=1, stream="visible", height=0)])
def test_bad_pipeline_arguments_raise_multerror(kwargs):
    with pytest.raises(MultError):
        train_transform(**kwargs)
