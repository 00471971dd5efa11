"""Metadata filters of gallery search (camera, modality, identity known or not, capture time), applied inside the
faiss search with an ID selector: hand-worked masks and times, the filtered top-k against brute force over the
selected images for every index kind, and the filters end to end through `mult index add --time` and
`mult search --camera/--identity/--since/--until`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, synthetic_gallery, write_crops
from mult.data.records import Modality, Record
from mult.errors import MultError
from mult.serving.gallery import Gallery, GalleryFilter, build_gallery, filter_from_options, parse_time, read_metadata
from mult.serving.gallery_commands import index_add, search_query
from mult.serving.gallery_filter import id_selector


# ------------------------------------------------------------------------------------------ hand-worked cases
def test_mask_worked_by_hand():
    """Five images:       id  cam  pid  modality  time
                           0    3    7  infrared   100
                           1    6   -1  infrared   200
                           2    1    7  visible    300
                           3    3   -1  infrared   NaN (unknown)
                           4    6    9  infrared   400
    cameras {3, 6} -> 0, 1, 3, 4; + identity unknown -> 1, 3; + since 150 -> 1 (3's time is unknown);
    until 250 alone -> 0, 1; modality visible -> 2; no condition -> all."""
    camids = np.array([3, 6, 1, 3, 6])
    pids = np.array([7, -1, 7, -1, 9])
    modalities = np.array(["infrared", "infrared", "visible", "infrared", "infrared"], dtype=object)
    times = np.array([100.0, 200.0, 300.0, np.nan, 400.0])

    def kept(**conditions) -> list[int]:
        return np.flatnonzero(GalleryFilter(**conditions).mask(camids, pids, modalities, times)).tolist()

    assert kept(cameras=(6, 3)) == [0, 1, 3, 4]
    assert kept(cameras=(3, 6), identity="unknown") == [1, 3]
    assert kept(cameras=(3, 6), identity="unknown", since=150) == [1]
    assert kept(until=250) == [0, 1]
    assert kept(identity="known") == [0, 2, 4]
    assert kept(modality=Modality.visible) == [2]
    assert kept() == [0, 1, 2, 3, 4] and not GalleryFilter().active


def test_parse_time_worked_by_hand():
    # 1970-01-02 00:00 UTC is one day (86,400 s) after the epoch; 01:00 at +01:00 is the epoch itself.
    assert parse_time("1970-01-02T00:00:00Z") == 86_400.0
    assert parse_time("1970-01-01T01:00:00+01:00") == 0.0
    assert parse_time("1234.5") == 1234.5 and parse_time(60) == 60.0 and parse_time("") is None
    with pytest.raises(MultError, match="--since 'yesterday' is not a time"):
        parse_time("yesterday", name="--since")


def test_bad_filters_are_one_clear_line():
    with pytest.raises(MultError, match="identity 'maybe' is unknown; use one of known, unknown"):
        filter_from_options(identity="maybe")
    with pytest.raises(MultError, match="after until"):
        GalleryFilter(since=200, until=100)
    with pytest.raises(MultError, match="camera 'three' must be an integer"):
        GalleryFilter(cameras=("three",))
    assert filter_from_options(identity="any", since="") == GalleryFilter()


def test_selector_bitmap_matches_the_mask():
    """faiss reads bit i & 7 of byte i >> 3: the selector must say yes exactly where the mask does."""
    mask = np.zeros(21, dtype=bool)
    mask[[0, 7, 8, 13, 20]] = True
    selected = id_selector(mask)
    assert [bool(selected.selector.is_member(i)) for i in range(21)] == mask.tolist()
    assert selected.count == 5 and id_selector(np.ones(4, dtype=bool)) is None


# ------------------------------------------------------------------------------------------ inside faiss
def _brute_force(gallery: Gallery, query: np.ndarray, where: GalleryFilter, k: int) -> list[int]:
    rows = np.flatnonzero(gallery.filter_mask(where))
    scores = gallery.vectors[rows] @ query
    return rows[np.argsort(-scores, kind="stable")[:k]].tolist()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_filtered_search_is_the_exact_top_k_of_the_selection(kind):
    """Flat, IVF probing all its lists and HNSW with a beam as wide as the gallery return exactly the brute-force
    top-k of the selected images."""
    gallery = synthetic_gallery(kind)
    query = gallery.vectors[5] + 0.1 * gallery.vectors[11]
    query /= np.linalg.norm(query)
    for where in (GalleryFilter(cameras=(3, 6)), GalleryFilter(identity="unknown", since=500, until=1500),
                  GalleryFilter(cameras=(2,), identity="known", until=300)):
        hits = gallery.search(query, 10, where=where, nprobe=8, ef_search=2000)[0]
        assert [h.id for h in hits] == _brute_force(gallery, query, where, 10)
        assert all(where.mask(np.array([h.camid]), np.array([-1 if h.pid is None else h.pid]),
                              np.array([h.modality], dtype=object), np.array([h.time]))[0] for h in hits)


def test_a_selective_filter_finds_images_far_down_the_unfiltered_ranking():
    """Four images out of 2,000 pass: all four come back, best first, although none is in the unfiltered top 10
    (over-fetching the top 10 and dropping would have found nothing)."""
    gallery = synthetic_gallery("flat")
    query = gallery.vectors[0]
    where = GalleryFilter(since=1996)  # ids 1996..1999
    unfiltered = {h.id for h in gallery.search(query, 10)[0]}
    hits = gallery.search(query, 10, where=where)[0]
    assert sorted(h.id for h in hits) == [1996, 1997, 1998, 1999] and not unfiltered & {1996, 1997, 1998, 1999}
    assert [h.rank for h in hits] == [1, 2, 3, 4] and hits[0].score >= hits[-1].score
    assert gallery.search(query, 10, where=GalleryFilter(cameras=(99,)))[0] == []


def test_hnsw_widens_its_search_for_a_selective_filter():
    """HNSW under a filter keeping ~1.7% of the gallery still finds (nearly) the exact top-10 of the selection."""
    gallery = synthetic_gallery("hnsw")
    where = GalleryFilter(cameras=(1,), until=200)  # 34 images
    found = 0
    for q in range(20):
        query = gallery.vectors[100 + q]
        truth = _brute_force(gallery, query, where, 10)
        found += len(set(truth) & {h.id for h in gallery.search(query, 10, where=where)[0]})
    assert found / (20 * 10) >= 0.95


def test_search_modality_filters_by_modality_inside_faiss():
    gallery = synthetic_gallery("flat")
    hits = gallery.search_modality(gallery.vectors[3], 25, Modality.infrared, where=GalleryFilter(cameras=(3, 6)))
    assert len(hits) == 25 and {h.modality for h in hits} == {"infrared"} and {h.camid for h in hits} == {3, 6}


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture
def timed_gallery(tmp_path: Path, gallery_encoder) -> Gallery:
    """Six crops of pids 3 and 7 whose files were last modified at t = 1000, 2000, ..., 6000."""
    crops = write_crops(tmp_path / "crops", (3, 7), per_pid=3, seed=1)
    for n, path in enumerate(sorted(crops), start=1):
        os.utime(path, (n * 1000, n * 1000))
    records = [Record(str(p), None if p.parent.name == "0007" else 3, 3 if n % 2 else 6, Modality.infrared)
               for n, p in enumerate(sorted(crops))]
    return build_gallery(records, gallery_encoder, tmp_path / "gallery", progress=False)


def test_times_are_kept_on_disk_and_reported(timed_gallery: Gallery, tmp_path: Path, gallery_encoder):
    assert [r.time for r in read_metadata(timed_gallery.directory / "metadata.jsonl")] == [
        1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0]
    extra = write_crops(tmp_path / "extra", (9,), per_pid=1, seed=2)[0]
    report = index_add(gallery_encoder, timed_gallery.directory, images=extra.parent.parent,
                       taken="1970-01-01T02:00:00Z", progress=False)
    reopened = Gallery.open(timed_gallery.directory)
    assert reopened.records[-1].time == 7200.0
    assert report.info["times"] == {"first": "1970-01-01 00:16:40 UTC", "last": "1970-01-01 02:00:00 UTC",
                                    "unknown": 0}
    assert "1970-01-01 00:16:40 UTC to 1970-01-01 02:00:00 UTC" in report.render()


def test_metadata_written_before_times_reads_as_unknown_time(tmp_path: Path):
    path = tmp_path / "metadata.jsonl"
    path.write_text(json.dumps({"id": 0, "path": "/a.png", "pid": None, "camid": 3, "modality": "infrared"}) + "\n")
    assert read_metadata(path)[0].time is None
    path.write_text(json.dumps({"id": 0, "path": "/a.png", "pid": None, "camid": 3, "modality": "infrared",
                                "time": "noon"}) + "\n")
    with pytest.raises(MultError, match="line 1: malformed gallery metadata"):
        read_metadata(path)


def test_search_query_applies_the_filter(timed_gallery: Gallery, gallery_encoder):
    query = timed_gallery.records[0].path
    where = GalleryFilter(cameras=(6,), identity="known", since=1500, until=3500)
    report = search_query(gallery_encoder, timed_gallery.directory, query, query_modality="visible", top_k=6,
                          where=where)
    # camera 6: ids 0, 2, 4; pid known: ids 0, 1, 2 (folder 0003); taken 1500..3500: ids 1, 2 -> id 2 alone
    assert [h.id for h in report.hits] == [2]
    assert report.as_dict()["filter"]["cameras"] == [6] and "filter: camera 6 · identity known" in report.render()
    assert set(report.as_dict()["seconds"]) == {"embed", "search"}


def test_cli_filters_and_a_bad_value(tiny_export, tmp_path: Path, capsys):
    crops = write_crops(tmp_path / "crops", (1, 2), per_pid=2, seed=3)
    local = ["--local", str(tiny_export.repo)]

    def run(*argv: str) -> tuple[int, str, str]:
        return run_cli(list(argv), capsys)

    gallery = tmp_path / "g"
    code, _, err = run("index", "build", "--images", str(crops[0].parent.parent), "--out", str(gallery), *local, "--json")
    assert code == 0, err
    extra = write_crops(tmp_path / "later", (5,), per_pid=1, seed=4)[0]
    assert run("index", "add", str(gallery), "--images", str(extra.parent.parent), "--time", "2030-01-01T00:00Z",
               *local, "--json")[0] == 0
    code, out, err = run("search", "--index", str(gallery), "--query", str(crops[0]), "--since", "2029-12-31T00:00Z",
                         *local, "--json")
    assert code == 0, err
    assert [Path(h["path"]).name for h in json.loads(out)["hits"]] == [extra.name]
    code, _, err = run("search", "--index", str(gallery), "--query", str(crops[0]), "--identity", "maybe", *local)
    assert code != 0 and "Traceback" not in err and "identity 'maybe' is unknown" in err
