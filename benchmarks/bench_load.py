"""Load test of the serving stack: concurrent clients against a real local Triton (and the Gradio page), every
reply checked against in-process ONNX Runtime.

    python -m benchmarks.bench_load                                   # 16 gRPC clients x 60 s, ResNet-18 at 64x32
    python -m benchmarks.bench_load --page                            # + 8 page clients x 20 searches each
    python -m benchmarks.bench_load --repo model_repository --page    # an existing export instead of random weights
    python -m benchmarks.bench_load --clients 2 --seconds 5 --page --page-clients 2 --page-searches 2   # smoke

gRPC part: without ``--repo`` a random-init ResNet-18 at 64x32 (BN statistics re-estimated on SynthVI, as
``bench_serving --quick`` does) is exported with ``write_model_repository`` (parity-gated FP32). A real
``TritonServer`` serves it on 127.0.0.1. ``--clients`` threads, each with its own
``tritonclient.grpc.InferenceServerClient``, send requests for ``--seconds``: a share ``1 - --malformed`` are
valid (uint8 ``[B, H, W, 3]``, B in 1..8, SynthVI test images, either stem), the rest malformed, one kind at
random out of: wrong dtype, wrong rank, wrong H x W, batch 0, batch above the model's max_batch_size, unknown
model, unknown input tensor, byte count that does not match the shape. Valid batches and their embeddings are
computed before the load with ``OnnxEncoder`` on the same repository; a valid reply is right when its shape
matches and every row has cosine >= 0.9999 and max |diff| <= 1e-3 to it (the export's parity tolerances). A
success reply to a malformed request is a wrong answer; an error reply to a valid request is counted apart
("unexpected errors"). After the load a fresh client must still get correct embeddings from both models.

Page part (``--page``): a FAISS gallery of the SynthVI infrared test images is built with the local encoder,
``mult app --local REPO`` runs as a child process on a free 127.0.0.1 port, and ``--page-clients`` threads, each
with its own ``gradio_client.Client``, make ``--page-searches`` searches each (a share ``--page-malformed`` of
them malformed: no upload, or a text file). Each valid result's ranking must equal the one computed here from
the same encoder's embeddings (ties within 1e-4 may swap); a malformed one must come back as the page's warning
or a client error.

Reported: requests, valid replies, wrong answers, expected / unexpected errors, p50 / p99 latency of valid
requests, requests/s, and the resident memory (sum of VmRSS in MiB, shared pages counted in each process)
of the server's whole process tree (tritonserver + its python-backend stubs: all processes of its session),
resp. of the page process, sampled every 0.5 s: at the start of the load, its peak, and at the end. One JSON
file (``--out``, default ``.bench/load.json``) and a short table. Exit status 1 when any reply was wrong, any
valid request failed or the after-load check failed. ``--debug-corrupt-reference`` negates one reference row
(and reverses one expected ranking) on purpose: the run must then report wrong answers, which shows that the
checks can fail.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import numpy as np

from benchmarks.harness import REPO_ROOT, cpu_model, run_in_workdir
from mult.errors import MultError

MODALITIES = ("visible", "infrared")
MALFORMED_KINDS = ("wrong_dtype", "wrong_rank", "wrong_hw", "batch_0", "batch_over_max", "unknown_model",
                   "unknown_input", "byte_mismatch")
#: The export's parity tolerances (export/onnx_export.py): Triton runs the same model.onnx, so it must meet them.
MIN_COSINE = 0.9999
MAX_ABS = 1e-3
#: Page rankings: FAISS and numpy sum in different orders, so hits whose scores differ by less may swap places.
TIE_TOL = 1e-4
RSS_INTERVAL_S = 0.5
MAX_VALID_BATCH = 8
DIRECTIONS = {"visible": "visible → infrared", "infrared": "infrared → visible"}  # query stem -> page label
WARNING_PREFIX = "⚠️"


# ---- memory of a process tree -------------------------------------------------------------------------------


def session_rss_mib(sid: int) -> tuple[float, int]:
    """(sum of VmRSS in MiB, process count) over the live processes of session ``sid``."""
    from mult.serving.triton_server import session_processes

    total_kib, count = 0, 0
    for pid in session_processes(sid):
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total_kib += int(line.split()[1])
                        count += 1
                        break
        except OSError:  # exited between the listing and the read
            continue
    return total_kib / 1024.0, count


class RssSampler:
    """Samples :func:`session_rss_mib` every ``interval`` s in a thread between ``start()`` and ``stop()``."""

    def __init__(self, sid: int, interval: float = RSS_INTERVAL_S) -> None:
        self.sid, self.interval = sid, interval
        self.samples: list[tuple[float, float, int]] = []  # (seconds since start, MiB, processes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = 0.0

    def _sample(self) -> None:
        mib, count = session_rss_mib(self.sid)
        self.samples.append((time.monotonic() - self._t0, mib, count))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> "RssSampler":
        self._t0 = time.monotonic()
        self._sample()  # the start value is taken before any load
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        self._sample()  # the end value is taken after the last reply
        mib = [s[1] for s in self.samples]
        return {"start_mib": mib[0], "peak_mib": max(mib), "end_mib": mib[-1], "samples": len(mib),
                "processes": max(s[2] for s in self.samples), "interval_s": self.interval}


# ---- model, data, references --------------------------------------------------------------------------------


def synth_set(root: Path, height: int, width: int, args: argparse.Namespace) -> Path:
    """A tiny SynthVI set in SYSU-MM01 layout at the model's input size (pixels for requests and the gallery)."""
    from mult.data.synth import synthesize

    synthesize(root, "sysu", ids=args.synth_ids, test_ids=args.synth_test_ids,
               images_per_camera=args.synth_per_camera, height=height, width=width, seed=args.seed,
               workers=1, progress=False)  # one worker: this machine's other cores may be busy
    return root


