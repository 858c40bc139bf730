"""``NumbaCudaOps``: the ops object (:class:`kernels.reference.Ops`) on the kernels of this package.

Arrays are Numba device arrays (``numba.cuda.device_array``); every op launches one kernel on the
default stream. ``matmul`` uses v3 (register-blocked tiles) unless ``matmul_version`` says
otherwise. Scalars are passed to the kernels as float32.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from kernels.numba_cuda import adam, bernoulli_nll, bias_act, colsum, matmul, noise, reparam_kl


class NumbaCudaOps:
    """The ops of :class:`kernels.reference.Ops` as Numba-CUDA kernels (float32)."""

    name = "numba-cuda"

    def __init__(self, matmul_version=3):
        self.matmul_version = matmul_version

    # memory ------------------------------------------------------------------------------------

    def empty(self, shape, dtype):
        return cuda.device_array(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return cuda.to_device(np.zeros(shape, dtype=dtype))

    def to_device(self, host):
        return cuda.to_device(np.ascontiguousarray(host))

    def to_host(self, a):
        return a.copy_to_host()

    # ops ---------------------------------------------------------------------------------------

    def matmul(self, a, b, out, ta=False, tb=False):
        matmul.matmul(a, b, out, ta, tb, version=self.matmul_version)

    def bias_act(self, a, b, act, out):
        bias_act.bias_act(a, b, act, out)

    def act_backward(self, dy, y, act, out):
        bias_act.act_backward(dy, y, act, out)

    def colsum(self, dy, out):
        colsum.colsum(dy, out)

    def reparam_kl(self, h, eps, z, kl):
        reparam_kl.reparam_kl(h, eps, z, kl)

    def reparam_kl_backward(self, dz, h, eps, c, dh):
        reparam_kl.reparam_kl_backward(dz, h, eps, c, dh)

    def bernoulli_nll(self, a, x, scale, loss, da):
        bernoulli_nll.bernoulli_nll(a, x, scale, loss, da)

    def standard_normal(self, key, out):
        noise.standard_normal(key, out)

    def adam(self, p, g, m, v, lr, b1, b2, eps, c1, c2):
        adam.adam(p, g, m, v, lr, b1, b2, eps, c1, c2)
