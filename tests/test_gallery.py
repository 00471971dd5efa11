"""The FAISS gallery (build / add / info / search / reopen), its failure modes, rank lists and record selection,
with a real random-init ResNet-18 two-stream encoder at 64x32."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_torch_encoder, write_crops
from mult.data.records import Modality, Record
from mult.errors import MultError
from mult.serving.faiss_index import IndexSpec, build_index, default_nlist, exact_topk, measure_recall, recall_at_k
from mult.serving.gallery import (
    INDEX_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    Gallery,
    build_gallery,
    check_same_model,
    read_metadata,
    records_for_gallery,
    update_lock,
)
from mult.serving.gallery_commands import index_add, index_build, index_info, search_query
from mult.serving.ranklist import GREEN, QUERY, RED, UNKNOWN, RanklistStyle, save_ranklist

PIDS = (3, 7, 12)


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    """3 ids x 3 infrared crops in <pid>/ folders; shared by the module, so no test may change it."""
    root = tmp_path_factory.mktemp("gallery_images") / "crops"
    write_crops(root, PIDS, per_pid=3, seed=0)
    return root


@pytest.fixture(scope="module")
def master(crops: Path, gallery_encoder, tmp_path_factory) -> Path:
    """A flat gallery of ``crops``, built once; tests get their own copy (``built``)."""
    out = tmp_path_factory.mktemp("gallery_master") / "gallery"
    build_gallery(records_for_gallery(images_dir=crops, modality="infrared"), gallery_encoder, out, progress=False)
    return out


@pytest.fixture
def built(master: Path, tmp_path: Path) -> Gallery:
    return Gallery.open(shutil.copytree(master, tmp_path / "gallery"))


def _with_corrupt_image(crops: Path, root: Path) -> Path:
    """A copy of ``crops`` plus an unreadable PNG that sorts last (so it fails after the others were embedded)."""
    shutil.copytree(crops, root)
    _corrupt_png(root / "0012" / "9.png")
    return root


def _self_search(gallery: Gallery, encoder, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    """Rank-1 (id, score) when each record's own embedding is the query."""
    emb = encoder.encode([r.path for r in records], records[0].modality)
    hits = gallery.search(emb, k=3)
    return np.array([h[0].id for h in hits]), np.array([h[0].score for h in hits])


# ---- build -> info -> search -> add -> reopen -------------------------------------------------------------
def test_build_info_search_add_reopen(built: Gallery, gallery_encoder, crops: Path, tmp_path: Path):
    directory = built.directory
    assert sorted(p.name for p in directory.iterdir()) == sorted([INDEX_FILE, METADATA_FILE, MANIFEST_FILE])
    info = built.info()
    assert (info["count"], info["embedding_size"], info["identities"], info["images_without_id"]) == (9, 512, 3, 0)
    assert info["modalities"] == {"infrared": 9}
    assert info["index"]["kind"] == "flat" and info["model"]["arch"] == "resnet18"
    assert len(info["model"]["weights_sha256"]) == 64

    old = list(built.records)
    ids, scores = _self_search(built, gallery_encoder, old)
    np.testing.assert_array_equal(ids, np.arange(9))  # each image finds itself at rank 1 ...
    assert np.all(scores > 0.9999)                     # ... with cosine 1
    assert [r.pid for r in old] == [p for p in PIDS for _ in range(3)]

    new_root = tmp_path / "more"
    new_paths = write_crops(new_root, (40,), per_pid=2, seed=5)
    new_records = records_for_gallery(images_dir=new_root, modality="infrared")
    counts = built.add(new_records + new_records, gallery_encoder, progress=False)  # repeats are embedded once
    assert counts == {"added": 2, "skipped": 2, "count": 11}
    assert built.records[:9] == old                            # old ids keep their images
    ids, _ = _self_search(built, gallery_encoder, old)
    np.testing.assert_array_equal(ids, np.arange(9))
    new_ids, new_scores = _self_search(built, gallery_encoder, built.records[9:])
    np.testing.assert_array_equal(new_ids, [9, 10])
    assert np.all(new_scores > 0.9999)
    assert [built.records[i].path for i in (9, 10)] == [str(p) for p in new_paths]

    reopened = Gallery.open(directory)
    assert len(reopened) == 11 and reopened.records == built.records
    assert [h["action"] for h in reopened.manifest["history"]] == ["build", "add"]
    ids, _ = _self_search(reopened, gallery_encoder, reopened.records)
    np.testing.assert_array_equal(ids, np.arange(11))
    # Adding the same images again embeds nothing.
    again = reopened.add(records_for_gallery(images_dir=new_root, modality="infrared"), gallery_encoder, progress=False)
    assert again == {"added": 0, "skipped": 2, "count": 11}
    assert not list(tmp_path.glob(".gallery.*"))  # no staging or aside directories left behind


