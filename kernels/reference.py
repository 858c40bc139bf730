"""The ops of one training step, as NumPy oracles: the contract every kernel implements.

A training step of the VAE is matrix products plus a handful of element-wise and reduction ops.
The fast backends (``cpu-fused``, ``cupy``, ``numba-cuda``) fuse those element-wise ops into one
pass each. This module states each fused op once, by composing the readable functions of
:mod:`minivae.layers`, :mod:`minivae.losses` and :mod:`minivae.optim`, so that every kernel is
checked against exactly the math of the reference path.

Every backend provides an *ops object* with these methods (same names, same argument order).
All arrays are C-contiguous; outputs are written into the ``out``-style arguments, which the
caller allocates once and reuses (no allocation inside a step). Shapes: B batch, N features,
Z latents, D data dimension, P total parameter count.

=====================================  ==========================================================
``matmul(a, b, out, ta, tb)``          out = op(a) · op(b), op = transpose when ta / tb is True
``bias_act(a, b, act, out)``           out = act(a + b)              a, out: (B, N)  b: (N,)
``act_backward(dy, y, act, out)``      out = dy ⊙ act′ (written with the output y)    (B, N)
``colsum(dy, out)``                    out = Σ_batch dy              dy: (B, N) → out: (N,)
``reparam_kl(h, eps, z, kl)``          h = [μ | log σ²] (B, 2Z); z = μ + σ ⊙ ε (B, Z);
                                       kl = Σ_latents ½(μ² + σ² − log σ² − 1)   (B,)
``reparam_kl_backward(dz, h, eps,      dh[:, :Z] = dz + c·μ;
  c, dh)``                             dh[:, Z:] = dz ⊙ ½σ⊙ε + c·½(σ² − 1);  c = β / B
``bernoulli_nll(a, x, scale, loss,     loss = Σ_pixels softplus(a) − x·a   (B,);
  da)``                                da = scale · (sigmoid(a) − x)      (B, D)
``adam(p, g, m, v, lr, b1, b2, eps,    one Adam step over flat buffers (P,), in place, with the
  c1, c2)``                            bias corrections c1 = 1 − b1ᵗ, c2 = 1 − b2ᵗ
=====================================  ==========================================================

Memory goes through the ops object too, so that one training engine (:mod:`kernels.engine`) runs
on every backend; the attribute ``xp`` is the array module of the device arrays (``numpy``, ``cupy``)
and ``name`` the backend's name.

=====================================  ==========================================================
``empty(shape, dtype)``                a new C-contiguous device array, contents undefined
``zeros(shape, dtype)``                a new C-contiguous device array of zeros
``to_device(host)``                    a C-contiguous device array with the values of the NumPy
                                       array ``host`` (may be ``host`` itself on the CPU)
``to_host(a)``                         a NumPy array with the values of the device array ``a``
                                       (may share memory with ``a`` on the CPU; copy it to keep it)
=====================================  ==========================================================

``act`` is one of ``"relu"``, ``"tanh"``, ``"identity"``. ``bias_act`` and ``act_backward`` may be
called with ``out`` aliasing their first argument (in place).
"""

from __future__ import annotations

import numpy as np

from minivae import layers, losses
from minivae.optim import adam_update

ACTS = ("relu", "tanh", "identity")

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
    cache = None if act == "identity" else y
    return _BACKWARD[act](dy, cache)


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


class HostMemory:
    """The memory methods of an ops object whose arrays are ordinary NumPy arrays."""

    xp = np

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
