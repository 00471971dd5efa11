"""Tiny SYSU-MM01 and RegDB trees in the real on-disk formats, built with Pillow for reader/checker tests.

The trees are independent of the SynthVI generator on purpose: they pin the formats themselves, with
irregularities the real data has (ids missing some camera folders, gaps in file numbering, grey
infrared frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from PIL import Image

IMAGE_SIZE = (8, 16)  # width, height: tiny portrait crops


def write_image(path: Path, rng: np.random.Generator, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, size=(IMAGE_SIZE[1], IMAGE_SIZE[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)


@dataclass
class SysuTree:
    root: Path
    train: list[int]
    val: list[int]
    test: list[int]
    #: number of images per (camid, pid) folder that exists
    counts: dict[tuple[int, int], int] = field(default_factory=dict)

    def images(self, cams, pids) -> int:
        return sum(self.counts.get((c, p), 0) for c in cams for p in pids)


def build_sysu_tree(
    root: Path,
    *,
    train: tuple[int, ...] = (1, 3, 5),
    val: tuple[int, ...] = (7,),
    test: tuple[int, ...] = (2, 4, 6, 11),
    absent: tuple[tuple[int, int], ...] = ((1, 6), (4, 6)),
    overrides: Optional[dict[tuple[int, int], int]] = None,
    seed: int = 0,
) -> SysuTree:
    """``root/camK/<pid:04d>/<n:04d>.jpg`` + ``root/exp/*_id.txt``.

    Folder (camid, pid) holds ``2 + (7 * pid + camid) % 3`` images unless ``overrides`` says otherwise
    (default: cam1/0004 holds 12 and cam5/0002 holds 11 so multi-shot has something to sample); the
    (camid, pid) pairs in ``absent`` have no folder (test id 6 is missing cam1 and cam4). File numbers
    have gaps (1, 3, 5, ...) like the real data.
    """
    overrides = {(1, 4): 12, (5, 2): 11} if overrides is None else overrides
    rng = np.random.default_rng(seed)
    tree = SysuTree(root, list(train), list(val), list(test))
    for pid in (*train, *val, *test):
        for camid in range(1, 7):
            if (camid, pid) in absent:
                continue
            n = overrides.get((camid, pid), 2 + (7 * pid + camid) % 3)
            for k in range(n):
                write_image(root / f"cam{camid}" / f"{pid:04d}" / f"{2 * k + 1:04d}.jpg", rng, "L" if camid in (3, 6) else "RGB")
            tree.counts[(camid, pid)] = n
    exp = root / "exp"
    exp.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train_id.txt", train), ("val_id.txt", val), ("test_id.txt", test)):
        (exp / name).write_text(",".join(str(i) for i in ids) + "\n")
    return tree


@dataclass
class RegdbTree:
    root: Path
    ids: list[int]
    images_per_id: int
    #: split -> (train ids, test ids)
    splits: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)


def build_regdb_tree(root: Path, *, ids: int = 6, images_per_id: int = 3, seed: int = 0) -> RegdbTree:
    """``root/{Visible,Thermal}/<id>/<gender>_<view>_{v,t}_<frame>_<id>.bmp`` + all 40 idx files.

    Each split puts a seeded half of the ids in train and the rest in test; labels are 0.. within each
    part, the same for visible and thermal (as in the real idx files).
    """
    rng = np.random.default_rng(seed)
    person_ids = list(range(1, ids + 1))
    tree = RegdbTree(root, person_ids, images_per_id)
    relpaths: dict[tuple[str, int], list[str]] = {}
    for pid in person_ids:
        for folder, letter, mode in (("Visible", "v", "RGB"), ("Thermal", "t", "L")):
            rels = [f"{folder}/{pid}/male_front_{letter}_{frame:05d}_{pid}.bmp" for frame in range(1, images_per_id + 1)]
            for rel in rels:
                write_image(root / rel, rng, mode)
            relpaths[(folder, pid)] = rels
    idx = root / "idx"
    idx.mkdir(parents=True, exist_ok=True)
    for split in range(1, 11):
        order = np.random.default_rng(100 + split).permutation(person_ids).tolist()
        train_ids, test_ids = sorted(order[: ids // 2]), sorted(order[ids // 2 :])
        tree.splits[split] = (train_ids, test_ids)
        for part, part_ids in (("train", train_ids), ("test", test_ids)):
            for modality, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                lines = [f"{rel} {label}" for label, pid in enumerate(part_ids) for rel in relpaths[(folder, pid)]]
                (idx / f"{part}_{modality}_{split}.txt").write_text("\n".join(lines) + "\n")
    return tree


@pytest.fixture
def make_sysu(tmp_path: Path) -> Callable[..., SysuTree]:
    """Builder for a tiny SYSU-MM01 tree under a fresh temporary folder (keyword arguments as build_sysu_tree)."""
    counter = iter(range(1_000))

    def make(**kwargs) -> SysuTree:
        return build_sysu_tree(tmp_path / f"SYSU-MM01-{next(counter)}", **kwargs)

    return make


@pytest.fixture
def write_tiny_image() -> Callable[..., None]:
    """``write(path, mode="RGB")``: a seeded random 8x16 image in the format the file name says."""
    rng = np.random.default_rng(1)
    return lambda path, mode="RGB": write_image(Path(path), rng, mode)


@pytest.fixture
def sysu_tree(make_sysu) -> SysuTree:
    return make_sysu()


@pytest.fixture
def regdb_tree(tmp_path: Path) -> RegdbTree:
    return build_regdb_tree(tmp_path / "RegDB")


@pytest.fixture(scope="session")
def synth_sysu_small(tmp_path_factory) -> Path:
    """A small SynthVI set in SYSU layout, rendered once per test session (used by training tests)."""
    from mult.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "sysu"
    synthesize(root, "sysu", ids=20, images_per_camera=4, height=64, width=32, seed=0, workers=1, progress=False)
    return root


# ---- an exported model repository (serving, search and app tests) ----------------------------------------


@dataclass
class TinyExport:
    """A `mult export` repository (version 1) of a random-init ResNet-18 run at 64x32, and the model itself."""

    repo: Path
    run: Path
    model: object  # mult.model.TwoStreamEncoder in eval mode
    height: int
    width: int


def perturbed_encoder(seed: int):
    """A random-init ResNet-18 encoder in eval mode with non-trivial BN running statistics and distinct stems,
    so a wrong stem or a skipped normalisation changes its embeddings visibly."""
    import warnings

    import torch

    from mult.model import PretrainedWeightsWarning, TwoStreamEncoder

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedWeightsWarning)
        model = TwoStreamEncoder("resnet18")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for p in model.infrared_stem.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> TinyExport:
    """Export once per session. BN statistics and the infrared stem are perturbed, so a skipped normalisation
    or a swapped stem changes the embeddings visibly."""
    import torch

    from mult.config import preset_config
    from mult.export.repository import write_model_repository

    model = perturbed_encoder(0)
    base = tmp_path_factory.mktemp("tiny_export")
    run = base / "run"
    run.mkdir()
    cfg = preset_config("tiny")
    cfg.save(run / "config.json")
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 1}, run / "checkpoint.pt")
    write_model_repository(run, base / "model_repository")
    return TinyExport(base / "model_repository", run, model, cfg.height, cfg.width)


# ---------------------------------------------------------------------------------------------------------
# Gallery (FAISS index, search, rank lists): a real tiny encoder and a folder of person-like crops.


def tiny_torch_encoder(seed: int = 0, arch: str = "resnet18"):
    """``mult.features.TorchEncoder`` over a randomly initialised ``TwoStreamEncoder`` at 64x32 (no flip)."""
    import warnings

    import torch

    from mult.features import TorchEncoder
    from mult.model import PretrainedWeightsWarning, TwoStreamEncoder

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PretrainedWeightsWarning)
        model = TwoStreamEncoder(arch).eval()
    return TorchEncoder(model, 64, 32, batch_size=16, flip=False, progress=False)


@pytest.fixture(scope="session")
def gallery_encoder():
    """The tiny encoder shared by the gallery tests (512-d embeddings)."""
    return tiny_torch_encoder(0)


def write_crops(root: Path, pids: tuple[int, ...], per_pid: int, seed: int, mode: str = "L") -> list[Path]:
    """``root/<pid:04d>/<n>.png`` person-sized crops (32x64) of seeded noise; returns the paths written."""
    rng = np.random.default_rng(seed)
    paths = []
    for pid in pids:
        for n in range(per_pid):
            path = root / f"{pid:04d}" / f"{n}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            shape = (64, 32) if mode == "L" else (64, 32, 3)
            Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path)  # 2-D: L, 3-D: RGB
            paths.append(path)
    return paths


def synthetic_gallery(kind: str, n: int = 2000, d: int = 32, seed: int = 0,
                      vectors: Optional[np.ndarray] = None) -> "Gallery":
    """A gallery object (real faiss index, no files) over ``vectors`` (default: n random unit vectors): cameras
    1..6 by id, infrared on cameras 3 and 6, every third pid unknown, times 0..n-1; ``.vectors`` keeps the
    vectors for brute-force answers."""
    from mult.data.records import Modality, Record
    from mult.serving.faiss_index import IndexSpec, build_index
    from mult.serving.gallery import Gallery

    if vectors is None:
        vectors = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    vectors = np.asarray(vectors, dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    n = len(vectors)
    spec = IndexSpec(kind, nlist=8 if kind == "ivf" else None, nprobe=8).resolved(n)
    records = [Record(f"/g/{i}.png", None if i % 3 == 0 else i // 10, 1 + i % 6,
                      Modality.infrared if i % 6 in (2, 5) else Modality.visible, float(i)) for i in range(n)]
    manifest = {"index": {"kind": spec.kind, "params": spec.params()}, "embedding_size": d,
                "modalities": {"infrared": sum(r.modality is Modality.infrared for r in records),
                               "visible": sum(r.modality is Modality.visible for r in records)}}
    gallery = Gallery(Path("/g"), build_index(vectors, spec), records, manifest)
    gallery.vectors = vectors
    return gallery


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``mult ARGV`` in this process: (exit code, stdout, stderr)."""
    from mult.cli import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err
