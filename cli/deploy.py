"""`mult export` and `mult serve`: from a run to a Triton model repository, and serving it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mult.cli.common import print_json
from mult.errors import MultError

deploy_commands = typer.Typer()


@deploy_commands.command("export")
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
        print_json(summary)
        return
    typer.echo(f"exported version {result.version} ({result.precision}) to {result.repo} "
               f"(input {result.height}x{result.width}x3 uint8, embeddings {result.embedding_size}-d)")
    for name, model in result.models.items():
        parity = model.parity
        typer.echo(f"  {name}: {model.onnx_path}  parity max|diff| {parity.max_abs_diff:.2e}, "
                   f"min cos {parity.min_cosine:.6f} ({model.parity_images})")


@deploy_commands.command("serve")
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
