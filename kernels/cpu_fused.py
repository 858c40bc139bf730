"""The ``cpu-fused`` backend: NumPy's BLAS for the matrix products, Numba kernels for the rest.

A training step spends most of its time in six matrix products (BLAS already runs them near the
machine's peak). Everything else in the reference path is a chain of small NumPy expressions,
each of which reads its inputs from memory, allocates a temporary and writes it back. Here every
such chain is ONE compiled loop (``@njit``) that reads each input once and writes its outputs in
place, in float32 throughout (constants are ``np.float32``; the scalar arguments are converted to
float32 before the call), split over the cores with ``prange`` where the work is large enough.

Kernels (each tested against its oracle in :mod:`kernels.reference` by ``tests/test_cpu_fused.py``):

    bias_relu_kernel          y = max(a + b, 0)                         in place   (B, N)
    bias_tanh_kernel          y = tanh(a + b)                           in place   (B, N)
    bias_identity_kernel      y = a + b                                 in place   (B, N)
    relu_backward_kernel      da = dy ⊙ [y > 0]                                    (B, N)
    tanh_backward_kernel      da = dy ⊙ (1 − y²)                                   (B, N)
    colsum_kernel             db = Σ_batch dy                           (B, N) → (N,)
    reparam_kl_kernel         z = μ + σ⊙ε,  KL = Σ ½(μ² + σ² − log σ² − 1)   (B, 2Z) → (B, Z), (B,)
    reparam_kl_backward_kernel  ∂L/∂μ = dz + c·μ,  ∂L/∂log σ² = dz⊙½σ⊙ε + c·½(σ² − 1)   (B, 2Z)
    bernoulli_nll_kernel      ℓ = Σ softplus(a) − x·a,  da = s·(sigmoid(a) − x)     (B,), (B, D)
    adam_kernel               one Adam step over the flat buffers θ, g, m, v          (P,)

Numerics. ``fastmath`` is off everywhere but in the column sum (``reassoc`` lets LLVM keep
several partial sums in vector registers); the row sums of the losses (KL, Bernoulli NLL)
accumulate in float64 — B numbers of up to D or Z terms each — so that they are at least as
accurate as NumPy's pairwise float32 sum in the oracle. Every kernel is compiled with
``cache=True``: the first process compiles (a few seconds), later ones load the machine code.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

_0 = np.float32(0.0)
_HALF = np.float32(0.5)
_1 = np.float32(1.0)

# --------------------------------------------------------------------------------------------
# Dense layers: bias + activation forward, activation backward, bias gradient
# --------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def bias_relu_kernel(a, b, out):
    """out = max(a + b, 0).     a, out: (B, N)  b: (N,); out may alias a."""
    B, N = a.shape
    for i in prange(B):
        for j in range(N):
            v = a[i, j] + b[j]
            out[i, j] = v if v > _0 else _0


@njit(parallel=True, cache=True)
def bias_tanh_kernel(a, b, out):
    """out = tanh(a + b).     a, out: (B, N)  b: (N,); out may alias a."""
    B, N = a.shape
    for i in prange(B):
        for j in range(N):
            out[i, j] = np.tanh(a[i, j] + b[j])


@njit(parallel=True, cache=True)
def bias_identity_kernel(a, b, out):
    """out = a + b.     a, out: (B, N)  b: (N,); out may alias a."""
    B, N = a.shape
    for i in prange(B):
        for j in range(N):
            out[i, j] = a[i, j] + b[j]


@njit(parallel=True, cache=True)
def relu_backward_kernel(dy, y, out):
    """out = dy ⊙ [y > 0]  (y is the ReLU's output: y > 0 exactly where its input was).  (B, N)"""
    B, N = dy.shape
    for i in prange(B):
        for j in range(N):
            out[i, j] = dy[i, j] if y[i, j] > _0 else _0


@njit(parallel=True, cache=True)
def tanh_backward_kernel(dy, y, out):
    """out = dy ⊙ (1 − y²)  with y = tanh(a).     (B, N)"""
    B, N = dy.shape
    for i in prange(B):
        for j in range(N):
            out[i, j] = dy[i, j] * (_1 - y[i, j] * y[i, j])


_COLS = 256  # columns per task of colsum_kernel: a strip of B × 256 floats, one task per strip


@njit(parallel=True, cache=True, fastmath={"reassoc"})
def colsum_kernel(dy, out):
    """out = Σ_batch dy, column strips in parallel, rows streamed in order.  (B, N) → (N,)"""
    B, N = dy.shape
    for s in prange((N + _COLS - 1) // _COLS):
        j0, j1 = s * _COLS, min(N, (s + 1) * _COLS)
        for j in range(j0, j1):
            out[j] = _0
        for i in range(B):
            for j in range(j0, j1):
                out[j] += dy[i, j]


# --------------------------------------------------------------------------------------------
# Between encoder and decoder: reparameterization and KL
# --------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def reparam_kl_kernel(h, eps, z, kl):
    """z = μ + σ ⊙ ε,  σ = exp(½ log σ²);  kl = Σ_latents ½(μ² + σ² − log σ² − 1).

    h = [μ | log σ²]: (B, 2Z)   eps, z: (B, Z)   kl: (B,)
    """
    B, Z = z.shape
    for i in prange(B):
        acc = 0.0  # float64 accumulator of the row's KL
        for j in range(Z):
            mu, logvar = h[i, j], h[i, Z + j]
            sigma = np.exp(_HALF * logvar)
            z[i, j] = mu + sigma * eps[i, j]
            acc += _HALF * (mu * mu + sigma * sigma - logvar - _1)
        kl[i] = acc


@njit(parallel=True, cache=True)
def reparam_kl_backward_kernel(dz, h, eps, c, dh):
    """∂L/∂h for L = (decoder loss through z) + c · Σ_b KL_b.   dz, eps: (B, Z)   h, dh: (B, 2Z)

    ∂L/∂μ = dz + c·μ                         (∂z/∂μ = 1,          ∂KL/∂μ = μ)
    ∂L/∂log σ² = dz ⊙ ½σ⊙ε + c·½(σ² − 1)     (∂z/∂log σ² = ½σ⊙ε,  ∂KL/∂log σ² = ½(σ² − 1))
    """
    B, Z = dz.shape
    for i in prange(B):
        for j in range(Z):
            mu, logvar = h[i, j], h[i, Z + j]
            sigma = np.exp(_HALF * logvar)
            dh[i, j] = dz[i, j] + c * mu
            dh[i, Z + j] = dz[i, j] * _HALF * sigma * eps[i, j] + c * _HALF * (sigma * sigma - _1)


# --------------------------------------------------------------------------------------------
# Reconstruction: Bernoulli NLL from logits, with its gradient, in one pass
# --------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True)
def bernoulli_nll_kernel(a, x, scale, loss, da):
    """loss = Σ_pixels softplus(a) − x·a;  da = scale · (sigmoid(a) − x).   a, x, da: (B, D)  loss: (B,)

    With e = exp(−|a|) ∈ (0, 1] nothing overflows, also for |a| = 1000:
    softplus(a) = max(a, 0) + log1p(e);  sigmoid(a) = 1/(1 + e) for a ≥ 0, e/(1 + e) for a < 0.
    """
    B, D = a.shape
    for i in prange(B):
        acc = 0.0  # float64 accumulator of the row's loss
        for j in range(D):
            aj, xj = a[i, j], x[i, j]
            e = np.exp(-abs(aj))
            pos = aj if aj > _0 else _0
            acc += pos + np.log1p(e) - xj * aj
            p = (_1 if aj >= _0 else e) / (_1 + e)
            da[i, j] = scale * (p - xj)
        loss[i] = acc


# --------------------------------------------------------------------------------------------
# Adam over the flat parameter buffer
# --------------------------------------------------------------------------------------------

_CHUNK = 1 << 16  # elements per Adam task


@njit(parallel=True, cache=True)
def adam_kernel(p, g, m, v, lr, b1, one_minus_b1, b2, one_minus_b2, eps, c1, c2):
    """One Adam step in place over flat buffers (P,) (see :mod:`minivae.optim`):

    m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;  θ ← θ − α·(m/c1) / (√(v/c2) + ε)

    1 − β₁ and 1 − β₂ come in precomputed (in float64, as the reference rounds them): in float32,
    1 − 0.999 loses four of its seven digits to cancellation.
    """
    P = p.shape[0]
    for s in prange((P + _CHUNK - 1) // _CHUNK):
        for k in range(s * _CHUNK, min(P, (s + 1) * _CHUNK)):
            gk = g[k]
            mk = b1 * m[k] + one_minus_b1 * gk
            vk = b2 * v[k] + one_minus_b2 * (gk * gk)
            m[k], v[k] = mk, vk
            p[k] -= lr * (mk / c1) / (np.sqrt(vk / c2) + eps)


# --------------------------------------------------------------------------------------------
# The ops object
# --------------------------------------------------------------------------------------------

_BIAS_ACT = {"relu": bias_relu_kernel, "tanh": bias_tanh_kernel, "identity": bias_identity_kernel}
_ACT_BACKWARD = {"relu": relu_backward_kernel, "tanh": tanh_backward_kernel}


class CpuFusedOps:
    """The ops of :mod:`kernels.reference` on the CPU: BLAS matmuls and the kernels above (float32)."""

    name = "cpu-fused"
    xp = np

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def to_device(self, host):
        return np.ascontiguousarray(host)

    def to_host(self, a):
        return np.asarray(a)

    def matmul(self, a, b, out, ta=False, tb=False):
        # A transposed view of a C-contiguous array is Fortran-contiguous: NumPy hands it to
        # sgemm with a transpose flag, without copying it.
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
        colsum_kernel(dy, out)

    def reparam_kl(self, h, eps, z, kl):
        reparam_kl_kernel(h, eps, z, kl)

    def reparam_kl_backward(self, dz, h, eps, c, dh):
        reparam_kl_backward_kernel(dz, h, eps, np.float32(c), dh)

    def bernoulli_nll(self, a, x, scale, loss, da):
        bernoulli_nll_kernel(a, x, np.float32(scale), loss, da)

    def adam(self, p, g, m, v, lr, b1, b2, eps, c1, c2):
        f = np.float32
        adam_kernel(p, g, m, v, f(lr), f(b1), f(1 - b1), f(b2), f(1 - b2), f(eps), f(c1), f(c2))
