"""Each epoch's pseudo-labels: per-modality clustering, then (stage 2) cross-modality association.

Stage 1 (DCL): Jaccard + DBSCAN per modality; outliers (-1) are not trained on.
Stage 2: the association named by the config turns the DBSCAN clusters into labels for EVERY instance in
both label spaces plus soft targets (METHOD.md §4.6): MULT, OT-only, PGM-style Hungarian matching, or
"none" (stage 2 is then DCL continued, the ablation baseline). "oracle" links clusters by their true ids: a
diagnostic upper bound that reads ground truth, never a result of the method.

Device: the features may be numpy or torch tensors on any device (the trainer hands over its extraction on the
training device). The dense work follows them — the kNN GEMM of the Jaccard distance, the cluster centres, the
association's transport and propagation — while the sparse k-reciprocal graph and DBSCAN run on the CPU from
the sparse Jaccard matrix. Labels and soft targets come back as numpy; the centres in the features' kind (a
tensor stays on its device, so the memories are initialised there without a round trip through the host).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import scipy.sparse as sp
import torch

from mult.config import TrainConfig
from mult.train.clustering import cluster_centres
from mult.train.dbscan import dbscan_cluster
from mult.train.diagnostics import clustering_quality, cross_label_accuracy
from mult.train.jaccard import sparse_jaccard_distance
from mult.train.transfer_inputs import ArrayLike

#: The official names of the four training targets (rgb = visible), keyed by the label matrix they come from.
TARGET_NAMES = {"visible": "y_rgb", "infrared": "y_ir", "visible_to_infrared": "y_rgb_cm",
                "infrared_to_visible": "y_ir_cm"}


@dataclass
class ModalityClusters:
    labels: np.ndarray  # DBSCAN labels, -1 = outlier
    centres: ArrayLike  # [K, D] raw member means (memory initialisation), numpy or a tensor on the features' device
    jaccard: sp.csr_matrix  # the distances DBSCAN used (only pairs with J < 1 stored)

    @property
    def num_clusters(self) -> int:
        return self.centres.shape[0]

    def on_host(self) -> ModalityClusters:
        """The same clusters with the centres as numpy (what is pickled to other processes)."""
        centres = self.centres
        return replace(self, centres=centres.cpu().numpy() if isinstance(centres, torch.Tensor) else centres)


def require_clusters(visible: ModalityClusters, infrared: ModalityClusters) -> None:
    """The one check that this epoch's DBSCAN left each modality at least one cluster (memories, association)."""
    if visible.num_clusters == 0 or infrared.num_clusters == 0:
        empty = "visible" if visible.num_clusters == 0 else "infrared"
        raise RuntimeError(f"DBSCAN found no cluster in the {empty} images: nothing to train on; "
                           "raise eps, or train longer first")


@dataclass
class EpochLabels:
    """What one epoch trains on. Stage 1 leaves the cross-modality fields empty."""

    visible: ModalityClusters
    infrared: ModalityClusters
    labels_v: np.ndarray  # hard labels used for sampling and memory updates
    labels_r: np.ndarray
    cm_labels_v: Optional[np.ndarray] = None  # visible instance -> infrared cluster
    cm_labels_r: Optional[np.ndarray] = None  # infrared instance -> visible cluster
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # y_rgb, y_ir, y_rgb_cm, y_ir_cm
    # MULT only, diagnostics only: the cross labels before propagation (LabelTransferResult.initial_cross)
    initial_cm_labels: dict[str, np.ndarray] = field(default_factory=dict)
    # MULT only, diagnostics only: the propagation's change per iteration in both label spaces
    # (LabelTransferResult.info["propagation"], METHOD.md §4.5)
    propagation: dict[str, object] = field(default_factory=dict)

    @property
    def cross_modal(self) -> bool:
        return self.cm_labels_v is not None

    def on_host(self) -> EpochLabels:
        """The same labels with no device tensor in them (every other field is numpy already)."""
        return replace(self, visible=self.visible.on_host(), infrared=self.infrared.on_host())


