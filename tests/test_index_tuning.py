"""Recall-steered galleries (`mult index build --target-recall`) and IVF-PQ (`--kind ivfpq`, `--refine`), on a
clustered synthetic 3,000 x 64-d gallery embedded by a numpy "encoder" (no model, no Triton)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from mult.cli import main
from mult.data.records import Modality, Record
from mult.errors import MultError
from mult.serving.faiss_index import IndexSpec, RecallProbe, build_index, search_params
from mult.serving.gallery import Gallery, build_gallery
from mult.serving.index_tuning import RecallTargetWarning, smallest_reaching

N, DIM, EXTRA = 3000, 64, 200
# 3,000 vectors are a small sample for IVF-PQ's 256-code codebooks; the build says so, which is not under test here.
pytestmark = pytest.mark.filterwarnings("ignore:IVF-PQ codebooks trained on:UserWarning")


def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around n/20 random centres (like ~20 images per person), noisy enough to need tuning."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 20, dim))
    x = centres[rng.integers(0, len(centres), n)] + rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class ArrayEncoder:
    """Embeds ``<row>.png`` as row ``row`` of a fixed array: a gallery of known vectors through the real build."""

    model_name = "array-encoder"
    embedding_size = DIM  # as the real encoders tell it: wrong index values fail before any embedding

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def encode(self, paths, modality):
        return self.vectors[[int(Path(p).stem) for p in paths]]


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(N + EXTRA, DIM, 0)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """N empty ``<row>.png`` files (the encoder never opens them) and EXTRA more under ``more/``."""
    root = tmp_path_factory.mktemp("tuning_images")
    for row in range(N + EXTRA):
        folder = root / "gallery" if row < N else root / "more"
        folder.mkdir(exist_ok=True)
        (folder / f"{row:05d}.png").touch()
    return root


def records(images: Path, part: str) -> list[Record]:
    return [Record(str(p), None, 0, Modality.infrared) for p in sorted((images / part).glob("*.png"))]


def run_cli(argv, capsys, monkeypatch, encoder=None):
    """`mult ...` with the model replaced by ``encoder``; (exit code, stdout, stderr)."""
    monkeypatch.setattr("mult.cli.search.encoder_from_options", lambda server, local: contextlib.nullcontext(encoder))
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


# ---- --target-recall through the command line ------------------------------------------------------------
@pytest.mark.parametrize("kind, parameter, extra", [
    ("ivf", "nprobe", []), ("hnsw", "ef_search", ["--hnsw-m", "4", "--ef-construction", "24"])])
def test_target_recall_is_reached_recorded_and_kept_on_add(kind, parameter, extra, images, vectors, tmp_path,
                                                           capsys, monkeypatch):
    encoder = ArrayEncoder(vectors)
    out = tmp_path / kind
    code, stdout, err = run_cli(["index", "build", "--images", images / "gallery", "--out", out, "--kind", kind,
                                 *extra, "--target-recall", "0.95", "--json"], capsys, monkeypatch, encoder)
    assert code == 0, err
    entry = json.loads(stdout)["gallery"]["index"]
    tuning = entry["tuning"]
    assert tuning["target_recall"] == 0.95 and tuning["parameter"] == parameter and tuning["reached"] is True
    assert tuning["held_out"] is True and tuning["queries"] == 1000 and tuning["k"] == 10
    sweep = dict((int(v), r) for v, r in tuning["sweep"])
    chosen = tuning["chosen"]
    assert entry["params"][parameter] == chosen and sweep[chosen] == tuning["recall_at_10"] >= 0.95
    assert all(r < 0.95 for v, r in sweep.items() if v < chosen)  # the smallest value measured to reach it
    assert len(sweep) <= 16  # doubling + bisection: few measurements
    if kind == "hnsw":
        assert (entry["params"]["M"], entry["params"]["ef_construction"]) == (4, 24)  # the build options kept
    if kind == "ivf":
        assert 1 < chosen < entry["params"]["nlist"] and chosen - 1 in sweep  # bisected down to the exact value
    assert entry["recall_at_10"] >= tuning["recall_at_10"]  # the own-image-counted recall is the higher one

    code, stdout, _ = run_cli(["index", "info", out, "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(stdout)["gallery"]["index"]["tuning"] == tuning
    code, stdout, _ = run_cli(["index", "info", out], capsys, monkeypatch)
    line = next(line for line in stdout.splitlines() if line.strip().startswith("tuning"))
    assert f"={chosen}, the smallest reaching recall@10 0.95" in line

    gallery = Gallery.open(out)
    assert getattr(gallery.spec, parameter) == chosen
    counts = gallery.add(records(images, "more"), encoder, progress=False)
    assert counts == {"added": EXTRA, "skipped": 0, "count": N + EXTRA}
    reopened = Gallery.open(out)
    assert reopened.manifest["index"]["params"][parameter] == chosen  # not re-tuned on add
    assert reopened.manifest["index"]["tuning"] == tuning and reopened.manifest["index"]["recall_at_10"] > 0.9
    hits = reopened.search(vectors[N:N + 5], k=1)
    assert [h[0].id for h in hits] == list(range(N, N + 5))


def test_unreachable_target_keeps_the_best_and_says_so(images, vectors, tmp_path, capsys, monkeypatch):
    code, stdout, err = run_cli(["index", "build", "--images", images / "gallery", "--out", tmp_path / "pq",
                                 "--kind", "ivfpq", "--pq-m", "8", "--target-recall", "0.99"],
                                capsys, monkeypatch, ArrayEncoder(vectors))
    assert code == 0, err
    missed = [line for line in stdout.splitlines() if "NOT reached" in line]
    assert len(missed) == 1 and "kept" in missed[0] and "--refine" in missed[0]
    assert "RecallTargetWarning" not in err  # the report says it, once
    tuning = Gallery.open(tmp_path / "pq").manifest["index"]["tuning"]
    best = max(r for _, r in tuning["sweep"])
    assert tuning["reached"] is False and tuning["recall_at_10"] == best < 0.99
    assert tuning["chosen"] == min(v for v, r in tuning["sweep"] if r == best)
    assert tuning["maximum"] in [v for v, _ in tuning["sweep"]]  # the maximum (nprobe = nlist) was tried

    # The library warns (the command line shows the report's line instead): even probing every list, 4-byte
    # codes miss neighbours.
    with pytest.warns(RecallTargetWarning, match="NOT reached"):
        build_gallery(records(images, "gallery"), ArrayEncoder(vectors), tmp_path / "lib", progress=False,
                      kind=IndexSpec("ivfpq", pq_m=4, target_recall=1.0))


# ---- IVF-PQ ----------------------------------------------------------------------------------------------
def test_ivfpq_builds_searches_adds_and_refine_raises_recall(images, vectors, tmp_path):
    encoder = ArrayEncoder(vectors)
    built = {refine: build_gallery(records(images, "gallery"), encoder, tmp_path / f"r{refine}",
                                   kind=IndexSpec("ivfpq", refine=refine), progress=False) for refine in (0, 8)}
    plain, refined = (Gallery.open(tmp_path / f"r{r}") for r in (0, 8))
    for gallery, inner in ((plain, faiss.IndexIVFPQ), (refined, faiss.IndexRefineFlat)):
        assert isinstance(gallery.index, faiss.IndexIDMap2)
        assert isinstance(faiss.downcast_index(gallery.index.index), inner)
        assert faiss.downcast_index(faiss.extract_index_ivf(gallery.index)).pq.M == 16  # default d/4
    params = refined.manifest["index"]["params"]
    assert params == {"nlist": params["nlist"], "nprobe": 16, "train_per_list": 64, "pq_m": 16, "pq_nbits": 8,
                      "refine": 8}
    assert plain.spec == IndexSpec("ivfpq", nlist=params["nlist"], nprobe=16, pq_m=16)
    assert "IVF-PQ" in plain.spec.describe() and "exact re-ranking of 8*k" in refined.spec.describe()
    # Exact re-ranking of the PQ shortlist: higher recall@10 (both measured against the true vectors).
    assert plain.manifest["index"]["recall_truth"] == "gallery vectors"
    assert refined.manifest["index"]["recall_at_10"] > plain.manifest["index"]["recall_at_10"] + 0.05
    sp = search_params(refined.spec, nprobe=4)
    assert isinstance(sp, faiss.IndexRefineSearchParameters) and sp.k_factor == 8
    # Searching: with re-ranking each vector finds itself with its exact score.
    scores, ids = refined.search_ids(vectors[:20], k=3)
    np.testing.assert_array_equal(ids[:, 0], np.arange(20))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert plain.search(vectors[:1], k=5)[0][0].rank == 1
    # Adding: old ids keep their images, the new ones are found, and the gallery re-opens checksummed.
    for gallery in (plain, refined):
        assert gallery.add(records(images, "more"), encoder, progress=False)["count"] == N + EXTRA
        again = Gallery.open(gallery.directory)
        assert again.records[:N] == built[0].records and again.index.ntotal == N + EXTRA
        assert again.manifest["index"]["params"]["refine"] == gallery.spec.refine
    _, ids = Gallery.open(tmp_path / "r8").search_ids(vectors[N:N + 10], k=1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(N, N + 10))
    # Without full vectors an add can only compare with the codes' own decoding: the report says so.
    assert Gallery.open(tmp_path / "r0").manifest["index"]["recall_truth"] == "pq-decoded vectors"


# ---- wrong values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["--kind", "ivf", "--target-recall", "1.5"], "target recall 1.5 must be a number in (0, 1]"),
    (["--kind", "hnsw", "--target-recall", "0"], "target recall 0.0 must be"),
    (["--kind", "ivfpq", "--pq-m", "7"], "pq_m=7 (--pq-m) does not divide the embedding size 64"),
    (["--kind", "ivf", "--refine", "4"], "IVF-PQ parameters"),
    (["--target-recall", "0.9"], "kind 'flat' is exact"),
])
def test_bad_values_are_one_line(argv, words, images, vectors, tmp_path, capsys, monkeypatch):
    code, stdout, err = run_cli(["index", "build", "--images", images / "gallery", "--out", tmp_path / "g", *argv],
                                capsys, monkeypatch, ArrayEncoder(vectors))
    assert code == 2 and words in err and err.count("\n") == 1 and "Traceback" not in err
    assert "embed gallery" not in err  # refused before any image was embedded
    assert not (tmp_path / "g").exists()


def test_bad_values_in_the_library():
    for target in (-0.1, 0, 1.01, float("nan"), "0.9", True):
        with pytest.raises(MultError, match="target recall"):
            IndexSpec("ivf", target_recall=target)
    with pytest.raises(MultError, match="refine"):
        IndexSpec("ivfpq", refine=-1)
    with pytest.raises(MultError, match="use one of 1, 2, 4, 8, 16, 32, 64"):
        IndexSpec("ivfpq", pq_m=12).resolved(N, dim=DIM)
    with pytest.raises(MultError, match="at least 256 images"):
        IndexSpec("ivfpq").resolved(100, dim=DIM)
    assert IndexSpec("ivfpq").resolved(N, dim=1280).pq_m == 320 and IndexSpec("ivfpq").resolved(N, dim=6).pq_m == 1


# ---- the search and the recall it steers -----------------------------------------------------------------
def test_smallest_reaching_doubles_then_bisects():
    seen = []

    def measure(value):
        seen.append(value)
        return value / 100

    assert smallest_reaching(measure, 1, 100, 0.37) == 37
    assert seen[:7] == [1, 2, 4, 8, 16, 32, 64] and len(seen) <= 14
    assert smallest_reaching(lambda v: 0.5, 1, 64, 0.9) is None
    assert smallest_reaching(lambda v: 1.0, 16, 2048, 0.9) == 16


def test_held_out_recall_drops_the_query_itself(vectors):
    index = build_index(vectors[:500], IndexSpec("flat"))
    probe = RecallProbe.sample(index, queries=100)
    assert probe.measure(index, None) == (1.0, 1.0)  # exact search, with and without the query itself
    assert np.all(probe.truth[:, 0] == probe.rows)  # a unit vector is its own nearest neighbour
    ivf = build_index(vectors[:500], IndexSpec("ivf", nlist=12, nprobe=1))
    counted, held_out = probe.measure(ivf, search_params(IndexSpec("ivf", nlist=12, nprobe=1)))
    assert held_out < counted < 1.0  # the query's own vector is always found: counting it flatters recall
    tiny = build_index(vectors[:5], IndexSpec("flat"))
    assert RecallProbe.sample(tiny).measure(tiny, None) == (1.0, 1.0)  # 5 vectors: k = 5, 4 others
