"""``mult serve``: the real Triton Inference Server binary from the nvidia-pytriton wheel, on 127.0.0.1.

That Triton build has only the python backend (ENVIRONMENT.md), so the exported repository is not served
as is: :func:`build_runtime_repository` writes a *runtime* repository beside it whose models use
``backend: "python"`` with the same names, tensors and batching, and whose ``model.py``
(``serving/python_backend_model.py``) runs the exported ``model.onnx`` in ONNX Runtime. Clients cannot
tell the difference (same gRPC API as the official container with the onnxruntime backend).

Versions: the runtime repository holds every numeric version that both stems hold from one export (each file
checked against its manifest's sha256) and whose input size and embedding size match the newest one, with
``version_policy: { all { } }`` by default, so a client may pin ``version="2"`` while ``version=""`` gets the
newest; the config names each version's checkpoint and ONNX sha256 for the client (:func:`runtime_config`).
Each served version is one python stub process (~300-750 MB with ResNet-50), so ``version_policy="latest"``
serves only the newest.

The process recipe (measured, ENVIRONMENT.md "A real Triton server without Docker"): LD_LIBRARY_PATH gets
this interpreter's LIBDIR (else the stub loads the system libpython and model load fails) and the wheel's
``nvidia_pytriton.libs``; PATH starts with this interpreter's bin folder (the stub finds site-packages
through ``python3`` on PATH); numpy must be < 2 (the stub silently answers empty outputs with numpy 2).

Five-line use::

    from mult.serving.triton_server import TritonServer
    from mult.serving.triton_client import TritonEncoder
    with TritonServer("model_repository") as server:          # free ports, waits until both models are ready
        enc = TritonEncoder(server.url)
        feats = enc.encode(["ir/0001.jpg"], "infrared")
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from mult.data.records import Modality
from mult.errors import MultError
from mult.interrupts import sigterm_as_interrupt
from mult.export.layout import (CONFIG_FILE, DEFAULT_QUEUE_DELAY_US, INPUT_NAME, MANIFEST_FILE, MODEL_NAMES,
                                ONNX_FILE, OUTPUT_NAME)
from mult.io import PathLike, write_text_atomic
from mult.processes import (exposure_note, owner_tag, pid_alive, popen_tied, proc_cmdline, proc_stat_fields,
                            remove_stale, stale_writer)
from mult.serving.encoders import IDENTITY_FIELDS, export_identity, identity_parameter, identity_value
from mult.serving.onnx_local import ModelSignature, describe_onnx, model_versions, ort_session, verified_manifest


MODEL_TEMPLATE = Path(__file__).with_name("python_backend_model.py")
VERSION_POLICIES = ("all", "latest")
#: Used when neither the exported config.pbtxt nor the manifest says (same default as ``mult export``).
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_PORTS = {"grpc": 8001, "http": 8000, "metrics": 8002}
#: Identity values written into a runtime config as they are (hex digests, precision and architecture names).
_PLAIN = re.compile(r"[A-Za-z0-9._-]+")
#: How long Triton may finish in-flight requests after SIGTERM before it exits anyway.
EXIT_TIMEOUT_S = 5
#: Runtime folders (temporary directory) are named ``mult-triton-<pid>@<host>@XXXX``; the pid file names the server.
RUNTIME_PREFIX = "mult-triton-"
SERVER_PID_FILE = "tritonserver.pid"


# ---- the runtime repository -----------------------------------------------------------------------------


def _export_batching(model_dir: Path, newest: int) -> tuple[int, int]:
    """(max_batch_size, max_queue_delay_us) from the exported config.pbtxt, else the manifest, else defaults."""
    config = model_dir / CONFIG_FILE
    if config.is_file():
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2

        try:
            parsed = text_format.Parse(config.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        except (text_format.ParseError, UnicodeDecodeError) as err:
            raise MultError(f"{config}: not a valid Triton model config ({str(err).splitlines()[0]}); fix it or "
                            "re-export with `mult export`") from None
        delay = parsed.dynamic_batching.max_queue_delay_microseconds if parsed.HasField("dynamic_batching") \
            else DEFAULT_QUEUE_DELAY_US
        if parsed.max_batch_size > 0:
            return int(parsed.max_batch_size), int(delay)
    manifest = model_dir / str(newest) / MANIFEST_FILE
    if manifest.is_file():
        import json

        try:
            value = int(json.loads(manifest.read_text(encoding="utf-8")).get("max_batch_size", 0))
        except (ValueError, TypeError, UnicodeDecodeError):
            value = 0
        if value > 0:
            return value, DEFAULT_QUEUE_DELAY_US
    return DEFAULT_MAX_BATCH_SIZE, DEFAULT_QUEUE_DELAY_US


def runtime_config(name: str, sig: ModelSignature, *, max_batch_size: int, max_queue_delay_us: int,
                   version_policy: str = "all", instance_count: int = 1,
                   identities: Optional[Mapping[int, Mapping[str, Any]]] = None) -> str:
    """``config.pbtxt`` of one python-backend model: same tensors and batching as the exported model.

    ``identities`` (version -> export manifest) become parameters ``mult.v<version>.<field>``: how a client
    learns from the server which checkpoint and ONNX file each served version holds.
    """
    policy = "all { }" if version_policy == "all" else "latest { num_versions: 1 }"
    published = [(identity_parameter(version, field), identity_value(manifest[field]))
                 for version, manifest in sorted((identities or {}).items()) for field in IDENTITY_FIELDS
                 if manifest.get(field) is not None]
    return "\n".join([
        f'name: "{name}"',
        'backend: "python"',
        f"max_batch_size: {int(max_batch_size)}",
        f"version_policy: {{ {policy} }}",
        "input [",
        f'  {{ name: "{INPUT_NAME}" data_type: TYPE_UINT8 dims: [ {sig.height}, {sig.width}, 3 ] }}',
        "]",
        "output [",
        f'  {{ name: "{OUTPUT_NAME}" data_type: TYPE_FP32 dims: [ {sig.embedding_size} ] }}',
        "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {int(max_queue_delay_us)} }}",
        f"instance_group [ {{ count: {int(instance_count)} kind: KIND_CPU }} ]",
        f'parameters {{ key: "onnx_file" value {{ string_value: "{ONNX_FILE}" }} }}',
        # Hashes and names only; anything needing quoting in protobuf text is left out rather than escaped.
        *(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}' for key, value in published
          if _PLAIN.fullmatch(value)),
    ]) + "\n"


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` -> ``src`` as a symlink, else a hard link, else a copy (a file system without links)."""
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.symlink(src.resolve(), dst)
        return
    except OSError:
        pass
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


