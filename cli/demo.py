"""`mult demo`: the whole system end to end on its embedded default, for a newcomer on a laptop CPU.

SynthVI render -> `synth-demo` training from ImageNet MobileNetV2 weights (stage 1 DCL, then MULT + AMIRL +
OCLR) -> ONNX export -> the local Triton server -> FAISS index of the infrared test gallery (embedded through
Triton) -> the served model's test accuracy beside the untrained start's -> the Gradio page.

It sits on the top floor with the rest of the command line and imports the stages lazily. Each step is skipped when its
output already exists (a finished run, an exported version, a built gallery), and an interrupted training
run is resumed, so running the demo again only redoes what is missing. Ctrl-C (or SIGTERM) stops the page
and the server cleanly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from mult.errors import MultError
from mult.interrupts import sigterm_as_interrupt

demo_commands = typer.Typer()

Echo = Callable[[str], None]

DEMO_HEAT_FROM_COLOUR = 1.0
# Measured with the same preset on the standard gap (docs/RESULTS.md, "The demo's model"); shown on the page.
STANDARD_GAP_NOTE = ("On the standard gap (`--heat-from-colour 0`) the same recipe reaches R1 10.8 / mAP 18.2 "
                     "(untrained start 10.8 / 14.9); chance R1 on 20 people is about 5.")


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path = Path("demo")
    ids: int = 100  # identities rendered (80 train / 20 test)
    preset: str = "synth-demo"
    # SynthVI's modality gap: 1 ties infrared heat to visible luminance (the easier gap, on which the preset's
    # model finds people in a CPU budget); 0 is the standard gap. Both measured in docs/RESULTS.md.
    heat_from_colour: float = DEMO_HEAT_FROM_COLOUR
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


def data_settings(opts: DemoOptions) -> dict[str, Any]:
    return {"ids": opts.ids, "seed": opts.seed, "heat_from_colour": opts.heat_from_colour}


def render_data(opts: DemoOptions, echo: Echo) -> None:
    """Render the demo's SynthVI set once; a later run with other data settings is refused, not mixed."""
    import json

    from mult.io import write_text_atomic

    settings_file = opts.workdir / "synthvi.json"
    if (opts.data / "exp" / "test_id.txt").is_file():
        made = json.loads(settings_file.read_text()) if settings_file.is_file() else "unrecorded settings"
        if made != data_settings(opts):  # e.g. another --heat-from-colour, or a demo folder of an older mult
            raise MultError(f"{opts.workdir} holds a demo made with {made}, not {data_settings(opts)}: pass another "
                            "--workdir (or delete that folder)")
        echo(f"   {opts.data}: already rendered")
        return
    from mult.data.synth import synthesize

    summary = synthesize(opts.data, "sysu", ids=opts.ids, images_per_camera=5, height=128, width=64, seed=opts.seed,
                         heat_from_colour=opts.heat_from_colour)
    write_text_atomic(settings_file, json.dumps(data_settings(opts)) + "\n")
    echo(summary.render())


def train(opts: DemoOptions, echo: Echo) -> None:
    from mult.config import preset_config
    from mult.runs import RunDir
    from mult.train.trainer import Trainer

    run = RunDir(opts.run)
    wanted = preset_config(opts.preset, data_root=str(opts.data), seed=opts.seed)
    if run.checkpoint_path.is_file():
        cfg = run.config()
        if cfg.to_dict() != wanted.to_dict():
            raise MultError(f"{opts.run} was trained with another recipe than today's {opts.preset} preset: pass "
                            f"another --workdir (or delete {opts.workdir})")
        done = max((int(e["epoch"]) for e in run.metrics() if isinstance(e.get("epoch"), int)), default=-1) + 1
        if done >= cfg.epochs:
            echo(f"   {opts.run}: finished run ({cfg.epochs} epochs)")
            return
        echo(f"   {opts.run}: resuming at epoch {done}")
        Trainer(cfg, opts.run, resume=True).fit()
        return
    Trainer(wanted, opts.run).fit()


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


def untrained_accuracy(opts: DemoOptions) -> Optional[dict[str, float]]:
    """The all-search row the trainer recorded for the untrained start (epoch -1), if it evaluated one."""
    from mult.runs import RunDir

    for entry in RunDir(opts.run).metrics():
        if entry.get("stage") == "init" and "sysu-all" in entry.get("eval", {}):
            return entry["eval"]["sysu-all"]
    return None


def served_accuracy(opts: DemoOptions, server_url: str) -> dict[str, float]:
    """The SYSU all-search protocol (10 trials) on the demo's test split, embedded through the Triton server:
    what the page's users get, the same numbers as ``mult evaluate --server``."""
    from mult.evaluation import evaluate_sysu_dataset
    from mult.serving.encoders import open_encoder

    with open_encoder(server=server_url) as encoder:
        summary = evaluate_sysu_dataset(encoder, opts.data, trials=10, modes=("all",))["sysu-all"]
    return summary.mean.as_dict()


