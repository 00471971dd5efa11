"""Cluster memory (METHOD.md §6.1-6.2): logits and the sequential momentum update, checked by hand; when the
writes happen (memory_update "official": inside backward, newest node first, against the official CM re-stated
here; "after-step": the behaviour before issue 15); and that two ranks write what one process would."""

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mult.train.losses import UnifiedSpace, amirl_loss, dcl_loss, oclr_term, soft_cross_entropy
from mult.train.memory import ClusterMemory, memory_logits, occurrence_rank


def test_logits_are_cosine_over_temperature():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[3.0, 4.0]])  # normalised: (0.6, 0.8)
    z = memory_logits(feats, protos, temp=0.05)
    assert torch.allclose(z, torch.tensor([[0.6 / 0.05, 0.8 / 0.05]]))


def test_occurrence_rank_counts_earlier_equal_labels():
    labels = torch.tensor([2, 0, 2, 2, 1, 0])
    assert occurrence_rank(labels).tolist() == [0, 0, 1, 2, 0, 1]


def test_update_matches_sequential_reference_by_hand():
    # One slot at (1, 0); two samples of that slot: (0, 1) then (0, 1); m = 0.1.
    mem = ClusterMemory(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), momentum=0.1)
    mem.update(torch.tensor([[0.0, 2.0], [0.0, 5.0]]), torch.tensor([0, 0]))
    # step 1: 0.1*(1,0) + 0.9*(0,1) = (0.1, 0.9) -> /sqrt(0.82)
    a = torch.tensor([0.1, 0.9]) / math.sqrt(0.82)
    # step 2: 0.1*a + 0.9*(0,1), then normalise
    b = 0.1 * a + torch.tensor([0.0, 0.9])
    b = b / b.norm()
    assert torch.allclose(mem.features[0], b, atol=1e-6)
    assert torch.allclose(mem.features[1], torch.tensor([0.0, 1.0]))  # untouched


def test_update_equals_per_sample_loop_on_random_batch():
    torch.manual_seed(0)
    protos = torch.randn(5, 8)
    feats, labels = torch.randn(40, 8), torch.randint(-1, 5, (40,))
    mem = ClusterMemory(protos, momentum=0.1)
    mem.update(feats, labels)

    ref = torch.nn.functional.normalize(protos, dim=1)
    for x, y in zip(torch.nn.functional.normalize(feats, dim=1), labels):
        if y < 0:
            continue
        ref[y] = 0.1 * ref[y] + 0.9 * x
        ref[y] /= ref[y].norm()
    assert torch.allclose(mem.features, ref, atol=1e-6)


def test_state_dict_round_trip():
    mem = ClusterMemory(torch.randn(3, 4), temp=0.07, momentum=0.2)
    back = ClusterMemory.from_state_dict(mem.state_dict())
    assert torch.equal(back.features, mem.features) and back.temp == 0.07 and back.momentum == 0.2


# ---- when the memories are written (METHOD.md §6.1 "Order and timing", issue 15) ------------------------------


class ReferenceCM(torch.autograd.Function):
    """The official code's ``CM`` re-stated as the yardstick: forward x·Mᵀ with M held by reference; backward
    the input gradient against M as it is when the node runs, then a per-sample in-place momentum write."""

    @staticmethod
    def forward(ctx, inputs, targets, features, momentum):
        ctx.features, ctx.momentum = features, momentum
        ctx.save_for_backward(inputs, targets)
        return inputs.mm(features.t())

    @staticmethod
    def backward(ctx, grad_outputs):
        inputs, targets = ctx.saved_tensors
        grad_inputs = grad_outputs.mm(ctx.features)
        for x, y in zip(inputs, targets):
            ctx.features[y] = ctx.momentum * ctx.features[y] + (1.0 - ctx.momentum) * x
            ctx.features[y] /= ctx.features[y].norm()
        return grad_inputs, None, None, None


def reference_read(bank: torch.Tensor, features, labels=None, momentum=0.1, temp=0.05):
    """The official ``ClusterMemory.forward``: normalise, then CM (labelled) or a plain product (OCLR targets)."""
    x = torch.nn.functional.normalize(features, dim=1)
    if labels is None:
        return x.mm(bank.t()) / temp
    return ReferenceCM.apply(x, labels, bank, momentum) / temp


