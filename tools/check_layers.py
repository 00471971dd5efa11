"""Check the house's layering with import-linter: ``python -m tools.check_layers`` (exit status 0 = kept).

The contract lives in pyproject.toml (``[tool.importlinter]``): floors core < train < export < serving < app <
cli, lazy imports included. import-linter finds a package's modules by walking its folder, and our stage
folders (train/, export/, ...) are mapped into ``mult`` by ``[tool.setuptools] package-dir``, so this builds a
plain ``mult/`` tree with every mapped folder copied into place and runs ``lint-imports`` on that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.structure_report import package_dirs

ROOT = Path(__file__).resolve().parents[1]


def build_view(root: Path, into: Path) -> Path:
    """Copy the package as import-linter expects it: ``into/mult/...`` with each mapped folder at its dotted place."""
    for package, folder in sorted(package_dirs(root).items(), key=lambda item: item[0].count(".")):
        target = into.joinpath(*package.split("."))
        shutil.copytree(folder, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    return into


def lint(view: Path, config: Path) -> subprocess.CompletedProcess:
    """Run ``lint-imports`` (of this interpreter's environment) on the copy at ``view`` with ``config``."""
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else ["lint-imports"]
    env = {**os.environ, "PYTHONPATH": str(view)}  # the copy wins over the editable install's mapped finder
    return subprocess.run([*command, "--no-cache", str(config)], cwd=view, env=env, capture_output=True, text=True)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="mult-layers-") as tmp:
        result = lint(build_view(ROOT, Path(tmp)), ROOT / "pyproject.toml")
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
