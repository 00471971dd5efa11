"""``mult serve``: the real Triton Inference Server binary from the nvidia-pytriton wheel, on 127.0.0.1.

That Triton build has only the python backend (ENVIRONMENT.md), so the exported repository is not served as is:
:mod:`mult.serving.runtime_repository` writes a *runtime* repository beside it whose python-backend models run the
exported ``model.onnx`` in ONNX Runtime (clients cannot tell the difference). Where the binary is and the
environment it needs: :mod:`mult.serving.triton_install`. Its ports: :mod:`mult.serving.triton_ports`; its
runtime folder, process session and log: :mod:`mult.serving.triton_processes`. This module starts, watches and
stops the process (:class:`TritonServer`) and is ``mult serve`` (:func:`serve`); the names the other modules
define are importable from here too.

Five-line use::

    from mult.serving.triton_server import TritonServer
    from mult.serving.triton_client import TritonEncoder
    with TritonServer("model_repository") as server:          # free ports, waits until both models are ready
        enc = TritonEncoder(server.url)
        feats = enc.encode(["ir/0001.jpg"], "infrared")
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Optional

from mult.errors import MultError
from mult.export.layout import DEFAULT_MAX_BATCH_SIZE, MODEL_NAMES
from mult.interrupts import sigterm_as_interrupt
from mult.io import PathLike, write_text_atomic
from mult.processes import exposure_note, owner_tag, popen_tied, remove_stale
from mult.serving.runtime_repository import (MODEL_TEMPLATE, VERSION_POLICIES, backend_dir, build_runtime_repository,
                                             check_version_policy, runtime_config)
from mult.serving.triton_install import TritonInstall, check_numpy, find_triton, server_env
from mult.serving.triton_ports import DEFAULT_PORTS, check_port_free, client_host, free_port
from mult.serving.triton_processes import (EXIT_TIMEOUT_S, RUNTIME_PREFIX, SERVER_PID_FILE, kill_leftovers,
                                           log_excerpt, runtime_in_use, session_processes, signal_group,
                                           wait_group_gone)

#: Defined in the modules above and imported from here by callers (the CLI, benchmarks, tests).
__all__ = [
    "ADMIN_HEADER", "DEFAULT_MAX_BATCH_SIZE", "DEFAULT_PORTS", "EXIT_TIMEOUT_S", "MODEL_TEMPLATE", "RESTRICTED_APIS",
    "RUNTIME_PREFIX", "SERVER_PID_FILE", "VERSION_POLICIES", "TritonInstall", "TritonServer",
    "build_runtime_repository", "check_port_free", "find_triton", "free_port", "log_excerpt", "runtime_config",
    "serve", "server_env", "session_processes",
]


#: Triton APIs no client of ours needs and a local user should not reach: changing the log level or log file,
#: trace settings, and registering shared-memory regions for the server to read and write. They answer only
#: requests carrying ADMIN_HEADER with this server's random key (docs/RELIABILITY.md, security stance).
RESTRICTED_APIS = "logging,trace,shared-memory"
ADMIN_HEADER = "mult-admin-key"


class TritonServer:
    """A local ``tritonserver`` process serving ``mult_visible`` and ``mult_infrared`` from an export.

    Ports left as None are picked free; every socket binds ``host`` (127.0.0.1 by default). The server runs
    in its own process session, so :meth:`stop` (SIGTERM, then SIGKILL after ``timeout``) reaches the python
    stubs too and none is left behind. The server also gets SIGTERM when this Python process dies, even by
    SIGKILL (:func:`mult.processes.popen_tied`), and shuts its stubs down; the runtime folder such a death
    leaves in the temporary directory is removed by the next start. Use as a context manager, or
    ``start()`` / ``stop()``.
    """

    def __init__(self, repo: PathLike, host: str = "127.0.0.1", grpc_port: Optional[int] = None,
                 http_port: Optional[int] = None, metrics_port: Optional[int] = None,
                 log_file: Optional[PathLike] = None, *, version_policy: str = "all",
                 model_control_mode: str = "none", startup_timeout_s: float = 120.0) -> None:
        check_version_policy(version_policy)
        if model_control_mode not in ("none", "poll"):
            raise MultError(f"model control mode {model_control_mode!r} unsupported: use 'none' or 'poll'")
        self.repo = Path(os.fspath(repo)).expanduser()
        self.host = host
        self.requested_ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.ports: dict[str, int] = {}
        self.log_file = Path(os.fspath(log_file)).expanduser() if log_file is not None else None
        self.version_policy = version_policy
        self.model_control_mode = model_control_mode
        # Key for Triton's administrative APIs (see RESTRICTED_APIS); it never leaves this process.
        self._admin_key = secrets.token_hex(16)
        self.startup_timeout_s = float(startup_timeout_s)
        self.model_names = tuple(MODEL_NAMES.values())
        self.startup_s: Optional[float] = None
        self._started_at = 0.0
        self._proc: Optional[subprocess.Popen] = None
        self._workdir: Optional[Path] = None
        self._log_path: Optional[Path] = None
        self._finalizer: Optional[weakref.finalize] = None
        self._lock = threading.Lock()

    # -- addresses --
    @property
    def url(self) -> str:
        """gRPC address for clients, e.g. ``"127.0.0.1:8001"`` (known once started or when the port was given)."""
        port = self.ports.get("grpc") or self.requested_ports["grpc"]
        if port is None:
            raise MultError("the gRPC port is chosen when the server starts; call start() first")
        return f"{client_host(self.host)}:{port}"

    @property
    def http_url(self) -> str:
        return f"{client_host(self.host)}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{client_host(self.host)}:{self.ports['metrics']}/metrics"

    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Optional[Path]:
        return self._log_path

    def log_label(self) -> str:
        """How an error names the log: the user's file stays, the temporary one is removed by stop()."""
        return f"server log {self._log_path}" if self.log_file is not None else "server log (temporary; pass log_file to keep it)"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --
    def _choose_ports(self) -> dict[str, int]:
        given = {k: int(v) for k, v in self.requested_ports.items() if v is not None}
        if len(set(given.values())) != len(given):
            raise MultError(f"the gRPC, HTTP and metrics ports must differ, got {given}")
        for what, port in given.items():
            check_port_free(self.host, port, what)
        ports = dict(given)
        for what in ("grpc", "http", "metrics"):
            while what not in ports:
                port = free_port(self.host)
                if port not in ports.values():
                    ports[what] = port
        return ports

    def _command(self, install: TritonInstall, models: Path, backends: Path) -> list[str]:
        p = self.ports
        return [
            str(install.binary), "--id=mult",
            f"--model-repository={models}", f"--backend-directory={backends}",
            f"--model-control-mode={self.model_control_mode}", "--strict-readiness=true", "--exit-on-error=true",
            f"--exit-timeout-secs={EXIT_TIMEOUT_S}", "--log-verbose=0",
            "--allow-grpc=true", f"--grpc-address={self.host}", f"--grpc-port={p['grpc']}",
            "--allow-http=true", f"--http-address={self.host}", f"--http-port={p['http']}",
            "--allow-metrics=true", "--allow-gpu-metrics=false", f"--metrics-address={self.host}",
            f"--metrics-port={p['metrics']}",
            f"--grpc-restricted-protocol={RESTRICTED_APIS}:{ADMIN_HEADER}={self._admin_key}",
            f"--http-restricted-api={RESTRICTED_APIS}:{ADMIN_HEADER}={self._admin_key}",
        ]

    def start(self, wait: bool = True) -> "TritonServer":
        """Check the ports and the repository, launch the server, and (``wait``) block until both models are ready."""
        with self._lock:
            if self._proc is not None:
                raise MultError(f"this Triton server is already running (pid {self._proc.pid}); stop() it first")
            check_numpy()
            install = find_triton()
            self.ports = self._choose_ports()
            # A `mult serve` killed by SIGKILL could not remove its runtime folder: the next start does.
            remove_stale(Path(tempfile.gettempdir()), f"{RUNTIME_PREFIX}*", in_use=runtime_in_use)
            workdir = Path(tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{owner_tag()}"))
            try:
                models = build_runtime_repository(self.repo, workdir / "models", version_policy=self.version_policy)
                backends = backend_dir(install, workdir / "backends")
                self._log_path = self.log_file or workdir / "tritonserver.log"
                self._log_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self._log_path, "ab") as log:
                    # Tied: SIGTERM reaches Triton when this process dies, even by SIGKILL (no finally runs then);
                    # its own session lets stop() signal the python stubs with it.
                    self._proc = popen_tied(
                        self._command(install, models, backends), stdin=subprocess.DEVNULL, stdout=log,
                        stderr=subprocess.STDOUT, env=server_env(install), cwd=workdir, start_new_session=True)
                with contextlib.suppress(OSError):  # only keeps a later start from removing this folder early
                    write_text_atomic(workdir / SERVER_PID_FILE, f"{self._proc.pid}\n")
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
            self._workdir = workdir
            self._started_at = time.monotonic()
            self._finalizer = weakref.finalize(self, kill_leftovers, self._proc.pid, str(workdir))
        if wait:
            try:
                self.wait_ready(self.startup_timeout_s)
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Block until the server is live and both models are ready; returns seconds since start().

        Raises MultError (with the server log's last error lines) when the process exits or ``timeout`` passes.
        """
        if self._proc is None:
            raise MultError("the Triton server is not started; call start() first")
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + float(timeout)
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise MultError(f"Triton exited with code {code} while starting ({self.repo}); "
                                    f"{self.log_label()}: {log_excerpt(self._log_path)}")
                try:
                    if client.is_server_live(client_timeout=1.0) and all(
                            client.is_model_ready(name, client_timeout=1.0) for name in self.model_names):
                        self.startup_s = time.monotonic() - self._started_at
                        return self.startup_s
                except InferenceServerException:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    raise MultError(f"Triton was not ready after {timeout:.0f} s ({self.repo}); "
                                    f"{self.log_label()}: {log_excerpt(self._log_path)}")
                time.sleep(0.1)
        finally:
            client.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after ``timeout``, then any stub left; remove temp files."""
        with self._lock:
            proc, workdir = self._proc, self._workdir
            if proc is None:
                return
            try:
                if proc.poll() is None:
                    signal_group(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        signal_group(proc.pid, signal.SIGKILL)
                        proc.wait(5)
                if not wait_group_gone(proc.pid, 3.0):  # stubs that outlived the server
                    signal_group(proc.pid, signal.SIGKILL)
                    wait_group_gone(proc.pid, 3.0)
            finally:
                self._proc = None
                if self._finalizer is not None:
                    self._finalizer.detach()
                    self._finalizer = None
                if workdir is not None:
                    shutil.rmtree(workdir, ignore_errors=True)
                self._workdir = None

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid {self._proc.pid} at {self.url}" if self.running() else "stopped"
        return f"TritonServer({str(self.repo)!r}, {state})"


# ---- the CLI entry point ------------------------------------------------------------------------------


def serve(repo: PathLike, host: str = "127.0.0.1", grpc_port: Optional[int] = DEFAULT_PORTS["grpc"],
          http_port: Optional[int] = DEFAULT_PORTS["http"], metrics_port: Optional[int] = DEFAULT_PORTS["metrics"],
          *, log_file: Optional[PathLike] = None, version_policy: str = "all", startup_timeout_s: float = 120.0,
          echo: Callable[[str], None] = print) -> int:
    """``mult serve``: start Triton on ``repo``, print where it listens, block until Ctrl-C / SIGTERM, stop cleanly.

    Returns 0 after a requested stop; raises MultError when the server cannot start or dies while serving.
    """
    server = TritonServer(repo, host, grpc_port, http_port, metrics_port, log_file, version_policy=version_policy,
                          startup_timeout_s=startup_timeout_s)
    note = exposure_note(host, "the models")
    if note:  # before starting: the user learns it even when the start fails or takes long
        echo(note)
    with sigterm_as_interrupt():
        try:
            server.start()
            echo(f"Triton is serving {', '.join(server.model_names)} from {server.repo} "
                 f"(ready in {server.startup_s:.1f} s)")
            echo(f"  gRPC     {server.url}    e.g. `mult search --server {server.url} ...`")
            echo(f"  HTTP     {server.http_url}")
            echo(f"  metrics  {server.metrics_url}")
            echo(f"  log      {server.log_path}")
            echo("Press Ctrl-C to stop.")
            while server.running():
                time.sleep(0.5)
            raise MultError(f"Triton stopped unexpectedly; {server.log_label()}: {log_excerpt(server.log_path)}")
        except KeyboardInterrupt:
            echo("Stopping Triton...")
            return 0
        finally:
            server.stop()
