"""The command line itself: version, help, and the one-line error contract."""

import subprocess
import sys

import pytest

from mult import __version__
from mult.cli import main


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_version(capsys):
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"mult {__version__}"


def test_help_lists_command_groups(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    assert "data" in out


def test_expected_error_is_one_line_without_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-dataset"
    code, _, err = run_main(["data", "check", str(missing), "--format", "sysu"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "Traceback" not in err
    assert str(missing) in err


def test_a_bad_config_value_is_one_line_naming_the_field(tmp_path, capsys):
    code, _, err = run_main(["train", "--out", str(tmp_path / "run"), "--data-root", str(tmp_path), "--preset", "tiny",
                             "--set", "memory_update=sometimes"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "memory_update" in err and "after-step" in err


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "mult", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in proc.stdout


def test_serve_rejects_a_missing_repository_in_one_line(tmp_path, capsys):
    missing = tmp_path / "no-repo"
    code, _, err = run_main(["serve", "--repo", str(missing), "--grpc-port", "18001"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert str(missing) in err


def test_export_refuses_two_precisions(tmp_path, capsys):
    code, _, err = run_main(["export", str(tmp_path), "--fp16", "--int8"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "--fp16" in err and "--int8" in err


def test_bench_lists_the_suite_on_an_unknown_name(capfd):
    proc = subprocess.run([sys.executable, "-m", "mult.cli", "bench", "no-such-bench"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown benchmark(s) no-such-bench" in proc.stderr and "serving" in proc.stderr