#: One served version of one stem: its number, its checked signature and its export manifest.
_Served = tuple[int, ModelSignature, dict]


def _served_versions(repo: Path, version_policy: str) -> tuple[dict[Modality, list[_Served]], list[str]]:
    """Checked (version, signature, export manifest) per stem, newest last, and why other versions are left out.

    Only versions both stems serve together: one that a stem lacks (a half-published export) or whose two
    manifests name different exports would answer each modality from another model. Every served file must
    match the sha256 in its manifest (:func:`verified_manifest`), or nothing is served.
    """
    per_model = {m: model_versions(repo, name) for m, name in MODEL_NAMES.items()}
    common = set(per_model[Modality.visible]) & set(per_model[Modality.infrared])
    skipped = [f"not serving {MODEL_NAMES[m]}/{v}: {MODEL_NAMES[other]} has no version {v} (a half-published "
               "export?)" for m, other in ((Modality.visible, Modality.infrared), (Modality.infrared, Modality.visible))
               for v in per_model[m] if v not in common]
    served: dict[Modality, list[_Served]] = {m: [] for m in MODEL_NAMES}
    newest: dict[Modality, ModelSignature] = {}
    for version in sorted(common, reverse=True):
        if version_policy == "latest" and served[Modality.visible]:
            break
        pair: dict[Modality, tuple[ModelSignature, dict]] = {}
        for modality, name in MODEL_NAMES.items():
            path = repo / name / str(version) / ONNX_FILE
            sig = describe_onnx(ort_session(path, optimize=False), path)
            if sig.modality != modality.value:
                raise MultError(f"{path}: exported for {sig.modality}, but it sits in {name}; re-export with "
                                "`mult export`")
            ref = newest.get(modality)
            if ref is not None and (sig.height, sig.width, sig.embedding_size) != (ref.height, ref.width,
                                                                                   ref.embedding_size):
                skipped.append(f"not serving version {version}: {name}/{version} ({sig.height}x{sig.width}->"
                               f"{sig.embedding_size}, newest is {ref.height}x{ref.width}->{ref.embedding_size}); one "
                               "Triton config cannot describe both sizes")
                break
            pair[modality] = (sig, verified_manifest(path))
        else:
            try:
                export_identity(version, {m: manifest for m, (_, manifest) in pair.items()}, str(repo))
            except MultError as err:
                skipped.append(f"not serving version {version}: {err}")
                continue
            for modality, (sig, manifest) in pair.items():
                newest.setdefault(modality, sig)
                served[modality].append((version, sig, manifest))
    if not served[Modality.visible]:
        raise MultError(f"{repo}: no version that mult_visible and mult_infrared can serve together ("
                        f"{'; '.join(skipped) or 'none in common'}); export both with `mult export RUN --repo {repo}`")
    return {m: versions[::-1] for m, versions in served.items()}, skipped


