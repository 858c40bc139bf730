"""The three pieces of the ELBO, each with its gradient written out (and, at the end, the Gaussian
reconstruction term of the linear VAE, :mod:`minivae.linear`).

Shapes: B batch, D data dimension, Z latent dimension (see :mod:`minivae.vae`).
Each loss returns one number per example (shape (B,)); the model averages them over the batch.

Bernoulli negative log-likelihood from logits
----------------------------------------------
The decoder outputs logits a (B, D); the pixel probabilities are p = sigmoid(a) = 1 / (1 + e^(−a)).
For a target x ∈ [0, 1] the per-pixel negative log-likelihood (binary cross-entropy) is

    ℓ(a, x) = −x log p − (1 − x) log(1 − p).

Using log p = −softplus(−a) and log(1 − p) = −softplus(a), with softplus(a) = log(1 + eᵃ),
and softplus(a) − softplus(−a) = a:

    ℓ(a, x) = x·softplus(−a) + (1 − x)·softplus(a) = softplus(a) − x·a.

softplus is evaluated as max(a, 0) + log1p(e^(−|a|)), which never overflows; log(sigmoid(a))
would give log(0) = −∞ for a ≈ −1000. Derivative: softplus′(a) = sigmoid(a), so

    ∂ℓ/∂a = sigmoid(a) − x.

KL divergence between the posterior N(μ, σ²) and the prior N(0, I)
------------------------------------------------------------------
For one latent dimension, with v = log σ²,

    KL = ∫ q log(q / p) = ½ (μ² + σ² − log σ² − 1) = ½ (μ² + eᵛ − v − 1),

summed over the Z dimensions. Derivatives:

    ∂KL/∂μ = μ,        ∂KL/∂log σ² = ½ (σ² − 1).

The reparameterization
-----------------------
z = μ + σ ⊙ ε with σ = exp(½ log σ²) and ε ~ N(0, I) drawn outside the model. Derivatives:

    ∂z/∂μ = 1,         ∂z/∂log σ² = ½ σ ⊙ ε     (since ∂σ/∂log σ² = ½ σ).
"""

from __future__ import annotations

import numpy as np


def softplus(a):
    """softplus(a) = log(1 + eᵃ) = max(a, 0) + log1p(e^(−|a|)), finite for every finite a."""
    return np.maximum(a, 0) + np.log1p(np.exp(-np.abs(a)))


def sigmoid(a):
    """sigmoid(a) = 1 / (1 + e^(−a)), computed without overflow for large |a|."""
    e = np.exp(-np.abs(a))  # in (0, 1]
    return np.where(a >= 0, 1 / (1 + e), e / (1 + e))


# --------------------------------------------------------------------------------------------
# Reconstruction term
# --------------------------------------------------------------------------------------------


def bernoulli_nll_terms(logits, x):
    """ℓ(a, x) = softplus(a) − x·a per pixel: −log Bernoulli(x; sigmoid(a)).     (…, D) → (…, D)"""
    return softplus(logits) - x * logits


def bernoulli_nll(logits, x):
    """Σ_pixels ℓ(a, x) with ℓ = softplus(a) − x·a.     logits, x: (B, D) → (B,)"""
    return bernoulli_nll_terms(logits, x).sum(axis=1)


def bernoulli_nll_backward(dloss, logits, x):
    """∂L/∂a = ∂L/∂ℓ_b · (sigmoid(a) − x).     dloss: (B,) → (B, D)"""
    return dloss[:, None] * (sigmoid(logits) - x)


# --------------------------------------------------------------------------------------------
# KL term
# --------------------------------------------------------------------------------------------


def gaussian_kl_terms(mu, logvar):
    """KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − log σ² − 1) per latent.     (…, Z) → (…, Z)"""
    return 0.5 * (mu * mu + np.exp(logvar) - logvar - 1)


def gaussian_kl(mu, logvar):
    """Σ_latents ½ (μ² + σ² − log σ² − 1).     mu, logvar: (B, Z) → (B,)"""
    return gaussian_kl_terms(mu, logvar).sum(axis=1)


def gaussian_kl_backward(dloss, mu, logvar):
    """∂KL/∂μ = μ,  ∂KL/∂log σ² = ½ (σ² − 1), each times ∂L/∂KL_b.    dloss: (B,) → 2 × (B, Z)"""
    dmu = dloss[:, None] * mu
    dlogvar = dloss[:, None] * 0.5 * (np.exp(logvar) - 1)
    return dmu, dlogvar


# --------------------------------------------------------------------------------------------
# Reparameterization
# --------------------------------------------------------------------------------------------


def reparameterize(mu, logvar, eps):
    """z = μ + exp(½ log σ²) ⊙ ε.     mu, logvar, eps: (B, Z) → z: (B, Z)

    The randomness lives in ε, which does not depend on the parameters, so z is a
    differentiable function of μ and log σ² (see :mod:`minivae.vae`).
    """
    return mu + np.exp(0.5 * logvar) * eps


def reparameterize_backward(dz, logvar, eps):
    """∂L/∂μ = ∂L/∂z,   ∂L/∂log σ² = ∂L/∂z ⊙ ½ σ ⊙ ε.     → dmu, dlogvar: (B, Z)"""
    dmu = dz
    dlogvar = dz * 0.5 * np.exp(0.5 * logvar) * eps
    return dmu, dlogvar


# --------------------------------------------------------------------------------------------
# Gaussian reconstruction term (continuous pixels, fixed variance)
# --------------------------------------------------------------------------------------------


def gaussian_nll(mean, x, var):
    """−log N(x; m, σ² I) = Σ_pixels ½ (log 2πσ² + (x − m)² / σ²).     mean, x: (B, D) → (B,)

    The negative log-density of a Gaussian decoder with mean m and a *fixed* variance σ² (``var``,
    a positive number), for pixels read as continuous values. Unlike the Bernoulli ℓ it is not
    bounded below: a density can exceed 1, so for small σ² the log-likelihood is positive.
    """
    r = x - mean  # (B, D)
    return 0.5 * (np.log(2 * np.pi * var) + r * r / var).sum(axis=1)


def gaussian_nll_backward(dloss, mean, x, var):
    """∂/∂m of ½ (x − m)² / σ² is (m − x) / σ², times ∂L/∂ℓ_b.     dloss: (B,) → (B, D)

    σ² is a fixed hyperparameter here, so there is no gradient for it.
    """
    return dloss[:, None] * (mean - x) / var
