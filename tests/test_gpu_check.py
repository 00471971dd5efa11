"""`make gpu-check` (benchmarks.gpu_check) on a machine without a GPU: the reports are written, the environment and
the CUDA tests run, every GPU section is skipped with its reason, and one section's failure is recorded without
stopping the others."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_check
from benchmarks.gpu_check_sections import NO_CUDA

GPU_SECTIONS = ("training", "label_transfer", "onnx", "faiss")

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(),
                                  reason="checks the CPU behaviour; on a GPU machine run `make gpu-check` itself")


def read_report(out_dir) -> tuple[dict, dict, str]:
    report = json.loads((out_dir / "gpu_check.json").read_text())
    return report, {s["section"]: s for s in report["sections"]}, (out_dir / "gpu_check.md").read_text()


@needs_no_gpu
def test_without_a_gpu_the_gpu_sections_are_skipped_and_the_rest_runs(tmp_path, capsys):
    assert gpu_check.main(["--out-dir", str(tmp_path)]) == 0
    report, sections, markdown = read_report(tmp_path)
    assert list(sections) == list(gpu_check.SECTIONS)
    assert report["exit_status"] == 0
    env = sections["environment"]
    assert env["status"] == "ok" and env["figures"]["cuda_available"] is False
    assert env["figures"]["torch"] == torch.__version__
    tests = sections["cuda_tests"]
    assert tests["status"] == "ok" and tests["figures"]["counts"] == {"skipped": 3}
    for name in GPU_SECTIONS:
        assert sections[name]["status"] == "skipped", name
        assert sections[name]["summary"] == NO_CUDA
        assert f"| {name} | skipped | - | {NO_CUDA} |" in markdown
    assert "| environment | ok | cpu |" in markdown
    assert markdown in capsys.readouterr().out  # the table is printed too


@needs_no_gpu
def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(check):
        raise RuntimeError("driver exploded\nsecond line of the traceback text")

    monkeypatch.setattr(gpu_check, "section_environment", broken)
    code = gpu_check.main(["--out-dir", str(tmp_path), "--sections", "environment", "training", "faiss"])
    report, sections, markdown = read_report(tmp_path)
    assert code == 1 and report["exit_status"] == 1
    assert list(sections) == ["environment", "training", "faiss"]
    assert sections["environment"]["status"] == "failed"
    assert sections["environment"]["error"] == "RuntimeError: driver exploded"
    assert sections["training"]["status"] == sections["faiss"]["status"] == "skipped"
    assert "| environment | failed | cpu | RuntimeError: driver exploded |" in markdown


@needs_no_gpu
def test_skipped_sections_alone_exit_zero(tmp_path):
    assert gpu_check.main(["--out-dir", str(tmp_path), "--sections", *GPU_SECTIONS]) == 0


def test_the_gpu_sections_code_runs_when_rehearsed_on_the_cpu(tmp_path):
    """--rehearse runs the cheap GPU sections' code at toy sizes (training is left out: ~1 min on 2 cores)."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine the sections run for real under `make gpu-check`")
    code = gpu_check.main(["--out-dir", str(tmp_path), "--rehearse", "--sections", "label_transfer", "onnx", "faiss"])
    _, sections, _ = read_report(tmp_path)
    assert code == 0, {name: s.get("error") for name, s in sections.items()}
    assert all(s["status"] == "ok" and s["mode"] == "cpu rehearsal" for s in sections.values())
    assert sections["label_transfer"]["figures"]["target_met"] is None  # the target is for full size on CUDA
    assert sections["onnx"]["figures"]["batch"] == 32
    assert max(sections["onnx"]["figures"]["max_abs_diff_vs_cpu"].values()) <= 1e-5
    assert sections["faiss"]["figures"]["same_ids"] == 1.0


def test_pytest_summary_counts_and_markdown_cells():
    assert gpu_check.pytest_counts("..s\n1 failed, 2 passed, 1 skipped in 3.21s\n") == {
        "failed": 1, "passed": 2, "skipped": 1}
    assert gpu_check.pytest_counts("E boom\n3 errors in 0.5s") == {"error": 3}
    assert gpu_check.pytest_counts("no summary") == {}
    assert gpu_check._cell("max |diff| 1e-6") == "max \\|diff\\| 1e-6"
