"""Serving throughput and accuracy: torch eager vs ONNX Runtime in-process vs Triton gRPC, FP32 / FP16 / INT8.

    python -m benchmarks.bench_serving --quick                       # smoke run: ResNet-18 at 64x32 (~1 min)
    python -m benchmarks.bench_serving                               # ResNet-50 at 288x144, random weights
    python -m benchmarks.bench_serving --run runs/synth --data-root data/synth-sysu   # + mAP/R1 of a trained run

One checkpoint is exported three times with ``write_model_repository(..., precision=...)`` (FP32, FP16 trunk,
INT8 static QDQ; each passes its parity check against torch). Then, on the same uint8 ``[N, H, W, 3]`` SynthVI
crops, the visible stem is timed at batch 1, 8 and 32 (median of ``--repeats`` after one warm-up):

* torch eager: ``model.embed(uint8 / 255)``, converted exactly as the graph does (FP32 only);
* ONNX Runtime in this process: ``mult.serving.onnx_local.OnnxEncoder.encode_array``;
* Triton gRPC: a real local ``TritonServer`` (python backend running the same ``model.onnx`` in ONNX Runtime)
  per precision, one client, then ``--clients`` threads with a client each sending ``--requests-per-client``
  batches of 8 (or 32) at once, merged by Triton's dynamic batcher (images/s = all images / wall time).

Ratios are against ONNX Runtime FP32 at the same batch size. With ``--data-root`` the 10-trial SYSU-MM01
protocol (or RegDB) runs through ``mult.datasets.evaluate_dataset`` with an in-process ONNX encoder for each
precision, giving the mAP / R1 change of FP16 and INT8 against FP32 on the same data. Without ``--run`` the
encoder has random weights with BatchNorm statistics re-estimated on SynthVI images (as the CPU presets do
before training): fine for timing, while its accuracy is only indicative; with ``--quick`` a tiny SynthVI set
is rendered so every part runs. The FP16 graph has no FP16 kernels to use on most CPUs (ONNX Runtime casts
around them): its gain is for GPU hosts; on CPU the INT8 row is the one to read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from benchmarks.harness import cpu_model, run_in_workdir
from mult.backbones import ARCHS
from mult.errors import MultError

PRECISIONS = ("fp32", "fp16", "int8")
MODALITY = "visible"
FLIP = True  # exported as served by default: mirror-averaged embeddings (the batch through the CNN doubles)
QUICK = {"arch": "resnet18", "height": 64, "width": 32, "repeats": 2, "requests_per_client": 1,
         "calibration_images": 8, "synth_ids": 10, "synth_per_camera": 3}
FULL_SYNTH = {"synth_ids": 40, "synth_per_camera": 4}


def restamp_onnx_hash(onnx_path: Path) -> None:
    """The manifest beside a model converted in place records the new file's sha256 (loaders check it)."""
    from mult.export.layout import MANIFEST_FILE
    from mult.io import file_sha256, write_text_atomic

    manifest_path = onnx_path.parent / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["onnx_sha256"] = file_sha256(onnx_path)
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


# ---- inputs ----------------------------------------------------------------------------------------------


def synth_data(root: Path, args: argparse.Namespace) -> Path:
    """A small SynthVI set in SYSU-MM01 layout (calibration images; evaluation data in --quick mode)."""
    from mult.data.synth import synthesize

    synthesize(root, "sysu", ids=args.synth_ids, images_per_camera=args.synth_per_camera, height=args.height,
               width=args.width, seed=args.seed, workers=None, progress=False)
    return root


def training_batch(data_root: Path, dataset: str, modality: str, n: int, height: int, width: int) -> np.ndarray:
    """``n`` training images of ``modality`` resized to uint8 [n, H, W, 3] (cycled when the set is smaller)."""
    from mult.data.records import Modality
    from mult.serving.encoders import load_resized
    from mult.datasets import load_training_set

    train = load_training_set(dataset, data_root)
    records = train.visible if Modality(modality) is Modality.visible else train.infrared
    picks = np.resize(np.linspace(0, len(records) - 1, num=min(n, len(records))).round().astype(int), n)
    return load_resized([records[i].path for i in picks], height, width)


