"""Losses (METHOD.md §6.3, §6.4, §7) and samplers (§3.3) on hand-checkable cases."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from mult.train.losses import UnifiedSpace, amirl_loss, dcl_loss, oclr_term, soft_cross_entropy
from mult.train.memory import ClusterMemory
from mult.train.samplers import Groups, stage_one_batches, stage_two_batches


def test_soft_cross_entropy_by_hand():
    # logits (0, ln 3): softmax = (1/4, 3/4); target (1/2, 1/2) -> -(0.5 ln 1/4 + 0.5 ln 3/4)
    z = torch.tensor([[0.0, math.log(3.0)]])
    y = torch.tensor([[0.5, 0.5]])
    expected = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert math.isclose(soft_cross_entropy(z, y).item(), expected, rel_tol=1e-6)


def test_oclr_sharpens_target_by_ratio():
    # target logits (0.2 ln 3, 0) / 0.2 -> softmax (3/4, 1/4); prediction uniform -> SCE = ln 2
    p = torch.zeros(1, 2)
    q = torch.tensor([[0.2 * math.log(3.0), 0.0]])
    assert math.isclose(oclr_term(p, q, ratio=0.2).item(), math.log(2.0), rel_tol=1e-6)
    # prediction (ln 3, 0): -(3/4 ln 3/4 + 1/4 ln 1/4)
    p2 = torch.tensor([[math.log(3.0), 0.0]])
    assert math.isclose(oclr_term(p2, q).item(), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel_tol=1e-6)


def test_oclr_detach_controls_target_gradient():
    p = torch.randn(3, 4, requires_grad=True)
    q = torch.randn(3, 4, requires_grad=True)
    oclr_term(p, q, detach=False).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    q2 = torch.randn(3, 4, requires_grad=True)
    oclr_term(p, q2, detach=True).backward()
    assert q2.grad is None


def _memories(seed=0):
    g = torch.Generator().manual_seed(seed)
    kv, kr, d = 5, 4, 8
    names = {"v": kv, "r": kr, "rcm": kv, "vcm": kr, "va": kv, "ra": kr}
    return {n: ClusterMemory(torch.randn(k, d, generator=g)) for n, k in names.items()}


def test_dcl_loss_is_three_memory_cross_entropies():
    m = _memories()
    f = torch.randn(6, 8)
    lv, lr = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([0, 1, 2, 3, 0, 1])
    got = dcl_loss(m["v"], m["r"], f, f.flip(0), f * 2, lv, lr)
    want = F.cross_entropy(m["v"].logits(f), lv) + F.cross_entropy(m["v"].logits(f.flip(0)), lv) + F.cross_entropy(m["r"].logits(f * 2), lr)
    assert torch.allclose(got, want)


def _explicit_even(m, v0, v1, r, y_rgb, y_ir, y_ir_cm):
    """METHOD.md §6.3 and §7, even epochs, written out term by term."""
    ce, sce = soft_cross_entropy, oclr_term
    z = lambda name, x: m[name].logits(x)  # noqa: E731
    ms = ce(z("v", v0), y_rgb) + ce(z("v", v1), y_rgb) + ce(z("r", r), y_ir) + ce(z("rcm", r), y_ir_cm)
    ma = ce(z("va", v0), y_rgb) + ce(z("va", v1), y_rgb) + ce(z("va", r), y_ir_cm)
    oclr = (sce(z("va", v0), z("v", v1)) + sce(z("va", v1), z("v", v0)) + sce(z("va", r), z("rcm", r))
            + sce(z("va", v0), z("rcm", v1)) + sce(z("va", v1), z("rcm", v0)) + sce(z("va", r), z("v", r)))
    return ms + ma + oclr


def _explicit_odd(m, v0, v1, r, y_rgb, y_ir, y_rgb_cm):
    ce, sce = soft_cross_entropy, oclr_term
    z = lambda name, x: m[name].logits(x)  # noqa: E731
    ms = (ce(z("v", v0), y_rgb) + ce(z("v", v1), y_rgb) + ce(z("vcm", v0), y_rgb_cm) + ce(z("vcm", v1), y_rgb_cm)
          + ce(z("r", r), y_ir))
    ma = ce(z("ra", v0), y_rgb_cm) + ce(z("ra", v1), y_rgb_cm) + ce(z("ra", r), y_ir)
    oclr = (sce(z("ra", v0), z("vcm", v1)) + sce(z("ra", v1), z("vcm", v0)) + sce(z("ra", r), z("r", r))
            + sce(z("ra", v0), z("r", v1)) + sce(z("ra", v1), z("r", v0)) + sce(z("ra", r), z("vcm", r)))
    return ms + ma + oclr


def test_amirl_roles_reproduce_the_written_out_losses_for_both_parities():
    m = _memories()
    g = torch.Generator().manual_seed(1)
    v0, v1, r = (torch.randn(6, 8, generator=g) for _ in range(3))
    y_rgb = torch.softmax(torch.randn(6, 5, generator=g), 1)
    y_ir = torch.softmax(torch.randn(6, 4, generator=g), 1)
    y_rgb_cm = torch.softmax(torch.randn(6, 4, generator=g), 1)
    y_ir_cm = torch.softmax(torch.randn(6, 5, generator=g), 1)

    even = UnifiedSpace(visible=m["v"], infrared=m["rcm"], cross=m["va"], other=m["r"], other_is_visible=False)
    got = amirl_loss(even, v0, v1, r, y_rgb, y_ir_cm, y_ir)["total"]
    assert torch.allclose(got, _explicit_even(m, v0, v1, r, y_rgb, y_ir, y_ir_cm), atol=1e-5)

    odd = UnifiedSpace(visible=m["vcm"], infrared=m["r"], cross=m["ra"], other=m["v"], other_is_visible=True)
    got = amirl_loss(odd, v0, v1, r, y_rgb_cm, y_ir, y_rgb)["total"]
    assert torch.allclose(got, _explicit_odd(m, v0, v1, r, y_rgb, y_ir, y_rgb_cm), atol=1e-5)

    no_oclr = amirl_loss(odd, v0, v1, r, y_rgb_cm, y_ir, y_rgb, use_oclr=False)
    assert "oclr" not in no_oclr and torch.allclose(no_oclr["total"], no_oclr["intra"] + no_oclr["cross"])


def test_groups_skip_outliers():
    g = Groups.of(np.array([2, -1, 0, 2, 0, -1]))
    assert g.labels.tolist() == [0, 2]
    assert [m.tolist() for m in g.members] == [[2, 4], [0, 3]]


def test_stage_one_batches_balance_and_determinism():
    lv = np.repeat(np.arange(6), 5)
    lr = np.concatenate([np.repeat(np.arange(4), 3), [-1, -1]])
    b1 = stage_one_batches(lv, lr, p=3, k=4, steps=5, rng=np.random.default_rng(7))
    b2 = stage_one_batches(lv, lr, p=3, k=4, steps=5, rng=np.random.default_rng(7))
    assert b1 == b2 and len(b1) == 5
    for batch in b1:
        vis, ir = np.array(batch).T
        assert len(batch) == 12
        assert sorted(np.bincount(lv[vis], minlength=6)[np.unique(lv[vis])]) == [4, 4, 4]
        assert (lr[ir] >= 0).all()  # outliers never drawn in stage 1


def test_stage_two_batches_pair_both_modalities_of_each_identity():
    rng = np.random.default_rng(0)
    lv, lr = np.repeat(np.arange(4), 6), np.repeat(np.arange(3), 6)
    cm_v = rng.integers(0, 3, lv.size)  # visible instance -> infrared cluster
    cm_r = rng.integers(0, 4, lr.size)  # infrared instance -> visible cluster
    for batch in stage_two_batches(lv, lr, cm_v, cm_r, p=4, k=3, steps=4, rng=np.random.default_rng(1)):
        vis, ir = (np.array(x) for x in zip(*batch))
        for block in range(4):  # each block of k pairs shares one identity
            sl = slice(3 * block, 3 * block + 3)
            if block < 2:  # visible-anchored
                assert len(set(lv[vis[sl]])) == 1 and set(cm_r[ir[sl]]) == set(lv[vis[sl]])
            else:  # infrared-anchored
                assert len(set(lr[ir[sl]])) == 1 and set(cm_v[vis[sl]]) == set(lr[ir[sl]])
