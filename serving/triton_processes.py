"""The processes and folders of a local Triton server started by mult: its runtime folder in the temporary
directory, its process session (the server and its python stubs), and its log.

Runtime folders are named ``mult-triton-<pid>@<host>@XXXX`` (:func:`mult.processes.owner_tag`); the pid file in
one names its server, so a later start removes only the folders whose server is gone (:func:`runtime_in_use`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Optional

from mult.processes import pid_alive, proc_cmdline, proc_stat_fields

#: How long Triton may finish in-flight requests after SIGTERM before it exits anyway.
EXIT_TIMEOUT_S = 5
#: Runtime folders (temporary directory) are named ``mult-triton-<pid>@<host>@XXXX``; the pid file names the server.
RUNTIME_PREFIX = "mult-triton-"
SERVER_PID_FILE = "tritonserver.pid"


def runtime_in_use(workdir: Path) -> bool:
    """Whether the server of a runtime folder still runs (its pid file names a live tritonserver of that folder)."""
    try:
        pid = int((workdir / SERVER_PID_FILE).read_text())
    except (OSError, ValueError):
        return False
    args = proc_cmdline(pid) if pid_alive(pid) else None
    return args is not None and str(workdir).encode() in b"\0".join(args)


def session_processes(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is ``sid`` (Linux ``/proc``; empty elsewhere)."""
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat_fields(int(entry.name)) or []  # state ppid pgrp session ...
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            found.append(int(entry.name))
    return found


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; one already gone (or not ours) is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Whether no live process of session ``pgid`` is left within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while session_processes(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_leftovers(pid: int, workdir: Optional[str]) -> None:
    """Finalizer: the server (and its stubs) must not outlive the Python process that started it."""
    signal_group(pid, signal.SIGTERM)
    if not wait_group_gone(pid, EXIT_TIMEOUT_S + 2):
        signal_group(pid, signal.SIGKILL)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


#: Error lines Triton prints on every CPU-only start; they explain nothing about a failure.
_LOG_NOISE = ("CudaDriverHelper",)


def log_excerpt(path: Path, lines: int = 6, max_chars: int = 1500) -> str:
    """The server log's last error lines (Triton's ``E...`` lines) or else its last lines, joined as one line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    # Triton escapes newlines inside a message ("...\\n\\nAt: traceback"): keep each message's first line.
    rows = [r.strip().split("\\n")[0] for r in text.splitlines() if r.strip()]
    errors = [r for r in rows if r[:1] == "E" and r[1:5].isdigit() and not any(n in r for n in _LOG_NOISE)]
    picked = (errors or rows)[-lines:]
    joined = " | ".join(picked) or "(empty server log)"
    return joined if len(joined) <= max_chars else "..." + joined[-max_chars:]
