"""The ``mult`` command line: a thin Typer layer over the library.

Each command parses options, calls one library function and prints its result (a table, or JSON with
``--json``). Expected mistakes raise :class:`mult.errors.MultError`; :func:`main` turns them into one line
on stderr and a non-zero exit. Heavy imports happen inside the commands so ``mult --help`` stays fast.

The command line is the top floor of the house (core < train < export < serving < app < cli, checked by
import-linter, see pyproject.toml): it may import every floor, none imports it. One module per floor's commands:
``data`` (datasets), ``train`` (train, pretrain, evaluate), ``deploy`` (export, serve), ``search`` (index,
search, app), ``demo`` (the whole system end to end); ``common`` holds what they share.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from mult import __version__
from mult.cli.data import data_app
from mult.cli.demo import demo_commands
from mult.cli.deploy import deploy_commands
from mult.cli.search import index_app, search_commands
from mult.cli.train import train_commands
from mult.errors import MultError

app = typer.Typer(
    name="mult",
    help="Unsupervised visible-infrared person re-identification (MULT + OCLR): data, training, "
    "export, serving and search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
for commands in (search_commands, train_commands, deploy_commands, demo_commands):
    app.registered_commands += commands.registered_commands


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
