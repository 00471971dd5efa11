"""Cross-modality k-reciprocal re-ranking (mult.rerank, issue 17): against the row-by-row re-statement of the
official MULT code (benchmarks/reference_rerank.py), hand-worked steps, a clustered case where it helps, bad
input, the query-time form and the ``--rerank`` evaluation path."""

from __future__ import annotations

import json
import math
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from benchmarks.reference_rerank import reference_cross_modality_rerank
from mult.errors import MultError
from mult.metrics import evaluate_regdb
from mult.rerank import (
    cross_jaccard,
    cross_modality_rerank,
    expand_sets,
    intra_modality_rerank,
    k_reciprocal_sets,
    reciprocal_weights,
    rerank_candidates,
    squared_distances,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _random(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    return _unit(rng.standard_normal((n, dim)))


# --- the vectorised module against the loop re-statement ---------------------------------------------


@pytest.mark.parametrize(
    "num_q, num_g, k",
    [(12, 15, 3), (30, 25, 5), (40, 50, 20), (20, 20, 1), (33, 17, 7), (7, 3, 20), (1, 6, 2), (5, 1, 1), (2, 2, 4)],
)
@pytest.mark.parametrize("original, normalise", [("plain", "columns"), ("pooled", "columns"), ("plain", "rows")])
def test_matches_the_loop_restatement(num_q, num_g, k, original, normalise):
    # (7, 3, 20), (1, 6, 2), (5, 1, 1), (2, 2, 4): k larger than a side, one-item sides, k = 1 (no query expansion).
    rng = np.random.default_rng(num_q * 100 + num_g + k)
    q, g = _random(rng, num_q, 16), _random(rng, num_g, 16)
    ours = cross_modality_rerank(q, g, k=k, original=original, normalise=normalise)
    ref = reference_cross_modality_rerank(q, g, k=k, original=original, normalise=normalise)
    assert ours.dtype == np.float32 and ours.shape == (num_q, num_g)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_matches_with_non_default_intra_parameters_and_eta():
    rng = np.random.default_rng(7)
    q, g = _random(rng, 25, 8), _random(rng, 30, 8)
    kwargs = dict(k=6, eta=0.4, intra_k2=1, intra_lambda=0.0)
    np.testing.assert_allclose(cross_modality_rerank(q, g, **kwargs), reference_cross_modality_rerank(q, g, **kwargs),
                               rtol=0, atol=1e-6)


def test_intra_step_matches_the_loop_restatement():
    from benchmarks.reference_rerank import intra_rerank

    rng = np.random.default_rng(3)
    x = _random(rng, 40, 8)
    d = squared_distances(x, x)
    np.testing.assert_allclose(intra_modality_rerank(d, k1=5), intra_rerank(d.astype(np.float64), 5), atol=1e-6)


def test_features_are_normalised_here():
    rng = np.random.default_rng(4)
    q, g = _random(rng, 10, 8), _random(rng, 12, 8)
    np.testing.assert_allclose(cross_modality_rerank(3.0 * q, 0.5 * g, k=4), cross_modality_rerank(q, g, k=4), atol=1e-6)


# --- named steps worked out by hand -------------------------------------------------------------------


def test_k_reciprocal_sets_by_hand():
    """k = 1: each list is cut to its first 2 entries.

    forward (sources -> targets): 0: [0, 1], 1: [1, 2], 2: [2, 0]
    backward (targets -> sources): 0: [1, 0], 1: [2, 1], 2: [0, 2]
    R(0): target 0 lists source 0 (yes), target 1 does not -> {0}; R(1): target 1 lists 1, target 2 not -> {1};
    R(2): target 2 lists 2, target 0 not -> {2}.
    """
    forward = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])
    backward = np.array([[1, 0, 2], [2, 1, 0], [0, 2, 1]])
    assert k_reciprocal_sets(forward, backward, 1).toarray().tolist() == np.eye(3).tolist()
    # k = 2 keeps all three entries of every list: everybody is reciprocal.
    assert k_reciprocal_sets(forward, backward, 2).toarray().tolist() == np.ones((3, 3)).tolist()