def build_runtime_repository(repo: PathLike, out_dir: PathLike, *, version_policy: str = "all",
                             instance_count: int = 1) -> Path:
    """Write the python-backend runtime repository for ``repo`` (written by ``mult export``) into ``out_dir``.

    For each of ``mult_visible`` / ``mult_infrared``: ``config.pbtxt`` (python backend, same tensors,
    ``max_batch_size`` and queue delay as the export, ``KIND_CPU``), and per served version ``model.py``
    (the template) and ``model.onnx`` (a link to the exported file). Every ONNX file is opened with ONNX
    Runtime first and checked against the sha256 in its export manifest, so a missing model, a model without
    versions, a broken or edited file is a one-line MultError here, not a server that never becomes ready or one
    that serves other weights. Left out with a warning: older versions whose input/embedding size differ from
    the newest (one config describes all served versions), and versions the two stems do not share from one
    export (a half-published export would answer each modality from another model). The config publishes each
    served version's identity (:func:`runtime_config`). Returns ``out_dir``.
    """
    if version_policy not in VERSION_POLICIES:
        raise MultError(f"version policy {version_policy!r} unknown: use one of {', '.join(VERSION_POLICIES)}")
    repo = Path(os.fspath(repo)).expanduser()
    out_dir = Path(os.fspath(out_dir))
    if out_dir.resolve() == repo.resolve() or repo.resolve() in out_dir.resolve().parents:
        raise MultError(f"{out_dir}: the runtime repository must live outside the export {repo}; pick another folder")
    plans, skipped = _served_versions(repo, version_policy)
    for note in skipped:
        warnings.warn(note, stacklevel=2)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for modality, name in MODEL_NAMES.items():
            served = plans[modality]
            model_dir = out_dir / name
            if model_dir.exists():  # a previous build of this runtime folder: replace it whole
                shutil.rmtree(model_dir)
            staging = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=out_dir))
            try:  # built under a hidden name and renamed: a failure leaves no half-written model behind
                max_batch, delay = _export_batching(repo / name, served[-1][0])
                write_text_atomic(staging / CONFIG_FILE, runtime_config(
                    name, served[-1][1], max_batch_size=max_batch, max_queue_delay_us=delay,
                    version_policy=version_policy, instance_count=instance_count,
                    identities={version: manifest for version, _, manifest in served}))
                for version, sig, _ in served:
                    version_dir = staging / str(version)
                    version_dir.mkdir()
                    shutil.copyfile(MODEL_TEMPLATE, version_dir / "model.py")
                    _link_or_copy(sig.path, version_dir / ONNX_FILE)
                os.chmod(staging, 0o755)
                os.rename(staging, model_dir)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as err:
        raise MultError(f"{out_dir}: cannot write the runtime model repository ({type(err).__name__}: "
                        f"{err.strerror}); pick a writable folder") from None
    return out_dir


