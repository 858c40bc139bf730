"""No function of the model side over 60 lines: a function that long does several things, and
each of them reads better under a name of its own.

A function's length runs from its ``def`` line to its last line (docstring and comments count;
decorators do not). Nested functions are measured too, and count within their parent.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 60

FILES = (
    "minivae/vae.py",
    "minivae/ae.py",
    "minivae/mlp.py",
    "minivae/layers.py",
    "minivae/losses.py",
    "minivae/optim.py",
    "minivae/backend.py",
    "minivae/checks.py",
    "minivae/metrics.py",
    "minivae/linear.py",
    "minivae/linear_cli.py",
    "minivae/identity.py",
    "minivae/mechanism.py",
    "minivae/plots.py",
    "kernels/__init__.py",
    "kernels/reference.py",
    "kernels/engine.py",
    "kernels/flat.py",
    "kernels/fast.py",
    "kernels/cpu_fused.py",
    "kernels/gemm_cpu.py",
    "kernels/gemm_choice.py",
    "kernels/cupy/__init__.py",
    "kernels/cupy/graph.py",
    "kernels/cupy/ops.py",
    "kernels/cupy/sources.py",
    "kernels/numba_cuda/__init__.py",
    "kernels/numba_cuda/_util.py",
    "kernels/numba_cuda/adam.py",
    "kernels/numba_cuda/bernoulli_nll.py",
    "kernels/numba_cuda/bias_act.py",
    "kernels/numba_cuda/colsum.py",
    "kernels/numba_cuda/matmul.py",
    "kernels/numba_cuda/noise.py",
    "kernels/numba_cuda/ops.py",
    "kernels/numba_cuda/reparam_kl.py",
)


def long_functions(path):
    """(qualified name, first line, length) of every function in ``path`` longer than LIMIT."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}."
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = child.end_lineno - child.lineno + 1
                if length > LIMIT:
                    found.append((name[:-1], child.lineno, length))
            visit(child, name)

    visit(tree, "")
    return found


def test_the_list_holds_every_kernel_file():
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "kernels").rglob("*.py")}
    assert on_disk <= set(FILES), f"add to FILES: {sorted(on_disk - set(FILES))}"
    assert all((ROOT / f).is_file() for f in FILES), [f for f in FILES if not (ROOT / f).is_file()]


def test_no_function_is_longer_than_the_limit():
    offenders = [f"{f}:{line} {name} ({n} lines)" for f in FILES for name, line, n in long_functions(ROOT / f)]
    assert not offenders, f"functions over {LIMIT} lines:\n" + "\n".join(offenders)


def test_the_measure_finds_a_long_function(tmp_path):
    body = "\n".join(f"    x = {i}" for i in range(LIMIT))
    source = tmp_path / "m.py"
    source.write_text(f"class C:\n    def short(self):\n        pass\n\n\ndef long():\n{body}\n")
    assert long_functions(source) == [("long", 6, LIMIT + 1)]
