"""Training losses: DCL (stage 1), AMIRL with six memories and OCLR (stage 2).

METHOD.md §6.3 writes the even- and odd-epoch losses out separately. They are the same sum with roles
swapped, so one function builds both from a :class:`UnifiedSpace` that names, for the label space being
unified this epoch, which memory holds visible features, which holds infrared ones, and which is the
cross-modality memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from mult.train.memory import ClusterMemory


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CE with probability targets, −(1/B) Σ_b Σ_k y_bk log softmax(z_b)_k (METHOD.md §6.3)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def oclr_term(pred_logits: torch.Tensor, target_logits: torch.Tensor, ratio: float = 0.2, detach: bool = False) -> torch.Tensor:
    """SCE(p, q) = −(1/B) Σ_b Σ_k softmax(q_b / ratio)_k · log softmax(p_b)_k (METHOD.md §7).

    Both inputs are memory logits already divided by τ = 0.05, so the target's effective temperature is
    0.05 · 0.2 = 0.01. The official code does not detach the target (``detach=False``): gradients then flow
    through the modality-specific memories' predictions too.
    """
    if detach:
        target_logits = target_logits.detach()
    return soft_cross_entropy(pred_logits, F.softmax(target_logits / ratio, dim=1))


def dcl_loss(
    visible: ClusterMemory,
    infrared: ClusterMemory,
    f_v0: torch.Tensor,
    f_v1: torch.Tensor,
    f_r: torch.Tensor,
    labels_v: torch.Tensor,
    labels_r: torch.Tensor,
) -> torch.Tensor:
    """Stage-1 DCL: CE(z^{m_v}(v0), l_v) + CE(z^{m_v}(v1), l_v) + CE(z^{m_r}(r), l_r) (METHOD.md §6.4).

    Hard DBSCAN labels; the sampler never draws outliers in stage 1. Each read also writes its memory with its
    samples (§6.1), in the official order v0, v1, r.
    """
    return (
        F.cross_entropy(visible.logits(f_v0, labels_v), labels_v)
        + F.cross_entropy(visible.logits(f_v1, labels_v), labels_v)
        + F.cross_entropy(infrared.logits(f_r, labels_r), labels_r)
    )


@dataclass
class UnifiedSpace:
    """The memories and targets of the label space unified this epoch (METHOD.md §6.2–6.3).

    Even epochs (visible space): ``visible`` = m_v, ``infrared`` = m_rcm, ``cross`` = m_va,
    targets y_rgb and y_ir_cm; the other modality's own memory is m_r with targets y_ir.
    Odd epochs (infrared space): ``visible`` = m_vcm, ``infrared`` = m_r, ``cross`` = m_ra,
    targets y_rgb_cm and y_ir; the other modality's own memory is m_v with targets y_rgb.
    """

    visible: ClusterMemory
    infrared: ClusterMemory
    cross: ClusterMemory
    other: ClusterMemory
    other_is_visible: bool


def amirl_loss(
    space: UnifiedSpace,
    f_v0: torch.Tensor,
    f_v1: torch.Tensor,
    f_r: torch.Tensor,
    y_vis: torch.Tensor,
    y_ir: torch.Tensor,
    y_other: torch.Tensor,
    *,
    labels: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None,
    use_oclr: bool = True,
    oclr_ratio: float = 0.2,
    oclr_detach: bool = False,
) -> dict[str, torch.Tensor]:
    """AMIRL stage-2 loss L = L_ms + L_ma (+ L_OCLR) for one parity (METHOD.md §6.3, §7).

    ``y_vis``/``y_ir`` are the soft targets (0.7·one-hot + 0.3·soft) of the visible and infrared samples in the
    unified space; ``y_other`` the targets of the other modality in its own space (y_ir on even epochs,
    y_rgb on odd ones). ``labels``: the hard labels of the same three (visible, infrared, other), with which the
    reads write the memories (the table of METHOD.md §6.2); None only reads them. Returns the parts and their sum
    under ``"total"``.

    The memories are read in the official trainer's order: the labelled reads visible(v0), visible(v1),
    infrared(r), other, cross(v0), cross(v1), cross(r), then the OCLR targets' plain reads. With in-backward
    writes (memory_update "official", §6.1) this order, reversed, is the order of the writes.
    """
    l_vis, l_ir, l_other = labels if labels is not None else (None, None, None)
    z_vis_v0, z_vis_v1 = space.visible.logits(f_v0, l_vis), space.visible.logits(f_v1, l_vis)
    z_ir_r = space.infrared.logits(f_r, l_ir)
    other_inputs = (f_v0, f_v1) if space.other_is_visible else (f_r,)
    z_other = [space.other.logits(f, l_other) for f in other_inputs]
    z_x_v0, z_x_v1 = space.cross.logits(f_v0, l_vis), space.cross.logits(f_v1, l_vis)
    z_x_r = space.cross.logits(f_r, l_ir)

    ms = (
        soft_cross_entropy(z_vis_v0, y_vis)
        + soft_cross_entropy(z_vis_v1, y_vis)
        + soft_cross_entropy(z_ir_r, y_ir)
    )
    for z in z_other:
        ms = ms + soft_cross_entropy(z, y_other)
    ma = soft_cross_entropy(z_x_v0, y_vis) + soft_cross_entropy(z_x_v1, y_vis) + soft_cross_entropy(z_x_r, y_ir)
    parts = {"intra": ms, "cross": ma}
    if use_oclr:
        def sce(p, q):
            return oclr_term(p, q, ratio=oclr_ratio, detach=oclr_detach)

        # read-only targets, read after every labelled read (see above)
        z_ir_v0, z_ir_v1, z_vis_r = space.infrared.logits(f_v0), space.infrared.logits(f_v1), space.visible.logits(f_r)
        # Cross-view for the visible terms; each modality-specific memory refines all three inputs (§7).
        parts["oclr"] = (
            sce(z_x_v0, z_vis_v1)
            + sce(z_x_v1, z_vis_v0)
            + sce(z_x_r, z_ir_r)
            + sce(z_x_v0, z_ir_v1)
            + sce(z_x_v1, z_ir_v0)
            + sce(z_x_r, z_vis_r)
        )
    parts["total"] = sum(parts.values())
    return parts
