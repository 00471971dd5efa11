"""Processes killed or moved under the commands (issue 16, items 3, 7, 8 and 9 of the adversarial probe).

Each test drives the real commands as child processes (`python -m mult ...`) and kills them as a user or a
crash would: SIGKILL runs no cleanup code, so what is checked is what the *next* run does about it. The
runtime repositories of `mult serve` go to a private TMPDIR, so other Triton tests running at the same time
are neither seen nor touched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

from conftest import write_crops
from mult.errors import MultError
from mult.processes import owner_tag

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")

MULT = [sys.executable, "-m", "mult"]


# ---- helpers (read /proc directly: independent of the code under test) ------------------------------------


def _stat(pid: int) -> Optional[list[str]]:
    """``state ppid pgrp session ...`` of a live process, None when gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _alive(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def _children(pid: int) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and (f := _stat(int(e.name))) is not None and int(f[1]) == pid and f[0] != "Z"]


def _session(sid: int) -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and (f := _stat(int(e.name))) is not None and int(f[3]) == sid and f[0] != "Z"]


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Child:
    """A `mult` command in a child process whose output lines are collected by a thread (no blocking reads)."""

    def __init__(self, args: list[str], env: Optional[dict] = None) -> None:
        self.proc = subprocess.Popen(MULT + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=env, stdin=subprocess.DEVNULL)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for_line(self, text: str, timeout: float, stream: str = "out") -> None:
        """Until a line of ``stream`` contains ``text``; fails when the command exits without printing it."""
        lines = self.out if stream == "out" else self.err
        _wait_until(lambda: any(text in line for line in lines) or self.proc.poll() is not None, timeout,
                    f"{text!r} from `mult {' '.join(self.proc.args[3:5])}`")
        if not any(text in line for line in lines):
            self.finish(10)
            raise AssertionError(f"exited {self.proc.returncode} without {text!r}: {self.out} {self.err}")

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def error_lines(self) -> list[str]:
        """stderr without tqdm's progress bars."""
        return [line for line in self.err if line.strip() and "\r" not in line and "img/s" not in line]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _serve(repo: Path, ports: list[int], env: dict) -> Child:
    return Child(["serve", "--repo", str(repo), "--grpc-port", str(ports[0]), "--http-port", str(ports[1]),
                  "--metrics-port", str(ports[2])], env)


def _triton_of(serve: Child) -> int:
    (pid,) = [p for p in _children(serve.pid) if b"tritonserver" in Path(f"/proc/{p}/cmdline").read_bytes()]
    return pid


def _stop_group(pgid: int) -> None:
    """Test cleanup: stop a server group this test started, if anything of it is still alive (SIGTERM first, so
    Triton frees its shared memory; SIGKILL after 10 s)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if _session(pgid):
            os.killpg(pgid, sig)
            try:
                _wait_until(lambda: not _session(pgid), 10, f"group {pgid} to go")
            except AssertionError:
                continue


def _free_ports(n: int) -> list[int]:
    from mult.serving.triton_server import free_port

    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture
def private_tmp(tmp_path) -> tuple[Path, dict]:
    """A TMPDIR of this test's own for the child commands (runtime repositories land there)."""
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    return folder, dict(os.environ, TMPDIR=str(folder))


# ---- item 3: kill -9 of `mult serve` --------------------------------------------------------------------


