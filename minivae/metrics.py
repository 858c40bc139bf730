"""What a trained VAE is measured by: the ELBO on held-out data, active units and active
directions, per-dimension KL, an importance-weighted estimate of the log-likelihood, and how well
simple classifiers (logistic regression, nearest neighbours) read the digit from the codes.

Shapes: N examples, D data dimension, Z latents, K importance samples.
Every function works with any backend: it calls only ``vae.encode`` and ``vae.decode_logits``,
which return NumPy arrays on every backend. Noise comes from the ``rng`` passed in, never from the model's
own generator, so evaluating a model does not change the course of its training.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import numpy as np

from minivae.losses import bernoulli_nll_terms, gaussian_kl_terms

LOG_2PI = math.log(2 * math.pi)
ACTIVE_THRESHOLD = 0.01  # Burda et al. 2015: a unit is active when Var_x μ_u(x) exceeds this


def _chunks(n, size):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def posterior_means(vae, x, batch_size=1000):
    """μ(x) and log σ²(x) for every example.     x: (N, D) → 2 × (N, Z)

    For a model whose code is a point (:class:`minivae.ae.AE`, whose ``encode`` gives (z, None))
    μ is the code and log σ² is None.
    """
    mus, logvars = [], []
    for s in _chunks(len(x), batch_size):
        mu, logvar = vae.encode(x[s])
        mus.append(mu)
        logvars.append(logvar)
    return np.concatenate(mus), None if logvars[0] is None else np.concatenate(logvars)


def active_units(mu, threshold=ACTIVE_THRESHOLD):
    """Active latent units (Burda et al. 2015, §5.2).

    A_u = Cov_x(E_{q(z|x)}[z_u]) = Var over examples of μ_u(x); unit u is active when A_u > threshold.
    A unit the model does not use has q(z_u | x) = prior for every x, so μ_u(x) ≈ 0 and A_u ≈ 0.

    mu: (N, Z) posterior means → (count, A of shape (Z,))
    """
    A = np.asarray(mu, dtype=np.float64).var(axis=0)  # (Z,)
    return int((A > threshold).sum()), A


def kl_per_dim(mu, logvar):
    """Mean over examples of each latent's KL(N(μ_u, σ_u²) ‖ N(0, 1)).     2 × (N, Z) → (Z,)

    Σ_u of the result is the model's average KL term; sorted, it shows how many latents carry
    information (the rest sit at ≈ 0 nats).
    """
    mu = np.asarray(mu, dtype=np.float64)
    logvar = np.asarray(logvar, dtype=np.float64)
    return gaussian_kl_terms(mu, logvar).mean(axis=0)


def evaluate(vae, x, rng, batch_size=1000, posterior=None):
    """Negative ELBO on x with one posterior sample per example, and its two terms (batch means).

    → {"loss": −ELBO, "recon": E[Σ_pixels ℓ], "kl": E[KL]} (per example, in nats), with β = 1: the
    true ELBO whatever β the model was trained with. ``posterior``: (μ, log σ²) of x from
    :func:`posterior_means`, when the caller has them, so that x is not encoded again.
    """
    tot_recon = tot_kl = 0.0
    for s in _chunks(len(x), batch_size):
        xb = np.asarray(x[s], dtype=np.float64)
        mu, logvar = (posterior[0][s], posterior[1][s]) if posterior is not None else vae.encode(x[s])
        mu, logvar = np.asarray(mu, dtype=np.float64), np.asarray(logvar, dtype=np.float64)
        eps = rng.standard_normal(mu.shape)
        z = mu + np.exp(0.5 * logvar) * eps
        logits = np.asarray(vae.decode_logits(z.astype(vae.dtype)), dtype=np.float64)
        tot_recon += bernoulli_nll_terms(logits, xb).sum()
        tot_kl += gaussian_kl_terms(mu, logvar).sum()
    n = len(x)
    return {"loss": float(tot_recon + tot_kl) / n, "recon": float(tot_recon) / n, "kl": float(tot_kl) / n}


CHECK_SAMPLES = 20_000  # K' · digits per batch of the larger-K check of an estimate (--iw-check)


def check_batch(k):
    """Digits per batch of the --iw-check estimate with K' = ``k`` samples: about
    :data:`CHECK_SAMPLES` samples at a time, at least one digit."""
    return max(1, CHECK_SAMPLES // k)


def iw_log_likelihood(vae, x, k, rng, batch_size=100):
    """Importance-weighted estimate of log p(x) (Burda et al. 2015, eq. 8), averaged over x.

        log p(x) ≥ L_k = E[ log (1/K) Σ_i w_i ],   w_i = p(x | z_i) p(z_i) / q(z_i | x),  z_i ~ q(z | x)

    with, per example (sums over pixels d and latents u),
        log p(x | z) = −Σ_d (softplus(a_d) − x_d a_d),      a = decoder(z)
        log p(z)     = −½ Σ_u (log 2π + z_u²)
        log q(z | x) = −½ Σ_u (log 2π + log σ²_u + ε_u²),   z = μ + σ ⊙ ε.
    K = 1 is the ELBO; L_k grows with K towards log p(x). log Σ w is computed as a log-sum-exp.

    x: (N, D) → mean over examples of L_k, in nats (a log-likelihood: negative; −L_k is the NLL).
    """
    k = int(k)
    if k < 1:
        raise ValueError("k must be at least 1")
    total = 0.0
    for s in _chunks(len(x), batch_size):
        xb = np.asarray(x[s], dtype=np.float64)  # (n, D)
        n = len(xb)
        mu, logvar = (np.asarray(a, dtype=np.float64) for a in vae.encode(x[s]))  # (n, Z)
        eps = rng.standard_normal((k, n, mu.shape[1]))  # (K, n, Z)
        z = mu + np.exp(0.5 * logvar) * eps  # (K, n, Z)
        logits = vae.decode_logits(z.reshape(k * n, -1).astype(vae.dtype))
        logits = np.asarray(logits, dtype=np.float64).reshape(k, n, -1)  # (K, n, D)
        log_px_z = -bernoulli_nll_terms(logits, xb).sum(axis=2)  # (K, n)
        log_pz = -0.5 * (LOG_2PI + z * z).sum(axis=2)  # (K, n)
        log_qz = -0.5 * (LOG_2PI + logvar + eps * eps).sum(axis=2)  # (K, n)
        log_w = log_px_z + log_pz - log_qz  # (K, n)
        m = log_w.max(axis=0)  # (n,)
        total += (m + np.log(np.exp(log_w - m).mean(axis=0))).sum()
    return float(total) / len(x)


def latent_directions(mu, threshold=ACTIVE_THRESHOLD):
    """The directions of latent space the encoder's means vary along.     mu: (N, Z)

        C = Cov_x[μ(x)]  (Z, Z),   C = U diag(λ) Uᵀ,   λ₁ ≥ λ₂ ≥ … ≥ 0

    Burda's unit count asks whether each *coordinate* μ_u varies. A direction count asks whether
    the cloud of means varies along *any* axis: λ_i is the variance of μ along eigenvector u_i,
    and the count is #{λ_i > threshold}, the same threshold as :func:`active_units`. The two agree
    when the informative directions are coordinate axes; when a few directions are rotated across
    many coordinates, every unit looks active but only those few directions exist. The
    participation ratio (Σλ)² / Σλ² is a threshold-free count: k for k equal eigenvalues, less
    when the variance is unevenly spread.

    → {"directions": count, "participation_ratio": PR, "eigenvalues": λ (Z,) descending}
    """
    mu = np.asarray(mu, dtype=np.float64)
    centred = mu - mu.mean(axis=0)
    cov = centred.T @ centred / max(len(mu), 1)  # (Z, Z)
    lam = np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)  # (Z,) descending
    total, squares = lam.sum(), (lam * lam).sum()
    pr = float(total * total / squares) if squares > 0 else 0.0
    return {"directions": int((lam > threshold).sum()), "participation_ratio": pr, "eigenvalues": lam}


def principal_directions(mu, k):
    """The top-k eigenvectors of Cov_x[μ(x)] and their variances.     mu: (N, Z) → (Z, k), (k,)

    Column i of the first array is the unit vector u_i along which the posterior means vary most
    after u₁ … u_{i−1}; the second holds λ_i, the variance of μ along u_i.
    """
    mu = np.asarray(mu, dtype=np.float64)
    centred = mu - mu.mean(axis=0)
    lam, vecs = np.linalg.eigh(centred.T @ centred / max(len(mu), 1))
    order = np.argsort(lam)[::-1][:k]
    return vecs[:, order], np.clip(lam[order], 0.0, None)


def probe_accuracy(train_codes, train_y, test_codes, test_y, k=5):
    """How much of the digit's class a code carries, read out two ways (scikit-learn):

    - a multinomial logistic-regression probe (``LogisticRegression``, L-BFGS, L2 with C = 1) fitted
      on the standardised codes of the training digits and scored on the test digits' codes: what
      a *linear* read-out finds;
    - k-nearest-neighbour accuracy (k = 5, Euclidean, on the codes as they are): what the code's
      *geometry* keeps — whether digits of one class sit near each other.

    train_codes: (N, Z), test_codes: (M, Z) → {"probe_logreg": accuracy, "probe_knn": accuracy}
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    train_codes = np.asarray(train_codes, dtype=np.float64)
    test_codes = np.asarray(test_codes, dtype=np.float64)
    scaler = StandardScaler().fit(train_codes)
    logreg = LogisticRegression(max_iter=500, tol=1e-4)
    with np.errstate(all="ignore"), _quiet_convergence():
        logreg.fit(scaler.transform(train_codes), train_y)
    linear = float(logreg.score(scaler.transform(test_codes), test_y))
    knn = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(train_codes, train_y)
    return {"probe_logreg": linear, "probe_knn": float(knn.score(test_codes, test_y))}


@contextlib.contextmanager
def _quiet_convergence():
    """scikit-learn's ConvergenceWarning is not printed (the iteration cap is stated above)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield
