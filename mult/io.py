"""Atomic file writes: everything the project saves goes to a temporary name and is renamed into place,
so an interrupted run never leaves a half-written checkpoint, config, index or export behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

#: Anything that names a file: a str or an os.PathLike (pathlib.Path, ...).
PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared (e.g. with a Triton container)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch_atomic(obj: object, path: Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_dataset_text(path: Path, missing_hint: str) -> str:
    """A dataset's small text file (id lists, idx files), or a one-line MultError naming it."""
    from mult.errors import MultError

    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MultError(f"{path}: missing; {missing_hint}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise MultError(f"{path}: cannot be read ({type(err).__name__}); restore it from the dataset archive") from None
