"""The hand-kept package list in pyproject.toml cannot drift from the tree (issue 18, item 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the project also supports 3.10

ROOT = Path(__file__).resolve().parents[1]


def test_every_python_package_folder_is_listed_in_pyproject():
    """Every folder holding an __init__.py under a mapped package directory is in ``packages`` (and nothing
    listed is missing): a new subpackage left out would install without its modules."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setuptools["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *relative)))
    # a mapped top-level folder is its own package; nested ones are covered by the mapping of their parent
    assert found == set(setuptools["packages"]), (sorted(found - set(setuptools["packages"])),
                                                  sorted(set(setuptools["packages"]) - found))


def test_license_is_an_spdx_string():
    """An SPDX string, not the deprecated ``{ text = ... }`` table that made every install print a warning."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
