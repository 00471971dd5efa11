"""One full-size training epoch of each stage on this machine, stage by stage, and the paper's schedule estimated
from it.

    python -m benchmarks.bench_epoch --work /tmp/epoch            # SYSU-sized SynthVI (491 ids), ~15 min on 2 cores
    python -m benchmarks.bench_epoch --ids 40 --steps 2 --quick   # a smoke run (seconds)

What runs: SynthVI rendered at SYSU-MM01 scale (``--ids 491``: 395 training ids, ~22k visible + ~12k infrared
training images with the real per-camera counts), the ``sysu`` preset (eps 0.6, k1 30, k2 6, MULT + OCLR) with a
CPU-sized encoder (``--arch mobilenetv2 --height 128 --width 64`` by default: the paper's ResNet-50 at 288x144 does
not train a full epoch on 2 cores in a session) and the SGD steps capped (``--steps``). The real ``Trainer`` runs
epoch 0 (stage 1, DCL) and epoch 1 (stage 2, MULT); each stage of an epoch is timed by wrapping the function that
does it: extraction, Jaccard (k-reciprocal kNN graph), DBSCAN, cluster centres, the MULT association (optimal
transport + label propagation), memory build, the steps, and the checkpoint (``torch.save`` of the trainer's
checkpoint state). Memory: the process's resident set after each stage and its peak (VmHWM; data-loader workers are
separate processes and not included).

The estimate: the paper's ResNet-50 at 288x144 is measured here too (one training step of a reduced batch, scaled
linearly to the preset's batch; extraction throughput), and the full schedule (40 DCL + 50 MULT epochs) is
projected on this CPU from those figures and the measured clustering / association times. The one-GPU figure
needs a GPU's step time: ``python -m benchmarks.gpu_check`` measures it; without one it is left out, not guessed.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from benchmarks.harness import cpu_model, peak_rss_mib, rss_mib, run_in_workdir

def paper_config():
    """The paper's settings as the ``sysu`` preset holds them: encoder, image size, batch and schedule."""
    from mult.config import preset_config

    return preset_config("sysu")


class StageClock:
    """Seconds and resident memory per named stage, filled by wrapped functions (:meth:`wrap`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.rss_after: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.rss_after[name] = round(rss_mib())
        return timed

    def take(self) -> dict[str, Any]:
        """This epoch's figures; the clock starts again from zero."""
        out = {"seconds": {k: round(v, 2) for k, v in self.seconds.items()}, "rss_after_mib": dict(self.rss_after)}
        self.seconds, self.rss_after = defaultdict(float), {}
        return out


def instrument(trainer: Any, clock: StageClock) -> None:
    """Time the trainer's stages by wrapping the functions that do them (names as the trainer's modules see them)."""
    from mult.train import associations, pseudo_labels
    from mult.train import trainer as trainer_module

    for name in ("sparse_jaccard_distance", "dbscan_cluster", "cluster_centres"):
        setattr(pseudo_labels, name, clock.wrap(name.replace("sparse_", ""), getattr(pseudo_labels, name)))
    associations.ASSOCIATE["mult"] = clock.wrap("mult_association", associations.ASSOCIATE["mult"])
    trainer_module.new_memories = clock.wrap("memory_build", trainer_module.new_memories)
    trainer.extract = clock.wrap("extract", trainer.extract)
    trainer.train_epoch = clock.wrap("steps", trainer.train_epoch)


def render(args: argparse.Namespace, work: Path) -> Path:
    from mult.data.synth import synthesize

    data = work / "synthvi"
    if not (data / "exp").is_dir():
        start = time.perf_counter()
        synthesize(data, "sysu", ids=args.ids, seed=0, workers=args.workers, progress=True)
        print(f"rendered SynthVI ({args.ids} ids) in {time.perf_counter() - start:.0f} s", flush=True)
    return data


