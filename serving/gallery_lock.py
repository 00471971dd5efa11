"""The update lock of a gallery directory: writers take turns (``flock`` on the folder), so two
``mult index add`` runs on one gallery keep both additions."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

from mult.errors import MultError

#: A gallery folder absent this long while a writer waits for its lock was moved or deleted (a swap takes
#: two renames, microseconds); how often the waiting writer checks.
VANISHED_AFTER_S = 2.0
LOCK_POLL_S = 0.1


@contextlib.contextmanager
def update_lock(target: Path) -> Iterator[None]:
    """Hold the exclusive update lock of the existing gallery directory ``target`` (``flock`` on the directory).

    Without it, two ``mult index add`` runs would each write a new version from the same old one, and the
    second swap would drop the first run's images. A writer that waited may find its directory replaced by
    the other's new version; it then locks the new one. The lock goes with the process, however it ends.

    A gallery folder moved or deleted meanwhile is a one-line MultError, for the writer that waits (once the
    folder has been gone for :data:`VANISHED_AFTER_S`) and for the one holding the lock (its writes then fail).
    """
    told = False
    gone_since: Optional[float] = None
    moved = (f"{target}: the gallery folder was moved or deleted while this command waited to update it; nothing "
             "was written: run it again on the gallery's new location")

    def vanished() -> bool:  # absent longer than another writer's swap (two renames) can explain
        nonlocal gone_since
        if _stat_or_none(target) is not None:
            gone_since = None
            return False
        gone_since = gone_since or time.monotonic()
        return time.monotonic() - gone_since > VANISHED_AFTER_S

    while True:
        try:
            fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            if vanished():
                raise MultError(moved) from None
            time.sleep(0.05)
            continue
        try:
            while True:  # polled rather than blocking, so a folder that vanishes meanwhile is noticed
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        print(f"{target}: another process is updating this gallery; waiting for it to finish",
                              file=sys.stderr, flush=True)
                        told = True
                    if vanished():
                        raise MultError(moved) from None
                    time.sleep(LOCK_POLL_S)
            held, now = os.fstat(fd), _stat_or_none(target)
            if now is not None and (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
                try:
                    yield
                except OSError as err:
                    now = _stat_or_none(target)
                    if now is None or (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
                        raise MultError(f"{target}: the gallery folder was moved or deleted during this update "
                                        f"({type(err).__name__}); nothing was added: run the command again on the "
                                        "gallery's new location") from None
                    raise
                return
        finally:
            os.close(fd)


def _stat_or_none(path: Path) -> Optional[os.stat_result]:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