def angle(degrees: float) -> torch.Tensor:
    rad = math.radians(degrees)
    return torch.tensor([math.cos(rad), math.sin(rad)])


def leaf(*rows: torch.Tensor) -> torch.Tensor:
    return torch.stack(rows).requires_grad_(True)


def test_official_writes_run_newest_first_and_later_nodes_see_the_overwritten_memory():
    # Memory A = [0°, 90°], B = [0°], m = 0.5 (the write is the bisector of two unit vectors), τ = 1, linear losses
    # so that dL/dz = W. Read order: A(x1), A(x2), B(x3); autograd runs B(x3), then A(x2), then A(x1).
    a = ClusterMemory(torch.stack([angle(0), angle(90)]), temp=1.0, momentum=0.5)
    b = ClusterMemory(angle(0)[None], temp=1.0, momentum=0.5)
    x1 = leaf(angle(90))  # label 0
    x2 = leaf(angle(90), angle(0))  # two samples of label 0 in one batch: they compose in batch order
    x3 = leaf(angle(90))  # label 0 of B
    w1, w2, w3 = torch.tensor([[1.0, 0.0]]), torch.eye(2), torch.tensor([[1.0]])
    loss = ((w1 * a.logits(x1, torch.tensor([0]))).sum() + (w2 * a.logits(x2, torch.tensor([0, 0]))).sum()
            + (w3 * b.logits(x3, torch.tensor([0]))).sum())
    assert torch.equal(a.features, torch.stack([angle(0), angle(90)]))  # nothing is written before backward
    loss.backward()

    # A(x2) first: A[0] 0° -> bisector with 90° = 45° -> bisector with 0° = 22.5°; then A(x1): with 90° -> 56.25°
    assert torch.allclose(a.features, torch.stack([angle(56.25), angle(90)]), atol=1e-6)
    assert torch.allclose(b.features, angle(45)[None], atol=1e-6)
    # input gradient = (I - x xᵀ)(W M) at unit x (the normalisation's Jacobian); M as read when the node runs:
    assert torch.allclose(x2.grad, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), atol=1e-6)  # A before the step
    assert torch.allclose(x1.grad, torch.tensor([[math.cos(math.radians(22.5)), 0.0]]), atol=1e-6)  # after x2
    assert torch.allclose(x3.grad, torch.tensor([[1.0, 0.0]]), atol=1e-6)


def test_official_writes_and_gradients_equal_the_reference_cm():
    # the same three terms with random features, repeated labels and non-linear losses, against the re-stated CM
    g = torch.Generator().manual_seed(3)
    protos_a, protos_b = torch.randn(4, 3, generator=g), torch.randn(3, 3, generator=g)
    feats = [torch.randn(6, 3, generator=g) for _ in range(3)]
    labels = [torch.tensor([1, 1, 0, 3, 1, 0]), torch.tensor([0, 2, 2, 2, 3, 1]), torch.tensor([2, 2, 0, 1, 0, 2])]

    def run(read_a, read_b):
        inputs = [f.clone().requires_grad_(True) for f in feats]
        z = [read_a(inputs[0], labels[0]), read_a(inputs[1], labels[1]), read_b(inputs[2], labels[2])]
        target = read_a(inputs[2], None)  # an OCLR-like plain read, last
        loss = (torch.nn.functional.cross_entropy(z[0], labels[0]) + torch.nn.functional.cross_entropy(z[1], labels[1])
                + torch.nn.functional.cross_entropy(z[2], labels[2]) + (z[1] * target.softmax(1)).mean())
        loss.backward()
        return [x.grad for x in inputs]

    a, b = ClusterMemory(protos_a, momentum=0.1), ClusterMemory(protos_b, momentum=0.5)
    ours = run(a.logits, b.logits)
    ref_a, ref_b = ClusterMemory(protos_a).features, ClusterMemory(protos_b).features  # unit rows, as initialised
    want = run(lambda f, y: reference_read(ref_a, f, y, 0.1), lambda f, y: reference_read(ref_b, f, y, 0.5))
    assert torch.allclose(a.features, ref_a, atol=1e-6) and torch.allclose(b.features, ref_b, atol=1e-6)
    for got, expected in zip(ours, want):
        assert torch.allclose(got, expected, atol=1e-5)


