"""The ops of one training step, as NumPy oracles, and the contract every backend implements.

A training step of the VAE is matrix products plus a handful of element-wise and reduction ops.
The fast backends (``cpu-fused``, ``cupy``, ``numba-cuda``) fuse those element-wise ops into one
pass each. This module states each fused op once, by composing the readable functions of
:mod:`minivae.layers`, :mod:`minivae.losses` and :mod:`minivae.optim`, so that every kernel is
checked against exactly the math of the reference path.

Every backend provides an *ops object*: the :class:`Ops` protocol below says what it has — the
ops, the memory methods through which one training engine (:mod:`kernels.engine`) runs on every
backend, its ``name``, and the one optional op, ``standard_normal`` (None where a backend has
none). :class:`NumpyOps` is the reference ops object, built from the oracles;
``tests/test_ops_contract.py`` checks every backend's ops object against the protocol.

The noise of the reparameterization is the optional op. An engine whose ops object has it draws
only the key (two 32-bit words) from the model's generator and lets the backend make the B·Z
numbers (:func:`standard_normal_philox`); without it ε comes from the model's NumPy generator
(``rng.standard_normal``), as in the reference VAE. The two streams differ, so the same seed gives
different noise on backends with and without this op.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from minivae import layers, losses
from minivae.optim import adam_update

ACTS = ("relu", "tanh", "identity")

# --------------------------------------------------------------------------------------------
# The contract: what every backend's ops object has
# --------------------------------------------------------------------------------------------

Array = Any  # a C-contiguous array of the backend: NumPy, CuPy, or a Numba device array


class NoiseOp(Protocol):
    """The optional op: fill ``out`` (any shape, n numbers) with the standard-normal stream of
    :func:`standard_normal_philox` for ``key`` (two 32-bit words)."""

    def __call__(self, key: Any, out: Array) -> None: ...


@runtime_checkable
class Ops(Protocol):
    """The ops object of a backend (same names, same argument order on every backend).

    All arrays are C-contiguous; outputs are written into the ``out``-style arguments, which the
    caller allocates once and reuses (no allocation inside a step). Shapes: B batch, N features,
    Z latents, D data dimension, P total parameter count. ``act`` is one of :data:`ACTS`.
    The arguments are trusted to fit together: the model checks a batch once, at its public
    methods (:mod:`minivae.checks`); a backend whose kernels index raw memory still refuses
    arrays that would make them read or write out of bounds.
    """

    name: str  # the backend's name
    standard_normal: NoiseOp | None  # optional: None where ε comes from the model's generator

    # Memory: every device array of the engine comes from these.

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Array:
        """A new C-contiguous device array, contents undefined."""

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> Array:
        """A new C-contiguous device array of zeros."""

    def to_device(self, host: np.ndarray) -> Array:
        """A C-contiguous device array with the values of ``host`` (may be ``host`` on the CPU)."""

    def to_host(self, a: Array) -> np.ndarray:
        """A NumPy array with the values of ``a`` (may share memory with ``a`` on the CPU: copy it to keep it)."""

    # The ops: each the in-place form of the oracle of the same name below.

    def matmul(self, a: Array, b: Array, out: Array, ta: bool = False, tb: bool = False) -> None:
        """out = op(a) · op(b), op = transpose when ta / tb is True."""

    def bias_act(self, a: Array, b: Array, act: str, out: Array) -> None:
        """out = act(a + b).     a, out: (B, N)  b: (N,); ``out`` may be ``a`` (in place)."""

    def act_backward(self, dy: Array, y: Array, act: str, out: Array) -> None:
        """out = dy ⊙ act′, written with the output y.     (B, N); ``out`` may be ``dy``."""

    def colsum(self, dy: Array, out: Array) -> None:
        """out = Σ_batch dy.     dy: (B, N) → out: (N,)"""

    def reparam_kl(self, h: Array, eps: Array, z: Array, kl: Array) -> None:
        """h = [μ | log σ²] (B, 2Z); z = μ + σ ⊙ ε (B, Z); kl = Σ_latents ½(μ² + σ² − log σ² − 1) (B,)."""

    def reparam_kl_backward(self, dz: Array, h: Array, eps: Array, c: float, dh: Array) -> None:
        """dh[:, :Z] = dz + c·μ;  dh[:, Z:] = dz ⊙ ½σ⊙ε + c·½(σ² − 1);  c = β / B.     (B, 2Z)"""

    def bernoulli_nll(self, a: Array, x: Array, scale: float, loss: Array, da: Array) -> None:
        """loss = Σ_pixels softplus(a) − x·a (B,);  da = scale · (sigmoid(a) − x) (B, D)."""

    def adam(self, p: Array, g: Array, m: Array, v: Array, lr, b1, b2, eps, c1, c2) -> None:
        """One Adam step over flat buffers (P,), in place, with c1 = 1 − b1ᵗ, c2 = 1 − b2ᵗ."""


_FORWARD = {
    "relu": layers.relu_forward,
    "tanh": layers.tanh_forward,
    "identity": layers.identity_forward,
}
_BACKWARD = {
    "relu": layers.relu_backward,
    "tanh": layers.tanh_backward,
    "identity": layers.identity_backward,
}


def matmul(a, b, ta=False, tb=False):
    """op(a) · op(b)."""
    return (a.T if ta else a) @ (b.T if tb else b)


def bias_act(a, b, act):
    """act(a + b): the bias add of :func:`minivae.layers.dense_forward` fused with the activation."""
    return _FORWARD[act](a + b)[0]


def act_backward(dy, y, act):
    """dy ⊙ act′, from the activation's output y (its cache)."""
    return _BACKWARD[act](dy, y)  # the identity's backward ignores its cache