def accuracy_line(served: dict[str, Any], start: Optional[dict[str, Any]], label: str = "test all-search") -> str:
    """One line: the served model's all-search R1 / mAP / mINP beside the untrained start's."""
    def triple(row: dict[str, Any]) -> str:
        return f"{row['rank1']:.1f} / {row['mAP']:.1f} / {row['mINP']:.1f}"

    before = triple(start) if start else "not evaluated"
    return f"{label} R1 / mAP / mINP: served model {triple(served)}  (untrained start {before})"


def gap_description(heat_from_colour: float) -> str:
    """The SynthVI modality gap in words, for the page."""
    if heat_from_colour == 0.0:
        return "the standard modality gap"
    if heat_from_colour == 1.0:
        return "the easier modality gap (`--heat-from-colour 1`: infrared heat follows visible luminance)"
    return f"`--heat-from-colour {heat_from_colour:g}`"


def page_about(opts: DemoOptions, accuracy: str) -> str:
    """What the page says about its data and model: the SynthVI setting, the measured ``accuracy`` line, and the
    standard gap's result for comparison (docs/RESULTS.md)."""
    return (f"**Demo data:** SynthVI, synthetic people rendered on this machine ({opts.ids} identities, 20 % of them "
            f"held out for testing), with {gap_description(opts.heat_from_colour)}. **Model:** the `{opts.preset}` "
            f"preset, trained here without labels (MULT + OCLR). {accuracy}. {STANDARD_GAP_NOTE}")


def run_demo(opts: DemoOptions, echo: Echo = print) -> str:
    """Run every step; serve the page until interrupted (or return once it answers with ``ready_only``).

    Returns the page URL.
    """
    from mult.app.search_page import launch_app
    from mult.serving.triton_server import TritonServer

    check_workdir(opts.workdir)
    started, url = time.time(), ""
    for title, step in (("1/6 render SynthVI", render_data), (f"2/6 train ({opts.preset} preset)", train),
                        ("3/6 export ONNX + Triton repository", export)):
        t = _step(echo, title)
        step(opts, echo)
        echo(f"   {time.time() - t:.0f} s")
    with sigterm_as_interrupt():
        try:
            t = _step(echo, "4/6 start Triton and index the infrared gallery")
            with TritonServer(opts.repo, host="127.0.0.1", grpc_port=opts.grpc_port) as server:
                echo(f"   Triton gRPC at {server.url}")
                build_gallery(opts, server.url, echo)
                echo(f"   {time.time() - t:.0f} s")
                t = _step(echo, "5/6 evaluate the served model (SYSU all-search, 10 trials, through Triton)")
                served, start = served_accuracy(opts, server.url), untrained_accuracy(opts)
                echo(f"   {time.time() - t:.0f} s")
                _step(echo, "6/6 the search page")
                about = page_about(opts, accuracy_line(served, start, label="Held-out test, all-search"))
                handle = launch_app(opts.gallery, server=server.url, host=opts.host, port=opts.port, top_k=opts.top_k,
                                    about=about)
                url = handle.url
                try:
                    echo(accuracy_line(served, start))
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


@demo_commands.command("demo")
def demo(
    workdir: Path = typer.Option(Path("demo"), "--workdir", help="Where data, run, model repository and gallery go."),
    ids: int = typer.Option(100, "--ids", min=8, help="SynthVI identities to render (80% train, 20% test)."),
    seed: int = typer.Option(0, "--seed", help="Data and training seed."),
    heat_from_colour: float = typer.Option(
        1.0, "--heat-from-colour", min=0.0, max=1.0,
        help="SynthVI modality gap: 1 (default) ties infrared heat to visible luminance, the easier gap; 0 is the "
             "standard gap (see README for both results). Use another --workdir for another value."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface the page binds."),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="Port of the page."),
    grpc_port: Optional[int] = typer.Option(None, "--grpc-port", min=1, max=65535, help="Triton gRPC port (default: a free one)."),
    ready_only: bool = typer.Option(False, "--ready-only", help="Stop once the page answers (for CI and timing)."),
) -> None:
    """The whole system on synthetic data: render SynthVI, train (synth-demo preset), export, start Triton,
    index the infrared gallery and open the search page. Steps already done are skipped.

    Example: mult demo   (then open the printed URL; Ctrl-C stops everything)
    """
    run_demo(DemoOptions(workdir=workdir, ids=ids, seed=seed, heat_from_colour=heat_from_colour, host=host, port=port,
                         grpc_port=grpc_port, ready_only=ready_only), echo=typer.echo)
