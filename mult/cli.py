"""The ``mult`` command line: a thin Typer layer over the library.

Each command parses options, calls one library function and prints its result (a table, or JSON with
``--json``). Expected mistakes raise :class:`mult.errors.MultError`; :func:`main` turns them into one line
on stderr and a non-zero exit. Heavy imports happen inside the commands so ``mult --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mult import __version__
from mult.cli_common import DatasetFormat, encoder_from_options
from mult.cli_common import print_json as _print_json
from mult.cli_search import index_app, search_commands
from mult.config import ASSOCIATIONS
from mult.errors import MultError

app = typer.Typer(
    name="mult",
    help="Unsupervised visible-infrared person re-identification (MULT + OCLR): data, training, "
    "export, serving and search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Create and check datasets (SYSU-MM01, RegDB, SynthVI).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.registered_commands += search_commands.registered_commands


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mult {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """mult: MULT + OCLR unsupervised visible-infrared ReID, from training to a deployed search service."""


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the dataset into (created; must be empty)."),
    fmt: DatasetFormat = typer.Option(DatasetFormat.sysu, "--format", help="On-disk layout to write."),
    ids: int = typer.Option(60, "--ids", min=4, help="Number of identities in all (train + test)."),
    test_ids: Optional[int] = typer.Option(
        None, "--test-ids", min=2, help="Identities held out for testing (default: SYSU's 96/491 share, RegDB half)."
    ),
    images_per_camera: Optional[int] = typer.Option(
        None, "--images-per-camera", min=1, help="Mean images per identity and camera (SYSU; RegDB is 10 per modality)."
    ),
    height: int = typer.Option(288, "--height", min=32, help="Image height in pixels."),
    width: int = typer.Option(144, "--width", min=16, help="Image width in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same files."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Rendering processes (default: all cores)."),
    heat_from_colour: float = typer.Option(
        0.0, "--heat-from-colour", min=0.0, max=1.0,
        help="Tie infrared heat to visible luminance (0 = independent, the default; 1 = follows it): an easier "
             "modality gap for controlled experiments."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Render a SynthVI dataset in the real SYSU-MM01 or RegDB format.

    Example: mult data synth --format sysu --out data/synth-sysu --ids 60 --seed 0
    """
    from mult.data.synth import synthesize

    summary = synthesize(
        out,
        fmt.value,
        ids=ids,
        test_ids=test_ids,
        images_per_camera=images_per_camera,
        height=height,
        width=width,
        seed=seed,
        workers=workers,
        progress=not as_json,
        heat_from_colour=heat_from_colour,
    )
    if as_json:
        _print_json(summary.as_dict())
    else:
        typer.echo(summary.render())


