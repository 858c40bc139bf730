"""The latent layer: z = μ + σ⊙ε with the per-example KL, and the gradient into h = [μ | log σ²].

    z = μ + exp(½ log σ²) ⊙ ε                                         (B, Z)
    kl_b = Σ_latents ½ (μ² + σ² − log σ² − 1)                          (B,)
    dh[:, :Z] = dz + c·μ     dh[:, Z:] = dz ⊙ ½σ⊙ε + c·½(σ² − 1)       (B, 2Z),  c = β / B

Versions
    reparam_kl_v1            one block per example: threads stride over latents, tree sum in shared memory
    reparam_kl_backward_v1   grid-stride, one thread per latent: both halves of dh from one read of h

reparam_kl: a thread computes z for every blockDim-th latent of one example and its share of the KL;
memory traffic per latent: reads μ, log σ², ε, writes z: 16 bytes (+4 per example for kl).
reparam_kl_backward: a thread computes dh[b, j] and dh[b, Z + j]; per latent it reads dz, μ, log σ², ε
and writes two gradients: 24 bytes.

Check every version against :mod:`kernels.reference` (simulator or GPU), then time it on a GPU:
    NUMBA_ENABLE_CUDASIM=1 python -m kernels.numba_cuda.reparam_kl --check
    python -m kernels.numba_cuda.reparam_kl
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from kernels.numba_cuda._util import F32_1D, F32_2D, assert_close, blocks_for, jitted, run_file, time_kernel

VERSIONS = {
    "reparam_kl_v1": "one block per example: threads stride over latents, tree sum in shared memory",
    "reparam_kl_backward_v1": "grid-stride, one thread per latent: both halves of dh from one read of h",
}
THREADS = 256  # a power of two, at most MAX_THREADS
MAX_THREADS = 1024  # size of the shared reduction buffer
HALF, ONE, ZERO = np.float32(0.5), np.float32(1), np.float32(0)


def reparam_kl_v1(h, eps, z, kl):
    B, Z = z.shape
    buf = cuda.shared.array(MAX_THREADS, float32)
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    for b in range(cuda.blockIdx.x, B, cuda.gridDim.x):  # the whole block walks the same rows
        part = ZERO
        for j in range(t, Z, nt):
            mu, lv = h[b, j], h[b, Z + j]
            s2 = math.exp(lv)  # σ²
            z[b, j] = mu + math.exp(HALF * lv) * eps[b, j]
            part += mu * mu + s2 - lv - ONE
        buf[t] = part
        cuda.syncthreads()
        step = nt // 2
        while step > 0:
            if t < step:
                buf[t] += buf[t + step]
            cuda.syncthreads()
            step //= 2
        if t == 0:
            kl[b] = HALF * buf[0]
        cuda.syncthreads()  # buf[0] is read before the next row overwrites buf


def reparam_kl_backward_v1(dz, h, eps, c, dh):
    B, Z = dz.shape
    for e in range(cuda.grid(1), B * Z, cuda.gridsize(1)):
        b, j = e // Z, e % Z
        g, mu, lv = dz[b, j], h[b, j], h[b, Z + j]
        dh[b, j] = g + c * mu  # ∂z/∂μ = 1, ∂KL/∂μ = μ
        dh[b, Z + j] = g * HALF * math.exp(HALF * lv) * eps[b, j] + c * HALF * (math.exp(lv) - ONE)


def reparam_kl(h, eps, z, kl, threads=THREADS):
    assert threads <= MAX_THREADS and threads & (threads - 1) == 0, "threads: a power of two ≤ 1024"
    jitted(reparam_kl_v1)[max(1, min(z.shape[0], 65535)), threads](h, eps, z, kl)


def reparam_kl_backward(dz, h, eps, c, dh, threads=THREADS):
    jitted(reparam_kl_backward_v1)[blocks_for(dz.size, threads), threads](dz, h, eps, np.float32(c), dh)


def ptx_cases():
    return [
        ("reparam_kl_v1", reparam_kl_v1, (F32_2D, F32_2D, F32_2D, F32_1D)),
        ("reparam_kl_backward_v1", reparam_kl_backward_v1, (F32_2D, F32_2D, F32_2D, float32, F32_2D)),
    ]


def check(B=5, Z=37, threads=16, seed=0):
    """Z = 37 latents on 16 threads: each thread strides, and the tree sum runs four levels."""
    from kernels import reference as ref

    rng = np.random.default_rng(seed)
    h = rng.standard_normal((B, 2 * Z)).astype(np.float32)
    eps = rng.standard_normal((B, Z)).astype(np.float32)
    dz = rng.standard_normal((B, Z)).astype(np.float32)
    c = 0.7 / B
    z, kl = cuda.device_array((B, Z), np.float32), cuda.device_array(B, np.float32)
    d_h, d_eps = cuda.to_device(h), cuda.to_device(eps)
    reparam_kl(d_h, d_eps, z, kl, threads=threads)
    z_ref, kl_ref = ref.reparam_kl(h, eps)
    assert_close("reparam_kl_v1 z", z.copy_to_host(), z_ref)
    assert_close("reparam_kl_v1 kl", kl.copy_to_host(), kl_ref)
    dh = cuda.device_array((B, 2 * Z), np.float32)
    reparam_kl_backward(cuda.to_device(dz), d_h, d_eps, c, dh, threads=threads)
    assert_close("reparam_kl_backward_v1", dh.copy_to_host(), ref.reparam_kl_backward(dz, h, eps, c))


def benchmark(B=128, Z=1000):
    rng = np.random.default_rng(0)
    h = cuda.to_device(rng.standard_normal((B, 2 * Z)).astype(np.float32))
    eps = cuda.to_device(rng.standard_normal((B, Z)).astype(np.float32))
    z, kl, dh = (
        cuda.device_array((B, Z), np.float32),
        cuda.device_array(B, np.float32),
        cuda.device_array((B, 2 * Z), np.float32),
    )
    s = time_kernel(lambda: reparam_kl(h, eps, z, kl))
    s2 = time_kernel(lambda: reparam_kl_backward(z, h, eps, 0.01, dh))
    print(
        f"reparam_kl_v1 {s * 1e6:.1f} µs ({16 * B * Z / s / 1e9:.1f} GB/s)   "
        f"reparam_kl_backward_v1 {s2 * 1e6:.1f} µs ({24 * B * Z / s2 / 1e9:.1f} GB/s)"
    )


if __name__ == "__main__":
    run_file("reparam_kl", check, benchmark)
