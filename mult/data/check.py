"""``mult data check``: summarise a SYSU-MM01 or RegDB folder and list everything wrong with it.

Unlike the readers, which stop at the first mistake, the checker collects every problem as one line
(which file or folder, what is wrong, what to do) so a broken download can be fixed in one pass. Every
image is opened, ``verify()``-ed and decoded (JPEGs at reduced scale), in threads, with a progress bar on
stderr for large trees.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from tqdm import tqdm

from mult.data import regdb, sysu, sysu_checks
from mult.data.images import DEFAULT_MAX_PIXELS, image_problem, is_image_file
from mult.data.records import Modality
from mult.errors import MultError

#: Trees with at least this many images get a progress bar when ``progress`` is left to ``None``.
PROGRESS_MIN_IMAGES = 1000
#: Per-file cap on repeated problem lines (malformed or dangling idx lines); the rest are counted.
MAX_LINES_PER_FILE = 10
#: How many problems ``render()`` prints before summarising the rest (``as_dict()`` has them all).
MAX_RENDERED_PROBLEMS = 100


@dataclass
class DatasetReport:
    """What ``check_dataset`` found: counts in ``summary`` and one line per problem in ``problems``."""

    root: str
    format: str
    summary: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"root": self.root, "format": self.format, "ok": self.ok, "summary": self.summary, "problems": list(self.problems)}

    def render(self) -> str:
        """A readable report: count tables, then the problems (or a line saying there are none)."""
        render_summary = _RENDERERS[self.format]
        lines = [f"{self.format.upper()} dataset at {self.root}", ""] + render_summary(self.summary) + [""]
        if not self.problems:
            lines.append(f"No problems found ({self.summary.get('images_checked', 0)} images decoded).")
        else:
            lines.append(f"{len(self.problems)} problem(s):")
            lines.extend(f"  - {p}" for p in self.problems[:MAX_RENDERED_PROBLEMS])
            if len(self.problems) > MAX_RENDERED_PROBLEMS:
                lines.append(f"  ... and {len(self.problems) - MAX_RENDERED_PROBLEMS} more (use --json to see all)")
        return "\n".join(lines)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 1) -> list[str]:
    """A plain-text table: the first ``left`` (label) columns left-aligned, the counts right-aligned."""
    body = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h)) for i, h in enumerate(headers)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [fmt([str(h) for h in headers]), fmt(["-" * w for w in widths])] + [fmt(r) for r in body]


def _cap(lines: list[str], source: str, what: str) -> list[str]:
    if len(lines) <= MAX_LINES_PER_FILE:
        return lines
    return lines[:MAX_LINES_PER_FILE] + [f"{source}: {len(lines) - MAX_LINES_PER_FILE} more {what} not listed"]


def verify_images(
    paths: Sequence[str],
    *,
    progress: Optional[bool] = None,
    workers: Optional[int] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[str]:
    """One problem line per image that does not open, verify and decode, in ``paths`` order.

    Decoding runs in threads (Pillow releases the GIL while decoding). ``progress=None`` shows a bar on
    stderr only for :data:`PROGRESS_MIN_IMAGES` or more images.
    """
    if not paths:
        return []
    workers = workers or min(8, os.cpu_count() or 1)
    show = len(paths) >= PROGRESS_MIN_IMAGES if progress is None else progress

    def check(path: str) -> Optional[str]:
        return image_problem(path, max_pixels=max_pixels)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(
            tqdm(pool.map(check, paths), total=len(paths), desc="checking images", unit="img", file=sys.stderr, disable=not show)
        )
    return [r for r in results if r is not None]


# ------------------------------------------------------------------------------------------------- SYSU
def check_sysu(
    root: Path, *, progress: Optional[bool] = None, workers: Optional[int] = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DatasetReport:
    """Check a SYSU-MM01 tree (METHOD.md §10.1); see :func:`check_dataset`."""
    report = DatasetReport(str(root), "sysu")
    problems = report.problems
    ids = sysu_checks.read_splits(root, problems)
    cams = sysu_checks.scan_cameras(root, problems)
    sysu_checks.check_splits(root, ids, cams, problems)
    all_paths = [path for camid in sysu.ALL_CAMERAS for pid in sorted(cams[camid]) for path in cams[camid][pid]]
    corrupt = verify_images(all_paths, progress=progress, workers=workers, max_pixels=max_pixels)
    problems.extend(corrupt)
    report.summary = sysu_checks.summary(ids, cams, len(all_paths), len(corrupt))
    return report


def _render_sysu(summary: dict[str, Any]) -> list[str]:
    ids = summary["ids"]
    lines = _table(
        ["camera", "modality", "ids", "images"],
        [[name, c["modality"], c["ids"], c["images"]] for name, c in summary["cameras"].items()],
        left=2,
    )
    lines.append("")
    lines += _table(
        ["split", "ids", "visible", "infrared"],
        [[split, ids[split], s["visible"], s["infrared"]] for split, s in summary["splits"].items()],
    )
    test = summary["test"]
    lines += [
        "",
        f"query (infrared, test ids): {test['query_images']} images",
        f"single-shot gallery: all-search {test['single_shot_gallery_all']} images "
        f"(from {test['gallery_candidates_all']}), indoor {test['single_shot_gallery_indoor']} "
        f"(from {test['gallery_candidates_indoor']})",
        f"ids with images but in no split: {summary['unlisted_ids_with_images']}",
    ]
    return lines


# ------------------------------------------------------------------------------------------------- RegDB
def _scan_regdb_modality(folder: Path, problems: list[str]) -> dict[str, int]:
    """``{id folder: image count}`` under Visible/ or Thermal/; empty id folders become problems."""
    found: dict[str, int] = {}
    with os.scandir(folder) as entries:
        subdirs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    for name in subdirs:
        with os.scandir(folder / name) as entries:
            n = sum(1 for e in entries if is_image_file(e.name) and e.is_file())
        if n == 0:
            problems.append(f"{folder / name}: no images in this id folder; restore its images or remove the folder")
        else:
            found[name] = n
    if not found:
        problems.append(f"{folder}: no id folders with images; restore it from the dataset archive")
    return found


def _regdb_image_paths(folder: Path) -> list[str]:
    paths: list[str] = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths.extend(os.path.join(current, f) for f in sorted(files) if is_image_file(f))
    return paths


def check_regdb(
    root: Path, *, progress: Optional[bool] = None, workers: Optional[int] = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DatasetReport:
    """Check a RegDB tree (METHOD.md §10.2): all 40 idx files, their lines and targets, and every image."""
    report = DatasetReport(str(root), "regdb")
    problems = report.problems

    folders = {Modality.visible: root / "Visible", Modality.infrared: root / "Thermal"}
    id_folders: dict[Modality, dict[str, int]] = {}
    for modality, folder in folders.items():
        if folder.is_dir():
            id_folders[modality] = _scan_regdb_modality(folder, problems)
        else:
            problems.append(f"{folder}: missing; a RegDB root holds Visible/, Thermal/ and idx/")
            id_folders[modality] = {}

    splits: dict[str, dict[str, Any]] = {}
    referenced: set[str] = set()
    if not (root / "idx").is_dir():
        problems.append(f"{root / 'idx'}: missing; RegDB needs idx/{{train,test}}_{{visible,thermal}}_{{1..10}}.txt")
    else:
        for split in regdb.SPLITS:
            counts: dict[str, Any] = {}
            labels: dict[tuple[str, Modality], set[int]] = {}
            for part in regdb.PARTS:
                for modality in (Modality.visible, Modality.infrared):
                    path = regdb.idx_path(root, part, modality, split)
                    key = f"{part}_{regdb.IDX_MODALITY[modality]}"
                    try:
                        text = path.read_text(encoding="utf-8")
                    except FileNotFoundError:
                        problems.append(f"{path}: missing; restore the idx files from the RegDB archive")
                        continue
                    except (OSError, UnicodeDecodeError) as err:
                        problems.append(f"{path}: cannot be read ({type(err).__name__}); restore it from the RegDB archive")
                        continue
                    entries, malformed = regdb.parse_idx_lines(text, str(path))
                    problems.extend(_cap(malformed, str(path), "malformed lines"))
                    if not entries and not malformed:
                        problems.append(f"{path}: no entries; each line must be '<relative path> <integer label>'")
                    dangling = []
                    for entry in entries:
                        target = os.path.join(str(root), entry.relpath)
                        if os.path.isfile(target):
                            referenced.add(target)
                        else:
                            dangling.append(
                                f"{path} line {entry.line}: {entry.relpath} does not exist; fix the line or restore the image"
                            )
                    problems.extend(_cap(dangling, str(path), "lines pointing at missing images"))
                    labels[(part, modality)] = {entry.label for entry in entries}
                    counts[key] = {"ids": len(labels[(part, modality)]), "images": len(entries)}
            for part in regdb.PARTS:
                v, t = labels.get((part, Modality.visible)), labels.get((part, Modality.infrared))
                if v is not None and t is not None and v != t:
                    problems.append(
                        f"{root / 'idx'}: split {split} {part}: visible and thermal label sets differ "
                        f"({len(v - t)} only visible, {len(t - v)} only thermal); cross-modality matching needs the same ids"
                    )
            splits[str(split)] = counts

    on_disk = {m: _regdb_image_paths(f) if f.is_dir() else [] for m, f in folders.items()}
    extra = sorted(referenced - set(on_disk[Modality.visible]) - set(on_disk[Modality.infrared]))
    all_paths = on_disk[Modality.visible] + on_disk[Modality.infrared] + extra
    corrupt = verify_images(all_paths, progress=progress, workers=workers, max_pixels=max_pixels)
    problems.extend(corrupt)

    report.summary = {
        "ids": {"visible": len(id_folders[Modality.visible]), "thermal": len(id_folders[Modality.infrared])},
        "images": {"visible": len(on_disk[Modality.visible]), "thermal": len(on_disk[Modality.infrared])},
        "splits": splits,
        "images_checked": len(all_paths),
        "unreadable_images": len(corrupt),
    }
    return report


def _render_regdb(summary: dict[str, Any]) -> list[str]:
    lines = _table(
        ["folder", "ids", "images"],
        [["Visible", summary["ids"]["visible"], summary["images"]["visible"]],
         ["Thermal", summary["ids"]["thermal"], summary["images"]["thermal"]]],
    )
    keys = [f"{part}_{m}" for part in regdb.PARTS for m in ("visible", "thermal")]
    rows = []
    for split, counts in summary["splits"].items():
        cells = [f"{counts[k]['ids']}/{counts[k]['images']}" if k in counts else "missing" for k in keys]
        rows.append([split, *cells])
    if rows:
        lines += ["", "idx files per split (ids/images):"]
        lines += _table(["split", *keys], rows)
    return lines


# One entry per name of the datasets table, mult.datasets.DATASETS (tests/test_data_check.py keeps the keys equal).
# Not imported from there: mult.datasets sits above mult.data (it imports the readers and mult.evaluation).
_RENDERERS = {"sysu": _render_sysu, "regdb": _render_regdb}
_CHECKERS = {"sysu": check_sysu, "regdb": check_regdb}


def check_dataset(
    root: Path,
    fmt: str,
    *,
    progress: Optional[bool] = None,
    workers: Optional[int] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DatasetReport:
    """Summarise the dataset at ``root`` in layout ``fmt`` (a key of :data:`_CHECKERS`, the same names as
    :data:`mult.datasets.DATASETS`: 'sysu' or 'regdb') and list its problems.

    Raises MultError only when ``root`` is not a folder or ``fmt`` is unknown; everything else is reported.
    """
    root = Path(root).expanduser()
    if fmt not in _CHECKERS:
        raise MultError(f"dataset format {fmt!r} is unknown; use {' or '.join(map(repr, _CHECKERS))}")
    if not root.is_dir():
        what = "does not exist" if not root.exists() else "is not a folder"
        raise MultError(f"{root}: dataset root {what}; pass the dataset's top folder")
    return _CHECKERS[fmt](root, progress=progress, workers=workers, max_pixels=max_pixels)