def test_a_plain_read_before_a_labelled_one_is_refused_not_silently_wrong():
    # its backward runs after the labelled node's write: autograd's version check stops it
    mem = ClusterMemory(torch.eye(3))
    x = torch.randn(2, 3, requires_grad=True)
    loss = mem.logits(x).sum() + mem.logits(x, torch.tensor([0, 1])).sum()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_after_step_reads_the_pre_step_memory_and_writes_in_forward_order_when_asked():
    # the behaviour before issue 15: gradients as with a read-only memory, writes v0 then v1 at write_pending
    g = torch.Generator().manual_seed(5)
    protos = torch.randn(3, 4, generator=g)
    v0, v1 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    lab = torch.tensor([0, 2, 0, 1, 0])
    mem, plain = ClusterMemory(protos, update="after-step"), ClusterMemory(protos)
    x0, x1 = v0.clone().requires_grad_(True), v1.clone().requires_grad_(True)
    (mem.logits(x0, lab).logsumexp(1).sum() + mem.logits(x1, lab).logsumexp(1).sum()).backward()
    p0, p1 = v0.clone().requires_grad_(True), v1.clone().requires_grad_(True)
    (plain.logits(p0).logsumexp(1).sum() + plain.logits(p1).logsumexp(1).sum()).backward()
    assert torch.equal(x0.grad, p0.grad) and torch.equal(x1.grad, p1.grad)
    assert torch.equal(mem.features, plain.features)  # nothing written yet
    mem.write_pending()
    plain.update(torch.cat([v0, v1]), torch.cat([lab, lab]))  # the old trainer's call
    assert torch.allclose(mem.features, plain.features, atol=1e-7)
    mem.write_pending()  # nothing left to write
    assert torch.allclose(mem.features, plain.features, atol=1e-7)


def test_unknown_update_mode_is_refused():
    with pytest.raises(ValueError, match="after-step"):
        ClusterMemory(torch.eye(2), update="later")


# ---- the whole stage-2 step against the official trainer's reads, written out with the re-stated CM ----------

KV, KR, D, B = 5, 4, 8, 6


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    protos = {n: torch.randn(KV if n in ("v", "rcm", "va") else KR, D, generator=g)
              for n in ("v", "r", "rcm", "vcm", "va", "ra")}
    feats = [torch.randn(B, D, generator=g) for _ in range(3)]  # v0, v1, r
    hard = {"l1": torch.randint(0, KV, (B,), generator=g), "l2": torch.randint(0, KR, (B,), generator=g),
            "cm1": torch.randint(0, KR, (B,), generator=g), "cm2": torch.randint(0, KV, (B,), generator=g)}
    soft = {n: torch.softmax(torch.randn(B, KV if n in ("y1", "cm_y2") else KR, generator=g), 1)
            for n in ("y1", "y2", "cm_y1", "cm_y2")}
    return protos, feats, hard, soft


def _official_even(read, v0, v1, r, h, y):
    """The official trainer's even-epoch step (METHOD.md §6.3, §7): its reads in its order, then its loss."""
    ce, sce = soft_cross_entropy, oclr_term
    z_v_v0, z_v_v1 = read("v", v0, h["l1"]), read("v", v1, h["l1"])
    z_rcm_r, z_r_r = read("rcm", r, h["cm2"]), read("r", r, h["l2"])
    z_va_v0, z_va_v1, z_va_r = read("va", v0, h["l1"]), read("va", v1, h["l1"]), read("va", r, h["cm2"])
    t_rcm_v0, t_rcm_v1, t_v_r = read("rcm", v0), read("rcm", v1), read("v", r)
    return (ce(z_v_v0, y["y1"]) + ce(z_v_v1, y["y1"]) + ce(z_r_r, y["y2"]) + ce(z_rcm_r, y["cm_y2"])
            + ce(z_va_v0, y["y1"]) + ce(z_va_v1, y["y1"]) + ce(z_va_r, y["cm_y2"])
            + sce(z_va_v0, z_v_v1) + sce(z_va_v1, z_v_v0) + sce(z_va_r, z_rcm_r)
            + sce(z_va_v0, t_rcm_v1) + sce(z_va_v1, t_rcm_v0) + sce(z_va_r, t_v_r))


