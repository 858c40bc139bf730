"""The variational autoencoder: encoder → (μ, log σ²) → z = μ + σ ⊙ ε → decoder → logits.

Notation, fixed for the whole package
-------------------------------------
    B  batch size            D  data dimension (784 for MNIST: 28 × 28 pixels in [0, 1])
    H  hidden width          Z  latent dimension

Shapes trail the lines they describe as comments, e.g. ``# (B, Z)``.

What a VAE is, in one page
--------------------------
We want a model p(x) of images. Posit a hidden code z ∈ ℝᶻ with a simple prior p(z) = N(0, I),
and a *decoder* network that turns z into pixel probabilities: p(x | z) = Π_d Bernoulli(x_d; p_d),
p = sigmoid(decoder(z)). Then p(x) = ∫ p(x | z) p(z) dz — an integral over all codes that we
cannot compute. Maximum likelihood needs log p(x), so we bound it instead.

Take any distribution q(z | x) — the *encoder*, a network that maps x to the mean μ and the
log-variance log σ² of a diagonal Gaussian q(z | x) = N(μ, diag σ²). For every x,

    log p(x) = E_q[log p(x | z)] − KL(q(z | x) ‖ p(z)) + KL(q(z | x) ‖ p(z | x))
             ≥ E_q[log p(x | z)] − KL(q(z | x) ‖ p(z))  =:  ELBO(x),

because the last KL (to the true, unknown posterior) is ≥ 0. (Derivation: write
log p(x) = E_q[log p(x, z) − log q(z | x)] + E_q[log q(z | x) − log p(z | x)] using
p(x, z) = p(z | x) p(x), and split log p(x, z) = log p(x | z) + log p(z).) The bound is tight
exactly when q matches the true posterior, so maximising the ELBO over both networks both fits
the data and makes the encoder a good approximate posterior.

The two terms, per example (see :mod:`minivae.losses` for each formula and its gradient):

- reconstruction: −E_q[log p(x | z)] = E_q[Σ_pixels softplus(a) − x·a] with logits a = decoder(z),
  estimated with one sample z ~ q(z | x);
- regulariser: KL(N(μ, σ²) ‖ N(0, I)) = Σ_latents ½(μ² + σ² − log σ² − 1), in closed form.

We minimise the batch mean of the *negative* ELBO:

    L = (1/B) Σ_b [ Σ_pixels ℓ(a_b, x_b) + β · Σ_latents KL_b ],      β = 1 for the true ELBO.

Why the reparameterization makes sampling differentiable
--------------------------------------------------------
The reconstruction term is an expectation over z ~ N(μ, σ²), and μ, σ depend on the encoder's
weights. "Draw a sample" has no derivative. But the same random variable can be written as

    z = μ + σ ⊙ ε,    ε ~ N(0, I),    σ = exp(½ log σ²).

Now the randomness is in ε, which does not depend on any weight, and z is an ordinary
differentiable function of μ and log σ²: ∂z/∂μ = 1 and ∂z/∂log σ² = ½ σ ⊙ ε. Gradients flow from
the decoder's loss through z into the encoder by the chain rule, like through any other layer,
and the one-sample gradient is an unbiased estimate of the gradient of the expectation
(Kingma & Welling 2013, §2.4).

The network
-----------
Encoder: Dense(D → H₁) → ReLU → … → Dense(H_last → 2Z); the first Z outputs are μ, the last Z
are log σ². Decoder: Dense(Z → H_last) → ReLU → … → Dense(H₁ → D) giving the logits a; the
hidden widths are mirrored. Parameters are named ``enc0.W``, ``enc0.b``, …, ``dec0.W``, … in
layer order, encoder first. The two MLPs, and what uses only the decoder or the parameters, are
shared with the plain autoencoder (:mod:`minivae.ae`) in :mod:`minivae.mlp`.

Can Z exceed D? Nothing in the math forbids it. The KL term charges every latent that carries
information, and units the decoder does not use drift back to the prior (q = N(0, 1): μ = 0, σ = 1)
as training goes on — slowly: on the full 60,000 digits at Z = 1000, 1000 of 1000 units are active
after 10 epochs and about 90 after 30. How many are active is measured by
:func:`minivae.metrics.active_units`; the latent-size study in :mod:`minivae.sweep` measures it
across Z (units and directions).
"""

from __future__ import annotations

import numpy as np

from minivae import checks, losses
from minivae.mlp import MLPModel, mlp_backward, mlp_forward


