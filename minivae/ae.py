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
from minivae.mlp import MLPModel, mlp_backward, mlp_forward


class AE(MLPModel):
    """Deterministic autoencoder with the API of :class:`minivae.VAE` where it applies (what the two
    share is :class:`minivae.mlp.MLPModel`: decode, reconstruct, sample, the parameters)."""

    def __init__(
        self, data_dim=784, latent=20, hidden=(512,), seed=0, dtype="float32", activation="relu", backend="numpy"
    ):
        self.settings(data_dim, latent, hidden, dtype, activation)
        self.build(seed, self.latent, backend)  # code z: Z outputs, no σ

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
