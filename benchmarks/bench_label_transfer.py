"""MULT label transfer at SYSU scale: the official dense algorithm vs ``mult.train.label_transfer``.

    python -m benchmarks.bench_label_transfer --sizes 8000x4000 22258x11909 --dim 2048 \\
        --out .bench/label_transfer.json

For each size NvxNr the parent draws cross-modality Re-ID-like features (``cross_modal_features``),
clusters each modality with the real path (``sparse_jaccard_distance`` + DBSCAN eps 0.6), saves the
inputs, then runs each method in its own subprocess so that its peak resident memory (``VmHWM``) is its
own: the official re-statement (``benchmarks.reference_label_transfer``, given the dense Jaccard
matrices it expects) only up to ``--reference-max-entries`` plan entries, and ours (given the sparse
Jaccard matrices) at every size. Each child times only the label-transfer call; the parent reports wall
time, peak memory, the speed ratio and the max abs difference of the four soft-label matrices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import peak_rss_mib, run_child as spawn_child, write_json

METHODS = ("reference", "ours")
MATRICES = ("visible", "infrared_to_visible", "infrared", "visible_to_infrared")




def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def cross_modal_features(
    nv: int, nr: int, dim: int = 2048, *, per_cluster: float = 29.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Visible [nv, dim] and infrared [nr, dim] unit features of shared identities, plus their person ids.

    ~nr/29 persons; the visible side has ~nv/29 (person, camera-group) clusters, so a person has one or two
    visible groups (SYSU has 4 RGB cameras, 2 IR). Each sample = shared direction + person centre (drawn
    in a 64-d subspace, so some people look alike) + group offset + modality offset + isotropic noise;
    4% of the samples are "odd views" with an extra offset of their own (most become DBSCAN outliers). Samples are
    assigned to groups uniformly at random, so, as in SYSU, persons have unequal visible/infrared image
    counts. Typical cosines: 0.7 within a group, 0.48 same person across modalities, 0.1 otherwise.
    """
    rng = np.random.default_rng(seed)
    persons = max(2, round(nr / per_cluster))
    groups_v = max(persons, round(nv / per_cluster))
    centres = _unit(rng.standard_normal((persons, 64)) @ _unit(rng.standard_normal((64, dim))))
    common = 0.5 * _unit(rng.standard_normal(dim))
    offset_v, offset_r = 0.7 * _unit(rng.standard_normal((2, dim)))

    def side(n: int, groups: int, group_person: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        group_dirs = 0.5 * _unit(rng.standard_normal((groups, dim)))
        group = rng.integers(0, groups, n)
        person = group_person[group]
        own = centres[person] + group_dirs[group]
        odd = rng.random(n) < 0.04  # a person seen once: a centre and view of its own
        own[odd] = _unit(rng.standard_normal((int(odd.sum()), dim))) * np.linalg.norm(own[odd], axis=1, keepdims=True)
        person[odd] = -1
        x = common + own + offset + 0.8 * _unit(rng.standard_normal((n, dim)))
        return _unit(x).astype(np.float32), person

    fv, pid_v = side(nv, groups_v, np.arange(groups_v) % persons, offset_v)
    fr, pid_r = side(nr, persons, np.arange(persons), offset_r)
    return fv, fr, pid_v, pid_r


def learned_features(path: Path, nv: int, nr: int, dim: int, *, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``nv`` visible and ``nr`` infrared rows drawn from a trained model's features (``extract_features``).

    Features narrower than ``dim`` (ResNet-18: 512) are lifted by a random map with orthonormal columns,
    which keeps every distance and cosine, hence every Sinkhorn plan and label, exactly as the model made
    them while the GEMMs run at the benchmark's width.
    """
    data = np.load(path)
    fv, fr = data["fv"], data["fr"]
    if nv > len(fv) or nr > len(fr):
        raise SystemExit(f"{path} holds {len(fv)} visible / {len(fr)} infrared features; asked for {nv} x {nr}")
    if fv.shape[1] > dim:
        raise SystemExit(f"{path} holds {fv.shape[1]}-d features, wider than --dim {dim}")
    rng = np.random.default_rng(seed)
    iv, ir = np.sort(rng.choice(len(fv), nv, replace=False)), np.sort(rng.choice(len(fr), nr, replace=False))
    lift, _ = np.linalg.qr(rng.standard_normal((dim, fv.shape[1])))  # [dim, d], orthonormal columns
    fv, fr = (_unit(f.astype(np.float64)) @ lift.T for f in (fv[iv], fr[ir]))
    return (_unit(fv).astype(np.float32), _unit(fr).astype(np.float32),
            data["pid_v"][iv].astype(np.int64), data["pid_r"][ir].astype(np.int64))


def dense_jaccard(sparse) -> np.ndarray:
    """The dense [N, N] float32 Jaccard matrix of a ``sparse_jaccard_distance`` result (absent = 1)."""
    out = np.ones(sparse.shape, dtype=np.float32)
    out[np.repeat(np.arange(sparse.shape[0]), np.diff(sparse.indptr)), sparse.indices] = sparse.data
    return out


def prepare(work: Path, nv: int, nr: int, dim: int, seed: int, eps: float, features: Path | None = None) -> dict:
    """Features (generated, or drawn from ``features``), DBSCAN labels and sparse Jaccard matrices for one
    size, saved under ``work``."""
    import scipy.sparse as sp

    from mult.train.clustering import dbscan_cluster, sparse_jaccard_distance

    start = time.perf_counter()
    if features is None:
        fv, fr, pid_v, pid_r = cross_modal_features(nv, nr, dim, seed=seed)
    else:
        fv, fr, pid_v, pid_r = learned_features(features, nv, nr, dim, seed=seed)
    jv, jr = sparse_jaccard_distance(fv), sparse_jaccard_distance(fr)
    lv, lr = dbscan_cluster(jv, eps), dbscan_cluster(jr, eps)
    np.savez(work / "inputs.npz", fv=fv, fr=fr, lv=lv, lr=lr, pid_v=pid_v, pid_r=pid_r)
    sp.save_npz(work / "jv.npz", jv)
    sp.save_npz(work / "jr.npz", jr)
    return {
        "clusters_v": int(lv.max() + 1), "clusters_r": int(lr.max() + 1),
        "outliers_v": int((lv < 0).sum()), "outliers_r": int((lr < 0).sum()),
        "jaccard_nnz_per_row_v": round(jv.nnz / nv, 1), "jaccard_nnz_per_row_r": round(jr.nnz / nr, 1),
        "prepare_s": round(time.perf_counter() - start, 1),
    }


def run_child(method: str, work: Path, dense_method: str, threads: int | None, device: str = "cpu") -> dict:
    """One method on the saved inputs, in this (child) process; saves its four matrices, returns timings.

    ``device`` (ours only; the official code runs on CPU, METHOD.md §11): features go there first, and a
    CUDA context and cuBLAS handle are made before the clock starts; the time includes copying the labels back.
    """
    import scipy.sparse as sp
    import torch  # imported before timing

    if threads:
        torch.set_num_threads(threads)
    on_gpu = device != "cpu"
    if on_gpu:
        warm = torch.ones(64, 64, device=device)
        float((warm @ warm).sum())
        torch.cuda.reset_peak_memory_stats(device)

    data = np.load(work / "inputs.npz")
    jv, jr = sp.load_npz(work / "jv.npz"), sp.load_npz(work / "jr.npz")
    out: dict = {}
    if method == "reference":
        from benchmarks.reference_label_transfer import reference_mult_label_transfer

        jv, jr = dense_jaccard(jv), dense_jaccard(jr)  # the official code receives dense matrices
        out["input_rss_mib"] = round(peak_rss_mib())
        start, cpu = time.perf_counter(), time.process_time()
        res = reference_mult_label_transfer(data["fv"], data["fr"], data["lv"], data["lr"], jv, jr)
    else:
        from mult.train.label_transfer import mult_label_transfer

        fv, fr = (torch.from_numpy(data[k]).to(device) for k in ("fv", "fr"))
        out["input_rss_mib"] = round(peak_rss_mib())
        start, cpu = time.perf_counter(), time.process_time()
        res = mult_label_transfer(fv, fr, data["lv"], data["lr"], jv, jr, method=dense_method)
        out["info"] = res.info
        if on_gpu:
            out["device"] = torch.cuda.get_device_name(device)
            out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    out["seconds"] = round(time.perf_counter() - start, 2)
    out["cpu_seconds"] = round(time.process_time() - cpu, 2)  # all threads; shows contention on a busy host
    out["peak_rss_mib"] = round(peak_rss_mib())
    np.savez(work / f"{method}_out.npz", **{k: getattr(res, k) for k in MATRICES})
    out["cross_label_accuracy"] = cross_label_accuracy(res, data)
    return out


def cross_label_accuracy(res, data) -> dict[str, float]:
    """Share of instances (of persons seen in both modalities) whose cross-modality hard label names a
    cluster whose majority person is theirs."""
    acc = {}
    for name, labels_other, pid_self, pid_other in (
        ("visible_to_infrared", data["lr"], data["pid_v"], data["pid_r"]),
        ("infrared_to_visible", data["lv"], data["pid_r"], data["pid_v"]),
    ):
        keep = (labels_other >= 0) & (pid_other >= 0)
        k = int(labels_other.max()) + 1
        votes = np.zeros((k, int(pid_other.max()) + 1), dtype=np.int64)
        np.add.at(votes, (labels_other[keep], pid_other[keep]), 1)
        hit = votes.argmax(1)[getattr(res, name).argmax(1)] == pid_self
        acc[name] = round(float(hit[pid_self >= 0].mean()), 4)
    return acc


def _spawn(method: str, work: Path, args: argparse.Namespace) -> dict:
    return spawn_child("benchmarks.bench_label_transfer", method, work,
                       ["--method", args.method, "--device", args.device]
                       + (["--threads", str(args.threads)] if args.threads else []))


def bench_size(nv: int, nr: int, args: argparse.Namespace) -> dict:
    result: dict = {"nv": nv, "nr": nr, "dim": args.dim, "features": str(args.features or "generated")}
    with tempfile.TemporaryDirectory(prefix="bench_label_transfer_") as tmp:
        work = Path(tmp)
        print(f"{nv}x{nr}: preparing features, Jaccard, DBSCAN ...", file=sys.stderr, flush=True)
        result["data"] = prepare(work, nv, nr, args.dim, args.seed, args.eps, args.features)
        methods = [m for m in METHODS if m == "ours" or nv * nr <= args.reference_max_entries]
        for method in methods:
            print(f"{nv}x{nr}: {method} ...", file=sys.stderr, flush=True)
            result[method] = _spawn(method, work, args)
        if "reference" in result:
            ref, ours = (np.load(work / f"{m}_out.npz") for m in METHODS)
            result["max_abs_diff"] = {k: float(np.abs(ref[k] - ours[k]).max()) for k in MATRICES}
            result["hard_labels_differing"] = {
                k: int((ref[k].argmax(1) != ours[k].argmax(1)).sum()) for k in MATRICES}
            r, o = result["reference"], result["ours"]
            result["speedup"] = round(r["seconds"] / o["seconds"], 2)
            result["memory_ratio"] = round(r["peak_rss_mib"] / o["peak_rss_mib"], 2)
    return result




def _print_table(results: list[dict]) -> None:
    print(f"{'size':>13} {'method':>10} {'seconds':>8} {'cpu s':>7} {'peak MiB':>9} {'inputs MiB':>10}")
    for res in results:
        for method in METHODS:
            if method in res:
                m = res[method]
                print(f"{res['nv']:>6}x{res['nr']:<6} {method:>10} {m['seconds']:>8.2f} {m['cpu_seconds']:>7.1f} "
                      f"{m['peak_rss_mib']:>9} {m['input_rss_mib']:>10}"
                      + (f"  GPU peak {m['peak_gpu_mib']} MiB on {m['device']}" if "peak_gpu_mib" in m else ""))
        if "max_abs_diff" in res:
            print(f"{'':>13} speed-up x{res['speedup']}, memory /{res['memory_ratio']}, "
                  f"max |diff| {max(res['max_abs_diff'].values()):.2e}")


def _size(text: str) -> tuple[int, int]:
    try:
        nv, nr = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 8000x4000, got {text!r}") from None
    return nv, nr


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=_size, nargs="+", default=[(8000, 4000), (22258, 11909)],
                        help="visible x infrared sample counts")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--eps", type=float, default=0.6, help="DBSCAN eps")
    parser.add_argument("--features", type=Path, default=None,
                        help="draw the features from this .npz of a trained model (benchmarks.extract_features) "
                             "instead of generating them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=("auto", "dense", "sparse"), default="auto",
                        help="mult_label_transfer method for ours")
    parser.add_argument("--reference-max-entries", type=float, default=8000 * 4000,
                        help="run the official dense algorithm only up to this many plan entries (Nv*Nr)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads in each child (default: torch's own choice, all cores)")
    parser.add_argument("--device", default="cpu",
                        help="where ours runs, e.g. cuda (the official re-statement always runs on CPU)")
    parser.add_argument("--out", type=Path, default=Path(".bench/label_transfer.json"))
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_child(args.child, args.work, args.method, args.threads, args.device)))
        return

    import torch

    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise SystemExit(f"--device {args.device}: no CUDA device here (torch {torch.__version__}); leave it at cpu")
    load_at_start = os.getloadavg()[0]
    results = [bench_size(nv, nr, args) for nv, nr in args.sizes]
    payload = {
        "benchmark": "label_transfer",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads or torch.get_num_threads(),
            "load_average_1m_at_start": load_at_start,
            "ours_on": args.device,
        },
        "results": results,
    }
    write_json(args.out, payload)
    _print_table(results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
