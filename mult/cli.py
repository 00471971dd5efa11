"""The ``mult`` command line: a thin Typer layer over the library.

Each command parses options, calls one library function and prints its result (a table, or JSON with
``--json``). Expected mistakes raise :class:`mult.errors.MultError`; :func:`main` turns them into one line
on stderr and a non-zero exit. Heavy imports happen inside the commands so ``mult --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mult import __version__
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


class DatasetFormat(str, Enum):
    sysu = "sysu"
    regdb = "regdb"


def _print_json(payload: object) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True))


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
