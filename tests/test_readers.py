"""Dataset readers on tiny real-format trees: SYSU-MM01 (incl. the pinned 10-trial gallery), RegDB, plain
folders, and safe image loading."""

from __future__ import annotations

import io
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mult.data.folder import read_folder
from mult.data.records import as_modality
from mult.data.images import image_problem, is_image_file, load_image, load_image_bytes
from mult.data.records import Modality
from mult.data.regdb import RegDB, parse_idx_lines
from mult.data.sysu import SYSUMM01, camera_modality, parse_id_line, parse_sysu_path
from mult.errors import MultError


def one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


# ----------------------------------------------------------------------------------------------------------
# The community code, re-stated with the GLOBAL random module (process_query_sysu / process_gallery_sysu of
# AGW/CAJ, ADCA and MULT), to pin our trials to theirs.
def community_query(data_path: str) -> list[str]:
    with open(os.path.join(data_path, "exp/test_id.txt")) as file:
        ids = file.read().splitlines()
        ids = ["%04d" % int(y) for y in ids[0].split(",")]
    files_ir = []
    for id in sorted(ids):
        for cam in ["cam3", "cam6"]:
            img_dir = os.path.join(data_path, cam, id)
            if os.path.isdir(img_dir):
                files_ir.extend(sorted([img_dir + "/" + i for i in os.listdir(img_dir)]))
    return files_ir


def community_gallery(data_path: str, mode: str, trial: int) -> list[str]:
    random.seed(trial)
    rgb_cameras = ["cam1", "cam2", "cam4", "cam5"] if mode == "all" else ["cam1", "cam2"]
    with open(os.path.join(data_path, "exp/test_id.txt")) as file:
        ids = file.read().splitlines()
        ids = ["%04d" % int(y) for y in ids[0].split(",")]
    files_rgb = []
    for id in sorted(ids):
        for cam in rgb_cameras:
            img_dir = os.path.join(data_path, cam, id)
            if os.path.isdir(img_dir):
                new_files = sorted([img_dir + "/" + i for i in os.listdir(img_dir)])
                files_rgb.append(random.choice(new_files))
    return files_rgb


@pytest.fixture
def global_random_restored():
    state = random.getstate()
    yield
    random.setstate(state)


# ---------------------------------------------------------------------------------------------- SYSU-MM01
def test_parse_id_line_worked_examples():
    assert parse_id_line("6,10,17\n", "x") == [6, 10, 17]
    assert parse_id_line("\n 1, 2 ,5,\n\n", "x") == [1, 2, 5]  # blank lines and a trailing comma tolerated
    for text, needle in (("1,two,3", "'two'"), ("1,2\n3,4", "2 non-empty lines"), ("", "empty"), ("1,2,1", "id 1")):
        with pytest.raises(MultError) as err:
            parse_id_line(text, "exp/test_id.txt")
        one_line_error(err, "exp/test_id.txt", needle)


def test_parse_sysu_path_uses_path_parts():
    # A root containing "cam" and digits, and a 5-character extension, would fool fixed offsets.
    assert parse_sysu_path("/data/cam9/SYSU-MM01/cam3/0012/0001.jpeg") == (3, 12)
    assert parse_sysu_path(Path("cam6") / "0491" / "0020.jpg") == (6, 491)
    with pytest.raises(MultError):
        parse_sysu_path("/data/images/0001.jpg")


def test_camera_modality():
    assert [camera_modality(c) for c in range(1, 7)] == [Modality.visible] * 2 + [Modality.infrared] + [Modality.visible] * 2 + [Modality.infrared]
    with pytest.raises(MultError):
        camera_modality(7)


def test_sysu_train_records(sysu_tree):
    data = SYSUMM01(sysu_tree.root)
    records = data.train()
    train_ids = sorted(sysu_tree.train + sysu_tree.val)
    assert len(records) == sysu_tree.images(range(1, 7), train_ids)
    assert {r.pid for r in records} == set(train_ids)
    # Sorted by camera folder, then pid, then file name.
    keys = [(r.camid, r.pid, os.path.basename(r.path)) for r in records]
    assert keys == sorted(keys)
    assert len(set(r.path for r in records)) == len(records)
    for r in records:
        assert parse_sysu_path(r.path) == (r.camid, r.pid)
        assert r.modality == (Modality.infrared if r.camid in (3, 6) else Modality.visible)
        assert os.path.isfile(r.path)
    visible, infrared = data.train(Modality.visible), data.train("infrared")
    assert {r.camid for r in visible} == {1, 2, 4, 5} and {r.camid for r in infrared} == {3, 6}
    assert len(visible) == sysu_tree.images((1, 2, 4, 5), train_ids)
    assert len(visible) + len(infrared) == len(records)
    assert not {r.pid for r in records} & set(sysu_tree.test)


