"""`mult demo` end to end on the tiny preset: render -> train -> export -> Triton -> gallery -> page."""

import json
import urllib.request

from mult.demo import DemoOptions, run_demo
from mult.serving.triton_server import free_port


def test_demo_runs_every_step_and_skips_them_the_second_time(tmp_path):
    opts = DemoOptions(workdir=tmp_path / "demo", ids=20, preset="tiny", port=free_port("127.0.0.1"), top_k=5,
                       ready_only=True)
    lines: list[str] = []
    url = run_demo(opts, echo=lines.append)
    assert url.startswith("http://127.0.0.1:")
    assert any(line.startswith("ready in") and url in line for line in lines)
    rows = [json.loads(line) for line in (opts.gallery / "metadata.jsonl").read_text().splitlines()]
    assert rows and {row["modality"] for row in rows} == {"infrared"}
    assert (opts.run / "checkpoint.pt").is_file() and (opts.repo / "mult_visible" / "1" / "model.onnx").is_file()
    # The page was up while run_demo held it; after it returns the server and page are gone.
    try:
        urllib.request.urlopen(url, timeout=2)
        still_up = True
    except OSError:
        still_up = False
    assert not still_up

    again: list[str] = []
    run_demo(opts, echo=again.append)
    for done in ("already rendered", "finished run", "already exported", "already built"):
        assert any(done in line for line in again), done