def random_init_run(run: Path, args: argparse.Namespace, data_root: Path) -> Path:
    """A run directory holding a random-init encoder of ``--arch`` whose BN statistics were re-estimated on
    SynthVI images (PreciseBN): without it a random ResNet-50's activations grow block after block."""
    import torch

    from mult.config import preset_config
    from mult.model import PretrainedWeightsWarning, TwoStreamEncoder
    from mult.train.precise_bn import recalibrate_batchnorm

    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedWeightsWarning)
        model = TwoStreamEncoder(args.arch)

    def as_input(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0

    n = 16
    vis = training_batch(data_root, "sysu", "visible", n, args.height, args.width)
    ir = training_batch(data_root, "sysu", "infrared", n, args.height, args.width)
    recalibrate_batchnorm(model, [(as_input(vis), as_input(ir))])
    cfg = preset_config("tiny", arch=args.arch, height=args.height, width=args.width, dataset="sysu",
                        data_root=str(data_root))
    run.mkdir(parents=True, exist_ok=True)
    cfg.save(run / "config.json")
    torch.save({"model": model.eval().state_dict(), "config": cfg.to_dict(), "epoch": 0}, run / "checkpoint.pt")
    return run


# ---- timing ----------------------------------------------------------------------------------------------


def median_s(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(path: str, precision: str, batch: int, clients: int, seconds: float, images: int) -> dict[str, Any]:
    return {"path": path, "precision": precision, "batch": batch, "clients": clients,
            "median_ms": seconds * 1e3, "images_per_s": images / seconds}


def time_batches(path: str, precision: str, fn: Callable[[np.ndarray], object], images: np.ndarray,
                 batches: list[int], repeats: int) -> list[dict[str, Any]]:
    return [row(path, precision, b, 1, median_s(lambda: fn(images[:b]), repeats), b) for b in batches]


def concurrent_round(encoders: list, images: np.ndarray, batch: int, requests: int) -> float:
    """Wall time for every client to send ``requests`` batches of ``batch`` images, all clients at once."""
    barrier = threading.Barrier(len(encoders) + 1)

    def client(encoder) -> None:
        barrier.wait()
        for _ in range(requests):
            encoder.encode_array(images[:batch], MODALITY)

    with ThreadPoolExecutor(len(encoders)) as pool:
        futures = [pool.submit(client, e) for e in encoders]
        barrier.wait()
        start = time.perf_counter()
        for f in futures:
            f.result()
        return time.perf_counter() - start


def time_triton(repo: Path, precision: str, images: np.ndarray, local: np.ndarray,
                args: argparse.Namespace) -> tuple[list[dict[str, Any]], float]:
    """Rows for one precision served by a fresh local Triton, and the max |Triton - in-process ORT| on the
    first ``len(local)`` images (the served model must be the same graph)."""
    from mult.serving.triton_client import TritonEncoder
    from mult.serving.triton_server import TritonServer

    rows = []
    with TritonServer(repo) as server:
        with TritonEncoder(server.url, batch_size=max(args.batches)) as encoder:
            diff = float(np.abs(encoder.encode_array(images[:len(local)], MODALITY) - local).max())
            rows += time_batches("Triton gRPC", precision, lambda x: encoder.encode_array(x, MODALITY), images,
                                 args.batches, args.repeats)
        clients = [TritonEncoder(server.url, batch_size=max(args.client_batches)) for _ in range(args.clients)]
        try:
            for batch in args.client_batches:
                seconds = median_s(lambda: concurrent_round(clients, images, batch, args.requests_per_client),
                                   args.repeats)
                rows.append(row(f"Triton gRPC, {args.clients} clients", precision, batch, args.clients, seconds,
                                args.clients * args.requests_per_client * batch))
        finally:
            for c in clients:
                c.close()
    return rows, diff


# ---- the run ---------------------------------------------------------------------------------------------


def export_all(source: Path, cfg: Any, work: Path, args: argparse.Namespace, *,
               gated: bool) -> dict[str, dict[str, Any]]:
    """One repository per precision. ``gated``: through ``write_model_repository`` with its parity gate (a
    trained run). Random weights are no quantisation target (a random-init ResNet-50 loses cosine 0.3 in INT8
    while trained networks keep ~0.98), so without a run the FP32 export is converted directly, ungated: the
    timing does not depend on the weights, and the accuracy part needs ``--run`` anyway."""
    import shutil

    from mult.data.records import Modality
    from mult.export.quantize import to_fp16, to_int8
    from mult.export.repository import int8_calibration_images, write_model_repository

    out = {}
    for precision in args.precisions:
        start = time.perf_counter()
        if gated or precision == "fp32":
            result = write_model_repository(source, work / f"repo_{precision}", precision=precision, flip=FLIP,
                                            calibration_dir=args.calibration_dir if precision == "int8" else None,
                                            calibration_count=args.calibration_images)
            models = list(result.models.values())
            paths = {m.modality: m.onnx_path for m in models}
            parity = (min(m.parity.min_cosine for m in models), max(m.parity.max_abs_diff for m in models))
            calibration = models[0].calibration
        else:
            repo = work / f"repo_{precision}"
            shutil.copytree(out["fp32"]["repo"], repo)
            paths, calibration, parity = {}, None, (float("nan"), float("nan"))
            for onnx_path in sorted(repo.glob("mult_*/*/model.onnx")):
                modality = onnx_path.parent.parent.name.removeprefix("mult_")
                if precision == "fp16":
                    to_fp16(onnx_path, onnx_path)
                else:
                    images, note = int8_calibration_images(Modality(modality), cfg, cfg.height, cfg.width,
                                                           calibration_dir=args.calibration_dir,
                                                           n=args.calibration_images)
                    to_int8(onnx_path, onnx_path, images)
                    calibration = {"count": len(images), "source": note, "gated": False}
                restamp_onnx_hash(onnx_path)
                paths[modality] = onnx_path
        out[precision] = {
            "repo": work / f"repo_{precision}",
            "export_s": time.perf_counter() - start,
            "onnx_mib": {m: p.stat().st_size / 2**20 for m, p in paths.items()},
            "parity_min_cosine": parity[0],
            "parity_max_abs": parity[1],
            "parity_gated": gated or precision == "fp32",
            "calibration": calibration,
        }
        print(f"exported {precision} in {out[precision]['export_s']:.1f} s: parity min cos "
              f"{out[precision]['parity_min_cosine']:.6f}, max abs {out[precision]['parity_max_abs']:.2e}", flush=True)
    return out


def accuracy(exports: dict[str, dict[str, Any]], dataset: str, root: Path, trials: int) -> dict[str, Any]:
    """The dataset protocol through each precision's ONNX model, and the change against FP32 (points)."""
    from mult.datasets import evaluate_dataset
    from mult.serving.onnx_local import OnnxEncoder

    out: dict[str, Any] = {}
    for precision, info in exports.items():
        with OnnxEncoder(info["repo"], batch_size=32) as encoder:
            summaries = evaluate_dataset(encoder, dataset, root, trials=trials)
        out[precision] = {name: {"mAP": s.mean.mAP, "R1": s.mean.rank1, "mINP": s.mean.mINP}
                          for name, s in summaries.items()}
    if "fp32" in out:
        for precision, protocols in out.items():
            for name, metrics in protocols.items():
                base = out["fp32"][name]
                metrics["dmAP"] = metrics["mAP"] - base["mAP"]
                metrics["dR1"] = metrics["R1"] - base["R1"]
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from mult.export.onnx_export import torch_embeddings
    from mult.serving.onnx_local import OnnxEncoder
    from mult.runs import find_run_model

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    load_start = os.getloadavg()
    data_root = args.data_root
    if args.run is None:
        synth_root = data_root if data_root is not None else synth_data(work / "synthvi", args)
        source = random_init_run(work / "run", args, synth_root)
        if data_root is None and args.quick:
            data_root = synth_root  # the smoke run exercises the accuracy part too
    else:
        source = args.run
    model, cfg = find_run_model(source)
    dataset = cfg.dataset if cfg is not None else "sysu"
    height, width = cfg.height, cfg.width
    print(f"model: {model.arch} at {height}x{width} from {source}", flush=True)

    exports = export_all(Path(source), cfg, work, args, gated=args.run is not None)
    pixels_root = data_root or (Path(cfg.data_root) if cfg.data_root else None)
    if pixels_root is not None and Path(pixels_root).is_dir():
        images = training_batch(Path(pixels_root), dataset, MODALITY, max(args.batches + args.client_batches),
                                height, width)
    else:  # a trained run whose dataset moved: timing does not depend on the pixels
        from mult.export.repository import random_images

        images = random_images(max(args.batches + args.client_batches), height, width, seed=args.seed)

    rows: list[dict[str, Any]] = []
    rows += time_batches("torch eager", "fp32", lambda x: torch_embeddings(model, MODALITY, x, flip=FLIP), images,
                         args.batches, args.repeats)
    print("timed torch eager", flush=True)
    triton_skipped: Optional[str] = None
    for precision, info in exports.items():
        with OnnxEncoder(info["repo"], batch_size=max(args.batches)) as encoder:
            rows += time_batches("ONNX Runtime", precision, lambda x: encoder.encode_array(x, MODALITY), images,
                                 args.batches, args.repeats)
            local = encoder.encode_array(images[:8], MODALITY)
        if not args.no_triton and triton_skipped is None:
            try:
                triton_rows, info["triton_vs_ort_max_abs"] = time_triton(info["repo"], precision, images, local, args)
                rows += triton_rows
            except MultError as err:
                triton_skipped = str(err)
        print(f"timed {precision}", flush=True)
    baseline = {r["batch"]: r["images_per_s"] for r in rows if r["path"] == "ONNX Runtime" and r["precision"] == "fp32"}
    for r in rows:
        r["vs_ort_fp32"] = r["images_per_s"] / baseline[r["batch"]] if r["batch"] in baseline else None

    if data_root is not None:
        acc: Any = accuracy(exports, dataset, Path(data_root), args.trials)
        acc_note = ("random-init encoder (BN re-estimated): the change is only indicative"
                    if args.run is None else f"trained run {args.run}")
    else:
        acc, acc_note = None, "skipped: pass --run RUN_DIR --data-root DIR (a SynthVI set in the run's layout)"
    return {
        "benchmark": "serving",
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    # 1-minute load average before and after: above ~0.5 another process shared the CPUs.
                    "loadavg_start": load_start[0], "loadavg_end": os.getloadavg()[0]},
        "versions": _versions(),
        "settings": {"arch": model.arch, "height": height, "width": width, "source": str(source),
                     "data_root": str(data_root) if data_root else None, "dataset": dataset,
                     "modality": MODALITY, "flip": FLIP, **{k: getattr(args, k) for k in (
                         "repeats", "batches", "clients", "client_batches", "requests_per_client",
                         "calibration_images", "trials", "quick", "precisions")}},
        "exports": {p: {k: v for k, v in info.items() if k != "repo"} for p, info in exports.items()},
        "rows": rows,
        "triton_skipped": triton_skipped,
        "accuracy": acc,
        "accuracy_note": acc_note,
    }


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__}


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    m = result["machine"]
    lines = [f"{s['arch']} at {s['height']}x{s['width']}, {MODALITY} stem, flip {s['flip']}; {m['cpus']} CPUs "
             f"({m['cpu']}), load average {m['loadavg_start']:.1f} -> {m['loadavg_end']:.1f}", ""]
    lines.append(f"{'path':<26}{'prec':<6}{'batch':>6}{'ms':>10}{'images/s':>11}{'vs ORT fp32':>13}")
    for r in result["rows"]:
        ratio = "-" if r["vs_ort_fp32"] is None else f"{r['vs_ort_fp32']:.2f}x"
        lines.append(f"{r['path']:<26}{r['precision']:<6}{r['batch']:>6}{r['median_ms']:>10.1f}"
                     f"{r['images_per_s']:>11.1f}{ratio:>13}")
    if result["triton_skipped"]:
        lines.append(f"Triton skipped: {result['triton_skipped']}")
    lines.append("")
    for p, e in result["exports"].items():
        sizes = ", ".join(f"{k} {v:.1f} MiB" for k, v in e["onnx_mib"].items())
        served = f", Triton vs ORT max abs {e['triton_vs_ort_max_abs']:.1e}" if "triton_vs_ort_max_abs" in e else ""
        lines.append(f"export {p}: {e['export_s']:.1f} s, {sizes}, parity min cos {e['parity_min_cosine']:.6f} "
                     f"max abs {e['parity_max_abs']:.2e}{served}")
    lines.append("")
    if result["accuracy"] is None:
        lines.append(f"accuracy: {result['accuracy_note']}")
    else:
        lines.append(f"accuracy ({result['accuracy_note']}):")
        for p, protocols in result["accuracy"].items():
            for name, m in protocols.items():
                delta = f"  dmAP {m['dmAP']:+.2f}  dR1 {m['dR1']:+.2f}" if "dmAP" in m else ""
                lines.append(f"  {p:<5} {name:<12} mAP {m['mAP']:6.2f}  R1 {m['R1']:6.2f}{delta}")
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".bench/serving.json"), help="JSON result path")
    parser.add_argument("--quick", action="store_true", help="smoke run: ResNet-18 at 64x32, 2 repeats, tiny data")
    parser.add_argument("--arch", choices=ARCHS, default=None,
                        help="random-init encoder architecture (default resnet50; ignored with --run)")
    parser.add_argument("--height", type=int, default=None, help="input height (default 288; ignored with --run)")
    parser.add_argument("--width", type=int, default=None, help="input width (default 144; ignored with --run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case, median reported (default 3)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="single-client batch sizes")
    parser.add_argument("--clients", type=int, default=8, help="concurrent Triton clients (threads)")
    parser.add_argument("--client-batches", type=int, nargs="+", default=[8, 32], help="batch per concurrent request")
    parser.add_argument("--requests-per-client", type=int, default=None,
                        help="requests per client per round (default 2)")
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--run", type=Path, default=None, help="a trained `mult train` run to export instead")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="dataset for the mAP/R1 change (layout of the run's dataset; SYSU-MM01 without --run)")
    parser.add_argument("--calibration-dir", type=Path, default=None,
                        help="INT8 calibration images (default: the run's training images)")
    parser.add_argument("--calibration-images", type=int, default=None, help="INT8 calibration images per stem "
                        "(default 64)")
    parser.add_argument("--trials", type=int, default=10, help="SYSU-MM01 galleries for the accuracy part")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton rows")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch intra-op threads for the eager rows (default: torch's choice)")
    parser.add_argument("--work", type=Path, default=None, help="keep exports and data here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    defaults = dict(QUICK) if args.quick else {"arch": "resnet50", "height": 288, "width": 144, "repeats": 3,
                                                  "requests_per_client": 2, "calibration_images": 64, **FULL_SYNTH}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if min(args.repeats, args.clients, args.requests_per_client, args.calibration_images, args.trials,
           *args.batches, *args.client_batches) < 1:
        parser.error("repeats, clients, batch sizes, requests, calibration images and trials must be >= 1")
    if args.torch_threads < 0:
        parser.error("--torch-threads must be >= 0 (0: torch's default)")
    if args.height < 32 or args.width < 16:
        parser.error("--height must be >= 32 and --width >= 16 (SynthVI's smallest size)")
    if args.run is not None and not args.run.is_dir():
        parser.error(f"--run {args.run}: not a run directory")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    return run_in_workdir("bench_serving", parse_args(argv), run, render)


if __name__ == "__main__":
    sys.exit(main())
