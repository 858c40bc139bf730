"""act(a + b) and its backward dy ⊙ act′, for act in relu, tanh, identity.

Versions
    bias_act_v1       grid-stride, one thread per element: out[i, j] = act(a[i, j] + b[j])
    act_backward_v1   grid-stride, one thread per element: out = dy ⊙ act′, act′ from the output y

One thread computes one element per grid-stride step (the activation is a compile-time constant,
one kernel per activation). Memory traffic per element: bias_act reads a (and b, cached) and
writes out: 8 bytes; act_backward reads dy and y and writes out: 12 bytes (identity skips y).
``out`` may alias the first argument (in place).

Check every version against :mod:`kernels.reference` (simulator or GPU), then time it on a GPU:
    NUMBA_ENABLE_CUDASIM=1 python -m kernels.numba_cuda.bias_act --check
    python -m kernels.numba_cuda.bias_act
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda

from kernels.numba_cuda._util import F32_1D, F32_2D, assert_close, blocks_for, jitted, run_file, time_kernel
from kernels.reference import ACTS

VERSIONS = {
    "bias_act_v1": "grid-stride, one thread per element: out[i, j] = act(a[i, j] + b[j])",
    "act_backward_v1": "grid-stride, one thread per element: out = dy ⊙ act′, act′ from the output y",
}
THREADS = 256
ZERO, ONE = np.float32(0), np.float32(1)


@functools.cache
def bias_act_kernel(act):
    RELU, TANH = act == "relu", act == "tanh"

    def bias_act_v1(a, b, out):
        B, N = out.shape
        for e in range(cuda.grid(1), B * N, cuda.gridsize(1)):
            i, j = e // N, e % N
            x = a[i, j] + b[j]
            if RELU:
                x = max(x, ZERO)
            elif TANH:
                x = math.tanh(x)
            out[i, j] = x

    return bias_act_v1


@functools.cache
def act_backward_kernel(act):
    RELU, TANH = act == "relu", act == "tanh"

    def act_backward_v1(dy, y, out):
        B, N = out.shape
        for e in range(cuda.grid(1), B * N, cuda.gridsize(1)):
            i, j = e // N, e % N
            g = dy[i, j]
            if RELU:
                g = g if y[i, j] > ZERO else ZERO  # y > 0 exactly where a > 0
            elif TANH:
                g = g * (ONE - y[i, j] * y[i, j])  # tanh′ = 1 − y²
            out[i, j] = g

    return act_backward_v1


def bias_act(a, b, act, out, threads=THREADS):
    jitted(bias_act_kernel(act))[blocks_for(out.size, threads), threads](a, b, out)


def act_backward(dy, y, act, out, threads=THREADS):
    jitted(act_backward_kernel(act))[blocks_for(out.size, threads), threads](dy, y, out)


def ptx_cases():
    return [(f"bias_act_v1 {act}", bias_act_kernel(act), (F32_2D, F32_1D, F32_2D)) for act in ACTS] + [
        (f"act_backward_v1 {act}", act_backward_kernel(act), (F32_2D, F32_2D, F32_2D)) for act in ACTS
    ]


def check(shape=(7, 13), threads=32, seed=0):
    """Both kernels, every activation, in place and out of place, against the reference."""
    from kernels import reference as ref

    rng = np.random.default_rng(seed)
    B, N = shape
    a = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    for act in ACTS:
        out = cuda.device_array(shape, np.float32)
        bias_act(cuda.to_device(a), cuda.to_device(b), act, out, threads=threads)
        y = ref.bias_act(a, b, act)
        assert_close(f"bias_act_v1 {act}", out.copy_to_host(), y)
        d_a = cuda.to_device(a)  # in place: out aliases a
        bias_act(d_a, cuda.to_device(b), act, d_a, threads=threads)
        assert_close(f"bias_act_v1 {act} in place", d_a.copy_to_host(), y)
        d_dy = cuda.to_device(dy)
        act_backward(d_dy, cuda.to_device(y), act, d_dy, threads=threads)
        assert_close(f"act_backward_v1 {act} in place", d_dy.copy_to_host(), ref.act_backward(dy, y, act))


def benchmark(B=128, N=512):
    a = cuda.to_device(np.random.default_rng(0).standard_normal((B, N)).astype(np.float32))
    b = cuda.to_device(np.zeros(N, np.float32))
    out = cuda.device_array((B, N), np.float32)
    for act in ACTS:
        s = time_kernel(functools.partial(bias_act, a, b, act, out))
        s2 = time_kernel(functools.partial(act_backward, a, out, act, out))
        print(
            f"{act:>8}: bias_act {s * 1e6:7.1f} µs ({8 * B * N / s / 1e9:6.1f} GB/s)   "
            f"act_backward {s2 * 1e6:7.1f} µs ({12 * B * N / s2 / 1e9:6.1f} GB/s)"
        )


if __name__ == "__main__":
    run_file("bias_act", check, benchmark)
