"""Model identity between a gallery, a model repository and a running Triton server (probe report, issue 16).

Item 1: a gallery must never be searched or extended with another model's embeddings, whichever path asks
(``mult search``, ``mult index add|build``, ``mult app``; ``--server`` or ``--local``), and a server must never
answer the two modalities from two models. Item 4: an exported ``model.onnx`` changed after ``mult export``, or
a gallery's manifest / vectors edited after writing, are refused with one line.

Two real Triton servers per module (nvidia-pytriton's binary): one serving a repository whose version 1 and
version 2 come from two different runs; one serving a half-published mix as a server that serves every folder
it is given (e.g. the official container) would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import perturbed_encoder, write_crops
from mult.cli import main
from mult.errors import MultError
from mult.export.layout import MANIFEST_FILE, ONNX_FILE
from mult.serving import triton_server
from mult.serving.gallery import Gallery, check_same_model
from mult.serving.gallery_commands import search_query
from mult.serving.onnx_local import OnnxEncoder, describe_onnx, ort_session
from mult.serving.triton_server import MODEL_TEMPLATE, TritonServer, build_runtime_repository, runtime_config

pytest.importorskip("tritonclient.grpc")
from mult.serving.triton_client import TritonEncoder  # noqa: E402

NAMES = ("mult_visible", "mult_infrared")


# ---- helpers -------------------------------------------------------------------------------------------


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def one_line_error(code: int, err: str) -> str:
    """The CLI's answer to an expected mistake: exit 2, one line, no traceback."""
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0, err
    return err.strip()


def export_manifest(version_dir: Path) -> dict:
    return json.loads((version_dir / MANIFEST_FILE).read_text())


def export_run(run: Path, repo: Path, seed: int) -> None:
    """A training run of another random-init model (``perturbed_encoder(seed)``), exported into ``repo``."""
    import torch

    from mult.config import preset_config
    from mult.export.repository import write_model_repository

    run.mkdir(parents=True)
    cfg = preset_config("tiny")
    cfg.save(run / "config.json")
    torch.save({"model": perturbed_encoder(seed).state_dict(), "config": cfg.to_dict(), "epoch": 1},
               run / "checkpoint.pt")
    write_model_repository(run, repo)


def served_as_is(out: Path, plan: dict[str, dict[int, Path]]) -> Path:
    """A runtime repository serving exactly the version folders in ``plan`` (model -> version -> exported
    folder), with the identities `mult serve` publishes: what a server that serves every folder it is given
    (the official container on a half-published repository) answers with."""
    for name, versions in plan.items():
        newest = versions[max(versions)] / ONNX_FILE
        sig = describe_onnx(ort_session(newest, optimize=False), newest)
        (out / name).mkdir(parents=True)
        (out / name / "config.pbtxt").write_text(runtime_config(
            name, sig, max_batch_size=8, max_queue_delay_us=100,
            identities={v: export_manifest(folder) for v, folder in versions.items()}))
        for version, folder in versions.items():
            (out / name / str(version)).mkdir()
            shutil.copyfile(MODEL_TEMPLATE, out / name / str(version) / "model.py")
            (out / name / str(version) / ONNX_FILE).symlink_to((folder / ONNX_FILE).resolve())
    return out


