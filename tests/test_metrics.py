"""Evaluation protocols (METHOD.md §8): hand-worked cases, the community loop as oracle, the runners."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mult.errors import MultError
from mult.metrics import (
    RegDBSplit,
    evaluate_regdb,
    evaluate_regdb_splits,
    evaluate_sysu,
    evaluate_sysu_trials,
    feature_distance,
    l2_normalize,
)
from mult.metrics.ranking import (
    average_precision_and_inp,
    cmc_from_hit_positions,
    deduplicated_hit_positions,
    sysu_removal_mask,
)
from mult.metrics.reference import reference_evaluate_regdb, reference_evaluate_sysu

# ----------------------------------------------------------------------------------------------------
# The 3x4 case worked out by hand.
#
# gallery   g0    g1    g2    g3
#   pid      1     2     1     3
#   cam      1     2     4     5
#
# q0: pid 1, cam 6, d = [0.4, 0.1, 0.3, 0.2] -> ranking g1(2) g3(3) g2(1) g0(1)
#     hits 0 0 1 1: AP = (1/3 + 2/4) / 2 = 5/12, INP = 2/4 = 1/2
#     de-duplicated ids [2, 3, 1] -> true id at rank 3; raw first hit also rank 3
# q1: pid 2, cam 3, d = [0.3, 0.1, 0.2, 0.4] -> ranking g1(2, cam2) g2(1) g0(1) g3(3)
#     SYSU: cam3 query drops the cam2 item g1 -> kept g2 g0 g3 has no id 2: INVALID
#     RegDB: hit at rank 1: AP = 1, INP = 1
# q2: pid 3, cam 3, d = [0.1, 0.2, 0.3, 0.4] -> ranking g0(1) g1(2, cam2) g2(1) g3(3)
#     SYSU: drop g1 -> kept g0(1) g2(1) g3(3): hit at kept rank 3: AP = 1/3, INP = 1/3;
#           de-duplicated ids [1, 3] -> true id at rank 2
#     RegDB: hit at rank 4: AP = 1/4, INP = 1/4
#
# SYSU  (valid q0, q2): CMC ranks (3, 2) -> [0, 1/2, 1, 1]; mAP = (5/12 + 1/3)/2 = 3/8;
#                       mINP = (1/2 + 1/3)/2 = 5/12
# RegDB (valid all):    CMC ranks (3, 1, 4) -> [1/3, 1/3, 2/3, 1]; mAP = (5/12 + 1 + 1/4)/3 = 5/9;
#                       mINP = (1/2 + 1 + 1/4)/3 = 7/12
# ----------------------------------------------------------------------------------------------------

HAND_D = np.array(
    [
        [0.4, 0.1, 0.3, 0.2],
        [0.3, 0.1, 0.2, 0.4],
        [0.1, 0.2, 0.3, 0.4],
    ]
)
HAND_QPIDS = np.array([1, 2, 3])
HAND_QCAMS = np.array([6, 3, 3])
HAND_GPIDS = np.array([1, 2, 1, 3])
HAND_GCAMS = np.array([1, 2, 4, 5])


def test_sysu_hand_worked_3x4():
    cmc, mAP, mINP = evaluate_sysu(HAND_D, HAND_QPIDS, HAND_GPIDS, HAND_QCAMS, HAND_GCAMS, max_rank=4)
    np.testing.assert_allclose(cmc, [0.0, 0.5, 1.0, 1.0])
    assert mAP == pytest.approx(3 / 8)
    assert mINP == pytest.approx(5 / 12)


def test_regdb_hand_worked_3x4():
    cmc, mAP, mINP = evaluate_regdb(HAND_D, HAND_QPIDS, HAND_GPIDS, max_rank=4)
    np.testing.assert_allclose(cmc, [1 / 3, 1 / 3, 2 / 3, 1.0], rtol=1e-6)
    assert mAP == pytest.approx(5 / 9)
    assert mINP == pytest.approx(7 / 12)


def test_cmc_is_padded_to_max_rank_with_its_last_value():
    cmc, _, _ = evaluate_sysu(HAND_D, HAND_QPIDS, HAND_GPIDS, HAND_QCAMS, HAND_GCAMS)  # 4 items, max_rank 20
    assert cmc.shape == (20,) and cmc.dtype == np.float32
    np.testing.assert_allclose(cmc[:4], [0.0, 0.5, 1.0, 1.0])
    assert (cmc[4:] == 1.0).all()
    cmc, _, _ = evaluate_regdb(HAND_D, HAND_QPIDS, HAND_GPIDS)
    assert cmc.shape == (20,) and (cmc[3:] == 1.0).all()


# ----------------------------------------------------------------------------------------------------
# the formula pieces, each on a small hand case


def test_sysu_removal_mask_only_cam3_queries_against_cam2_items():
    mask = sysu_removal_mask(np.array([3, 6]), np.array([1, 2, 4, 5]))
    assert mask.tolist() == [[False, True, False, False], [False, False, False, False]]


def test_average_precision_and_inp_by_hand():
    # q0 hits at ranks 2 and 4: AP = (1/2 + 2/4)/2 = 1/2, INP = 2/4.
    # q1 no hit -> invalid. q2 hits at raw positions 1, 3 but raw position 2 is removed:
    # kept ranks 1 and 2 -> AP = (1/1 + 2/2)/2 = 1, INP = 2/2 = 1.
    matches = np.array([[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]], dtype=bool)
    keep = np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 1]], dtype=bool)
    ap, inp, valid = average_precision_and_inp(matches, keep)
    assert valid.tolist() == [True, False, True]
    np.testing.assert_allclose(ap, [0.5, 1.0])
    np.testing.assert_allclose(inp, [0.5, 1.0])
    # Without the removal q2's hits are at ranks 1 and 3: AP = (1 + 2/3)/2 = 5/6, INP = 2/3.
    ap, inp, _ = average_precision_and_inp(matches)
    np.testing.assert_allclose(ap, [0.5, 5 / 6])
    np.testing.assert_allclose(inp, [0.5, 2 / 3])


def test_cmc_from_hit_positions_by_hand():
    # 0-based positions 0, 2, 2 of 4 valid queries (one valid query beyond max_rank at position 7):
    # counts at ranks 1..3 = 1, 1, 3 -> divided by 4.
    cmc = cmc_from_hit_positions(np.array([0, 2, 2, 7]), num_valid=4, max_rank=3)
    np.testing.assert_allclose(cmc, [0.25, 0.25, 0.75])


def test_deduplicated_hit_positions_by_hand():
    # Gallery ids [5, 5, 7, 1]; query id 1 ranks the columns 0, 1, 2, 3 in that order:
    # de-duplicated [5, 7, 1] -> position 2. With column 2 (id 7) removed: [5, 1] -> position 1.
    order = np.array([[0, 1, 2, 3]])
    g_pids = np.array([5, 5, 7, 1])
    position, valid = deduplicated_hit_positions(order, np.array([1]), g_pids)
    assert valid.tolist() == [True] and position.tolist() == [2]
    removed = np.array([[False, False, True, False]])
    position, _ = deduplicated_hit_positions(order, np.array([1]), g_pids, removed)
    assert position.tolist() == [1]
    # the query's only item removed -> invalid
    _, valid = deduplicated_hit_positions(order, np.array([1]), g_pids, np.array([[0, 0, 0, 1]], dtype=bool))
    assert valid.tolist() == [False]


def test_feature_distance_is_squared_euclidean_of_normalised_features():
    # q = (3, 4)/5 = (0.6, 0.8); g = (1, 0) and (0, 1) after normalisation:
    # d = 2 - 2 cos = 2 - 1.2 = 0.8 and 2 - 1.6 = 0.4
    d = feature_distance(np.array([[3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(d, [[0.8, 0.4]], atol=1e-6)
    assert d.dtype == np.float32
    np.testing.assert_allclose(l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])), [[0.6, 0.8], [0.0, 0.0]])


# ----------------------------------------------------------------------------------------------------
# the protocol rules


def test_cam3_query_ignores_cam2_match_but_cam6_query_does_not():
    # g0: id 1 in cam2, g1: id 2 in cam1. q0 (id 1) only has its match in cam2; q1 (id 2) ranks g0 first.
    d = np.array([[0.1, 0.9], [0.2, 0.5]])
    q_pids, g_pids, g_cams = np.array([1, 2]), np.array([1, 2]), np.array([2, 1])
    # Both queries from cam3: q0 loses its only match (invalid); q1 loses the wrong g0 -> hit at rank 1.
    cmc, mAP, mINP = evaluate_sysu(d, q_pids, g_pids, np.array([3, 3]), g_cams, max_rank=2)
    np.testing.assert_allclose(cmc, [1.0, 1.0])
    assert (mAP, mINP) == (1.0, 1.0)
    # Both from cam6: nothing removed; q0 hit at rank 1 (AP 1), q1 at rank 2 (AP 1/2, INP 1/2).
    cmc, mAP, mINP = evaluate_sysu(d, q_pids, g_pids, np.array([6, 6]), g_cams, max_rank=2)
    np.testing.assert_allclose(cmc, [0.5, 1.0])
    assert mAP == pytest.approx(0.75) and mINP == pytest.approx(0.75)


def test_deduplicated_cmc_differs_from_raw_ranking():
    # A wrong id (5) takes ranks 1 and 2; the true id (1) is third.
    d = np.array([[0.1, 0.2, 0.3]])
    q_pids, g_pids = np.array([1]), np.array([5, 5, 1])
    cmc_sysu, map_sysu, minp_sysu = evaluate_sysu(d, q_pids, g_pids, np.array([6]), np.array([1, 4, 5]), max_rank=3)
    cmc_regdb, map_regdb, minp_regdb = evaluate_regdb(d, q_pids, g_pids, max_rank=3)
    np.testing.assert_allclose(cmc_sysu, [0.0, 1.0, 1.0])  # de-duplicated [5, 1]: rank 2
    np.testing.assert_allclose(cmc_regdb, [0.0, 0.0, 1.0])  # raw: rank 3
    # mAP/mINP use the raw ranking in both protocols: AP = INP = 1/3
    assert map_sysu == map_regdb == pytest.approx(1 / 3)
    assert minp_sysu == minp_regdb == pytest.approx(1 / 3)


def test_queries_without_a_match_are_skipped():
    # q1 (id 9) is absent from the gallery: it adds zeros to the CMC sum, and the sum is divided by
    # the ONE valid query, so the curve is 1.0, not 0.5; mAP is over q0 only.
    d = np.array([[0.1, 0.5], [0.3, 0.2]])
    q_pids, g_pids = np.array([1, 9]), np.array([1, 2])
    cmc, mAP, mINP = evaluate_sysu(d, q_pids, g_pids, np.array([6, 6]), np.array([1, 4]), max_rank=2)
    np.testing.assert_allclose(cmc, [1.0, 1.0])
    assert (mAP, mINP) == (1.0, 1.0)
    cmc, mAP, mINP = evaluate_regdb(d, q_pids, g_pids, max_rank=2)
    np.testing.assert_allclose(cmc, [1.0, 1.0])
    assert (mAP, mINP) == (1.0, 1.0)


def test_no_valid_query_is_one_clear_error():
    d = np.array([[0.1, 0.5]])
    with pytest.raises(MultError, match="no query has a true match"):
        evaluate_regdb(d, np.array([7]), np.array([1, 2]))
    with pytest.raises(MultError, match="no query has a true match"):  # its only match is removed
        evaluate_sysu(d, np.array([1]), np.array([1, 2]), np.array([3]), np.array([2, 1]))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: evaluate_regdb(np.zeros(3), np.array([1]), np.array([1])), "2-D"),
        (lambda: evaluate_regdb(np.zeros((2, 3)), np.array([1]), np.array([1, 2, 3])), "q_pids"),
        (lambda: evaluate_regdb(np.zeros((1, 2)), np.array([1]), np.array([1.0, 2.0])), "integers"),
        (lambda: evaluate_regdb(np.array([[np.nan, 0.0]]), np.array([1]), np.array([1, 2])), "NaN"),
        (lambda: evaluate_regdb(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), max_rank=0), "max_rank"),
        (lambda: evaluate_sysu(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), np.array([3]), np.array([1])),
         "g_camids"),
    ],
)
def test_malformed_inputs_raise_multerror(call, message):
    with pytest.raises(MultError, match=message):
        call()


# ----------------------------------------------------------------------------------------------------
# equivalence with the community per-query loop


def _random_case(rng: np.random.Generator, num_q: int, num_g: int, num_ids: int, ties: bool):
    # Integer-valued distances give many ties; ids repeat across the gallery.
    d = rng.integers(0, 6, size=(num_q, num_g)).astype(np.float64) if ties else rng.random((num_q, num_g))
    return (
        d,
        rng.integers(0, num_ids, num_q),
        rng.integers(0, num_ids, num_g),
        rng.choice([3, 6], num_q),
        rng.choice([1, 2, 4, 5], num_g),
    )


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("shape", [(40, 60, 8), (25, 150, 30), (30, 12, 5), (5, 3, 3)])
def test_vectorised_equals_loop_reference(shape, ties):
    num_q, num_g, num_ids = shape
    rng = np.random.default_rng(num_q * 1000 + num_g + ties)
    for _ in range(4):
        d, q_pids, g_pids, q_cams, g_cams = _random_case(rng, num_q, num_g, num_ids, ties)
        for ours, loop, args in (
            (evaluate_sysu, reference_evaluate_sysu, (q_pids, g_pids, q_cams, g_cams)),
            (evaluate_regdb, reference_evaluate_regdb, (q_pids, g_pids)),
        ):
            try:
                expected = loop(d, *args)
            except MultError:
                with pytest.raises(MultError):
                    ours(d, *args)
                continue
            got = ours(d, *args)
            assert got[0].dtype == expected[0].dtype and np.array_equal(got[0], expected[0])
            # only the summation order differs for AP
            assert got[1] == pytest.approx(expected[1], rel=0, abs=1e-12)
            assert got[2] == pytest.approx(expected[2], rel=0, abs=1e-12)


def test_sysu_equals_regdb_when_no_rule_applies():
    # No cam3 query and every id once in the gallery: de-duplication and removal change nothing.
    rng = np.random.default_rng(3)
    d = rng.random((30, 20))
    g_pids = np.arange(20)
    q_pids = rng.integers(0, 20, 30)
    sysu = evaluate_sysu(d, q_pids, g_pids, np.full(30, 6), np.ones(20, dtype=int))
    regdb = evaluate_regdb(d, q_pids, g_pids)
    np.testing.assert_array_equal(sysu[0], regdb[0])
    assert sysu[1:] == regdb[1:]


# ----------------------------------------------------------------------------------------------------
# runners


def test_regdb_splits_mean_and_std():
    # Split 1: each query equals its own gallery item -> R1 = mAP = mINP = 100.
    # Split 2: q1 = (1, 0) has id 1 but is closest to g0 (id 0) -> its match is at rank 2:
    #          R1 = 50, R5.. = 100, mAP = mINP = (1 + 1/2)/2 = 75.
    # mean: R1 75, mAP 87.5; sample std: R1 sqrt(2 * 25^2) = 35.355, mAP sqrt(2 * 12.5^2) = 17.678.
    eye = np.eye(2)
    ids = np.array([0, 1])
    splits = [RegDBSplit(eye, ids, eye, ids), (np.array([[1.0, 0.0], [1.0, 0.0]]), ids, eye, ids)]
    summary = evaluate_regdb_splits(splits, protocol="regdb-v2t")
    assert [t.label for t in summary.trials] == ["split 1", "split 2"]
    assert summary.trials[1].rank1 == pytest.approx(50.0) and summary.trials[1].rank5 == pytest.approx(100.0)
    assert summary.mean.rank1 == pytest.approx(75.0)
    assert summary.mean.mAP == pytest.approx(87.5) and summary.mean.mINP == pytest.approx(87.5)
    assert summary.std.rank1 == pytest.approx(35.3553, abs=1e-3)
    assert summary.std.mAP == pytest.approx(17.6777, abs=1e-3)
    assert summary.std.rank20 == 0.0


def test_sysu_trials_use_each_gallery_subset():
    # Queries: q0 id 0 cam6 (1, 0); q1 id 1 cam3 (0, 1).
    # Pool: r0 id 0 cam1 (1, 0); r1 id 1 cam2 (0, 1); r2 id 1 cam4 (.8, .6); r3 id 0 cam5 (.6, .8).
    # Trial 0 = rows [1, 0]: q0 hits r0 at rank 1; q1 (cam3) loses r1 (cam2) -> invalid.
    #   -> R1 100, mAP 100, mINP 100.
    # Trial 1 = rows [3, 2]: q0: r2 at d = 2 - 1.6 = 0.4 (wrong), r3 at 0.8 -> rank 2;
    #   q1: r3 at 0.4 (wrong), r2 at 0.8 -> rank 2.  -> R1 0, R5 100, mAP 50, mINP 50.
    # mean R1 50, mAP 75; std R1 sqrt(2 * 50^2) = 70.71, mAP 35.36.
    query = np.array([[1.0, 0.0], [0.0, 1.0]])
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.6, 0.8]])
    summary = evaluate_sysu_trials(
        query, np.array([0, 1]), np.array([6, 3]),
        pool, np.array([0, 1, 1, 0]), np.array([1, 2, 4, 5]),
        [np.array([1, 0]), np.array([3, 2])],
    )
    first, second = summary.trials
    assert (first.label, first.rank1, first.mAP, first.mINP) == ("trial 0", 100.0, 100.0, 100.0)
    assert (second.rank1, second.rank5) == (0.0, 100.0)
    assert second.mAP == pytest.approx(50.0) and second.mINP == pytest.approx(50.0)
    assert summary.mean.rank1 == pytest.approx(50.0) and summary.mean.mAP == pytest.approx(75.0)
    assert summary.std.rank1 == pytest.approx(70.7107, abs=1e-3)
    assert summary.std.mAP == pytest.approx(35.3553, abs=1e-3)

    payload = json.loads(json.dumps(summary.as_dict()))
    assert payload["num_trials"] == 2 and payload["mean"]["mAP"] == pytest.approx(75.0)
    table = summary.render().splitlines()
    assert table[0] == "sysu (2 trials)"
    assert [line.split()[0] for line in table[2:] if not line.startswith("-")] == ["trial", "trial", "mean", "std"]
    assert table[-2].split()[1:] == ["50.00", "100.00", "100.00", "100.00", "75.00", "75.00"]


def test_single_trial_has_zero_std():
    eye = np.eye(2)
    summary = evaluate_regdb_splits([(eye, np.array([0, 1]), eye, np.array([0, 1]))])
    assert summary.std.values() == [0.0] * 6
    assert summary.mean.values() == summary.trials[0].values()


def test_runner_input_errors_are_one_line():
    eye = np.eye(2)
    ids, cams = np.array([0, 1]), np.array([1, 4])
    with pytest.raises(MultError, match="outside the pool"):
        evaluate_sysu_trials(eye, ids, np.array([6, 6]), eye, ids, cams, [np.array([0, 2])])
    with pytest.raises(MultError, match="dim"):
        evaluate_sysu_trials(eye, ids, np.array([6, 6]), np.ones((2, 3)), ids, cams, [np.array([0, 1])])
    with pytest.raises(MultError, match="NaN"):
        evaluate_regdb_splits([(np.array([[np.nan, 1.0], [0.0, 1.0]]), ids, eye, ids)])
    with pytest.raises(MultError, match="empty"):
        evaluate_regdb_splits([])
