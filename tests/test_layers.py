"""The house's layering (core < train < export < serving < app < cli) is a checked contract (issue 18).

import-linter runs on a copy of the package (tools.check_layers); the copies below are altered on purpose to
show the check can fail: a lazy backward import, a backward import from core, and a module nobody placed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.check_layers import ROOT, build_view, lint

CONFIG = ROOT / "pyproject.toml"


@pytest.fixture()
def view(tmp_path: Path) -> Path:
    return build_view(ROOT, tmp_path / "view")


def test_the_tree_keeps_the_layers(view):
    result = lint(view, CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_a_lazy_backward_import_breaks_the_contract(view):
    memory = view / "mult" / "train" / "memory.py"
    memory.write_text(memory.read_text() + "\n\ndef _peek():\n    from mult.serving.gallery import Gallery\n"
                      "    return Gallery\n")
    result = lint(view, CONFIG)
    assert result.returncode != 0
    assert "mult.train.memory -> mult.serving.gallery" in result.stdout


def test_core_importing_the_command_line_breaks_the_contract(view):
    config = view / "mult" / "config.py"
    config.write_text(config.read_text() + "\n\ndef _cli():\n    import mult.cli\n    return mult.cli\n")
    result = lint(view, CONFIG)
    assert result.returncode != 0
    assert "mult.config -> mult.cli" in result.stdout


def test_a_module_on_no_floor_is_refused(view):
    (view / "mult" / "unplaced.py").write_text("X = 1\n")
    result = lint(view, CONFIG)
    assert result.returncode != 0
    assert "mult.unplaced" in result.stdout + result.stderr
