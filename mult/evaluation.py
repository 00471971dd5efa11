"""Dataset-level evaluation: the published test protocols run end to end through any encoder.

SYSU-MM01: infrared queries of the test ids against 10 random visible galleries (all-search and
indoor-search), features extracted once. RegDB: one split, both directions. The encoder can be the training
model in-process or a deployed model (ONNX Runtime, Triton): the protocol code is the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from mult.data.records import Modality, Record
from mult.data.regdb import RegDB
from mult.data.sysu import SYSUMM01
from mult.encoder import Encoder
from mult.metrics.protocol import ProtocolSummary, evaluate_regdb_splits, evaluate_sysu_trials


def _ids(records: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def evaluate_sysu_dataset(encoder: Encoder, root: Path, *, trials: int = 10, modes: Sequence[str] = ("all", "indoor"),
                          shot: str = "single") -> dict[str, ProtocolSummary]:
    """SYSU-MM01 protocol (METHOD.md §8.2) for each search mode, ``trials`` galleries (seeds 0..trials-1)."""
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
        results[f"sysu-{mode}"] = evaluate_sysu_trials(
            q_feats, q_pids, q_cams, pool_feats, pool_pids, pool_cams, indices, protocol=f"sysu-{mode}")
    return results


def evaluate_regdb_dataset(encoder: Encoder, root: Path, *, split: int = 1) -> dict[str, ProtocolSummary]:
    """RegDB protocol (METHOD.md §8.3) on one split, visible→thermal and thermal→visible."""
    regdb = RegDB(root, split=split)
    visible, thermal = regdb.test(Modality.visible), regdb.test(Modality.infrared)
    v_feats = encoder.encode([r.path for r in visible], Modality.visible)
    t_feats = encoder.encode([r.path for r in thermal], Modality.infrared)
    v_pids, t_pids = _ids(visible)[0], _ids(thermal)[0]
    return {
        "regdb-v2t": evaluate_regdb_splits([(v_feats, v_pids, t_feats, t_pids)], protocol="regdb-v2t",
                                           labels=[f"split {split}"]),
        "regdb-t2v": evaluate_regdb_splits([(t_feats, t_pids, v_feats, v_pids)], protocol="regdb-t2v",
                                           labels=[f"split {split}"]),
    }
