"""The benchmark scripts as commands and as code: every option has a help text that gives its
default, a bad value is one line and exit code 2, and no function in benchmarks/ is longer than
:data:`MAX_LINES` lines (each long procedure is split into named steps)."""

import argparse
import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("throughput", "kernels", "gpu_check")  # the benchmark commands in benchmarks/
MAX_LINES = 60
CHECKED_FOLDERS = ("benchmarks",)  # the folders whose functions are held to MAX_LINES


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


def _long_functions(folder):
    """(file, function, lines) of every function or method in ``folder``'s Python files longer
    than MAX_LINES lines, decorators and docstring included."""
    out = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                lines = node.end_lineno - first + 1
                if lines > MAX_LINES:
                    out.append((str(path.relative_to(ROOT)), node.name, lines))
    return out


@pytest.mark.parametrize("folder", CHECKED_FOLDERS)
def test_no_function_is_longer_than_sixty_lines(folder):
    assert _long_functions(folder) == []


def test_the_length_check_sees_a_long_function(tmp_path, monkeypatch):
    (tmp_path / "long").mkdir()
    (tmp_path / "long" / "f.py").write_text("def f():\n" + "    x = 1\n" * MAX_LINES + "\n\ndef g():\n    pass\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _long_functions("long") == [("long/f.py", "f", MAX_LINES + 1)]


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
