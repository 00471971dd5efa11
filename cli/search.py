"""Search-side commands: `mult index build|add|info` and `mult search` (the gallery of mult.serving).

Embeddings come from the deployed model: Triton gRPC by default (`--server`, 127.0.0.1:8001 as `mult serve`
listens), or in-process ONNX Runtime over an exported repository with `--local REPO`.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from mult.cli.common import DatasetFormat, Direction, encoder_from_options, print_json

index_app = typer.Typer(help="Build, extend and inspect FAISS gallery indexes.", no_args_is_help=True)
search_commands = typer.Typer()


class IndexKind(str, Enum):
    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"
    ivfpq = "ivfpq"


_SERVER = typer.Option(None, "--server", help="Triton gRPC URL of `mult serve` (default 127.0.0.1:8001).")
_LOCAL = typer.Option(None, "--local", help="Exported model repository to run in-process (ONNX Runtime).")
_IMAGES = typer.Option(None, "--images", help="A folder of images (searched recursively).")
_DATASET = typer.Option(None, "--dataset", help="Take the test gallery of a dataset instead (with --data-root).")
_DATA_ROOT = typer.Option(None, "--data-root", help="The dataset folder for --dataset.")


def _report(report, as_json: bool) -> None:
    if as_json:
        print_json(report.as_dict())
    else:
        typer.echo(report.render())


@index_app.command("build")
def index_build(
    out: Path = typer.Option(..., "--out", help="Gallery directory to create (index, metadata, manifest)."),
    images: Optional[Path] = _IMAGES,
    dataset: Optional[DatasetFormat] = _DATASET,
    data_root: Optional[Path] = _DATA_ROOT,
    modality: Direction = typer.Option(Direction.infrared, "--modality", help="Modality of the gallery images."),
    regdb_split: int = typer.Option(1, "--split", min=1, max=10, help="RegDB split whose test images to index."),
    kind: IndexKind = typer.Option(IndexKind.flat, "--kind", help="flat: exact; ivf / hnsw: approximate, recall "
                                   "reported; ivfpq: IVF-PQ, compressed codes for galleries too large for flat."),
    nlist: Optional[int] = typer.Option(None, "--nlist", min=1, help="IVF lists (default about 4*sqrt(N))."),
    nprobe: int = typer.Option(16, "--nprobe", min=1, help="IVF lists visited per query."),
    hnsw_m: int = typer.Option(32, "--hnsw-m", min=4, help="HNSW links per node."),
    ef_construction: int = typer.Option(40, "--ef-construction", min=1, help="HNSW build breadth (larger: a "
                                        "better graph, higher reachable recall, slower build)."),
    ef_search: int = typer.Option(64, "--ef-search", min=1, help="HNSW search breadth."),
    pq_m: Optional[int] = typer.Option(None, "--pq-m", help="ivfpq: one-byte codes per vector; must divide the "
                                       "embedding size (default d/4)."),
    refine: int = typer.Option(0, "--refine", help="ivfpq: re-rank REFINE*k candidates exactly (keeps the full "
                               "vectors in memory, more than flat needs); 0: no re-ranking."),
    target_recall: Optional[float] = typer.Option(None, "--target-recall", help="Pick the smallest nprobe "
                                                  "(ivf, ivfpq) / ef-search (hnsw) reaching this recall@10, e.g. 0.95."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing gallery at --out."),
    server: Optional[str] = _SERVER,
    local: Optional[Path] = _LOCAL,
    as_json: bool = typer.Option(False, "--json", help="Print the gallery summary as JSON."),
) -> None:
    """Embed a folder or a dataset's test gallery through the deployed model and index it.

    Example: mult index build --dataset sysu --data-root data/synth-demo --modality infrared --local model_repository --out gallery
    (approximate, recall-steered: --kind ivf --target-recall 0.95)
    """
    from mult.serving import gallery_commands as gallery
    from mult.serving.faiss_index import IndexSpec

    # wrong values fail here, before the model is reached
    spec = IndexSpec(kind.value, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, ef_construction=ef_construction,
                     ef_search=ef_search, pq_m=pq_m, refine=refine, target_recall=target_recall)
    with encoder_from_options(server, local) as encoder:
        report = gallery.index_build(
            encoder, out, images=images, dataset=dataset.value if dataset else None, data_root=data_root,
            modality=modality.value, regdb_split=regdb_split, kind=spec, overwrite=overwrite, progress=not as_json)
    _report(report, as_json)


@index_app.command("add")
def index_add(
    gallery_dir: Path = typer.Argument(..., help="An existing gallery directory."),
    images: Optional[Path] = _IMAGES,
    dataset: Optional[DatasetFormat] = _DATASET,
    data_root: Optional[Path] = _DATA_ROOT,
    modality: Optional[Direction] = typer.Option(None, "--modality", help="Modality of the new images (default: the gallery's)."),
    regdb_split: int = typer.Option(1, "--split", min=1, max=10, help="RegDB split whose test images to add."),
    taken: Optional[str] = typer.Option(None, "--time", help="Capture time of the new images (ISO 8601, e.g. "
                                        "2026-12-03T21:30, or UNIX seconds); default: each file's modification time."),
    server: Optional[str] = _SERVER,
    local: Optional[Path] = _LOCAL,
    as_json: bool = typer.Option(False, "--json", help="Print the gallery summary as JSON."),
) -> None:
    """Append images to a gallery without re-embedding what it holds (same model required).

    Example: mult index add gallery --images new_crops/ --local model_repository
    """
    from mult.serving import gallery_commands as gallery

    with encoder_from_options(server, local) as encoder:
        report = gallery.index_add(
            encoder, gallery_dir, images=images, dataset=dataset.value if dataset else None, data_root=data_root,
            modality=modality.value if modality else None, regdb_split=regdb_split, progress=not as_json,
            taken=taken)
    _report(report, as_json)


@index_app.command("info")
def index_info(
    gallery_dir: Path = typer.Argument(..., help="A gallery directory."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Check the files' checksums."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a gallery's model, size, index kind and recall.

    Example: mult index info gallery --json
    """
    from mult.serving import gallery_commands as gallery

    _report(gallery.index_info(gallery_dir, verify=verify), as_json)


