"""The ``cpu-fused`` backend: BLAS for the matrix products, Numba for everything else.

A step of the readable model makes a new array at every NumPy expression: ``np.exp(0.5 * logvar)``
alone reads log σ² once and writes two temporaries. Here each element-wise stage of the step is ONE
compiled loop that reads its inputs once and writes its outputs once, in float32, in place where it
can, parallel over rows (``prange``) where the work pays for the threads.

Kernels (each a Numba-compiled function, checked against :mod:`kernels.reference`):

- ``bias_relu`` / ``bias_tanh`` / ``bias_identity``   out = act(a + b)                 (B, N)
- ``relu_backward`` / ``tanh_backward``             out = dy ⊙ act′(y)               (B, N)
- ``column_sum``                                    out = Σ_batch dy                 (N,)
- ``reparam_kl_forward``                            z = μ + σ ⊙ ε, KL per row        (B, Z), (B,)
- ``reparam_kl_backward``                           ∂L/∂[μ | log σ²]                 (B, 2Z)
- ``bernoulli_nll_forward_backward``                ℓ per row and c·(sigmoid(a) − x)  (B,), (B, D)
- ``adam_step``                                     one Adam update over the flat buffer (P,)

Matrix products stay in BLAS (``np.matmul`` with ``out=``; a transposed operand is a strided view,
which BLAS reads without a copy). Compiled code is cached on disk (``cache=True``), so only the
first run on a machine pays the compile time.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from kernels.reference import NumpyOps

KERNELS = ("bias_relu", "bias_tanh", "bias_identity", "relu_backward", "tanh_backward", "column_sum",
           "reparam_kl_forward", "reparam_kl_backward", "bernoulli_nll_forward_backward", "adam_step")

F0, HALF, ONE = np.float32(0.0), np.float32(0.5), np.float32(1.0)
_pjit = njit(cache=True, parallel=True, fastmath=False)


# -------------------------------------------------------------------------- bias + activation


@_pjit
def bias_relu(a, b, out):  # out = max(a + b, 0)
    for i in prange(a.shape[0]):
        for j in range(a.shape[1]):
            v = a[i, j] + b[j]
            out[i, j] = v if v > F0 else F0


@_pjit
def bias_tanh(a, b, out):  # out = tanh(a + b)
    for i in prange(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = math.tanh(a[i, j] + b[j])


@_pjit
def bias_identity(a, b, out):  # out = a + b
    for i in prange(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = a[i, j] + b[j]


@_pjit
def relu_backward(dy, y, out):  # out = dy ⊙ [y > 0]
    for i in prange(dy.shape[0]):
        for j in range(dy.shape[1]):
            out[i, j] = dy[i, j] if y[i, j] > F0 else F0


@_pjit
def tanh_backward(dy, y, out):  # out = dy ⊙ (1 − y²)
    for i in prange(dy.shape[0]):
        for j in range(dy.shape[1]):
            out[i, j] = dy[i, j] * (ONE - y[i, j] * y[i, j])


@_pjit
def column_sum(dy, out):  # out[j] = Σ_i dy[i, j]; threads take column blocks, rows read in order
    B, N = dy.shape
    block = 256
    for jb in prange((N + block - 1) // block):
        j0 = jb * block
        j1 = min(j0 + block, N)
        for j in range(j0, j1):
            out[j] = F0
        for i in range(B):
            for j in range(j0, j1):
                out[j] += dy[i, j]


# -------------------------------------------------------------------------- the latent layer


@_pjit
def reparam_kl_forward(h, eps, z, kl):
    """h = [μ | log σ²] (B, 2Z): z = μ + exp(½ log σ²) ε; KL_b = ½ Σ (μ² + σ² − log σ² − 1)."""
    Z = eps.shape[1]
    for i in prange(h.shape[0]):
        acc = F0
        for j in range(Z):
            mu = h[i, j]
            lv = h[i, Z + j]
            s = math.exp(HALF * lv)
            z[i, j] = mu + s * eps[i, j]
            acc += mu * mu + s * s - lv - ONE
        kl[i] = HALF * acc


@_pjit
def reparam_kl_backward(dz, h, eps, c, dh):
    """dh[:, :Z] = dz + c μ;  dh[:, Z:] = dz ⊙ ½ σ ε + c ½ (σ² − 1)."""
    Z = eps.shape[1]
    for i in prange(h.shape[0]):
        for j in range(Z):
            mu = h[i, j]
            s = math.exp(HALF * h[i, Z + j])
            g = dz[i, j]
            dh[i, j] = g + c * mu
            dh[i, Z + j] = HALF * (g * s * eps[i, j] + c * (s * s - ONE))


# -------------------------------------------------------------------------- the reconstruction term


CHUNK = 32  # product of at most 32 factors in (1, 2]: ≤ 2³², far from float32 overflow (2¹²⁸)


@_pjit
def bernoulli_nll_forward_backward(a, x, scale, loss, da):
    """ℓ_b = Σ_d softplus(a) − x a (stable form);  da = scale · (sigmoid(a) − x).

    With e = exp(−|a|) ∈ (0, 1]:  softplus(a) = max(a, 0) + log(1 + e)  and
    sigmoid(a) = 1/(1 + e) for a ≥ 0, e/(1 + e) for a < 0 — one exp serves both.
    The logs are taken of products: Σ_d log(1 + e_d) = Σ_chunks log Π_{d ∈ chunk} (1 + e_d), one log
    per CHUNK pixels instead of one per pixel (the product's rounding error, ~CHUNK·2⁻²⁴ relative,
    is far below float32's error on a sum of 784 terms). A scalar log per pixel cost 3–4× the time.
    """
    D = a.shape[1]
    for i in prange(a.shape[0]):
        acc = F0
        for j0 in range(0, D, CHUNK):
            prod = ONE
            for j in range(j0, min(j0 + CHUNK, D)):
                v = a[i, j]
                e = math.exp(-abs(v))  # never overflows
                d = ONE + e
                prod *= d
                acc += (v if v > F0 else F0) - x[i, j] * v
                p = (ONE if v >= F0 else e) / d  # sigmoid(v)
                da[i, j] = scale * (p - x[i, j])
            acc += math.log(prod)
        loss[i] = acc


# -------------------------------------------------------------------------- Adam


@_pjit
def adam_step(p, g, m, v, lr, b1, b2, eps, c1, c2):
    """m ← b1 m + (1−b1) g;  v ← b2 v + (1−b2) g²;  p ← p − lr (m/c1) / (√(v/c2) + eps)."""
    one_b1, one_b2 = ONE - b1, ONE - b2
    for k in prange(p.shape[0]):
        gk = g[k]
        mk = b1 * m[k] + one_b1 * gk
        vk = b2 * v[k] + one_b2 * gk * gk
        m[k] = mk
        v[k] = vk
        p[k] -= lr * (mk / c1) / (math.sqrt(vk / c2) + eps)


_BIAS_ACT = {"relu": bias_relu, "tanh": bias_tanh, "identity": bias_identity}
_ACT_BACKWARD = {"relu": relu_backward, "tanh": tanh_backward}
f32 = np.float32


class CpuFusedOps(NumpyOps):
    """The ops object of the ``cpu-fused`` backend (float32; memory is ordinary NumPy arrays).

    ``threads``: Numba threads for the fused kernels (default 1). The kernels are compiled with
    ``parallel=True`` even so: that lowering lets LLVM assume the arrays do not overlap and
    vectorise the loops (Adam runs 6× faster than as a plain ``njit`` loop). More threads do not
    pay here: between two BLAS calls OpenBLAS's own threads keep spinning on the same cores, and
    a second pool competing with them made the whole step several times slower on 2 cores.
    Numba applies the setting to the thread that creates the ops object.
    """

    name = "cpu-fused"
    dtypes = (np.float32,)

    def __init__(self, threads=1):
        import numba

        numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))

    def matmul(self, a, b, out, ta=False, tb=False):
        np.matmul(a.T if ta else a, b.T if tb else b, out=out)

    def bias_act(self, a, b, act, out):
        _BIAS_ACT[act](a, b, out)

    def act_backward(self, dy, y, act, out):
        if act == "identity":
            if out is not dy:
                out[...] = dy
            return
        _ACT_BACKWARD[act](dy, y, out)

    def colsum(self, dy, out):
        column_sum(dy, out)

    def reparam_kl(self, h, eps, z, kl):
        reparam_kl_forward(h, eps, z, kl)

    def reparam_kl_backward(self, dz, h, eps, c, dh):
        reparam_kl_backward(dz, h, eps, f32(c), dh)

    def bernoulli_nll(self, a, x, scale, loss, da):
        bernoulli_nll_forward_backward(a, x, f32(scale), loss, da)

    def adam(self, p, g, m, v, lr, b1, b2, eps, c1, c2):
        adam_step(p, g, m, v, f32(lr), f32(b1), f32(b2), f32(eps), f32(c1), f32(c2))
