"""TCP ports of a local Triton server: a free one, or why a requested one is taken (and by which mult server)."""

from __future__ import annotations

import contextlib
import errno
import socket
import time
from pathlib import Path
from typing import Optional

from mult.errors import MultError
from mult.processes import pid_alive, proc_cmdline, stale_writer
from mult.serving.triton_processes import EXIT_TIMEOUT_S

DEFAULT_PORTS = {"grpc": 8001, "http": 8000, "metrics": 8002}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int, what: str) -> None:
    """MultError when ``host:port`` cannot be bound (another server listens there)."""
    if not 0 < int(port) < 65536:
        raise MultError(f"{what} port {port} is not a valid TCP port; use 1-65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    waited = False
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not "taken"
            try:
                sock.bind((host, int(port)))
                return
            except OSError as err:
                error = err
        if error.errno != errno.EADDRINUSE:
            raise MultError(f"cannot bind {what} port {port} on {host} ({error.strerror}); check --host") from None
        holder = _mult_triton_on_port(int(port))
        # A server whose `mult serve` was just killed got SIGTERM and exits within the exit timeout: wait for it.
        if holder and not waited and _orphaned(holder):
            waited = True
            deadline = time.monotonic() + EXIT_TIMEOUT_S + 3
            while pid_alive(holder) and time.monotonic() < deadline:
                time.sleep(0.1)
            continue
        who = (f"by tritonserver pid {holder}, started by mult; stop it (`kill {holder}`)" if holder else
               "(another Triton or `mult serve`?); stop it")
        raise MultError(f"{what} port {port} on {host} is already in use {who} or pass another "
                        f"--{what}-port") from None


def _orphaned(pid: int) -> bool:
    """Whether a mult tritonserver's starting process is dead (its runtime folder's owner tag says so)."""
    args = [a.decode(errors="replace") for a in proc_cmdline(pid) or []]
    repos = [a.partition("=")[2] for a in args if a.startswith("--model-repository=")]
    return bool(repos) and stale_writer(Path(repos[0]).parent) is not None


def _mult_triton_on_port(port: int) -> Optional[int]:
    """The pid of a mult-started tritonserver (``--id=mult``) told to listen on ``port``, if any (Linux /proc)."""
    wanted = {f"--{what}-port={port}".encode() for what in DEFAULT_PORTS}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            args = proc_cmdline(int(entry.name)) if entry.name.isdigit() else None
            if args and args[0].endswith(b"tritonserver") and b"--id=mult" in args and wanted & set(args):
                return int(entry.name)
    return None


def client_host(host: str) -> str:
    """How a client on this machine addresses a server bound to ``host`` (any-address -> loopback, IPv6 bracketed)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