@search_commands.command("search")
def search(
    index: Path = typer.Option(..., "--index", help="Gallery directory made by `mult index build`."),
    query: Path = typer.Option(..., "--query", help="The query image."),
    query_modality: Direction = typer.Option(Direction.visible, "--query-modality", help="Stem the query goes through."),
    top_k: int = typer.Option(10, "--top-k", min=1, max=1000, help="How many gallery images to return."),
    save_ranklist: Optional[Path] = typer.Option(None, "--save-ranklist", help="Write the rank-list image (PNG) here."),
    query_pid: Optional[int] = typer.Option(None, "--query-pid", help="The query's person id, to mark hits green/red."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", min=1, help="IVF lists visited (default: the index's)."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", min=1, help="HNSW search breadth (default: the index's)."),
    cameras: list[int] = typer.Option([], "--camera", help="Only gallery images of this camera (repeat for several)."),
    identity: Optional[str] = typer.Option(None, "--identity", help="Only images whose person id is 'known' / 'unknown'."),
    since: Optional[str] = typer.Option(None, "--since", help="Only images taken at or after this time (ISO 8601 or UNIX seconds; no zone = local time)."),
    until: Optional[str] = typer.Option(None, "--until", help="Only images taken at or before this time."),
    rerank: bool = typer.Option(False, "--rerank", help="Re-order the index's top candidates by the official MULT cross-modality k-reciprocal re-ranking."),
    rerank_top: Optional[int] = typer.Option(None, "--rerank-top", min=2, max=5000, help="How many of the index's top candidates --rerank re-orders (default 100)."),
    rerank_k: Optional[int] = typer.Option(None, "--rerank-k", min=1, max=100, help="k of the k-reciprocal sets (default: the official evaluator's 15); about the images per person and modality."),
    server: Optional[str] = _SERVER,
    local: Optional[Path] = _LOCAL,
    as_json: bool = typer.Option(False, "--json", help="Print the rank list as JSON (with embed and search seconds)."),
) -> None:
    """Rank the gallery for one query image (visible -> infrared by default), optionally filtered by camera,
    identity and capture time (inside the FAISS search).

    Example: mult search --index gallery --query person.jpg --top-k 10 --camera 3 --since 2026-12-03T20:00 --local model_repository
    """
    from mult.serving import gallery_commands as gallery
    from mult.serving.gallery import filter_from_options

    where = filter_from_options(cameras, identity=identity, since=since, until=until)
    if rerank:
        from mult.serving.gallery_rerank import DEFAULT_TOP_N

        rerank_top = rerank_top or DEFAULT_TOP_N
    with encoder_from_options(server, local) as encoder:
        report = gallery.search_query(encoder, index, query, query_modality=query_modality.value, top_k=top_k,
                                      save_ranklist=save_ranklist, query_pid=query_pid, nprobe=nprobe,
                                      ef_search=ef_search, where=where, rerank_top=rerank_top if rerank else None,
                                      rerank_k=rerank_k)
    _report(report, as_json)


@search_commands.command("app")
def app_command(
    index: Path = typer.Option(..., "--index", help="Gallery folder written by `mult index build`."),
    server: Optional[str] = _SERVER,
    local: Optional[Path] = _LOCAL,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (127.0.0.1: this machine only)."),
    port: int = typer.Option(7860, "--port", min=1, max=65535, help="HTTP port of the page."),
    top_k: int = typer.Option(10, "--top-k", min=1, max=100, help="Gallery images shown per search."),
    examples: Optional[Path] = typer.Option(None, "--examples", help="Folder of example query images (default: from the gallery's dataset, else the gallery)."),
    open_browser: bool = typer.Option(False, "--open", help="Open the page in the default web browser."),
) -> None:
    """Serve the Gradio search page: upload a photo, rank the gallery visible -> infrared (or back).

    Example: mult app --index gallery --server 127.0.0.1:8001 --port 7860
    """
    from mult.app.search_page import run_app
    from mult.cli.common import DEFAULT_SERVER

    if server is None and local is None:
        server = DEFAULT_SERVER
    raise typer.Exit(run_app(index, server=server, local=local, host=host, port=port, top_k=top_k,
                             examples=examples, open_browser=open_browser, echo=typer.echo))