def test_search_k_larger_than_gallery_and_bad_queries(built: Gallery):
    emb = np.zeros((2, 512), np.float32)
    emb[:, 0] = 1
    hits = built.search(emb, k=50)
    assert [len(h) for h in hits] == [9, 9] and [h.rank for h in hits[0]] == list(range(1, 10))
    assert all(a.score >= b.score for a, b in zip(hits[0], hits[0][1:]))
    with pytest.raises(MultError, match="512-d"):
        built.search(np.ones((1, 128), np.float32), k=3)
    with pytest.raises(MultError, match="top-k"):
        built.search(emb, k=0)


# ---- approximate indexes and recall ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_report_recall(crops: Path, gallery_encoder, tmp_path: Path, kind: str):
    records = records_for_gallery(images_dir=crops, modality="infrared")
    gallery = build_gallery(records, gallery_encoder, tmp_path / kind, kind=kind, progress=False)
    entry = Gallery.open(tmp_path / kind).manifest["index"]
    assert entry["kind"] == kind and entry["recall_queries"] == 9 and entry["recall_k"] == 9
    # 9 vectors: one IVF list holds all of them and HNSW visits all, so both are exact here.
    assert entry["recall_at_10"] == 1.0
    if kind == "ivf":
        assert entry["params"]["nlist"] == 1
    else:
        assert entry["params"]["M"] == 32
    ids, scores = _self_search(gallery, gallery_encoder, records)
    np.testing.assert_array_equal(ids, np.arange(9))
    assert np.all(scores > 0.9999)


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 10, dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_measured_recall_follows_nprobe():
    vectors = _clustered(2000, 32, 0)
    spec = IndexSpec("ivf", nlist=32, nprobe=1)
    index = build_index(vectors, spec)
    low = measure_recall(index, spec.resolved(2000), queries=300)["recall_at_10"]
    full = measure_recall(index, IndexSpec("ivf", nlist=32, nprobe=32), queries=300)["recall_at_10"]
    assert full == 1.0
    assert 0.2 < low < 0.99  # probing 1 of 32 lists misses neighbours in the other lists


def test_recall_at_k_hand_case():
    found = np.array([[1, 2, 3], [4, 5, 6]])
    truth = np.array([[3, 2, 9], [7, 8, 9]])
    assert recall_at_k(found, truth) == pytest.approx(1 / 3)  # (2/3 + 0/3) / 2
    assert recall_at_k(np.array([[-1, 5]]), np.array([[-1, 5]])) == 0.5  # -1 (no result) never counts


def test_exact_topk_streams_like_brute_force():
    rng = np.random.default_rng(1)
    base, q = rng.standard_normal((50, 8)).astype(np.float32), rng.standard_normal((6, 8)).astype(np.float32)
    chunks = [(start, base[start:start + 7]) for start in range(0, 50, 7)]
    expected = np.argsort(-(q @ base.T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(exact_topk(q, chunks, 5), expected)
    padded = exact_topk(q, [(0, base[:3])], 5)
    assert (padded[:, 3:] == -1).all() and set(padded[0, :3]) == {0, 1, 2}


def test_default_nlist():
    assert default_nlist(10_000) == 256        # 4*sqrt = 400, capped at 10000 // 39 = 256
    assert default_nlist(100_000) == 1265      # round(4 * 316.23)
    assert default_nlist(1_000_000) == 4000
    assert default_nlist(20) == 1
    with pytest.raises(MultError, match="nlist=50"):
        IndexSpec("ivf", nlist=50).resolved(10)
    with pytest.raises(MultError, match="kind 'pq'"):
        IndexSpec("pq")


# ---- corrupt galleries -------------------------------------------------------------------------------------
def test_truncated_index_is_refused(built: Gallery):
    path = built.directory / INDEX_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MultError, match="index.faiss.*truncated"):
        Gallery.open(built.directory)


def test_edited_metadata_is_refused(built: Gallery):
    path = built.directory / METADATA_FILE
    lines = path.read_text().splitlines()
    row = json.loads(lines[4])
    row["pid"] = 99 if row["pid"] != 99 else 98  # same length is not the point: the checksum is
    lines[4] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MultError, match="metadata.jsonl.*(checksum|bytes)"):
        Gallery.open(built.directory)


