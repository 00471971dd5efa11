"""Pseudo-label diagnostics on cases small enough to count by hand."""

import numpy as np
import pytest

from mult.train.diagnostics import cluster_majority_ids, clustering_quality, cross_label_accuracy


def test_majority_and_purity_by_hand():
    labels = np.array([0, 0, 0, 1, 1, -1])
    truth = np.array([7, 7, 8, 9, 9, 9])
    assert cluster_majority_ids(labels, truth, 2).tolist() == [7, 9]
    q = clustering_quality(labels, truth)
    assert q["clusters"] == 2
    assert q["outliers"] == pytest.approx(1 / 6)
    assert q["purity"] == pytest.approx(4 / 5)  # the 8 in cluster 0 is the only impure member


def test_perfect_clustering_scores_one():
    q = clustering_quality(np.array([1, 1, 0, 0]), np.array([5, 5, 3, 3]))
    assert q["ari"] == pytest.approx(1.0) and q["nmi"] == pytest.approx(1.0) and q["purity"] == 1.0


def test_unknown_truth_gives_nothing():
    assert clustering_quality(np.array([0, 1]), np.array([-1, -1])) == {}


def test_cross_label_accuracy_by_hand():
    ir_labels, ir_truth = np.array([0, 0, 1, 1]), np.array([4, 4, 6, 6])  # IR cluster 0 = id 4, 1 = id 6
    vis_cross = np.array([0, 1, 1])  # visible images assigned to IR clusters
    vis_truth = np.array([4, 4, 6])
    assert cross_label_accuracy(vis_cross, vis_truth, ir_labels, ir_truth) == pytest.approx(2 / 3)
