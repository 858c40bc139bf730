"""The CPU peers of our kernels in the benchmarks, on the same number of threads, and the peak.

Used by ``benchmarks/kernels.py --cpu`` (our GEMM versions beside OpenBLAS and XLA) and
``benchmarks/throughput.py`` (the jax-jit runner, and the fraction of the peak).

Threads. Every library gets the run's ``--threads``: OpenBLAS through threadpoolctl, Numba through
``numba.set_num_threads``, PyTorch through ``torch.set_num_threads``. XLA reads its settings once,
when ``jax`` is first imported, so :func:`set_xla_threads` must run before that: with one thread it
sets ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` (appended to
any XLA_FLAGS already set). That alone does not hold XLA to one thread: with jax 0.10 a 2048³
product under these flags still ran on three threads (their CPU times read from /proc), because
XLA sizes its thread pool by the cores the process may run on. So when ``--threads`` is below the
core count, :func:`limit_cores` also pins the whole process to that many cores (its CPU affinity,
inherited by every thread started later): pinned to one core, the same product ran on one thread.
Every runner then runs on the same cores.

The peak: the best GFLOP/s that any library available here (OpenBLAS through NumPy, XLA, PyTorch,
our own threaded version, v4 or v6 with AVX-512) reaches on one n × n · n × n float32 product
(n = 2048: 17.2 GFLOP, seconds of work at ~100 GFLOP/s), measured once per run with the run's
threads. On one thread it is the measured peak of a core, what a step's GFLOP/s are compared with.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def limit_cores(threads):
    """Pin every thread of this process to ``threads`` of the cores it may use now, when that is
    fewer (threads started later inherit it). → the sorted list of those cores, or None when the
    affinity was left as it is (enough cores, or no affinity on this platform)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if threads >= len(cores):
        return None
    keep = set(cores[:threads])
    for tid in os.listdir("/proc/self/task"):  # the threads that exist already (OpenBLAS's pool)
        try:
            os.sched_setaffinity(int(tid), keep)
        except OSError:  # a thread that ended meanwhile
            pass
    return sorted(keep)


def set_xla_threads(threads):
    """Set XLA_FLAGS for ``threads`` before jax is imported (see the module docstring; call
    :func:`limit_cores` too). → a note when XLA's threads cannot be set, else None."""
    if "jax" in sys.modules:
        return "jax was imported before its threads could be set: XLA runs with its defaults"
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if XLA_ONE_THREAD not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {XLA_ONE_THREAD}".strip()
    return None


def import_jax():
    """(jax module, None), or (None, the reason it cannot be used)."""
    try:
        import jax
        import jax.numpy as jnp

        jnp.ones(2, jnp.float32).block_until_ready()
        return jax, None
    except Exception as e:  # noqa: BLE001 - not installed, or installed but broken
        return None, f"JAX not importable ({type(e).__name__}: {e})"


def import_torch(threads):
    """(torch module with ``threads`` threads, None), or (None, the reason it cannot be used)."""
    try:
        import torch

        torch.set_num_threads(threads)
        return torch, None
    except Exception as e:  # noqa: BLE001 - not installed, or installed but broken
        return None, f"PyTorch not importable ({type(e).__name__}: {e})"


def jax_matmul(jax, ta, tb):
    """op(a) · op(b) compiled by XLA (the transposes are part of the compiled product)."""
    jnp = jax.numpy
    return jax.jit(lambda a, b: jnp.matmul(a.T if ta else a, b.T if tb else b))


def median_seconds(fn, repeats, warmup=2, max_s=None, times=None):
    """Median wall time of one call of ``fn`` (which must wait for its own result) over ``repeats``
    calls after ``warmup`` calls; with ``max_s``, stops early once that many seconds are spent (at
    least 3 calls), so that the slow plain-loop versions do not take minutes. ``times``: a list
    that receives every call's time (for the spread of the repeats)."""
    for _ in range(warmup):
        fn()
    times, start = [] if times is None else times, time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_s is not None and len(times) >= 3 and time.perf_counter() - start > max_s:
            break
    return float(np.median(times))


def peak_gemm(threads, n=2048, repeats=5, jax=None, torch=None):
    """GFLOP/s of an n³ float32 product per library available here (``jax`` and ``torch`` modules
    or None), each the median of ``repeats``. → {library: GFLOP/s}; its max is the peak."""
    import numba

    from kernels import gemm_cpu

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)
    flops = 2 * n**3
    runs = {"OpenBLAS": lambda: np.matmul(a, b, out=out)}
    if jax is not None:
        f = jax_matmul(jax, False, False)
        ja, jb = jax.numpy.asarray(a), jax.numpy.asarray(b)
        runs["XLA"] = lambda: f(ja, jb).block_until_ready()
    if torch is not None:
        ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
        runs["torch"] = lambda: torch.mm(ta, tb, out=tout)
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    version = gemm_cpu.best_version(max(threads, 2))  # the threaded version: v4, or v6 with AVX-512
    runs[f"ours v{version}"] = lambda: gemm_cpu.matmul(a, b, out, version=version)
    return {name: flops / median_seconds(fn, repeats, warmup=1) / 1e9 for name, fn in runs.items()}
