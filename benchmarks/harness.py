"""What the side-by-side benchmarks share: each method runs in its own child process so its peak memory is
its own, reports one JSON line, and the parent writes one JSON result file."""

from __future__ import annotations

import json
import shutil
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

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


def rss_mib() -> float:
    """Current resident memory of this process (VmRSS) in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


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


def run_in_workdir(name: str, args: Any, run: Callable[[Any, Path], dict], render: Callable[[dict], str],
                   passed: Callable[[dict], bool] = lambda result: True) -> int:
    """The shared ``main`` of the benchmarks with a work folder: ``run(args, work)`` in ``args.work`` (or a
    temporary folder, removed afterwards), print ``render(result)``, write it to ``args.out``; exit status 2 on a
    MultError (one line), 1 when ``passed(result)`` is false."""
    from mult.errors import MultError

    work = args.work or Path(tempfile.mkdtemp(prefix=f"mult-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, work)
    except MultError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(render(result))
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0 if passed(result) else 1
