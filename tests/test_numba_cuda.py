"""The Numba-CUDA kernels, without a GPU.

- Correctness: every kernel against its NumPy oracle on the CUDA simulator, and a whole training
  step on ``numba-cuda`` against the numpy step (tests/sim_numba_cuda.py, run in a subprocess with
  NUMBA_ENABLE_CUDASIM=1, because the variable must be set before Numba is first imported).
- Compilation: every kernel compiled to PTX for sm_90 with ``numba.cuda.compile_ptx`` (needs the
  NVVM library, no driver), which also catches Python the simulator accepts but the CUDA target
  does not; float32 kernels must contain no float64 instruction (a Python float or int mixed into
  float32 arithmetic silently promotes it).
- Honesty: each file's docstring lists exactly its kernel versions.
"""

import importlib
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("matmul", "bias_act", "colsum", "reparam_kl", "bernoulli_nll", "adam", "noise")


def _numba_cuda():
    """True when numba.cuda imports, else the error. Only a missing numba-cuda skips: an error in
    our own kernel files must fail the tests, so they are imported outside this check."""
    try:
        from numba import cuda  # noqa: F401 - imported only to see whether it imports
    except Exception as e:  # noqa: BLE001 - any failure to import means: no numba-cuda here
        return e
    return True


def _require_numba_cuda():
    ok = _numba_cuda()
    if ok is not True:
        pytest.skip(f"numba-cuda is not installed or does not import: {ok}")


# --------------------------------------------------------------------------------------------
# The simulator run
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simulator_run(tmp_path_factory):
    """Run tests/sim_numba_cuda.py under the simulator once; → (returncode, output, {test: failure or None})."""
    _require_numba_cuda()
    xml = tmp_path_factory.mktemp("cudasim") / "junit.xml"
    env = dict(
        os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={xml}",
            "tests/sim_numba_cuda.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    results = {}
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            bad = [c for c in case if c.tag in ("failure", "error")]
            skipped = [c for c in case if c.tag == "skipped"]
            name = case.get("name")
            if bad:
                results[name] = f"{bad[0].get('message', '')}\n{bad[0].text or ''}"
            elif skipped:
                results[name] = f"skipped: {skipped[0].get('message', '')}"
            else:
                results[name] = None
    return proc.returncode, proc.stdout + proc.stderr, results


def test_kernels_and_training_step_on_the_cuda_simulator(simulator_run):
    rc, output, results = simulator_run
    failures = {name: msg for name, msg in results.items() if msg is not None}
    assert results and not failures and rc == 0, (
        "simulator run failed:\n\n"
        + "\n\n".join(f"--- {name}\n{msg[-3000:]}" for name, msg in failures.items())
        + f"\n\n--- output tail (exit status {rc})\n{output[-4000:]}"
    )


def test_simulator_run_covers_every_kernel_and_the_step(simulator_run):
    _, _, results = simulator_run
    expected = {f"test_matmul_version_every_transpose_ragged_shapes[{v}]" for v in (1, 2, 3)}
    expected |= {f"test_fused_kernels_match_reference[{m}]" for m in MODULES if m != "matmul"}
    expected |= {
        "test_training_step_matches_numpy_backend",
        "test_check_catches_a_wrong_kernel",
        "test_checkpoint_round_trip_on_device_arrays",
        "test_engine_noise_is_the_philox_stream_of_a_key_from_the_model_generator",
        "test_ops_object_satisfies_the_contract",
    }
    assert expected <= set(results), f"missing from the simulator run: {sorted(expected - set(results))}"


# --------------------------------------------------------------------------------------------
# PTX
# --------------------------------------------------------------------------------------------


def _ptx_cases():
    if _numba_cuda() is not True:
        return [pytest.param(None, None, None, marks=pytest.mark.skip(reason="numba-cuda missing"), id="none")]
    cases = []
    for name in MODULES:
        mod = importlib.import_module(f"kernels.numba_cuda.{name}")
        cases += [pytest.param(fn, sig, label, id=label.replace(" ", "-")) for label, fn, sig in mod.ptx_cases()]
    return cases


@pytest.fixture(scope="module")
def nvvm():
    _require_numba_cuda()
    from numba import cuda

    def probe(x):
        x[0] = x[0]

    from numba import float32

    try:
        cuda.compile_ptx(probe, (float32[::1],), cc=(9, 0))
    except Exception as e:  # noqa: BLE001 - any failure: this machine cannot compile PTX, skip
        pytest.skip(f"compile_ptx does not work here (NVVM wheel missing?): {type(e).__name__}: {e}")


# a float64 register or instruction: .f64 ops, or cvt to/from f64
F64 = re.compile(r"\.f64\b")


@pytest.mark.parametrize("fn, sig, label", _ptx_cases())
def test_kernel_compiles_to_ptx_without_float64(nvvm, fn, sig, label):
    from numba import cuda

    ptx, _ = cuda.compile_ptx(fn, sig, cc=(9, 0))
    assert ".entry" in ptx or ".func" in ptx
    lines = [ln.strip() for ln in ptx.splitlines() if F64.search(ln)]
    assert not lines, f"{label}: float64 in the PTX of a float32 kernel:\n" + "\n".join(lines[:10])


# --------------------------------------------------------------------------------------------
# Version lists, and no GPU module at import minivae
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODULES)
def test_docstring_lists_exactly_the_versions(name):
    _require_numba_cuda()
    mod = importlib.import_module(f"kernels.numba_cuda.{name}")
    doc = mod.__doc__
    listed = set(re.findall(r"^\s+(\w+_v\d+)\s{2,}", doc, flags=re.M))
    names = {f"matmul_v{v}" if isinstance(v, int) else v for v in mod.VERSIONS}
    assert listed == names, f"{name}.py: docstring lists {sorted(listed)}, VERSIONS has {sorted(names)}"
    for v, desc in mod.VERSIONS.items():
        key = f"matmul_v{v}" if isinstance(v, int) else v
        assert re.search(rf"^\s+{key}\s+{re.escape(desc)}$", doc, flags=re.M), f"{key}: description differs"
    kernels = {label.split()[0] for label, _, _ in mod.ptx_cases()}
    assert kernels == names, f"{name}.py: compiled kernels {sorted(kernels)} != VERSIONS {sorted(names)}"


def test_import_minivae_does_not_load_numba_cuda():
    code = "import sys, minivae, kernels; print(any(m.startswith('numba.cuda') or m == 'cupy' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
