"""The GPU paths: label transfer, AMP training and ONNX Runtime on CUDA agree with the CPU.

Skipped where torch sees no CUDA device (CI, the 2-core development machine); run them on a GPU machine with
``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from benchmarks.bench_label_transfer import MATRICES, cross_modal_features
from mult.config import preset_config
from mult.train.clustering import dbscan_cluster, sparse_jaccard_distance
from mult.train.label_transfer import mult_label_transfer
from mult.runs import RunDir
from mult.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
warnings.filterwarnings("ignore", message=".*random weights.*")


def test_label_transfer_on_cuda_matches_cpu():
    fv, fr, _, _ = cross_modal_features(900, 450, 128, seed=3)
    jv, jr = sparse_jaccard_distance(fv), sparse_jaccard_distance(fr)
    lv, lr = dbscan_cluster(jv, 0.6), dbscan_cluster(jr, 0.6)
    on_cpu = mult_label_transfer(fv, fr, lv, lr, jv, jr)
    on_gpu = mult_label_transfer(torch.from_numpy(fv).cuda(), torch.from_numpy(fr).cuda(), lv, lr, jv, jr)
    for name in MATRICES:
        assert np.abs(getattr(on_cpu, name) - getattr(on_gpu, name)).max() <= 1e-4, name
    assert on_cpu.info["sinkhorn_steps"] == on_gpu.info["sinkhorn_steps"]


def test_two_stage_training_on_cuda_with_amp(synth_sysu_small, tmp_path):
    cfg = preset_config("tiny", data_root=str(synth_sysu_small), epochs=2, stage_one_epochs=1, eval_every=2,
                        eval_trials=2, association="mult", device="cuda", amp=True)
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    lines = list(RunDir(tmp_path / "run").metrics())
    assert [m["stage"] for m in lines[1:]] == ["dcl", "mult"]
    assert all(np.isfinite(m["loss"]) for m in lines[1:])
    assert 0 <= result["sysu-all"]["mAP"] <= 100
    state = torch.load(tmp_path / "run" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert all(t.device.type == "cpu" for t in state["model"].values())


def test_onnx_runtime_cuda_matches_cpu(tiny_export):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
    from mult.serving.onnx_local import OnnxEncoder

    images = np.random.default_rng(0).integers(0, 256, size=(5, tiny_export.height, tiny_export.width, 3),
                                               dtype=np.uint8)
    on_cpu = OnnxEncoder(tiny_export.repo)
    on_gpu = OnnxEncoder(tiny_export.repo, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    for modality in ("visible", "infrared"):
        assert np.abs(on_cpu.encode_array(images, modality) - on_gpu.encode_array(images, modality)).max() <= 1e-3
