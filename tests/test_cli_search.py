"""`mult index build|add|info` and `mult search` from the command line, over a real exported model."""

import json
from pathlib import Path


from conftest import run_cli


def test_index_and_search_round_trip(tiny_export, synth_sysu_small, tmp_path, capsys):
    local = ["--local", str(tiny_export.repo)]
    gallery = tmp_path / "gallery"
    code, out, err = run_cli(["index", "build", "--dataset", "sysu", "--data-root", str(synth_sysu_small),
                              "--modality", "infrared", "--out", str(gallery), *local, "--json"], capsys)
    assert code == 0, err
    built = json.loads(out)
    count = built["gallery"]["count"]
    assert count > 0 and (gallery / "index.faiss").is_file()

    code, out, _ = run_cli(["index", "info", str(gallery), "--json"], capsys)
    assert code == 0 and json.loads(out)["gallery"]["count"] == count

    # An infrared gallery image queried through its own stem comes back first with score ~1.
    query = Path(json.loads((gallery / "metadata.jsonl").read_text().splitlines()[0])["path"])
    ranks = tmp_path / "ranks.png"
    code, out, err = run_cli(["search", "--index", str(gallery), "--query", str(query), "--query-modality",
                              "infrared", "--top-k", "5", "--save-ranklist", str(ranks), *local, "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert len(result["hits"]) == 5
    assert Path(result["hits"][0]["path"]) == query and result["hits"][0]["score"] > 0.999
    assert ranks.is_file() and ranks.stat().st_size > 0

    # Adding a folder appends without touching existing ids.
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "copy.jpg").write_bytes(query.read_bytes())
    code, out, err = run_cli(["index", "add", str(gallery), "--images", str(extra), *local, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["gallery"]["count"] == count + 1


def test_search_without_a_server_is_one_clear_line(tiny_export, tmp_path, capsys):
    from mult.serving.triton_server import free_port

    url = f"127.0.0.1:{free_port('127.0.0.1')}"
    code, _, err = run_cli(["index", "build", "--images", str(tmp_path), "--out", str(tmp_path / "g"),
                            "--server", url], capsys)
    assert code == 2 and "Traceback" not in err and err.strip().count("\n") == 0
    assert url in err
