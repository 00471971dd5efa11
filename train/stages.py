"""What an epoch learns: the two stages as objects that own their memories, batches, loss and memory writes.

* :class:`ModalityStage`, stage 1 (DCL, METHOD.md §6.4): one memory per modality (``v``, ``r``) over the DBSCAN
  clusters, P×K batches drawn per modality, the cluster-contrastive loss of each modality.
* :class:`CrossModalityStage`, stage 2 (METHOD.md §6.2-6.3, §7): the two own memories plus four more (``rcm``,
  ``vcm``, ``va``, ``ra``), cross-label-aware batches, AMIRL (+ OCLR) in the label space of the epoch's parity.

Which one an epoch uses follows its labels (:func:`stage_for`): a stage-2 epoch without cross-modality labels
(association "none") continues DCL. How many steps an epoch takes and which augmentation it uses follow the
config's schedule (:func:`schedule_steps`, :func:`schedule_augmentation`), not the stage object.

The memories are written when ``cfg.memory_update`` says (train/memory.py): "official", inside
``loss.backward()`` by the labelled reads of :meth:`Stage.loss`, newest read first; "after-step", by
:meth:`Stage.after_step` once ``optimizer.step()`` has run, in the order of the reads. Every memory gathers every
rank's samples, so all ranks keep the same memories.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from mult.config import TrainConfig
from mult.train.losses import UnifiedSpace, amirl_loss, dcl_loss
from mult.train.memory import ClusterMemory, Gather
from mult.train.pseudo_labels import EpochLabels, require_clusters
from mult.train.samplers import stage_one_batches, stage_two_batches

#: (centres, momentum) -> a new memory with the run's temperature, update mode and gather
MemoryMaker = Callable[[torch.Tensor, float], ClusterMemory]
Batches = list[list[tuple[int, int]]]


def schedule_steps(cfg: TrainConfig, stage: str) -> int:
    """SGD steps of an epoch of ``stage`` ("dcl" or "mult", ``cfg.stage_of``)."""
    return cfg.iters_stage_one if stage == "dcl" else cfg.iters_stage_two


def schedule_augmentation(cfg: TrainConfig, stage: str) -> int:
    """Which §3.2 pipelines to use: stage 1's, unless the config asks for the lighter stage-2 ones."""
    return 1 if stage == "dcl" and cfg.stage_one_augment == "paper" else 2


def _tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(x, device=device)


