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
buffer), and every argument and input is checked as by the reference (:mod:`minivae.checks`), once,
by the public methods of :class:`FastModel`. The engine trusts what they hand it; the ops keep
only their own guards against reading or writing out of bounds (:class:`kernels.reference.Ops`).
"""

from __future__ import annotations

import numpy as np

from kernels.engine import Engine
from kernels.flat import FastAdam
from minivae import checks
from minivae.ae import AE
from minivae.backend import create_ops, resolve
from minivae.vae import VAE

__all__ = ["FastVAE", "FastAE", "FastAdam"]  # FastAdam lives in kernels.flat, beside the flat parameters


class FastModel:
    """What :class:`FastVAE` and :class:`FastAE` share: a reference model's description and initial
    weights, the engine that runs its step, and the model's public boundary — every argument of a
    public method is checked here, once, as by the reference (:mod:`minivae.checks`, the same
    messages), and handed to the engine as a device array of the model's dtype."""

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

    def _device_batch(self, name, a, width, unit=False, B=None):
        """A batch (B, width) checked by :func:`minivae.checks.batch` — shape, dtype, layout and
        values, which the kernels trust — as a C-contiguous device array of the model's dtype."""
        a = checks.batch(name, a, width, self.dtype, unit=unit, B=B, xp_convert=self._convert)
        return self.engine.ops.to_device(a) if isinstance(a, np.ndarray) else a

    def _convert(self, a):
        """A device array of another dtype or layout as a C-contiguous one of ours."""
        if not hasattr(a, "astype"):  # a Numba device array converts nothing
            raise ValueError(
                f"expected a C-contiguous {self.dtype.name} array, got {type(a).__name__} of {np.dtype(a.dtype).name}"
            )
        return a.astype(self.dtype, order="C")

    def forward(self, x, eps=None):
        x = self._device_batch("x", x, self.data_dim, unit=True)  # (B, D), checked before any kernel runs
        if eps is not None and self.engine.variational:  # the autoencoder ignores eps, as the reference
            eps = self._device_batch("eps", eps, self.latent, B=x.shape[0])  # (B, Z): the kernel reads B·Z numbers
        return self.engine.forward(x, eps)

    def backward(self):
        """Gradients of the last forward's loss: a :class:`kernels.flat.FlatParams` of views into
        the engine's flat gradient buffer (overwritten by the next backward)."""
        return self.engine.backward()

    def encode(self, x):
        return self.engine.encode(self._device_batch("x", x, self.data_dim, unit=True))

    def decode_logits(self, z):
        return self.engine.decode_logits(self._device_batch("z", z, self.latent))

    def noise_key(self):
        """The key of one step's noise: two words from the model's generator (see the engine)."""
        return self.engine.noise_key()

    def get_params(self):
        return self.engine.get_params()

    def set_params(self, values):
        return self.engine.set_params(checks.params("values", values, self.params))


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
