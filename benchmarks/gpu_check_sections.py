"""The GPU sections of ``benchmarks.gpu_check`` (training with AMP, label transfer, ONNX Runtime CUDA, faiss GPU)
and what every section shares: the sizes, the :class:`Check` context and :class:`Skipped`.

Each ``section_*`` takes the :class:`Check`, returns its figures with a one-line ``"summary"``, raises
:class:`Skipped` with the reason when it cannot run here and anything else when it fails.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Callable

import numpy as np

SECTIONS = ("environment", "cuda_tests", "training", "label_transfer", "onnx", "faiss")
GPU_SECTIONS = SECTIONS[2:]  # the ones --rehearse runs on the CPU
NO_CUDA = "needs a CUDA GPU: torch.cuda.is_available() is False"
GPU_EXTRAS = "make install EXTRAS=gpu,serve,app,dev"
LABEL_TRANSFER_TARGET_S = 5.0
ONNX_BATCH = 32


@dataclass(frozen=True)
class Sizes:
    synth: tuple[int, int, int, int]  # SynthVI ids, images per camera, height, width
    tiny_steps: int  # SGD steps per epoch of the tiny run (one DCL + one MULT epoch)
    sysu_steps: int  # the same for the capped sysu run
    sysu_overrides: dict[str, Any]
    label_transfer: tuple[int, int, int]  # visible, infrared, dim
    onnx_preset: str
    onnx_runs: int
    faiss: tuple[int, int, int]  # gallery, dim, queries


FULL = Sizes((40, 6, 288, 144), 5, 20, {}, (22258, 11909, 2048), "sysu", 20, (100_000, 2048, 100))
QUICK = Sizes((24, 4, 288, 144), 3, 5, {}, (8000, 4000, 2048), "tiny", 10, (20_000, 2048, 100))
REHEARSAL = Sizes((10, 2, 64, 32), 2, 2, {"height": 64, "width": 32, "num_ids": 2, "num_instances": 2, "k1": 6,
                                          "k2": 3, "min_samples": 2}, (900, 450, 128), "tiny", 3, (5000, 64, 20))


class Skipped(Exception):
    """A section that cannot run on this machine; the message is the reason."""


@dataclass
class Check:
    """What every section sees: the work folder, the sizes, and whether CUDA is there (or rehearsed on CPU)."""

    work: Path
    cuda: bool
    quick: bool = False
    rehearse: bool = False
    sizes: Sizes = field(init=False)

    def __post_init__(self) -> None:
        self.sizes = REHEARSAL if self.rehearse and not self.cuda else QUICK if self.quick else FULL

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    @property
    def mode(self) -> str:
        return "cuda" if self.cuda else "cpu rehearsal" if self.rehearse else "cpu"

    def need_cuda(self) -> None:
        if not self.cuda and not self.rehearse:
            raise Skipped(NO_CUDA)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


def one_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")[:limit]


def timed_runs(fn: Callable[[], Any], check: Check, runs: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones (device synchronised)."""
    for _ in range(warmup):
        fn()
    check.sync()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        check.sync()
        out.append(time.perf_counter() - start)
    return out


def free_device_memory() -> None:
    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()


# ---- 3. training with AMP --------------------------------------------------------------------------------------


class StepTimer:
    """A trainer callback plus an optimizer step hook: the intervals between consecutive optimizer steps within an
    epoch (the first step of each epoch, which waits for the loader to start, opens the first interval)."""

    def __init__(self, check: Check) -> None:
        self.check, self.last, self.intervals = check, None, []

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self.last = None

    def on_epoch_end(self, trainer: Any, epoch: int, record: dict) -> None:
        self.last = None

    def step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.check.sync()
        now = time.perf_counter()
        if self.last is not None:
            self.intervals.append(now - self.last)
        self.last = now


def render_synth(check: Check) -> tuple[Path, dict[str, Any]]:
    from mult.data.synth.writer import synthesize

    ids, per_camera, height, width = check.sizes.synth
    root = check.work / "synth"
    start = time.perf_counter()
    summary = synthesize(root, "sysu", ids=ids, images_per_camera=per_camera, height=height, width=width, seed=0,
                         workers=min(os.cpu_count() or 1, 16), progress=False)
    images = getattr(summary, "images", None)
    return root, {"ids": ids, "size": f"{height}x{width}", "images": images,
                  "seconds": round(time.perf_counter() - start, 1)}


