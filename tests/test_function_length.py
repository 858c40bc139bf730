"""No function longer than a screen: MAX_LINES lines, docstring and comments included, in every
Python file of ``minivae/``, ``kernels/`` and ``benchmarks/``. A function that long does several
things, and each of them reads better under a name of its own. Nested functions are measured too,
and count within their parent."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAX_LINES = 60
FOLDERS = ("minivae", "kernels", "benchmarks")


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


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_function_is_longer_than_the_limit(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no Python files in {folder}/"
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {fn}: {n} lines (> {MAX_LINES})"
        for path in files
        for fn, line, n in long_functions(path)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_check_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"class A:\n    def long(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n")
    assert [(fn, n) for fn, _, n in long_functions(tmp_path / "m.py")] == [("A.long", MAX_LINES + 1)]
