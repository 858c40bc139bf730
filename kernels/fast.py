"""The fast models: :class:`minivae.VAE` and :class:`minivae.ae.AE` with their step run by kernels.

``minivae.VAE(..., backend="cpu-fused")`` (or "cupy", "numba-cuda", "auto") gives a
:class:`FastVAE`, and ``minivae.Adam(vae.params)`` on its parameters a :class:`FastAdam`. They
have the public API of the reference classes — ``params``, ``forward``, ``backward``, ``encode``,
``decode``, ``sample``, ``get_params``, ``set_params``; ``step``, ``state_dict`` — and compute the
same numbers, but

- the parameters live in one flat buffer on the backend's device (``params`` is a
  :class:`kernels.flat.FlatParams` of views into it, same keys, shapes and order);
- ``forward`` and ``backward`` run the ops of :class:`kernels.engine.Engine` (``engine``) on
  buffers allocated once, and ``backward`` returns views into a flat gradient buffer;
- Adam is one kernel pass over the flat buffers (``m_flat``, ``v_flat``);
- ε comes from the backend's Philox generator keyed by the model's ``rng`` where the backend has
  one (all fast backends do), so the noise differs from the numpy backend's.

The initial weights are the reference model's (built with the same seed, then copied into the flat
buffer), and every argument and input is checked as by the reference (:mod:`minivae.checks`).
"""

from __future__ import annotations

from kernels.engine import Engine
from kernels.flat import FastAdam
from minivae.ae import AE
from minivae.backend import create_ops, resolve
from minivae.vae import VAE

__all__ = ["FastVAE", "FastAE", "FastAdam"]  # FastAdam lives in kernels.flat, beside the flat parameters


class FastModel:
    """What :class:`FastVAE` and :class:`FastAE` share: a reference model's description and initial
    weights, and the engine that runs its step."""

    def _take(self, reference, backend, ops):
        """Adopt ``reference``'s checked settings, generator and initial weights; build the engine."""
        for name in ("data_dim", "latent", "hidden", "dtype", "activation", "seed", "rng", "layer_names", "params"):
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
        """Gradients of the last forward's loss: a :class:`kernels.flat.FlatParams` of views into
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
