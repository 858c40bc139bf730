"""The noise ε of the reparameterization, made on the device: Philox4x32-10 and Box–Muller.

The stream of :func:`kernels.reference.standard_normal_philox` for a key (k₀, k₁): block i is the
Philox4x32-10 output for the counter (i, 0, 0, 0), its words (w₀, w₁) and (w₂, w₃) become two
pairs of normals by Box–Muller, and number ℓ of block i is element ℓ·n₄ + i of the output (n₄ =
⌈n / 4⌉: four contiguous quarters). The cpu-fused backend makes the same stream (to float32
rounding), so only the key — two words from the model's generator — crosses from the host.

Versions
    standard_normal_v1   grid-stride, one thread per Philox block: ten rounds, then four normals

standard_normal: a thread computes block i (ten rounds of two 32 × 32 → 64-bit products, all in
registers), one log, one square root and a sine/cosine polynomial per pair, and writes four floats
to four quarters, so each quarter's stores are coalesced; memory traffic per number: 4 bytes
written, nothing read.

The rounds are written out in the kernel rather than called as a device function: a kernel that
calls a device function needs the CUDA driver to compile, and the tests compile every kernel to
PTX without one.

Check against :mod:`kernels.reference` (simulator or GPU), then time it on a GPU:
    NUMBA_ENABLE_CUDASIM=1 python -m kernels.numba_cuda.noise --check
    python -m kernels.numba_cuda.noise
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32, uint32, uint64

from kernels import reference
from kernels.numba_cuda._util import F32_1D, assert_close, blocks_for, jitted, run_file, time_kernel

VERSIONS = {
    "standard_normal_v1": "grid-stride, one thread per Philox block: ten rounds, then four normals",
}
THREADS = 256

M0, M1 = uint64(reference.PHILOX_M[0]), uint64(reference.PHILOX_M[1])
W0, W1 = uint64(reference.PHILOX_W[0]), uint64(reference.PHILOX_W[1])
LOW = uint64(0xFFFFFFFF)
S32, S9, S8 = uint64(32), uint32(9), uint32(8)  # shift amounts: high word, u's and θ's bits
HALF, MINUS_TWO = np.float32(0.5), np.float32(-2.0)  # r = √(−2 ln u), u = (⌊w / 2⁹⌋ + ½)·2⁻²³
U_STEP = np.float32(2.0**-23)  # u = (⌊w / 2⁹⌋ + ½)·2⁻²³
ANGLE_STEP = np.float32(2 * math.pi * 2.0**-24)  # θ = 2π·⌊w / 2⁸⌋·2⁻²⁴
S4, S3, S2, S1, S0 = (np.float32((-1) ** k / math.factorial(2 * k + 1)) for k in (4, 3, 2, 1, 0))
C4, C3, C2, C1, C0 = (np.float32((-1) ** k / math.factorial(2 * k)) for k in (4, 3, 2, 1, 0))


def standard_normal_v1(k0, k1, out):
    n = out.shape[0]
    n4 = (n + 3) // 4
    for i in range(cuda.grid(1), n4, cuda.gridsize(1)):
        c0, c1, c2, c3 = uint64(i), uint64(0), uint64(0), uint64(0)  # each word < 2³²
        a, b = uint64(k0), uint64(k1)
        for _ in range(10):
            p0, p1 = c0 * M0, c2 * M1  # exact 64-bit products of 32-bit words
            c0, c1, c2, c3 = ((p1 >> S32) ^ c1 ^ a, p1 & LOW, (p0 >> S32) ^ c3 ^ b, p0 & LOW)
            a, b = (a + W0) & LOW, (b + W1) & LOW
        # (c0, c1) → numbers 0 and 1 of the block, (c2, c3) → numbers 2 and 3
        for pair in range(2):
            wr, wa = (c0, c1) if pair == 0 else (c2, c3)
            r = math.sqrt(MINUS_TWO * math.log((float32(int32(wr >> S9)) + HALF) * U_STEP))
            # θ = q·π/2 + φ, φ ∈ [−π/4, π/4], as in kernels.cpu_fused.box_muller32 (libdevice's
            # sinf and cosf would bring a float64 path for large arguments)
            k = int32(wa >> S8)
            q = (k + int32(1 << 21)) >> int32(22)
            phi = float32(k - (q << int32(22))) * ANGLE_STEP
            f2 = phi * phi
            sn = ((((S4 * f2 + S3) * f2 + S2) * f2 + S1) * f2 + S0) * phi
            cs = (((C4 * f2 + C3) * f2 + C2) * f2 + C1) * f2 + C0
            if q & 1:
                sn, cs = cs, sn
            if ((q + 1) >> 1) & 1:  # q = 1, 2: cos θ < 0 side
                cs = -cs
            if (q >> 1) & 1:  # q = 2, 3
                sn = -sn
            e = 2 * pair * n4 + i  # number 2·pair of the block, then 2·pair + 1
            if e < n:
                out[e] = r * cs
            if e + n4 < n:
                out[e + n4] = r * sn


def standard_normal(key, out, threads=THREADS):
    """out (C-contiguous, any shape, float32) ← the standard-normal stream for ``key`` (k₀, k₁)."""
    flat = out.reshape(out.size)
    n4 = (out.size + 3) // 4
    jitted(standard_normal_v1)[blocks_for(n4, threads), threads](np.uint32(key[0]), np.uint32(key[1]), flat)


def ptx_cases():
    return [("standard_normal_v1", standard_normal_v1, (uint32, uint32, F32_1D))]


def check(sizes=(1, 3, 13, 64), threads=8, key=(0x243F6A88, 0x85A308D3)):
    """Ragged sizes on 8 threads (a grid-stride loop when n₄ > 8): the last quarter short by 3, 1, 0."""
    for n in sizes:
        out = cuda.to_device(np.full(n, np.nan, np.float32))
        standard_normal(key, out, threads=threads)
        # libdevice's logf (within 2 ulp) and our degree-9/8 sine and cosine polynomials on
        # |φ| ≤ π/4 (error < 1e-7): together within ~1e-6 of the oracle's float64 sin and cos
        assert_close(
            f"standard_normal_v1 n={n}",
            out.copy_to_host(),
            reference.standard_normal_philox(key, n),
            atol=2e-6,
            rtol=2e-6,
        )


def benchmark(B=128, Z=1000):
    out = cuda.device_array(B * Z, np.float32)
    s = time_kernel(lambda: standard_normal((1, 2), out))
    print(f"standard_normal_v1 {s * 1e6:.1f} µs for {B}×{Z} numbers ({4 * B * Z / s / 1e9:.1f} GB/s written)")


if __name__ == "__main__":
    run_file("noise", check, benchmark)