def _official_odd(read, v0, v1, r, h, y):
    ce, sce = soft_cross_entropy, oclr_term
    z_vcm_v0, z_vcm_v1, z_r_r = read("vcm", v0, h["cm1"]), read("vcm", v1, h["cm1"]), read("r", r, h["l2"])
    z_v_v0, z_v_v1 = read("v", v0, h["l1"]), read("v", v1, h["l1"])
    z_ra_v0, z_ra_v1, z_ra_r = read("ra", v0, h["cm1"]), read("ra", v1, h["cm1"]), read("ra", r, h["l2"])
    t_r_v0, t_r_v1, t_vcm_r = read("r", v0), read("r", v1), read("vcm", r)
    return (ce(z_v_v0, y["y1"]) + ce(z_v_v1, y["y1"]) + ce(z_vcm_v0, y["cm_y1"]) + ce(z_vcm_v1, y["cm_y1"])
            + ce(z_r_r, y["y2"]) + ce(z_ra_v0, y["cm_y1"]) + ce(z_ra_v1, y["cm_y1"]) + ce(z_ra_r, y["y2"])
            + sce(z_ra_v0, z_vcm_v1) + sce(z_ra_v1, z_vcm_v0) + sce(z_ra_r, z_r_r)
            + sce(z_ra_v0, t_r_v1) + sce(z_ra_v1, t_r_v0) + sce(z_ra_r, t_vcm_r))


def _ours(mems, even, v0, v1, r, h, y):
    if even:
        space = UnifiedSpace(mems["v"], mems["rcm"], mems["va"], mems["r"], other_is_visible=False)
        return amirl_loss(space, v0, v1, r, y["y1"], y["cm_y2"], y["y2"], labels=(h["l1"], h["cm2"], h["l2"]))["total"]
    space = UnifiedSpace(mems["vcm"], mems["r"], mems["ra"], mems["v"], other_is_visible=True)
    return amirl_loss(space, v0, v1, r, y["cm_y1"], y["y2"], y["y1"], labels=(h["cm1"], h["l2"], h["l1"]))["total"]


@pytest.mark.parametrize("even", [True, False])
def test_amirl_step_writes_and_gradients_equal_the_official_trainer(even):
    protos, feats, hard, soft = _batch(11 if even else 12)
    mems = {n: ClusterMemory(p) for n, p in protos.items()}
    banks = {n: m.features.clone() for n, m in mems.items()}
    ours = [f.clone().requires_grad_(True) for f in feats]
    _ours(mems, even, *ours, hard, soft).backward()
    ref = [f.clone().requires_grad_(True) for f in feats]
    official = _official_even if even else _official_odd
    official(lambda name, f, y=None: reference_read(banks[name], f, y), *ref, hard, soft).backward()
    for name in mems:
        assert torch.allclose(mems[name].features, banks[name], atol=1e-6), name
    for got, want in zip(ours, ref):
        assert torch.allclose(got.grad, want.grad, atol=1e-5)
    untouched = ("vcm", "ra") if even else ("rcm", "va")  # the other parity's memories are not used
    assert all(torch.equal(mems[n].features, ClusterMemory(protos[n]).features) for n in untouched)


