"""The Gradio search page, served in-process on a free 127.0.0.1 port and called the way users call it:
``gradio_client.Client(url).predict(handle_file(png), direction, api_name="/search")``.

Galleries are built with the tiny exported model (``tiny_export``); the page embeds through in-process ONNX
Runtime and through a real Triton server. Expected rankings are computed here independently (encode the files,
dot products, argsort), so a swapped stem, a wrong filter or a stale index shows up as a different ranking.
A gallery built from a tiny SYSU-MM01 tree checks the examples (visible photos of its people, held out of it)
and the green/red frames and first-correct-match line of a query whose person id is known.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from conftest import build_sysu_tree, write_crops  # noqa: E402
from mult.app.search_page import (  # noqa: E402
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    AppHandle,
    SearchService,
    example_sets,
    folder_examples,
    frame_width,
    gallery_dataset,
    gallery_examples,
    held_out_examples,
    launch_app,
    match_summary,
    run_app,
)
from mult.data.records import Modality, Record  # noqa: E402
from mult.errors import MultError  # noqa: E402
from mult.serving.gallery import Gallery, build_gallery, records_for_gallery  # noqa: E402
from mult.serving.gallery_commands import index_build  # noqa: E402
from mult.serving.query_ids import KnownImages, source_records  # noqa: E402
from mult.serving.ranklist import GREEN, RED  # noqa: E402
from mult.serving.onnx_local import OnnxEncoder  # noqa: E402
from mult.serving.triton_server import TritonServer, free_port  # noqa: E402

IR_PIDS = (3, 7, 12)
VIS_PIDS = (3, 7)
TOP_K = 5
V2I, I2V = "visible → infrared", "infrared → visible"
CAPTION = re.compile(r"^#(\d+) (\d\.\d{3}) · id (\d+) · cam (\d+)( · ✓ same person| · ✗ another person)?$")
#: The tiny SYSU-MM01 tree's test ids; its infrared cameras hold 18 images of them (conftest.build_sysu_tree).
SYSU_TEST_IDS = (2, 4, 6)
SYSU_IR_IMAGES = 18


# ---- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> dict[str, Path]:
    """Infrared crops (3 ids x 3, grey) and visible crops (2 ids x 2, colour) in <pid>/ folders."""
    root = tmp_path_factory.mktemp("app_images")
    write_crops(root / "ir", IR_PIDS, per_pid=3, seed=0)
    write_crops(root / "vis", VIS_PIDS, per_pid=2, seed=1, mode="RGB")
    return {"infrared": root / "ir", "visible": root / "vis"}


@pytest.fixture(scope="module")
def local(tiny_export) -> Iterator[OnnxEncoder]:
    with OnnxEncoder(tiny_export.repo) as encoder:
        yield encoder


@pytest.fixture(scope="module")
def galleries(crops, local, tmp_path_factory) -> dict[str, Path]:
    """``ir``: the 9 infrared crops only; ``mixed``: those plus the 4 visible crops."""
    base = tmp_path_factory.mktemp("app_galleries")
    ir = records_for_gallery(images_dir=crops["infrared"], modality="infrared")
    vis = records_for_gallery(images_dir=crops["visible"], modality="visible")
    build_gallery(ir, local, base / "ir", progress=False)
    build_gallery(ir + vis, local, base / "mixed", progress=False)
    return {"ir": base / "ir", "mixed": base / "mixed"}


@pytest.fixture(scope="module")
def sysu(local, tmp_path_factory) -> dict[str, Path]:
    """A tiny SYSU-MM01 tree (test ids 2, 4, 6) and galleries built from it the way `mult index build --dataset
    sysu` builds them: ``ir`` of its infrared test images (the demo's), ``vis`` of its visible ones."""
    base = tmp_path_factory.mktemp("app_sysu")
    tree = build_sysu_tree(base / "SYSU-MM01", train=(1,), val=(3,), test=SYSU_TEST_IDS)
    for modality, name in (("infrared", "ir"), ("visible", "vis")):
        index_build(local, base / name, dataset="sysu", data_root=tree.root, modality=modality, progress=False)
    return {"root": tree.root, "ir": base / "ir", "vis": base / "vis"}


@contextlib.contextmanager
def running_app(gallery: Path, downloads: Path, top_k: int = TOP_K, **encoder) -> Iterator[tuple[AppHandle, object]]:
    handle = launch_app(gallery, port=free_port(), top_k=top_k, **encoder)
    try:
        client = gradio_client.Client(handle.url, verbose=False, analytics_enabled=False,
                                      download_files=str(downloads))
        try:
            yield handle, client
        finally:
            client.close()
    finally:
        handle.close()


@pytest.fixture(scope="module")
def ir_app(galleries, tiny_export, tmp_path_factory):
    with running_app(galleries["ir"], tmp_path_factory.mktemp("dl_ir"), local=tiny_export.repo) as app:
        yield app


@pytest.fixture(scope="module")
def mixed_app(galleries, tiny_export, tmp_path_factory):
    with running_app(galleries["mixed"], tmp_path_factory.mktemp("dl_mixed"), local=tiny_export.repo) as app:
        yield app


@pytest.fixture(scope="module")
def triton(tiny_export) -> Iterator[TritonServer]:
    """One real Triton server for the module, on a fixed free gRPC port so that it can come back on it."""
    server = TritonServer(tiny_export.repo, grpc_port=free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def triton_app(galleries, triton, tmp_path_factory):
    with running_app(galleries["ir"], tmp_path_factory.mktemp("dl_triton"), server=triton.url) as app:
        yield app


# ---- helpers ----------------------------------------------------------------------------------------------


def search(client, path: Optional[Path], direction: str) -> tuple[list[dict], str, list[dict]]:
    query = None if path is None else gradio_client.handle_file(str(path))
    tiles, status, hits = client.predict(query, direction, api_name="/search")
    return tiles, status, hits


def expected(local: OnnxEncoder, gallery_dir: Path, query: Path, query_modality: str,
             target: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of the top-k gallery images of ``target`` (None: all), computed from the image files."""
    records = Gallery.open(gallery_dir).records
    rows = np.array([i for i, r in enumerate(records) if target is None or r.modality.value == target])
    modality = target or records[0].modality.value  # every gallery searched whole here holds one modality
    g = local.encode([records[i].path for i in rows], modality)
    q = local.encode([str(query)], query_modality)[0]
    scores = (g @ q) / (np.linalg.norm(g, axis=1) * np.linalg.norm(q))
    order = np.argsort(-scores, kind="stable")[:TOP_K]
    return rows[order], scores[order]


def gallery_id(gallery_dir: Path, path: Path) -> int:
    return [r.path for r in Gallery.open(gallery_dir).records].index(str(path))


def check_tiles(tiles: list[dict], hits: list[dict]) -> None:
    """Captions say rank, score (3 decimals), person id and camera of the hit shown in the same place."""
    assert len(tiles) == len(hits)
    for rank, (tile, hit) in enumerate(zip(tiles, hits), start=1):
        match = CAPTION.match(tile["caption"])
        assert match, tile["caption"]
        assert (int(match[1]), float(match[2]), int(match[3]), int(match[4])) == \
            (rank, round(hit["score"], 3), hit["pid"], hit["camid"])
        assert os.path.isfile(tile["image"])


def rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# ---- searching ------------------------------------------------------------------------------------------


def test_self_query_finds_itself_and_direction_picks_the_stem(ir_app, galleries, crops, local):
    handle, client = ir_app
    query = crops["infrared"] / "0007" / "1.png"
    own_id = gallery_id(galleries["ir"], query)

    tiles, status, hits = search(client, query, I2V)  # infrared stem, like the gallery: it finds itself
    ids, scores = expected(local, galleries["ir"], query, "infrared", None)
    assert [h["id"] for h in hits] == ids.tolist() and ids[0] == own_id
    np.testing.assert_allclose([h["score"] for h in hits], scores, atol=1e-4)
    assert hits[0]["score"] > 0.9999 and hits[0]["pid"] == 7 and hits[0]["modality"] == "infrared"
    check_tiles(tiles, hits)
    assert tiles[0]["caption"] == "#1 1.000 · id 7 · cam 0"
    np.testing.assert_array_equal(rgb(tiles[0]["image"]), rgb(query))  # the result shows the gallery image itself
    assert "top 5 of 9 gallery images" in status and "infrared stem" in status and "ONNX Runtime" in status

    tiles, status, hits = search(client, query, V2I)  # visible stem: another embedding, another ranking
    ids, scores = expected(local, galleries["ir"], query, "visible", None)
    assert [h["id"] for h in hits] == ids.tolist()
    np.testing.assert_allclose([h["score"] for h in hits], scores, atol=1e-4)
    assert hits[0]["score"] < 0.9999
    check_tiles(tiles, hits)
    assert "visible stem" in status

    # The page tells the user that this gallery holds one modality only.
    import httpx

    config = httpx.get(handle.url + "config", timeout=10).json()
    summary = next(c["props"]["value"] for c in config["components"]
                   if c.get("props", {}).get("elem_id") == "gallery-summary")
    assert "holds only infrared images" in summary and "9 images" in summary


def test_mixed_gallery_ranks_only_the_other_modality(mixed_app, galleries, crops, local):
    _, client = mixed_app
    query = crops["visible"] / "0003" / "0.png"
    tiles, status, hits = search(client, query, V2I)
    ids, scores = expected(local, galleries["mixed"], query, "visible", "infrared")
    assert [h["id"] for h in hits] == ids.tolist() and len(hits) == TOP_K
    assert {h["modality"] for h in hits} == {"infrared"}
    np.testing.assert_allclose([h["score"] for h in hits], scores, atol=1e-4)
    check_tiles(tiles, hits)
    assert "top 5 of 9 infrared images (gallery 13)" in status

    query = crops["infrared"] / "0012" / "2.png"
    tiles, status, hits = search(client, query, I2V)  # only 4 visible images: all of them, ranked
    ids, scores = expected(local, galleries["mixed"], query, "infrared", "visible")
    assert [h["id"] for h in hits] == ids.tolist() and len(hits) == 4
    assert {h["modality"] for h in hits} == {"visible"} and [h["rank"] for h in hits] == [1, 2, 3, 4]
    check_tiles(tiles, hits)
    assert "top 4 of 4 visible images" in status and "infrared stem" in status


def test_cli_search_ranks_only_the_other_modality_like_the_page(galleries, crops, local):
    """issue 18: `mult search` ranked a mixed gallery whole while the page ranked the other modality only."""
    from mult.serving.gallery_commands import search_query

    for query, modality, target, count in ((crops["visible"] / "0003" / "0.png", "visible", "infrared", TOP_K),
                                           (crops["infrared"] / "0012" / "2.png", "infrared", "visible", 4)):
        report = search_query(local, galleries["mixed"], query, query_modality=modality, top_k=TOP_K)
        ids, scores = expected(local, galleries["mixed"], query, modality, target)
        assert [h.id for h in report.hits] == ids.tolist() and len(report.hits) == count
        assert {h.modality for h in report.hits} == {target} and [h.rank for h in report.hits] == list(range(1, count + 1))
        np.testing.assert_allclose([h.score for h in report.hits], scores, atol=1e-4)


def test_folder_gallery_examples_come_from_the_gallery_or_a_folder(galleries, tmp_path):
    mixed = Gallery.open(galleries["mixed"])
    assert gallery_dataset(mixed) is None  # a plain folder gallery knows no dataset: the fallback
    picked = gallery_examples(mixed)  # the gallery holds visible images too: those are the queries
    assert picked and all(r.modality is Modality.visible and r in mixed.records for r in picked)
    assert sorted(r.pid for r in picked) == list(VIS_PIDS)  # one per person
    ir = Gallery.open(galleries["ir"])
    picked = gallery_examples(ir, n=2)
    assert len(picked) == 2 and len({Path(r.path).parent for r in picked}) == 2
    sets, known = example_sets(ir, None, None)  # one unlabelled-direction set; its ids come from the metadata
    assert [(s.elem_id, s.direction) for s in sets] == [("examples", None)]
    assert [known.pid_of(p) for p in sets[0].paths] == [3, 7, 12]
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert folder_examples(tmp_path) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    with pytest.raises(MultError, match="no examples folder"):
        folder_examples(tmp_path / "missing")


def test_examples_are_held_out_photos_of_people_in_the_gallery(sysu):
    ir = Gallery.open(sysu["ir"])
    dataset = gallery_dataset(ir)  # the manifest names the dataset: its test images of both modalities
    assert dataset == source_records(ir.manifest["source"]) and {r.pid for r in dataset} == set(SYSU_TEST_IDS)
    indexed = {r.path for r in ir.records}
    assert {r.modality for r in ir.records} == {Modality.infrared} and len(indexed) == SYSU_IR_IMAGES

    picked = held_out_examples(ir, dataset)  # default direction, visible -> infrared
    assert [r.pid for r in picked] == list(SYSU_TEST_IDS)  # one per person, every person of the gallery
    for record in picked:
        assert record.modality is Modality.visible and record.path not in indexed and os.path.isfile(record.path)
        assert Path(record.path).parts[-3] in ("cam1", "cam2", "cam4", "cam5")
    assert held_out_examples(ir, dataset) == picked  # deterministic
    assert [r.pid for r in held_out_examples(ir, dataset, n=2)] == [2, 6]  # spread over the ids
    # Every infrared test image is in this gallery: none is held out for infrared -> visible.
    assert held_out_examples(ir, dataset, "infrared → visible") == []
    sets, known = example_sets(ir, None, dataset)
    assert [(s.elem_id, s.direction, s.paths) for s in sets] == \
        [("examples-visible", "visible → infrared", [r.path for r in picked])]
    assert "visible photos of people in the gallery" in sets[0].label and len(known) == len(dataset)

    vis = Gallery.open(sysu["vis"])  # the other way round: infrared examples of a visible gallery's people
    picked = held_out_examples(vis, gallery_dataset(vis), "infrared → visible")
    assert [r.pid for r in picked] == list(SYSU_TEST_IDS)
    assert all(r.modality is Modality.infrared and Path(r.path).parts[-3] in ("cam3", "cam6") for r in picked)
    assert [s.elem_id for s in example_sets(vis, None, gallery_dataset(vis))[0]] == ["examples-infrared"]

    # A gallery whose dataset has gone (moved, deleted) still works, like a folder gallery.
    gone = Gallery(ir.directory, ir.index, ir.records, {**ir.manifest, "source": {
        "dataset": "sysu", "data_root": str(sysu["root"].parent / "moved"), "modality": "infrared"}})
    assert gallery_dataset(gone) is None


def test_regdb_gallery_examples_and_unknown_sources(local, tmp_path):
    """RegDB: ids are the split's test labels, shared by both modalities' idx files."""
    from conftest import build_regdb_tree
    from mult.data.regdb import RegDB

    tree = build_regdb_tree(tmp_path / "RegDB")
    index_build(local, tmp_path / "thermal", dataset="regdb", data_root=tree.root, modality="thermal",
                regdb_split=2, progress=False)
    gallery = Gallery.open(tmp_path / "thermal")
    dataset = gallery_dataset(gallery)
    assert dataset == RegDB(tree.root, split=2).test()
    picked = held_out_examples(gallery, dataset)
    assert [r.pid for r in picked] == [0, 1, 2] and all(r.modality is Modality.visible for r in picked)
    assert all(Path(r.path).parts[-3] == "Visible" for r in picked)
    copy = tmp_path / "upload.bmp"  # RegDB's BMPs all have one size: the copy is told apart by its digest
    copy.write_bytes(Path(picked[1].path).read_bytes())
    assert len({os.path.getsize(r.path) for r in dataset if r.modality is Modality.visible}) == 1
    assert KnownImages(dataset).pid_of(copy) == 1
    assert source_records({"images": str(tmp_path), "modality": "infrared"}) is None
    with pytest.raises(MultError, match="dataset 'market'"):
        source_records({"dataset": "market", "data_root": str(tmp_path)})


def test_known_images_by_path_or_identical_copy(sysu, tmp_path):
    known = KnownImages(gallery_dataset(Gallery.open(sysu["ir"])))
    original = sysu["root"] / "cam2" / "0004" / "0001.jpg"
    assert known.pid_of(original) == 4  # a dataset image, by path
    copy = tmp_path / "upload.jpg"  # what the page gets from Gradio: a copy under another name
    copy.write_bytes(original.read_bytes())
    assert known.pid_of(copy) == 4
    changed = bytearray(original.read_bytes())
    changed[-3] ^= 0xFF  # same size, other bytes: another image
    copy.write_bytes(bytes(changed))
    assert known.pid_of(copy) is None
    assert known.pid_of(tmp_path / "missing.jpg") is None
    twins = [Record(str(p), pid, 0, Modality.visible) for p, pid in ((tmp_path / "a.png", 1), (tmp_path / "b.png", 2))]
    for record in twins:
        Path(record.path).write_bytes(b"same bytes")
    (tmp_path / "c.png").write_bytes(b"same bytes")
    assert KnownImages(twins).pid_of(tmp_path / "c.png") is None  # ambiguous: no guess


def test_match_summary_and_frame_width():
    assert match_summary(7, [3, 7, 7]) == "person 7: first correct match at rank 2 of 3"
    assert match_summary(7, [None, 3]) == "person 7: no correct match in the top 2"
    assert frame_width(Image.new("RGB", (8, 16))) == 3 and frame_width(Image.new("RGB", (64, 128))) == 4


def frame_of(tile: Image.Image, width: int) -> set[tuple[int, int, int]]:
    """The colours of a tile's outer ``width``-pixel ring."""
    pixels = np.asarray(tile.convert("RGB"))
    ring = np.concatenate([pixels[:width].reshape(-1, 3), pixels[-width:].reshape(-1, 3),
                           pixels[:, :width].reshape(-1, 3), pixels[:, -width:].reshape(-1, 3)])
    return {tuple(int(v) for v in c) for c in np.unique(ring, axis=0)}


def test_known_query_frames_hits_green_or_red_and_ranks_the_first_match(sysu, local, tmp_path):
    """SearchService (no Gradio): an example copied elsewhere, as Gradio does, is still its person."""
    gallery = Gallery.open(sysu["ir"])
    dataset = gallery_dataset(gallery)
    service = SearchService(gallery, local, top_k=SYSU_IR_IMAGES, known=KnownImages(dataset))
    example = held_out_examples(gallery, dataset)[1]
    query = tmp_path / "example.jpg"
    query.write_bytes(Path(example.path).read_bytes())

    answer = service.search(str(query), V2I)  # the whole gallery: the person's images are all among the hits
    pids = [h["pid"] for h in answer.hits]
    assert answer.ok and len(pids) == SYSU_IR_IMAGES and example.pid in pids
    first = pids.index(example.pid) + 1
    assert answer.status.startswith(f"**person {example.pid}: first correct match at rank {first} of 18** · top 18")
    for (tile, caption), hit in zip(answer.tiles, answer.hits):
        same = hit["pid"] == example.pid
        image = rgb(Path(gallery.records[hit["id"]].path))
        width = frame_width(Image.fromarray(image))
        assert hit["match"] is same
        assert frame_of(tile, width) == {GREEN if same else RED}  # exactly the rank lists' colours
        assert caption.endswith(" · ✓ same person" if same else " · ✗ another person")
        np.testing.assert_array_equal(np.asarray(tile)[width:-width, width:-width], image)  # inside: the image

    answer = SearchService(gallery, local, top_k=1, known=KnownImages(dataset)).search(str(query), V2I)
    expected_line = match_summary(example.pid, [answer.hits[0]["pid"]])
    assert answer.status.startswith(f"**{expected_line}**")

    upload = write_crops(tmp_path / "upload", (1,), per_pid=1, seed=9, mode="RGB")[0]  # a real upload: unknown
    answer = service.search(str(upload), V2I)
    assert answer.ok and "correct match" not in answer.status and "person" not in answer.status
    assert all(h["match"] is None for h in answer.hits)
    for (tile, caption), hit in zip(answer.tiles, answer.hits):  # unframed: the gallery image as it is
        assert CAPTION.match(caption) and "person" not in caption
        np.testing.assert_array_equal(np.asarray(tile), rgb(Path(gallery.records[hit["id"]].path)))


def test_page_over_a_dataset_gallery_knows_its_examples(sysu, tiny_export, tmp_path):
    """Through Gradio: the page shows visible examples only, and an example uploaded (so copied by Gradio)
    gets the first-correct-match line and a match flag per hit."""
    import httpx

    gallery = Gallery.open(sysu["ir"])
    example = held_out_examples(gallery, gallery_dataset(gallery))[0]
    with running_app(sysu["ir"], tmp_path / "dl", top_k=SYSU_IR_IMAGES, local=tiny_export.repo) as (handle, client):
        config = httpx.get(handle.url + "config", timeout=10).json()
        ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert "examples-visible" in ids and "examples-infrared" not in ids and "examples" not in ids
        tiles, status, hits = search(client, Path(example.path), V2I)
        first = [h["pid"] for h in hits].index(example.pid) + 1
        assert f"person {example.pid}: first correct match at rank {first} of 18" in status
        assert [h["match"] for h in hits] == [h["pid"] == example.pid for h in hits]
        check_tiles(tiles, hits)
        assert all(t["caption"].endswith("person") for t in tiles)
        tiles, status, hits = search(client, Path(gallery.records[0].path), V2I)  # a gallery image: known too
        assert "person 2: first correct match" in status

        # The filters panel (issue 17): camera 3 only, inside the faiss search; a bad time is one line.
        assert {"filters", "filter-cameras", "filter-identity", "filter-since", "filter-until"} <= ids
        on_cam3 = sum(r.camid == 3 for r in gallery.records)
        query = gradio_client.handle_file(example.path)
        tiles, status, hits = client.predict(query, V2I, ["3"], "known", "", "", api_name="/search")
        assert len(hits) == on_cam3 > 0 and {h["camid"] for h in hits} == {3}
        assert f"of {on_cam3} gallery images passing the filter (camera 3 · identity known)" in status
        tiles, status, hits = client.predict(query, V2I, [], "any", "at dawn", "", api_name="/search")
        assert hits == [] and "since 'at dawn' is not a time" in status
        # The re-rank toggle: the same 18 images, re-ordered by the re-ranked distance, and the status says so.
        tiles, status, hits = client.predict(query, V2I, [], "any", "", "", True, api_name="/search")
        distances = [h["reranked_distance"] for h in hits]
        assert len(hits) == 18 and distances == sorted(distances) and "re-ranking the top 100" in status


def test_moved_gallery_image_shows_a_placeholder(local, tmp_path):
    """The page does not break when a gallery image was deleted after indexing (SearchService, no Gradio)."""
    paths = write_crops(tmp_path / "ir", (5,), per_pid=2, seed=3)
    gallery = build_gallery(records_for_gallery(images_dir=tmp_path / "ir", modality="infrared"), local,
                            tmp_path / "gallery", progress=False)
    query = tmp_path / "query.png"
    query.write_bytes(paths[0].read_bytes())
    paths[1].unlink()
    answer = SearchService(gallery, local, top_k=2).search(str(query), I2V)
    assert answer.ok and [h["id"] for h in answer.hits] == [0, 1] and answer.hits[0]["score"] > 0.9999
    (first, first_caption), (second, second_caption) = answer.tiles
    np.testing.assert_array_equal(np.asarray(first), rgb(query))
    assert not first_caption.endswith("file missing") and second_caption.endswith("· file missing")
    assert second.size == (64, 128)


def test_search_takes_up_images_added_while_the_page_runs(local, tmp_path):
    write_crops(tmp_path / "ir", (5,), per_pid=2, seed=3)
    gallery = build_gallery(records_for_gallery(images_dir=tmp_path / "ir", modality="infrared"), local,
                            tmp_path / "gallery", progress=False)
    service = SearchService(gallery, local, top_k=5)
    query = write_crops(tmp_path / "q", (8,), per_pid=1, seed=4)[0]
    assert len(service.search(str(query), I2V).hits) == 2
    added = write_crops(tmp_path / "more", (8,), per_pid=1, seed=4)  # the query image itself, now in the gallery
    Gallery.open(gallery.directory).add(records_for_gallery(images_dir=tmp_path / "more", modality="infrared"),
                                        local, progress=False)  # as `mult index add` in another process would
    answer = service.search(str(query), I2V)
    assert len(answer.hits) == 3 and answer.hits[0]["id"] == 2 and answer.hits[0]["score"] > 0.9999
    assert "gallery 3" in answer.status and os.path.basename(added[0]) == answer.hits[0]["file"]


# ---- bad input ------------------------------------------------------------------------------------------


def test_bad_uploads_get_one_clear_line(ir_app, crops, tmp_path):
    _, client = ir_app
    text = tmp_path / "notes.png"
    text.write_text("not a picture\n")
    padded = tmp_path / "huge.png"  # a valid PNG with junk after it: only a size check made before decoding fails it
    padded.write_bytes((crops["infrared"] / "0003" / "0.png").read_bytes() + b"\0" * MAX_UPLOAD_BYTES)
    wide = tmp_path / "wide.png"  # 20.5 Mpixel of black: a ~20 kB file, refused from its header
    Image.new("L", (5000, MAX_UPLOAD_PIXELS // 5000 + 100)).save(wide)

    cases = [(text, V2I, "notes.png: not a readable image"),
             (padded, V2I, f"huge.png: the file is {padded.stat().st_size:,} bytes, above the upload limit of "
                           f"{MAX_UPLOAD_BYTES:,} bytes (20 MB)"),
             (wide, I2V, "wide.png: image is 5000x4100 = 20,500,000 pixels, above the limit of 20,000,000"),
             (None, V2I, "no query image: upload a photo")]
    for path, direction, message in cases:
        tiles, status, hits = search(client, path, direction)
        assert status.startswith("⚠️ ") and message in status, status
        assert "Traceback" not in status and "\n" not in status
        assert tiles == [] and hits == []
    _, status, _ = search(client, crops["infrared"] / "0003" / "0.png", "sideways")
    assert "unknown direction 'sideways'" in status and V2I in status
    tiles, _, hits = search(client, crops["infrared"] / "0003" / "0.png", I2V)  # the page still works
    assert len(tiles) == TOP_K and hits[0]["score"] > 0.9999


def test_launch_problems_are_multerrors(galleries, tiny_export, tmp_path):
    with pytest.raises(MultError, match="no gallery folder"):
        launch_app(tmp_path / "nowhere", local=tiny_export.repo, port=free_port())
    with pytest.raises(MultError, match="exactly one"):
        launch_app(galleries["ir"], port=free_port())
    with pytest.raises(MultError, match="top-k"):
        launch_app(galleries["ir"], local=tiny_export.repo, port=free_port(), top_k=0)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MultError, match=f"127.0.0.1:{port}: the port is in use"):
            launch_app(galleries["ir"], local=tiny_export.repo, port=port)


# ---- through a real Triton server ---------------------------------------------------------------------------


def test_search_through_triton_matches_local(triton_app, triton, galleries, crops, local):
    _, client = triton_app
    query = crops["infrared"] / "0012" / "0.png"
    tiles, status, hits = search(client, query, I2V)
    ids, scores = expected(local, galleries["ir"], query, "infrared", None)
    assert [h["id"] for h in hits] == ids.tolist() and ids[0] == gallery_id(galleries["ir"], query)
    np.testing.assert_allclose([h["score"] for h in hits], scores, atol=1e-4)
    check_tiles(tiles, hits)
    assert f"Triton at {triton.url}" in status


def test_server_down_mid_session_then_back(triton_app, triton, galleries, crops):
    _, client = triton_app
    query = crops["infrared"] / "0003" / "2.png"
    own_id = gallery_id(galleries["ir"], query)
    assert search(client, query, I2V)[2][0]["id"] == own_id
    triton.stop()
    try:
        tiles, status, hits = search(client, query, I2V)
        assert status == (f"⚠️ the model server at {triton.url} is not answering; start it with `mult serve "
                          f"--repo model_repository --grpc-port {triton.url.rsplit(':', 1)[1]}` and search again")
        assert tiles == [] and hits == []
    finally:
        triton.start()  # same gRPC port: the page reconnects without a restart
    assert search(client, query, I2V)[2][0]["id"] == own_id


# ---- the blocking entry point behind `mult app` -------------------------------------------------------------


def test_run_app_serves_until_sigterm(galleries, tiny_export):
    """``mult app`` blocks in run_app; SIGTERM (like Ctrl-C) stops it cleanly with status 0 and frees the port."""
    import httpx

    port = free_port()
    lines: list[str] = []
    answers: list[int] = []
    up = threading.Event()

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("search page at"):
            up.set()  # run_app has installed its SIGTERM handler before saying so

    def poke() -> None:
        if up.wait(120):  # never signal a process that has no handler for it
            answers.append(httpx.get(f"http://127.0.0.1:{port}/config", timeout=10).status_code)
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=poke, daemon=True)
    thread.start()
    assert run_app(galleries["ir"], local=tiny_export.repo, port=port, top_k=3, echo=echo) == 0
    thread.join(10)
    assert lines[0] == f"search page at http://127.0.0.1:{port}/" and answers == [200]
    assert lines[-1] == "Stopping the search page..."
    assert signal.getsignal(signal.SIGTERM) is previous
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/config", timeout=5)