def colsum(dy):
    """Σ_batch dy: the bias gradient of :func:`minivae.layers.dense_backward`."""
    return dy.sum(axis=0)


def reparam_kl(h, eps):
    """Split h into μ and log σ², sample z and the per-example KL. → z (B, Z), kl (B,)"""
    Z = h.shape[1] // 2
    mu, logvar = h[:, :Z], h[:, Z:]
    return losses.reparameterize(mu, logvar, eps), losses.gaussian_kl(mu, logvar)


def reparam_kl_backward(dz, h, eps, c):
    """∂L/∂h for L = (decoder loss through z) + c · Σ_b KL_b.     → dh (B, 2Z)"""
    Z = h.shape[1] // 2
    mu, logvar = h[:, :Z], h[:, Z:]
    dmu_r, dlogvar_r = losses.reparameterize_backward(dz, logvar, eps)
    dmu_k, dlogvar_k = losses.gaussian_kl_backward(np.full(h.shape[0], c, dtype=h.dtype), mu, logvar)
    return np.concatenate([dmu_r + dmu_k, dlogvar_r + dlogvar_k], axis=1)


def bernoulli_nll(a, x, scale):
    """Per-example Bernoulli NLL and its gradient times ``scale``. → loss (B,), da (B, D)"""
    loss = losses.bernoulli_nll(a, x)
    da = losses.bernoulli_nll_backward(np.full(a.shape[0], scale, dtype=a.dtype), a, x)
    return loss, da


def adam(p, g, m, v, lr, b1, b2, eps, c1, c2):
    """One Adam step in place (see :func:`minivae.optim.adam_update`)."""
    adam_update(p, g, m, v, lr, b1, b2, eps, c1, c2)


# --------------------------------------------------------------------------------------------
# Noise: Philox4x32-10 and the Box–Muller transform
# --------------------------------------------------------------------------------------------

PHILOX_M = (0xD2511F53, 0xCD9E8D57)  # the two multipliers of Philox4x32
PHILOX_W = (0x9E3779B9, 0xBB67AE85)  # the key increments ("Weyl" constants: golden ratio, √3 − 1)
_U32 = np.uint64(0xFFFFFFFF)


def philox4x32(counter, key, rounds=10):
    """Philox4x32-R (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3",
    SC 2011): a keyed bijection of 128-bit counters, used as a random-number generator by
    numbering its outputs. One round, on counter words c₀…c₃ and key words k₀, k₁ (all mod 2³²):

        (hi₀, lo₀) = M₀ · c₀   and   (hi₁, lo₁) = M₁ · c₂      (64-bit products, high and low words)
        (c₀, c₁, c₂, c₃) ← (hi₁ ⊕ c₁ ⊕ k₀,  lo₁,  hi₀ ⊕ c₃ ⊕ k₁,  lo₀)
        (k₀, k₁) ← (k₀ + W₀, k₁ + W₁)

    counter: four arrays of equal shape (uint32 values), key: two ints → four uint32 arrays.
    Computed in uint64, where a 32 × 32-bit product is exact.
    """
    c = [np.asarray(w, dtype=np.uint64) & _U32 for w in counter]
    k0, k1 = np.uint64(int(key[0]) & 0xFFFFFFFF), np.uint64(int(key[1]) & 0xFFFFFFFF)
    m0, m1 = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1])
    w0, w1 = np.uint64(PHILOX_W[0]), np.uint64(PHILOX_W[1])
    for _ in range(rounds):
        p0, p1 = c[0] * m0, c[2] * m1
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & _U32, (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & _U32]
        k0, k1 = (k0 + w0) & _U32, (k1 + w1) & _U32
    return [w.astype(np.uint32) for w in c]