def train_run(check: Check, preset: str, data_root: Path, steps: int, **overrides: Any) -> dict[str, Any]:
    """One DCL epoch and one MULT epoch of ``steps`` steps each, AMP on (CUDA only), no evaluation."""
    import torch

    from mult.config import preset_config
    from mult.train.trainer import Trainer

    cfg = preset_config(preset, data_root=str(data_root), device=check.device, amp=True, pretrained=None, epochs=2,
                        stage_one_epochs=1, iters_stage_one=steps, iters_stage_two=steps, eval_every=0, **overrides)
    if check.cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):  # stdout: the report alone
        warnings.simplefilter("ignore")
        trainer = Trainer(cfg, check.work / f"run-{preset}", progress=False)
        timer = StepTimer(check)
        trainer.callbacks.append(timer)
        trainer.optimizer.register_step_post_hook(timer.step)
        trainer.fit()
    out = {"arch": cfg.arch, "size": f"{cfg.height}x{cfg.width}", "batch": 3 * cfg.num_ids * cfg.num_instances,
           "amp": bool(trainer.amp), "steps": 2 * steps, "total_s": round(time.perf_counter() - start, 1),
           "step_ms_median": round(1000 * median(timer.intervals), 1) if timer.intervals else None}
    if check.cuda:
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    del trainer
    free_device_memory()
    return out


def _run_text(name: str, run: dict[str, Any]) -> str:
    peak = f", peak {run['peak_gpu_mib']} MiB" if "peak_gpu_mib" in run else ""
    return (f"{name} {run['arch']} {run['size']} batch {run['batch']}{' AMP' if run['amp'] else ''}: "
            f"{run['step_ms_median']} ms/step{peak}, {run['total_s']} s")


def section_training(check: Check) -> dict[str, Any]:
    check.need_cuda()
    root, synth = render_synth(check)
    tiny = train_run(check, "tiny", root, check.sizes.tiny_steps)
    workers = 0 if check.rehearse and not check.cuda else min(8, os.cpu_count() or 1)
    sysu = train_run(check, "sysu", root, check.sizes.sysu_steps, workers=workers, **check.sizes.sysu_overrides)
    return {"summary": f"{_run_text('tiny', tiny)}; {_run_text('sysu', sysu)} (SynthVI {synth['ids']} ids)",
            "synth": synth, "tiny": tiny, "sysu": sysu}


# ---- 4. label transfer at full SYSU size -----------------------------------------------------------------------


def section_label_transfer(check: Check) -> dict[str, Any]:
    check.need_cuda()
    import torch

    from benchmarks.bench_label_transfer import cross_modal_features
    from mult.train.clustering import dbscan_cluster, sparse_jaccard_distance
    from mult.train.label_transfer import mult_label_transfer

    nv, nr, dim = check.sizes.label_transfer
    start = time.perf_counter()
    fv, fr, _, _ = cross_modal_features(nv, nr, dim, seed=0)
    jv, jr = sparse_jaccard_distance(fv), sparse_jaccard_distance(fr)
    lv, lr = dbscan_cluster(jv, 0.6), dbscan_cluster(jr, 0.6)
    prepare_s = round(time.perf_counter() - start, 1)
    device = torch.device(check.device)
    warm = torch.ones(64, 64, device=device)
    float((warm @ warm).sum())  # CUDA context and cuBLAS handle before the clock
    fv_d, fr_d = torch.from_numpy(fv).to(device), torch.from_numpy(fr).to(device)
    if check.cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds, info = [], {}
    for _ in range(2):  # cold, then warm (the trainer calls it once per epoch in a warm process)
        begin = time.perf_counter()
        info = mult_label_transfer(fv_d, fr_d, lv, lr, jv, jr).info  # returns numpy: synchronised
        seconds.append(round(time.perf_counter() - begin, 2))
        if seconds[-1] > 30:
            break
    full = (nv, nr, dim) == FULL.label_transfer and check.cuda
    met = min(seconds) <= LABEL_TRANSFER_TARGET_S if full else None
    verdict = {True: "met", False: "NOT met", None: "applies at full size on CUDA"}[met]
    out = {"nv": nv, "nr": nr, "dim": dim, "clusters_v": int(lv.max() + 1), "clusters_r": int(lr.max() + 1),
           "prepare_s": prepare_s, "seconds": seconds, "target_s": LABEL_TRANSFER_TARGET_S, "target_met": met,
           "sinkhorn_steps": info.get("sinkhorn_steps"), "stage_seconds": info.get("seconds")}
    if check.cuda:
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    out["summary"] = (f"{nv:,} x {nr:,} x {dim}-d, {out['clusters_v']}/{out['clusters_r']} clusters: "
                      f"{' / '.join(f'{s} s' for s in seconds)} ({' / '.join(('cold', 'warm')[:len(seconds)])}); "
                      f"target <= 5 s {verdict}")
    return out


# ---- 5. ONNX Runtime CUDA at batch 32 --------------------------------------------------------------------------


def export_random_model(check: Check) -> tuple[Any, Any]:
    """A random-init run of the preset written as a `mult export` repository (version 1), and its config."""
    import torch

    from mult.config import preset_config
    from mult.export.repository import write_model_repository
    from mult.model import TwoStreamEncoder

    cfg = preset_config(check.sizes.onnx_preset, pretrained=None)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "starts from random weights": that is the point here
        model = TwoStreamEncoder(cfg.arch, pretrained=None)
    run = check.work / "onnx-run"
    run.mkdir(parents=True, exist_ok=True)
    cfg.save(run / "config.json")
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 1}, run / "checkpoint.pt")
    return write_model_repository(run, check.work / "model_repository"), cfg