def test_sysu_query_matches_community_code(sysu_tree):
    data = SYSUMM01(sysu_tree.root)
    query = data.query("all")
    assert [r.path for r in query] == community_query(str(sysu_tree.root))
    assert query == data.query("indoor")  # both modes use both IR cameras
    assert {r.camid for r in query} == {3, 6} and all(r.modality == Modality.infrared for r in query)
    assert len(query) == sysu_tree.images((3, 6), sysu_tree.test)
    assert Counter(r.pid for r in query) == Counter({p: sysu_tree.images((3, 6), [p]) for p in sysu_tree.test})


def test_local_random_instance_equals_global_seed_and_choice(global_random_restored):
    for trial in range(10):
        sizes = [3, 1, 7, 12, 2, 5] * 5
        random.seed(trial)
        expected = [random.choice(list(range(n))) for n in sizes]
        local = random.Random(trial)
        assert [local.choice(range(n)) for n in sizes] == expected


@pytest.mark.parametrize("mode", ["all", "indoor"])
def test_sysu_gallery_trials_equal_community_code(sysu_tree, mode, global_random_restored):
    data = SYSUMM01(sysu_tree.root)
    trials = []
    for trial in range(10):
        ours = [r.path for r in data.gallery(mode, trial)]
        assert ours == community_gallery(str(sysu_tree.root), mode, trial), (mode, trial)
        assert [r.path for r in data.gallery(mode, trial)] == ours  # deterministic on repeated calls
        trials.append(tuple(ours))
    assert len(set(trials)) > 1  # different trials draw different images
    # The global RNG is untouched by our reader.
    random.seed(123)
    before = random.random()
    random.seed(123)
    data.gallery(mode, 4)
    assert random.random() == before


def test_sysu_gallery_structure(sysu_tree):
    data = SYSUMM01(sysu_tree.root)
    for mode, cameras in (("all", {1, 2, 4, 5}), ("indoor", {1, 2})):
        pool = data.gallery_pool(mode)
        assert {r.camid for r in pool} == cameras
        expected_groups = {(c, p) for c in cameras for p in sysu_tree.test if (c, p) in sysu_tree.counts}
        assert len(pool) == sum(sysu_tree.counts[g] for g in expected_groups)
        for trial in (0, 3):
            gallery = data.gallery(mode, trial)
            groups = [(r.camid, r.pid) for r in gallery]
            assert sorted(groups) == sorted(expected_groups)  # exactly one image per existing (camera, id)
            assert all(r.modality == Modality.visible for r in gallery)
            rows = data.gallery_indices(mode, trial)
            assert rows.dtype == np.int64 and [pool[i] for i in rows] == gallery
    # Test id 6 has no cam1 and no cam4 folder: indoor holds it once (cam2), all-search twice (cam2, cam5).
    assert Counter(r.pid for r in data.gallery("indoor", 0))[6] == 1
    assert Counter(r.pid for r in data.gallery("all", 0))[6] == 2


def test_sysu_multi_shot(sysu_tree):
    data = SYSUMM01(sysu_tree.root)
    pool = data.gallery_pool("all")
    rows = data.gallery_indices("all", 2, "multi")
    assert np.array_equal(rows, data.gallery_indices("all", 2, "multi"))
    assert not np.array_equal(rows, data.gallery_indices("all", 3, "multi"))
    assert len(set(rows.tolist())) == len(rows)
    per_group = Counter((pool[i].camid, pool[i].pid) for i in rows)
    for group, n in per_group.items():
        assert n == min(10, sysu_tree.counts[group])
    assert per_group[(1, 4)] == 10 and per_group[(5, 2)] == 10
    # Re-statement: one RandomState(trial) for the whole trial, choice(files, 10, replace=False) per big folder.
    state = np.random.RandomState(2)
    expected = []
    for group in [(c, p) for p in sorted(sysu_tree.test) for c in (1, 2, 4, 5) if (c, p) in sysu_tree.counts]:
        files = data.image_paths(*group)
        expected += list(state.choice(files, 10, replace=False)) if len(files) >= 10 else files
    assert [pool[i].path for i in rows] == expected


def test_sysu_bad_arguments(sysu_tree):
    data = SYSUMM01(sysu_tree.root)
    for call in (
        lambda: data.gallery("outdoor"),
        lambda: data.gallery("all", shot="double"),
        lambda: data.gallery("all", trial=-1),
        lambda: data.query("everything"),
        lambda: data.train("ultraviolet"),
        lambda: data.ids("dev"),
    ):
        with pytest.raises(MultError) as err:
            call()
        one_line_error(err)


