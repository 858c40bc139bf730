"""What the VAE (:mod:`minivae.vae`) and the plain autoencoder (:mod:`minivae.ae`) share.

Both are an encoder MLP and a decoder MLP (hidden widths mirrored) with a Bernoulli decoder; they
differ in what the encoder outputs — 2Z numbers [μ | log σ²] for the VAE, the code z (Z numbers)
for the autoencoder — and in the loss. :class:`MLPModel` holds what does not depend on that
difference: building the two MLPs, the fast sibling a fast backend gives (:mod:`minivae.backend`),
and the methods that use only the decoder or the parameters. Shapes as in :mod:`minivae.vae`.
"""

from __future__ import annotations

import numpy as np

from minivae import checks, losses
from minivae.backend import model_class, resolve
from minivae.layers import ACTIVATIONS, Dense, identity_backward, identity_forward


class MLPModel:
    """The part of :class:`minivae.VAE` and :class:`minivae.ae.AE` that does not depend on what the
    encoder outputs. A subclass's constructor calls :meth:`settings`, checks its own arguments,
    then calls :meth:`build`."""

    def __new__(cls, *args, **kwargs):
        """``VAE(..., backend="cpu-fused")`` (or any fast backend; the same for ``AE``) gives the
        fast sibling, :class:`kernels.fast.FastVAE` or ``FastAE``: a model with this API whose step
        runs through kernels (see :mod:`minivae.backend`)."""
        return super().__new__(model_class(cls, args, kwargs))

    def settings(self, data_dim, latent, hidden, dtype, activation):
        """Check and keep D, Z, the hidden widths, the dtype and the activation."""
        data_dim, latent, hidden, self.dtype = sizes(data_dim, latent, hidden, dtype)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: choose from {sorted(ACTIVATIONS)}")
        self.data_dim, self.latent, self.hidden = data_dim, latent, hidden
        self.activation = activation

    def build(self, seed, code_dim, backend):
        """Seed the generators and build the encoder D → hidden → ``code_dim`` and the decoder
        Z → mirrored hidden → D logits, in ``self.dtype``."""
        self.seed = checks.integer("seed", seed, minimum=0)
        init_rng = np.random.default_rng([self.seed, 0])
        self.rng = np.random.default_rng([self.seed, 1])  # the noise ε of forward() and of sample()
        self.encoder, self.decoder, self.layer_names, self.params = build_mlps(
            self.data_dim, code_dim, self.latent, self.hidden, ACTIVATIONS[self.activation], init_rng, self.dtype
        )
        self._cache = None
        self.last = {}  # batch means of the last forward: "loss", "recon", "kl"
        self.backend = resolve(backend, self.dtype)  # "numpy": a fast name gives the sibling instead

    def decode_logits(self, z):
        """The decoder's logits a, a NumPy array on every backend.     z: (B, Z) → (B, D)"""
        logits, _ = mlp_forward(self.decoder, checks.batch("z", z, self.latent, self.dtype))
        return logits

    def decode(self, z):
        """Pixel probabilities sigmoid(decoder(z)).     z: (B, Z) → (B, D)"""
        return losses.sigmoid(self.decode_logits(z))

    def reconstruct(self, x):
        """Decode the code of x (the posterior mean μ for the VAE).     x: (B, D) → (B, D)"""
        return self.decode(self.encode(x)[0])

    def sample(self, n, rng=None):
        """n images from random codes: z ~ N(0, I) (the VAE's prior), decoded to pixel
        probabilities.  → (n, D)"""
        rng = self.rng if rng is None else rng
        z = rng.standard_normal((checks.integer("n", n), self.latent)).astype(self.dtype)  # (n, Z)
        return self.decode(z)

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def get_params(self):
        """A host (NumPy) copy of every parameter, for checkpoints and metrics."""
        return {k: p.copy() for k, p in self.params.items()}

    def set_params(self, values):
        """Overwrite every parameter in place from a dict of host arrays."""
        values = checks.params("values", values, self.params)
        for k, p in self.params.items():
            p[...] = values[k]


# --------------------------------------------------------------------------------------------
# An MLP is a list of (Dense, activation or None) pairs
# --------------------------------------------------------------------------------------------


def sizes(data_dim, latent, hidden, dtype):
    """The checked sizes of a model: (D, Z, hidden widths as a tuple, dtype)."""
    data_dim = checks.integer("data_dim", data_dim)
    latent = checks.integer("latent", latent)
    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
        raise ValueError(f"hidden must be a sequence of widths like (512,), got {hidden!r}")
    hidden = tuple(checks.integer("hidden width", h) for h in hidden)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return data_dim, latent, hidden, dtype


def build_mlps(data_dim, code_dim, latent, hidden, act, init_rng, dtype):
    """The encoder D → H₁ → … → code_dim and the decoder Z → … → H₁ → D (hidden widths
    mirrored): hidden layers Dense + ``act`` (initialised for it), output layers linear (Glorot).

    Returns (encoder, decoder, layer names, params): ``params`` maps "<layer>.W" (fan_in, fan_out)
    and "<layer>.b" (fan_out,) to the layers' own arrays, encoder first, in layer order.
    """

    def mlp(widths, out_dim):
        net = [(Dense(i, o, init_rng, act.init, dtype), act()) for i, o in zip(widths[:-1], widths[1:], strict=True)]
        return net + [(Dense(widths[-1], out_dim, init_rng, "glorot", dtype), None)]

    encoder = mlp((data_dim,) + hidden, code_dim)
    decoder = mlp((latent,) + hidden[::-1], data_dim)
    names = [f"enc{i}" for i in range(len(encoder))] + [f"dec{i}" for i in range(len(decoder))]
    params = {}
    for name, (dense, _) in zip(names, encoder + decoder, strict=True):
        params[name + ".W"] = dense.W  # (fan_in, fan_out)
        params[name + ".b"] = dense.b  # (fan_out,)
    return encoder, decoder, names, params


def mlp_forward(net, h):
    """h through every (Dense, activation) pair of ``net``: the output and each layer's caches."""
    caches = []
    for dense, act in net:
        a, dense_cache = dense.forward(h)
        h, act_cache = act.forward(a) if act is not None else identity_forward(a)
        caches.append((dense_cache, act_cache))
    return h, caches


def mlp_backward(net, caches, dh, names, grads):
    """From ∂L/∂(output) back through ``net``: each layer's ∂W, ∂b into ``grads`` (under
    "<name>.W", "<name>.b"); returns ∂L/∂(input)."""
    for (dense, act), (dense_cache, act_cache), name in reversed(list(zip(net, caches, names, strict=True))):
        da = act.backward(dh, act_cache)[0] if act is not None else identity_backward(dh, act_cache)
        dh, g = dense.backward(da, dense_cache)
        grads[name + ".W"], grads[name + ".b"] = g["W"], g["b"]
    return dh
