"""Backends: which implementation of the ops runs a training step.

=============  ================================================================================
``numpy``      the readable reference in :mod:`minivae.vae` (always available; any dtype)
``cpu-fused``  NumPy BLAS for the matrix products + Numba-compiled fused kernels
               (:mod:`kernels.cpu_fused`), flat buffers (:mod:`kernels.engine`); float32
``cupy``       cuBLAS + CuPy fused kernels (:mod:`kernels.cupy`); needs a usable GPU
``numba-cuda`` our own tiled matmul + Numba-CUDA fused kernels (:mod:`kernels.numba_cuda`)
``auto``       ``cupy`` when a GPU is usable, else ``cpu-fused`` (else ``numpy``; float64 → ``numpy``)
=============  ================================================================================

Nothing here imports Numba, CuPy or Numba-CUDA until a backend that needs it is asked for.
"""

from __future__ import annotations

import functools
import importlib

BACKENDS = ("numpy", "cpu-fused", "cupy", "numba-cuda", "auto")

_OPS = {
    "cpu-fused": ("kernels.cpu_fused", "CpuFusedOps"),
    "cupy": ("kernels.cupy.ops", "CupyOps"),
    "numba-cuda": ("kernels.numba_cuda.ops", "NumbaCudaOps"),
}


@functools.lru_cache(maxsize=None)
def gpu_usable():
    """(True, "") when CuPy imports, sees a device and runs a tiny kernel and matmul correctly;
    else (False, why). Cached: the check runs once per process."""
    try:
        import cupy
    except Exception as e:  # not installed, or a broken CUDA install
        return False, f"cupy not importable ({type(e).__name__})"
    try:
        if not cupy.is_available():
            return False, "cupy sees no usable CUDA device"
        a = cupy.arange(6, dtype=cupy.float32).reshape(2, 3)
        ok = bool(cupy.allclose(a @ a.T, cupy.asarray([[5.0, 14.0], [14.0, 50.0]])))
        ok = ok and float((a * 2).sum()) == 30.0
        return (True, "") if ok else (False, "cupy smoke test gave wrong results")
    except Exception as e:
        return False, f"cupy smoke test failed ({type(e).__name__}: {e})"


@functools.lru_cache(maxsize=None)
def numba_usable():
    try:
        importlib.import_module("kernels.cpu_fused")
        return True
    except Exception:
        return False


def resolve(name, dtype=None):
    """The concrete backend for ``name``; ``auto`` picks the fastest usable one.

    ValueError (one line) for an unknown name.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    if dtype is not None and str(dtype) != "float32":
        return "numpy"  # the fast backends run float32 only
    if gpu_usable()[0]:
        return "cupy"
    return "cpu-fused" if numba_usable() else "numpy"


def make_ops(name):
    """A new ops object (see :mod:`kernels.reference`) of backend ``name``."""
    module, cls = _OPS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"backend {name!r} is not available here: {e}") from None
    return getattr(mod, cls)()


def create_engine(vae, name):
    """Attach a fast backend's engine to ``vae`` (rebinding ``vae.params`` to flat buffers)."""
    from kernels.engine import Engine

    if name == "cupy" and not gpu_usable()[0]:
        raise RuntimeError(f"backend 'cupy' needs a usable GPU: {gpu_usable()[1]}")
    return Engine(vae, make_ops(name))
