"""The training engine: per epoch extract → cluster → (associate) → memories → SGD steps → record.

Stage 1 (epochs < ``stage_one_epochs``) trains with DCL on DBSCAN labels; stage 2 with AMIRL + OCLR on the
association's labels (METHOD.md §2, §6, §7). One checkpoint per epoch, written atomically; ``resume=True``
continues from it. Every epoch reseeds its random streams from (seed, epoch, rank), so a resumed run takes
exactly the steps an uninterrupted one would. Launch under ``torchrun`` for several processes.
"""

from __future__ import annotations

import json
import time
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
from mult.io import save_torch_atomic, write_text_atomic
from mult.model import TwoStreamEncoder
from mult.train.data import PairedImages, paired_loader
from mult.train.distributed import DistContext
from mult.train.losses import UnifiedSpace, amirl_loss, dcl_loss
from mult.train.memory import ClusterMemory
from mult.train.plots import plot_run
from mult.train.precise_bn import recalibrate_batchnorm
from mult.train.pseudo_labels import EpochLabels, label_diagnostics, make_epoch_labels
from mult.runs import RunDir, load_checkpoint, load_weights, model_weights
from mult.train.samplers import stage_one_batches, stage_two_batches


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


def _to_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(x, device=device)


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

    def _save(self, epoch: int, memories: dict[str, ClusterMemory]) -> None:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch + 1,  # the next epoch to run
            "config": self.cfg.to_dict(),
            "rng_cpu": torch.get_rng_state(),
            "memories": {name: m.features.cpu() for name, m in memories.items()},
        }
        save_torch_atomic(state, self.run.checkpoint_path)

    def _record(self, entry: dict) -> None:
        """Append one epoch to metrics.jsonl, dropping lines of epochs a resume is re-running."""
        kept = [m for m in self.run.metrics() if m.get("epoch", -1) < entry["epoch"]]
        write_text_atomic(self.run.metrics_path, "".join(json.dumps(m) + "\n" for m in [*kept, entry]))

    def say(self, message: str) -> None:
        if self.dist.is_main:
            tqdm.write(message)

    # ---- the loop ---------------------------------------------------------------------------------

    def fit(self, stop_after: Optional[int] = None) -> dict:
        """Train from ``start_epoch`` to ``cfg.epochs`` (or through epoch ``stop_after``, 0-based exclusive
        count: ``stop_after=1`` runs one epoch); return the last evaluation (protocol -> mean row)."""
        cfg = self.cfg
        last_eval: dict = {}
        if self.start_epoch == 0 and cfg.calibrate_bn:
            self.calibrate_bn()
        if self.start_epoch == 0 and cfg.eval_every > 0:
            last_eval = self.evaluate()
            if self.dist.is_main:
                self._record({"epoch": -1, "stage": "init", "eval": last_eval})
        end = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
        for epoch in range(self.start_epoch, end):
            started = time.time()
            torch.manual_seed(epoch_seed(cfg.seed, epoch, self.dist.rank))
            stage = cfg.stage_of(epoch)
            labels = self.pseudo_labels(epoch, stage)
            memories = self.build_memories(labels)
            losses = self.train_epoch(epoch, stage, labels, memories)
            entry = {"epoch": epoch, "stage": stage, "lr": cfg.lr_at(epoch), "seconds": 0.0, **losses,
                     **label_diagnostics(labels, self.data.visible_pids, self.data.infrared_pids)}
            if cfg.eval_every > 0 and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
                last_eval = entry["eval"] = self.evaluate()
            entry["seconds"] = round(time.time() - started, 2)
            if self.dist.is_main:
                self._record(entry)
                self._save(epoch, memories)
                plot_run(self.run)
                self.say(_epoch_line(entry))
            self.dist.barrier()
        return last_eval

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

    def extract(self) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised features of every training image (eval mode, no flip: METHOD.md §2), all ranks."""
        encoder = TorchEncoder(self.model, self.cfg.height, self.cfg.width, device=self.device, flip=False,
                               workers=self.cfg.workers, progress=self.progress)
        out = []
        for paths, modality in ((self.data.visible_paths, "visible"), (self.data.infrared_paths, "infrared")):
            mine = encoder.encode(paths[self.dist.shard(len(paths))], modality)
            out.append(self.dist.gather_rows(torch.from_numpy(mine).to(self.device)).cpu().numpy())
        return out[0], out[1]

    def pseudo_labels(self, epoch: int, stage: str) -> EpochLabels:
        feats_v, feats_r = self.extract()
        labels = None
        if self.dist.is_main:
            self.say(f"epoch {epoch}: clustering {len(feats_v)} visible + {len(feats_r)} infrared features")
            labels = make_epoch_labels(feats_v, feats_r, self.cfg, stage, epoch=epoch,
                                       true_ids=(self.data.visible_pids, self.data.infrared_pids))
        return self.dist.broadcast(labels)

    def build_memories(self, labels: EpochLabels) -> dict[str, ClusterMemory]:
        """Two memories in stage 1; the six of METHOD.md §6.2 in stage 2, all from the DBSCAN centres.

        Every memory writes every rank's samples (gathered), when ``cfg.memory_update`` says (train/memory.py).
        """
        cfg = self.cfg
        cv, cr = (_to_tensor(c.centres, self.device) for c in (labels.visible, labels.infrared))
        if cv.shape[0] == 0 or cr.shape[0] == 0:
            raise RuntimeError("DBSCAN found no cluster in one modality; lower eps or train longer first")

        def memory(centres: torch.Tensor, momentum: float) -> ClusterMemory:
            return ClusterMemory(centres, cfg.temp, momentum, update=cfg.memory_update, gather=self.dist.gather_rows)

        mems = {"v": memory(cv, cfg.momentum), "r": memory(cr, cfg.momentum)}
        if labels.cross_modal:
            mems.update(rcm=memory(cv, cfg.momentum), vcm=memory(cr, cfg.momentum), va=memory(cv, cfg.momentum_cross),
                        ra=memory(cr, cfg.momentum_cross))
        return mems

    def train_epoch(self, epoch: int, stage: str, labels: EpochLabels, mems: dict[str, ClusterMemory]) -> dict:
        cfg, dev = self.cfg, self.device
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr_at(epoch)
        rng = np.random.default_rng(epoch_seed(cfg.seed, epoch, self.dist.rank))
        steps = cfg.iters_stage_one if stage == "dcl" else cfg.iters_stage_two
        if labels.cross_modal:
            batches = stage_two_batches(labels.labels_v, labels.labels_r, labels.cm_labels_v, labels.cm_labels_r,
                                        p=cfg.num_ids, k=cfg.num_instances, steps=steps, rng=rng)
        else:
            batches = stage_one_batches(labels.labels_v, labels.labels_r, p=cfg.num_ids, k=cfg.num_instances,
                                        steps=steps, rng=rng)
        dataset = PairedImages(self.data.visible_paths, self.data.infrared_paths,
                               train_transforms(self._augment_stage(stage), cfg.height, cfg.width))
        loader = paired_loader(dataset, batches, workers=cfg.workers, seed=epoch_seed(cfg.seed, epoch, 1000 + self.dist.rank))
        # Hard labels as tensors once per epoch (indexed every step for the loss and the memory updates).
        hard = {"v": _to_tensor(labels.labels_v, dev), "r": _to_tensor(labels.labels_r, dev)}
        if labels.cross_modal:
            hard.update(cm_v=_to_tensor(labels.cm_labels_v, dev), cm_r=_to_tensor(labels.cm_labels_r, dev))
        targets = {k: _to_tensor(v, dev).float() for k, v in labels.targets.items()}
        even = epoch % 2 == 0  # METHOD.md §6.3: parity of the absolute epoch picks the label space
        totals: dict[str, float] = {}
        self.model.train()
        bar = tqdm(loader, total=len(batches), desc=f"epoch {epoch + 1}/{cfg.epochs} {stage}", unit="step",
                   disable=not self.progress, leave=False)
        for v0, v1, r, vi, ri in bar:
            v0, v1, r, vi, ri = (t.to(dev, non_blocking=True) for t in (v0, v1, r, vi, ri))
            with torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext():
                f_v, f_r = self.net(torch.cat([v0, v1]), r)
            f_v, f_r = f_v.float(), f_r.float()
            f_v0, f_v1 = f_v.chunk(2)
            if labels.cross_modal:
                parts = self._stage_two_loss(mems, targets, hard, even, f_v0, f_v1, f_r, vi, ri)
            else:
                parts = {"total": dcl_loss(mems["v"], mems["r"], f_v0, f_v1, f_r, hard["v"][vi], hard["r"][ri])}
            self.optimizer.zero_grad(set_to_none=True)
            parts["total"].backward()  # memory_update "official": the memories are written in here
            self.optimizer.step()
            for memory in mems.values():
                memory.write_pending()  # memory_update "after-step": now, in forward order
            values = {k: v.detach().item() for k, v in parts.items()}
            for k, v in values.items():
                totals[k] = totals.get(k, 0.0) + v
            bar.set_postfix(loss=f"{values['total']:.3f}")
        self.dist.sync_buffers(self.model)
        return {f"loss_{k}" if k != "total" else "loss": v / max(len(batches), 1) for k, v in totals.items()}

    def _augment_stage(self, stage: str) -> int:
        """Which §3.2 pipelines to use: stage 1's, unless the config asks for the lighter stage-2 ones."""
        return 1 if stage == "dcl" and self.cfg.stage_one_augment == "paper" else 2

    def _stage_two_loss(self, mems: dict[str, ClusterMemory], targets: dict[str, torch.Tensor],
                        hard: dict[str, torch.Tensor], even: bool, f_v0, f_v1, f_r, vi, ri) -> dict[str, torch.Tensor]:
        """AMIRL + OCLR of this epoch's parity (METHOD.md §6.2-6.3, §7): the unified space's memories, and the soft
        targets and hard labels (which write the memories) of its visible, infrared and other-memory samples."""
        if even:  # visible label space
            space = UnifiedSpace(mems["v"], mems["rcm"], mems["va"], mems["r"], other_is_visible=False)
            soft = (targets["y_rgb"][vi], targets["y_ir_cm"][ri], targets["y_ir"][ri])
            labels = (hard["v"][vi], hard["cm_r"][ri], hard["r"][ri])
        else:  # infrared label space
            space = UnifiedSpace(mems["vcm"], mems["r"], mems["ra"], mems["v"], other_is_visible=True)
            soft = (targets["y_rgb_cm"][vi], targets["y_ir"][ri], targets["y_rgb"][vi])
            labels = (hard["cm_v"][vi], hard["r"][ri], hard["v"][vi])
        cfg = self.cfg
        return amirl_loss(space, f_v0, f_v1, f_r, *soft, labels=labels, use_oclr=cfg.oclr, oclr_ratio=cfg.oclr_ratio,
                          oclr_detach=cfg.oclr_detach)

    def evaluate(self) -> dict:
        """The dataset's test protocol on the current weights (rank 0; flip-averaged features)."""
        if not self.dist.is_main:
            return {}
        encoder = TorchEncoder(self.model, self.cfg.height, self.cfg.width, device=self.device, flip=True,
                               workers=self.cfg.workers, progress=self.progress)
        results = evaluate_dataset(encoder, self.cfg.dataset, Path(self.cfg.data_root), trials=self.cfg.eval_trials,
                                   split=self.cfg.regdb_split)
        return {name: summary.mean.as_dict() for name, summary in results.items()}


def _epoch_line(entry: dict) -> str:
    parts = [f"epoch {entry['epoch'] + 1} [{entry['stage']}] loss {entry.get('loss', float('nan')):.3f}",
             f"clusters v/r {entry['clusters_v']}/{entry['clusters_r']}"]
    for key in ("dbscan_v", "dbscan_r"):
        if key in entry and "ari" in entry[key]:
            parts.append(f"ARI {key[-1]} {entry[key]['ari']:.3f}")
    for name, row in entry.get("eval", {}).items():
        parts.append(f"{name} R1 {row['rank1']:.1f} mAP {row['mAP']:.1f}")
    parts.append(f"{entry['seconds']:.0f}s")
    return " | ".join(parts)