def test_kill9_of_serve_takes_triton_and_stubs_down_and_the_next_serve_cleans_up(tiny_export, private_tmp):
    """issue 16 item 3: SIGKILL of `mult serve` used to orphan tritonserver and its two python stubs (still
    answering on the ports), so the next `mult serve` failed with "port in use", and the killed one's runtime
    repository stayed in the temporary folder. Now Triton gets the parent-death signal and shuts its stubs down
    within seconds (a port check meanwhile waits for it rather than failing); the next `mult serve` starts on the
    same ports and removes the dead one's runtime folder (never a live writer's)."""
    from mult.serving.triton_ports import check_port_free

    tmp, env = private_tmp
    ports = _free_ports(3)
    groups: list[int] = []
    first = _serve(tiny_export.repo, ports, env)
    second: Optional[Child] = None
    try:
        first.wait_for_line("Press Ctrl-C", 180)
        triton = _triton_of(first)
        groups.append(triton)
        processes = _session(triton)
        assert len(processes) >= 3  # tritonserver + one python stub per model
        (runtime,) = tmp.glob("mult-triton-*")
        # While it runs, a second server on its port is told which process holds it and how to stop it.
        with pytest.raises(MultError, match=rf"grpc port {ports[0]} on 127.0.0.1 is already in use by "
                                            rf"tritonserver pid {triton}.*kill {triton}") as err:
            check_port_free("127.0.0.1", ports[0], "grpc")
        assert "\n" not in str(err.value)

        live = tmp / f"mult-triton-{owner_tag(os.getpid())}keep"  # a live writer's (this test's) folder
        live.mkdir()
        first.proc.send_signal(signal.SIGKILL)
        first.finish(10)
        # Triton takes a couple of seconds to shut down: a port check meanwhile waits for it instead of failing.
        check_port_free("127.0.0.1", ports[0], "grpc")
        _wait_until(lambda: not any(_alive(p) for p in processes), 20, "tritonserver and its stubs to exit")
        second = _serve(tiny_export.repo, ports, env)
        second.wait_for_line("Press Ctrl-C", 180)
        groups.append(_triton_of(second))
        assert not runtime.exists() and live.is_dir()
        assert len(list(tmp.glob("mult-triton-*"))) == 2  # the second server's own and the live one

        second.proc.send_signal(signal.SIGTERM)  # the clean way still leaves nothing
        assert second.finish(30) == 0
        _wait_until(lambda: not _session(groups[-1]), 10, "the second server to exit")
        assert sorted(tmp.glob("mult-triton-*")) == [live]
    finally:
        for child in (first, second):
            if child is not None:
                child.kill()
        for group in groups:
            _stop_group(group)


