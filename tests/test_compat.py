"""Today's code gives the numbers and reads the files of the code before it.

tests/data/golden.json holds what the code of commit 0ce8dcb gave (tests/data/make_golden.py made it
and the small files in tests/data/old/ with that code): the main job on numpy and cpu-fused, a tiny
sweep and a tiny budget curve, the sweep's settings keys, and the ends of an old main job and an old
sweep run resumed from their checkpoints. On the machine kind the golden values were made on (same
BLAS kernels, NumPy and Numba) every number and every array must be the same, bit for bit; elsewhere
the arrays' sums and the numbers must agree closely (a BLAS of another CPU rounds otherwise).
"""

import json
import math
import pathlib

import pytest

from minivae import runs

DATA = pathlib.Path(__file__).resolve().parent / "data"


def _load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_golden", DATA / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


golden_script = _load_script()
GOLDEN = json.loads((DATA / "golden.json").read_text())
EXACT = golden_script.environment() == GOLDEN["environment"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    return golden_script.measure(tmp_path_factory.mktemp("compat"))


def same(got, want, where="", exact=EXACT):
    """The places where ``got`` differs from ``want`` (exactly, or closely when not ``exact``)."""
    if isinstance(want, dict) and isinstance(got, dict):
        if set(got) != set(want):
            return [f"{where}: keys {sorted(set(got) ^ set(want))} differ"]
        return [d for k in want for d in same(got[k], want[k], f"{where}/{k}", exact)]
    if isinstance(want, list) and isinstance(got, list):
        if len(got) != len(want):
            return [f"{where}: {len(got)} items, expected {len(want)}"]
        if len(want) == 4 and isinstance(want[0], str) and len(want[0]) == 64 and not exact:  # an array
            return same(got[1:], want[1:], where, exact)
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in same(g, w, f"{where}[{i}]", exact)]
    both_nan = isinstance(want, float) and isinstance(got, float) and math.isnan(want) and math.isnan(got)
    if isinstance(want, float) and isinstance(got, float) and not exact:
        ok = math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6) or both_nan
    else:
        ok = got == want or both_nan
    return [] if ok else [f"{where}: {got!r}, expected {want!r}"]


@pytest.mark.parametrize(
    "part", ["train-numpy", "train-cpu-fused", "sweep", "budgets", "keys", "old-train", "old-sweep"]
)
def test_the_numbers_and_files_are_those_of_the_code_before(part, measured):
    differences = same(measured[part], GOLDEN[part], part)
    assert not differences, "\n".join(differences[:20])


def test_the_comparison_is_exact_on_the_machine_the_values_were_made_on():
    if not EXACT:
        pytest.skip(f"another machine kind than golden.json's ({GOLDEN['environment']}): compared closely")
    assert same(1.0, 1.0 + 1e-12) and not same(1.0, 1.0)


def test_an_old_run_folder_loads_as_its_model():
    vae = runs.load(DATA / "old" / "train-run", backend="numpy")
    assert (vae.latent, vae.hidden) == (3, (4,))