def run_epochs(args: argparse.Namespace, work: Path, data: Path) -> dict[str, Any]:
    """Epoch 0 (DCL) and epoch 1 (MULT) of the real trainer, stage by stage, then a checkpoint each."""
    import torch

    from mult.config import preset_config
    from mult.train.trainer import Trainer

    cfg = preset_config("sysu", data_root=str(data), arch=args.arch, pretrained=args.pretrained, height=args.height,
                        width=args.width, epochs=2, stage_one_epochs=1, iters_stage_one=args.steps,
                        iters_stage_two=args.steps, eval_every=0, workers=args.workers, device="cpu")
    start = time.perf_counter()
    trainer = Trainer(cfg, work / "run", progress=True)
    setup_s = time.perf_counter() - start
    clock = StageClock()
    instrument(trainer, clock)
    epochs = []
    for epoch in range(2):
        start = time.perf_counter()
        record = trainer.run_epoch(epoch)
        total = time.perf_counter() - start
        start = time.perf_counter()
        path = work / "run" / "checkpoint.pt"
        torch.save(trainer.checkpoint_state(epoch), path)
        figures = clock.take()
        figures["seconds"]["checkpoint"] = round(time.perf_counter() - start, 2)
        epochs.append({"epoch": epoch, "stage": record["stage"], "epoch_seconds": round(total, 1), **figures,
                       "checkpoint_mib": round(path.stat().st_size / 2**20, 1),
                       "clusters": {k: record[k] for k in ("clusters_v", "clusters_r") if k in record}})
        print(f"epoch {epoch} ({record['stage']}): {total:.0f} s, stages {figures['seconds']}", flush=True)
    return {"config": {k: getattr(cfg, k) for k in ("arch", "height", "width", "num_ids", "num_instances", "eps",
                                                    "k1", "k2", "iters_stage_one", "iters_stage_two")},
            "images": {"visible": len(trainer.data.visible_paths), "infrared": len(trainer.data.infrared_paths)},
            "setup_seconds": round(setup_s, 1), "epochs": epochs}


def resnet50_costs(args: argparse.Namespace) -> dict[str, float]:
    """The paper's encoder on this CPU (the ``sysu`` preset's: ResNet-50 at 288x144): one training step (forward +
    backward + Adam) of a reduced stage-1 batch, and extraction throughput."""
    import torch

    from mult.model import TwoStreamEncoder

    paper = paper_config()
    size = (paper.height, paper.width)
    torch.manual_seed(0)
    model = TwoStreamEncoder(arch=paper.arch, pretrained=None)
    optimizer = torch.optim.Adam(model.parameters(), lr=paper.lr)
    per_modality = args.r50_batch  # images per modality in the measured step (the preset's: 12 x 12 = 144)
    v, r = torch.randn(2 * per_modality, 3, *size), torch.randn(per_modality, 3, *size)
    model.train()
    times = []
    for _ in range(2):  # the first step warms up the allocator; the second is quoted
        start = time.perf_counter()
        f_v, f_r = model(v, r)
        (f_v.pow(2).mean() + f_r.pow(2).mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    model.eval()
    with torch.no_grad():
        batch = torch.randn(32, 3, *size)
        model.embed(batch, "visible")  # warm-up
        start = time.perf_counter()
        model.embed(batch, "visible")
        extract_s = time.perf_counter() - start
    return {"step_images": 3 * per_modality, "step_seconds": round(times[-1], 2),
            "extract_images_per_s": round(32 / extract_s, 1)}


def estimate(result: dict[str, Any]) -> dict[str, Any]:
    """The paper's full schedule on this CPU with ResNet-50 at 288x144: per epoch, extraction of every training
    image + the measured clustering / association + the preset's steps at the measured (linearly scaled) step cost."""
    paper, r50 = paper_config(), result["resnet50"]
    images = sum(result["images"].values())
    preset_step_images = 3 * paper.num_ids * paper.num_instances  # per modality, visible twice
    step_s = r50["step_seconds"] * preset_step_images / r50["step_images"]
    steps = {"dcl": paper.iters_stage_one, "mult": paper.iters_stage_two}
    epochs = {"dcl": paper.stage_one_epochs, "mult": paper.epochs - paper.stage_one_epochs}
    per_epoch = {}
    for e in result["epochs"]:
        s = e["seconds"]
        labelling = sum(s.get(k, 0.0) for k in ("jaccard_distance", "dbscan_cluster", "cluster_centres",
                                                 "mult_association", "memory_build"))
        per_epoch[e["stage"]] = {"extract_s": images / r50["extract_images_per_s"], "labelling_s": labelling,
                                 "steps_s": steps[e["stage"]] * step_s}
    total = sum(epochs[stage] * sum(parts.values()) for stage, parts in per_epoch.items())
    return {"per_epoch": {k: {n: round(v, 1) for n, v in parts.items()} for k, parts in per_epoch.items()},
            "step_seconds_at_preset_batch": round(step_s, 1), "cpu_total_hours": round(total / 3600, 1),
            "assumptions": "ResNet-50 288x144 step cost scaled linearly from the measured reduced batch; "
                           "clustering and association times as measured at this size with the CPU-sized encoder's "
                           "features (they depend on the number of images, not the encoder); no evaluation."}


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    data = render(args, work)
    result = run_epochs(args, work, data)
    result["peak_rss_mib"] = round(peak_rss_mib())
    if not args.quick:
        result["resnet50"] = resnet50_costs(args)
        result["estimate"] = estimate(result)
    result["machine"] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "load_average_1m_at_end": os.getloadavg()[0]}
    return result


