"""``CupyOps``: the ops object (:class:`kernels.reference.Ops`) on CuPy arrays.

Matrix products go to cuBLAS (``cupy.matmul`` with ``out=``), or with ``own_gemm=True`` to the
tiled GEMM of :mod:`kernels.cupy.sources` (``matmul_v3``): CuPy refuses cuBLAS calls while a
stream is being captured into a CUDA graph (cupy/cupy#6290), so a graphed step needs our own.
Every kernel launches on CuPy's current stream. Kernels are compiled on first use (and cached by
CuPy on disk).
"""

from __future__ import annotations

import functools

import numpy as np

from kernels.cupy import sources


@functools.cache
def _elementwise(name):
    import cupy

    in_params, out_params, operation = sources.ELEMENTWISE[name]
    return cupy.ElementwiseKernel(in_params, out_params, operation, f"minivae_{name}")


@functools.cache
def _raw(name):
    import cupy

    return cupy.RawKernel(sources.RAW_SOURCE, name)


def _blocks(n, threads, cap=4096):
    return (max(1, min((n + threads - 1) // threads, cap)),)


class CupyOps:
    """The ops of :class:`kernels.reference.Ops` as CuPy kernels and cuBLAS (float32)."""

    name = "cupy"

    def __init__(self, own_gemm=False):
        import cupy

        self.xp = cupy
        self.own_gemm = own_gemm

    # memory ------------------------------------------------------------------------------------

    def empty(self, shape, dtype):
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return self.xp.zeros(shape, dtype=dtype)

    def to_device(self, host):
        return self.xp.ascontiguousarray(self.xp.asarray(host))

    def to_host(self, a):
        return self.xp.asnumpy(a)

    # ops ---------------------------------------------------------------------------------------

    def matmul(self, a, b, out, ta=False, tb=False):
        if not self.own_gemm:
            self.xp.matmul(a.T if ta else a, b.T if tb else b, out=out)
            return
        M, N = out.shape
        K = a.shape[0] if ta else a.shape[1]
        bm, bn = sources.GEMM_BM, sources.GEMM_BN
        grid = (min((N + bn - 1) // bn, 65535), min((M + bm - 1) // bm, 65535))
        _raw("matmul_v3")(
            grid, sources.GEMM_THREADS, (a, b, out, np.int32(M), np.int32(N), np.int32(K), np.int32(ta), np.int32(tb))
        )

    def bias_act(self, a, b, act, out):
        _elementwise(f"bias_act_{act}")(a, b, out)  # b (N,) broadcasts over the rows of a (B, N)

    def act_backward(self, dy, y, act, out):
        _elementwise(f"act_backward_{act}")(dy, y, out)

    def colsum(self, dy, out):
        B, N = dy.shape
        _raw("colsum_v1")(_blocks(N, 256), (256,), (dy, out, np.int32(B), np.int32(N)))

    def reparam_kl(self, h, eps, z, kl):
        B, Z = z.shape
        _raw("reparam_kl_v1")((min(B, 65535),), (sources.REDUCE_THREADS,), (h, eps, z, kl, np.int32(B), np.int32(Z)))

    def reparam_kl_backward(self, dz, h, eps, c, dh):
        B, Z = dz.shape
        _raw("reparam_kl_backward_v1")(
            _blocks(B * Z, 256), (256,), (dz, h, eps, np.float32(c), dh, np.int32(B), np.int32(Z))
        )

    def bernoulli_nll(self, a, x, scale, loss, da):
        B, D = a.shape
        _raw("bernoulli_nll_v1")(
            (min(B, 65535),), (sources.REDUCE_THREADS,), (a, x, np.float32(scale), loss, da, np.int32(B), np.int32(D))
        )

    def standard_normal(self, key, out):
        n = out.size
        _raw("standard_normal_v1")(
            _blocks((n + 3) // 4, 256), (256,), (np.uint32(key[0]), np.uint32(key[1]), out, np.int64(n))
        )

    def adam(self, p, g, m, v, lr, b1, b2, eps, c1, c2):
        c = self.xp.asarray(np.array([c1, c2], dtype=np.float32))
        self.adam_device_c(p, g, m, v, lr, b1, b2, eps, c)

    def adam_device_c(self, p, g, m, v, lr, b1, b2, eps, c):
        """Adam with the bias corrections [c1, c2] in a device array (read at run time)."""
        f = np.float32
        _elementwise("adam")(g, f(lr), f(b1), f(b2), f(eps), c, p, m, v)
