"""The community cross-modality ReID metrics (METHOD.md §8), vectorised over queries.

Same numbers as ``eval_sysu`` / ``eval_regdb`` of the AGW/CAJ code that ADCA, PGM, GUR and MULT use
unchanged, so results are comparable with published tables; the per-query loop is replaced by one
argsort and array operations (the loop form lives in :mod:`mult.metrics.reference` for checking).

Ranks are 1-based in the docstrings ("rank 1" = best match). Ties in the distance matrix are broken
exactly as the community code breaks them: by ``np.argsort(distmat, axis=1)`` with numpy's default sort.
"""

from __future__ import annotations

import numpy as np

from mult.errors import MultError

# Cameras of the SYSU-MM01 rule (METHOD.md §8.2): cam2 (RGB) and cam3 (IR) film the same place.
SYSU_SHARED_SCENE_QUERY_CAM = 3
SYSU_SHARED_SCENE_GALLERY_CAM = 2


# ----------------------------------------------------------------------------------------------------
# input checks


def _as_distmat(distmat: np.ndarray) -> np.ndarray:
    d = np.asarray(distmat)
    if d.ndim != 2 or d.shape[0] == 0 or d.shape[1] == 0:
        raise MultError(f"distmat must be a non-empty 2-D array [queries, gallery], got shape {d.shape}")
    if d.dtype.kind not in "fiu":
        raise MultError(f"distmat must hold real numbers, got dtype {d.dtype}")
    if d.dtype.kind == "f" and np.isnan(d).any():
        raise MultError(f"distmat contains {int(np.isnan(d).sum())} NaN values: check the features for NaN")
    return d


