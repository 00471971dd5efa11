"""The cross-modality associations of stage 2 by name (``TrainConfig.association``): one table from each name of
``mult.config.ASSOCIATIONS`` to the function that turns both modalities' DBSCAN clusters into labels for every
instance in both label spaces. tests/test_associations.py fails when the table and that tuple disagree.

"none" maps to None: no association, stage 2 is DCL continued (the ablation baseline). "oracle" reads the true
ids: a diagnostic upper bound, never a result of the method.

Every function takes the features as numpy or as torch tensors on one device, runs there and returns numpy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

import numpy as np

from mult.config import TrainConfig
from mult.train.association_baselines import hungarian_association, ot_association
from mult.train.label_transfer import LabelTransferResult, mult_label_transfer
from mult.train.oracle_association import oracle_association
from mult.train.transfer_inputs import ArrayLike

if TYPE_CHECKING:
    from mult.train.pseudo_labels import ModalityClusters

TrueIds = Optional[tuple[np.ndarray, np.ndarray]]
#: (feats_v, feats_r, visible clusters, infrared clusters, config, true ids (visible, infrared) or None, epoch)
Associate = Callable[
    [ArrayLike, ArrayLike, "ModalityClusters", "ModalityClusters", TrainConfig, TrueIds, int], LabelTransferResult
]


def _mult(feats_v: ArrayLike, feats_r: ArrayLike, vis: ModalityClusters, ir: ModalityClusters, cfg: TrainConfig,
          true_ids: TrueIds, epoch: int) -> LabelTransferResult:
    """MULT label transfer (METHOD.md §4) with the config's hyper-parameters."""
    return mult_label_transfer(
        feats_v, feats_r, vis.labels, ir.labels, vis.jaccard, ir.jaccard, alpha=cfg.alpha, lam=cfg.ot_lambda,
        temp=cfg.temp, max_iter=cfg.lp_iters, tol=cfg.lp_tol, homogeneous=cfg.homogeneous)


def _ot(feats_v: ArrayLike, feats_r: ArrayLike, vis: ModalityClusters, ir: ModalityClusters, cfg: TrainConfig,
        true_ids: TrueIds, epoch: int) -> LabelTransferResult:
    """OT-only baseline (METHOD.md §13)."""
    return ot_association(feats_v, feats_r, vis.labels, ir.labels, lam=cfg.ot_lambda)


def _hungarian(feats_v: ArrayLike, feats_r: ArrayLike, vis: ModalityClusters, ir: ModalityClusters,
               cfg: TrainConfig, true_ids: TrueIds, epoch: int) -> LabelTransferResult:
    """PGM-style Hungarian baseline (METHOD.md §13)."""
    return hungarian_association(feats_v, feats_r, vis.labels, ir.labels)


def _oracle(feats_v: ArrayLike, feats_r: ArrayLike, vis: ModalityClusters, ir: ModalityClusters, cfg: TrainConfig,
            true_ids: TrueIds, epoch: int) -> LabelTransferResult:
    """The diagnostic oracle: links read off the true ids, a share ``1 - oracle_accuracy`` redirected (seeded per
    epoch)."""
    if true_ids is None:
        raise ValueError("association 'oracle' needs the true ids of the training images")
    return oracle_association(feats_v, feats_r, vis.labels, ir.labels, *true_ids,
                              accuracy=cfg.oracle_accuracy, seed=cfg.seed * 1000 + epoch)


def unknown_association(feats_v: ArrayLike, feats_r: ArrayLike, vis: ModalityClusters, ir: ModalityClusters,
                        cfg: TrainConfig, true_ids: TrueIds, epoch: int) -> LabelTransferResult:
    """What a name missing from ``ASSOCIATE`` runs: a ValueError naming it."""
    raise ValueError(f"unknown association {cfg.association!r}")


#: association name -> its function; None: no association (stage 2 is DCL continued).
ASSOCIATE: dict[str, Optional[Associate]] = {
    "mult": _mult,
    "ot": _ot,
    "hungarian": _hungarian,
    "none": None,
    "oracle": _oracle,
}
