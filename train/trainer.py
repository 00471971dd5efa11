"""The training engine: per epoch extract → cluster → (associate) → memories → SGD steps → side jobs.

Stage 1 (epochs < ``stage_one_epochs``) trains with DCL on DBSCAN labels; stage 2 with AMIRL + OCLR on the
association's labels (METHOD.md §2, §6, §7): the two stage objects of mult.train.stages own their memories, batches,
losses and memory writes. Evaluation, metrics.jsonl, the checkpoint and the plot are the epoch-end callbacks of
mult.train.callbacks. One checkpoint per epoch, written atomically; ``resume=True`` continues from it. Every epoch
reseeds its random streams from (seed, epoch, rank), so a resumed run takes exactly the steps an uninterrupted one
would. Launch under ``torchrun`` for several processes.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mult.config import TrainConfig
from mult.data.transforms import eval_transform, train_transforms
from mult.errors import MultError
from mult.datasets import evaluate_dataset, load_training_set
from mult.features import ImageFiles, TorchEncoder
from mult.model import TwoStreamEncoder
from mult.train.data import PairedImages, paired_loader
from mult.train.distributed import DistContext
from mult.runs import RunDir, load_checkpoint, load_weights, model_weights
from mult.train.callbacks import UNTRAINED, epoch_callbacks
from mult.train.memory import ClusterMemory
from mult.train.precise_bn import recalibrate_batchnorm
from mult.train.pseudo_labels import EpochLabels, label_diagnostics, make_epoch_labels
from mult.train.stages import Stage, new_memories, schedule_augmentation, schedule_steps, stage_for


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise MultError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """One independent seed per (run seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume: bool = False, init_from: Optional[Path] = None,
                 progress: bool = True):
        self.cfg = cfg
        self.run = RunDir(Path(run_dir))
        probe_device = resolve_device(cfg.device)
        self.dist = DistContext.from_environment(probe_device.type)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.progress = progress and self.dist.is_main
        self.data = load_training_set(cfg.dataset, Path(cfg.data_root), regdb_split=cfg.regdb_split)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.model = TwoStreamEncoder(arch=cfg.arch, pretrained=cfg.pretrained).to(self.device)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad],
                                          lr=cfg.lr_at(0), weight_decay=cfg.weight_decay)
        self.start_epoch = 0
        if resume:
            self._resume()
        elif init_from is not None:
            self._init_from(Path(init_from))
        if self.dist.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            cfg.save(self.run.config_path)
        self.net = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda"
                                            else None) if self.dist.enabled else self.model)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.callbacks = epoch_callbacks(cfg, self.dist.is_main)  # evaluate, time, record, checkpoint, plot, report
        self.epoch_stage: Optional[Stage] = None  # the stage object of the epoch in progress or last trained

    # ---- state ------------------------------------------------------------------------------------

    def _resume(self) -> None:
        if not self.run.checkpoint_path.is_file():
            raise MultError(f"{self.run.checkpoint_path}: nothing to resume; start without --resume")
        state = load_checkpoint(self.run.checkpoint_path, self.device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch = int(state["epoch"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        self.say(f"resumed {self.run.path} at epoch {self.start_epoch}")

    def _init_from(self, source: Path) -> None:
        """Stage 2 from a stage-1 run: its weights, a fresh Adam (as the reference), start at stage 2."""
        other = RunDir(source).require()
        path = other.checkpoint_path
        load_weights(self.model, model_weights(other.checkpoint(self.device), path), path)
        self.start_epoch = self.cfg.stage_one_epochs
        self.say(f"initialised from {source}; starting stage 2 at epoch {self.start_epoch}")

    def checkpoint_state(self, epoch: int) -> dict:
        """What checkpoint.pt holds once ``epoch`` has trained (:meth:`_resume` reads it back)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch + 1,  # the next epoch to run
            "config": self.cfg.to_dict(),
            "rng_cpu": torch.get_rng_state(),
            "memories": {name: m.features.cpu() for name, m in self.epoch_stage.memories.items()},
        }

    def say(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message)

    # ---- the loop ---------------------------------------------------------------------------------

    def fit(self, stop_after: Optional[int] = None) -> dict:
        """Train from ``start_epoch`` to ``cfg.epochs`` (or through epoch ``stop_after``, 0-based exclusive
        count: ``stop_after=1`` runs one epoch); return the last evaluation (protocol -> mean row)."""
        last_eval: dict = {}
        if self.start_epoch == 0 and self.cfg.calibrate_bn:
            self.calibrate_bn()
        if self.start_epoch == 0 and self.cfg.eval_every > 0:  # the untrained encoder, evaluated and recorded
            last_eval = self._end_epoch(UNTRAINED, {"epoch": UNTRAINED, "stage": "init"}).get("eval", last_eval)
        end = self.cfg.epochs if stop_after is None else min(self.cfg.epochs, stop_after)
        for epoch in range(self.start_epoch, end):
            for callback in self.callbacks:
                callback.on_epoch_start(self, epoch)
            last_eval = self._end_epoch(epoch, self.run_epoch(epoch)).get("eval", last_eval)
            self.dist.barrier()
        return last_eval

    def _end_epoch(self, epoch: int, record: dict) -> dict:
        for callback in self.callbacks:
            callback.on_epoch_end(self, epoch, record)
        return record

    def run_epoch(self, epoch: int) -> dict:
        """Label, then train one epoch; return its record for metrics.jsonl (the callbacks complete it)."""
        cfg = self.cfg
        torch.manual_seed(epoch_seed(cfg.seed, epoch, self.dist.rank))
        stage = cfg.stage_of(epoch)
        labels = self.pseudo_labels(epoch, stage)
        memories = new_memories(labels, cfg, self.device, self.dist.gather_rows)
        losses = self.train_epoch(epoch, stage, labels, memories)
        return {"epoch": epoch, "stage": stage, "lr": cfg.lr_at(epoch), "seconds": 0.0, **losses,
                **label_diagnostics(labels, self.data.visible_pids, self.data.infrared_pids)}

    def calibrate_bn(self, batches: int = 8, batch_size: int = 32) -> None:
        """PreciseBN before the first extraction (see mult.train.precise_bn); same images on every rank."""
        rng = np.random.default_rng([self.cfg.seed, 1 << 20])  # a stream no epoch uses
        images = ImageFiles([], eval_transform(self.cfg.height, self.cfg.width))

        def stack(paths: list[str]) -> torch.Tensor:
            picks = rng.choice(len(paths), size=min(batch_size, len(paths)), replace=False)
            return torch.stack([images.load(paths[i]) for i in picks]).to(self.device)

        used = recalibrate_batchnorm(self.model, ((stack(self.data.visible_paths), stack(self.data.infrared_paths))
                                                  for _ in range(batches)))
        self.dist.sync_buffers(self.model)
        self.say(f"re-estimated BatchNorm statistics on {used} batches of {batch_size}+{batch_size} images")

    def extract(self) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised features of every training image (eval mode, no flip: METHOD.md §2), all ranks: float32
        tensors on the training device, which the pseudo-labelling then runs on (mult.train.pseudo_labels)."""
        encoder = TorchEncoder(self.model, self.cfg.height, self.cfg.width, device=self.device, flip=False,
                               workers=self.cfg.workers, progress=self.progress)
        out = []
        for paths, modality in ((self.data.visible_paths, "visible"), (self.data.infrared_paths, "infrared")):
            out.append(self.dist.gather_rows(encoder.encode_tensor(paths[self.dist.shard(len(paths))], modality)))
        return out[0], out[1]

    def pseudo_labels(self, epoch: int, stage: str) -> EpochLabels:
        feats_v, feats_r = self.extract()
        labels = None
        if self.dist.is_main:
            self.say(f"epoch {epoch}: clustering {len(feats_v)} visible + {len(feats_r)} infrared features")
            labels = make_epoch_labels(feats_v, feats_r, self.cfg, stage, epoch=epoch,
                                       true_ids=(self.data.visible_pids, self.data.infrared_pids))
            if self.dist.enabled:  # pickled to every rank: host arrays only, each rank moves them to its device
                labels = labels.on_host()
        return self.dist.broadcast(labels)

    def train_epoch(self, epoch: int, stage: str, labels: EpochLabels, mems: dict[str, ClusterMemory]) -> dict:
        """The SGD steps of one epoch of ``stage`` (the schedule's "dcl" or "mult") by the stage object that trains
        on ``labels`` with the memories ``mems``; returns the mean loss parts."""
        cfg, dev = self.cfg, self.device
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        learner = self.epoch_stage = stage_for(labels)(cfg, epoch, labels, mems, dev)
        rng = np.random.default_rng(epoch_seed(cfg.seed, epoch, self.dist.rank))
        batches = learner.batches(schedule_steps(cfg, stage), rng)
        dataset = PairedImages(self.data.visible_paths, self.data.infrared_paths,
                               train_transforms(schedule_augmentation(cfg, stage), cfg.height, cfg.width))
        loader = paired_loader(dataset, batches, workers=cfg.workers, seed=epoch_seed(cfg.seed, epoch, 1000 + self.dist.rank))
        totals: dict[str, float] = {}
        self.model.train()
        bar = tqdm(loader, total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs} {stage}", unit="step",
                   disable=not self.progress, leave=False)
        for v0, v1, r, vi, ri in bar:
            v0, v1, r, vi, ri = (t.to(dev, non_blocking=True) for t in (v0, v1, r, vi, ri))
            with torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext():
                f_v, f_r = self.net(torch.cat([v0, v1]), r)
            f_v, f_r = f_v.float(), f_r.float()
            parts = learner.loss(*f_v.chunk(2), f_r, vi, ri)
            self.optimizer.zero_grad(set_to_none=True)
            parts["total"].backward()  # memory_update "official": the memories are written in here
            self.optimizer.step()
            learner.after_step()  # memory_update "after-step": now, in forward order
            values = {k: v.detach().item() for k, v in parts.items()}
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v
            bar.set_postfix(loss=f"{values['total']:.3f}")
        self.dist.sync_buffers(self.model)
        return {f"loss_{k}" if k != "total" else "loss": v / max(len(batches), 1) for k, v in totals.items()}

    def evaluate(self) -> dict:
        """The dataset's test protocol on the current weights (rank 0; flip-averaged features)."""
        if not self.dist.is_main:
            return {}
        encoder = TorchEncoder(self.model, self.cfg.height, self.cfg.width, device=self.device, flip=True,
                               workers=self.cfg.workers, progress=self.progress)
        results = evaluate_dataset(encoder, self.cfg.dataset, Path(self.cfg.data_root), trials=self.cfg.eval_trials,
                                   split=self.cfg.regdb_split)
        return {name: summary.mean.as_dict() for name, summary in results.items()}

