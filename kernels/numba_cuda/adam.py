"""One Adam step over the flat parameter buffer, in place (see :mod:`minivae.optim`).

    m ← β₁m + (1 − β₁)g     v ← β₂v + (1 − β₂)g²     p ← p − lr · (m / c1) / (√(v / c2) + ε)

Versions
    adam_v1   grid-stride, one thread per parameter, every scalar float32

One thread updates one parameter per grid-stride step. Memory traffic per parameter: reads p, g, m,
v and writes p, m, v: 28 bytes. The scalars are passed as float32 (a Python float would make the
arithmetic float64).

Check against :func:`kernels.reference.adam` (simulator or GPU), then time it on a GPU:
    NUMBA_ENABLE_CUDASIM=1 python -m kernels.numba_cuda.adam --check
    python -m kernels.numba_cuda.adam
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from kernels.numba_cuda._util import F32_1D, assert_close, blocks_for, jitted, run_file, time_kernel

VERSIONS = {"adam_v1": "grid-stride, one thread per parameter, every scalar float32"}
THREADS = 256
ONE = np.float32(1)


def adam_v1(p, g, m, v, lr, b1, b2, eps, c1, c2):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        gi = g[i]
        mi = b1 * m[i] + (ONE - b1) * gi
        vi = b2 * v[i] + (ONE - b2) * (gi * gi)
        m[i] = mi
        v[i] = vi
        p[i] -= lr * (mi / c1) / (math.sqrt(vi / c2) + eps)


def adam(p, g, m, v, lr, b1, b2, eps, c1, c2, threads=THREADS):
    f = np.float32
    jitted(adam_v1)[blocks_for(p.size, threads), threads](p, g, m, v, f(lr), f(b1), f(b2), f(eps), f(c1), f(c2))


def ptx_cases():
    return [("adam_v1", adam_v1, (F32_1D,) * 4 + (float32,) * 6)]


def check(P=75, steps=3, threads=16, seed=0):
    """A few steps (so the moments are non-zero) against the reference, 75 parameters on 16 threads."""
    from kernels.reference import adam as adam_ref

    rng = np.random.default_rng(seed)
    p = rng.standard_normal(P).astype(np.float32)
    m, v = np.zeros(P, np.float32), np.zeros(P, np.float32)
    dp, dm, dv = cuda.to_device(p), cuda.to_device(m), cuda.to_device(v)
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        g = rng.standard_normal(P).astype(np.float32)
        c1, c2 = 1 - b1**t, 1 - b2**t
        adam_ref(p, g, m, v, lr, b1, b2, eps, c1, c2)
        adam(dp, cuda.to_device(g), dm, dv, lr, b1, b2, eps, c1, c2, threads=threads)
    assert_close("adam_v1 p", dp.copy_to_host(), p)
    assert_close("adam_v1 m", dm.copy_to_host(), m)
    assert_close("adam_v1 v", dv.copy_to_host(), v)


def benchmark(P=2_400_000):
    bufs = [cuda.to_device(np.full(P, 0.5, np.float32)) for _ in range(4)]
    s = time_kernel(lambda: adam(*bufs, 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001))
    print(f"adam_v1 P={P}: {s * 1e6:.1f} µs ({28 * P / s / 1e9:.1f} GB/s)")


if __name__ == "__main__":
    run_file("adam", check, benchmark)