class Stage:
    """One epoch's learning on its labels. Subclasses name their memories (:meth:`memories_from`), draw the
    epoch's batches and compute a step's loss, whose labelled memory reads write the memories."""

    def __init__(self, cfg: TrainConfig, epoch: int, labels: EpochLabels, memories: dict[str, ClusterMemory],
                 device: torch.device):
        self.cfg, self.epoch, self.labels, self.memories = cfg, epoch, labels, memories
        # Hard labels as tensors once per epoch (indexed every step for the loss and the memory writes).
        self.hard = {"v": _tensor(labels.labels_v, device), "r": _tensor(labels.labels_r, device)}

    @classmethod
    def memories_from(cls, centres_v: torch.Tensor, centres_r: torch.Tensor,
                      memory: MemoryMaker, cfg: TrainConfig) -> dict[str, ClusterMemory]:
        """The modality-specific memories m_v, m_r from the DBSCAN centres (METHOD.md §6.2)."""
        return {"v": memory(centres_v, cfg.momentum), "r": memory(centres_r, cfg.momentum)}

    def batches(self, steps: int, rng: np.random.Generator) -> Batches:
        raise NotImplementedError

    def loss(self, f_v0: torch.Tensor, f_v1: torch.Tensor, f_r: torch.Tensor, vi: torch.Tensor,
             ri: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's loss parts and their sum under "total", for the two visible views, the infrared batch and
        their image indices."""
        raise NotImplementedError

    def after_step(self) -> None:
        """memory_update "after-step": write this step's labelled reads now (a no-op for "official")."""
        for memory in self.memories.values():
            memory.write_pending()


class ModalityStage(Stage):
    """Stage 1, DCL (METHOD.md §6.4): each modality against its own memory, hard DBSCAN labels."""

    def batches(self, steps: int, rng: np.random.Generator) -> Batches:
        return stage_one_batches(self.labels.labels_v, self.labels.labels_r, p=self.cfg.num_ids,
                                 k=self.cfg.num_instances, steps=steps, rng=rng)

    def loss(self, f_v0, f_v1, f_r, vi, ri) -> dict[str, torch.Tensor]:
        m = self.memories
        return {"total": dcl_loss(m["v"], m["r"], f_v0, f_v1, f_r, self.hard["v"][vi], self.hard["r"][ri])}


class CrossModalityStage(Stage):
    """Stage 2, AMIRL + OCLR on the association's labels with six memories (METHOD.md §6.2-6.3, §7).

    The parity of the absolute epoch picks the label space (§6.3): even epochs unify in the visible one
    (m_v, m_rcm, cross m_va; the other modality's own memory m_r), odd ones in the infrared one (m_vcm, m_r,
    cross m_ra; other m_v). The other parity's memories are built but not read.
    """

    def __init__(self, cfg: TrainConfig, epoch: int, labels: EpochLabels, memories: dict[str, ClusterMemory],
                 device: torch.device):
        super().__init__(cfg, epoch, labels, memories, device)
        h, m = self.hard, memories
        h.update(cm_v=_tensor(labels.cm_labels_v, device), cm_r=_tensor(labels.cm_labels_r, device))
        y = {k: _tensor(v, device).float() for k, v in labels.targets.items()}
        # per space: the soft targets and hard labels of its visible, infrared and other-memory samples
        if epoch % 2 == 0:  # visible label space
            self.space = UnifiedSpace(m["v"], m["rcm"], m["va"], m["r"], other_is_visible=False)
            self.soft = (y["y_rgb"], y["y_ir_cm"], y["y_ir"])
            self.hard_space = (h["v"], h["cm_r"], h["r"])
        else:  # infrared label space
            self.space = UnifiedSpace(m["vcm"], m["r"], m["ra"], m["v"], other_is_visible=True)
            self.soft = (y["y_rgb_cm"], y["y_ir"], y["y_rgb"])
            self.hard_space = (h["cm_v"], h["r"], h["v"])

    @classmethod
    def memories_from(cls, centres_v: torch.Tensor, centres_r: torch.Tensor,
                      memory: MemoryMaker, cfg: TrainConfig) -> dict[str, ClusterMemory]:
        """The six memories of METHOD.md §6.2, all from the DBSCAN centres."""
        return {**super().memories_from(centres_v, centres_r, memory, cfg),
                "rcm": memory(centres_v, cfg.momentum), "vcm": memory(centres_r, cfg.momentum),
                "va": memory(centres_v, cfg.momentum_cross), "ra": memory(centres_r, cfg.momentum_cross)}

    def batches(self, steps: int, rng: np.random.Generator) -> Batches:
        lab = self.labels
        return stage_two_batches(lab.labels_v, lab.labels_r, lab.cm_labels_v, lab.cm_labels_r, p=self.cfg.num_ids,
                                 k=self.cfg.num_instances, steps=steps, rng=rng)

    def loss(self, f_v0, f_v1, f_r, vi, ri) -> dict[str, torch.Tensor]:
        rows = (vi, ri, vi if self.space.other_is_visible else ri)  # visible, infrared, other-memory samples
        soft = [y[i] for y, i in zip(self.soft, rows)]
        labels = tuple(h[i] for h, i in zip(self.hard_space, rows))
        cfg = self.cfg
        return amirl_loss(self.space, f_v0, f_v1, f_r, *soft, labels=labels, use_oclr=cfg.oclr,
                          oclr_ratio=cfg.oclr_ratio, oclr_detach=cfg.oclr_detach)


def stage_for(labels: EpochLabels) -> type[Stage]:
    """The stage that trains on ``labels``: stage 2 where they carry cross-modality labels, else stage 1."""
    return CrossModalityStage if labels.cross_modal else ModalityStage


def new_memories(labels: EpochLabels, cfg: TrainConfig, device: torch.device,
                 gather: Gather) -> dict[str, ClusterMemory]:
    """The memories of the stage that trains on ``labels``, initialised from this epoch's DBSCAN centres."""
    require_clusters(labels.visible, labels.infrared)
    cv, cr = (_tensor(c.centres, device) for c in (labels.visible, labels.infrared))

    def memory(centres: torch.Tensor, momentum: float) -> ClusterMemory:
        return ClusterMemory(centres, cfg.temp, momentum, update=cfg.memory_update, gather=gather)

    return stage_for(labels).memories_from(cv, cr, memory, cfg)
