"""What the side-by-side benchmarks share: each method runs in its own child process so its peak memory is
its own, reports one JSON line, and the parent writes one JSON result file."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB.

    Linux's ``ru_maxrss`` survives ``exec``: a child started from a parent holding 1.5 GB of generated
    features would report at least 1.5 GB. ``VmHWM`` belongs to the current address space only, so it is
    read first; ``ru_maxrss`` is the fallback on systems without /proc.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_child(module: str, method: str, work: Path, extra: list[str]) -> dict:
    """``python -m module --child method --work work *extra``; its last stdout line is its JSON result."""
    cmd = [sys.executable, "-m", module, "--child", method, "--work", str(work), *extra]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method} child failed (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(path: Path, payload: dict) -> None:
    from mult.io import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
