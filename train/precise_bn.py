"""Re-estimate BatchNorm running statistics before the first extraction (fast-reid's PreciseBN idea).

With random initial weights (no ImageNet weights on CPU-only machines) every BN layer's running
statistics are the placeholders mean 0 / variance 1, so eval-mode features — the ones clustered and stored
in the memories — live in a different space from the batch-normalised features the first SGD steps see.
Averaging the real batch statistics of a few hundred training images closes that gap. The paper's setting
(ImageNet weights) does not need it; the config flag ``calibrate_bn`` is on only in the CPU presets.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Set every BN layer's running mean/var to the average over ``batches`` of (visible, infrared) inputs.

    Uses the cumulative average (momentum None) so each batch counts equally; restores momentum and the
    model's train/eval mode afterwards. Returns the number of batches used.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    count = 0
    try:
        for visible, infrared in batches:
            model(visible, infrared)
            count += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return count