def _as_ids(values: np.ndarray, name: str, length: int) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1 or a.shape[0] != length:
        raise MultError(f"{name} must be a 1-D array of length {length} (matching distmat), got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise MultError(f"{name} must hold integers, got dtype {a.dtype}")
    return a


def _check_max_rank(max_rank: int) -> int:
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise MultError(f"max_rank must be a positive integer, got {max_rank!r}")
    return int(max_rank)


def _no_valid_query(num_q: int, num_g: int) -> MultError:
    return MultError(
        f"no query has a true match in the gallery ({num_q} queries, {num_g} gallery items): "
        "check that query and gallery person ids come from the same test split"
    )


# ----------------------------------------------------------------------------------------------------
# the formulas


def _sysu_rule_factors(q_camids: np.ndarray, g_camids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The camera rule factorises: removed = (query is cam3) [Nq] x (item is cam2) [Ng]."""
    return (
        np.asarray(q_camids) == SYSU_SHARED_SCENE_QUERY_CAM,
        np.asarray(g_camids) == SYSU_SHARED_SCENE_GALLERY_CAM,
    )


def sysu_removal_mask(q_camids: np.ndarray, g_camids: np.ndarray) -> np.ndarray:
    """SYSU-MM01 camera rule (METHOD.md §8.2): ``[Nq, Ng]`` bool, True where the gallery item is ignored.

    A query from cam3 (IR) never sees gallery images from cam2 (RGB), whatever the identity, because both
    cameras film the same place; every other pair is kept.
    """
    q, g = _sysu_rule_factors(q_camids, g_camids)
    return q[:, None] & g[None, :]


def average_precision_and_inp(
    matches: np.ndarray, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query AP and INP on the raw (not de-duplicated) ranking (METHOD.md §8.1).

    ``matches[q, r]`` says whether the gallery item at 0-based position ``r`` of query ``q``'s ranking
    has the query's id; ``keep`` (same shape, optional) drops items before ranks are counted.
    With positives at kept ranks ``r_1 < ... < r_m``:
    ``AP = mean_k (k / r_k)`` (precision at each positive) and ``INP = m / r_m`` (hardest positive).

    Returns ``(ap, inp, valid)``: ``valid`` [Nq] bool marks queries with at least one kept positive;
    ``ap`` and ``inp`` hold only those queries, in query order.
    """
    positive = matches if keep is None else matches & keep
    rows, cols = np.nonzero(positive)  # row-major: grouped by query, ranks ascending
    num_pos = np.bincount(rows, minlength=positive.shape[0])
    valid = num_pos > 0
    if keep is None:
        kept_rank = cols + 1
    else:
        # rank among kept items only (removed items do not count as ranks)
        kept_rank = np.cumsum(keep, axis=1, dtype=np.int32)[rows, cols]
    starts = np.cumsum(num_pos) - num_pos
    k = np.arange(rows.shape[0]) - starts[rows] + 1  # 1-based index of each positive within its query
    precision = k / kept_rank
    counts = num_pos[valid]
    first = starts[valid]
    ap = np.add.reduceat(precision, first) / counts if first.size else np.zeros(0)
    inp = counts / kept_rank[first + counts - 1] if first.size else np.zeros(0)
    return ap, inp, valid


def cmc_from_hit_positions(hit_position: np.ndarray, num_valid: int, max_rank: int) -> np.ndarray:
    """CMC curve (METHOD.md §8.1): ``cmc[k] = #{valid queries with first hit at position <= k} / num_valid``.

    ``hit_position`` holds one 0-based position per valid query (of its first true match). The curve
    always has ``max_rank`` entries; past the last possible position it stays at its last value.
    float32 like the community code.
    """
    counts = np.bincount(np.minimum(hit_position, max_rank), minlength=max_rank + 1)[:max_rank]
    return np.cumsum(counts).astype(np.float32) / float(num_valid)


def deduplicated_hit_positions(
    order: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    removed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Position of the true id in each query's de-duplicated id list (METHOD.md §8.2, "CMC quirk").

    The community SYSU code ranks the gallery, drops removed items, keeps only the first occurrence of
    each id, and looks for the query id in that list. Equivalently: the position is the number of
    distinct ids whose first kept item ranks before the query id's first kept item. ``removed`` is in
    gallery-column order (as from :func:`sysu_removal_mask`).

    Returns ``(position, valid)``: ``valid`` [Nq] marks queries whose id has a kept gallery item;
    ``position`` (0-based) holds only those queries.
    """
    num_q, num_g = order.shape
    ids, g_group = np.unique(g_pids, return_inverse=True)
    by_id = np.argsort(g_group, kind="stable")  # gallery columns grouped by id
    slot = np.empty(num_g, dtype=np.intp)
    slot[by_id] = np.arange(num_g)  # column -> its place in the grouped layout

    # rank_by_id[q, slot[c]] = 0-based rank of column c for query q (inverse permutation, one flat scatter)
    rank_by_id = np.empty(num_q * num_g, dtype=np.int32)
    rank_by_id[slot[order] + (np.arange(num_q) * num_g)[:, None]] = np.arange(num_g, dtype=np.int32)
    rank_by_id = rank_by_id.reshape(num_q, num_g)
    if removed is not None:
        rank_by_id[removed[:, by_id]] = num_g  # after every real rank, so never a first occurrence

    group_starts = np.flatnonzero(np.r_[True, np.diff(g_group[by_id]) != 0])
    first_rank = np.minimum.reduceat(rank_by_id, group_starts, axis=1)  # [Nq, n_ids]

    q_group = np.minimum(np.searchsorted(ids, q_pids), ids.size - 1)
    target = first_rank[np.arange(num_q), q_group]
    valid = (ids[q_group] == q_pids) & (target < num_g)
    position = (first_rank[valid] < target[valid, None]).sum(axis=1)
    return position, valid


# ----------------------------------------------------------------------------------------------------
# the two protocols (public contract)


def evaluate_sysu(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 20,
) -> tuple[np.ndarray, float, float]:
    """SYSU-MM01 single-shot protocol (METHOD.md §8.2), identical to the community ``eval_sysu``.

    Args:
        distmat: ``[Nq, Ng]`` distances (smaller = more similar).
        q_pids, g_pids: integer person ids of queries / gallery items.
        q_camids, g_camids: integer camera numbers (1-6); cam3 queries ignore cam2 gallery items.
        max_rank: length of the returned CMC curve.

    Returns:
        ``(cmc, mAP, mINP)``. ``cmc`` is float32 of length ``max_rank``, computed on the de-duplicated
        ranked id list (first occurrence of each id) and divided by the number of valid queries (those
        with a kept true match); invalid queries count as zeros. If fewer than ``max_rank`` distinct ids
        (or gallery items) exist, the curve is padded with its last value (the community code would
        truncate it). ``mAP`` and ``mINP`` are floats in [0, 1] on the raw ranking, over valid queries.

    Raises:
        MultError: on malformed inputs or when no query has a true match.
    """
    d = _as_distmat(distmat)
    num_q, num_g = d.shape
    q_pids = _as_ids(q_pids, "q_pids", num_q)
    g_pids = _as_ids(g_pids, "g_pids", num_g)
    q_camids = _as_ids(q_camids, "q_camids", num_q)
    g_camids = _as_ids(g_camids, "g_camids", num_g)
    max_rank = _check_max_rank(max_rank)

    order = np.argsort(d, axis=1)
    removed = sysu_removal_mask(q_camids, g_camids)
    q_rule, g_rule = _sysu_rule_factors(q_camids, g_camids)
    keep_ranked = ~(q_rule[:, None] & g_rule[order])  # the mask in ranked order (1-D gather: cheaper)
    matches = g_pids[order] == q_pids[:, None]
    ap, inp, valid = average_precision_and_inp(matches, keep_ranked)
    if not valid.any():
        raise _no_valid_query(num_q, num_g)
    position, _ = deduplicated_hit_positions(order, q_pids, g_pids, removed)
    cmc = cmc_from_hit_positions(position, int(valid.sum()), max_rank)
    return cmc, float(np.mean(ap)), float(np.mean(inp))


def evaluate_regdb(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    max_rank: int = 20,
) -> tuple[np.ndarray, float, float]:
    """RegDB protocol (METHOD.md §8.3), identical to the community ``eval_regdb``.

    Query and gallery come from different modalities, so nothing is removed; the CMC is the standard
    one (rank of the first true match in the raw ranking), averaged over valid queries.

    Returns:
        ``(cmc, mAP, mINP)``: ``cmc`` float32 of length ``max_rank`` (padded with its last value if the
        gallery is smaller than ``max_rank``), ``mAP`` and ``mINP`` floats in [0, 1].

    Raises:
        MultError: on malformed inputs or when no query has a true match.
    """
    d = _as_distmat(distmat)
    num_q, num_g = d.shape
    q_pids = _as_ids(q_pids, "q_pids", num_q)
    g_pids = _as_ids(g_pids, "g_pids", num_g)
    max_rank = _check_max_rank(max_rank)

    order = np.argsort(d, axis=1)
    matches = g_pids[order] == q_pids[:, None]
    ap, inp, valid = average_precision_and_inp(matches)
    if not valid.any():
        raise _no_valid_query(num_q, num_g)
    first_hit = matches[valid].argmax(axis=1)  # argmax of bool = first True
    cmc = cmc_from_hit_positions(first_hit, int(valid.sum()), max_rank)
    return cmc, float(np.mean(ap)), float(np.mean(inp))