def random_weight_repo(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """(model repository, SynthVI root): a random-init ResNet-18 at 64x32 exported as ``bench_serving --quick``."""
    from benchmarks.bench_serving import random_init_run
    from mult.export.repository import write_model_repository

    synth_root = synth_set(work / "synthvi", args.height, args.width, args)
    run = random_init_run(work / "run", SimpleNamespace(arch=args.arch, height=args.height, width=args.width,
                                                        seed=args.seed), synth_root)
    repo = work / "repo"
    write_model_repository(run, repo)  # FP32, flip on, parity-gated against torch
    return repo, synth_root


def synth_test_pixels(synth_root: Path, modality: str, height: int, width: int) -> tuple[list[str], np.ndarray]:
    """(paths, uint8 [N, H, W, 3]) of the SynthVI test images of one modality."""
    from mult.serving.encoders import load_resized
    from mult.serving.gallery import records_for_gallery

    paths = [r.path for r in records_for_gallery(dataset="sysu", data_root=synth_root, modality=modality)]
    return paths, load_resized(paths, height, width)


@dataclass
class PoolItem:
    modality: str
    images: np.ndarray  # uint8 [B, H, W, 3]
    reference: np.ndarray  # float32 [B, D] from in-process ONNX Runtime


def request_pool(local: Any, pixels: dict[str, np.ndarray], n: int, rng: np.random.Generator,
                 max_batch: int) -> list[PoolItem]:
    """``n`` valid batches per modality with their reference embeddings (computed once, before the load)."""
    pool = []
    for modality in MODALITIES:
        images = pixels[modality]
        for _ in range(n):
            b = int(rng.integers(1, min(MAX_VALID_BATCH, max_batch) + 1))
            batch = np.ascontiguousarray(images[rng.integers(0, len(images), size=b)])
            pool.append(PoolItem(modality, batch, local.encode_array(batch, modality)))
    return pool


def max_cross_cosine(embeddings: np.ndarray) -> float:
    """Highest cosine between embeddings of different images: below MIN_COSINE, a reply for the wrong image
    (or the wrong stem) cannot pass the check."""
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    sims = e @ e.T
    np.fill_diagonal(sims, -1.0)
    return float(sims.max())


def check_embeddings(got: Optional[np.ndarray], want: np.ndarray) -> Optional[str]:
    """None when ``got`` matches ``want`` within the parity tolerances, else why not."""
    if got is None:
        return "no 'embeddings' output in the reply"
    if got.shape != want.shape or got.dtype != np.float32:
        return f"reply {got.dtype} {list(got.shape)}, expected float32 {list(want.shape)}"
    if not np.isfinite(got).all():
        return "non-finite values in the reply"
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    diff = float(np.abs(got - want).max())
    if cos.min() < MIN_COSINE or diff > MAX_ABS:
        return f"min row cosine {cos.min():.6f}, max abs diff {diff:.2e}"
    return None


# ---- gRPC requests ------------------------------------------------------------------------------------------


def infer_input(name: str, array: np.ndarray, datatype: str):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp


def model_name(modality: str) -> str:
    from mult.export.layout import MODEL_NAMES
    from mult.data.records import Modality

    return MODEL_NAMES[Modality(modality)]


def malformed_request(kind: str, item: PoolItem, oversize: np.ndarray) -> tuple[str, list]:
    """(model name, inputs) of one malformed request of ``kind``, built from a valid batch."""
    from mult.export.layout import INPUT_NAME

    name, x = model_name(item.modality), item.images
    if kind == "wrong_dtype":
        return name, [infer_input(INPUT_NAME, x.astype(np.float32) / 255.0, "FP32")]
    if kind == "wrong_rank":
        return name, [infer_input(INPUT_NAME, np.ascontiguousarray(x[..., 0]), "UINT8")]
    if kind == "wrong_hw":
        return name, [infer_input(INPUT_NAME, np.ascontiguousarray(x[:, :-4, :, :]), "UINT8")]
    if kind == "batch_0":
        return name, [infer_input(INPUT_NAME, x[:0], "UINT8")]
    if kind == "batch_over_max":
        return name, [infer_input(INPUT_NAME, oversize, "UINT8")]
    if kind == "unknown_model":
        return "mult_no_such_model", [infer_input(INPUT_NAME, x, "UINT8")]
    if kind == "unknown_input":
        return name, [infer_input("pixels", x, "UINT8")]
    if kind == "byte_mismatch":  # the shape claims one image more than the bytes hold
        inp = infer_input(INPUT_NAME, x, "UINT8")
        inp.set_shape([len(x) + 1, *x.shape[1:]])
        return name, [inp]
    raise ValueError(kind)


@dataclass
class Tally:
    """One client's counts; merged after the run so threads never share a lock on the hot path."""

    sent: int = 0
    valid: int = 0
    valid_ok: int = 0
    malformed: int = 0
    wrong: int = 0
    expected_errors: int = 0
    unexpected_errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    images: int = 0
    kinds: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    corrupted_uses: int = 0

    def note(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text)

    def merge(self, other: "Tally") -> None:
        for key in ("sent", "valid", "valid_ok", "malformed", "wrong", "expected_errors", "unexpected_errors",
                    "images", "corrupted_uses"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.latencies_s += other.latencies_s
        self.kinds.update(other.kinds)
        self.statuses.update(other.statuses)
        for text in other.examples:
            self.note(text)


def error_status(err: Exception) -> str:
    status = getattr(err, "status", None)
    return (status() if callable(status) else None) or type(err).__name__


def grpc_client_loop(url: str, pool: list[PoolItem], oversize: np.ndarray, args: argparse.Namespace, seed: int,
                     barrier: threading.Barrier, deadline: list[float], corrupted: set[int]) -> Tally:
    """One client thread: valid and malformed requests until the shared deadline, every reply checked."""
    import tritonclient.grpc as grpcclient

    from mult.export.layout import INPUT_NAME, OUTPUT_NAME

    rng = np.random.default_rng(seed)
    tally = Tally()
    client = grpcclient.InferenceServerClient(url)
    outputs = [grpcclient.InferRequestedOutput(OUTPUT_NAME)]
    try:
        barrier.wait()
        while time.perf_counter() < deadline[0]:
            index = int(rng.integers(len(pool)))
            item = pool[index]
            tally.sent += 1
            if rng.random() >= args.malformed:
                tally.valid += 1
                tally.corrupted_uses += index in corrupted
                inputs = [infer_input(INPUT_NAME, item.images, "UINT8")]
                start = time.perf_counter()
                try:
                    reply = client.infer(model_name(item.modality), inputs, outputs=outputs,
                                         client_timeout=args.timeout)
                except Exception as err:  # any failure of a valid request is a finding, not a crash
                    tally.unexpected_errors += 1
                    tally.note(f"valid {item.modality} batch {len(item.images)}: error {error_status(err)}: "
                               f"{str(err).splitlines()[0][:200] if str(err) else ''}")
                    continue
                tally.latencies_s.append(time.perf_counter() - start)
                problem = check_embeddings(reply.as_numpy(OUTPUT_NAME), item.reference)
                if problem is None:
                    tally.valid_ok += 1
                    tally.images += len(item.images)
                else:
                    tally.wrong += 1
                    tally.note(f"valid {item.modality} batch {len(item.images)} (pool item {index}): {problem}")
            else:
                kind = MALFORMED_KINDS[int(rng.integers(len(MALFORMED_KINDS)))]
                tally.malformed += 1
                tally.kinds[kind] += 1
                name, inputs = malformed_request(kind, item, oversize)
                try:
                    client.infer(name, inputs, outputs=outputs, client_timeout=args.timeout)
                except Exception as err:
                    tally.expected_errors += 1
                    tally.statuses[f"{kind}: {error_status(err)}"] += 1
                else:
                    tally.wrong += 1
                    tally.note(f"malformed {kind} got a success reply")
    finally:
        client.close()
    return tally


def after_load_check(url: str, checks: list[PoolItem]) -> dict[str, Any]:
    """A fresh client: server live, both models ready, and correct embeddings from both stems."""
    import tritonclient.grpc as grpcclient

    from mult.export.layout import INPUT_NAME, OUTPUT_NAME

    client = grpcclient.InferenceServerClient(url)
    try:
        live = bool(client.is_server_live(client_timeout=10))
        problems = []
        for item in checks:
            name = model_name(item.modality)
            try:
                ready = client.is_model_ready(name, client_timeout=10)
                reply = client.infer(name, [infer_input(INPUT_NAME, item.images, "UINT8")], client_timeout=30)
                problem = None if ready else "model not ready"
                problem = problem or check_embeddings(reply.as_numpy(OUTPUT_NAME), item.reference)
            except Exception as err:
                problem = f"error {error_status(err)}"
            if problem:
                problems.append(f"{item.modality}: {problem}")
        return {"ok": live and not problems, "server_live": live, "problems": problems}
    except Exception as err:
        return {"ok": False, "server_live": False, "problems": [f"error {error_status(err)}"]}
    finally:
        client.close()


def latency_summary(latencies_s: list[float]) -> dict[str, Optional[float]]:
    if not latencies_s:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ms = np.asarray(latencies_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def grpc_part(repo: Path, local: Any, pixels: dict[str, np.ndarray], args: argparse.Namespace) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient

    from mult.serving.triton_server import TritonServer

    rng = np.random.default_rng(args.seed)
    with TritonServer(repo) as server:
        probe = grpcclient.InferenceServerClient(server.url)
        try:  # the served limit, not the export's: a --repo may say anything
            max_batch = min(int(probe.get_model_config(model_name(m), as_json=True)["config"]["max_batch_size"])
                            for m in MODALITIES)
        finally:
            probe.close()
        pool = request_pool(local, pixels, args.pool, rng, max_batch)
        checks = request_pool(local, pixels, 1, np.random.default_rng(args.seed + 1), max_batch)  # never corrupted
        corrupted: set[int] = set()
        if args.debug_corrupt_reference:  # one row of the first batch of each modality: its replies must fail
            for modality in MODALITIES:
                index = next(i for i, item in enumerate(pool) if item.modality == modality)
                pool[index].reference[0] = -pool[index].reference[0]
                corrupted.add(index)
        oversize = np.ascontiguousarray(pixels["visible"][np.arange(max_batch + 1) % len(pixels["visible"])])
        distinct = {m: max_cross_cosine(local.encode_array(pixels[m], m)) for m in MODALITIES}
        print(f"Triton ready in {server.startup_s:.1f} s at {server.url} (max_batch_size {max_batch}); "
              f"{args.clients} clients x {args.seconds:g} s", flush=True)

        sampler = RssSampler(server.pid).start()  # the server runs in its own session: pid == session id
        barrier = threading.Barrier(args.clients + 1)
        deadline = [float("inf")]
        results: list[Optional[Tally]] = [None] * args.clients
        failures: list[str] = []

        def run_client(i: int) -> None:
            try:
                results[i] = grpc_client_loop(server.url, pool, oversize, args, args.seed + 100 + i, barrier, deadline,
                                              corrupted)
            except BaseException as err:  # noqa: BLE001 (reported, and counted as a failed run)
                failures.append(f"client {i}: {type(err).__name__}: {err}")
                barrier.abort()

        threads = [threading.Thread(target=run_client, args=(i,), name=f"grpc-client-{i}") for i in range(args.clients)]
        for t in threads:
            t.start()
        deadline[0] = time.perf_counter() + args.seconds  # set before the barrier opens: every client sees it
        started = time.perf_counter()
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        rss = sampler.stop()
        after = after_load_check(server.url, checks)
        server_alive = server.running()

    total = Tally()
    for tally in results:
        if tally is not None:
            total.merge(tally)
    return {
        "clients": args.clients, "seconds": args.seconds, "wall_s": wall,
        "max_batch_size": max_batch, "pool_batches": len(pool),
        "requests": total.sent, "valid_requests": total.valid, "valid_replies": total.valid_ok,
        "malformed_requests": total.malformed, "wrong_answers": total.wrong,
        "expected_errors": total.expected_errors, "unexpected_errors": total.unexpected_errors,
        "requests_per_s": total.sent / wall, "valid_per_s": total.valid / wall, "images_per_s": total.images / wall,
        "latency_valid": latency_summary(total.latencies_s),
        "malformed_by_kind": dict(sorted(total.kinds.items())),
        "error_statuses": dict(sorted(total.statuses.items())),
        "examples": total.examples, "client_failures": failures,
        "max_cosine_between_images": distinct,
        "debug_corrupted_uses": total.corrupted_uses if args.debug_corrupt_reference else None,
        "after_load": after, "server_alive_after": server_alive,
        "rss": rss,
    }


# ---- the Gradio page ----------------------------------------------------------------------------------------


@dataclass
class Query:
    path: str
    modality: str  # the stem the page sends it through
    want_ids: list[int]
    want_scores: list[float]
    scores_by_id: dict[int, float]  # every rankable gallery image's score, to tell ties from mistakes


def expected_queries(local: Any, gallery_dir: Path, synth_root: Path, top_k: int, n: int) -> list[Query]:
    """Queries (visible test photos through the visible stem, infrared ones through the infrared stem) and the
    rankings computed here: the same encoder's embeddings, dot products and a stable argsort, no FAISS."""
    from mult.serving.gallery import Gallery, records_for_gallery

    records = Gallery.open(gallery_dir).records
    gallery = np.zeros((len(records), local.embedding_size), np.float32)
    for modality in MODALITIES:
        rows = [i for i, r in enumerate(records) if r.modality.value == modality]
        if rows:
            gallery[rows] = local.encode([records[i].path for i in rows], modality)
    held = Counter(r.modality.value for r in records)
    candidates = {m: [r.path for r in records_for_gallery(dataset="sysu", data_root=synth_root, modality=m)]
                  for m in MODALITIES}
    queries: list[Query] = []
    for k in range(n):
        modality = MODALITIES[k % 2]
        paths = candidates[modality]
        path = paths[(k // 2) * 7 % len(paths)]  # spread over people and cameras
        target = "infrared" if modality == "visible" else "visible"
        # the page ranks the other modality's images, or the whole gallery when it holds one modality only
        rows = np.array([i for i, r in enumerate(records) if len(held) < 2 or held[target] == 0
                         or r.modality.value == target])
        q = local.encode([path], modality)[0]
        scores = gallery[rows] @ q / (np.linalg.norm(gallery[rows], axis=1) * np.linalg.norm(q))
        order = np.argsort(-scores, kind="stable")[:top_k]
        queries.append(Query(path, modality, rows[order].tolist(), scores[order].tolist(),
                             dict(zip(rows.tolist(), scores.tolist()))))
    return queries


def ranking_problem(hits: Any, query: Query) -> Optional[str]:
    """None when the page's hits are the expected ranking (near-ties may swap), else why not."""
    if not isinstance(hits, list):
        return f"hits are {type(hits).__name__}, not a list"
    got = [int(h["id"]) for h in hits]
    if got == query.want_ids:
        return None
    if len(got) != len(query.want_ids):
        return f"{len(got)} hits, expected {len(query.want_ids)}"
    for position, (gid, want_score, hit) in enumerate(zip(got, query.want_scores, hits), start=1):
        score = query.scores_by_id.get(gid)
        if score is None or abs(score - want_score) > TIE_TOL or abs(float(hit["score"]) - score) > TIE_TOL:
            return f"rank {position}: id {gid}, expected id {query.want_ids[position - 1]} ({got} vs {query.want_ids})"
    return None


def start_page(gallery_dir: Path, repo: Path, top_k: int, log_path: Path,
               timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``mult app --local REPO`` in its own session on a free 127.0.0.1 port; returns once its config answers."""
    import httpx

    from mult.processes import popen_tied
    from mult.serving.triton_server import free_port

    port = free_port("127.0.0.1")
    cmd = [sys.executable, "-m", "mult", "app", "--index", str(gallery_dir), "--local", str(repo),
           "--host", "127.0.0.1", "--port", str(port), "--top-k", str(top_k)]
    with open(log_path, "ab") as log:  # tied: the page dies with this process even when no finally runs
        proc = popen_tied(cmd, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                          start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise MultError(f"`mult app` exited with code {proc.returncode} while starting; log {log_path}")
        try:
            if httpx.get(url + "config", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            stop_page(proc)
            raise MultError(f"`mult app` did not answer within {timeout:.0f} s; log {log_path}")
        time.sleep(0.5)


def stop_page(proc: subprocess.Popen) -> None:
    """SIGTERM the page's session (it stops cleanly on it), SIGKILL it when it does not exit in 15 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass


def page_search(client: Any, upload: Optional[str], direction: str, timeout: float) -> tuple[Any, str, Any]:
    from gradio_client import handle_file

    job = client.submit(None if upload is None else handle_file(upload), direction, api_name="/search")
    _tiles, status, hits = job.result(timeout=timeout)
    return _tiles, status, hits


def page_client_loop(url: str, queries: list[Query], not_image: Path, downloads: Path, index: int,
                     args: argparse.Namespace, barrier: threading.Barrier, corrupted: set[int]) -> Tally:
    from gradio_client import Client

    rng = np.random.default_rng(args.seed + 1000 + index)
    tally = Tally()
    client = Client(url, verbose=False, analytics_enabled=False, download_files=str(downloads))
    try:
        barrier.wait()
        for s in range(args.page_searches):
            tally.sent += 1
            if rng.random() < args.page_malformed:
                kind = ("no_upload", "not_an_image")[s % 2]
                tally.malformed += 1
                tally.kinds[kind] += 1
                try:
                    _, status, hits = page_search(client, None if kind == "no_upload" else str(not_image),
                                                  DIRECTIONS["visible"], args.timeout)
                except Exception as err:  # Gradio refusing the request is an error reply too
                    tally.expected_errors += 1
                    tally.statuses[f"{kind}: {type(err).__name__}"] += 1
                    continue
                if str(status).startswith(WARNING_PREFIX) and not hits:
                    tally.expected_errors += 1
                    tally.statuses[f"{kind}: page warning"] += 1
                else:
                    tally.wrong += 1
                    tally.note(f"malformed {kind} got results: {str(status)[:120]}")
                continue
            qi = (index + s) % len(queries)  # round robin: every query (the corrupted one too) is used
            query = queries[qi]
            tally.valid += 1
            tally.corrupted_uses += qi in corrupted
            start = time.perf_counter()
            try:
                _, status, hits = page_search(client, query.path, DIRECTIONS[query.modality], args.timeout)
            except Exception as err:
                tally.unexpected_errors += 1
                tally.note(f"query {qi}: {type(err).__name__}: {str(err)[:200]}")
                continue
            tally.latencies_s.append(time.perf_counter() - start)
            if str(status).startswith(WARNING_PREFIX):
                tally.unexpected_errors += 1
                tally.note(f"query {qi}: page warning {str(status)[:200]}")
                continue
            problem = ranking_problem(hits, query)
            if problem is None:
                tally.valid_ok += 1
            else:
                tally.wrong += 1
                tally.note(f"query {qi} ({query.modality}): {problem}")
    finally:
        client.close()
    return tally


def page_part(repo: Path, local: Any, synth_root: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from mult.serving.gallery_commands import index_build

    gallery_dir = work / "gallery"
    if gallery_dir.exists():
        shutil.rmtree(gallery_dir)
    report = index_build(local, gallery_dir, dataset="sysu", data_root=synth_root, modality="infrared",
                         progress=False)
    gallery_images = report.added
    queries = expected_queries(local, gallery_dir, synth_root, args.top_k, args.page_queries)
    corrupted: set[int] = set()
    if args.debug_corrupt_reference:  # reversed: the page's (right) answer for query 0 must count as wrong
        queries[0].want_ids.reverse()
        queries[0].want_scores.reverse()
        corrupted.add(0)
    not_image = work / "notes.txt"
    not_image.write_text("this is not an image\n")
    proc, url = start_page(gallery_dir, repo, args.top_k, work / "app.log")
    try:
        print(f"page ready at {url}; {args.page_clients} clients x {args.page_searches} searches", flush=True)
        sampler = RssSampler(proc.pid).start()
        barrier = threading.Barrier(args.page_clients + 1)
        results: list[Optional[Tally]] = [None] * args.page_clients
        failures: list[str] = []

        def run_client(i: int) -> None:
            downloads = work / f"downloads-{i}"
            downloads.mkdir(exist_ok=True)
            try:
                results[i] = page_client_loop(url, queries, not_image, downloads, i, args, barrier, corrupted)
            except BaseException as err:  # noqa: BLE001 (reported, and counted as a failed run)
                failures.append(f"client {i}: {type(err).__name__}: {err}")
                barrier.abort()

        threads = [threading.Thread(target=run_client, args=(i,), name=f"page-client-{i}")
                   for i in range(args.page_clients)]
        for t in threads:
            t.start()
        try:
            barrier.wait()  # clients connect (fetch the page config) before the clock starts
        except threading.BrokenBarrierError:
            pass
        started = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        rss = sampler.stop()
        after = page_after_check(url, queries, corrupted, work, args)
        alive = proc.poll() is None
    finally:
        stop_page(proc)
    total = Tally()
    for tally in results:
        if tally is not None:
            total.merge(tally)
    return {
        "clients": args.page_clients, "searches_per_client": args.page_searches, "wall_s": wall,
        "gallery_images": gallery_images,
        "queries": len(queries), "top_k": args.top_k,
        "searches": total.sent, "valid_searches": total.valid, "valid_results": total.valid_ok,
        "malformed_searches": total.malformed, "wrong_answers": total.wrong,
        "expected_errors": total.expected_errors, "unexpected_errors": total.unexpected_errors,
        "searches_per_s": total.sent / wall, "latency_valid": latency_summary(total.latencies_s),
        "malformed_by_kind": dict(sorted(total.kinds.items())), "error_statuses": dict(sorted(total.statuses.items())),
        "examples": total.examples, "client_failures": failures,
        "debug_corrupted_uses": total.corrupted_uses if args.debug_corrupt_reference else None,
        "after_load": after, "page_alive_after": alive, "rss": rss,
    }


def page_after_check(url: str, queries: list[Query], corrupted: set[int], work: Path,
                     args: argparse.Namespace) -> dict[str, Any]:
    """A fresh client after the load: one search per stem must still give the expected ranking."""
    from gradio_client import Client

    downloads = work / "downloads-after"
    downloads.mkdir(exist_ok=True)
    problems = []
    try:
        client = Client(url, verbose=False, analytics_enabled=False, download_files=str(downloads))
    except Exception as err:
        return {"ok": False, "problems": [f"cannot connect: {type(err).__name__}"]}
    try:
        for modality in MODALITIES:
            qi, query = next((i, q) for i, q in enumerate(queries) if q.modality == modality and i not in corrupted)
            try:
                _, status, hits = page_search(client, query.path, DIRECTIONS[modality], args.timeout)
                problem = (f"warning {str(status)[:120]}" if str(status).startswith(WARNING_PREFIX)
                           else ranking_problem(hits, query))
            except Exception as err:
                problem = f"{type(err).__name__}: {str(err)[:120]}"
            if problem:
                problems.append(f"query {qi}: {problem}")
    finally:
        client.close()
    return {"ok": not problems, "problems": problems}


# ---- the run ------------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("onnxruntime", "tritonclient", "nvidia-pytriton", "gradio", "gradio_client", "faiss-cpu"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from mult.serving.onnx_local import OnnxEncoder

    load_start = os.getloadavg()
    started = time.perf_counter()
    if args.repo is None:
        repo, synth_root = random_weight_repo(work, args)
        source = f"random-init {args.arch} (BN re-estimated on SynthVI)"
    else:
        repo, synth_root, source = args.repo, None, str(args.repo)
    with OnnxEncoder(repo, batch_size=64) as local:
        if synth_root is None:  # the pixels must be at the repository's input size
            synth_root = synth_set(work / "synthvi", local.height, local.width, args)
        pixels = {m: synth_test_pixels(synth_root, m, local.height, local.width)[1] for m in MODALITIES}
        print(f"model {source}: {local.height}x{local.width} -> {local.embedding_size}, version {local.version}; "
              f"prepared in {time.perf_counter() - started:.0f} s", flush=True)
        grpc = grpc_part(Path(repo), local, pixels, args)
        page = page_part(Path(repo), local, synth_root, work, args) if args.page else None
        height, width, dim, version = local.height, local.width, local.embedding_size, local.version
    return {
        "benchmark": "load",
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
                    "cpus": os.cpu_count(),
                    # 1-minute load average before and after: above ~0.5 another process shared the CPUs.
                    "loadavg_start": load_start[0], "loadavg_end": os.getloadavg()[0]},
        "versions": versions(),
        "settings": {"model": source, "height": height, "width": width, "embedding_size": dim, "version": version,
                     "clients": args.clients, "seconds": args.seconds, "malformed": args.malformed,
                     "pool": args.pool, "timeout_s": args.timeout, "page": args.page,
                     "page_clients": args.page_clients, "page_searches": args.page_searches,
                     "page_malformed": args.page_malformed, "page_queries": args.page_queries, "top_k": args.top_k,
                     "synth": {"ids": args.synth_ids, "test_ids": args.synth_test_ids,
                               "images_per_camera": args.synth_per_camera},
                     "tolerances": {"min_cosine": MIN_COSINE, "max_abs": MAX_ABS, "page_tie": TIE_TOL},
                     "debug_corrupt_reference": args.debug_corrupt_reference, "seed": args.seed},
        "grpc": grpc,
        "page": page,
    }


def passed(result: dict[str, Any]) -> bool:
    parts = [p for p in (result["grpc"], result["page"]) if p is not None]
    return all(p["wrong_answers"] == 0 and p["unexpected_errors"] == 0 and not p["client_failures"]
               and p["after_load"]["ok"] for p in parts)


def render(result: dict[str, Any]) -> str:
    s, m, g, p = result["settings"], result["machine"], result["grpc"], result["page"]

    def ms(value: Optional[float]) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [f"{s['model']} at {s['height']}x{s['width']}; {m['cpus']} CPUs ({m['cpu']}), load average "
             f"{m['loadavg_start']:.1f} -> {m['loadavg_end']:.1f}", ""]
    lines.append(f"{'part':<8}{'clients':>8}{'sent':>8}{'valid ok':>10}{'wrong':>7}{'err exp':>9}{'err unexp':>11}"
                 f"{'p50 ms':>9}{'p99 ms':>9}{'req/s':>8}{'RSS MiB start/peak/end':>25}")

    def row(name: str, part: dict[str, Any], sent: str, ok: str, per_s: str) -> str:
        r = part["rss"]
        return (f"{name:<8}{part['clients']:>8}{part[sent]:>8}{part[ok]:>10}"
                f"{part['wrong_answers']:>7}{part['expected_errors']:>9}{part['unexpected_errors']:>11}"
                f"{ms(part['latency_valid']['p50_ms']):>9}{ms(part['latency_valid']['p99_ms']):>9}{part[per_s]:>8.1f}"
                f"{r['start_mib']:>11.0f} / {r['peak_mib']:.0f} / {r['end_mib']:.0f}")

    lines.append(row("gRPC", g, "requests", "valid_replies", "requests_per_s"))
    if p is not None:
        lines.append(row("page", p, "searches", "valid_results", "searches_per_s"))
    lines.append("")
    distinct = ", ".join(f"{k} {v:.4f}" for k, v in g["max_cosine_between_images"].items())
    lines.append(f"gRPC: {g['valid_requests']} valid ({g['images_per_s']:.1f} images/s), {g['malformed_requests']} "
                 f"malformed {g['malformed_by_kind']}; server tree {g['rss']['processes']} processes; max cosine "
                 f"between different images {distinct}")

    def after(part: dict[str, Any]) -> str:
        return "ok" if part["after_load"]["ok"] else f"FAILED {part['after_load']['problems']}"

    lines.append(f"gRPC after the load: {after(g)}")
    if p is not None:
        lines.append(f"page: gallery {p['gallery_images']} images, {p['queries']} queries, top {p['top_k']}; "
                     f"{p['malformed_searches']} malformed {p['malformed_by_kind']}")
        lines.append(f"page after the load: {after(p)}")
    for name, part in (("gRPC", g), ("page", p)):
        if part is None:
            continue
        if part["debug_corrupted_uses"] is not None:
            lines.append(f"{name} debug: {part['debug_corrupted_uses']} valid requests used a corrupted reference")
        for text in part["examples"] + part["client_failures"]:
            lines.append(f"{name} note: {text}")
    lines.append("")
    lines.append("PASS: every reply checked and right" if passed(result) else
                 "FAIL: wrong answers, errors to valid requests, or the after-load check failed")
    return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".bench/load.json"), help="JSON result path")
    parser.add_argument("--repo", type=Path, default=None, help="serve this model repository (default: export a "
                        "random-init ResNet-18 at 64x32)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent gRPC clients (threads)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the gRPC clients send")
    parser.add_argument("--malformed", type=float, default=0.2, help="share of malformed gRPC requests")
    parser.add_argument("--pool", type=int, default=64, help="precomputed valid batches per modality")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request / search (s)")
    parser.add_argument("--page", action="store_true", help="also load the Gradio search page")
    parser.add_argument("--page-clients", type=int, default=8, help="concurrent page clients (threads)")
    parser.add_argument("--page-searches", type=int, default=20, help="searches per page client")
    parser.add_argument("--page-malformed", type=float, default=0.1, help="share of malformed page searches")
    parser.add_argument("--page-queries", type=int, default=16, help="distinct query images (both stems)")
    parser.add_argument("--top-k", type=int, default=10, help="hits per page search")
    parser.add_argument("--synth-ids", type=int, default=12, help="SynthVI identities (pixels and gallery)")
    parser.add_argument("--synth-test-ids", type=int, default=6, help="SynthVI test identities (the gallery's)")
    parser.add_argument("--synth-per-camera", type=int, default=3, help="SynthVI images per identity and camera")
    parser.add_argument("--debug-corrupt-reference", action="store_true",
                        help="negate one reference row per modality and reverse one expected ranking: the run "
                             "must report wrong answers (proves the checks can fail)")
    parser.add_argument("--work", type=Path, default=None, help="keep the export, data and logs here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.arch, args.height, args.width = "resnet18", 64, 32  # bench_serving --quick's model
    if min(args.clients, args.pool, args.page_clients, args.page_searches, args.page_queries, args.top_k) < 1:
        parser.error("clients, pool, page clients, searches, queries and --top-k must be >= 1")
    if args.seconds <= 0 or args.timeout <= 0:
        parser.error("--seconds and --timeout must be > 0")
    if not (0 <= args.malformed <= 1 and 0 <= args.page_malformed <= 1):
        parser.error("--malformed and --page-malformed are shares between 0 and 1")
    if args.page_queries < 2:
        parser.error("--page-queries must be >= 2 (one per stem)")
    if args.repo is not None and not args.repo.is_dir():
        parser.error(f"--repo {args.repo}: not a model repository folder")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    return run_in_workdir("bench_load", parse_args(argv), run, render, passed)


if __name__ == "__main__":
    sys.exit(main())