def philox_blocks(key, n):
    """The Philox words behind n noise values: blocks i = 0 … n₄ − 1, n₄ = ⌈n / 4⌉, each the
    output for counter (i, 0, 0, 0). → (4, n₄) uint32, row ℓ = word ℓ of every block."""
    n4 = -(-n // 4)
    i = np.arange(n4, dtype=np.uint64)
    zero = np.zeros_like(i)
    return np.stack(philox4x32((i, zero, zero, zero), key))


def box_muller(w_radius, w_angle):
    """Two standard-normal numbers from two 32-bit words (their top 23 and 24 bits), in float64:

        u = (⌊w_radius / 2⁹⌋ + ½) · 2⁻²³ ∈ (0, 1)      r = √(−2 ln u)
        θ = 2π · ⌊w_angle / 2⁸⌋ · 2⁻²⁴ ∈ [0, 2π)       → (r cos θ, r sin θ)

    For u uniform on (0, 1) and θ uniform on [0, 2π), r cos θ and r sin θ are independent N(0, 1)
    (Box & Muller 1958). u has 23 bits so that it is exact in float32 too (k + ½ with a 24-bit k
    would need 25). The radius is therefore at most √(48 ln 2) ≈ 5.77: P(r > 5.77) =
    e^(−5.77²/2) ≈ 6·10⁻⁸ is the only part of the distribution that is cut off.
    """
    u = ((w_radius >> np.uint32(9)).astype(np.float64) + 0.5) * 2.0**-23
    theta = 2 * np.pi * (w_angle >> np.uint32(8)).astype(np.float64) * 2.0**-24
    r = np.sqrt(-2 * np.log(u))
    return r * np.cos(theta), r * np.sin(theta)


def standard_normal_philox(key, n):
    """n standard-normal numbers (float64) for a 64-bit key (k₀, k₁), the stream of the optional
    ``standard_normal`` op. Block i gives four numbers, (w₀, w₁) and (w₂, w₃) through
    :func:`box_muller`; number ℓ of block i is element ℓ·n₄ + i of the result, so that each of
    the four goes to a contiguous quarter (the last quarter is short by n₄·4 − n elements).
    """
    w = philox_blocks(key, n)
    lanes = box_muller(w[0], w[1]) + box_muller(w[2], w[3])  # four arrays (n₄,)
    return np.concatenate(lanes)[:n]


class HostMemory:
    """The memory methods of an ops object whose arrays are ordinary NumPy arrays."""

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def to_device(self, host):
        return np.ascontiguousarray(host)

    def to_host(self, a):
        return np.asarray(a)


class NumpyOps(HostMemory):
    """The ops object of the reference: each method writes its oracle's result into ``out``."""

    name = "numpy"
    standard_normal = None  # no noise op: ε comes from the model's generator, as in the reference VAE

    def matmul(self, a, b, out, ta=False, tb=False):
        np.matmul(a.T if ta else a, b.T if tb else b, out=out)

    def bias_act(self, a, b, act, out):
        out[...] = bias_act(a, b, act)

    def act_backward(self, dy, y, act, out):
        out[...] = act_backward(dy, y, act)

    def colsum(self, dy, out):
        out[...] = colsum(dy)

    def reparam_kl(self, h, eps, z, kl):
        z[...], kl[...] = reparam_kl(h, eps)

    def reparam_kl_backward(self, dz, h, eps, c, dh):
        dh[...] = reparam_kl_backward(dz, h, eps, c)

    def bernoulli_nll(self, a, x, scale, loss, da):
        loss[...], da[...] = bernoulli_nll(a, x, scale)

    def adam(self, p, g, m, v, lr, b1, b2, eps, c1, c2):
        adam(p, g, m, v, lr, b1, b2, eps, c1, c2)