def test_sysu_layout_errors(make_sysu, tmp_path):
    with pytest.raises(MultError) as err:
        SYSUMM01(tmp_path / "nowhere")
    one_line_error(err, "nowhere", "not a folder")

    tree = make_sysu()
    (tree.root / "exp" / "test_id.txt").unlink()
    with pytest.raises(MultError) as err:
        SYSUMM01(tree.root)
    one_line_error(err, "test_id.txt", "missing")

    tree = make_sysu()
    shutil.rmtree(tree.root / "cam6")
    with pytest.raises(MultError) as err:
        SYSUMM01(tree.root)
    one_line_error(err, "cam6", "missing")

    tree = make_sysu()
    (tree.root / "exp" / "val_id.txt").write_text("7;8\n")
    with pytest.raises(MultError) as err:
        SYSUMM01(tree.root)
    one_line_error(err, "val_id.txt", "'7;8'")

    tree = make_sysu()
    (tree.root / "exp" / "train_id.txt").write_text("1,3,5,99\n")  # id 99 has no folder anywhere
    with pytest.raises(MultError) as err:
        SYSUMM01(tree.root).train()
    one_line_error(err, "99", "no images")


# ---------------------------------------------------------------------------------------------------- RegDB
def test_regdb_records(regdb_tree):
    for split in (1, 7):
        data = RegDB(regdb_tree.root, split=split)
        train_ids, test_ids = regdb_tree.splits[split]
        for part, ids, records_of in (("train", train_ids, data.train), ("test", test_ids, data.test)):
            for modality, camid, folder in ((Modality.visible, 1, "Visible"), (Modality.infrared, 2, "Thermal")):
                records = records_of(modality)
                assert len(records) == len(ids) * regdb_tree.images_per_id
                assert all(r.camid == camid and r.modality == modality and os.path.isfile(r.path) for r in records)
                # pid is the idx label (0.. within the part), and the label follows the person's folder.
                for r in records:
                    person = int(Path(r.path).parent.name)
                    assert Path(r.path).parent.parent.name == folder
                    assert r.pid == ids.index(person)
        both = data.train()
        assert both == data.train("visible") + data.train("thermal")


def test_regdb_directions(regdb_tree):
    data = RegDB(regdb_tree.root, split=2)
    query, gallery = data.query_gallery("v2t")
    assert query == data.test(Modality.visible) and gallery == data.test(Modality.infrared)
    query_t, gallery_v = data.query_gallery("t2v")
    assert query_t == gallery and gallery_v == query
    assert {r.pid for r in query} == {r.pid for r in gallery}
    with pytest.raises(MultError):
        data.query_gallery("sideways")


@pytest.mark.parametrize("split", [0, 11, "1", True, 2.0])
def test_regdb_split_range(regdb_tree, split):
    with pytest.raises(MultError) as err:
        RegDB(regdb_tree.root, split=split)
    one_line_error(err, "1..10")


def test_parse_idx_lines_worked_example():
    text = "Visible/1/a_v_1.bmp 0\n\nThermal/my dir/b.bmp 12\nVisible/2/c.bmp\nVisible/2/d.bmp x\n"
    entries, problems = parse_idx_lines(text, "idx/train_visible_1.txt")
    assert [(e.relpath, e.label, e.line) for e in entries] == [("Visible/1/a_v_1.bmp", 0, 1), ("Thermal/my dir/b.bmp", 12, 3)]
    assert len(problems) == 2
    assert "idx/train_visible_1.txt line 4" in problems[0] and "idx/train_visible_1.txt line 5" in problems[1]


def test_regdb_errors(regdb_tree, tmp_path):
    root = regdb_tree.root
    with pytest.raises(MultError) as err:
        RegDB(tmp_path / "nothing")
    one_line_error(err, "nothing")

    idx = root / "idx" / "test_thermal_3.txt"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:2] + ["Thermal/1/broken.bmp"] + lines[2:]) + "\n")
    with pytest.raises(MultError) as err:
        RegDB(root, split=3).test("thermal")
    one_line_error(err, "test_thermal_3.txt line 3", "malformed")

    idx = root / "idx" / "train_visible_4.txt"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines + ["Visible/99/ghost.bmp 0"]) + "\n")
    with pytest.raises(MultError) as err:
        RegDB(root, split=4).train("visible")
    one_line_error(err, "train_visible_4.txt line", "ghost.bmp", "does not exist")

    (root / "idx" / "train_thermal_5.txt").unlink()
    with pytest.raises(MultError) as err:
        RegDB(root, split=5).train()
    one_line_error(err, "train_thermal_5.txt", "missing")