# ---- the Triton binary and its environment ------------------------------------------------------------


@dataclass(frozen=True)
class TritonInstall:
    """Paths inside the nvidia-pytriton wheel."""

    binary: Path
    python_backend: Path
    stub: Path
    libs: Path


def find_triton() -> TritonInstall:
    """Locate ``tritonserver``, the python backend and this Python's stub in the nvidia-pytriton wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MultError("nvidia-pytriton is not installed, so there is no local Triton server; "
                        "`pip install nvidia-pytriton` (or run the official Triton container on model_repository/)")
    root = Path(list(spec.submodule_search_locations)[0])
    dist = root / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    install = TritonInstall(
        binary=dist / "bin" / "tritonserver",
        python_backend=dist / "backends" / "python",
        stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parent / "nvidia_pytriton.libs",
    )
    for what, path in (("tritonserver binary", install.binary), ("python backend", install.python_backend),
                       (f"python backend stub for Python {version}", install.stub)):
        if not path.exists():
            raise MultError(f"{path}: the {what} is missing from the nvidia-pytriton wheel; reinstall it "
                            "(`pip install --force-reinstall nvidia-pytriton`)")
    return install


def _check_numpy() -> None:
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise MultError(f"numpy {numpy.__version__} is installed, but Triton's python backend answers EMPTY "
                        "outputs with numpy 2; `pip install 'numpy<2'` in this environment")


def server_env(install: TritonInstall) -> dict[str, str]:
    """The server's environment: this interpreter's libpython and site-packages for the python stub."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, str(install.libs), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    env["PYTHONNOUSERSITE"] = "1"  # a numpy 2 in ~/.local must not shadow the environment's numpy<2
    return env


def _backend_dir(install: TritonInstall, parent: Path) -> Path:
    """A backend folder whose ``python/`` holds the backend library, its utils and this Python's stub."""
    python_dir = parent / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in install.python_backend.iterdir():
        if src.is_file():
            _link_or_copy(src, python_dir / src.name)
    _link_or_copy(install.stub, python_dir / "triton_python_backend_stub")
    return parent


# ---- ports and processes ------------------------------------------------------------------------------


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


def _runtime_in_use(workdir: Path) -> bool:
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


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while session_processes(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_leftovers(pid: int, workdir: Optional[str]) -> None:
    """Finalizer: the server (and its stubs) must not outlive the Python process that started it."""
    _signal_group(pid, signal.SIGTERM)
    if not _wait_group_gone(pid, EXIT_TIMEOUT_S + 2):
        _signal_group(pid, signal.SIGKILL)
    if workdir:
        shutil.rmtree(workdir, ignore_errors=True)


def _client_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


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


# ---- the server --------------------------------------------------------------------------------------


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
        if version_policy not in VERSION_POLICIES:
            raise MultError(f"version policy {version_policy!r} unknown: use one of {', '.join(VERSION_POLICIES)}")
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
        return f"{_client_host(self.host)}:{port}"

    @property
    def http_url(self) -> str:
        return f"{_client_host(self.host)}:{self.ports['http']}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.ports['metrics']}/metrics"

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
            _check_numpy()
            install = find_triton()
            self.ports = self._choose_ports()
            # A `mult serve` killed by SIGKILL could not remove its runtime folder: the next start does.
            remove_stale(Path(tempfile.gettempdir()), f"{RUNTIME_PREFIX}*", in_use=_runtime_in_use)
            workdir = Path(tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{owner_tag()}"))
            try:
                models = build_runtime_repository(self.repo, workdir / "models", version_policy=self.version_policy)
                backends = _backend_dir(install, workdir / "backends")
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
            self._finalizer = weakref.finalize(self, _kill_leftovers, self._proc.pid, str(workdir))
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
                    _signal_group(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        _signal_group(proc.pid, signal.SIGKILL)
                        proc.wait(5)
                if not _wait_group_gone(proc.pid, 3.0):  # stubs that outlived the server
                    _signal_group(proc.pid, signal.SIGKILL)
                    _wait_group_gone(proc.pid, 3.0)
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