def test_serve_on_a_public_host_warns_and_a_taken_port_is_one_line(tmp_path):
    """issue 16 item 3: `mult serve --host 0.0.0.0` warns like `mult app` that other machines can reach it
    without login, and a port already in use is one line naming the port and what to do (no traceback).
    The port is taken on 127.0.0.1 and the repository does not exist, so no server ever binds 0.0.0.0."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        others = _free_ports(2)
        child = Child(["serve", "--repo", str(tmp_path / "no-repo"), "--host", "0.0.0.0", "--grpc-port", str(port),
                       "--http-port", str(others[0]), "--metrics-port", str(others[1])])
        try:
            assert child.finish(120) == 2
        finally:
            child.kill()
    assert "note: bound to 0.0.0.0, so other machines can reach the models; it has no login" in child.out
    assert child.error_lines() == [f"mult: error: grpc port {port} on 0.0.0.0 is already in use (another Triton or "
                                   f"`mult serve`?); stop it or pass another --grpc-port"]


# ---- item 9: the server stops during `mult index build --server` ----------------------------------------


def test_sigterm_of_serve_during_index_build_says_the_server_is_going(tiny_export, private_tmp, tmp_path):
    """issue 16 item 9: SIGTERM of the server while `mult index build --server` embeds used to end the build
    with "unknown model 'mult_infrared' has no available versions" (Triton unloads its models first); the
    client now says the server is shutting down / went away, in one line, and writes no gallery."""
    import tritonclient.grpc as grpcclient

    _, env = private_tmp
    ports = _free_ports(3)
    crops = tmp_path / "crops"
    write_crops(crops, tuple(range(1, 201)), 5, seed=3)  # 1000 images: seconds of work for the server
    server = _serve(tiny_export.repo, ports, env)
    build: Optional[Child] = None
    group = None
    try:
        server.wait_for_line("Press Ctrl-C", 180)
        group = _triton_of(server)
        build = Child(["index", "build", "--server", f"127.0.0.1:{ports[0]}", "--images", str(crops),
                       "--out", str(tmp_path / "gallery")], env)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        try:  # stop the server once the build is embedding through it
            def embedding() -> bool:
                stats = client.get_inference_statistics("mult_infrared", as_json=True)["model_stats"]
                return any(int(s.get("inference_stats", {}).get("success", {}).get("count", 0)) for s in stats) \
                    or build.proc.poll() is not None
            _wait_until(embedding, 120, "the build to send images")
        finally:
            client.close()
        server.proc.send_signal(signal.SIGTERM)
        assert build.finish(120) == 2
        assert server.finish(30) == 0
    finally:
        for child in (build, server):
            if child is not None:
                child.kill()
        if group is not None:
            _stop_group(group)
    lines = build.error_lines()
    assert len(lines) == 1 and lines[0].startswith("mult: error: "), build.err
    assert "unknown model" not in lines[0] and "no available versions" not in lines[0]
    assert "the Triton server is shutting down" in lines[0] or "the Triton server went away" in lines[0]
    assert not (tmp_path / "gallery").exists()


# ---- item 8: litter of kill -9 during `mult export` and gallery writes ------------------------------------


def test_kill9_of_export_mid_write_is_cleaned_by_the_next_export(tiny_export, tmp_path):
    """issue 16 item 8: `mult export` killed while it writes a version left its `.tmp-v*` folder (tens of MB
    each) forever. The next export into the repository removes a dead writer's folder (its pid is in the
    name), keeps a live writer's, and publishes a correct version."""
    from mult.serving.onnx_local import OnnxEncoder

    repo = tmp_path / "repo"
    killed = Child(["export", str(tiny_export.run), "--repo", str(repo)])
    try:
        _wait_until(lambda: any((repo / "mult_visible").glob(".tmp-v1-*")) or killed.proc.poll() is not None,
                    180, "the export to stage version 1")
        killed.proc.send_signal(signal.SIGKILL)
        killed.finish(10)
    finally:
        killed.kill()
    litter = list((repo / "mult_visible").glob(".tmp-v*"))
    assert litter and not (repo / "mult_visible" / "1").exists()
    live = repo / "mult_infrared" / f".tmp-v9-{owner_tag(os.getpid())}keep"  # a writer that is still running
    live.mkdir(parents=True)

    again = Child(["export", str(tiny_export.run), "--repo", str(repo), "--json"])
    assert again.finish(300) == 0, again.err
    assert json.loads("\n".join(again.out))["version"] == 1
    assert not any(p.exists() for p in litter) and not list((repo / "mult_visible").glob(".tmp-v*"))
    assert list((repo / "mult_infrared").glob(".tmp-v*")) == [live]
    images = np.random.default_rng(0).integers(0, 256, (3, tiny_export.height, tiny_export.width, 3), np.uint8)
    fresh, reference = OnnxEncoder(repo), OnnxEncoder(tiny_export.repo)
    for modality in ("visible", "infrared"):
        assert np.abs(fresh.encode_array(images, modality) - reference.encode_array(images, modality)).max() <= 1e-5


_STAGE_AND_HANG = """
import sys, time
from pathlib import Path
from mult.io import staging_directory as _staging_dir  # what the gallery stages in
from mult.serving.gallery import INDEX_FILE
staging = _staging_dir(Path(sys.argv[1]))
(staging / INDEX_FILE).write_bytes(b"half an index")
print(staging, flush=True)
time.sleep(600)
"""


