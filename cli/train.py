"""`mult train`, `mult pretrain` and `mult evaluate`: the training floor's commands."""

from __future__ import annotations

import json
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mult.cli.common import DatasetFormat, encoder_from_options, print_json
from mult.config import ASSOCIATIONS
from mult.errors import MultError

train_commands = typer.Typer()


class Stage(str, Enum):
    full = "full"
    dcl = "dcl"
    mult = "mult"


#: The CLI's choices come from the config's one list (mult.config.ASSOCIATIONS), so they cannot disagree.
Association = Enum("Association", {name: name for name in ASSOCIATIONS}, type=str)


def parse_sets(pairs: list[str]) -> dict[str, object]:
    """``--set field=value`` pairs, values parsed as JSON when they parse (numbers, true/false, lists)."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise MultError(f"--set {pair!r}: expected field=value, e.g. --set eps=0.5")
        try:
            out[key.strip().replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = raw
    return out


@train_commands.command("train")
def train(
    out: Path = typer.Option(..., "--out", help="Run directory (config, checkpoints, metrics.jsonl, plots)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder (SYSU-MM01 or RegDB layout)."),
    dataset: Optional[DatasetFormat] = typer.Option(None, "--dataset", help="Dataset layout (default: the preset's)."),
    preset: str = typer.Option("sysu", "--preset", help="sysu | regdb | synth-demo | tiny."),
    stage: Stage = typer.Option(Stage.full, "--stage", help="full: stage 1 then 2; dcl: stage 1 only; mult: stage 2 (with --from)."),
    from_run: Optional[Path] = typer.Option(None, "--from", help="Start stage 2 from this stage-1 run's weights."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Total epochs (absolute, both stages)."),
    stage_one_epochs: Optional[int] = typer.Option(None, "--stage-one-epochs", min=0, help="Epochs of stage 1."),
    association: Optional[Association] = typer.Option(None, "--association", help="Cross-modality association (stage 2); 'oracle' reads the true ids: a diagnostic upper bound (--set oracle_accuracy=0.5 corrupts links)."),
    no_oclr: bool = typer.Option(False, "--no-oclr", help="Ablation: drop the OCLR loss."),
    no_homogeneous: bool = typer.Option(False, "--no-homogeneous", help="Ablation: no Jaccard smoothing in MULT."),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="MULT anchor weight (0.2)."),
    beta: Optional[float] = typer.Option(None, "--beta", help="Hard/soft target mix (0.7)."),
    regdb_split: Optional[int] = typer.Option(None, "--split", min=1, max=10, help="RegDB split (1..10)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", min=0, help="Evaluate every N epochs (0: never)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Backbone: resnet18 | resnet34 | resnet50 | mobilenetv2 (default: the preset's)."),
    pretrained: Optional[str] = typer.Option(None, "--pretrained", help="imagenet | none | path to a .pth (ImageNet classifier or mult encoder)."),
    sets: list[str] = typer.Option([], "--set", help="Any other config field, e.g. --set eps=0.5 (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the final evaluation as JSON."),
) -> None:
    """Train MULT + OCLR without labels (stage 1 DCL, then MULT label transfer + AMIRL + OCLR).

    Example: mult train --preset synth-demo --data-root data/synth-sysu --out runs/demo
    Several processes: torchrun --nproc_per_node 2 -m mult train ... (DistributedDataParallel).
    """
    from mult.config import TrainConfig, preset_config
    from mult.runs import RunDir

    if resume:
        cfg = RunDir(out).config() if RunDir(out).config_path.is_file() else None
        if cfg is None:
            raise MultError(f"{out}: no config.json to resume from; start the run without --resume")
    else:
        overrides = dict(
            data_root=str(data_root) if data_root else None, dataset=dataset.value if dataset else None,
            epochs=epochs, stage_one_epochs=stage_one_epochs, association=association.value if association else None,
            alpha=alpha, beta=beta, regdb_split=regdb_split, device=device, seed=seed, eval_every=eval_every, arch=arch,
            pretrained=(None if pretrained.lower() == "none" else pretrained) if pretrained else None,
        )
        cfg = preset_config(preset, **overrides)
        if pretrained and pretrained.lower() == "none":
            cfg.pretrained = None
        if no_oclr:
            cfg.oclr = False
        if no_homogeneous:
            cfg.homogeneous = False
        if stage is Stage.dcl:
            cfg.epochs = cfg.stage_one_epochs
        if sets:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **parse_sets(sets)})
        cfg.validate()  # the flags above set fields directly (e.g. --stage dcl: epochs = stage_one_epochs)
        if not cfg.data_root:
            raise MultError("--data-root is required (the dataset folder); see `mult data synth` for test data")
        if stage is Stage.mult and from_run is None:
            raise MultError("--stage mult needs --from RUN_DIR (a finished stage-1 run)")
        if RunDir(out).checkpoint_path.is_file():
            raise MultError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    from mult.train.trainer import Trainer  # imported after the config checks: they answer without the wait

    result = Trainer(cfg, out, resume=resume, init_from=from_run).fit()
    if as_json:
        print_json(result)


@train_commands.command("pretrain")
def pretrain(
    data_root: Path = typer.Option(..., "--data-root", help="A LABELLED source dataset, identities disjoint from the target's."),
    out: Path = typer.Option(..., "--out", help="Folder for encoder.pth, pretrain.jsonl and pretrain.png."),
    preset: str = typer.Option("synth-demo", "--preset", help="Model, image size and batch shape of this preset."),
    dataset: Optional[DatasetFormat] = typer.Option(None, "--dataset", help="Dataset layout (default: the preset's)."),
    steps: int = typer.Option(3000, "--steps", min=1, help="Optimisation steps (3000: ~30 min at 64x32 on 2 CPU cores)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
    sets: list[str] = typer.Option([], "--set", help="Any other config field, e.g. --set lr=0.001 (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Supervised source pre-training, the stand-in for ImageNet weights (see mult.train.pretrain).

    Example (SynthVI, the recipe of docs/RESULTS.md): mult pretrain --data-root data/synth-source --out runs/source
    --set height=64 --set width=32 --set lr=0.001 --set num_ids=8, then: mult train --preset synth-demo
    --data-root data/synth-demo --pretrained runs/source/encoder.pth --set height=64 --set width=32 ...
    """
    from mult.config import TrainConfig, preset_config
    from mult.train.pretrain import pretrain_supervised

    cfg = preset_config(preset, data_root=str(data_root), dataset=dataset.value if dataset else None, seed=seed)
    if sets:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **parse_sets(sets)})
    summary = pretrain_supervised(cfg, out, steps=steps, progress=not as_json)
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"pre-trained on {summary['identities']} identities, {summary['steps']} steps in "
                   f"{summary['seconds']:.0f} s (final loss {summary['loss']:.3f}, batch accuracy "
                   f"{summary['accuracy']:.2f}): {summary['encoder']}")