def test_inconsistent_or_missing_manifest_is_refused(built: Gallery):
    manifest_path = built.directory / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest["count"] = 8
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(MultError, match="inconsistent"):
        Gallery.open(built.directory)
    manifest_path.unlink()
    with pytest.raises(MultError, match="not a mult gallery"):
        Gallery.open(built.directory)
    with pytest.raises(MultError, match="no gallery folder"):
        Gallery.open(built.directory.parent / "nowhere")


def test_malformed_metadata_line_names_the_line(built: Gallery):
    path = built.directory / METADATA_FILE
    lines = path.read_text().splitlines()
    lines[2] = '{"id": 2, "path": "x.png"}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MultError, match="metadata.jsonl line 3: malformed"):
        read_metadata(path)
    with pytest.raises(MultError, match="metadata.jsonl"):  # and open() refuses it before parsing
        Gallery.open(built.directory)


# ---- model / embedding mismatches ---------------------------------------------------------------------------
def test_add_refuses_another_model(built: Gallery, tmp_path: Path):
    more = tmp_path / "more"
    write_crops(more, (50,), per_pid=1, seed=9)
    records = records_for_gallery(images_dir=more, modality="infrared")
    with pytest.raises(MultError, match="different model.*weights_sha256"):
        built.add(records, tiny_torch_encoder(seed=1), progress=False)
    wide = tiny_torch_encoder(seed=0, arch="resnet50")  # 2048-d embeddings
    with pytest.raises(MultError, match="different model.*arch"):
        built.add(records, wide, progress=False)
    with pytest.raises(MultError, match="2048-d embeddings but the gallery holds 512-d"):
        built.add(records, wide, model_info={"encoder": "unnamed"}, progress=False)
    assert len(Gallery.open(built.directory)) == 9


def test_model_identity_rules():
    check_same_model({"version": 3, "encoder": "OnnxEncoder"}, {"version": "3", "encoder": "TritonEncoder"}, "g")
    check_same_model({"version": 3}, {"version": ""}, "g")  # "latest" says nothing
    check_same_model({"weights_sha256": "a"}, {"name": "x"}, "g")  # nothing in common to compare
    with pytest.raises(MultError, match="g: .*different model.*version: gallery '3' vs encoder '4'"):
        check_same_model({"version": 3, "arch": "resnet18"}, {"version": 4, "arch": "resnet18"}, "g")


def test_search_refuses_another_model(built: Gallery, crops: Path):
    with pytest.raises(MultError, match="different model"):
        search_query(tiny_torch_encoder(seed=1), built.directory, crops / "0003" / "0.png")


# ---- atomicity -------------------------------------------------------------------------------------------------
def _corrupt_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def test_failed_build_leaves_no_target(crops: Path, gallery_encoder, tmp_path: Path):
    records = records_for_gallery(images_dir=_with_corrupt_image(crops, tmp_path / "bad"), modality="infrared")
    target = tmp_path / "out" / "gallery"
    with pytest.raises(MultError, match="9.png"):
        build_gallery(records, gallery_encoder, target, progress=False)
    assert not target.exists()
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert leftovers == []  # no staging directory left either


