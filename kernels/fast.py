"""The fast models: :class:`minivae.VAE` and :class:`minivae.ae.AE` with their step run by kernels.

``minivae.VAE(..., backend="cpu-fused")`` (or "cupy", "numba-cuda", "auto") gives a
:class:`FastVAE`, and ``minivae.Adam(vae.params)`` on its parameters a :class:`FastAdam`. They
have the public API of the reference classes — ``params``, ``forward``, ``backward``, ``encode``,
``decode``, ``sample``, ``get_params``, ``set_params``; ``step``, ``state_dict`` — and compute the
same numbers, but

- the parameters live in one flat buffer on the backend's device (``params`` is a
  :class:`kernels.engine.FlatParams` of views into it, same keys, shapes and order);
- ``forward`` and ``backward`` run the ops of :class:`kernels.engine.Engine` (``engine``) on
  buffers allocated once, and ``backward`` returns views into a flat gradient buffer;
- Adam is one kernel pass over the flat buffers (``m_flat``, ``v_flat``);
- ε comes from the backend's Philox generator keyed by the model's ``rng`` where the backend has
  one (all fast backends do), so the noise differs from the numpy backend's.

The initial weights are the reference model's (built with the same seed, then copied into the flat
buffer), and every argument and input is checked as by the reference (:mod:`minivae.checks`).
"""

from __future__ import annotations

import numpy as np

from kernels.engine import Engine
from minivae.ae import AE
from minivae.backend import create_ops, resolve
from minivae.optim import Adam
from minivae.vae import VAE


class FastModel:
    """What :class:`FastVAE` and :class:`FastAE` share: a reference model's description and initial
    weights, and the engine that runs its step."""

    def _take(self, reference, backend, ops):
        """Adopt ``reference``'s checked settings, generator and initial weights; build the engine."""
        for name in ("data_dim", "latent", "hidden", "dtype", "activation", "rng", "layer_names", "params"):
            setattr(self, name, getattr(reference, name))
        self.beta = getattr(reference, "beta", 0.0)
        self.last = {}
        if ops is None:
            self.backend = resolve(backend, self.dtype)
            ops = create_ops(self.backend, self.dtype)
        else:  # an explicit ops object (e.g. kernels.reference.NumpyOps, to test the engine in float64)
            self.backend = type(ops).__name__
        self.engine = Engine(self, ops)
        self.params = self.engine.params  # views into the engine's flat buffer θ (P,)

    def forward(self, x, eps=None):
        return self.engine.forward(x, eps)

    def backward(self):
        """Gradients of the last forward's loss: a :class:`kernels.engine.FlatParams` of views into
        the engine's flat gradient buffer (overwritten by the next backward)."""
        return self.engine.backward()

    def encode(self, x):
        return self.engine.encode(x)

    def decode_logits(self, z):
        return self.engine.decode_logits(z)

    def noise_key(self):
        """The key of one step's noise: two words from the model's generator (see the engine)."""
        return self.engine.noise_key()

    def get_params(self):
        return self.engine.get_params()

    def set_params(self, values):
        return self.engine.set_params(values)


class FastVAE(FastModel, VAE):
    """:class:`minivae.VAE` on a fast backend (same arguments, same API)."""

    def __init__(
        self,
        data_dim=784,
        latent=20,
        hidden=(512,),
        seed=0,
        dtype="float32",
        beta=1.0,
        activation="relu",
        backend="auto",
        ops=None,
    ):
        reference = VAE(
            data_dim, latent, hidden, seed=seed, dtype=dtype, beta=beta, activation=activation, backend="numpy"
        )
        self.seed = reference.seed
        self._take(reference, backend, ops)


class FastAE(FastModel, AE):
    """:class:`minivae.ae.AE` on a fast backend (same arguments, same API)."""

    def __init__(
        self,
        data_dim=784,
        latent=20,
        hidden=(512,),
        seed=0,
        dtype="float32",
        activation="relu",
        backend="auto",
        ops=None,
    ):
        reference = AE(data_dim, latent, hidden, seed=seed, dtype=dtype, activation=activation, backend="numpy")
        self._take(reference, backend, ops)


class FastAdam(Adam):
    """:class:`minivae.Adam` over a flat parameter buffer: the moments are flat buffers of the same
    layout (``m_flat``, ``v_flat``; ``m`` and ``v`` are dicts of views into them), and a step with
    flat gradients is one pass of the backend's ``adam`` kernel over P numbers. The arithmetic is
    that of :func:`minivae.optim.adam_update`."""

    def zeros_like_params(self):
        return self.params.views(self.params.ops.zeros(self.flat.shape, self.flat.dtype))  # (P,)

    @property
    def flat(self):
        """The parameters' flat buffer θ (P,)."""
        return self.params.flat

    @property
    def m_flat(self):
        return self.m.flat

    @property
    def v_flat(self):
        return self.v.flat

    def step(self, grads):
        """One update; ``grads`` a flat buffer of our layout (a fast model's backward), or a dict."""
        g = getattr(grads, "flat", None)
        if g is None:
            return super().step(grads)  # the reference update, on the views
        # One kernel over P numbers: the buffers must have our layout (O(1) checks).
        if (
            getattr(grads, "layout", None) != self.params.layout
            or g.shape != self.flat.shape
            or g.dtype != self.flat.dtype
            or not g.flags.c_contiguous
        ):
            raise ValueError(
                f"grads must have the layout of the parameters: a contiguous "
                f"{self.flat.dtype} buffer of shape {self.flat.shape}, got "
                f"{g.dtype} {g.shape}"
            )
        self.t += 1
        c1 = 1 - self.b1**self.t
        c2 = 1 - self.b2**self.t
        self.params.ops.adam(self.flat, g, self.m_flat, self.v_flat, self.lr, self.b1, self.b2, self.eps, c1, c2)

    def state_dict(self):
        to_host = self.params.ops.to_host
        state = {"t": np.array(self.t)}
        for k in self.params:
            state["m." + k] = np.array(to_host(self.m[k]))  # a copy: on the CPU to_host may share memory
            state["v." + k] = np.array(to_host(self.v[k]))
        return state

    def load_state_dict(self, state):
        to_device = self.params.ops.to_device
        self.t, moments = self.checked_state(state)
        for k in self.params:
            self.m[k][...] = to_device(moments["m." + k])
            self.v[k][...] = to_device(moments["v." + k])