def cluster_modality(features: ArrayLike, cfg: TrainConfig) -> ModalityClusters:
    """Jaccard distance (k1, k2) then DBSCAN (eps, min_samples) on one modality's features (METHOD.md §5).

    ``features``: numpy or a tensor on any device (the kNN runs there; the sparse graph and DBSCAN on the CPU);
    the centres come back in the same kind, on the same device."""
    jaccard = sparse_jaccard_distance(features, cfg.k1, cfg.k2)
    labels = dbscan_cluster(jaccard, cfg.eps, cfg.min_samples)
    centres = cluster_centres(features, labels)
    return ModalityClusters(labels, centres, jaccard)


def make_epoch_labels(feats_v: ArrayLike, feats_r: ArrayLike, cfg: TrainConfig, stage: str, *,
                      true_ids: Optional[tuple[np.ndarray, np.ndarray]] = None, epoch: int = 0) -> EpochLabels:
    """Pseudo-labels for one epoch of ``stage`` ("dcl" or "mult") from L2-normalised features, numpy or torch
    tensors on one device (the module docstring says what runs where; numpy and CPU tensors give the same numbers).

    ``true_ids`` (visible, infrared) are read only by the diagnostic association "oracle"."""
    from mult.train.associations import ASSOCIATE, unknown_association

    vis, ir = cluster_modality(feats_v, cfg), cluster_modality(feats_r, cfg)
    associate = ASSOCIATE.get(cfg.association, unknown_association)
    if stage == "dcl" or associate is None:  # association "none": stage 2 is DCL continued
        return EpochLabels(vis, ir, vis.labels, ir.labels)
    require_clusters(vis, ir)
    result = associate(feats_v, feats_r, vis, ir, cfg, true_ids, epoch)
    hard = result.hard_labels()
    targets = result.targets(cfg.beta)  # all four soft-target matrices, built once
    return EpochLabels(
        vis, ir, hard["visible"], hard["infrared"], hard["visible_to_infrared"], hard["infrared_to_visible"],
        targets={official: targets[name] for name, official in TARGET_NAMES.items()},
        initial_cm_labels=result.initial_cross, propagation=result.info.get("propagation", {}))


def label_diagnostics(labels: EpochLabels, pids_v: np.ndarray, pids_r: np.ndarray) -> dict[str, object]:
    """Cluster counts always; MULT's propagation convergence when it ran; quality against ground truth when it is
    known (diagnostics only)."""
    out: dict[str, object] = {"clusters_v": labels.visible.num_clusters, "clusters_r": labels.infrared.num_clusters}
    if labels.propagation:
        out["propagation"] = labels.propagation
    for name, clusters, final, pids in (("v", labels.visible, labels.labels_v, pids_v),
                                        ("r", labels.infrared, labels.labels_r, pids_r)):
        quality = clustering_quality(clusters.labels, pids)
        if quality:
            out[f"dbscan_{name}"] = quality
            if labels.cross_modal:
                out[f"assigned_{name}"] = clustering_quality(final, pids)
    if labels.cross_modal and (pids_v >= 0).all() and (pids_r >= 0).all():
        # judged against the other modality's DBSCAN clusters (their majority ids): the labels trained on,
        # and for MULT also its initial OT labels (§4.3), so that the log shows what propagation changed
        initial = labels.initial_cm_labels
        for key, cross, pids, other, other_pids, name in (
                ("v2r", labels.cm_labels_v, pids_v, labels.infrared.labels, pids_r, "visible_to_infrared"),
                ("r2v", labels.cm_labels_r, pids_r, labels.visible.labels, pids_v, "infrared_to_visible")):
            out[f"cross_acc_{key}"] = cross_label_accuracy(cross, pids, other, other_pids)
            if name in initial:
                out[f"cross_acc_{key}_initial"] = cross_label_accuracy(initial[name], pids, other, other_pids)
    return out