def test_failed_overwrite_and_add_keep_the_old_gallery(built: Gallery, crops: Path, gallery_encoder, tmp_path: Path):
    before = {p.name: p.read_bytes() for p in built.directory.iterdir()}
    records = records_for_gallery(images_dir=_with_corrupt_image(crops, tmp_path / "bad"), modality="infrared")
    with pytest.raises(MultError, match="already exists"):
        build_gallery(records, gallery_encoder, built.directory, progress=False)
    with pytest.raises(MultError, match="9.png"):
        build_gallery(records, gallery_encoder, built.directory, overwrite=True, progress=False)
    with pytest.raises(MultError, match="9.png"):
        built.add(records, gallery_encoder, progress=False)
    assert {p.name: p.read_bytes() for p in built.directory.iterdir()} == before
    assert len(built) == 9 and built.index.ntotal == 9
    assert len(Gallery.open(built.directory)) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "gallery"]


def _extra_records(root: Path, pid: int, seed: int) -> list[Record]:
    write_crops(root, (pid,), per_pid=2, seed=seed)
    return records_for_gallery(images_dir=root, modality="infrared")


def test_adds_from_two_stale_views_keep_both(built: Gallery, gallery_encoder, tmp_path: Path):
    """Two processes open the gallery, then add in turn: the second takes up the first's version first."""
    other = Gallery.open(built.directory)
    first, second = _extra_records(tmp_path / "a", 60, seed=5), _extra_records(tmp_path / "b", 61, seed=6)
    assert built.add(first, gallery_encoder, progress=False) == {"added": 2, "skipped": 0, "count": 11}
    assert other.add(second + first, gallery_encoder, progress=False) == {"added": 2, "skipped": 2, "count": 13}
    reopened = Gallery.open(built.directory)
    assert [r.pid for r in reopened.records[9:]] == [60, 60, 61, 61]
    ids, _ = _self_search(reopened, gallery_encoder, reopened.records[9:])
    assert ids.tolist() == [9, 10, 11, 12]


def test_add_waits_for_the_update_lock(built: Gallery, gallery_encoder, tmp_path: Path, capfd):
    import threading

    records = _extra_records(tmp_path / "c", 62, seed=7)
    result: dict = {}
    with update_lock(built.directory):
        worker = threading.Thread(target=lambda: result.update(built.add(records, gallery_encoder, progress=False)))
        worker.start()
        worker.join(timeout=1.5)
        assert worker.is_alive() and len(Gallery.open(built.directory)) == 9  # blocked, nothing written
    worker.join(timeout=60)
    assert result == {"added": 2, "skipped": 0, "count": 11}
    assert len(Gallery.open(built.directory)) == 11
    assert "another process is updating this gallery" in capfd.readouterr().err


# ---- rank-list image -------------------------------------------------------------------------------------------
def test_ranklist_png_size_and_borders(built: Gallery, gallery_encoder, crops: Path, tmp_path: Path):
    query = built.records[0]  # pid 3
    hits = built.search(gallery_encoder.encode([query.path], "infrared"), k=3)[0]
    assert [h.pid for h in hits][0] == 3
    out = save_ranklist(query.path, hits, tmp_path / "lists" / "r.png", query_pid=3)
    image = np.asarray(Image.open(out).convert("RGB"))
    # Default style, 3 hits: cells are 128+2*4 = 136 x 256+2*4 = 264; width 10+136+40+3*136+2*10+10 = 624,
    # height 10+264+34+10 = 318; cells start at x = 10 (query), 186, 332, 478.
    assert image.shape == (318, 624, 3)
    assert RanklistStyle().canvas_size(3) == (624, 318)
    assert tuple(image[12, 12]) == QUERY
    for x, hit in zip((186, 332, 478), hits):
        expected = GREEN if hit.pid == 3 else RED
        for dx, dy in ((1, 1), (135, 263), (67, 2)):  # top-left, bottom-right, top edge
            assert tuple(image[10 + dy, x + dx]) == expected
    assert {tuple(image[11, 187]), tuple(image[11, 333]), tuple(image[11, 479])} >= {GREEN}
    # Unknown query id: grey frames; a hit whose file vanished gets a placeholder, not an error.
    moved = [h.as_dict() for h in hits]
    moved[2]["path"] = str(tmp_path / "moved-away.png")
    out2 = save_ranklist(query.path, moved, tmp_path / "r2.png")
    image2 = np.asarray(Image.open(out2).convert("RGB"))
    assert all(tuple(image2[11, x + 1]) == UNKNOWN for x in (186, 332, 478))
    assert not list((tmp_path / "lists").glob(".*"))  # atomic write left no temporary file


