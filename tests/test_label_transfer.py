"""MULT label transfer (METHOD.md §4) and the OT / Hungarian baselines (§13).

Small hand-worked cases for each formula, the official algorithm re-stated densely
(benchmarks/reference_label_transfer.py) as the yardstick on moderate random inputs, and the
properties MULT must have (distributions out, alpha = 1 returns the anchors, separated identities
are matched to themselves).
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mult.errors import MultError
from mult.train import label_transfer as lt
from mult.train.clustering import cluster_centres, dbscan_cluster, jaccard_distance, sparse_jaccard_distance
from mult.train.sinkhorn import (
    gibbs_kernel_,
    kernel_from_features,
    plan_,
    plan_argmax,
    sinkhorn_scalings,
    squared_distances,
)

MATRICES = ("visible", "infrared_to_visible", "infrared", "visible_to_infrared")


def _load_benchmark_module(name: str):
    # benchmarks/ is a top-level folder, not part of the installed package: load the module by path.
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference_mult_label_transfer = _load_benchmark_module("reference_label_transfer").reference_mult_label_transfer
_bench = _load_benchmark_module("bench_label_transfer")
cross_modal_features, dense_jaccard = _bench.cross_modal_features, _bench.dense_jaccard


def test_learned_features_are_lifted_without_changing_a_distance(tmp_path):
    rng = np.random.default_rng(0)
    fv, fr = rng.standard_normal((30, 8)).astype(np.float32), rng.standard_normal((20, 8)).astype(np.float32)
    path = tmp_path / "feats.npz"
    np.savez(path, fv=fv, fr=fr, pid_v=np.arange(30) % 5, pid_r=np.arange(20) % 5)
    lv, lr, pid_v, pid_r = _bench.learned_features(path, 25, 12, 32, seed=1)
    assert lv.shape == (25, 32) and lr.shape == (12, 32) and pid_v.shape == (25,) and pid_r.shape == (12,)
    unit = _bench._unit
    # the same rows, drawn with the same generator: cosines across modalities before and after the lift agree
    draw = np.random.default_rng(1)
    pick_v, pick_r = np.sort(draw.choice(30, 25, replace=False)), np.sort(draw.choice(20, 12, replace=False))
    np.testing.assert_allclose(lv @ lr.T, unit(fv[pick_v]) @ unit(fr[pick_r]).T, atol=1e-5)
    assert (pid_v == pick_v % 5).all() and (pid_r == pick_r % 5).all()
    with pytest.raises(SystemExit, match="holds 30 visible"):
        _bench.learned_features(path, 31, 12, 32)


def max_diff(a, b) -> float:
    return max(float(np.abs(getattr(a, k) - getattr(b, k)).max()) for k in MATRICES)


@pytest.fixture(scope="module")
def moderate():
    """Cross-modality features of unequal per-person counts, clustered with the real Jaccard + DBSCAN."""
    fv, fr, pid_v, pid_r = cross_modal_features(360, 180, 256, seed=3)
    jv, jr = sparse_jaccard_distance(fv), sparse_jaccard_distance(fr)
    lv, lr = dbscan_cluster(jv, 0.6), dbscan_cluster(jr, 0.6)
    assert lv.max() >= 3 and lr.max() >= 3 and (lv < 0).any()  # several clusters and some outliers
    return {"fv": fv, "fr": fr, "lv": lv, "lr": lr, "jv": jv, "jr": jr, "pid_v": pid_v, "pid_r": pid_r}


@pytest.fixture(scope="module")
def exact(moderate):
    m = moderate
    return lt.mult_label_transfer(m["fv"], m["fr"], m["lv"], m["lr"], m["jv"], m["jr"], method="dense")


# ----------------------------------------------------------------------------------------------------
# Sinkhorn (§4.2)


def test_squared_distances_and_kernel_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    y = torch.tensor([[1.0, 1.0]])
    d = squared_distances(x, y)
    assert torch.allclose(d, torch.tensor([[1.0], [2.0]]))  # 1 + 2 - 2*1 and 4 + 2 - 2*2
    k = gibbs_kernel_(d.clone(), 0.5)
    assert torch.allclose(k, torch.tensor([[math.exp(-0.5)], [math.exp(-1.0)]]))
    built = kernel_from_features(x, y, 0.5, block=1)  # one row per block: the blocking must not matter
    assert torch.allclose(built, k)


def test_sinkhorn_one_step_by_hand():
    # K = [[2, 1], [1, 1]]; b0 = (1/2, 1/2): K b0 = (3/2, 1) -> a = (1/3, 1/2);
    # K^T a = (7/6, 5/6) -> b = (3/7, 3/5); err at step 0 = |7/6 - 1| + |5/6 - 1| = 1/3.
    kernel = torch.tensor([[2.0, 1.0], [1.0, 1.0]])
    sc = sinkhorn_scalings(kernel, max_iter=1)
    assert sc.steps == 1 and sc.err == pytest.approx(1 / 3)
    assert torch.allclose(sc.a, torch.tensor([1 / 3, 1 / 2], dtype=torch.float64))
    assert torch.allclose(sc.b, torch.tensor([3 / 7, 3 / 5], dtype=torch.float64))
    plan = plan_(kernel.clone(), sc)
    assert torch.allclose(plan, torch.tensor([[2 / 7, 1 / 5], [3 / 14, 3 / 10]]))
    assert torch.equal(plan_argmax(kernel, sc), torch.tensor([0, 1]))  # row 1: 3/14 < 3/10


def test_sinkhorn_stops_at_first_check_below_tol():
    # Symmetric K = [[1, 1/2], [1/2, 1]]: b never changes, err = 0 at step 0, so exactly one step;
    # plan = K / 3 = [[1/3, 1/6], [1/6, 1/3]].
    kernel = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    sc = sinkhorn_scalings(kernel)
    assert sc.steps == 1 and sc.err == 0.0
    assert torch.allclose(plan_(kernel.clone(), sc), torch.tensor([[1 / 3, 1 / 6], [1 / 6, 1 / 3]]))
    # err is only looked at every 10 steps: a kernel that needs more than one step runs 11, 21, ...
    steps = sinkhorn_scalings(torch.tensor([[2.0, 1.0], [1.0, 1.0]])).steps
    assert steps % 10 == 1


def test_sinkhorn_marginals():
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(40, 8, generator=gen), dim=1)
    y = torch.nn.functional.normalize(torch.randn(25, 8, generator=gen), dim=1)
    kernel = kernel_from_features(x, y, 25.0)
    loose = plan_(kernel.clone(), sinkhorn_scalings(kernel))  # the official tolerance
    assert torch.allclose(loose.sum(0), torch.full((25,), 1 / 25), rtol=1e-4)  # columns exact by construction
    tight = plan_(kernel.clone(), sinkhorn_scalings(kernel, max_iter=20000, tol=1e-10))
    assert torch.allclose(tight.sum(1), torch.full((40,), 1 / 40), rtol=1e-4)
    assert torch.allclose(tight.sum(0), torch.full((25,), 1 / 25), rtol=1e-4)


# ----------------------------------------------------------------------------------------------------
# labels and affinities (§4.3, §4.4)


def test_intra_modality_labels_by_hand():
    y0 = lt.intra_modality_labels(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), temp=0.5)
    e2 = math.exp(2.0)  # logits 1/0.5 = 2 and 0
    assert torch.allclose(y0, torch.tensor([[e2 / (e2 + 1), 1 / (e2 + 1)]]))


def test_cross_modality_labels_follow_the_plan_not_the_nearest_centre():
    # Both instances are nearest to centre 0 (D = 0 and 0.4), but the plan has equal column mass: with
    # K = [[1, e^-50], [e^-10, e^-30]] the cross ratio K11 K22 / (K12 K21) = e^30, so the converged
    # 2x2 plan is ~diag(1/2, 1/2) and instance 1 goes to centre 1.
    feats = torch.tensor([[1.0, 0.0], [0.8, 0.6]])
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(lt.nearest_centre(feats, centres), torch.tensor([0, 0]))
    labels, _ = lt.cross_modality_labels(feats, centres, lam=25.0)
    assert torch.equal(labels, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_homogeneous_affinity_by_hand_dense_and_sparse():
    jac = np.array([[0.0, 0.5, 1.0], [0.5, 0.0, 1.0], [1.0, 1.0, 0.0]], dtype=np.float32)
    expected = np.array([[2 / 3, 1 / 3, 0], [1 / 3, 2 / 3, 0], [0, 0, 1]])
    dense = lt.homogeneous_affinity(jac, 3, "J", torch.device("cpu")).to_dense().numpy()
    np.testing.assert_allclose(dense, expected, atol=1e-7)
    sparse = sp.csr_matrix(([0.0, 0.5, 0.5, 0.0, 0.0], ([0, 0, 1, 1, 2], [0, 1, 0, 1, 2])), shape=(3, 3))
    from_sparse = lt.homogeneous_affinity(sparse, 3, "J", torch.device("cpu")).to_dense().numpy()
    np.testing.assert_allclose(from_sparse, expected, atol=1e-7)


def test_dense_transfer_by_hand():
    plan = torch.tensor([[0.1, 0.3], [0.2, 0.4]])
    tr = lt.dense_transfer(plan)
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # S_vr = rows / row sums = [[1/4, 3/4], [1/3, 2/3]]; S_rv = columns / column sums = [[1/3, 2/3], [3/7, 4/7]]
    assert torch.allclose(tr.visible_from_infrared(y), torch.tensor([[0.25, 0.75], [1 / 3, 2 / 3]]))
    assert torch.allclose(tr.infrared_from_visible(y), torch.tensor([[1 / 3, 2 / 3], [3 / 7, 4 / 7]]))


# ----------------------------------------------------------------------------------------------------
# propagation (§4.5)


def _ops():
    s_xy = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    s_yx = torch.eye(2)
    s_x = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    return (lambda t: s_xy @ t), (lambda t: s_yx @ t), (lambda t: s_x @ t), (lambda t: torch.eye(2) @ t)


def test_pad_columns_adds_zero_columns_only_when_needed():
    labels = torch.rand(3, 5)
    padded = lt.pad_columns(labels, 4)
    assert padded.shape == (3, 8) and torch.equal(padded[:, :5], labels) and not padded[:, 5:].any()
    assert lt.pad_columns(labels, 5) is labels


def test_sparse_times_in_column_slices_equals_the_plain_product():
    dense_matrix = torch.rand(40, 30) * (torch.rand(40, 30) < 0.2)
    csr = lt._csr(sp.csr_matrix(dense_matrix.numpy()), torch.device("cpu"))
    labels = torch.rand(30, 75)
    torch.testing.assert_close(lt.sparse_times(csr, labels, chunk=32), dense_matrix @ labels)
    assert torch.equal(lt.sparse_times(csr, labels, chunk=32), csr @ labels)


def test_propagation_step_by_hand():
    x0 = torch.eye(2)
    y0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    t_xy, t_yx, s_x, s_y = _ops()
    x, y = lt.propagation_step(x0, y0, x0, y0, t_xy, t_yx, s_x, s_y, alpha=0.5)
    # X' = 0.5 S_xy Y0 + 0.5 X0 = [[.75, .25], [.5, .5]];  Y' = 0.5 X' + 0.5 Y0 = [[.375, .625], [.75, .25]]
    # X'' = 0.5 (rows of X' swapped) + 0.5 X' = [[.625, .375], [.625, .375]];  Y'' = Y' (S_y = I)
    assert torch.allclose(x, torch.tensor([[0.625, 0.375], [0.625, 0.375]]))
    assert torch.allclose(y, torch.tensor([[0.375, 0.625], [0.75, 0.25]]))
    x_no, _ = lt.propagation_step(x0, y0, x0, y0, t_xy, t_yx, None, None, alpha=0.5)
    assert torch.allclose(x_no, torch.tensor([[0.75, 0.25], [0.5, 0.5]]))  # X' without smoothing


def test_relative_change_and_stopping():
    assert lt.relative_change(torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 2.0]])) == pytest.approx(0.5)
    x0 = torch.eye(2)
    y0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    t_xy, t_yx, s_x, s_y = _ops()
    _, _, trace = lt.label_propagation(x0, y0, t_xy, t_yx, s_x, s_y, alpha=0.5, max_iter=3, tol=0.0)
    assert trace.steps == 3  # tol 0 never stops early
    _, _, trace = lt.label_propagation(x0, y0, t_xy, t_yx, s_x, s_y, alpha=1.0, max_iter=20, tol=1e-2)
    assert trace.steps == 2 and trace.change[-1] == 0.0  # alpha = 1: the second step repeats the first exactly


def test_propagation_trace_records_what_the_iterations_did():
    x0 = torch.eye(2)
    y0 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    t_xy, t_yx, s_x, s_y = _ops()
    _, _, trace = lt.label_propagation(x0, y0, t_xy, t_yx, s_x, s_y, alpha=0.5, max_iter=20, tol=1e-3)
    # step 1 (test_propagation_step_by_hand): X' = [[.625, .375]] * 2 rows, Y' = [[.375, .625], [.75, .25]];
    # |X' - X0|_1 / |X0|_1 = (.375 + .375 + .625 + .625) / 2 = 1;  |Y' - Y0|_1 / |Y0|_1 = (.375 + .375 + .25 + .25) / 2
    assert trace.change_x[0] == pytest.approx(1.0) and trace.change_y[0] == pytest.approx(0.625)
    # every later step replayed by hand: the recorded numbers are the changes the iterations made
    x, y = x0, y0
    for cx, cy in zip(trace.change_x, trace.change_y):
        nx, ny = lt.propagation_step(x, y, x0, y0, t_xy, t_yx, s_x, s_y, alpha=0.5)
        assert (cx, cy) == (lt.relative_change(nx, x), lt.relative_change(ny, y))
        x, y = nx, ny
    assert 1 < trace.steps < 20 and trace.change == [max(cx, cy) for cx, cy in zip(trace.change_x, trace.change_y)]
    assert trace.change[-1] <= 1e-3 < min(trace.change[:-1])  # stopped at the first step under tol
    assert min(trace.change_x + trace.change_y) >= 0


def test_mult_records_the_propagation_of_both_label_spaces(exact):
    record = exact.info["propagation"]
    assert (record["tol"], record["max_iter"]) == (1e-2, 20)
    for space in ("visible_space", "infrared_space"):
        rec = record[space]
        assert rec["steps"] == exact.info["propagation_steps"][space] == len(rec["change"]) <= 20
        assert rec["change"] == [max(v, r) for v, r in zip(rec["change_visible"], rec["change_infrared"])]
        assert min(rec["change"]) >= 0 and (rec["steps"] == 20 or rec["change"][-1] <= 1e-2)
        assert all(c > 1e-2 for c in rec["change"][:-1])
    json.dumps(record)  # goes to metrics.jsonl as it is


# ----------------------------------------------------------------------------------------------------
# mult_label_transfer end to end


def test_rows_are_distributions(exact, moderate):
    kv, kr = moderate["lv"].max() + 1, moderate["lr"].max() + 1
    shapes = {"visible": (360, kv), "infrared_to_visible": (180, kv), "infrared": (180, kr),
              "visible_to_infrared": (360, kr)}
    for name, shape in shapes.items():
        mat = getattr(exact, name)
        assert mat.shape == shape and mat.dtype == np.float32
        assert (mat >= 0).all()
        np.testing.assert_allclose(mat.sum(1), 1.0, atol=1e-5)


def test_exact_matches_official_reference(exact, moderate):
    m = moderate
    jv, jr = dense_jaccard(m["jv"]), dense_jaccard(m["jr"])
    ref = reference_mult_label_transfer(m["fv"], m["fr"], m["lv"], m["lr"], jv, jr)
    assert max_diff(exact, ref) < 1e-5
    # dense Jaccard input gives the same as the sparse form
    again = lt.mult_label_transfer(m["fv"], m["fr"], m["lv"], m["lr"], jv, jr, method="dense")
    assert max_diff(again, exact) < 1e-6


def test_truncated_transfer_within_its_bound(exact, moderate):
    m = moderate
    fast = lt.mult_label_transfer(m["fv"], m["fr"], m["lv"], m["lr"], m["jv"], m["jr"], method="sparse", margin=14.0)
    assert fast.info["transfer"] == "sparse" and 0 < fast.info["density"] < 1
    diff = max_diff(fast, exact)
    assert diff < 1e-4
    assert diff <= 4 * fast.info["truncated_mass"] + 1e-6  # the stated bound at alpha = 0.2
    crude = lt.mult_label_transfer(m["fv"], m["fr"], m["lv"], m["lr"], m["jv"], m["jr"], method="sparse", margin=2.0)
    assert crude.info["truncated_mass"] > fast.info["truncated_mass"]  # the bound is not vacuous
    assert max_diff(crude, exact) <= 4 * crude.info["truncated_mass"] + 1e-6


def test_auto_keeps_a_truncation_only_when_certified(moderate, monkeypatch):
    m = moderate
    args = (m["fv"], m["fr"], m["lv"], m["lr"], m["jv"], m["jr"])
    small = lt.mult_label_transfer(*args)
    assert small.info["transfer"] == "dense" and "rejected_truncation" not in small.info  # too small to try
    monkeypatch.setattr(lt, "AUTO_SPARSE_MIN_ENTRIES", 0)
    strict = lt.mult_label_transfer(*args, max_truncated_mass=1e-30)
    assert strict.info["transfer"] == "dense" and "rejected_truncation" in strict.info
    monkeypatch.setattr(lt, "AUTO_SPARSE_MAX_DENSITY", 1.0)
    lenient = lt.mult_label_transfer(*args, max_truncated_mass=1.0)
    assert lenient.info["transfer"] == "sparse"


def test_alpha_one_returns_the_initial_labels(moderate):
    m = moderate
    fv, fr = torch.from_numpy(m["fv"]), torch.from_numpy(m["fr"])
    cv, cr = cluster_centres(fv, m["lv"]), cluster_centres(fr, m["lr"])
    res = lt.mult_label_transfer(fv, fr, m["lv"], m["lr"], m["jv"], m["jr"], alpha=1.0, homogeneous=False)
    np.testing.assert_allclose(res.visible, lt.intra_modality_labels(fv, cv).numpy(), atol=1e-6)
    np.testing.assert_allclose(res.infrared, lt.intra_modality_labels(fr, cr).numpy(), atol=1e-6)
    np.testing.assert_array_equal(res.visible_to_infrared, lt.cross_modality_labels(fv, cr)[0].numpy())
    np.testing.assert_array_equal(res.infrared_to_visible, lt.cross_modality_labels(fr, cv)[0].numpy())
    # the labels before propagation, kept for diagnostics, are the hard OT labels: here also the final ones
    hard = res.hard_labels()
    for name, (feats, centres) in (("visible_to_infrared", (fv, cr)), ("infrared_to_visible", (fr, cv))):
        np.testing.assert_array_equal(res.initial_cross[name], lt.cross_modality_labels(feats, centres)[0].argmax(1))
        np.testing.assert_array_equal(res.initial_cross[name], hard[name])
    # with the homogeneous graph the anchors come out smoothed once: 1/2 S Y0 + 1/2 Y0
    smoothed = lt.mult_label_transfer(fv, fr, m["lv"], m["lr"], m["jv"], m["jr"], alpha=1.0)
    s_v = lt.homogeneous_affinity(m["jv"], 360, "jv", torch.device("cpu"))
    y_v0 = lt.intra_modality_labels(fv, cv)
    np.testing.assert_allclose(smoothed.visible, (0.5 * (s_v @ y_v0) + 0.5 * y_v0).numpy(), atol=1e-6)


def test_homogeneous_off_equals_the_update_without_smoothing(moderate):
    m = moderate
    ours = lt.mult_label_transfer(m["fv"], m["fr"], m["lv"], m["lr"], m["jv"], m["jr"], homogeneous=False)
    # In the official code an identity affinity (J = 1 off the diagonal) makes the smoothing a no-op.
    ref = reference_mult_label_transfer(m["fv"], m["fr"], m["lv"], m["lr"], 1 - np.eye(360, dtype=np.float32),
                                        1 - np.eye(180, dtype=np.float32))
    assert max_diff(ours, ref) < 1e-5
    with_smoothing = lt.mult_label_transfer(m["fv"], m["fr"], m["lv"], m["lr"], m["jv"], m["jr"])
    assert max_diff(ours, with_smoothing) > 1e-3  # the flag does change something


def _separated(ids: int = 5, per_id: int = 6, dim: int = 16, seed: int = 0):
    """Well-separated identities seen by both modalities (orthogonal centres, small noise)."""
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(ids), per_id)
    offset_v, offset_r = np.eye(dim)[ids], np.eye(dim)[ids + 1]

    def feats(offset):
        x = np.eye(dim)[pid] + 0.3 * offset + 0.05 * rng.standard_normal((pid.size, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return feats(offset_v), feats(offset_r), pid


def test_separated_identities_are_matched_to_themselves():
    fv, fr, pid = _separated()
    labels_v = pid  # cluster k = person k in the visible modality
    labels_r = (pid + 2) % 5  # the infrared clusters are numbered differently
    res = lt.mult_label_transfer(fv, fr, labels_v, labels_r, jaccard_distance(fv, 5, 2), jaccard_distance(fr, 5, 2))
    hard = res.hard_labels()
    np.testing.assert_array_equal(hard["visible_to_infrared"], (pid + 2) % 5)
    np.testing.assert_array_equal(hard["infrared_to_visible"], pid)
    np.testing.assert_array_equal(hard["visible"], labels_v)
    np.testing.assert_array_equal(hard["infrared"], labels_r)


# ----------------------------------------------------------------------------------------------------
# outputs (§4.6)


def test_hard_labels_and_targets_by_hand():
    res = lt.LabelTransferResult(
        visible=np.array([[0.6, 0.4], [0.1, 0.9]], dtype=np.float32),
        infrared_to_visible=np.array([[0.2, 0.8]], dtype=np.float32),
        infrared=np.array([[0.3, 0.3, 0.4]], dtype=np.float32),
        visible_to_infrared=np.array([[0.5, 0.2, 0.3], [0.0, 1.0, 0.0]], dtype=np.float32),
    )
    hard = res.hard_labels()
    assert hard["visible"].tolist() == [0, 1] and hard["infrared_to_visible"].tolist() == [1]
    assert hard["infrared"].tolist() == [2] and hard["visible_to_infrared"].tolist() == [0, 1]
    tg = res.targets(0.7)
    np.testing.assert_allclose(tg["visible"], [[0.7 + 0.18, 0.12], [0.03, 0.7 + 0.27]], atol=1e-6)
    np.testing.assert_allclose(tg["infrared"], [[0.09, 0.09, 0.7 + 0.12]], atol=1e-6)
    np.testing.assert_allclose(res.targets(0.0)["visible_to_infrared"], res.visible_to_infrared)
    with pytest.raises(MultError, match="beta"):
        res.targets(1.5)


# ----------------------------------------------------------------------------------------------------
# baselines (§13)


def test_match_clusters_by_hand():
    # visible centres e0, e1, e2 + 0.5 e1; infrared centres e0, e1. Square padding: v0-r0, v1-r1, v2 on
    # the padding; the re-matching round gives v2 its best partner r1 (cos 0.45 vs 0). r1's match stays v1.
    cv = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0.5, 1.0]])
    cr = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    v_to_r, r_to_v = lt.match_clusters(cv, cr)
    assert v_to_r.tolist() == [0, 1, 1] and r_to_v.tolist() == [0, 1]
    r_to_v2, v_to_r2 = lt.match_clusters(cr, cv)  # more infrared than visible clusters: roles swap
    assert v_to_r2.tolist() == [0, 1, 1] and r_to_v2.tolist() == [0, 1]
    many = torch.eye(5)
    v_to_r3, r_to_v3 = lt.match_clusters(many, many[:2])  # 5 vs 2: needs two re-matching rounds
    assert (v_to_r3 >= 0).all() and v_to_r3[:2].tolist() == [0, 1] and r_to_v3.tolist() == [0, 1]


def test_hungarian_association_by_hand():
    fv = np.array([[1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0, 1, 0.1], [0, 0.5, 1], [0, 0.45, 1], [0.1, 1, 0]],
                  dtype=np.float32)
    labels_v = np.array([0, 0, 1, 1, 2, 2, -1])  # the outlier is nearest to cluster 1
    fr = np.array([[0, 1, 0], [0, 1, 0.1], [1, 0, 0], [1, 0.1, 0]], dtype=np.float32)
    labels_r = np.array([0, 0, 1, 1])  # infrared cluster 0 is the visible cluster 1 direction
    res = lt.hungarian_association(fv, fr, labels_v, labels_r)
    hard = res.hard_labels()
    assert hard["visible"].tolist() == [0, 0, 1, 1, 2, 2, 1]
    assert hard["visible_to_infrared"].tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert hard["infrared_to_visible"].tolist() == [1, 1, 0, 0]
    assert set(np.unique(res.visible_to_infrared)) == {0.0, 1.0}  # one-hot


def test_ot_association_by_hand():
    fv = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [0.7, 0.7]], dtype=np.float32)
    labels_v = np.array([0, 0, 1, 1, -1])
    fr = np.array([[0, 1], [0.1, 1], [1, 0], [1, 0.1]], dtype=np.float32)
    labels_r = np.array([0, 0, 1, 1])
    res = lt.ot_association(fv, fr, labels_v, labels_r)
    hard = res.hard_labels()
    fv_t, fr_t = torch.from_numpy(fv), torch.from_numpy(fr)
    centres_v = cluster_centres(fv_t, labels_v)
    assert hard["visible"][:4].tolist() == [0, 0, 1, 1]
    assert hard["visible"][4] == int(lt.nearest_centre(fv_t[4:], centres_v)[0])  # outlier -> nearest centre
    assert hard["infrared"].tolist() == [0, 0, 1, 1]
    expected, _ = lt.cross_modality_labels(fv_t, cluster_centres(fr_t, labels_r))
    np.testing.assert_array_equal(res.visible_to_infrared, expected.numpy())  # MULT's initial cross labels
    assert hard["visible_to_infrared"][:4].tolist() == [1, 1, 0, 0]


def test_oracle_association_links_clusters_by_true_id():
    # visible clusters 0, 1, 2 are persons 7, 8, 9; infrared cluster 0 is person 9, cluster 1 person 7;
    # person 8 has no infrared image, so its link falls back to the most similar infrared centre (cosine:
    # 0.29 to cluster 0, 0.00 to cluster 1).
    fv = np.array([[1, 0, 0], [1, 0.1, 0], [0, 1, 0], [0, 1, 0.1], [0, 0, 1], [0, 0.1, 1]], dtype=np.float32)
    labels_v, pids_v = np.array([0, 0, 1, 1, 2, 2]), np.array([7, 7, 8, 8, 9, 9])
    fr = np.array([[0, 0.2, 1], [0, 0.3, 1], [1, 0, 0], [1, 0, 0.1], [0, 1, 0.9]], dtype=np.float32)
    labels_r, pids_r = np.array([0, 0, 1, 1, -1]), np.array([9, 9, 7, 7, 6])
    res = lt.oracle_association(fv, fr, labels_v, labels_r, pids_v, pids_r)
    hard = res.hard_labels()
    assert hard["visible_to_infrared"].tolist() == [1, 1, 0, 0, 0, 0]
    # the infrared outlier (person 6) joins its nearest infrared centre (cluster 0) and inherits its link
    assert hard["infrared"].tolist() == [0, 0, 1, 1, 0]
    assert hard["infrared_to_visible"].tolist() == [2, 2, 0, 0, 2]
    assert set(np.unique(res.visible_to_infrared)) == {0.0, 1.0}


def test_corrupt_partners_keeps_the_asked_share():
    rng = np.random.default_rng(0)
    partner = np.arange(2000) % 50
    assert (lt.corrupt_partners(partner, 50, 1.0, rng) == partner).all()
    assert (lt.corrupt_partners(partner, 50, 0.0, rng) != partner).all()  # a wrong link is never the right one
    kept = (lt.corrupt_partners(partner, 50, 0.3, rng) == partner).mean()
    assert 0.26 < kept < 0.34
    with pytest.raises(MultError, match="oracle_accuracy"):
        lt.corrupt_partners(partner, 50, 1.5, rng)
    with pytest.raises(MultError, match="true id"):
        lt.oracle_association(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), np.array([0, 0, 1]),
                              np.array([0, 1, 1]), np.array([1, 1, -1]), np.array([1, 2, 2]))


# ----------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    "change, message",
    [
        ({"labels_v": np.full(12, -1)}, "no cluster"),
        ({"labels_v": np.zeros(11, dtype=int)}, "one label per feature row"),
        ({"jaccard_v": np.zeros((11, 11))}, r"\[12, 12\]"),
        ({"jaccard_v": np.full((12, 12), 2.0)}, r"in \[0, 1\]"),
        ({"jaccard_v": sp.csr_matrix((12, 12))}, "no entry below 1"),
        ({"feats_v": np.full((12, 4), np.nan, dtype=np.float32)}, "NaN"),
        ({"alpha": 1.5}, "alpha"),
        ({"method": "fast"}, "method"),
    ],
)
def test_bad_inputs_raise_one_clear_error(change, message):
    rng = np.random.default_rng(0)
    args = {
        "feats_v": rng.standard_normal((12, 4)).astype(np.float32),
        "feats_r": rng.standard_normal((8, 4)).astype(np.float32),
        "labels_v": np.repeat([0, 1, 2], 4),
        "labels_r": np.repeat([0, 1], 4),
        "jaccard_v": np.eye(12) * -1 + 1,
        "jaccard_r": np.eye(8) * -1 + 1,
    }
    kwargs = {k: change.pop(k) for k in ("alpha", "method") if k in change}
    args.update(change)
    with pytest.raises(MultError, match=message):
        lt.mult_label_transfer(*args.values(), **kwargs)
