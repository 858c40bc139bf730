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
