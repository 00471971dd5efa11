"""`mult data check` and check_dataset(): counts on good tiny trees, one clear line per corruption, exit codes."""

from __future__ import annotations

import json
import shutil

import pytest

from mult.cli import main
from mult.data.check import _CHECKERS, _RENDERERS, check_dataset
from mult.data.synth.writer import FORMATS
from mult.datasets import DATASETS
from mult.errors import MultError

VISIBLE, INFRARED = (1, 2, 4, 5), (3, 6)


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def only_problem(report, *needles: str) -> str:
    """The report has exactly one problem, on one line, mentioning every needle."""
    assert len(report.problems) == 1, report.problems
    problem = report.problems[0]
    assert "\n" not in problem
    for needle in needles:
        assert needle in problem, (needle, problem)
    return problem


# ------------------------------------------------------------------------------------------------ SYSU
def test_good_sysu_tree_passes_with_correct_counts(sysu_tree):
    report = check_dataset(sysu_tree.root, "sysu")
    assert report.problems == [] and report.ok
    s, t = report.summary, sysu_tree
    assert s["ids"] == {"train": 3, "val": 1, "test": 4, "train+val": 4}
    for camid in range(1, 7):
        cam = s["cameras"][f"cam{camid}"]
        assert cam["images"] == t.images([camid], t.train + t.val + t.test)
        assert cam["modality"] == ("infrared" if camid in INFRARED else "visible")
    assert s["splits"]["train+val"] == {"visible": t.images(VISIBLE, t.train + t.val), "infrared": t.images(INFRARED, t.train + t.val)}
    assert s["splits"]["test"]["infrared"] == s["test"]["query_images"] == t.images(INFRARED, t.test)
    assert s["test"]["single_shot_gallery_all"] == 4 * 4 - 2  # test id 6 lacks cam1 and cam4
    assert s["test"]["single_shot_gallery_indoor"] == 4 * 2 - 1
    assert s["images_checked"] == sum(t.counts.values())
    text = report.render()
    assert "No problems found" in text and "cam3" in text and "infrared" in text
    assert json.loads(json.dumps(report.as_dict()))["ok"] is True


def test_missing_test_id_file(sysu_tree):
    (sysu_tree.root / "exp" / "test_id.txt").unlink()
    report = check_dataset(sysu_tree.root, "sysu")
    only_problem(report, "test_id.txt", "missing")
    assert report.summary["ids"]["test"] == 0


def test_malformed_id_line(sysu_tree):
    (sysu_tree.root / "exp" / "train_id.txt").write_text("1, 3, x5\n")
    only_problem(check_dataset(sysu_tree.root, "sysu"), "train_id.txt", "'x5'")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_jpeg(sysu_tree, damage):
    target = sysu_tree.root / "cam2" / "0004" / "0001.jpg"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x00garbage" * 40)
    report = check_dataset(sysu_tree.root, "sysu")
    only_problem(report, str(target), "truncated" if damage == "truncated" else "not a readable image")
    assert report.summary["unreadable_images"] == 1


def test_empty_camera_folder(sysu_tree):
    cam5 = sysu_tree.root / "cam5"
    shutil.rmtree(cam5)
    cam5.mkdir()
    report = check_dataset(sysu_tree.root, "sysu")
    assert len(report.problems) == 1
    assert str(cam5) in report.problems[0] and "empty camera folder" in report.problems[0]


def test_empty_id_folder_and_missing_camera(sysu_tree):
    for image in (sysu_tree.root / "cam1" / "0002").iterdir():
        image.unlink()
    shutil.rmtree(sysu_tree.root / "cam4")
    problems = check_dataset(sysu_tree.root, "sysu").problems
    assert any(str(sysu_tree.root / "cam1" / "0002") in p and "no images" in p for p in problems)
    assert any(str(sysu_tree.root / "cam4") in p and "camera folder missing" in p for p in problems)
    assert len(problems) == 2


def test_listed_ids_without_images_and_test_ids_lacking_a_modality(sysu_tree):
    (sysu_tree.root / "exp" / "val_id.txt").write_text("7,42\n")
    only_problem(check_dataset(sysu_tree.root, "sysu"), "val_id.txt", "1 listed id(s) have no images", "42")

    shutil.rmtree(sysu_tree.root / "cam3" / "0011")
    shutil.rmtree(sysu_tree.root / "cam6" / "0011")
    problems = check_dataset(sysu_tree.root, "sysu").problems
    lacking = [p for p in problems if "no infrared images" in p]
    assert len(lacking) == 1 and "test_id.txt" in lacking[0] and "(11)" in lacking[0] and "query" in lacking[0]


def test_overlapping_splits_and_odd_folder_names(sysu_tree):
    (sysu_tree.root / "exp" / "test_id.txt").write_text("2,4,6,11,5\n")
    (sysu_tree.root / "cam1" / "12").mkdir()
    problems = check_dataset(sysu_tree.root, "sysu").problems
    assert any("both train and test" in p and "(5)" in p for p in problems)
    assert any(str(sysu_tree.root / "cam1" / "12") in p and "4-digit" in p for p in problems)
    assert len(problems) == 2


