"""One-call GPU check (issue 19): ``make gpu-check`` = ``python -m benchmarks.gpu_check``.

    python -m benchmarks.gpu_check [--out-dir .bench] [--sections environment training ...] [--quick]

Six sections, each timed and each on its own: a section that raises is recorded as failed with its one-line
error and the others still run; a section that cannot run here is recorded as skipped with the reason.

1. ``environment``: torch, CUDA, the device and its memory, ONNX Runtime's providers, faiss and its GPU support;
2. ``cuda_tests``: ``pytest -q tests/test_cuda.py`` in a subprocess (they skip themselves without a GPU);
3. ``training``: the ``tiny`` preset and a capped ``sysu`` preset (ResNet-50, 288x144) with AMP on a small
   rendered SynthVI set: median step time, peak GPU memory, total time;
4. ``label_transfer``: ``mult_label_transfer`` at the full SYSU size (22,258 + 11,909 x 2048-d) on the device,
   against the 5 s target;
5. ``onnx``: a random-init export run by ONNX Runtime's CUDA provider at batch 32 (images/s, max |diff| vs CPU);
6. ``faiss``: exact flat search of 100 queries in 100k x 2048-d, GPU vs CPU.

Without a CUDA device, sections 3-6 are skipped ("needs a CUDA GPU: ..."); 1 and 2 run on the CPU. ``--quick``
shrinks every size (a few minutes less on a GPU). ``--rehearse`` runs sections 3-6 on the CPU at toy sizes, to
check this script's own code paths on a machine without a GPU: its figures mean nothing. Writes
``gpu_check.json`` and ``gpu_check.md`` (a table to paste into BENCHMARKS.md) under ``--out-dir``; exit status 1
when a section that could run failed, else 0.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_check_sections import (  # noqa: F401 - run_section finds the section functions here
    GPU_SECTIONS,
    SECTIONS,
    Check,
    Skipped,
    free_device_memory,
    one_line,
    section_faiss,
    section_label_transfer,
    section_onnx,
    section_training,
)
from benchmarks.harness import REPO_ROOT, cpu_model, write_json


# ---- 1. environment ------------------------------------------------------------------------------------------


def _onnxruntime_info() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"onnxruntime": None, "onnxruntime_providers": []}
    return {"onnxruntime": ort.__version__, "onnxruntime_providers": list(ort.get_available_providers())}


def _faiss_info() -> dict[str, Any]:
    try:
        import faiss
    except ImportError:
        return {"faiss": None, "faiss_gpus": 0}
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return {"faiss": faiss.__version__, "faiss_gpus": int(gpus)}


def section_environment(check: Check) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                           "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                           "cuda_available": torch.cuda.is_available()}
    gpu = "no CUDA device"
    if env["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, device_count=torch.cuda.device_count(),
                   gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}")
        gpu = f"{props.name} ({env['gpu_memory_gib']} GiB)"
    env.update(_onnxruntime_info(), **_faiss_info())
    ort_cuda = "CUDAExecutionProvider" in env["onnxruntime_providers"]
    env["summary"] = (f"torch {env['torch']} (CUDA {env['torch_cuda'] or '-'}), {gpu}; onnxruntime "
                      f"{env['onnxruntime'] or 'not installed'} ({'CUDA provider' if ort_cuda else 'no CUDA provider'})"
                      f"; faiss {env['faiss'] or 'not installed'} ({env['faiss_gpus']} GPU(s))")
    return env


# ---- 2. the CUDA tests -----------------------------------------------------------------------------------------


def pytest_counts(output: str) -> dict[str, int]:
    """``{"passed": 3, "skipped": 1, ...}`` from pytest's last summary line."""
    lines = [ln for ln in output.strip().splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    found = re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", lines[-1] if lines else "")
    return {name.rstrip("s") if name.startswith("error") else name: int(n) for n, name in found}


def section_cuda_tests(check: Check) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=420)
    counts = pytest_counts(proc.stdout)
    if proc.returncode != 0:
        failures = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        raise RuntimeError(f"pytest exit {proc.returncode}, {counts}: {failures[0] if failures else proc.stdout[-200:]}")
    if check.cuda and not counts.get("passed"):
        raise RuntimeError(f"CUDA is available here but no CUDA test passed: {counts}")
    text = ", ".join(f"{n} {name}" for name, n in counts.items())
    return {"summary": text + ("" if check.cuda else " (needs a CUDA GPU)"), "counts": counts}