def test_expand_sets_by_hand():
    """R(0) = {0, 1, 2}. Half sets: H(0) = {0, 1} shares 2 > 2/3 * 2 -> added (nothing new);
    H(1) = {1, 3} shares 1, not > 4/3 -> not added; H(2) = {0, 1, 2, 3} shares 3 > 8/3 -> added, bringing 3.
    With H(2) = {1, 2, 3} it would share 2, not > 2 (the test is strict): 3 stays out."""
    recip = sp.csr_matrix(np.array([[1.0, 1, 1, 0]]))
    half = sp.csr_matrix(np.array([[1.0, 1, 0, 0], [0, 1, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]]))
    assert expand_sets(recip, half).toarray().tolist() == [[1, 1, 1, 1]]
    half_strict = sp.csr_matrix(np.array([[1.0, 1, 0, 0], [0, 1, 0, 1], [0, 1, 1, 1], [0, 0, 0, 1]]))
    assert expand_sets(recip, half_strict).toarray().tolist() == [[1, 1, 1, 0]]


def test_reciprocal_weights_by_hand():
    """One source, three targets at scaled distances 0.2, 0.5, 0.9; k = 1 keeps the first 2 forward entries
    {0, 1}; every target lists the only source, so R = {0, 1}. Half sets use round(1/2) = 0 (numpy rounds
    half to even): H(c) = {c}, already in R. V = (e^-0.2, e^-0.5, 0) / (e^-0.2 + e^-0.5); no query expansion."""
    dist = np.array([[0.2, 0.5, 0.9]], dtype=np.float32)
    forward = np.array([[0, 1, 2]])
    backward = np.zeros((3, 1), dtype=np.int64)
    half = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0]])
    v = reciprocal_weights(dist, forward, backward, half, np.zeros((1, 1), dtype=np.int64), k=1, expansion=1)
    a, b = math.exp(-0.2), math.exp(-0.5)
    np.testing.assert_allclose(v.toarray(), [[a / (a + b), b / (a + b), 0.0]], atol=1e-7)


def test_cross_jaccard_by_hand():
    """One query, two gallery items. Joint rows [query | gallery columns], each divided by its sum:
    query  (V_qq, V_qg) = (1 | 0.75, 0.25) / 2 = (0.5 | 0.375, 0.125)
    g0     (V_gq, V_gg) = (1 | 0.5, 0.5) / 2   = (0.5 | 0.25, 0.25)
    g1     (V_gq, V_gg) = (0 | 0, 1) / 1       = (0 | 0, 1)          (an empty cross set: the row sums to 1)
    S(q, g0) = 0.5 + 0.25 + 0.125 = 0.875 -> J = 1 - 0.875 / 1.125 = 2/9
    S(q, g1) = 0.125                      -> J = 1 - 0.125 / 1.875 = 14/15."""
    csr = sp.csr_matrix
    jac = cross_jaccard(csr([[1.0]]), csr([[0.75, 0.25]]), csr([[1.0], [0.0]]), csr([[0.5, 0.5], [0.0, 1.0]]))
    np.testing.assert_allclose(jac, [[2 / 9, 14 / 15]], atol=1e-12)


def test_intra_step_of_identical_pairs():
    """Two tight pairs far apart, k1 = 1, k2 = 2: each pair is mutually reciprocal, so both members get the
    same expanded set and, after averaging over the pair, the same weights: J = 0 inside a pair, 1 across.
    The result is 0.7 J + 0.3 D with D the row-scaled distance."""
    x = _unit(np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.01, 1.0]]))
    d = squared_distances(x, x)
    out = intra_modality_rerank(d, k1=1, k2=2)
    scaled = d / d.max(axis=1, keepdims=True)
    jac = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_allclose(out, 0.7 * jac + 0.3 * scaled, atol=1e-6)


# --- a case where it helps ----------------------------------------------------------------------------


