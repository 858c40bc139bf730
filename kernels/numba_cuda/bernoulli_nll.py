"""The reconstruction loss from logits and its gradient, in one pass over the logits.

    loss_b = Σ_pixels softplus(a) − x·a                      (B,)
    da = scale · (sigmoid(a) − x)                            (B, D)
with softplus(a) = max(a, 0) + log1p(e^(−|a|)) and sigmoid from the same e^(−|a|): no overflow.

Versions
    bernoulli_nll_v1   one block per example: threads stride over pixels, tree sum in shared memory

A thread computes da for every blockDim-th pixel of one example and its share of the loss; one
exp and one log1p per pixel. Memory traffic per pixel: reads a, x, writes da: 12 bytes
(+4 per example for the loss).

Check against :func:`kernels.reference.bernoulli_nll` (simulator or GPU), then time it on a GPU:
    NUMBA_ENABLE_CUDASIM=1 python -m kernels.numba_cuda.bernoulli_nll --check
    python -m kernels.numba_cuda.bernoulli_nll
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from kernels.numba_cuda._util import F32_1D, F32_2D, assert_close, jitted, run_file, time_kernel

VERSIONS = {"bernoulli_nll_v1": "one block per example: threads stride over pixels, tree sum in shared memory"}
THREADS = 256  # a power of two, at most MAX_THREADS
MAX_THREADS = 1024
ONE, ZERO = np.float32(1), np.float32(0)


def bernoulli_nll_v1(a, x, scale, loss, da):
    B, D = a.shape
    buf = cuda.shared.array(MAX_THREADS, float32)
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    for b in range(cuda.blockIdx.x, B, cuda.gridDim.x):
        part = ZERO
        for j in range(t, D, nt):
            aj, xj = a[b, j], x[b, j]
            e = math.exp(-abs(aj))  # in (0, 1]
            part += max(aj, ZERO) + math.log1p(e) - xj * aj  # softplus(a) − x·a
            p = ONE / (ONE + e) if aj >= ZERO else e / (ONE + e)  # sigmoid(a)
            da[b, j] = scale * (p - xj)
        buf[t] = part
        cuda.syncthreads()
        step = nt // 2
        while step > 0:
            if t < step:
                buf[t] += buf[t + step]
            cuda.syncthreads()
            step //= 2
        if t == 0:
            loss[b] = buf[0]
        cuda.syncthreads()


def bernoulli_nll(a, x, scale, loss, da, threads=THREADS):
    assert threads <= MAX_THREADS and threads & (threads - 1) == 0, "threads: a power of two ≤ 1024"
    jitted(bernoulli_nll_v1)[max(1, min(a.shape[0], 65535)), threads](a, x, np.float32(scale), loss, da)


def ptx_cases():
    return [("bernoulli_nll_v1", bernoulli_nll_v1, (F32_2D, F32_2D, float32, F32_1D, F32_2D))]


def check(B=5, D=45, threads=16, seed=0):
    """Logits up to ±60 (softplus and sigmoid far into their tails), x in [0, 1] with exact 0s and 1s."""
    from kernels.reference import bernoulli_nll as nll_ref

    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((B, D)) * 20).clip(-60, 60).astype(np.float32)
    x = rng.uniform(size=(B, D)).astype(np.float32)
    x[:, ::3] = np.round(x[:, ::3])
    scale = 1.0 / B
    loss, da = cuda.device_array(B, np.float32), cuda.device_array((B, D), np.float32)
    bernoulli_nll(cuda.to_device(a), cuda.to_device(x), scale, loss, da, threads=threads)
    loss_ref, da_ref = nll_ref(a, x, scale)
    assert_close("bernoulli_nll_v1 loss", loss.copy_to_host(), loss_ref)
    assert_close("bernoulli_nll_v1 da", da.copy_to_host(), da_ref)


def benchmark(B=128, D=784):
    rng = np.random.default_rng(0)
    a = cuda.to_device(rng.standard_normal((B, D)).astype(np.float32))
    x = cuda.to_device(rng.uniform(size=(B, D)).astype(np.float32))
    loss, da = cuda.device_array(B, np.float32), cuda.device_array((B, D), np.float32)
    s = time_kernel(lambda: bernoulli_nll(a, x, 1.0 / B, loss, da))
    print(f"bernoulli_nll_v1 {B}×{D}: {s * 1e6:.1f} µs ({12 * B * D / s / 1e9:.1f} GB/s)")


if __name__ == "__main__":
    run_file("bernoulli_nll", check, benchmark)
