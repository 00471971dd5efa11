"""Pieces shared by the command modules (`mult.cli`, `mult.cli.search`): option enums and JSON output."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mult.datasets import DATASETS
from mult.errors import MultError


#: Dataset choices come from the one table (mult.datasets.DATASETS), so the CLI cannot list one it cannot load.
DatasetFormat = Enum("DatasetFormat", {name: name for name in DATASETS}, type=str)


class Direction(str, Enum):
    visible = "visible"
    infrared = "infrared"


def print_json(payload: object) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True))


#: Where `mult serve` listens by default; `--server` commands use it unless told otherwise.
DEFAULT_SERVER = "127.0.0.1:8001"


def encoder_from_options(server: Optional[str], local: Optional[Path]):
    """The encoder a search-side command uses: Triton gRPC (default) or in-process ONNX Runtime (--local)."""
    from mult.serving.encoders import open_encoder

    if server is not None and local is not None:
        raise MultError("pass either --server URL or --local REPO, not both")
    if local is not None:
        return open_encoder(local=local)
    return open_encoder(server=server or DEFAULT_SERVER)