def test_root_that_is_not_a_folder(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    for root, needle in ((tmp_path / "absent", "does not exist"), (tmp_path / "file.txt", "is not a folder")):
        with pytest.raises(MultError) as err:
            check_dataset(root, "sysu")
        assert str(root) in str(err.value) and needle in str(err.value)
    with pytest.raises(MultError):
        check_dataset(tmp_path, "market1501")


def test_formats_are_the_datasets_table_names(tmp_path):
    """The checker, its report renderers and SynthVI know exactly the datasets of mult.datasets.DATASETS, and an
    unknown name is refused with those names."""
    assert set(_CHECKERS) == set(_RENDERERS) == set(FORMATS) == set(DATASETS)
    with pytest.raises(MultError) as err:
        check_dataset(tmp_path, "market1501")
    assert all(repr(name) in str(err.value) for name in DATASETS)


def test_progress_bar_goes_to_stderr(sysu_tree, capsys):
    report = check_dataset(sysu_tree.root, "sysu", progress=True, workers=2)
    out = capsys.readouterr()
    assert report.ok and "checking images" in out.err and "checking images" not in out.out


# ------------------------------------------------------------------------------------------------ RegDB
def test_good_regdb_tree_passes_with_per_split_counts(regdb_tree):
    report = check_dataset(regdb_tree.root, "regdb")
    assert report.problems == []
    s, n = report.summary, regdb_tree.images_per_id
    assert s["images"] == {"visible": 6 * n, "thermal": 6 * n} and s["ids"] == {"visible": 6, "thermal": 6}
    assert sorted(s["splits"], key=int) == [str(k) for k in range(1, 11)]
    for split, (train_ids, test_ids) in regdb_tree.splits.items():
        counts = s["splits"][str(split)]
        assert counts["train_visible"] == counts["train_thermal"] == {"ids": len(train_ids), "images": len(train_ids) * n}
        assert counts["test_thermal"] == {"ids": len(test_ids), "images": len(test_ids) * n}
    assert s["images_checked"] == 12 * n
    assert "train_visible" in report.render()


def test_regdb_malformed_idx_line(regdb_tree):
    idx = regdb_tree.root / "idx" / "train_thermal_2.txt"
    lines = idx.read_text().splitlines()
    lines[1] = lines[1].replace(" ", "\t").rsplit("\t", 1)[0]  # the label is gone
    idx.write_text("\n".join(lines) + "\n")
    problem = only_problem(check_dataset(regdb_tree.root, "regdb"), str(idx) + " line 2", "malformed")
    assert "<relative path> <integer label>" in problem


def test_regdb_idx_path_that_does_not_exist(regdb_tree):
    (regdb_tree.root / "Visible" / "1" / "male_front_v_00002_1.bmp").unlink()
    problems = check_dataset(regdb_tree.root, "regdb").problems
    # Every idx file that lists the image reports it, with its line number (id 1 is in train or test of each split).
    assert len(problems) == 10
    assert all("male_front_v_00002_1.bmp does not exist" in p and "_visible_" in p and " line " in p for p in problems)


def test_regdb_missing_idx_file_and_label_mismatch(regdb_tree):
    (regdb_tree.root / "idx" / "test_visible_9.txt").unlink()
    only_problem(check_dataset(regdb_tree.root, "regdb"), "test_visible_9.txt", "missing")

    idx = regdb_tree.root / "idx" / "train_thermal_1.txt"
    idx.write_text(idx.read_text().replace(" 0\n", " 50\n"))
    problems = check_dataset(regdb_tree.root, "regdb").problems
    assert any("split 1 train" in p and "label sets differ" in p for p in problems)


def test_regdb_corrupt_bmp(regdb_tree):
    target = regdb_tree.root / "Thermal" / "3" / "male_front_t_00001_3.bmp"
    target.write_bytes(target.read_bytes()[:40])
    only_problem(check_dataset(regdb_tree.root, "regdb"), str(target))


# -------------------------------------------------------------------------------------------------- CLI
def test_cli_good_tree_exits_zero(sysu_tree, regdb_tree, capsys):
    code, out, _ = run_cli(["data", "check", str(sysu_tree.root), "--format", "sysu"], capsys)
    assert code in (0, None) and "No problems found" in out
    code, out, _ = run_cli(["data", "check", str(regdb_tree.root), "--format", "regdb", "--json"], capsys)
    payload = json.loads(out)
    assert code in (0, None) and payload["ok"] is True and payload["summary"]["images"]["thermal"] == 18


def test_cli_prints_problem_and_exits_one(sysu_tree, capsys):
    target = sysu_tree.root / "cam5" / "0011" / "0001.jpg"
    target.write_bytes(b"not a jpeg")
    code, out, _ = run_cli(["data", "check", str(sysu_tree.root), "--format", "sysu"], capsys)
    assert code == 1
    assert "1 problem(s):" in out and str(target) in out
    code, out, _ = run_cli(["data", "check", str(sysu_tree.root), "--format", "sysu", "--json"], capsys)
    payload = json.loads(out)
    assert code == 1 and payload["ok"] is False and len(payload["problems"]) == 1 and str(target) in payload["problems"][0]
