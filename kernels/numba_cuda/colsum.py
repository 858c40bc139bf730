"""out = Σ_batch dy: the bias gradient of a dense layer.     dy: (B, N) → out: (N,)

Versions
    colsum_v1   one thread per column, summing down the batch; threads of a warp read adjacent columns

One thread computes one column sum per grid-stride step. Memory traffic per output element: B loads
of dy, coalesced across the warp, and one store; no shared memory (B ≤ a few hundred in a step).

Check against :func:`kernels.reference.colsum` (simulator or GPU), then time it on a GPU:
    NUMBA_ENABLE_CUDASIM=1 python -m kernels.numba_cuda.colsum --check
    python -m kernels.numba_cuda.colsum
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float32

from kernels.numba_cuda._util import F32_1D, F32_2D, assert_close, blocks_for, jitted, run_file, time_kernel

VERSIONS = {"colsum_v1": "one thread per column, summing down the batch; threads of a warp read adjacent columns"}
THREADS = 256


def colsum_v1(dy, out):
    B, N = dy.shape
    for j in range(cuda.grid(1), N, cuda.gridsize(1)):
        acc = float32(0)
        for i in range(B):
            acc += dy[i, j]
        out[j] = acc


def colsum(dy, out, threads=THREADS):
    jitted(colsum_v1)[blocks_for(out.size, threads), threads](dy, out)


def ptx_cases():
    return [("colsum_v1", colsum_v1, (F32_2D, F32_1D))]


def check(shape=(9, 37), threads=16, seed=0):
    from kernels.reference import colsum as colsum_ref

    dy = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    out = cuda.device_array(shape[1], np.float32)
    colsum(cuda.to_device(dy), out, threads=threads)  # 37 columns on 16 threads: grid-stride
    assert_close("colsum_v1", out.copy_to_host(), colsum_ref(dy))


def benchmark(B=128, N=2000):
    dy = cuda.to_device(np.ones((B, N), np.float32))
    out = cuda.device_array(N, np.float32)
    s = time_kernel(lambda: colsum(dy, out))
    print(f"colsum_v1 {B}×{N}: {s * 1e6:.1f} µs ({4 * B * N / s / 1e9:.1f} GB/s)")


if __name__ == "__main__":
    run_file("colsum", check, benchmark)