def render_table(result: dict[str, Any]) -> str:
    names = sorted({k for e in result["epochs"] for k in e["seconds"]})
    lines = [f"{result['images']['visible']:,} visible + {result['images']['infrared']:,} infrared training images; "
             f"{result['config']}",
             f"{'stage':<20}" + "".join(f"{'epoch ' + str(e['epoch']) + ' ' + e['stage']:>18}" for e in result["epochs"])]
    for name in names:
        lines.append(f"{name:<20}" + "".join(f"{e['seconds'].get(name, 0.0):>16.1f} s" for e in result["epochs"]))
    lines.append(f"{'epoch total':<20}" + "".join(f"{e['epoch_seconds']:>16.1f} s" for e in result["epochs"]))
    lines.append(f"{'checkpoint size':<20}" + "".join(f"{e['checkpoint_mib']:>14.1f} MiB" for e in result["epochs"]))
    lines.append(f"peak resident memory {result['peak_rss_mib']:,} MiB; after each stage: "
                 + "; ".join(f"epoch {e['epoch']}: {e['rss_after_mib']}" for e in result["epochs"]))
    if "estimate" in result:
        est = result["estimate"]
        lines.append(f"ResNet-50 288x144 on this CPU: {result['resnet50']}; per epoch {est['per_epoch']}; "
                     f"the paper's 40 + 50 epochs: ~{est['cpu_total_hours']} h on this CPU ({est['assumptions']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=491, help="SynthVI identities (491: SYSU-MM01 scale)")
    parser.add_argument("--steps", type=int, default=20, help="SGD steps per epoch (the preset's: 300 / 200)")
    parser.add_argument("--arch", default="mobilenetv2")
    parser.add_argument("--pretrained", default="imagenet")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--r50-batch", type=int, default=8, help="images per modality in the ResNet-50 step measured")
    parser.add_argument("--quick", action="store_true", help="skip the ResNet-50 measurement and the estimate")
    parser.add_argument("--work", type=Path, default=None, help="keep data and run here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path(".bench/epoch.json"))
    return run_in_workdir("bench_epoch", parser.parse_args(argv), run, render_table)


if __name__ == "__main__":
    raise SystemExit(main())
