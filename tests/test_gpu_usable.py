"""minivae.backend.gpu_usable: the one answer to "can CuPy or Numba-CUDA use a GPU here", with
its reason, which the backends, the benchmarks and the GPU tests all ask."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from minivae.backend import available_backends, gpu_usable

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("library", ["cupy", "numba-cuda"])
def test_an_answer_with_a_reason(library):
    ok, why = gpu_usable(library)
    assert isinstance(ok, bool) and isinstance(why, str)
    assert (why == "") == ok  # a reason exactly when the GPU is not usable
    assert (library in available_backends()) == gpu_usable(library, simulator=True)[0]


def test_an_unknown_library_is_refused():
    with pytest.raises(ValueError, match="unknown GPU library"):
        gpu_usable("opencl")


def test_the_simulator_runs_the_backend_but_is_no_gpu_to_time():
    """Under NUMBA_ENABLE_CUDASIM=1 (set before Numba is imported: a child process) the numba-cuda
    backend is usable (the tests run it there) but a benchmark is told why not to time it."""
    pytest.importorskip("numba.cuda", exc_type=ImportError)
    code = (
        "from minivae.backend import available_backends, gpu_usable\n"
        "ok, why = gpu_usable('numba-cuda')\n"
        "assert not ok and 'simulator' in why, why\n"
        "assert gpu_usable('numba-cuda', simulator=True) == (True, '')\n"
        "assert 'numba-cuda' in available_backends()\n"
    )
    env = dict(
        os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=120)
