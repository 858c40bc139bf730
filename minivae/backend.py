"""Backends: which implementation of the ops runs a training step.

- ``numpy``: the readable reference in :mod:`minivae.vae` (always available, no engine).
- ``cpu-fused``: NumPy's BLAS for the matrix products and Numba-compiled fused kernels for the
  rest (:mod:`kernels.cpu_fused`), float32 only. A product may run on our own GEMM instead
  (:mod:`kernels.gemm_cpu`) where ``python -m kernels.gemm_choice`` timed it faster on this
  machine and cached that choice (a JSON table; ``MINIVAE_GEMM_CHOICE`` points at another);
  without a table every product is the BLAS's.
- ``cupy``: cuBLAS and CuPy fused kernels (:mod:`kernels.cupy`), needs a usable CUDA GPU.
- ``numba-cuda``: Numba-CUDA kernels (:mod:`kernels.numba_cuda`), needs a usable CUDA GPU.
- ``auto``: ``cupy`` when a GPU is usable, else ``cpu-fused`` (``numpy`` for float64 models).

Every backend but ``numpy`` runs the same :class:`kernels.engine.Engine` on its own ops object:
``minivae.VAE(..., backend=name)`` gives the fast sibling :class:`kernels.fast.FastVAE` (same API).
Nothing here imports Numba, CuPy or Numba-CUDA until a backend that needs it is asked for.
"""

from __future__ import annotations

import functools
import importlib
import inspect

import numpy as np

BACKENDS = ("numpy", "cpu-fused", "cupy", "numba-cuda", "auto")

# Where each fast backend's ops class lives ("module:Class"), imported only when asked for.
_OPS = {
    "cpu-fused": "kernels.cpu_fused:CpuFusedOps",
    "cupy": "kernels.cupy.ops:CupyOps",
    "numba-cuda": "kernels.numba_cuda.ops:NumbaCudaOps",
}
_DTYPES = {name: (np.float32,) for name in _OPS}  # the fast backends run float32 only


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")


GPU_LIBRARIES = ("cupy", "numba-cuda")


@functools.cache
def gpu_usable(library, simulator=False):
    """Whether ``library`` (``"cupy"`` or ``"numba-cuda"``) can run kernels on a CUDA GPU here:
    (True, "") or (False, why in words), asked once per library. The one check of the project:
    the backends, the benchmarks and the GPU tests all ask it.

    CuPy must import, see a device, and run a tiny element-wise kernel and a matrix product
    correctly. Numba-CUDA must import and find a device it can open. Numba's CUDA simulator
    (``NUMBA_ENABLE_CUDASIM=1``) runs the kernels correctly but slowly: it counts as a GPU only
    with ``simulator=True`` (the ``numba-cuda`` backend, which the tests run on it), never for a
    timing."""
    if library not in GPU_LIBRARIES:
        raise ValueError(f"unknown GPU library {library!r}: choose from {', '.join(GPU_LIBRARIES)}")
    return _cupy_usable() if library == "cupy" else _numba_cuda_usable(simulator)


def _cupy_usable():
    try:
        import cupy

        if not cupy.is_available():
            return False, "CuPy cannot use a GPU (it sees no CUDA device or driver)"
        a = cupy.arange(6, dtype=cupy.float32).reshape(2, 3)
        square = cupy.ElementwiseKernel("float32 x", "float32 y", "y = x * x", "minivae_smoke")
        if float(square(a).sum()) == 55.0 and float((a @ a.T)[1, 1]) == 50.0:
            return True, ""
        return False, "CuPy cannot use a GPU (a test kernel or product gave a wrong result)"
    except Exception as e:  # noqa: BLE001 - no CuPy, no driver, no device, a broken toolkit: all mean "not usable"
        return False, f"CuPy cannot use a GPU ({type(e).__name__}: {e})"