# ------------------------------------------------------------------------------------------- plain folders
def test_read_folder(tmp_path, write_tiny_image):
    for rel in ("0012/a.jpg", "0012/b.PNG", "7/c.bmp", "misc/d.webp", "top.jpeg", "misc/deep/3/e.jpg"):
        write_tiny_image(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("not an image")
    write_tiny_image(tmp_path / ".hidden" / "x.jpg")

    records = read_folder(tmp_path, "infrared")
    rel = [os.path.relpath(r.path, tmp_path) for r in records]
    assert rel == sorted(rel)
    assert set(rel) == {"0012/a.jpg", "0012/b.PNG", "7/c.bmp", "misc/d.webp", "top.jpeg", "misc/deep/3/e.jpg"}
    pids = {os.path.relpath(r.path, tmp_path): r.pid for r in records}
    assert pids == {"0012/a.jpg": 12, "0012/b.PNG": 12, "7/c.bmp": 7, "misc/d.webp": None, "top.jpeg": None,
                    "misc/deep/3/e.jpg": None}
    assert all(r.camid == 0 and r.modality == Modality.infrared for r in records)
    assert all(r.pid is None for r in read_folder(tmp_path, Modality.visible, pids_from_folders=False))
    flat = read_folder(tmp_path, "visible", recursive=False)
    assert [os.path.basename(r.path) for r in flat] == ["top.jpeg"]

    (tmp_path / "empty").mkdir()
    with pytest.raises(MultError) as err:
        read_folder(tmp_path / "empty", "visible")
    one_line_error(err, "empty", "no image files")
    with pytest.raises(MultError) as err:
        read_folder(tmp_path / "top.jpeg", "visible")
    one_line_error(err, "top.jpeg", "not a folder")
    with pytest.raises(MultError):
        read_folder(tmp_path, "ultraviolet")


def test_as_modality():
    assert as_modality("thermal") is Modality.infrared and as_modality("RGB") is Modality.visible
    assert as_modality(Modality.visible) is Modality.visible and as_modality(None, optional=True) is None


# ------------------------------------------------------------------------------------------------- images
def test_load_image_good_and_grey(tmp_path):
    grey = Image.fromarray(np.arange(16 * 8, dtype=np.uint8).reshape(16, 8), "L")
    grey.save(tmp_path / "ir.png")
    image = load_image(tmp_path / "ir.png")
    assert image.mode == "RGB" and image.size == (8, 16)
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], np.asarray(grey)) and np.array_equal(pixels[..., 0], pixels[..., 2])
    assert image_problem(tmp_path / "ir.png") is None
    assert is_image_file("a/B.JPG") and not is_image_file("a/b.txt")


def test_load_image_corrupt_truncated_missing_huge(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG")
    data = buffer.getvalue()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg at all" * 10)
    (tmp_path / "good.jpg").write_bytes(data)
    cases = {"truncated.jpg": "truncated", "garbage.jpg": "not a readable image", "missing.jpg": "not found"}
    for name, needle in cases.items():
        with pytest.raises(MultError) as err:
            load_image(tmp_path / name)
        one_line_error(err, str(tmp_path / name), needle)
        assert needle in image_problem(tmp_path / name)
    with pytest.raises(MultError) as err:
        load_image(tmp_path / "good.jpg", max_pixels=32 * 64 - 1)
    one_line_error(err, "good.jpg", "32x64", "above the limit")
    assert load_image(tmp_path / "good.jpg", max_pixels=32 * 64).size == (32, 64)


def test_load_image_bytes_checks_type_and_size():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 16), (10, 20, 30)).save(buffer, "PNG")
    image = load_image_bytes(buffer.getvalue(), "photo.png")
    assert image.size == (8, 16) and image.getpixel((0, 0)) == (10, 20, 30)
    gif = io.BytesIO()
    Image.new("P", (8, 16)).save(gif, "GIF")
    checks = (
        (lambda: load_image_bytes(gif.getvalue(), "anim.gif"), ("anim.gif", "GIF")),
        (lambda: load_image_bytes(buffer.getvalue(), "big.png", max_bytes=10), ("big.png", "limit")),
        (lambda: load_image_bytes(b"", "empty.png"), ("empty.png",)),
        (lambda: load_image_bytes(b"\x89PNG garbage", "bad.png"), ("bad.png",)),
    )
    for call, needles in checks:
        with pytest.raises(MultError) as err:
            call()
        one_line_error(err, *needles)
