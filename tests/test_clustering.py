"""k-reciprocal Jaccard distance, DBSCAN and cluster centres (METHOD.md §5, §2) against hand-worked cases
and against the dense ClusterContrast-style reference in benchmarks/reference_jaccard.py."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from mult.errors import MultError
from mult.train.clustering import cluster_centres
from mult.train.dbscan import dbscan_cluster
from mult.train.jaccard import jaccard_distance, jaccard_from_min_sum, sparse_jaccard_distance
from mult.train.reciprocal_neighbours import (
    expanded_sets,
    k_reciprocal_sets,
    knn_self_first,
    query_expansion,
    softmax_weights,
)


def _load_reference():
    # benchmarks/ is a top-level folder, not part of the installed package: load the module by path.
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_jaccard.py"
    spec = importlib.util.spec_from_file_location("reference_jaccard", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _load_reference()


def _dense(matrix: sp.csr_matrix, fill: float = 1.0) -> np.ndarray:
    """Sparse -> dense with absent entries = ``fill`` and stored zeros kept as zeros."""
    out = np.full(matrix.shape, fill, dtype=np.float32)
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    out[rows, matrix.indices] = matrix.data
    return out


# --- a six-point case worked out by hand ------------------------------------------------------------
# Unit vectors on a circle (angles in radians). A1/A2 and B1/B2 are tight mutual-nearest pairs; C's
# nearest neighbour is A1 (0.6 rad away) and D's is B2 (1.47 rad), but neither is anybody's nearest.
ANGLES = np.array([0.0, 0.1, math.pi / 2, math.pi / 2 + 0.1, -0.6, math.pi])
A1, A2, B1, B2, C, D = range(6)


def _six_points() -> np.ndarray:
    return np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1).astype(np.float32)


def test_hand_case_without_query_expansion():
    # k1 = 2: the kNN list is (self, nearest); R(i) = {i} plus the nearest if it is mutual. The pairs
    # get E = {both}, C and D only themselves. V for A1 = softmax(-(0), -(2 - 2cos 0.1)) = (p, q) and for
    # A2 = (q, p), so sum of minima = 2q and J = 1 - 2q / (2 - 2q). C, D share support with nobody.
    jac = sparse_jaccard_distance(_six_points(), k1=2, k2=1)
    d = 2.0 - 2.0 * math.cos(0.1)
    q = math.exp(-d) / (1.0 + math.exp(-d))
    expected_pair = 1.0 - 2 * q / (2 - 2 * q)
    dense = _dense(jac)
    expected = np.ones((6, 6))
    np.fill_diagonal(expected, 0.0)
    for a, b in ((A1, A2), (B1, B2)):
        expected[a, b] = expected[b, a] = expected_pair
    np.testing.assert_allclose(dense, expected, atol=1e-6)
    assert jac.nnz == 6 + 4  # the diagonal and the two pairs, nothing else


def test_hand_case_with_query_expansion_gives_explicit_zeros():
    # k2 = 2 averages each V with its nearest neighbour's. A1 and A2 both become (1/2, 1/2) on {A1, A2}:
    # identical rows, J = 0 (an off-diagonal explicit zero). C becomes (C: 1/2, A1: p/2, A2: q/2):
    # against A1 the minima are p/2 + q/2 = 1/2, so J = 1 - 0.5 / 1.5 = 2/3. D likewise with B1, B2.
    jac = sparse_jaccard_distance(_six_points(), k1=2, k2=2)
    expected = np.ones((6, 6))
    np.fill_diagonal(expected, 0.0)
    for a, b in ((A1, A2), (B1, B2)):
        expected[a, b] = expected[b, a] = 0.0
    for a, b in ((C, A1), (C, A2), (D, B1), (D, B2)):
        expected[a, b] = expected[b, a] = 2.0 / 3.0
    np.testing.assert_allclose(_dense(jac), expected, atol=1e-6)
    assert jac.nnz == 6 + 4 + 8
    np.testing.assert_array_equal(jac.diagonal(), 0.0)
    assert np.count_nonzero(jac.data == 0.0) == 6 + 4  # zeros are stored, not dropped
    # DBSCAN sees the stored zeros as neighbours: two clusters, C and D (J = 2/3 > eps) are outliers.
    labels = dbscan_cluster(jac, eps=0.3, min_samples=2)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, -1, -1])
    np.testing.assert_array_equal(dbscan_cluster(_dense(jac), eps=0.3, min_samples=2), labels)
    # ... and at eps 0.7 C and D join their neighbours' clusters. eps is inclusive (J <= eps), exactly
    # as sklearn treats the dense matrix: at eps = J(C, A1) itself they join, just below they do not.
    at_two_thirds = float(np.float32(2.0 / 3.0))
    for eps in (0.7, at_two_thirds):
        np.testing.assert_array_equal(dbscan_cluster(jac, eps=eps, min_samples=2), [0, 0, 1, 1, 0, 1])
        dense_labels = dbscan_cluster(_dense(jac), eps=eps, min_samples=2)
        np.testing.assert_array_equal(dense_labels, [0, 0, 1, 1, 0, 1])
    below = float(np.nextafter(np.float32(2.0 / 3.0), np.float32(0)))
    np.testing.assert_array_equal(dbscan_cluster(jac, eps=below, min_samples=2), [0, 0, 1, 1, -1, -1])


def test_hand_case_matches_reference():
    for k2 in (1, 2):
        ours = jaccard_distance(_six_points(), k1=2, k2=k2)
        ref = reference.reference_jaccard_distance(_six_points(), k1=2, k2=k2)
        np.testing.assert_allclose(ours, ref, atol=1e-6)


# --- each METHOD §5 step on its own ------------------------------------------------------------------


def test_knn_self_first_blocked_equals_brute_force():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((53, 8)).astype(np.float32))
    x = torch.nn.functional.normalize(x, dim=1)
    brute = np.argsort(-(x @ x.T).numpy(), axis=1, kind="stable")[:, :7]
    for block in (5, 16, 64):  # several blocks, a ragged last block, one block
        rank, sim = knn_self_first(x, 7, block=block)
        np.testing.assert_array_equal(rank, brute)
        np.testing.assert_allclose(sim, np.take_along_axis((x @ x.T).numpy(), brute, axis=1), atol=1e-6)
    np.testing.assert_array_equal(rank[:, 0], np.arange(53))


def test_k_reciprocal_sets_by_hand():
    # kNN lists with 3 columns (k1 = 3). With k = 3 the slice [:k+1] keeps all 3 columns.
    rank = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]])
    r = k_reciprocal_sets(rank, 3).toarray()
    # 0: lists 1 (1 lists 0: yes), 2 (2 lists 0: yes). 1: 0 yes, 3 (3 lists 1: yes). 2: 3 yes, 0 yes.
    expected = np.array([[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(r, expected)
    # k = 1 keeps [:2] = (self, nearest): only mutual nearest pairs 0-1 and 2-3.
    r1 = k_reciprocal_sets(rank, 1).toarray()
    pairs = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(r1, pairs)


def test_expanded_sets_two_thirds_rule():
    # R(0) = {0, 1, 2, 3}. Candidate 1's half-set {1, 2, 4} overlaps R(0) in 2 of 3: 2 > 2/3 * 3 is
    # false, not added. Candidate 2's {2, 3, 5} likewise. Candidate 3's {0, 3, 6}: 2 of 3, not added.
    # Candidate 0's {0, 1, 2, 7}: 3 of 4 > 8/3, added -> 7 joins. Row 0 of E = {0, 1, 2, 3, 7}.
    n = 8
    recip = sp.csr_matrix(([True] * 4, ([0] * 4, [0, 1, 2, 3])), shape=(n, n))
    half_rows = {0: [0, 1, 2, 7], 1: [1, 2, 4], 2: [2, 3, 5], 3: [0, 3, 6]}
    rows = [r for r, cols in half_rows.items() for _ in cols]
    cols = [c for cs in half_rows.values() for c in cs]
    half = sp.csr_matrix(([True] * len(rows), (rows, cols)), shape=(n, n))
    e = expanded_sets(recip, half)
    np.testing.assert_array_equal(e[0].indices, [0, 1, 2, 3, 7])
    assert e[1:].nnz == 0


def test_softmax_weights_by_hand():
    # Row 0 over {0, 1} with cosines (1, 0): logits -(0), -(2) -> (1, e^-2) / (1 + e^-2).
    pattern = sp.csr_matrix(([True, True, True], [0, 1, 1], [0, 2, 3]), shape=(2, 2))
    v = softmax_weights(pattern, np.array([1.0, 0.0, 1.0], dtype=np.float32))
    e2 = math.exp(-2.0)
    np.testing.assert_allclose(v.toarray(), [[1 / (1 + e2), e2 / (1 + e2)], [0.0, 1.0]], rtol=1e-12)


def test_query_expansion_by_hand():
    v = sp.csr_matrix(np.array([[0.5, 0.5, 0.0], [0.0, 0.25, 0.75], [1.0, 0.0, 0.0]]))
    rank = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    qe = query_expansion(v, rank, 2).toarray()  # mean of own row and the nearest one's
    np.testing.assert_allclose(qe, [[0.25, 0.375, 0.375], [0.5, 0.125, 0.375], [0.75, 0.25, 0.0]])
    assert query_expansion(v, rank, 1) is v  # k2 = 1: no expansion, as in the reference


def test_jaccard_from_min_sum_by_hand():
    s = np.array([0.0, 0.5, 1.0, 1.0 + 1e-7])
    np.testing.assert_allclose(jaccard_from_min_sum(s), [1.0, 1 - 0.5 / 1.5, 0.0, 0.0], atol=1e-12)


# --- against the dense reference on realistic clustered features -------------------------------------


@pytest.mark.parametrize(
    ("n", "dim", "k1", "k2", "seed"),
    [(300, 64, 7, 3, 0), (800, 256, 30, 6, 1), (2100, 128, 30, 6, 2)],  # 2100 > one 2048-row kNN block
)
def test_matches_reference_and_dbscan_labels(n, dim, k1, k2, seed):
    x = reference.clustered_features(n, dim, seed=seed)
    ref = reference.reference_jaccard_distance(x, k1, k2)
    jac = sparse_jaccard_distance(x, k1, k2)
    dense = jaccard_distance(x, k1, k2)

    assert jac.dtype == np.float32 and dense.dtype == np.float32 and dense.shape == (n, n)
    np.testing.assert_array_equal(dense, _dense(jac))
    np.testing.assert_array_equal(ref < 1, dense < 1)  # the same pairs share support
    np.testing.assert_allclose(dense[ref < 1], ref[ref < 1], atol=1e-5)
    np.testing.assert_array_equal(jac.diagonal(), 0.0)
    assert jac.nnz == np.count_nonzero(ref < 1)
    assert jac.has_sorted_indices and np.all(jac.data < 1) and np.all(jac.data >= 0)
    np.testing.assert_array_equal(dense, dense.T)

    for eps in (0.6, 0.3):
        expected = dbscan_cluster(ref, eps)
        assert expected.max() >= 2, "the fixture should produce several clusters"
        np.testing.assert_array_equal(dbscan_cluster(jac, eps), expected)
        np.testing.assert_array_equal(dbscan_cluster(dense, eps), expected)
        trimmed = sparse_jaccard_distance(x, k1, k2, max_distance=eps)
        assert trimmed.nnz < jac.nnz and np.all(trimmed.data <= eps)
        np.testing.assert_array_equal(dbscan_cluster(trimmed, eps), expected)


@pytest.mark.parametrize(("n", "k1", "k2"), [(1, 1, 1), (7, 1, 3), (5, 5, 9), (9, 3, 2)])
def test_edge_sizes_match_reference(n, k1, k2):
    # k1 = N, k1 = 1 (half-sets of width 1) and k2 > k1 (the reference's slice [:k2] stops at k1).
    x = reference.clustered_features(n, 8, seed=n)
    np.testing.assert_allclose(
        jaccard_distance(x, k1, k2), reference.reference_jaccard_distance(x, k1, k2), atol=1e-6
    )


def test_exact_duplicates_are_at_distance_zero():
    x = reference.clustered_features(40, 16, seed=3)
    jac = sparse_jaccard_distance(np.concatenate([x, x[:5]]), 8, 3)
    dense = _dense(jac)  # absent pairs read as 1, so a dropped zero would show
    for i in range(5):
        assert dense[i, 40 + i] == 0.0 and dense[40 + i, i] == 0.0
    assert np.count_nonzero(jac.data == 0.0) >= 45 + 10  # the diagonal plus both copies of each pair


def test_torch_and_numpy_inputs_agree():
    x = reference.clustered_features(400, 64, seed=5)
    from_numpy = sparse_jaccard_distance(x, 20, 6)
    from_torch = sparse_jaccard_distance(torch.from_numpy(x).requires_grad_(), 20, 6)
    np.testing.assert_array_equal(from_numpy.indptr, from_torch.indptr)
    np.testing.assert_array_equal(from_numpy.indices, from_torch.indices)
    np.testing.assert_array_equal(from_numpy.data, from_torch.data)
    # Unnormalised and float64 input is normalised first: same neighbourhoods, same distances.
    scaled = sparse_jaccard_distance(3.0 * x.astype(np.float64), 20, 6)
    np.testing.assert_array_equal(scaled.indices, from_numpy.indices)
    np.testing.assert_allclose(scaled.data, from_numpy.data, atol=1e-5)


def test_timings_are_reported():
    timings: dict[str, float] = {}
    sparse_jaccard_distance(reference.clustered_features(200, 32, seed=0), 10, 3, timings=timings)
    assert set(timings) == {"knn", "reciprocal", "weights", "query_expansion", "min_sum"}
    assert all(t >= 0 for t in timings.values())


# --- cluster centres ---------------------------------------------------------------------------------


def test_cluster_centres_by_hand():
    feats = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0], [0.0, 4.0]], dtype=np.float32)
    labels = np.array([0, 0, 1, -1, 1])
    centres = cluster_centres(feats, labels)
    assert isinstance(centres, np.ndarray) and centres.dtype == np.float32
    np.testing.assert_allclose(centres, [[2.0, 0.0], [0.0, 3.0]])  # means, not re-normalised
    as_torch = cluster_centres(torch.from_numpy(feats), torch.from_numpy(labels))
    assert isinstance(as_torch, torch.Tensor)
    np.testing.assert_allclose(as_torch.numpy(), centres)
    assert cluster_centres(feats, np.full(5, -1)).shape == (0, 2)


# --- expected mistakes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sparse_jaccard_distance(np.ones((5, 3), np.float32), k1=6), "k1=6 exceeds"),
        (lambda: sparse_jaccard_distance(np.ones((5, 3), np.float32), k1=0), "positive integers"),
        (lambda: sparse_jaccard_distance(np.array([[np.nan, 1.0]] * 3), k1=2), "NaN or Inf"),
        (lambda: sparse_jaccard_distance(np.ones(4, np.float32), k1=2), "[N, D]"),
        (lambda: sparse_jaccard_distance(np.ones((4, 2), np.int64), k1=2), "floating point"),
        (lambda: sparse_jaccard_distance(_six_points(), 2, 1, max_distance=1.0), "max_distance"),
        (lambda: dbscan_cluster(sp.identity(4, format="csr"), eps=1.0), "eps=1.0 >= 1"),
        (lambda: dbscan_cluster(np.zeros((3, 3)), eps=0.0), "eps must be a positive"),
        (lambda: dbscan_cluster(np.zeros((3, 4)), eps=0.5), "square"),
        (lambda: dbscan_cluster(np.zeros((3, 3)), eps=0.5, min_samples=0), "min_samples"),
        (lambda: cluster_centres(np.ones((3, 2)), np.array([0, 2, 2])), "label 1 has no members"),
        (lambda: cluster_centres(np.ones((3, 2)), np.array([0.0, 1.0, 1.0])), "integers"),
        (lambda: cluster_centres(np.ones((3, 2)), np.array([0, 1])), "disagree"),
    ],
)
def test_expected_mistakes_raise_one_line_mult_error(call, message):
    with pytest.raises(MultError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
