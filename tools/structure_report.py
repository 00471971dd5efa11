"""The code's structure in five figures, for a before/after table (issue 18).

    python tools/structure_report.py [--root DIR]

- backward imports: import statements (lazy ones included) from a lower floor of the house to a higher one,
  floors core < train < export < serving < app < cli, each module's floor taken from where it lives;
- modules over 400 lines and functions over 80 lines, in the installed package (not tests, not benchmarks);
- pairs of repeated blocks of six lines or more, from the `duplicates` tool when it is on PATH;
- total lines of Python: the package, the tests, everything.

The package's folders are read from ``[tool.setuptools] package-dir`` in pyproject.toml, so a new floor needs no
edit here. Standard library only: it runs on a tree that has no virtual environment.
"""
from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

FLOORS = ("core", "train", "export", "serving", "app", "cli")
#: ``python -m mult`` only launches the command line; the layer contract places it with the cli floor.
LAUNCHERS = {"mult.__main__": "cli"}
BIG_MODULE_LINES = 400
LONG_FUNCTION_LINES = 80


def package_dirs(root: Path) -> dict[str, Path]:
    """Dotted package name -> folder, from pyproject.toml's package-dir mapping."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"].get("package-dir", {"mult": "mult"})
    return {name: root / folder for name, folder in mapping.items()}


def package_modules(root: Path) -> dict[str, tuple[Path, str]]:
    """Every module of the package: dotted name -> (file, floor). A package's own name stands for its __init__.py.

    A module's floor is where its file lives: a folder mapped to ``mult.<floor>`` in package-dir, otherwise core
    (so a command line kept inside ``mult/`` counts as core, which is what the layering has to say about it).
    """
    modules: dict[str, tuple[Path, str]] = {}
    dirs = package_dirs(root)
    for package, folder in sorted(dirs.items(), key=lambda item: -len(item[0])):
        floor = package.split(".")[1] if package.count(".") == 1 and package.split(".")[1] in FLOORS else "core"
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            if "__pycache__" in relative.parts:
                continue
            name = ".".join([package, *parts])
            # the longest mapped package is walked first: mult.train's folder wins over a stray mult/train
            modules.setdefault(name, (path, LAUNCHERS.get(name, floor)))
    return modules


def floor_of(target: str, modules: dict[str, tuple[Path, str]]) -> str:
    """The floor of an imported name: that of the longest known module it starts with."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return modules[".".join(parts[:end])][1]
    return "core"


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, target) for every ``import``/``from`` anywhere in the file, relative ones resolved."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
    return found


def backward_imports(modules: dict[str, tuple[Path, str]]) -> list[str]:
    rows = []
    for module, (path, floor) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        source_floor = FLOORS.index(floor)
        for line, target in imported_modules(tree, module, path.name == "__init__.py"):
            if target.split(".")[0] != "mult":
                continue
            if FLOORS.index(floor_of(target, modules)) > source_floor:
                rows.append(f"{module}:{line} -> {target}")
    return rows


def long_functions(modules: dict[str, tuple[Path, str]]) -> list[str]:
    rows = []
    for module, (path, _) in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONG_FUNCTION_LINES:
                    rows.append(f"{module}.{node.name} {length}")
    return rows


def line_count(paths) -> int:
    return sum(len(p.read_text().splitlines()) for p in paths)


def duplicate_pairs(root: Path) -> str:
    """The first line of ``duplicates --repo root``: how many pairs share six or more lines."""
    if shutil.which("duplicates") is None:
        return "n/a (duplicates not on PATH)"
    out = subprocess.run(["duplicates", "--repo", str(root), "--seconds", "120"],
                         capture_output=True, text=True).stdout
    match = re.match(r"(\d+) pairs", out) or re.match(r"no duplicates", out)
    return match.group(1) if match and match.groups() else ("0" if match else out.splitlines()[0])


def report(root: Path, detail: bool) -> str:
    modules = package_modules(root)
    backward = backward_imports(modules)
    files = {module: path for module, (path, _) in modules.items()}
    big = sorted(((line_count([p]), m) for m, p in files.items() if line_count([p]) > BIG_MODULE_LINES),
                 reverse=True)
    long = long_functions(modules)
    every_py = [p for p in root.rglob("*.py")
                if not any(part in {".venv", "build", "__pycache__", ".git"} for part in p.relative_to(root).parts)]
    tests = [p for p in every_py if p.relative_to(root).parts[0] == "tests"]
    rows = [
        ("backward imports (lazy included)", len(backward)),
        (f"modules over {BIG_MODULE_LINES} lines", len(big)),
        (f"functions over {LONG_FUNCTION_LINES} lines", len(long)),
        ("pairs of repeated blocks (>= 6 lines, whole tree)", duplicate_pairs(root)),
        ("lines: package", line_count(files.values())),
        ("lines: tests", line_count(tests)),
        ("lines: all Python", line_count(every_py)),
    ]
    text = "\n".join(f"| {name} | {value} |" for name, value in rows)
    if detail:
        text += "\n\nbackward imports:\n" + "\n".join(f"  {r}" for r in backward)
        text += "\n\nbig modules:\n" + "\n".join(f"  {m} {n}" for n, m in big)
        text += "\n\nlong functions:\n" + "\n".join(f"  {r}" for r in long)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--detail", action="store_true", help="list what each count is made of")
    args = parser.parse_args(argv)
    print(report(args.root.resolve(), args.detail))
    return 0


if __name__ == "__main__":
    sys.exit(main())
