"""A plain (deterministic) autoencoder: the VAE without sampling and without the KL term.

Same MLPs and the same Bernoulli reconstruction loss as :class:`minivae.VAE`, so the two differ in
exactly what makes a VAE variational (shapes as in :mod:`minivae.vae`):

    z = encoder(x)                                (B, Z)      — a point, not a distribution
    a = decoder(z)                                (B, D)
    L = (1/B) Σ_b Σ_pixels softplus(a) − x·a      no KL: nothing ties the codes to N(0, I)

Its gradient is the VAE's with the sampling path and the KL gone: ∂L/∂a = (sigmoid(a) − x)/B,
then back through the decoder to ∂L/∂z, and through the encoder.

Because nothing shapes the code distribution, decoding random codes z ~ N(0, I) is not expected to
give digits — the contrast the latent-size study draws at Z = 1000.
"""

from __future__ import annotations

import numpy as np

from minivae import checks, losses
from minivae.backend import model_class, resolve
from minivae.layers import ACTIVATIONS
from minivae.vae import build_mlps, mlp_backward, mlp_forward, sizes


class AE:
    """Deterministic autoencoder with the API of :class:`minivae.VAE` where it applies."""

    def __init__(
        self, data_dim=784, latent=20, hidden=(512,), seed=0, dtype="float32", activation="relu", backend="numpy"
    ):
        data_dim, latent, hidden, self.dtype = sizes(data_dim, latent, hidden, dtype)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}: choose from {sorted(ACTIVATIONS)}")
        self.data_dim, self.latent, self.hidden = data_dim, latent, hidden
        seed = checks.integer("seed", seed, minimum=0)
        self.rng = np.random.default_rng([seed, 1])
        init_rng = np.random.default_rng([seed, 0])
        self.activation = activation
        act = ACTIVATIONS[activation]
        self.encoder, self.decoder, self.layer_names, self.params = build_mlps(
            data_dim, latent, latent, hidden, act, init_rng, self.dtype
        )  # code z: Z outputs, no σ
        self._cache = None
        self.last = {}
        self.backend = resolve(backend, self.dtype)  # "numpy": a fast name gives the sibling below

    def __new__(cls, *args, **kwargs):
        """``AE(..., backend="cpu-fused")`` (or any fast backend) gives :class:`kernels.fast.FastAE`,
        which runs the same engine as the VAE's."""
        return super().__new__(model_class(cls, args, kwargs))

    def forward(self, x, eps=None):
        """Batch mean of the reconstruction loss Σ_pixels softplus(a) − x·a (``eps`` is ignored)."""
        x = checks.batch("x", x, self.data_dim, self.dtype, unit=True)  # (B, D)
        z, enc_caches = mlp_forward(self.encoder, x)  # (B, Z)
        logits, dec_caches = mlp_forward(self.decoder, z)  # (B, D)
        recon = losses.bernoulli_nll(logits, x)  # (B,)
        self._cache = (x, logits, enc_caches, dec_caches)
        loss = float(recon.mean())
        self.last = {"loss": loss, "recon": loss, "kl": 0.0}
        return loss

    def backward(self):
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        x, logits, enc_caches, dec_caches = self._cache
        B = x.shape[0]
        grads = {}
        dlogits = losses.bernoulli_nll_backward(np.full(B, 1.0 / B, self.dtype), logits, x)  # (B, D)
        n_enc = len(self.encoder)
        dz = mlp_backward(self.decoder, dec_caches, dlogits, self.layer_names[n_enc:], grads)
        mlp_backward(self.encoder, enc_caches, dz, self.layer_names[:n_enc], grads)
        return {k: grads[k] for k in self.params}

    def encode(self, x):
        """(z, None): the code, and no log-variance — the code is a point, not a distribution."""
        z, _ = mlp_forward(self.encoder, checks.batch("x", x, self.data_dim, self.dtype, unit=True))
        return z, None

    def decode_logits(self, z):
        logits, _ = mlp_forward(self.decoder, checks.batch("z", z, self.latent, self.dtype))
        return logits

    def decode(self, z):
        return losses.sigmoid(self.decode_logits(z))

    def reconstruct(self, x):
        return self.decode(self.encode(x)[0])

    def sample(self, n, rng=None):
        """Decoded random codes z ~ N(0, I): what a VAE's prior would give, for contrast."""
        rng = self.rng if rng is None else rng
        return self.decode(rng.standard_normal((checks.integer("n", n), self.latent)).astype(self.dtype))

    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    def get_params(self):
        return {k: p.copy() for k, p in self.params.items()}

    def set_params(self, values):
        values = checks.params("values", values, self.params)
        for k, p in self.params.items():
            p[...] = values[k]