def scale_one_weight(onnx_path: Path) -> None:
    """Rewrite ``onnx_path`` as a valid ONNX model with one weight tensor scaled by 1.5 (metadata kept)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    for i, tensor in enumerate(model.graph.initializer):
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.ndim == 4:  # a convolution kernel
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values * 1.5, tensor.name))
            break
    onnx.save(model, str(onnx_path))


# ---- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe(tiny_export, tmp_path_factory):
    """The probe's reproduction: a gallery built ``--local`` on version 1 (run A), then a different run B
    exported as version 2 into the same repository."""
    base = tmp_path_factory.mktemp("identity")
    repo = base / "repo"
    shutil.copytree(tiny_export.repo, repo)
    crops = base / "crops"
    write_crops(crops, (1, 2, 3), per_pid=2, seed=3, mode="L")
    query = write_crops(base / "query", (1,), per_pid=1, seed=4, mode="RGB")[0]
    more = base / "more"
    write_crops(more, (4,), per_pid=2, seed=5, mode="L")
    gallery_v1 = base / "gallery_v1"
    assert main_quiet(["index", "build", "--images", crops, "--modality", "infrared", "--local", repo,
                       "--out", gallery_v1, "--json"]) == 0
    export_run(base / "run_b", repo, seed=1)
    assert sorted(p.name for p in (repo / "mult_visible").iterdir() if p.name.isdigit()) == ["1", "2"]
    return SimpleNamespace(base=base, repo=repo, v1_repo=tiny_export.repo, crops=crops, query=query, more=more,
                           gallery_v1=gallery_v1)


def main_quiet(argv) -> int:
    try:
        main([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code or 0
    return 0


@pytest.fixture(scope="module")
def server(probe):
    """`mult serve`'s server on the repository holding version 1 (run A) and version 2 (run B)."""
    with TritonServer(probe.repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def mixed_server(probe, tmp_path_factory):
    """A server answering mult_visible at versions 1 (run A) and 2 (run B) but mult_infrared only at version 1,
    and that from run B: a half-published export, served folder by folder without any check."""
    repo = probe.repo
    runtime = served_as_is(tmp_path_factory.mktemp("mixed") / "models", {
        "mult_visible": {1: repo / "mult_visible" / "1", 2: repo / "mult_visible" / "2"},
        "mult_infrared": {1: repo / "mult_infrared" / "2"},
    })
    with pytest.MonkeyPatch.context() as mp:  # the server is real; only which folders it serves is chosen here
        mp.setattr(triton_server, "build_runtime_repository",
                   lambda _repo, out, **_kw: Path(shutil.copytree(runtime, out, symlinks=True)))
        srv = TritonServer(repo).start()
    try:
        yield srv
    finally:
        srv.stop()


# ---- item 1: the served version against the gallery's ---------------------------------------------------


def test_triton_encoder_reads_the_served_version_and_identity(server, probe):
    """issue 16 item 1: the client learns from the server which version it serves (was "") and what it holds."""
    with TritonEncoder(server.url) as newest, TritonEncoder(server.url, version="1") as pinned:
        for encoder, version in ((newest, 2), (pinned, 1)):
            assert encoder.version == str(version) and encoder.model_info["version"] == version
            for name in NAMES:
                manifest = export_manifest(probe.repo / name / str(version))
                assert encoder.model_info[f"onnx_sha256_{name.removeprefix('mult_')}"] == manifest["onnx_sha256"]
                assert encoder.model_info["source_sha256"] == manifest["source_sha256"]
        # The local encoder describes the same version identically, so the two can share galleries.
        assert OnnxEncoder(probe.repo).model_info == newest.model_info
        assert OnnxEncoder(probe.repo, version=1).model_info == pinned.model_info
        # Pinned to the gallery's version, the server may search it.
        assert search_query(pinned, probe.gallery_v1, probe.query).hits


def test_search_through_the_server_refuses_a_gallery_of_another_version(server, probe, capsys):
    """issue 16 item 1: `mult search --server` on a version-1 gallery while version 2 is served (was exit 0)."""
    code, _, err = run_cli(["search", "--index", probe.gallery_v1, "--query", probe.query, "--server", server.url],
                           capsys)
    line = one_line_error(code, err)
    assert "different model" in line and "version: gallery '1' vs encoder '2'" in line
    # The --local path on the same repository refuses the same way ...
    code, _, err = run_cli(["search", "--index", probe.gallery_v1, "--query", probe.query, "--local", probe.repo],
                           capsys)
    assert "version: gallery '1' vs encoder '2'" in one_line_error(code, err)
    # ... and the gallery's own model still searches it.
    code, out, err = run_cli(["search", "--index", probe.gallery_v1, "--query", probe.query, "--local",
                              probe.v1_repo, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["hits"]


def test_index_add_through_the_server_refuses_a_gallery_of_another_version(server, probe, capsys):
    """issue 16 item 1: `mult index add --server` appended version-2 vectors into a version-1 gallery."""
    before = {p.name: p.read_bytes() for p in probe.gallery_v1.iterdir()}
    code, _, err = run_cli(["index", "add", probe.gallery_v1, "--images", probe.more, "--server", server.url],
                           capsys)
    assert "version: gallery '1' vs encoder '2'" in one_line_error(code, err)
    assert {p.name: p.read_bytes() for p in probe.gallery_v1.iterdir()} == before


def test_app_refuses_a_gallery_of_another_version(server, probe):
    """issue 16 item 1: `mult app --server` opens its search service through the same check."""
    pytest.importorskip("gradio")
    from mult.app.search_page import SearchService

    with TritonEncoder(server.url) as encoder:
        with pytest.raises(MultError, match="different model.*version: gallery '1' vs encoder '2'"):
            SearchService(Gallery.open(probe.gallery_v1), encoder)


def test_index_build_through_the_server_records_what_it_serves(server, probe, capsys):
    """issue 16 item 1: a gallery built through Triton records the served version and files (was version "")."""
    gallery = probe.base / "gallery_v2"
    code, out, err = run_cli(["index", "build", "--images", probe.crops, "--modality", "infrared", "--server",
                              server.url, "--out", gallery, "--json"], capsys)
    assert code == 0, err
    model = json.loads(out)["gallery"]["model"]
    assert model["version"] == 2
    assert model["onnx_sha256_visible"] == export_manifest(probe.repo / "mult_visible" / "2")["onnx_sha256"]
    assert model["onnx_sha256_infrared"] == export_manifest(probe.repo / "mult_infrared" / "2")["onnx_sha256"]
    for encoder in (["--server", server.url], ["--local", probe.repo]):  # served and local agree on the model
        code, _, err = run_cli(["search", "--index", gallery, "--query", probe.query, *encoder], capsys)
        assert code == 0, err
    code, _, err = run_cli(["search", "--index", gallery, "--query", probe.query, "--local", probe.v1_repo], capsys)
    assert "different model" in one_line_error(code, err)


def test_identity_rules_for_exported_graphs():
    """issue 16 item 1: both ONNX files' sha256 decide when both sides know them; the version is shown."""
    a = {"version": 1, "onnx_sha256_visible": "aa", "onnx_sha256_infrared": "bb"}
    check_same_model(a, {**a, "version": 3}, "g")  # the same files copied to another version folder
    with pytest.raises(MultError, match=r"version: gallery '1' vs encoder '2', onnx_sha256_infrared: gallery 'bb'"):
        check_same_model(a, {**a, "version": 2, "onnx_sha256_infrared": "cc"}, "g")
    with pytest.raises(MultError, match="onnx_sha256_visible: gallery 'aa' vs encoder 'dd'"):
        check_same_model(a, {**a, "onnx_sha256_visible": "dd"}, "g")
    with pytest.raises(MultError, match="version: gallery '1' vs encoder '2'"):  # a server that publishes no files
        check_same_model(a, {"version": 2}, "g")


# ---- item 1: a half-published or mixed export --------------------------------------------------------------


def test_client_refuses_a_served_half_published_export(mixed_server, probe, capsys):
    """issue 16 item 1: visible at version 2, infrared at version 1 was served as a mix without a word."""
    with pytest.raises(MultError, match=r"mult_visible serves version 2 but mult_infrared serves version 1 "
                                        r"\(a half-published export\)"):
        TritonEncoder(mixed_server.url)
    for argv in (["search", "--index", probe.gallery_v1, "--query", probe.query],
                 ["index", "add", probe.gallery_v1, "--images", probe.more],
                 ["index", "build", "--images", probe.crops, "--out", probe.base / "never"]):
        code, _, err = run_cli([*argv, "--server", mixed_server.url], capsys)
        assert "half-published" in one_line_error(code, err)
    assert not (probe.base / "never").exists()


def test_client_refuses_stems_of_one_version_from_different_exports(mixed_server, probe):
    """issue 16 item 1: version 1 served as run A's visible stem with run B's infrared stem."""
    run_a = export_manifest(probe.repo / "mult_visible" / "1")["source_sha256"]
    with pytest.raises(MultError, match=rf"version 1 of mult_visible and mult_infrared come from different exports "
                                        rf"\(source_sha256 '{run_a[:12]}' vs"):
        TritonEncoder(mixed_server.url, version="1")


def test_serve_leaves_out_versions_the_stems_do_not_share(probe, tmp_path):
    """issue 16 item 1: `mult serve` serves only versions both stems hold from one export, and says so."""
    half = tmp_path / "half"
    shutil.copytree(probe.repo, half, symlinks=True)
    shutil.rmtree(half / "mult_infrared" / "2")
    with pytest.warns(UserWarning, match=r"not serving mult_visible/2: mult_infrared has no version 2"):
        out = build_runtime_repository(half, tmp_path / "rt-half")
    for name in NAMES:
        assert sorted(p.name for p in (out / name).iterdir()) == ["1", "config.pbtxt"]
    # Version 1 with run B's infrared stem: left out; nothing else to serve is one line, and no server starts.
    shutil.rmtree(half / "mult_infrared" / "1")
    shutil.copytree(probe.repo / "mult_infrared" / "2", half / "mult_infrared" / "1")
    with pytest.raises(MultError, match=r"no version that mult_visible and mult_infrared can serve together \(.*"
                                        r"mult_infrared has no version 2.*; not serving version 1: .*different exports"):
        build_runtime_repository(half, tmp_path / "rt-mixed")
    server = TritonServer(half)
    with pytest.raises(MultError, match="can serve together"):
        server.start()
    assert server.pid is None


# ---- item 4: files changed after they were written ------------------------------------------------------------


def test_tampered_model_onnx_is_refused_locally_and_by_serve(probe, tmp_path, capsys):
    """issue 16 item 4: a valid model.onnx with one weight scaled changed rankings silently (hash never checked)."""
    repo = tmp_path / "repo"
    shutil.copytree(probe.v1_repo, repo)
    path = repo / "mult_infrared" / "1" / ONNX_FILE
    scale_one_weight(path)
    # Still a valid mult model that runs, with other embeddings: only the hash check tells.
    images = np.random.default_rng(0).integers(0, 256, size=(2, 64, 32, 3), dtype=np.uint8)
    tampered = ort_session(path).run(None, {"images": images})[0]
    original = ort_session(probe.v1_repo / "mult_infrared" / "1" / ONNX_FILE).run(None, {"images": images})[0]
    assert not np.allclose(tampered, original, atol=1e-4)
    with pytest.raises(MultError, match=r"mult_infrared/1/model.onnx: sha256 does not match onnx_sha256"):
        OnnxEncoder(repo)
    code, _, err = run_cli(["search", "--index", probe.gallery_v1, "--query", probe.query, "--local", repo], capsys)
    assert "sha256 does not match onnx_sha256" in one_line_error(code, err)
    server = TritonServer(repo)
    with pytest.raises(MultError, match=r"mult_infrared/1/model.onnx: sha256 does not match onnx_sha256"):
        server.start()
    assert server.pid is None
    # A model without its manifest cannot be checked: refused too.
    (repo / "mult_infrared" / "1" / MANIFEST_FILE).unlink()
    with pytest.raises(MultError, match=r"mult_infrared/1/manifest.json: missing"):
        OnnxEncoder(repo)


def test_tampered_gallery_manifest_or_vectors_are_refused(probe, tmp_path, capsys):
    """issue 16 item 4: the gallery manifest (e.g. the model it names) had no checksum of its own."""
    gallery = tmp_path / "gallery"
    shutil.copytree(probe.gallery_v1, gallery)
    manifest_path = gallery / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["manifest_sha256"]
    edited = {**manifest, "model": {**manifest["model"], "version": 2}}  # would let version 2 search it
    manifest_path.write_text(json.dumps(edited, indent=2, sort_keys=True) + "\n")
    with pytest.raises(MultError, match="manifest.json: its content does not match its own checksum"):
        Gallery.open(gallery)
    code, _, err = run_cli(["index", "info", gallery], capsys)
    assert "does not match its own checksum" in one_line_error(code, err)
    # Reformatting alone is not an edit.
    manifest_path.write_text(json.dumps(manifest))
    assert len(Gallery.open(gallery)) == 6
    # One vector changed in place (same size) is caught by the index file's checksum.
    index = gallery / "index.faiss"
    data = bytearray(index.read_bytes())
    data[-9] ^= 0x40
    index.write_bytes(bytes(data))
    with pytest.raises(MultError, match="index.faiss: checksum does not match the manifest"):
        Gallery.open(gallery)
