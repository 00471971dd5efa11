"""Dataset-level evaluation: the published test protocols run end to end through any encoder.

SYSU-MM01: infrared queries of the test ids against 10 random visible galleries (all-search and
indoor-search), features extracted once. RegDB: one split, both directions. The encoder can be the training
model in-process or a deployed model (ONNX Runtime, Triton): the protocol code is the same. With ``rerank``
every protocol is also run on the official MULT cross-modality re-ranking (``mult.rerank``, k=15 and eta=0.1
as its ``evaluator.test``), reported under its own key ``<protocol>-rerank`` next to the plain one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from mult.data.records import Modality, Record
from mult.data.regdb import RegDB
from mult.data.sysu import SYSUMM01
from mult.encoder import Encoder
from mult.metrics.protocol import Distance, ProtocolSummary, evaluate_regdb_splits, evaluate_sysu_trials
from mult.rerank import OFFICIAL_ETA, OFFICIAL_TEST_K, cross_modality_rerank

RERANK_SUFFIX = "-rerank"
RERANK_TITLE = f"re-ranked (k={OFFICIAL_TEST_K}, eta={OFFICIAL_ETA})"


def _official_rerank(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    return cross_modality_rerank(query, gallery, k=OFFICIAL_TEST_K, eta=OFFICIAL_ETA)


def _variants(rerank: bool) -> list[tuple[str, str, Distance | None]]:
    """(key suffix, title suffix, distance) of the plain run and, with ``rerank``, the re-ranked one."""
    return [("", "", None)] + ([(RERANK_SUFFIX, f", {RERANK_TITLE}", _official_rerank)] if rerank else [])


def _ids(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def evaluate_sysu_dataset(encoder: Encoder, root: Path, *, trials: int = 10, modes: Sequence[str] = ("all", "indoor"),
                          shot: str = "single", rerank: bool = False) -> dict[str, ProtocolSummary]:
    """SYSU-MM01 protocol (METHOD.md §8.2) for each search mode, ``trials`` galleries (seeds 0..trials-1);
    with ``rerank`` also ``sysu-<mode>-rerank`` (the same galleries, re-ranked distances)."""
    sysu = SYSUMM01(root)
    query = sysu.query("all")  # both modes query with both infrared cameras
    q_feats = encoder.encode([r.path for r in query], Modality.infrared)
    q_pids, q_cams = _ids(query)
    pool = sysu.gallery_pool("all")  # the indoor pool is a subset: embed once
    pool_feats = encoder.encode([r.path for r in pool], Modality.visible)
    pool_pids, pool_cams = _ids(pool)
    row_of = {r.path: i for i, r in enumerate(pool)}
    results = {}
    for mode in modes:
        mode_pool = sysu.gallery_pool(mode)
        to_all = np.array([row_of[r.path] for r in mode_pool])
        indices = [to_all[sysu.gallery_indices(mode, t, shot)] for t in range(trials)]
        for suffix, title, distance in _variants(rerank):
            results[f"sysu-{mode}{suffix}"] = evaluate_sysu_trials(
                q_feats, q_pids, q_cams, pool_feats, pool_pids, pool_cams, indices, protocol=f"sysu-{mode}{title}",
                distance=distance)
    return results


def evaluate_regdb_dataset(encoder: Encoder, root: Path, *, split: int = 1, rerank: bool = False
                           ) -> dict[str, ProtocolSummary]:
    """RegDB protocol (METHOD.md §8.3) on one split, visible→thermal and thermal→visible; with ``rerank``
    also ``regdb-<direction>-rerank``."""
    regdb = RegDB(root, split=split)
    visible, thermal = regdb.test(Modality.visible), regdb.test(Modality.infrared)
    v_feats = encoder.encode([r.path for r in visible], Modality.visible)
    t_feats = encoder.encode([r.path for r in thermal], Modality.infrared)
    v_pids, t_pids = _ids(visible)[0], _ids(thermal)[0]
    directions = {"regdb-v2t": (v_feats, v_pids, t_feats, t_pids), "regdb-t2v": (t_feats, t_pids, v_feats, v_pids)}
    return {
        f"{name}{suffix}": evaluate_regdb_splits([data], protocol=f"{name}{title}", labels=[f"split {split}"],
                                                 distance=distance)
        for name, data in directions.items()
        for suffix, title, distance in _variants(rerank)
    }