@data_app.command("check")
def data_check(
    root: Path = typer.Argument(..., help="Dataset root folder."),
    fmt: DatasetFormat = typer.Option(..., "--format", help="Layout the folder should have."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Summarise a dataset folder (ids, images per camera and modality) and list what is missing or malformed.

    Exits with status 1 when problems were found.

    Example: mult data check ~/data/SYSU-MM01 --format sysu
    """
    from mult.data.check import check_dataset

    report = check_dataset(root, fmt.value)
    if as_json:
        _print_json(report.as_dict())
    else:
        typer.echo(report.render())
    if report.problems:
        raise typer.Exit(1)


class Stage(str, Enum):
    full = "full"
    dcl = "dcl"
    mult = "mult"


#: The CLI's choices come from the config's one list (mult.config.ASSOCIATIONS), so they cannot disagree.
Association = Enum("Association", {name: name for name in ASSOCIATIONS}, type=str)


def _parse_sets(pairs: list[str]) -> dict[str, object]:
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


@app.command("train")
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
            cfg = TrainConfig.from_dict({**cfg.to_dict(), **_parse_sets(sets)})
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
        _print_json(result)


@app.command("pretrain")
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
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **_parse_sets(sets)})
    summary = pretrain_supervised(cfg, out, steps=steps, progress=not as_json)
    if as_json:
        _print_json(summary)
    else:
        typer.echo(f"pre-trained on {summary['identities']} identities, {summary['steps']} steps in "
                   f"{summary['seconds']:.0f} s (final loss {summary['loss']:.3f}, batch accuracy "
                   f"{summary['accuracy']:.2f}): {summary['encoder']}")


@app.command("evaluate")
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
        results = evaluate_dataset(encoder, ds, Path(root), trials=trials, split=split)
    if as_json:
        _print_json({name: summary.as_dict() for name, summary in results.items()})
    else:
        typer.echo("\n\n".join(summary.render() for summary in results.values()))


@app.command("export")
def export(
    source: Path = typer.Argument(..., help="A `mult train` run directory or a checkpoint file."),
    repo: Path = typer.Option(Path("model_repository"), "--repo", help="Triton model repository to write into."),
    version: Optional[int] = typer.Option(None, "--version", min=1, help="Version number (default: the next free one)."),
    flip: bool = typer.Option(True, "--flip/--no-flip", help="Average with the mirrored image inside the graph."),
    tensorrt: bool = typer.Option(False, "--tensorrt", help="Add the TensorRT FP16 accelerator block (GPU hosts)."),
    max_batch_size: int = typer.Option(64, "--max-batch-size", min=1, help="Triton max_batch_size."),
    calibration_image: list[Path] = typer.Option([], "--image", help="Images for the parity check (repeatable)."),
    fp16: bool = typer.Option(False, "--fp16", help="Serve an FP16 copy (FP16 conv trunk; uint8 in, FP32 out unchanged)."),
    int8: bool = typer.Option(False, "--int8", help="Serve an INT8 copy (ONNX Runtime static QDQ, calibrated on real images)."),
    calibration_dir: Optional[Path] = typer.Option(
        None, "--calibration-dir", help="INT8 calibration images (visible/ and infrared/ subfolders are used per stem; "
        "default: the run's training images)."),
    calibration_count: int = typer.Option(64, "--calibration-count", min=1, help="INT8 calibration images per stem."),
    as_json: bool = typer.Option(False, "--json", help="Print the export summary as JSON."),
) -> None:
    """Export both stems to ONNX (uint8 NHWC in, L2-normalised embeddings out) as Triton models
    mult_visible and mult_infrared, with config.pbtxt, a manifest and a torch-vs-ONNX-Runtime parity check.

    Example: mult export runs/demo --repo model_repository
    """
    from mult.export.repository import write_model_repository

    if fp16 and int8:
        raise MultError("choose one of --fp16 and --int8")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    result = write_model_repository(source, repo, version=version, flip=flip, tensorrt=tensorrt,
                                    max_batch_size=max_batch_size, calibration_images=calibration_image or None,
                                    precision=precision, calibration_dir=calibration_dir,
                                    calibration_count=calibration_count)
    summary = result.to_dict()
    if as_json:
        _print_json(summary)
        return
    typer.echo(f"exported version {result.version} ({result.precision}) to {result.repo} "
               f"(input {result.height}x{result.width}x3 uint8, embeddings {result.embedding_size}-d)")
    for name, model in result.models.items():
        parity = model.parity
        typer.echo(f"  {name}: {model.onnx_path}  parity max|diff| {parity.max_abs_diff:.2e}, "
                   f"min cos {parity.min_cosine:.6f} ({model.parity_images})")


@app.command("serve")
def serve(
    repo: Path = typer.Option(Path("model_repository"), "--repo", help="Model repository written by `mult export`."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (127.0.0.1: this machine only)."),
    grpc_port: int = typer.Option(8001, "--grpc-port", min=1, max=65535, help="gRPC port."),
    http_port: int = typer.Option(8000, "--http-port", min=1, max=65535, help="HTTP port."),
    metrics_port: int = typer.Option(8002, "--metrics-port", min=1, max=65535, help="Prometheus metrics port."),
) -> None:
    """Serve mult_visible and mult_infrared with the real Triton Inference Server (python backend running
    ONNX Runtime; the bundled server of the nvidia-pytriton wheel) until Ctrl-C or SIGTERM.

    Example: mult serve --repo model_repository --grpc-port 8001
    """
    from mult.serving.triton_server import serve as run_serve

    raise typer.Exit(run_serve(repo, host=host, grpc_port=grpc_port, http_port=http_port,
                               metrics_port=metrics_port, echo=typer.echo))


@app.command("demo")
def demo(
    workdir: Path = typer.Option(Path("demo"), "--workdir", help="Where data, run, model repository and gallery go."),
    ids: int = typer.Option(100, "--ids", min=8, help="SynthVI identities to render (80% train, 20% test)."),
    seed: int = typer.Option(0, "--seed", help="Data and training seed."),
    heat_from_colour: float = typer.Option(
        1.0, "--heat-from-colour", min=0.0, max=1.0,
        help="SynthVI modality gap: 1 (default) ties infrared heat to visible luminance, the easier gap; 0 is the "
             "standard gap (see README for both results). Use another --workdir for another value."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface the page binds."),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port of the page."),
    grpc_port: Optional[int] = typer.Option(None, "--grpc-port", min=1, max=65535, help="Triton gRPC port (default: a free one)."),
    ready_only: bool = typer.Option(False, "--ready-only", help="Stop once the page answers (for CI and timing)."),
) -> None:
    """The whole system on synthetic data: render SynthVI, train (synth-demo preset), export, start Triton,
    index the infrared gallery and open the search page. Steps already done are skipped.

    Example: mult demo   (then open the printed URL; Ctrl-C stops everything)
    """
    from mult.demo import DemoOptions, run_demo

    run_demo(DemoOptions(workdir=workdir, ids=ids, seed=seed, heat_from_colour=heat_from_colour, host=host, port=port,
                         grpc_port=grpc_port, ready_only=ready_only), echo=typer.echo)


@app.command("bench", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(
    ctx: typer.Context,
    names: list[str] = typer.Argument(None, help="Benchmarks to run (default: all): eval synth jaccard "
                                      "label_transfer serving index."),
) -> None:
    """Run the side-by-side benchmarks of the source checkout (results under .bench/, see BENCHMARKS.md).

    Example: mult bench serving index
    """
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise MultError("the benchmarks ship with the source checkout, not the installed package; "
                        "clone the repository and run `mult bench` there (or `python -m benchmarks`)")
    raise typer.Exit(subprocess.call([sys.executable, "-m", "benchmarks", *(names or []), *ctx.args], cwd=root))


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: run the app, turning expected mistakes into one line and exit status 2."""
    try:
        app(args=argv, prog_name="mult")
    except MultError as err:
        typer.echo(f"mult: error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        typer.echo("mult: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover - `python -m mult.cli`
    main()