# ---- running and reporting -------------------------------------------------------------------------------------


def run_section(name: str, check: Check) -> dict[str, Any]:
    """One section, timed; its outcome as a record (status ok / skipped / failed)."""
    print(f"gpu-check: {name} ...", file=sys.stderr, flush=True)
    entry: dict[str, Any] = {"section": name, "mode": check.mode if name in GPU_SECTIONS else check.device}
    start = time.perf_counter()
    try:
        figures = globals()[f"section_{name}"](check)  # looked up at call time (tests replace one)
        entry.update(status="ok", summary=figures.pop("summary", ""), figures=figures)
    except Skipped as skip:
        entry.update(status="skipped", mode="-", summary=str(skip))
    except (Exception, SystemExit) as err:  # noqa: BLE001 - one section's failure must not stop the others
        entry.update(status="failed", summary=one_line(err), error=one_line(err))
    finally:
        free_device_memory()
    entry["seconds"] = round(time.perf_counter() - start, 1)
    print(f"gpu-check: {name}: {entry['status']} ({entry['seconds']} s) {entry['summary']}", file=sys.stderr, flush=True)
    return entry


def _cell(text: str) -> str:
    """Text for a markdown table cell: pipes escaped."""
    return text.replace("|", "\\|")


def render_markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    flags = "".join(f" --{name}" for name in ("quick", "rehearse") if report[name])
    rows = [f"| {e['section']} | {e['status']} | {e['mode']} | {_cell(e['summary'])} | {e['seconds']} |"
            for e in report["sections"]]
    return "\n".join([
        f"## GPU check (`python -m benchmarks.gpu_check{flags}`, {report['date']}, "
        f"{machine['device'] or 'no CUDA device'}, {machine['cpu_count']} CPU cores)", "",
        "| section | status | mode | key figures | seconds |", "|---|---|---|---|---:|", *rows, "",
        f"Total {report['total_s']} s; exit status {report['exit_status']}"
        + (" (a section that could run failed)." if report["exit_status"] else "."), ""])


def run_check(names: list[str], check: Check) -> dict[str, Any]:
    import torch

    start = time.perf_counter()
    sections = [run_section(name, check) for name in names]
    failed = any(s["status"] == "failed" for s in sections)
    return {"check": "gpu_check", "date": _dt.date.today().isoformat(), "quick": check.quick,
            "rehearse": check.rehearse,
            "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                        "device": torch.cuda.get_device_name(0) if check.cuda else None},
            "sections": sections, "total_s": round(time.perf_counter() - start, 1), "exit_status": int(failed)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path(".bench"),
                        help="where gpu_check.json and gpu_check.md go (default .bench)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="NAME",
                        help=f"run only these sections, in this order ({', '.join(SECTIONS)})")
    parser.add_argument("--quick", action="store_true", help="smaller sizes everywhere (8000 x 4000 label "
                        "transfer, ResNet-18 ONNX, 20k faiss gallery, fewer training steps)")
    parser.add_argument("--rehearse", action="store_true", help="without a GPU, run the GPU sections on the CPU "
                        "at toy sizes to check this script's code paths (the figures mean nothing)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from mult.io import write_text_atomic

    args = parse_args(argv)
    import torch

    work = args.work or Path(tempfile.mkdtemp(prefix="mult-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    check = Check(work, torch.cuda.is_available(), quick=args.quick, rehearse=args.rehearse)
    try:
        report = run_check(list(dict.fromkeys(args.sections)), check)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.out_dir / "gpu_check.json", report)
    markdown = render_markdown(report)
    write_text_atomic(args.out_dir / "gpu_check.md", markdown)
    print(markdown)
    print(f"wrote {args.out_dir / 'gpu_check.json'} and {args.out_dir / 'gpu_check.md'}")
    return report["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
