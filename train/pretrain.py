"""Supervised source pre-training: a stand-in for ImageNet initialisation where no pretrained weights exist.

The paper starts the two-stream encoder from ImageNet weights, and its unsupervised stages rely on them:
an ImageNet network already maps a colour photo and an infrared one of the same person somewhat close
together, so the first clustering and the first cross-modality association are better than chance. Where
no such weights exist (these machines cannot download them; SynthVI is not ImageNet-like), the usual
substitute in unsupervised ReID is a model trained with labels on a *source* dataset whose identities are
disjoint from the target's, then adapted without labels (the cross-dataset setting of e.g. SpCL, Ge et al.
2020). :func:`pretrain_supervised` trains that source model: identity cross-entropy with label smoothing 0.1
(the "bag of tricks" ReID baseline, Luo et al. 2019) through a bias-free linear classifier on the BN-neck
feature, on batches of P identities x K images in BOTH modalities (ground-truth identities are shared across
modalities in a labelled VI-ReID set), with the stage-2 augmentations of METHOD.md §3.2, including the
channel-exchange view, so the trunk learns cues that survive the loss of colour.

Unlike ImageNet, this source model has seen infrared images (of other people): quote results obtained from
it as "source-pretrained", not as ImageNet-initialised. ``mult train --pretrained RUN/encoder.pth`` uses it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mult.config import TrainConfig
from mult.data.transforms import train_transforms
from mult.errors import MultError
from mult.io import atomic_path, save_torch_atomic, write_text_atomic
from mult.model import TwoStreamEncoder
from mult.datasets import load_training_set
from mult.train.data import PairedImages, paired_loader
from mult.train.samplers import stage_two_batches

ENCODER_FILE = "encoder.pth"
LOG_FILE = "pretrain.jsonl"
PLOT_FILE = "pretrain.png"
LABEL_SMOOTHING = 0.1


def contiguous_identities(pids_v: np.ndarray, pids_r: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Map the ground-truth person ids of both modalities onto 0..C-1 (one shared class per person).

    Raises MultError when any image lacks an id (the source set must be labelled) or when no person appears
    in both modalities (nothing would tie the two stems together).
    """
    if (pids_v < 0).any() or (pids_r < 0).any():
        raise MultError("supervised pre-training needs person ids for every training image; "
                        "the source dataset has unlabelled images")
    classes = np.union1d(pids_v, pids_r)
    if len(np.intersect1d(pids_v, pids_r)) == 0:
        raise MultError("no person of the source dataset appears in both modalities; pre-training needs some")
    return np.searchsorted(classes, pids_v), np.searchsorted(classes, pids_r), len(classes)


def identity_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with label smoothing ``LABEL_SMOOTHING`` (Szegedy et al. 2016; the ReID "bag of tricks")."""
    return F.cross_entropy(logits, targets, label_smoothing=LABEL_SMOOTHING)


def pretrain_supervised(cfg: TrainConfig, out: Path, *, steps: int, progress: bool = True,
                        log_every: int = 10) -> dict:
    """Train the encoder of ``cfg`` with identity labels on ``cfg.data_root`` for ``steps`` steps.

    Writes ``out/encoder.pth`` (an encoder state dict, loadable with ``--pretrained``), ``pretrain.jsonl``
    (loss and batch accuracy every ``log_every`` steps) and ``pretrain.png``, each atomically. Returns a
    summary: steps, seconds, final loss and accuracy, number of identities.
    """
    out = Path(out)
    if steps < 1:
        raise MultError(f"--steps must be at least 1, got {steps}")
    if (out / ENCODER_FILE).exists():
        raise MultError(f"{out / ENCODER_FILE} exists already; choose another --out or delete it")
    data = load_training_set(cfg.dataset, Path(cfg.data_root), regdb_split=cfg.regdb_split)
    y_v, y_r, n_classes = contiguous_identities(data.visible_pids, data.infrared_pids)
    torch.manual_seed(cfg.seed)
    model = TwoStreamEncoder(arch=cfg.arch, pretrained=cfg.pretrained)
    classifier = torch.nn.Linear(model.feature_dim, n_classes, bias=False)
    torch.nn.init.normal_(classifier.weight, std=0.001)
    params = [p for p in model.parameters() if p.requires_grad] + list(classifier.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    # Identity-balanced batches in both modalities: with ground truth, the "cross-modality labels" of the
    # stage-2 sampler are the labels themselves, so every drawn person brings K visible and K infrared images.
    batches = stage_two_batches(y_v, y_r, y_v, y_r, p=cfg.num_ids, k=cfg.num_instances, steps=steps, rng=rng)
    dataset = PairedImages(data.visible_paths, data.infrared_paths, train_transforms(2, cfg.height, cfg.width))
    loader = paired_loader(dataset, batches, workers=cfg.workers, seed=cfg.seed)
    targets_v, targets_r = torch.as_tensor(y_v), torch.as_tensor(y_r)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    window: list[tuple[float, float]] = []
    started = time.time()
    model.train()
    bar = tqdm(loader, total=steps, desc="source pre-training", unit="step", disable=not progress)
    for step, (v0, v1, r, vi, ri) in enumerate(bar, start=1):
        f_v, f_r = model(torch.cat([v0, v1]), r)
        logits = classifier(torch.cat([f_v, f_r]))
        target = torch.cat([targets_v[vi], targets_v[vi], targets_r[ri]])
        loss = identity_loss(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(1) == target).float().mean().item()
        window.append((loss.item(), accuracy))
        bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy:.2f}")
        if step % log_every == 0 or step == steps:
            losses, accs = zip(*window)
            log.append({"step": step, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
                        "seconds": round(time.time() - started, 1)})
            window.clear()
    model.eval()
    save_torch_atomic(model.state_dict(), out / ENCODER_FILE)
    write_text_atomic(out / LOG_FILE, "".join(json.dumps(entry) + "\n" for entry in log))
    plot_pretraining(log, out / PLOT_FILE, n_classes)
    return {"steps": steps, "seconds": round(time.time() - started, 1), "identities": n_classes,
            "loss": log[-1]["loss"], "accuracy": log[-1]["accuracy"], "encoder": str(out / ENCODER_FILE)}


def plot_pretraining(log: list[dict], path: Path, n_classes: Optional[int] = None) -> None:
    """Loss and batch accuracy over steps, one PNG (the uniform-prediction loss drawn for reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [e["step"] for e in log]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(steps, [e["loss"] for e in log], marker=".")
    if n_classes:
        ax_loss.axhline(float(np.log(n_classes)), color="grey", ls="--", lw=1, label="uniform prediction")
        ax_loss.legend(fontsize=8)
    ax_loss.set(title="identity loss (label-smoothed CE)", xlabel="step")
    ax_acc.plot(steps, [e["accuracy"] for e in log], marker=".", color="tab:green")
    ax_acc.set(title="batch accuracy (both modalities)", xlabel="step", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
