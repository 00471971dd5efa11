"""Process hygiene shared by the commands that stage folders or run servers.

* **Owner tags.** A temporary folder (an export's ``.tmp-v*`` version, a gallery's ``.NAME.*.tmp`` staging
  folder, ``mult serve``'s runtime repository) carries ``<pid>@<host>@`` of the process writing it in its
  name. ``kill -9`` runs no cleanup code, so the next run that writes to the same place calls
  :func:`remove_stale`: a folder whose writer is dead on this host is litter and goes; a live writer's
  folder, another host's (a shared file system) and untagged ones are never touched.
* **Children that die with us.** :func:`popen_tied` starts a child that gets SIGTERM when this process dies,
  however it dies (Linux parent-death signal).
* **Exposure note.** :func:`exposure_note`: the warning a server bound beyond this machine prints.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Optional

_TAG = re.compile(r"(\d+)@([A-Za-z0-9-]*)@")


def _host() -> str:
    """This machine's name, reduced to what is safe in a file name (the tag's delimiter ``@`` excluded)."""
    return re.sub(r"[^A-Za-z0-9-]", "", socket.gethostname().split(".")[0])[:40]


def owner_tag(pid: Optional[int] = None) -> str:
    """``<pid>@<host>@`` naming the process that writes a temporary folder (this process by default)."""
    return f"{os.getpid() if pid is None else int(pid)}@{_host()}@"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie (a killed, unreaped writer is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    fields = proc_stat_fields(pid)
    return fields is None or fields[:1] != ["Z"]  # no /proc (not Linux): kill(0) said it exists


def proc_stat_fields(pid: int) -> Optional[list[str]]:
    """The fields of ``/proc/<pid>/stat`` after "pid (comm) " — state, ppid, pgrp, session, … — or None when
    unreadable (no such process, or no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def proc_cmdline(pid: int) -> Optional[list[bytes]]:
    """The arguments of process ``pid`` from ``/proc/<pid>/cmdline``, or None when unreadable."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None


def stale_writer(path: Path) -> Optional[int]:
    """The dead writer's pid when ``path``'s name carries an owner tag of this host whose process is gone, else None."""
    match = _TAG.search(path.name)
    if match is None or match.group(2) != _host():
        return None
    pid = int(match.group(1))
    return None if pid == os.getpid() or pid_alive(pid) else pid


def remove_stale(parent: Path, pattern: str, *, in_use: Optional[Callable[[Path], bool]] = None) -> list[Path]:
    """Delete the folders ``parent/pattern`` left by dead writers (:func:`stale_writer`); returns those removed.

    ``in_use(folder)`` may keep a folder whose writer is dead but that something else still uses (e.g. a server).
    Never raises: cleaning litter must not stop the run that found it.
    """
    removed: list[Path] = []
    try:
        candidates = sorted(Path(parent).glob(pattern))
    except OSError:
        return removed
    for folder in candidates:
        if folder.is_symlink() or not folder.is_dir() or stale_writer(folder) is None:
            continue
        if in_use is not None and in_use(folder):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            removed.append(folder)
    return removed


# ---- children that die with this process --------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _prctl() -> Optional[Any]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with(parent: int, prctl: Any, sig: int) -> Callable[[], None]:
    """preexec_fn: ask the kernel for ``sig`` when the forking thread dies; exit now if ``parent`` already did."""
    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: no signal will ever come
            os.kill(os.getpid(), sig)
    return arm


def popen_tied(args: list[str], *, death_signal: int = signal.SIGTERM, **popen_kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(args, **popen_kwargs)`` whose child receives ``death_signal`` when this process dies,
    even by SIGKILL (Linux ``PR_SET_PDEATHSIG``; elsewhere a plain Popen).

    The kernel sends that signal when the *thread* that forked the child ends, not the process, so the child is
    forked from a dedicated thread that lives exactly as long as the child (it waits for it): a caller on a
    short-lived thread cannot take the server down with it. Callers may still ``poll()`` / ``wait(timeout)``.
    """
    prctl = _prctl()
    if prctl is None:
        return subprocess.Popen(args, **popen_kwargs)
    started = threading.Event()
    box: dict[str, Any] = {}

    def keeper() -> None:
        try:
            box["proc"] = proc = subprocess.Popen(
                args, preexec_fn=_die_with(os.getpid(), prctl, int(death_signal)), **popen_kwargs)
        except BaseException as err:  # handed to the caller's thread below
            box["error"] = err
            started.set()
            return
        started.set()
        proc.wait()

    threading.Thread(target=keeper, name=f"keeper-{Path(args[0]).name}", daemon=True).start()
    started.wait()
    if "error" in box:
        raise box["error"]
    return box["proc"]


# ---- servers bound beyond this machine ----------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name or an interface address: other machines may reach it


def exposure_note(host: str, what: str) -> Optional[str]:
    """The warning printed when a server without login binds ``host`` beyond this machine, else None."""
    if is_loopback(host):
        return None
    return f"note: bound to {host}, so other machines can reach {what}; it has no login"