def _ort_cuda_providers(check: Check, ort: Any) -> list[str]:
    if check.rehearse and not check.cuda:
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skipped(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (has "
                      f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu: {GPU_EXTRAS}")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def section_onnx(check: Check) -> dict[str, Any]:
    check.need_cuda()
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skipped(f"onnxruntime is not installed: {GPU_EXTRAS}") from None
    from mult.export.layout import INPUT_NAME, MODEL_NAMES, ONNX_FILE, OUTPUT_NAME

    providers = _ort_cuda_providers(check, ort)
    start = time.perf_counter()
    export, cfg = export_random_model(check)
    export_s = round(time.perf_counter() - start, 1)
    images = np.random.default_rng(0).integers(0, 256, (ONNX_BATCH, cfg.height, cfg.width, 3), dtype=np.uint8)
    diffs, seconds, used = {}, [], []
    for modality, name in MODEL_NAMES.items():
        path = str(export.repo / name / str(export.version) / ONNX_FILE)
        on_gpu = ort.InferenceSession(path, providers=providers)
        used = on_gpu.get_providers()
        if used[0] != providers[0]:
            raise RuntimeError(f"the session fell back to {used[0]} (CUDA libraries missing?)")
        on_cpu = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        run_gpu = lambda: on_gpu.run([OUTPUT_NAME], {INPUT_NAME: images})[0]  # noqa: E731
        diffs[modality.value] = float(np.abs(run_gpu() - on_cpu.run([OUTPUT_NAME], {INPUT_NAME: images})[0]).max())
        if not seconds:  # throughput on the visible stem (both stems are the same network but the stem)
            seconds = timed_runs(run_gpu, check, check.sizes.onnx_runs, warmup=3)
    rate = ONNX_BATCH / median(seconds)
    return {"summary": f"{cfg.arch} {cfg.height}x{cfg.width}, batch {ONNX_BATCH} on {used[0]}: {rate:,.0f} images/s;"
                       f" max |diff| vs CPU {max(diffs.values()):.1e}", "arch": cfg.arch,
            "size": f"{cfg.height}x{cfg.width}", "batch": ONNX_BATCH, "providers": used, "export_s": export_s,
            "batch_ms_median": round(1000 * median(seconds), 2), "images_per_s": round(rate, 1),
            "max_abs_diff_vs_cpu": diffs}


# ---- 6. faiss GPU search ---------------------------------------------------------------------------------------


def _faiss_gpu_index(check: Check, faiss: Any, index: Any) -> tuple[Any, Any]:
    """(resources, index on GPU 0); the CPU index itself when rehearsing without a GPU."""
    if check.rehearse and not check.cuda:
        return None, index
    resources = faiss.StandardGpuResources()
    return resources, faiss.index_cpu_to_gpu(resources, 0, index)


def section_faiss(check: Check) -> dict[str, Any]:
    check.need_cuda()
    try:
        import faiss
    except ImportError:
        raise Skipped(f"faiss is not installed: {GPU_EXTRAS}") from None
    if not (check.rehearse and not check.cuda) and not (hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0):
        raise Skipped(f"faiss {faiss.__version__} has no GPU support (faiss-cpu); install faiss-gpu: {GPU_EXTRAS}")
    n, dim, nq = check.sizes.faiss
    rng = np.random.default_rng(0)
    base = rng.standard_normal((n, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = base[rng.choice(n, nq, replace=False)] + 0.05 * rng.standard_normal((nq, dim), dtype=np.float32)
    cpu_index = faiss.IndexFlatIP(dim)
    cpu_index.add(base)
    resources, gpu_index = _faiss_gpu_index(check, faiss, cpu_index)
    k = 10
    cpu_s = timed_runs(lambda: cpu_index.search(queries, k), check, 3)
    gpu_s = timed_runs(lambda: gpu_index.search(queries, k), check, 5)
    same = float((cpu_index.search(queries, k)[1] == gpu_index.search(queries, k)[1]).mean())
    del resources, gpu_index
    cpu_ms, gpu_ms = 1000 * median(cpu_s), 1000 * median(gpu_s)
    return {"summary": f"flat {n:,} x {dim}-d, {nq} queries top-{k}: GPU {gpu_ms:.1f} ms vs CPU {cpu_ms:.1f} ms "
                       f"(x{cpu_ms / gpu_ms:.1f}); same ids {same:.3f}", "n": n, "dim": dim, "queries": nq,
            "gpu_ms": round(gpu_ms, 2), "cpu_ms": round(cpu_ms, 2), "speedup": round(cpu_ms / gpu_ms, 2),
            "same_ids": same}
