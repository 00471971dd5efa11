"""`mult demo`: the whole system end to end on its embedded default, for a newcomer on a laptop CPU.

SynthVI render -> `synth-demo` training (stage 1 DCL, then MULT + AMIRL + OCLR) -> ONNX export -> the local
Triton server -> FAISS index of the infrared test gallery (embedded through Triton) -> the Gradio page.

Like `mult.cli`, this module sits above every stage and imports them lazily. Each step is skipped when its
output already exists (a finished run, an exported version, a built gallery), and an interrupted training
run is resumed, so running the demo again only redoes what is missing. Ctrl-C (or SIGTERM) stops the page
and the server cleanly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from mult.errors import MultError
from mult.interrupts import sigterm_as_interrupt

Echo = Callable[[str], None]


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path = Path("demo")
    ids: int = 100  # identities rendered (80 train / 20 test)
    preset: str = "synth-demo"
    seed: int = 0
    host: str = "127.0.0.1"
    port: int = 7860
    grpc_port: Optional[int] = None  # None: a free port
    top_k: int = 10
    ready_only: bool = False  # stop once the page answers (CI / timing), instead of serving until Ctrl-C

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def run(self) -> Path:
        return self.workdir / "run"

    @property
    def repo(self) -> Path:
        return self.workdir / "model_repository"

    @property
    def gallery(self) -> Path:
        return self.workdir / "gallery"


def _step(echo: Echo, title: str) -> float:
    echo(f"== {title}")
    return time.time()


def render_data(opts: DemoOptions, echo: Echo) -> None:
    if (opts.data / "exp" / "test_id.txt").is_file():
        echo(f"   {opts.data}: already rendered")
        return
    from mult.data.synth import synthesize

    summary = synthesize(opts.data, "sysu", ids=opts.ids, images_per_camera=5, height=128, width=64, seed=opts.seed)
    echo(summary.render())


def train(opts: DemoOptions, echo: Echo) -> None:
    from mult.config import preset_config
    from mult.train.run import RunDir
    from mult.train.trainer import Trainer

    run = RunDir(opts.run)
    if run.checkpoint_path.is_file():
        cfg = run.config()
        done = max((int(e["epoch"]) for e in run.metrics() if isinstance(e.get("epoch"), int)), default=-1) + 1
        if done >= cfg.epochs:
            echo(f"   {opts.run}: finished run ({cfg.epochs} epochs)")
            return
        echo(f"   {opts.run}: resuming at epoch {done}")
        Trainer(cfg, opts.run, resume=True).fit()
        return
    cfg = preset_config(opts.preset, data_root=str(opts.data), seed=opts.seed)
    Trainer(cfg, opts.run).fit()


def export(opts: DemoOptions, echo: Echo) -> None:
    from mult.export.repository import MODEL_NAMES, existing_versions, write_model_repository

    if all(existing_versions(opts.repo / name) for name in MODEL_NAMES.values()):
        echo(f"   {opts.repo}: already exported")
        return
    result = write_model_repository(opts.run, opts.repo)
    for name, model in result.models.items():
        echo(f"   {name} v{result.version}: parity max|diff| {model.parity.max_abs_diff:.1e}")


def build_gallery(opts: DemoOptions, server_url: str, echo: Echo) -> None:
    from mult.serving.encoders import open_encoder
    from mult.serving.gallery_commands import index_build

    if (opts.gallery / "manifest.json").is_file():
        echo(f"   {opts.gallery}: already built")
        return
    with open_encoder(server=server_url) as encoder:
        report = index_build(encoder, opts.gallery, dataset="sysu", data_root=opts.data, modality="infrared")
    echo(f"   {report.info['count']} infrared gallery images indexed")


def run_demo(opts: DemoOptions, echo: Echo = print) -> str:
    """Run every step; serve the page until interrupted (or return once it answers with ``ready_only``).

    Returns the page URL.
    """
    from mult.app.search_page import launch_app
    from mult.serving.triton_server import TritonServer

    check_workdir(opts.workdir)
    started, url = time.time(), ""
    for title, step in (("1/5 render SynthVI", render_data), ("2/5 train (synth-demo preset)", train),
                        ("3/5 export ONNX + Triton repository", export)):
        t = _step(echo, title)
        step(opts, echo)
        echo(f"   {time.time() - t:.0f} s")
    with sigterm_as_interrupt():
        try:
            t = _step(echo, "4/5 start Triton and index the infrared gallery")
            with TritonServer(opts.repo, host="127.0.0.1", grpc_port=opts.grpc_port) as server:
                echo(f"   Triton gRPC at {server.url}")
                build_gallery(opts, server.url, echo)
                echo(f"   {time.time() - t:.0f} s")
                _step(echo, "5/5 the search page")
                handle = launch_app(opts.gallery, server=server.url, host=opts.host, port=opts.port, top_k=opts.top_k)
                url = handle.url
                try:
                    echo(f"ready in {time.time() - started:.0f} s: open {url}  (Ctrl-C stops the page and the server)")
                    if not opts.ready_only:
                        while True:
                            time.sleep(1)
                finally:
                    handle.close()
        except KeyboardInterrupt:
            echo("stopping")
    return url


def check_workdir(workdir: Path) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise MultError(f"{workdir}: exists and is not a folder; pass another --workdir")