# ---- CLI-facing functions ----------------------------------------------------------------------------------------
def test_cli_functions_build_add_info_search(crops: Path, gallery_encoder, tmp_path: Path):
    out = tmp_path / "g"
    report = index_build(gallery_encoder, out, images=crops, modality="infrared", kind="hnsw", progress=False)
    as_json = json.loads(json.dumps(report.as_dict()))
    assert as_json["action"] == "build" and as_json["gallery"]["count"] == 9
    assert as_json["gallery"]["source"]["images"] == str(crops)
    assert "hnsw (HNSW-Flat, M=32, efSearch=64)" in report.render() and "recall@10" in report.render()

    more = tmp_path / "more"
    write_crops(more, (60,), per_pid=2, seed=3)
    added = index_add(gallery_encoder, out, images=more, progress=False)  # modality: the gallery's (infrared)
    assert (added.added, added.skipped, added.info["count"]) == (2, 0, 11)
    assert "added 2 image(s)" in added.render()
    assert index_info(out).info["count"] == 11

    query = crops / "0007" / "1.png"
    result = search_query(gallery_encoder, out, query, query_modality="infrared", top_k=4,
                          save_ranklist=tmp_path / "rank.png", query_pid=7)
    payload = json.loads(json.dumps(result.as_dict()))
    assert payload["hits"][0]["path"] == str(query) and payload["hits"][0]["pid"] == 7
    assert payload["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert [h["rank"] for h in payload["hits"]] == [1, 2, 3, 4]
    assert Image.open(payload["ranklist"]).size == RanklistStyle().canvas_size(4)
    lines = result.render().splitlines()
    assert "same modality" in lines[1]  # infrared query on an infrared gallery: said so
    assert lines[2].split() == ["rank", "score", "id", "pid", "cam", "modality", "path", "match"]
    assert lines[4].split()[:4] == ["1", f"{payload['hits'][0]['score']:.4f}", str(payload["hits"][0]["id"]), "7"]
    assert lines[4].split()[-1] == "yes"
    visible = search_query(gallery_encoder, out, query, top_k=2)  # default: a visible query, cross-modality
    assert visible.query_modality == "visible" and "same modality" not in visible.render()
    with pytest.raises(MultError, match="query image not found"):
        search_query(gallery_encoder, out, tmp_path / "missing.jpg")


# ---- record selection ------------------------------------------------------------------------------------------
def test_folder_records(crops: Path, tmp_path: Path):
    records = records_for_gallery(images_dir=crops, modality="ir")
    assert len(records) == 9 and {r.modality for r in records} == {Modality.infrared}
    assert sorted({r.pid for r in records}) == list(PIDS)
    with pytest.raises(MultError, match="either a folder"):
        records_for_gallery(images_dir=crops, dataset="sysu", data_root=crops)
    with pytest.raises(MultError, match="unknown"):
        records_for_gallery(dataset="market", data_root=crops)
    with pytest.raises(MultError, match="data root"):
        records_for_gallery(dataset="sysu")


def test_synthvi_sysu_records(synth_sysu_small: Path):
    test_ids = [int(t) for t in (synth_sysu_small / "exp" / "test_id.txt").read_text().strip().split(",")]
    for modality, cams in (("infrared", (3, 6)), ("visible", (1, 2, 4, 5))):
        records = records_for_gallery(dataset="sysu", data_root=synth_sysu_small, modality=modality)
        expected = sorted(str(p) for c in cams for pid in test_ids
                          for p in (synth_sysu_small / f"cam{c}" / f"{pid:04d}").glob("*.jpg"))
        assert sorted(r.path for r in records) == expected and expected
        assert {r.modality.value for r in records} == {modality}
        assert {r.camid for r in records} <= set(cams) and {r.pid for r in records} <= set(test_ids)


def test_regdb_records(regdb_tree):
    records = records_for_gallery(dataset="regdb", data_root=regdb_tree.root, modality="thermal")
    _, test_ids = regdb_tree.splits[1]
    assert len(records) == len(test_ids) * regdb_tree.images_per_id
    assert {r.modality for r in records} == {Modality.infrared} and all("/Thermal/" in r.path for r in records)