def _clustered(seed: int, ids: int = 20, per: int = 6, dim: int = 64):
    """``per`` images per identity and modality: centre + modality offset + strong noise, unit rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    offset = 0.8 * rng.standard_normal(dim)
    pids = np.repeat(np.arange(ids), per)
    q = _unit(centres[pids] + offset + 1.3 * rng.standard_normal((pids.size, dim)))
    g = _unit(centres[pids] - offset + 1.3 * rng.standard_normal((pids.size, dim)))
    return q, pids, g, pids.copy()


def test_reciprocal_structure_fixes_wrong_nearest_neighbours():
    # Noisy clusters: 16 of 120 queries have a wrong-identity nearest neighbour; the neighbours those queries
    # and the wrong items share with their own identities (k = images per identity) put 15 of them right.
    q, q_pids, g, g_pids = _clustered(seed=1)
    plain = squared_distances(q, g)
    reranked = cross_modality_rerank(q, g, k=6)
    plain_hit = g_pids[plain.argmin(axis=1)] == q_pids
    rerank_hit = g_pids[reranked.argmin(axis=1)] == q_pids
    fixed = np.flatnonzero(~plain_hit & rerank_hit)
    assert fixed.size >= 10 and (plain_hit & ~rerank_hit).sum() <= 1
    query = fixed[0]
    assert g_pids[plain[query].argmin()] != q_pids[query] and g_pids[reranked[query].argmin()] == q_pids[query]
    _, map_plain, _ = evaluate_regdb(plain, q_pids, g_pids)
    _, map_rerank, _ = evaluate_regdb(reranked, q_pids, g_pids)
    assert map_rerank > map_plain + 0.1


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(query=np.ones(4)), "query must be a non-empty 2-D array"),
        (dict(gallery=np.ones((0, 4))), "gallery must be a non-empty 2-D array"),
        (dict(gallery=np.ones((3, 5))), "query has dim 4 but gallery has 5"),
        (dict(query=np.array([[1.0, np.nan, 0, 0]])), "query contains NaN or infinite values"),
        (dict(gallery=np.full((2, 4), np.inf)), "gallery contains NaN or infinite values"),
        (dict(query=np.array([["a", "b", "c", "d"]])), "query must hold real numbers"),
        (dict(k=0), "k must be a positive integer, got 0"),
        (dict(k=2.5), "k must be a positive integer"),
        (dict(k=True), "k must be a positive integer"),
        (dict(intra_k2=0), "intra_k2 must be a positive integer"),
        (dict(eta=1.5), r"eta must be a number in \[0, 1\]"),
        (dict(intra_lambda=-0.1), r"intra_lambda must be a number in \[0, 1\]"),
        (dict(original="mean"), "original must be one of 'plain', 'pooled'"),
        (dict(normalise="global"), "normalise must be one of 'columns', 'rows'"),
    ],
)
def test_bad_input_is_one_line_multerror(kwargs, message):
    args = dict(query=np.ones((2, 4)), gallery=np.eye(3, 4), k=2)
    args.update(kwargs)
    query, gallery = args.pop("query"), args.pop("gallery")
    with pytest.raises(MultError, match=message) as err:
        cross_modality_rerank(query, gallery, **args)
    assert "\n" not in str(err.value)


def test_bad_candidates_input_is_one_line_multerror():
    with pytest.raises(MultError, match=r"query must be a non-empty 1-D array \[dim\]"):
        rerank_candidates(np.ones((1, 4)), np.eye(3, 4))
    with pytest.raises(MultError, match="same_modality has dim 3 but query has 4"):
        rerank_candidates(np.ones(4), np.eye(3, 4), same_modality=np.ones((2, 3)))
    with pytest.raises(MultError, match="candidates must be a non-empty 2-D array"):
        rerank_candidates(np.ones(4), np.ones((0, 4)))
    with pytest.raises(MultError, match="candidates has dim 5 but query has 4"):
        rerank_candidates(np.ones(4), np.ones((3, 5)))


# --- query time: one query against the index's top-N ----------------------------------------------------


def test_rerank_candidates_is_the_small_problem_with_row_scaling():
    rng = np.random.default_rng(11)
    query, candidates, extra = _random(rng, 1, 16)[0], _random(rng, 30, 16), _random(rng, 4, 16)
    for same in (None, extra):
        side = query[None] if same is None else np.concatenate([query[None], same])
        res = rerank_candidates(query, candidates, same_modality=same, k=5)
        ref = reference_cross_modality_rerank(side, candidates, k=5, normalise="rows")[0]
        assert sorted(res.order.tolist()) == list(range(30))
        assert res.order.dtype == np.int64 and res.distances.dtype == np.float32
        assert np.all(np.diff(res.distances) >= 0)
        np.testing.assert_allclose(res.distances, ref[res.order], atol=1e-6)
        assert res.order.tolist() == np.argsort(ref, kind="stable").tolist()


def test_rerank_candidates_with_k_beyond_the_list_and_a_single_candidate():
    rng = np.random.default_rng(12)
    query, candidates = _random(rng, 1, 8)[0], _random(rng, 5, 8)
    res = rerank_candidates(query, candidates, k=50)
    ref = reference_cross_modality_rerank(query[None], candidates, k=50, normalise="rows")[0]
    np.testing.assert_allclose(res.distances, ref[res.order], atol=1e-6)
    one = rerank_candidates(query, candidates[:1])
    assert one.order.tolist() == [0] and np.isfinite(one.distances).all()


def test_candidates_fix_wrong_top_matches_with_same_modality_images():
    # The clustered set of the test above, each query's top-30 candidates re-ranked with the other images of
    # its modality as extra query rows: 14 of the 16 wrong top matches become right, none of the 104 right
    # ones goes wrong. (With the query alone it fixes 5 and breaks 9: see the rerank_candidates docstring.)
    q, q_pids, g, g_pids = _clustered(seed=1)
    plain = squared_distances(q, g)
    was_right = g_pids[plain.argmin(axis=1)] == q_pids
    now_right = np.zeros_like(was_right)
    for query in range(len(q)):
        top = np.argsort(plain[query])[:30]
        res = rerank_candidates(q[query], g[top], same_modality=np.delete(q, query, axis=0), k=6)
        now_right[query] = g_pids[top[res.order[0]]] == q_pids[query]
    assert (~was_right & now_right).sum() >= 10 and (was_right & ~now_right).sum() <= 1


# --- the evaluation path with --rerank ------------------------------------------------------------------


class _PidEncoder:
    """Features from the person id in the path (its parent folder, in both layouts): a centre per id, a
    modality offset and per-file noise seeded by the path, so every call gives the same vectors."""

    def encode(self, paths, modality):
        rows = []
        for path in paths:
            pid = int(Path(path).parent.name)
            centre = np.random.default_rng(pid).standard_normal(32)
            noise = np.random.default_rng(zlib.crc32(str(path).encode())).standard_normal(32)
            offset = 0.5 if str(modality).endswith("visible") else -0.5
            rows.append(centre + offset + 0.8 * noise)
        return _unit(np.array(rows))


@pytest.mark.parametrize("name", ["sysu", "regdb"])
def test_evaluation_reports_plain_and_reranked_side_by_side(name, sysu_tree, regdb_tree):
    from mult.datasets import evaluate_dataset

    root = sysu_tree.root if name == "sysu" else regdb_tree.root
    plain = evaluate_dataset(_PidEncoder(), name, root, trials=2)
    both = evaluate_dataset(_PidEncoder(), name, root, trials=2, rerank=True)
    names = ["sysu-all", "sysu-indoor"] if name == "sysu" else ["regdb-v2t", "regdb-t2v"]
    assert list(plain) == names
    assert list(both) == [key for n in names for key in (n, f"{n}-rerank")]
    for key in names:
        assert both[key].as_dict() == plain[key].as_dict()  # the plain numbers do not move
        reranked = both[f"{key}-rerank"]
        assert reranked.protocol == f"{key}, re-ranked (k=15, eta=0.1)" and "re-ranked" in reranked.render()
        assert len(reranked.trials) == len(plain[key].trials)
        assert all(np.isfinite(t.values()).all() for t in reranked.trials)


def test_regdb_reranked_numbers_are_the_rerank_of_the_test_split(regdb_tree):
    from mult.data.records import Modality
    from mult.data.regdb import RegDB
    from mult.datasets import evaluate_dataset
    from mult.metrics.protocol import TrialResult

    result = evaluate_dataset(_PidEncoder(), "regdb", regdb_tree.root, rerank=True)["regdb-t2v-rerank"]
    reader = RegDB(regdb_tree.root, split=1)
    visible, thermal = reader.test(Modality.visible), reader.test(Modality.infrared)
    enc = _PidEncoder()
    t_feats = enc.encode([r.path for r in thermal], Modality.infrared)
    v_feats = enc.encode([r.path for r in visible], Modality.visible)
    dist = cross_modality_rerank(t_feats, v_feats, k=15, eta=0.1)
    expected = TrialResult.from_metrics(
        "split 1", *evaluate_regdb(dist, np.array([r.pid for r in thermal]), np.array([r.pid for r in visible])))
    assert result.trials[0] == expected


def test_cli_evaluate_rerank_flag(regdb_tree, tmp_path, capsys, monkeypatch):
    import mult.cli.train as cli_train
    from mult.cli import main

    @contextmanager
    def fake_deployment(server, local):
        yield _PidEncoder()

    monkeypatch.setattr(cli_train, "encoder_from_options", fake_deployment)
    argv = ["evaluate", "--local", str(tmp_path), "--dataset", "regdb", "--data-root", str(regdb_tree.root), "--json"]
    outputs = []
    for extra in ([], ["--rerank"]):
        with pytest.raises(SystemExit) as exc:
            main(argv + extra)
        assert exc.value.code in (0, None)
        outputs.append(json.loads(capsys.readouterr().out))
    plain, both = outputs
    assert set(plain) == {"regdb-v2t", "regdb-t2v"}
    assert set(both) == set(plain) | {"regdb-v2t-rerank", "regdb-t2v-rerank"}
    assert all(both[key] == plain[key] for key in plain)
