"""The oracle association: a DIAGNOSTIC upper bound that links clusters across modalities by their true ids.

Not the method and never a result of it: it reads ground truth, to answer "how good must the association be
before stage 2 pays off" with everything else of stage 2 unchanged.
"""

from __future__ import annotations

import numpy as np
import torch

from mult.errors import MultError
from mult.train.association_baselines import centre_cosines, filled_inputs, linked_cluster_labels
from mult.train.diagnostics import cluster_majority_ids
from mult.train.label_transfer import LabelTransferResult
from mult.train.transfer_inputs import ArrayLike


def oracle_partners(labels: np.ndarray, true_ids: np.ndarray, other_labels: np.ndarray, other_true_ids: np.ndarray,
                    other_centres: torch.Tensor, centres: torch.Tensor) -> np.ndarray:
    """For each cluster, the other modality's cluster holding the most images of its majority true id.

    A person with no clustered image on the other side falls back to the most similar other centre (cosine).
    """
    majority = cluster_majority_ids(labels, true_ids, centres.shape[0])
    keep = other_labels >= 0
    ids, index = np.unique(np.concatenate([majority, other_true_ids[keep]]), return_inverse=True)
    counts = np.zeros((other_centres.shape[0], ids.size), dtype=np.int64)
    np.add.at(counts, (other_labels[keep], index[majority.size:]), 1)
    per_cluster = counts[:, index[:majority.size]].T  # [K, K_other]: images of my majority id per other cluster
    partner = per_cluster.argmax(1)
    unseen = (per_cluster.max(1) == 0) | (majority < 0)
    if unseen.any():
        partner[unseen] = centre_cosines(centres, other_centres).argmax(1).cpu().numpy()[unseen]
    return partner.astype(np.int64)


def corrupt_partners(partner: np.ndarray, num_other: int, accuracy: float, rng: np.random.Generator) -> np.ndarray:
    """Keep each link with probability ``accuracy``; send the others to a uniformly random *different* cluster."""
    if not 0.0 <= accuracy <= 1.0:
        raise MultError(f"oracle_accuracy must be in [0, 1], got {accuracy!r}")
    out = partner.copy()
    wrong = rng.random(partner.size) >= accuracy
    if num_other > 1 and wrong.any():
        draw = rng.integers(0, num_other - 1, int(wrong.sum()))
        out[wrong] = draw + (draw >= partner[wrong])  # skip the right partner
    return out


def oracle_association(
    feats_v: ArrayLike, feats_r: ArrayLike, labels_v: ArrayLike, labels_r: ArrayLike,
    pids_v: np.ndarray, pids_r: np.ndarray, *, accuracy: float = 1.0, seed: int = 0,
) -> LabelTransferResult:
    """DIAGNOSTIC upper bound, not the method: the cross-modality association read off the ground truth.

    Intra-modality labels as the Hungarian baseline (outliers filled by their nearest centre); each cluster's
    partner is the other modality's cluster that holds most images of its majority true id
    (``oracle_partners``), then a share ``1 - accuracy`` of the links is redirected at random
    (``corrupt_partners``). It answers "how good must the association be before stage 2 pays off", with
    everything else of stage 2 (six memories, alternation, OCLR) unchanged. All labels one-hot.
    """
    pids_v, pids_r = np.asarray(pids_v), np.asarray(pids_r)
    if (pids_v < 0).any() or (pids_r < 0).any():
        raise MultError("the oracle association needs the true id of every training image (a labelled or SynthVI set)")
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        _, _, filled_vis, filled_ir, centres_vis, centres_ir = filled_inputs(feats_v, feats_r, labels_v, labels_r)
        k_vis, k_ir = centres_vis.shape[0], centres_ir.shape[0]
        labels_vis, labels_ir = filled_vis.cpu().numpy(), filled_ir.cpu().numpy()
        vis_to_ir = corrupt_partners(
            oracle_partners(labels_vis, pids_v, labels_ir, pids_r, centres_ir, centres_vis), k_ir, accuracy, rng)
        ir_to_vis = corrupt_partners(
            oracle_partners(labels_ir, pids_r, labels_vis, pids_v, centres_vis, centres_ir), k_vis, accuracy, rng)
        return linked_cluster_labels(filled_vis, filled_ir, vis_to_ir, ir_to_vis, k_vis, k_ir,
                                     {"method": "oracle", "accuracy": accuracy})
