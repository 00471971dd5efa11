"""`mult data synth` and `mult data check`: create a SynthVI dataset, check a dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mult.cli.common import DatasetFormat, print_json

data_app = typer.Typer(help="Create and check datasets (SYSU-MM01, RegDB, SynthVI).", no_args_is_help=True)


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
        print_json(summary.as_dict())
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
        print_json(report.as_dict())
    else:
        typer.echo(report.render())
    if report.problems:
        raise typer.Exit(1)
