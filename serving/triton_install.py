"""Where the local Triton server comes from and the environment it needs: the nvidia-pytriton wheel.

The process recipe (measured, ENVIRONMENT.md "A real Triton server without Docker"): LD_LIBRARY_PATH gets
this interpreter's LIBDIR (else the stub loads the system libpython and model load fails) and the wheel's
``nvidia_pytriton.libs``; PATH starts with this interpreter's bin folder (the stub finds site-packages
through ``python3`` on PATH); numpy must be < 2 (the stub silently answers empty outputs with numpy 2).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from mult.errors import MultError


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


def check_numpy() -> None:
    """MultError when numpy 2 is installed: Triton's python backend would answer EMPTY outputs."""
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