@train_commands.command("evaluate")
def evaluate(
    run_dir: Optional[Path] = typer.Argument(None, help="A `mult train` run directory (its model, dataset and split)."),
    server: Optional[str] = typer.Option(None, "--server", help="Evaluate the model served by Triton at this gRPC URL."),
    local: Optional[Path] = typer.Option(None, "--local", help="Evaluate an exported model repository in-process (ONNX Runtime)."),
    dataset: Optional[DatasetFormat] = typer.Option(None, "--dataset", help="sysu | regdb (default: the run's)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset folder (default: the run's)."),
    split: Optional[int] = typer.Option(None, "--split", min=1, max=10, help="RegDB split (default: the run's, else 1)."),
    trials: int = typer.Option(10, "--trials", min=1, help="SYSU gallery trials (seeds 0..N-1)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (in-process torch only)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    rerank: bool = typer.Option(False, "--rerank", help="Also report each protocol after the official MULT cross-modality re-ranking (k=15, eta=0.1), as separate <protocol>-rerank tables/keys."),
) -> None:
    """Evaluate with the published protocol (SYSU: 10 gallery trials; RegDB: one split, both directions),
    in-process from a run, or through a deployment (--server URL / --local REPO) to prove it reproduces
    the training-time numbers.

    Example: mult evaluate runs/demo --json;  mult evaluate runs/demo --server 127.0.0.1:8001
    """
    from mult.datasets import evaluate_dataset

    cfg = None
    if run_dir is not None:
        from mult.runs import RunDir

        run = RunDir(run_dir).require()
        cfg = run.config()
    ds = dataset.value if dataset else (cfg.dataset if cfg else None)
    root = data_root or (Path(cfg.data_root) if cfg and cfg.data_root else None)
    if ds is None or root is None:
        raise MultError("say which data to evaluate on: pass a run directory, or --dataset and --data-root")
    split = split or (cfg.regdb_split if cfg else 1)
    deployment = ExitStack()  # closes the gRPC channel / ONNX Runtime sessions of --server / --local
    if server is not None or local is not None:
        encoder = deployment.enter_context(encoder_from_options(server, local))
    elif cfg is not None:
        from mult.features import TorchEncoder
        from mult.train.trainer import resolve_device

        dev = resolve_device(device)
        encoder = TorchEncoder(run.load_model(dev), cfg.height, cfg.width, device=dev, flip=True,
                               progress=not as_json)
    else:
        raise MultError("nothing to evaluate: pass a run directory, --server URL or --local REPO")
    with deployment:
        results = evaluate_dataset(encoder, ds, Path(root), trials=trials, split=split, rerank=rerank)
    if as_json:
        print_json({name: summary.as_dict() for name, summary in results.items()})
    else:
        typer.echo("\n\n".join(summary.render() for summary in results.values()))