class VAE(MLPModel):
    """A VAE with Bernoulli decoder and diagonal-Gaussian encoder (see the module docstring).

    Parameters
    ----------
    data_dim : D, the number of pixels.
    latent : Z, the number of latent dimensions (any positive integer, also Z > D).
    hidden : widths of the encoder's hidden layers; the decoder mirrors them.
    seed : seeds the initial weights and the noise ε drawn by :meth:`forward` (the same seed
        gives the same run on one backend; every fast backend makes ε with its own Philox
        generator, keyed from this one, so its noise differs from the numpy backend's).
    dtype : "float32" (default) or "float64".
    beta : weight of the KL term (1 gives the ELBO).
    activation : "relu" (default) or "tanh".
    backend : "numpy" (this readable code), or a fast backend from :mod:`minivae.backend`
        ("cpu-fused", "cupy", "numba-cuda", "auto"), which runs the same math through kernels.
    """

    def __init__(
        self,
        data_dim=784,
        latent=20,
        hidden=(512,),
        seed=0,
        dtype="float32",
        beta=1.0,
        activation="relu",
        backend="numpy",
    ):
        self.settings(data_dim, latent, hidden, dtype, activation)  # D, Z, widths, dtype, activation
        self.beta = checks.real("beta", beta, low=0)
        # Encoder: D → hidden → 2Z = [μ | log σ²]; decoder: Z → mirrored hidden → D logits.
        self.build(seed, 2 * self.latent, backend)

    # ----------------------------------------------------------------------------------------
    # The negative ELBO and its gradient
    # ----------------------------------------------------------------------------------------

    def forward(self, x, eps=None):
        """The batch mean of the negative ELBO (see the module docstring).

        x : (B, D) values in [0, 1].  eps : optional (B, Z) standard-normal noise; drawn from the
        model's generator when omitted. Keeps what :meth:`backward` needs.
        """
        x = checks.batch("x", x, self.data_dim, self.dtype, unit=True)  # (B, D)
        B, Z = x.shape[0], self.latent
        if eps is None:
            eps = self.rng.standard_normal((B, Z)).astype(self.dtype)  # (B, Z)
        eps = checks.batch("eps", eps, Z, self.dtype, B=B)

        h, enc_caches = mlp_forward(self.encoder, x)  # (B, 2Z)
        mu, logvar = h[:, :Z], h[:, Z:]  # (B, Z) each
        z = losses.reparameterize(mu, logvar, eps)  # (B, Z)
        logits, dec_caches = mlp_forward(self.decoder, z)  # (B, D)

        recon = losses.bernoulli_nll(logits, x)  # (B,)
        kl = losses.gaussian_kl(mu, logvar)  # (B,)
        loss = (recon + self.beta * kl).mean()

        self._cache = (x, eps, mu, logvar, logits, enc_caches, dec_caches)
        self.last = {"loss": float(loss), "recon": float(recon.mean()), "kl": float(kl.mean())}
        return float(loss)

    def backward(self):
        """Gradients of the last :meth:`forward`'s loss: a dict with the keys and shapes of params."""
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        x, eps, mu, logvar, logits, enc_caches, dec_caches = self._cache
        B = x.shape[0]
        per_example = np.full(B, 1.0 / B, dtype=self.dtype)  # ∂L/∂(loss_b) = 1/B   (B,)
        grads = {}

        # Reconstruction: ∂L/∂a = (sigmoid(a) − x) / B, then back through the decoder to z.
        dlogits = losses.bernoulli_nll_backward(per_example, logits, x)  # (B, D)
        dz = mlp_backward(self.decoder, dec_caches, dlogits, self.layer_names[len(self.encoder) :], grads)  # (B, Z)

        # z = μ + σ ⊙ ε: the path through the sample ...
        dmu, dlogvar = losses.reparameterize_backward(dz, logvar, eps)  # (B, Z) each
        # ... plus the KL term's own gradient, weighted by β / B.
        dmu_kl, dlogvar_kl = losses.gaussian_kl_backward(self.beta * per_example, mu, logvar)
        dh = np.concatenate([dmu + dmu_kl, dlogvar + dlogvar_kl], axis=1)  # (B, 2Z)

        mlp_backward(self.encoder, enc_caches, dh, self.layer_names[: len(self.encoder)], grads)
        return {k: grads[k] for k in self.params}  # in layer order

    # ----------------------------------------------------------------------------------------
    # Using the trained model
    # ----------------------------------------------------------------------------------------

    def encode(self, x):
        """μ and log σ² of q(z | x), NumPy arrays on every backend.     x: (B, D) → mu, logvar: (B, Z)"""
        h, _ = mlp_forward(self.encoder, checks.batch("x", x, self.data_dim, self.dtype, unit=True))
        return h[:, : self.latent], h[:, self.latent :]

    # decode_logits, decode, reconstruct (decodes μ), sample, num_params, get_params and set_params
    # are shared with the autoencoder: see minivae.mlp.MLPModel.
