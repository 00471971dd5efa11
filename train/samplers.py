"""Identity-balanced batch samplers (METHOD.md §3.3).

A batch is a list of (visible index, infrared index) pairs, as in the reference's paired data loader:
P pseudo-identities × K instances on each side. Stage 1 draws visible and infrared clusters independently;
stage 2 draws half its identities anchored in the visible label space and half in the infrared one, so
both modalities of the same pseudo-identity meet in every batch. Deterministic for a given generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Groups:
    """Members of each label (labels < 0, the DBSCAN outliers, are left out)."""

    labels: np.ndarray  # the distinct labels, sorted
    members: tuple[np.ndarray, ...]  # members[i] = sample indices whose label is labels[i]

    @classmethod
    def of(cls, labels: np.ndarray) -> "Groups":
        labels = np.asarray(labels)
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        distinct, starts = np.unique(sorted_labels, return_index=True)
        chunks = np.split(order, starts[1:])
        keep = distinct >= 0
        return cls(distinct[keep], tuple(c for c, k in zip(chunks, keep) if k))

    def restricted_to(self, allowed: np.ndarray) -> "Groups":
        mask = np.isin(self.labels, allowed)
        return Groups(self.labels[mask], tuple(m for m, k in zip(self.members, mask) if k))

    def index_of(self, label: int) -> int:
        return int(np.searchsorted(self.labels, label))


def draw_members(members: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K members of one identity: without replacement when it has at least K, otherwise with replacement."""
    return rng.choice(members, size=k, replace=len(members) < k)


def draw_labels(groups: Groups, p: int, rng: np.random.Generator) -> np.ndarray:
    """P distinct identities (with replacement only when fewer than P exist)."""
    return rng.choice(len(groups.labels), size=p, replace=len(groups.labels) < p)


def stage_one_batches(
    labels_v: np.ndarray, labels_r: np.ndarray, *, p: int, k: int, steps: int, rng: np.random.Generator
) -> list[list[tuple[int, int]]]:
    """Stage 1: P visible clusters and P infrared clusters drawn independently, K images each (§3.3)."""
    gv, gr = Groups.of(labels_v), Groups.of(labels_r)
    if len(gv.labels) == 0 or len(gr.labels) == 0:
        raise ValueError("no clusters to sample from: DBSCAN marked every sample as an outlier")
    batches = []
    for _ in range(steps):
        vis = np.concatenate([draw_members(gv.members[i], k, rng) for i in draw_labels(gv, p, rng)])
        ir = np.concatenate([draw_members(gr.members[i], k, rng) for i in draw_labels(gr, p, rng)])
        batches.append(list(zip(vis.tolist(), ir.tolist())))
    return batches


def stage_two_batches(
    labels_v: np.ndarray,
    labels_r: np.ndarray,
    cm_labels_v: np.ndarray,
    cm_labels_r: np.ndarray,
    *,
    p: int,
    k: int,
    steps: int,
    rng: np.random.Generator,
) -> list[list[tuple[int, int]]]:
    """Stage 2, cross-label aware (§3.3): P/2 visible-anchored and P/2 infrared-anchored identities.

    A visible-anchored identity c gives K visible images with ``labels_v == c`` and K infrared images with
    ``cm_labels_r == c``; an infrared-anchored c′ gives K visible images with ``cm_labels_v == c′`` and K
    infrared images with ``labels_r == c′``. Only identities present on both sides are drawn.
    """
    own_v, cross_r = Groups.of(labels_v), Groups.of(cm_labels_r)
    own_r, cross_v = Groups.of(labels_r), Groups.of(cm_labels_v)
    anchored_v = own_v.restricted_to(cross_r.labels)
    anchored_r = own_r.restricted_to(cross_v.labels)
    if len(anchored_v.labels) == 0 or len(anchored_r.labels) == 0:
        raise ValueError("no pseudo-identity has members in both modalities: cross-modality labels are empty")
    half = max(p // 2, 1)
    vis_parts, ir_parts = [], []
    batches = []
    for _ in range(steps):
        vis_parts.clear()
        ir_parts.clear()
        for i in draw_labels(anchored_v, half, rng):
            label = anchored_v.labels[i]
            vis_parts.append(draw_members(anchored_v.members[i], k, rng))
            ir_parts.append(draw_members(cross_r.members[cross_r.index_of(label)], k, rng))
        for i in draw_labels(anchored_r, p - half, rng):
            label = anchored_r.labels[i]
            vis_parts.append(draw_members(cross_v.members[cross_v.index_of(label)], k, rng))
            ir_parts.append(draw_members(anchored_r.members[i], k, rng))
        batches.append(list(zip(np.concatenate(vis_parts).tolist(), np.concatenate(ir_parts).tolist())))
    return batches
