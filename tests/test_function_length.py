"""No function in the package is longer than a screen: MAX_LINES lines, its docstring included.

For now it checks the files listed in CHECKED; the list grows to every file of ``minivae/`` and
``kernels/`` as the others are brought under the limit.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LINES = 60
CHECKED = [  # grows to ROOT.glob("minivae/*.py") + ROOT.glob("kernels/*.py")
    "minivae/checkpoint.py",
    "minivae/cli.py",
    "minivae/config.py",
    "minivae/explore.py",
    "minivae/files.py",
    "minivae/guards.py",
    "minivae/loop.py",
    "minivae/runs.py",
    "minivae/study.py",
    "minivae/sweep.py",
    "minivae/train.py",
]


def long_functions(path, limit=MAX_LINES):
    """[(qualified name, line, length)] of every function in ``path`` longer than ``limit`` lines."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}."
                length = child.end_lineno - child.lineno + 1
                if not isinstance(child, ast.ClassDef) and length > limit:
                    found.append((name[:-1], child.lineno, length))
            visit(child, name)

    visit(tree, "")
    return found


def test_the_checked_files_exist():
    assert all((ROOT / name).is_file() for name in CHECKED)


@pytest.mark.parametrize("name", CHECKED)
def test_no_function_is_longer_than_the_limit(name):
    offenders = long_functions(ROOT / name)
    assert not offenders, "\n".join(f"{name}:{line} {fn}: {n} lines (> {MAX_LINES})" for fn, line, n in offenders)


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"class A:\n    def long(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n")
    assert [(fn, n) for fn, _, n in long_functions(tmp_path / "m.py")] == [("A.long", MAX_LINES + 1)]
