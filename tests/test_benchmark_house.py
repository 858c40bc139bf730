"""The benchmark scripts as commands and as code: every option has a help text that gives its
default, and a bad value is one line and exit code 2 (the length of their functions is checked
with the package's in tests/test_function_length.py)."""

import argparse
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from test_benchmark import HUGE, refused_line

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("throughput", "kernels", "gpu_check", "roofline")  # the benchmark commands in benchmarks/


def _script(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_option_has_help_with_its_default(name):
    """Like the minivae commands: "(default …)" in the help of every option that takes a value,
    a help text for every flag."""
    ap = _script(name).parser()
    for action in ap._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        what = action.option_strings or [action.dest]
        assert action.help, f"{name} {what[0]} has no help"
        takes_value = action.nargs != 0
        if takes_value and action.option_strings:  # a positional is required: it has no default
            assert "default" in action.help, f"{name} {what[0]}: the help does not say the default"


def test_the_scripts_use_the_commands_parser():
    """No copy of minivae.cli.Parser in benchmarks/: a usage error is one line, the same way."""
    for path in (ROOT / "benchmarks").glob("*.py"):
        tree = ast.parse(path.read_text())
        parsers = [
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("ArgumentParser") for b in node.bases)
        ]
        assert not parsers, f"{path.name} defines its own parser class {parsers}: use minivae.cli.Parser"


@pytest.mark.parametrize(
    "bad",
    [
        ["--repeats", "0"],
        ["--threads", "x"],
        ["--latents", "0"],
        ["--versions", "x"],
        ["--cpu", "--versions", "9"],
        ["--out", ""],
        ["--json", ""],
    ],
)
def test_kernels_bad_values_are_one_line_and_exit_2(bad, capsys):
    kernels = _script("kernels")
    try:
        code = kernels.main(bad)
    except SystemExit as e:  # argparse's own exit
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err


def test_gpu_check_starts_without_numpy():
    """The GPU check runs before anything is installed: its parser comes from minivae/cli.py
    without importing the minivae package (which needs NumPy)."""
    code = (
        "import sys; sys.modules['numpy'] = None\n"  # any import of NumPy fails
        "import runpy; runpy.run_path(sys.argv[1], run_name='gpu_check_probe')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT / "benchmarks" / "gpu_check.py")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_each_script_runs_as_a_file_from_anywhere_and_says_its_version(name, tmp_path):
    import minivae

    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout.strip().endswith(minivae.__version__)


def test_a_script_error_has_the_commands_prefix(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--bogus"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == ["benchmarks.throughput: error: unrecognized arguments: --bogus"]


def _kernels_refused(argv, capsys):
    small = ["--cpu", "--repeats", "1", "--threads", "1", "--latents", "2", "--versions", "1"]
    return refused_line(_script("kernels").main, "kernels", [*small, *argv], capsys)


@pytest.mark.parametrize(
    "bad",
    [
        ["--out", "/proc/nope/x"],
        ["--json", "/proc/nope/x.json"],
        ["--out", "/proc/self"],
        ["--json", "/proc/self/x"],
        ["--latents", HUGE],
        ["--latents", "1000000000"],
        ["--threads", HUGE],
    ],
)
def test_kernels_cpu_refuses_before_anything_is_timed(bad, tmp_path, capsys):
    _kernels_refused(["--out", str(tmp_path / "out"), *bad], capsys)
    assert not (tmp_path / "out").exists() and not Path("/proc/nope").exists()


def test_kernels_cpu_refuses_a_result_file_that_cannot_be_one(tmp_path, capsys):
    long = tmp_path / ("a" * 300 + ".json")  # a name longer than any file system takes
    assert "File name too long" in _kernels_refused(["--json", str(long)], capsys)
    assert "File name too long" in _kernels_refused(["--json", str(tmp_path / ("a" * 300) / "x.json")], capsys)
    (tmp_path / "gemm-cpu-t1.json").mkdir()
    assert "gemm-cpu-t1.json" in _kernels_refused(["--out", str(tmp_path)], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["gemm-cpu-t1.json"]  # nothing else made or written


def test_kernels_write_that_fails_after_the_timing_is_one_line_and_exit_1(monkeypatch, tmp_path, capsys):
    kernels = _script("kernels")

    def refuse(path, text):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(kernels.throughput, "atomic_write_text", refuse)
    path = tmp_path / "k.json"

    def run(args):  # the timing is done: only the writing is left
        return kernels.write_result(path, {})

    assert kernels.throughput.run_command("benchmarks.kernels", run, lambda argv: None) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"benchmarks.kernels: error: cannot write {path}: Permission denied"]
    assert not path.exists()
