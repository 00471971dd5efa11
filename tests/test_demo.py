"""`mult demo` end to end on the tiny preset: render -> train -> export -> Triton -> gallery -> page."""

import dataclasses
import json
import urllib.request

import pytest

from mult.cli.demo import DemoOptions, accuracy_line, run_demo
from mult.errors import MultError
from mult.serving.triton_server import free_port


def test_demo_runs_every_step_and_skips_them_the_second_time(tmp_path):
    opts = DemoOptions(workdir=tmp_path / "demo", ids=20, preset="tiny", port=free_port("127.0.0.1"), top_k=5,
                       ready_only=True)
    lines: list[str] = []
    url = run_demo(opts, echo=lines.append)
    assert url.startswith("http://127.0.0.1:")
    assert any(line.startswith("ready in") and url in line for line in lines)
    # the served model's accuracy, measured through Triton, beside the untrained start's (the trainer's epoch -1)
    assert any(line.startswith("test all-search R1 / mAP / mINP: served model") and "untrained" in line
               and "not evaluated" not in line for line in lines)
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

    # Other data settings on the same folder are refused with one line, not mixed with what is there.
    with pytest.raises(MultError, match="another --workdir"):
        run_demo(dataclasses.replace(opts, heat_from_colour=0.0), echo=again.append)


def test_accuracy_line_by_hand():
    served = {"rank1": 45.04, "mAP": 40.96, "mINP": 30.0}
    start = {"rank1": 17.56, "mAP": 20.81, "mINP": 13.71}
    assert accuracy_line(served, start) == ("test all-search R1 / mAP / mINP: served model 45.0 / 41.0 / 30.0  "
                                            "(untrained start 17.6 / 20.8 / 13.7)")
    assert accuracy_line(served, None).endswith("(untrained start not evaluated)")