def test_dcl_step_writes_and_gradients_equal_the_official_trainer():
    protos, feats, hard, _ = _batch(13)
    mems = {n: ClusterMemory(protos[n]) for n in ("v", "r")}
    banks = {n: m.features.clone() for n, m in mems.items()}
    ours = [f.clone().requires_grad_(True) for f in feats]
    dcl_loss(mems["v"], mems["r"], *ours, hard["l1"], hard["l2"]).backward()
    ref = [f.clone().requires_grad_(True) for f in feats]
    ce = torch.nn.functional.cross_entropy
    (ce(reference_read(banks["v"], ref[0], hard["l1"]), hard["l1"])
     + ce(reference_read(banks["v"], ref[1], hard["l1"]), hard["l1"])
     + ce(reference_read(banks["r"], ref[2], hard["l2"]), hard["l2"])).backward()
    assert all(torch.allclose(mems[n].features, banks[n], atol=1e-6) for n in mems)
    assert all(torch.allclose(a.grad, b.grad, atol=1e-5) for a, b in zip(ours, ref))


@pytest.mark.parametrize("even", [True, False])
def test_after_step_writes_what_the_trainer_wrote_before_issue_15(even):
    protos, feats, hard, soft = _batch(31)
    mems = {n: ClusterMemory(p, update="after-step") for n, p in protos.items()}
    _ours(mems, even, *[f.clone().requires_grad_(True) for f in feats], hard, soft).backward()
    for memory in mems.values():
        memory.write_pending()
    # the old Trainer._update_memories, re-stated (one process): both views, then the infrared batch
    old = {n: ClusterMemory(p) for n, p in protos.items()}
    v0, v1, r = feats
    f_vis, own_v, own_r = torch.cat([v0, v1]), torch.cat([hard["l1"], hard["l1"]]), hard["l2"]
    old["v"].update(f_vis, own_v)
    old["r"].update(r, own_r)
    if even:
        old["rcm"].update(r, hard["cm2"])
        old["va"].update(torch.cat([f_vis, r]), torch.cat([own_v, hard["cm2"]]))
    else:
        cm_v = torch.cat([hard["cm1"], hard["cm1"]])
        old["vcm"].update(f_vis, cm_v)
        old["ra"].update(torch.cat([f_vis, r]), torch.cat([cm_v, own_r]))
    for name in mems:
        assert torch.equal(mems[name].features, old[name].features), name


DDP_WORKER = """
import sys
import torch
sys.path.insert(0, sys.argv[2])
from test_memory import ClusterMemory, _batch, _ours
from mult.train.distributed import DistContext

dist = DistContext.from_environment("cpu")
rows = slice(3 * dist.rank, 3 * dist.rank + 3)  # rank 0 holds rows 0-2 of the batch, rank 1 rows 3-5
out = {}
for even in (True, False):
    protos, feats, hard, soft = _batch(21)
    mems = {n: ClusterMemory(p, gather=dist.gather_rows) for n, p in protos.items()}
    mine = [f[rows].clone().requires_grad_(True) for f in feats]
    _ours(mems, even, *mine, {k: v[rows] for k, v in hard.items()}, {k: v[rows] for k, v in soft.items()}).backward()
    out[even] = {"memories": {n: m.features for n, m in mems.items()}, "grads": [x.grad for x in mine]}
torch.save(out, f"{sys.argv[1]}/rank{dist.rank}.pt")
dist.close()
"""


def test_two_ranks_write_what_one_process_writes_with_their_joint_batch(tmp_path):
    # in-backward writes gather every rank's rows (rank order within each read), so both ranks end with the memories
    # of one process trained on the joint batch; each rank's input gradient is its rows' (its loss averages over
    # half the rows: twice the joint one)
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(script), str(tmp_path), str(Path(__file__).parent)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for even in (True, False):
        protos, feats, hard, soft = _batch(21)
        mems = {n: ClusterMemory(p) for n, p in protos.items()}
        joint = [f.clone().requires_grad_(True) for f in feats]
        _ours(mems, even, *joint, hard, soft).backward()
        for name, memory in mems.items():
            assert torch.equal(ranks[0][even]["memories"][name], ranks[1][even]["memories"][name])
            assert torch.allclose(ranks[0][even]["memories"][name], memory.features, atol=1e-6)
        for rank, rows in ((0, slice(0, 3)), (1, slice(3, 6))):
            for got, x in zip(ranks[rank][even]["grads"], joint):
                assert torch.allclose(got, 2 * x.grad[rows], atol=1e-5)
