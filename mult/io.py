"""Atomic file writes: everything the project saves goes to a temporary name and is renamed into place,
so an interrupted run never leaves a half-written checkpoint, config, index or export behind."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

#: Anything that names a file: a str or an os.PathLike (pathlib.Path, ...).
PathLike = Union[str, "os.PathLike[str]"]

#: A full disk, a spent quota and a file-size limit (RLIMIT_FSIZE) are one problem to the user: no room to write.
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


#: Permission problems (a read-only folder or file system) are the other write failure a user can fix alone.
NO_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


@contextlib.contextmanager
def write_failure_as_error(where: PathLike, unchanged: str) -> Iterator[None]:
    """Turn a write inside the block that found no room (:data:`NO_SPACE_ERRNOS`) or no permission
    (:data:`NO_PERMISSION_ERRNOS`) into one MultError line naming ``where``, what to do and what was left as it
    was (``unchanged``); other errors pass through."""
    from mult.errors import MultError

    try:
        yield
    except OSError as err:
        if err.errno in NO_SPACE_ERRNOS:
            problem, todo = "no space left on the device", "free space and rerun"
        elif err.errno in NO_PERMISSION_ERRNOS:
            problem, todo = "not allowed to write there", "choose a folder you can write to or fix its permissions"
        else:
            raise
        raise MultError(f"{where}: {problem} ({err.strerror}); {todo}; {unchanged}") from None


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


def staging_directory(target: PathLike) -> Path:
    """An empty hidden folder beside ``target`` to build it in: ``.<name>.<owner tag>XXXX.tmp``, mode 0755.

    Staging folders of writers killed mid-write (kill -9 runs no cleanup) are removed first; the owner tag in
    the name (:func:`mult.processes.owner_tag`) tells them from a live writer's.
    """
    from mult.processes import owner_tag, remove_stale

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, f".{glob.escape(target.name)}.*.tmp")
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{owner_tag()}", suffix=".tmp", dir=target.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes 0700; results are meant to be shared (e.g. with a Triton container)
    return staging


def publish_directory(staging: PathLike, target: PathLike, *, replace: bool = False) -> None:
    """Rename the finished ``staging`` folder to ``target``.

    Without ``replace`` an existing non-empty ``target`` is an OSError (ENOTEMPTY) and is left alone. With it the
    old folder is renamed aside first and deleted last, so a crash leaves the old or the new folder in place (or,
    between the two renames, the old one under ``.<name>.XXXX.old``).
    """
    staging, target = Path(staging), Path(target)
    if not (replace and target.exists()):
        os.rename(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rmdir(aside)
    os.rename(target, aside)
    os.rename(staging, target)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(target: PathLike, *, replace: bool = False) -> Iterator[Path]:
    """The one way a folder result is written: yield a :func:`staging_directory`, fill it in the block; on
    success it becomes ``target`` (:func:`publish_directory`), on any error it is removed and ``target`` is as
    it was."""
    staging = staging_directory(target)
    try:
        yield staging
        publish_directory(staging, target, replace=replace)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in 1 MiB blocks (torch- and faiss-free: every layer may use it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
