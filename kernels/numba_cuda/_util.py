"""Shared pieces of the kernel files: launch arithmetic, float32 types, checks and timing."""

from __future__ import annotations

import functools
import sys

import numpy as np
from numba import cuda, float32

# Argument types for compile_ptx: every array is float32 and C-contiguous.
F32_1D = float32[::1]
F32_2D = float32[:, ::1]

MAX_BLOCKS = 4096  # grid-stride loops cover the rest: more blocks than this only add launch work


def cdiv(n, d):
    """⌈n / d⌉ for positive integers."""
    return (n + d - 1) // d


def blocks_for(n, threads):
    """Blocks of a 1-D grid-stride launch over n items."""
    return max(1, min(cdiv(n, threads), MAX_BLOCKS))


@functools.cache
def jitted(kernel):
    """``cuda.jit(kernel)``, made once per kernel function, at its first launch: importing a kernel
    file compiles nothing, and ``compile_ptx`` is given the plain Python function."""
    return cuda.jit(kernel)


def assert_close(name, got, ref, atol=1e-5, rtol=1e-4):
    """Raise AssertionError naming the op and the worst element when |got − ref| > atol + rtol·|ref|.

    The float32 default: a kernel sums in a different order than NumPy, so results differ by a few
    units in the last place of the largest partial sums.
    """
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise AssertionError(f"{name}: shape {got.shape} != reference {ref.shape}")
    err = np.abs(got - ref) - (atol + rtol * np.abs(ref))
    if not np.all(err <= 0):  # also catches NaN
        worst = np.nanargmax(np.where(np.isnan(err), np.inf, err))
        idx = tuple(int(i) for i in np.unravel_index(worst, err.shape))
        raise AssertionError(
            f"{name}: {int(np.sum(~(err <= 0)))} of {err.size} elements off; worst at {idx}: "
            f"got {got[idx]!r}, reference {ref[idx]!r} (atol={atol}, rtol={rtol})"
        )


def time_kernel(fn, repeats=20, warmup=3):
    """Median seconds of fn() over ``repeats`` runs after ``warmup`` runs, timed with CUDA events."""
    for _ in range(warmup):
        fn()
    cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cuda.event(), cuda.event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cuda.event_elapsed_time(start, stop) / 1e3)
    return float(np.median(times))


def run_file(name, check, benchmark):
    """What ``python -m kernels.numba_cuda.<name>`` does: check every version against the reference,
    then (without ``--check``) time it, or exit with one line saying why there is no GPU to time it on."""
    check()
    print(f"{name}: every version matches the reference")
    if "--check" not in sys.argv:
        from minivae.backend import gpu_usable

        ok, why = gpu_usable("numba-cuda")
        if not ok:
            sys.exit(f"{name} benchmark skipped: {why}")
        benchmark()