def _numba_cuda_usable(simulator):
    try:
        from numba import config, cuda
    except Exception as e:  # noqa: BLE001 - numba-cuda missing or broken
        return False, f"Numba-CUDA does not import ({type(e).__name__}: {e})"
    if config.ENABLE_CUDASIM and not simulator:
        return False, "the CUDA simulator is enabled (NUMBA_ENABLE_CUDASIM=1): timings would be meaningless"
    try:
        if not cuda.is_available():
            return False, "no CUDA driver or device found"
        cuda.get_current_device()
    except Exception as e:  # noqa: BLE001 - any failure means: no usable GPU
        return False, f"no usable CUDA device ({type(e).__name__}: {e})"
    return True, ""


def resolve(name, dtype=None):
    """The concrete backend a name stands for: ``auto`` → ``cupy`` or ``cpu-fused`` (the fast
    backends run float32; for another ``dtype`` ``auto`` means ``numpy``)."""
    _check_name(name)
    if name == "auto":
        if dtype is not None and np.dtype(dtype) != np.float32:
            return "numpy"
        return "cupy" if gpu_usable("cupy")[0] else "cpu-fused"
    return name


def _ops_class(name):
    module, cls = _OPS[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise RuntimeError(f"backend {name!r} is not available on this machine: {e}") from e


def available_backends():
    """The backends that can run here, in the order of :data:`BACKENDS` (``auto`` excluded)."""
    names = ["numpy"]
    try:
        _ops_class("cpu-fused")
        names.append("cpu-fused")
    except RuntimeError:
        pass
    for name in GPU_LIBRARIES:
        if gpu_usable(name, simulator=True)[0]:
            try:
                _ops_class(name)
                names.append(name)
            except RuntimeError:
                pass
    return names


def create_ops(name, dtype):
    """The ops object of fast backend ``name`` for parameters of ``dtype``, after checking that the
    backend runs that dtype and can run here."""
    name = resolve(name)
    if name == "numpy":
        raise ValueError("the numpy backend runs the reference code in minivae.vae: it has no ops object")
    dtype = np.dtype(dtype)
    allowed = _DTYPES.get(name)
    if allowed is not None and dtype not in allowed:
        raise ValueError(
            f"backend {name!r} supports only {', '.join(np.dtype(d).name for d in allowed)}, "
            f"not {dtype.name}: use backend='numpy' for {dtype.name}"
        )
    if name == "cupy" and not gpu_usable("cupy")[0]:
        raise RuntimeError("backend 'cupy' needs CuPy and a usable CUDA GPU; none was found")
    if name == "numba-cuda" and not gpu_usable("numba-cuda", simulator=True)[0]:
        raise RuntimeError("backend 'numba-cuda' needs Numba-CUDA and a usable CUDA GPU; none was found")
    return _ops_class(name)()


# The fast sibling of each reference model: same public API, the step run by kernels.engine.Engine.
_FAST_MODELS = {"minivae.vae.VAE": "kernels.fast:FastVAE", "minivae.ae.AE": "kernels.fast:FastAE"}


def model_class(cls, args, kwargs):
    """The class a call ``cls(*args, **kwargs)`` builds: ``cls`` itself on the numpy backend, its
    fast sibling (:mod:`kernels.fast`) when the backend it names resolves to a fast one. Arguments
    that do not bind or resolve give ``cls``, whose ``__init__`` then says what is wrong."""
    fast = _FAST_MODELS.get(f"{cls.__module__}.{cls.__qualname__}")
    if fast is None:
        return cls
    try:
        bound = inspect.signature(cls.__init__).bind(None, *args, **kwargs)
        bound.apply_defaults()
        dtype = np.dtype(bound.arguments["dtype"])
        name = resolve(bound.arguments["backend"], dtype)
    except (TypeError, ValueError):
        return cls
    if name == "numpy":
        return cls
    module, fast_cls = fast.split(":")
    return getattr(importlib.import_module(module), fast_cls)