def test_kill9_mid_gallery_write_is_cleaned_by_the_next_build(tiny_export, tmp_path):
    """issue 16 item 8: a gallery writer killed between staging and swap left `.NAME.*.tmp` folders behind.
    The staging-and-write window of `mult index build` lasts milliseconds, too short to hit from outside, so
    a child process runs the gallery's own staging code, writes part of an index and is SIGKILLed there. The
    next `mult index build` of that gallery removes it (never a live writer's) and writes a correct gallery."""
    from mult.serving.gallery import Gallery

    target = tmp_path / "gallery"
    child = subprocess.Popen([sys.executable, "-c", _STAGE_AND_HANG, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        staging = Path(child.stdout.readline().strip())
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
    assert staging.is_dir() and staging.parent == tmp_path and staging.name.startswith(".gallery.")
    live = tmp_path / f".gallery.{owner_tag(os.getpid())}keep.tmp"
    live.mkdir()
    crops = tmp_path / "crops"
    write_crops(crops, (1, 2, 3), 2, seed=4)

    build = Child(["index", "build", "--local", str(tiny_export.repo), "--images", str(crops), "--out", str(target)])
    assert build.finish(180) == 0, build.err
    assert not staging.exists() and live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["crops", "gallery", live.name])
    gallery = Gallery.open(target)
    assert len(gallery) == 6 and {r.pid for r in gallery.records} == {1, 2, 3}


# ---- item 7: the gallery moves while writers wait for / hold its lock -------------------------------------


@pytest.fixture
def small_gallery(tiny_export, tmp_path):
    from mult.serving.gallery import build_gallery, records_for_gallery
    from mult.serving.onnx_local import OnnxEncoder

    write_crops(tmp_path / "crops", (1, 2), 2, seed=5)
    write_crops(tmp_path / "more", (3, 4), 2, seed=6)
    encoder = OnnxEncoder(tiny_export.repo)
    records = records_for_gallery(images_dir=tmp_path / "crops", modality="infrared")
    build_gallery(records, encoder, tmp_path / "gallery", progress=False)
    return tmp_path / "gallery", encoder


def test_gallery_moved_while_a_second_add_waits_for_its_lock(tiny_export, small_gallery, tmp_path):
    """issue 16 item 7: a gallery renamed while a second `mult index add` waited for its update lock left
    that command waiting forever. It now notices the folder is gone and stops with one line, writing nothing."""
    from mult.serving.gallery import Gallery, update_lock

    target, _ = small_gallery
    moved = tmp_path / "gallery-moved"
    child = None
    try:
        with update_lock(target):  # this test is the first writer
            child = Child(["index", "add", str(target), "--images", str(tmp_path / "more"),
                           "--local", str(tiny_export.repo)])
            child.wait_for_line("another process is updating this gallery", 120, stream="err")
            os.rename(target, moved)
        code = child.finish(60)
    finally:
        if child is not None:
            child.kill()
    assert code == 2
    assert child.error_lines()[-1] == (
        f"mult: error: {target}: the gallery folder was moved or deleted while this command waited to update it; "
        "nothing was written: run it again on the gallery's new location")
    assert not any("Traceback" in line for line in child.err)
    assert not target.exists() and len(Gallery.open(moved)) == 4
    assert not list(tmp_path.glob(".gallery*"))  # no staging litter either


class _MovesGalleryOnFirstCall:
    """The real ONNX encoder; its first call renames the gallery folder, as a user doing so mid-update would."""

    def __init__(self, encoder, src: Path, dst: Path) -> None:
        self.encoder, self.src, self.dst = encoder, src, dst

    def encode(self, paths, modality):
        if self.src.exists():
            os.rename(self.src, self.dst)
        return self.encoder.encode(paths, modality)


def test_gallery_moved_while_its_writer_holds_the_lock(small_gallery, tmp_path):
    """issue 16 item 7: the writer holding the lock while its gallery was renamed died with a FileNotFoundError
    traceback. It is now one line saying the folder moved and that nothing was added; the moved gallery is intact."""
    from mult.serving.gallery import Gallery, encoder_info, records_for_gallery

    target, encoder = small_gallery
    moved = tmp_path / "gallery-moved"
    gallery = Gallery.open(target)
    records = records_for_gallery(images_dir=tmp_path / "more", modality="infrared")
    with pytest.raises(MultError, match="the gallery folder was moved or deleted during this update") as err:
        gallery.add(records, _MovesGalleryOnFirstCall(encoder, target, moved), model_info=encoder_info(encoder),
                    progress=False)
    assert "\n" not in str(err.value) and str(target) in str(err.value)
    assert not target.exists() and len(Gallery.open(moved)) == 4
    assert not list(tmp_path.glob(".gallery*"))
