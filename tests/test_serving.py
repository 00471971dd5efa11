"""A real local Triton server (nvidia-pytriton's binary, python backend + ONNX Runtime) and the encoder clients.

One server is started per module on free 127.0.0.1 ports over a tiny export (ResNet-18 at 64x32); its answers
are compared with in-process ONNX Runtime and with the eager torch model on the same image files.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mult.errors import MultError, ServerUnavailable
from mult.export.onnx_export import export_onnx
from mult.serving.encoders import load_resized, open_encoder
from mult.serving.onnx_local import OnnxEncoder
from mult.serving.python_backend_model import request_problem, split_rows
from mult.serving.triton_client import TritonEncoder
from mult.serving.triton_server import MODEL_TEMPLATE, TritonServer, build_runtime_repository, free_port, serve

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODALITIES = ("visible", "infrared")


# ---- helpers -------------------------------------------------------------------------------------------


def _sessions() -> dict[int, list[int]]:
    """session id -> live pids, from /proc (independent of the code under test)."""
    table: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, _ppid, _pgrp, sid = stat[stat.rfind(")") + 2:].split()[:4]
            if state != "Z":
                table.setdefault(int(sid), []).append(int(entry.name))
    return table


def _cmdlines_containing(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _stats(client, name: str) -> tuple[int, int]:
    """(successful requests, model executions) summed over the served versions."""
    stats = client.get_inference_statistics(name, as_json=True)["model_stats"]
    # protobuf's JSON leaves out zero counters, so a model not yet asked has no "count" at all
    return (sum(int(s.get("inference_stats", {}).get("success", {}).get("count", 0)) for s in stats),
            sum(int(s.get("execution_count", 0)) for s in stats))


def _raw_infer(client, array: np.ndarray, datatype: str, name: str = "mult_visible") -> np.ndarray:
    inp = grpcclient.InferInput("images", list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return client.infer(name, [inp], client_timeout=20).as_numpy("embeddings")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    """7 files in several formats and sizes (none at the model's 64x32), one grey like an infrared frame."""
    folder = tmp_path_factory.mktemp("serving_images")
    rng = np.random.default_rng(5)
    paths = []
    for k, (w, h, ext, mode) in enumerate([(20, 40, "png", "RGB"), (50, 100, "jpg", "RGB"), (33, 71, "bmp", "L"),
                                           (64, 128, "png", "RGB"), (16, 30, "webp", "RGB"), (90, 90, "png", "RGB"),
                                           (31, 65, "jpg", "L")]):
        # Smooth-ish content (low-res noise upsampled) so resizing matters but stays well conditioned.
        base = rng.integers(0, 256, size=(max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC).convert(mode)
        paths.append(str(folder / f"img{k}.{ext}"))
        img.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def local(tiny_export) -> OnnxEncoder:
    return OnnxEncoder(tiny_export.repo)


@pytest.fixture(scope="module")
def server(tiny_export):
    with TritonServer(tiny_export.repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def remote(server):
    with TritonEncoder(server.url) as enc:
        yield enc


# ---- pieces without a server ---------------------------------------------------------------------------


def test_load_resized_is_the_eval_transform(image_files, tiny_export):
    """The clients' resize gives exactly the pixels torch evaluation sees (eval_transform = Resize + ToTensor)."""
    import torch

    from mult.data.images import load_image
    from mult.data.transforms import eval_transform

    h, w = tiny_export.height, tiny_export.width
    got = load_resized(image_files, h, w)
    assert got.dtype == np.uint8 and got.shape == (len(image_files), h, w, 3)
    transform = eval_transform(h, w)
    want = torch.stack([transform(load_image(p)) for p in image_files])  # [N, 3, H, W] floats = uint8 / 255
    assert np.array_equal(got, (want * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def test_request_problem_and_split_rows():
    shape = (4, 2, 3)
    assert request_problem(np.zeros((2, 4, 2, 3), np.uint8), shape) is None
    assert "UINT8" in request_problem(np.zeros((2, 4, 2, 3), np.float32), shape)
    assert "[N, 4, 2, 3], got [1, 4, 2, 4]" in request_problem(np.zeros((1, 4, 2, 4), np.uint8), shape)
    assert "got [4, 2, 3]" in request_problem(np.zeros((4, 2, 3), np.uint8), shape)
    assert "batch of 0" in request_problem(np.zeros((0, 4, 2, 3), np.uint8), shape)
    assert "missing" in request_problem(None, shape)
    parts = split_rows(np.arange(12).reshape(6, 2), [1, 3, 2])
    assert [p[:, 0].tolist() for p in parts] == [[0], [2, 4, 6], [8, 10]]


def test_serving_side_runs_without_torch():
    """A search box needs the ONNX files, Triton, FAISS and the page, not the training stack: importing the
    serving and app modules must not load torch (DESIGN.md: data flows one way, export -> serving)."""
    import subprocess
    import sys

    modules = ["mult.serving.triton_server", "mult.serving.triton_client", "mult.serving.onnx_local",
               "mult.serving.encoders", "mult.serving.gallery_commands", "mult.cli.search", "mult.app.search_page"]
    code = f"import sys; import {', '.join(modules)}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_runtime_repository(tiny_export, tmp_path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    out = build_runtime_repository(tiny_export.repo, tmp_path / "runtime")
    assert sorted(p.name for p in out.iterdir()) == ["mult_infrared", "mult_visible"]  # no staging folders left
    for name in ("mult_visible", "mult_infrared"):
        cfg = text_format.Parse((out / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert cfg.name == name and cfg.backend == "python" and not cfg.platform
        assert cfg.max_batch_size == 64 and cfg.dynamic_batching.max_queue_delay_microseconds == 100
        assert cfg.version_policy.HasField("all")
        (inp,), (outp,) = cfg.input, cfg.output
        assert (inp.name, inp.data_type, list(inp.dims)) == ("images", model_config_pb2.TYPE_UINT8, [64, 32, 3])
        assert (outp.name, outp.data_type, list(outp.dims)) == ("embeddings", model_config_pb2.TYPE_FP32, [512])
        assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
        served = out / name / "1" / "model.onnx"
        assert served.is_symlink() or served.stat().st_ino == (tiny_export.repo / name / "1" / "model.onnx").stat().st_ino
        assert served.resolve().read_bytes() == (tiny_export.repo / name / "1" / "model.onnx").read_bytes()
        assert (out / name / "1" / "model.py").read_text() == MODEL_TEMPLATE.read_text()


def test_runtime_repository_versions(tiny_export, tmp_path):
    """All versions by default, the newest with 'latest'; an older version of another input size is left out."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny_export.repo, repo, copy_function=os.link)
    for name in ("mult_visible", "mult_infrared"):
        shutil.copytree(repo / name / "1", repo / name / "2", copy_function=os.link)
    out = build_runtime_repository(repo, tmp_path / "all")
    assert sorted(p.name for p in (out / "mult_infrared").iterdir()) == ["1", "2", "config.pbtxt"]
    out = build_runtime_repository(repo, tmp_path / "latest", version_policy="latest")
    assert sorted(p.name for p in (out / "mult_infrared").iterdir()) == ["2", "config.pbtxt"]
    assert "latest" in (out / "mult_infrared" / "config.pbtxt").read_text()
    (repo / "mult_visible" / "1" / "model.onnx").unlink()
    export_onnx(tiny_export.model, "visible", repo / "mult_visible" / "1" / "model.onnx", height=32, width=16)
    with pytest.warns(UserWarning, match=r"mult_visible/1 \(32x16->512"):
        out = build_runtime_repository(repo, tmp_path / "mixed")
    assert sorted(p.name for p in (out / "mult_visible").iterdir()) == ["2", "config.pbtxt"]
    with pytest.raises(MultError, match="version policy"):
        build_runtime_repository(repo, tmp_path / "x", version_policy="newest")


def test_invalid_repositories(tiny_export, tmp_path):
    with pytest.raises(MultError, match="no model repository here"):
        build_runtime_repository(tmp_path / "nowhere", tmp_path / "rt")
    repo = tmp_path / "repo"
    shutil.copytree(tiny_export.repo, repo)
    shutil.rmtree(repo / "mult_infrared")
    with pytest.raises(MultError, match="mult_infrared is missing"):
        build_runtime_repository(repo, tmp_path / "rt")
    (repo / "mult_infrared" / "notes").mkdir(parents=True)
    with pytest.raises(MultError, match="no numeric version folder"):
        build_runtime_repository(repo, tmp_path / "rt")
    shutil.copytree(tiny_export.repo / "mult_infrared" / "1", repo / "mult_infrared" / "1")
    (repo / "mult_infrared" / "1" / "model.onnx").write_bytes(b"\x08\x07not a protobuf at all")
    with pytest.raises(MultError, match=r"mult_infrared/1/model.onnx: ONNX Runtime cannot load it") as err:
        build_runtime_repository(repo, tmp_path / "rt")
    assert "\n" not in str(err.value)
    server = TritonServer(repo)
    with pytest.raises(MultError, match="ONNX Runtime cannot load it"):
        server.start()
    assert server.pid is None and not server.running()
    with pytest.raises(MultError, match="ONNX Runtime cannot load it"):
        OnnxEncoder(repo)
    with pytest.raises(MultError, match="outside the export"):
        build_runtime_repository(tiny_export.repo, tiny_export.repo / "runtime")


def test_model_that_fails_to_load_gives_the_log_line(tiny_export, tmp_path, monkeypatch):
    """A model.py that raises at load: Triton exits, the error quotes its log line, nothing is left running."""
    import mult.serving.runtime_repository as triton_server

    broken = tmp_path / "model.py"
    broken.write_text('raise RuntimeError("boom from model.py")\n')
    monkeypatch.setattr(triton_server, "MODEL_TEMPLATE", broken)
    server = TritonServer(tiny_export.repo, log_file=tmp_path / "triton.log")
    before = set(_cmdlines_containing("mult-triton-"))
    with pytest.raises(MultError, match=r"Triton exited with code \d+ while starting .*triton.log: .*failed to load "
                                        r"'mult_(visible|infrared)' version 1: .*boom from model.py") as err:
        server.start()
    assert "\n" not in str(err.value) and "CudaDriverHelper" not in str(err.value)
    assert not server.running() and set(_cmdlines_containing("mult-triton-")) <= before


def test_onnx_encoder(tiny_export, local, image_files):
    assert (local.height, local.width, local.embedding_size, local.version) == (64, 32, 512, 1)
    assert local.flip is True
    feats = local.encode(image_files, "visible")
    assert feats.dtype == np.float32 and feats.shape == (7, 512)
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    # Files are resized then embedded: same as embedding the resized array, in any batch size.
    array = load_resized(image_files, 64, 32)
    small = OnnxEncoder(tiny_export.repo, version=1, batch_size=3)
    assert np.abs(small.encode_array(array, "visible") - feats).max() <= 1e-6
    assert local.encode([], "infrared").shape == (0, 512)
    with pytest.raises(MultError, match="version 9 not found"):
        OnnxEncoder(tiny_export.repo, version=9)
    with pytest.raises(MultError, match="must be uint8"):
        local.encode_array(array.astype(np.float32), "visible")
    with pytest.raises(MultError, match=r"shape \[N, 64, 32, 3\]"):
        local.encode_array(array[:, :60], "visible")
    with pytest.raises(MultError, match="unknown modality"):
        local.encode(image_files, "depth")  # "thermal" is a synonym of infrared
    with pytest.raises(MultError, match="not available here"):
        OnnxEncoder(tiny_export.repo, providers=["NoSuchExecutionProvider"])


def test_open_encoder_needs_exactly_one(tiny_export):
    with pytest.raises(MultError, match="exactly one"):
        open_encoder()
    with pytest.raises(MultError, match="exactly one"):
        open_encoder(server="127.0.0.1:1", local=tiny_export.repo)
    with open_encoder(local=tiny_export.repo, batch_size=5) as enc:
        assert isinstance(enc, OnnxEncoder) and enc.batch_size == 5


def test_server_down_is_one_clear_error():
    port = free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ServerUnavailable, match=rf"no Triton server at 127.0.0.1:{port}.*mult serve --repo") as err:
        open_encoder(server=f"127.0.0.1:{port}", retries=1, timeout_s=2)
    assert "\n" not in str(err.value) and time.monotonic() - start < 10


# ---- against the running server ------------------------------------------------------------------------


@pytest.mark.parametrize("modality", MODALITIES)
def test_served_equals_local_onnx(remote, local, image_files, modality):
    """Both models over gRPC vs ONNX Runtime in process: batch 1 and batch 7, from files and from arrays."""
    assert (remote.height, remote.width, remote.embedding_size) == (local.height, local.width, local.embedding_size)
    want = local.encode(image_files, modality)
    assert np.abs(remote.encode(image_files[:1], modality) - want[:1]).max() <= 1e-6
    assert np.abs(remote.encode(image_files, modality) - want).max() <= 1e-6
    array = load_resized(image_files, remote.height, remote.width)
    assert np.abs(remote.encode_array(array, modality) - want).max() <= 1e-6
    other = "infrared" if modality == "visible" else "visible"
    assert np.abs(remote.encode(image_files, other) - want).max() > 1e-3  # the right model answered


@pytest.mark.parametrize("modality", MODALITIES)
def test_served_equals_torch(remote, tiny_export, image_files, modality):
    from mult.features import TorchEncoder

    torch_enc = TorchEncoder(tiny_export.model, tiny_export.height, tiny_export.width, flip=True, progress=False)
    want = torch_enc.encode(image_files, modality)
    got = remote.encode(image_files, modality)
    assert got.shape == want.shape and _cosines(got, want).min() >= 0.9999


def test_malformed_requests_get_errors_and_server_keeps_serving(server, local):
    client = grpcclient.InferenceServerClient(server.url)
    good = np.random.default_rng(0).integers(0, 256, size=(2, 64, 32, 3), dtype=np.uint8)
    bad = [(good.astype(np.float32), "FP32", "FP32"), (np.zeros((1, 64, 32, 4), np.uint8), "UINT8", "4]"),
           (np.zeros((1, 60, 32, 3), np.uint8), "UINT8", "60")]
    try:
        for array, datatype, mention in bad:
            with pytest.raises(InferenceServerException) as err:
                _raw_infer(client, array, datatype)
            assert err.value.status() == "StatusCode.INVALID_ARGUMENT" and mention in err.value.message()
        got = _raw_infer(client, good, "UINT8")
        assert np.abs(got - local.encode_array(good, "visible")).max() <= 1e-6
        assert client.is_server_live() and client.is_model_ready("mult_visible")
    finally:
        client.close()


def test_admin_apis_need_the_servers_key(server):
    """Issue 16 item 9: a local client cannot change Triton's log level, trace settings or shared memory without
    the per-server key; with it (what an operator given the key could do) the same call is accepted."""
    from mult.serving.triton_server import ADMIN_HEADER

    client = grpcclient.InferenceServerClient(server.url)
    try:
        for call in (lambda **kw: client.update_log_settings({"log_verbose_level": 3}, **kw),
                     lambda **kw: client.get_trace_settings(**kw),
                     lambda **kw: client.get_system_shared_memory_status(**kw)):
            with pytest.raises(InferenceServerException) as err:
                call()
            assert "restricted" in err.value.message().lower()
        # Triton's gRPC front end expects the key's header as "triton-grpc-protocol-<key name>"
        settings = client.get_log_settings(headers={f"triton-grpc-protocol-{ADMIN_HEADER}": server._admin_key})
        assert settings.settings["log_verbose_level"].uint32_param == 0  # unchanged by the refused call
        assert client.is_model_ready("mult_visible")  # inference-side APIs stay open
    finally:
        client.close()


def test_concurrent_requests_are_batched_and_correct(server, remote, local):
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, size=(1 + k % 3, 64, 32, 3), dtype=np.uint8) for k in range(48)]
    client = grpcclient.InferenceServerClient(server.url)
    try:
        before = _stats(client, "mult_infrared")
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda b: remote.encode_array(b, "infrared"), batches))
        # Triton counts a request once its response is out, so the last few can lag the client by a moment
        deadline = time.monotonic() + 10
        while (after := _stats(client, "mult_infrared"))[0] - before[0] < len(batches) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        client.close()
    for batch, got in zip(batches, results):
        assert np.abs(got - local.encode_array(batch, "infrared")).max() <= 1e-6
    requests, executions = after[0] - before[0], after[1] - before[1]
    assert requests == 48
    assert executions < requests  # the dynamic batcher merged concurrent requests into shared executions


def test_missing_model_and_taken_port(server):
    with pytest.raises(MultError, match=r"model other_visible is not ready \(server has: .*mult_visible"):
        TritonEncoder(server.url, model_prefix="other")
    with pytest.raises(MultError, match=rf"grpc port {server.ports['grpc']} on 127.0.0.1 is already in use"):
        TritonServer(server.repo, grpc_port=server.ports["grpc"]).start()
    with socket.socket() as sock:  # a foreign listener on the metrics port
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(MultError, match=f"metrics port {taken} .* already in use"):
            TritonServer(server.repo, metrics_port=taken).start()


# ---- lifecycle -----------------------------------------------------------------------------------------


def test_serve_stops_cleanly_on_sigterm_and_leaves_no_process(tiny_export, tmp_path):
    """serve() blocks until SIGTERM, then stops the server and its python stubs; the log stays where asked."""
    log = tmp_path / "triton.log"
    ports = [free_port() for _ in range(3)]
    lines: list[str] = []
    session: list[int] = []

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("Press Ctrl-C"):  # serving: record its processes, then ask it to stop
            (pid,) = _cmdlines_containing(f"--grpc-port={ports[0]}")
            session.extend(_sessions().get(pid, []))
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()

    previous = signal.getsignal(signal.SIGTERM)
    assert serve(tiny_export.repo, "127.0.0.1", *ports, log_file=log, version_policy="latest", echo=echo) == 0
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    output = "\n".join(lines)
    assert f"gRPC     127.0.0.1:{ports[0]}" in output and "Stopping Triton" in output
    assert len(session) >= 3  # tritonserver + one python stub per model were running
    alive = {pid for pids in _sessions().values() for pid in pids}
    assert not alive & set(session) and _cmdlines_containing(f"--grpc-port={ports[0]}") == []
    assert "mult_visible" in log.read_text()
    with pytest.raises(MultError, match="no Triton server"):
        TritonEncoder(f"127.0.0.1:{ports[0]}", retries=0, timeout_s=2)
    with pytest.raises(MultError, match="call start"):
        TritonServer(tiny_export.repo).url


# ---- the protocol through a deployment -------------------------------------------------------------------


def _evaluate_json(argv: list[str], capsys) -> dict:
    import json

    from mult.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv + ["--json", "--trials", "3"])
    assert exc.value.code in (0, None)
    return json.loads(capsys.readouterr().out)


def test_evaluate_through_the_server_reproduces_in_process(tiny_export, synth_sysu_small, server, capsys):
    """`mult evaluate --server/--local` must reproduce the run's own (torch) numbers: mAP within 0.1 point."""
    data = ["--dataset", "sysu", "--data-root", str(synth_sysu_small)]
    in_process = _evaluate_json(["evaluate", str(tiny_export.run), *data], capsys)
    served = _evaluate_json(["evaluate", "--server", server.url, *data], capsys)
    local = _evaluate_json(["evaluate", "--local", str(tiny_export.repo), *data], capsys)
    for protocol, summary in in_process.items():
        mean = summary["mean"]
        for other in (served, local):
            assert abs(other[protocol]["mean"]["mAP"] - mean["mAP"]) <= 0.1
            assert abs(other[protocol]["mean"]["rank1"] - mean["rank1"]) <= 0.5
