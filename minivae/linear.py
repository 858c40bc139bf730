"""The linear Gaussian VAE, and its exact answer: probabilistic PCA.

Every other model here is judged by curves; this one has a theorem. With a linear decoder, a
Gaussian likelihood of fixed variance and a linear encoder, the best ELBO is known in closed form
(Tipping & Bishop 1999; Lucas, Tucker, Grosse & Norouzi 2019, "Don't Blame the ELBO!"), so what
"more latents than pixels" does can be predicted exactly and checked against training.

Shapes: B batch, N examples, D pixels (784), Z latents. Formulas use column vectors; the code keeps
examples as rows, so W z + b is ``z @ W.T + b`` and V x + c is ``x @ V.T + c``.

The model
---------
    p(z)     = N(0, I)                       (Z,)
    p(x | z) = N(W z + b, σ² I)              W (D, Z), b (D,), σ² FIXED: a hyperparameter, not learned
    q(z | x) = N(V x + c, diag s²)           V (Z, D), c (Z,), log s² (Z,)

The encoder's variance s² is one learned number per latent, the same for every x (no log-variance
head): for this model the true posterior's covariance does not depend on x either (below), so
nothing is lost. Pixels are grey values in [0, 1] read as continuous numbers, so log-likelihoods
are log-*densities*: with small σ² they are positive (nats per digit, not comparable with the
Bernoulli models' numbers).

The ELBO, exactly
-----------------
With z = μ + s ⊙ ε, E[ε] = 0 and E[ε εᵀ] = I, a linear decoder makes the expectation over q exact:

    E_q ‖x − W z − b‖² = ‖x − W μ − b‖² + Σ_u s_u² ‖w_u‖²          (w_u: column u of W)

so, per example, with μ = V x + c and m = W μ + b,

    −ELBO(x) = ½ D log 2πσ² + ‖x − m‖² / 2σ²          Gaussian NLL at the mean (losses.gaussian_nll)
             + Σ_u s_u² ‖w_u‖² / 2σ²                   the decoder's spread of q's noise
             + Σ_u ½ (μ_u² + s_u² − log s_u² − 1)      KL(q ‖ p), as in losses.gaussian_kl.

``estimator="exact"`` (the default, used for training here) minimises this formula;
``estimator="sample"`` uses one draw z = μ + s ⊙ ε instead, like :class:`minivae.VAE` (unbiased
for the same loss, but noisy).

Gradients of L = (1/B) Σ_b −ELBO(x_b), exact estimator; R = (M − X) / (σ² B), M = μ Wᵀ + b (B, D):

    ∂L/∂W      = Rᵀ μ + W diag(s²) / σ²             (D, Z)
    ∂L/∂b      = Σ_b R_b                            (D,)
    ∂L/∂μ      = R W + μ / B                        (B, Z)
    ∂L/∂V      = (∂L/∂μ)ᵀ X                          (Z, D)
    ∂L/∂c      = Σ_b ∂L/∂μ_b                          (Z,)
    ∂L/∂log s² = s² ⊙ ‖w_u‖² / 2σ² + ½ (s² − 1)      (Z,)

Sample estimator: M = z Wᵀ + b with z = μ + s ⊙ ε; then ∂L/∂W = Rᵀ z, ∂L/∂z = R W,
∂L/∂μ = ∂L/∂z + μ / B, ∂L/∂log s² = Σ_b ½ s ⊙ ε ⊙ ∂L/∂z_b + ½ (s² − 1); no trace term.

The optimum: probabilistic PCA
------------------------------
The model's marginal is p(x) = N(b, C) with C = W Wᵀ + σ² I. Let the training covariance be
S = (1/N) Σ_n (x_n − x̄)(x_n − x̄)ᵀ = U Λ Uᵀ with λ₁ ≥ … ≥ λ_D ≥ 0. Maximum likelihood gives
(Tipping & Bishop 1999)

    b = x̄,    W = U_q (Λ_q − σ² I)^½ R,    q = min(Z, k),    k = #{i : λ_i > σ²},

with the other Z − q columns of W zero. C then has the eigenvectors U and the eigenvalues λ_i
(i ≤ q) and σ² (i > q), so with y = Uᵀ(x − x̄)

    log p(x) = −½ [D log 2π + Σ_{i≤q} log λ_i + (D − q) log σ² + Σ_{i≤q} y_i²/λ_i + Σ_{i>q} y_i²/σ²],

and its mean over the training digits (where the mean of y_i² is λ_i) is

    −½ [D log 2π + Σ_{i≤q} log λ_i + (D − q) log σ² + q + Σ_{i>q} λ_i / σ²].

Directions whose variance λ_i does not exceed the noise σ² are explained as noise: no latent is
spent on them, whatever Z is.

The ELBO reaches this value (Lucas et al. 2019). The true posterior is
p(z | x) = N(M⁻¹Wᵀ(x − b), σ² M⁻¹) with M = WᵀW + σ² I: Gaussian, linear in x, with a covariance
that does not depend on x. For R = I, M = diag(λ₁ … λ_q, σ², …, σ²) is diagonal, so the encoder

    V = M⁻¹ Wᵀ,    c = −V b,    s² = σ² diag(M⁻¹)

*is* the true posterior, the KL to it is 0, and ELBO(x) = log p(x) for every x. (Other rotations R
give the same p(x) but a non-diagonal posterior; the ELBO prefers R = I up to the order and signs of
the latents.) What each latent does at that optimum:

    i ≤ q:  μ_i = (λ_i − σ²)^½ y_i / λ_i,   Var_x μ_i = 1 − σ²/λ_i,   s_i² = σ²/λ_i,
            mean KL_i = ½ log(λ_i / σ²)
    i > q:  w_i = 0, μ_i = 0, s_i² = 1: q(z_i | x) = p(z_i) for every x — the unit has collapsed.

So with Z > D at least Z − D units must collapse, and in fact Z − k do, k being the number of
directions of the data that stand above the noise floor σ². Burda's active-unit count
(Var_x μ_u > 0.01, :func:`minivae.metrics.active_units`) counts #{i ≤ q : 1 − σ²/λ_i > 0.01}.

The command
-----------
``python -m minivae.linear`` trains this model on MNIST grey values and compares it with the
closed form above; the command, its summary table and its figure are :mod:`minivae.linear_cli`.
"""

from __future__ import annotations

import contextlib
import math
import sys

import numpy as np

from minivae import loop, losses, metrics
from minivae.optim import Adam

LOG_2PI = math.log(2 * math.pi)
COLLAPSE_KL = 0.01  # a unit whose mean KL(q(z_u | x) ‖ p(z_u)) is below this (nats) sits at the prior


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class LinearVAE:
    """The linear Gaussian VAE of the module docstring; parameters W, b, V, c, log s².

    Parameters
    ----------
    data_dim, latent : D and Z (Z may exceed D).
    sigma2 : the decoder's fixed variance σ² > 0.
    seed : seeds the initial weights (and the noise ε of the sample estimator).
    dtype : "float64" (default) or "float32".
    estimator : "exact" (the closed-form expectation, default) or "sample" (one z per example).
    init_std : standard deviation of the initial W and V entries (b, c start at 0, s² at 1).
    """

    def __init__(self, data_dim=784, latent=20, sigma2=0.1, seed=0, dtype="float64", estimator="exact", init_std=0.01):
        data_dim, latent, sigma2 = int(data_dim), int(latent), float(sigma2)
        if data_dim < 1 or latent < 1:
            raise ValueError("data_dim and latent must be positive integers")
        if not (sigma2 > 0 and math.isfinite(sigma2)):
            raise ValueError(f"sigma2 must be a positive number, got {sigma2}")
        if estimator not in ("exact", "sample"):
            raise ValueError(f"estimator must be 'exact' or 'sample', got {estimator!r}")
        self.data_dim, self.latent, self.sigma2, self.estimator = data_dim, latent, sigma2, estimator
        self.dtype = np.dtype(dtype)
        init_rng = np.random.default_rng([int(seed), 0])
        self.rng = np.random.default_rng([int(seed), 1])  # ε of the sample estimator
        D, Z = data_dim, latent
        self.params = {
            "W": (init_std * init_rng.standard_normal((D, Z))).astype(self.dtype),  # decoder (D, Z)
            "b": np.zeros(D, self.dtype),  # decoder bias (D,)
            "V": (init_std * init_rng.standard_normal((Z, D))).astype(self.dtype),  # encoder (Z, D)
            "c": np.zeros(Z, self.dtype),  # encoder bias (Z,)
            "logs2": np.zeros(Z, self.dtype),  # log s², one per latent (Z,): q starts at the prior
        }
        self._cache = None
        self.last = {}

    def forward(self, x, eps=None):
        """The batch mean of −ELBO (module docstring).     x: (B, D); eps: (B, Z), sample estimator only."""
        P, s2v = self.params, self.sigma2
        x = np.asarray(x, dtype=self.dtype)  # (B, D)
        mu = x @ P["V"].T + P["c"]  # (B, Z)
        logvar = np.broadcast_to(P["logs2"], mu.shape)  # (B, Z): the same s² for every x
        if self.estimator == "sample":
            if eps is None:
                eps = self.rng.standard_normal(mu.shape)
            eps = np.asarray(eps, dtype=self.dtype)  # (B, Z)
            z = losses.reparameterize(mu, logvar, eps)  # (B, Z)
        else:
            z = mu  # the mean; the noise enters through the trace term below
        m = z @ P["W"].T + P["b"]  # (B, D)
        recon = losses.gaussian_nll(m, x, s2v)  # (B,)
        if self.estimator == "exact":
            col2 = (P["W"] * P["W"]).sum(axis=0)  # ‖w_u‖² (Z,)
            recon = recon + (np.exp(P["logs2"]) * col2).sum() / (2 * s2v)
        kl = losses.gaussian_kl(mu, logvar)  # (B,)
        self._cache = (x, mu, logvar, eps, z, m)
        loss = float((recon + kl).mean())
        self.last = {"loss": loss, "recon": float(recon.mean()), "kl": float(kl.mean())}
        return loss

    def backward(self):
        """Gradients of the last forward's loss, a dict with the keys and shapes of ``params``."""
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        x, mu, logvar, eps, z, m = self._cache
        P, s2v = self.params, self.sigma2
        B = x.shape[0]
        per_example = np.full(B, 1.0 / B, dtype=self.dtype)  # ∂L/∂(loss_b)
        s2 = np.exp(P["logs2"])  # (Z,)

        R = losses.gaussian_nll_backward(per_example, m, x, s2v)  # (M − X)/(σ² B)   (B, D)
        dW = R.T @ z  # (D, Z)
        db = R.sum(axis=0)  # (D,)
        dz = R @ P["W"]  # (B, Z)
        dmu_kl, dlogvar_kl = losses.gaussian_kl_backward(per_example, mu, logvar)  # μ/B, ½(s²−1)/B
        dlogs2 = dlogvar_kl.sum(axis=0)  # ½ (s² − 1)   (Z,)
        if self.estimator == "sample":
            dmu, dlogvar = losses.reparameterize_backward(dz, logvar, eps)  # (B, Z) each
            dlogs2 = dlogs2 + dlogvar.sum(axis=0)
        else:
            dmu = dz
            dW = dW + P["W"] * (s2 / s2v)  # ∂/∂W of Σ_u s_u² ‖w_u‖² / 2σ²
            dlogs2 = dlogs2 + s2 * (P["W"] * P["W"]).sum(axis=0) / (2 * s2v)
        dmu = dmu + dmu_kl  # (B, Z)
        return {"W": dW, "b": db, "V": dmu.T @ x, "c": dmu.sum(axis=0), "logs2": dlogs2}

    # ----------------------------------------------------------------------------------------

    def encode(self, x):
        """μ and log s² of q(z | x).     x: (N, D) → mu, logvar: (N, Z) (logvar the same in every row)"""
        mu = np.asarray(x, dtype=self.dtype) @ self.params["V"].T + self.params["c"]
        return mu, np.broadcast_to(self.params["logs2"], mu.shape).copy()

    def decode_mean(self, z):
        """W z + b.     z: (N, Z) → (N, D)"""
        return np.asarray(z, dtype=self.dtype) @ self.params["W"].T + self.params["b"]

    def reconstruct(self, x):
        """The decoder's mean at the posterior mean, W μ(x) + b.     x: (N, D) → (N, D)"""
        return self.decode_mean(self.encode(x)[0])

    def neg_elbo(self, x, batch_size=1000):
        """−ELBO(x) per example, by the exact formula, in float64.     x: (N, D) → (N,) nats"""
        P = {k: np.asarray(v, np.float64) for k, v in self.params.items()}
        s2 = np.exp(P["logs2"])
        trace = (s2 * (P["W"] ** 2).sum(axis=0)).sum() / (2 * self.sigma2)
        kl_s = 0.5 * (s2 - P["logs2"] - 1).sum()  # the part of the KL that does not depend on x
        out = []
        for s in range(0, len(x), batch_size):
            xb = np.asarray(x[s : s + batch_size], np.float64)
            mu = xb @ P["V"].T + P["c"]
            m = mu @ P["W"].T + P["b"]
            out.append(losses.gaussian_nll(m, xb, self.sigma2) + trace + 0.5 * (mu * mu).sum(1) + kl_s)
        return np.concatenate(out)

    def log_likelihood(self, x, batch_size=1000):
        """The exact log p(x) = log N(x; b, W Wᵀ + σ² I) of this model (Cholesky), float64.  → (N,)"""
        W = np.asarray(self.params["W"], np.float64)
        b = np.asarray(self.params["b"], np.float64)
        D = self.data_dim
        L = np.linalg.cholesky(W @ W.T + self.sigma2 * np.eye(D))  # C = L Lᵀ
        logdet = 2 * np.log(np.diag(L)).sum()
        out = []
        for s in range(0, len(x), batch_size):
            r = np.asarray(x[s : s + batch_size], np.float64) - b  # (n, D)
            a = np.linalg.solve(L, r.T)  # L⁻¹ (x − b)   (D, n)
            out.append(-0.5 * (D * LOG_2PI + logdet + (a * a).sum(axis=0)))
        return np.concatenate(out)

    def get_params(self):
        return {k: v.copy() for k, v in self.params.items()}

    def set_params(self, values):
        for k, p in self.params.items():
            if np.shape(values[k]) != p.shape:
                raise ValueError(f"{k}: shape {np.shape(values[k])} does not match {p.shape}")
            p[...] = values[k]


class LinearAE:
    """The linear autoencoder: x̂ = W (V x + c) + b, loss ½ ‖x − x̂‖² — no noise, no KL, no σ².

    Parameters W (D, Z), b (D,), V (Z, D), c (Z,). With L = (1/B) Σ_b ½ ‖x̂_b − x_b‖² and
    R = (X̂ − X)/B (B, D), z = X Vᵀ + c:

        ∂L/∂W = Rᵀ z,   ∂L/∂b = Σ_b R_b,   ∂L/∂z = R W,   ∂L/∂V = (∂L/∂z)ᵀ X,   ∂L/∂c = Σ_b ∂L/∂z_b.

    With Z ≥ D nothing stops W V from becoming the identity; whether it does is the question
    :mod:`minivae.identity` measures.
    """

    def __init__(self, data_dim=784, latent=20, seed=0, dtype="float64", init_std=0.01):
        data_dim, latent = int(data_dim), int(latent)
        if data_dim < 1 or latent < 1:
            raise ValueError("data_dim and latent must be positive integers")
        self.data_dim, self.latent = data_dim, latent
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng([int(seed), 0])
        self.params = {
            "W": (init_std * rng.standard_normal((data_dim, latent))).astype(self.dtype),  # (D, Z)
            "b": np.zeros(data_dim, self.dtype),  # (D,)
            "V": (init_std * rng.standard_normal((latent, data_dim))).astype(self.dtype),  # (Z, D)
            "c": np.zeros(latent, self.dtype),  # (Z,)
        }
        self._cache = None
        self.last = {}

    def forward(self, x, eps=None):
        P = self.params
        x = np.asarray(x, dtype=self.dtype)  # (B, D)
        z = x @ P["V"].T + P["c"]  # (B, Z)
        xhat = z @ P["W"].T + P["b"]  # (B, D)
        r = xhat - x
        self._cache = (x, z, r)
        loss = float(0.5 * (r * r).sum(axis=1).mean())
        self.last = {"loss": loss, "recon": loss, "kl": 0.0}
        return loss

    def backward(self):
        if self._cache is None:
            raise RuntimeError("backward() needs a forward() first")
        x, z, r = self._cache
        R = r / x.shape[0]  # (B, D)
        dz = R @ self.params["W"]  # (B, Z)
        return {"W": R.T @ z, "b": R.sum(axis=0), "V": dz.T @ x, "c": dz.sum(axis=0)}

    def reconstruct(self, x):
        P = self.params
        return (np.asarray(x, dtype=self.dtype) @ P["V"].T + P["c"]) @ P["W"].T + P["b"]


def fit(
    model,
    x,
    steps,
    batch_size,
    lr,
    lr_final=None,
    rng=None,
    progress=False,
    desc="train",
    hold=0.5,
    fast_params=(),
    fast_factor=1.0,
    binarization=None,
    check_finite=True,
):
    """Adam on shuffled mini-batches of x for ``steps`` steps; returns the loss of every step.

    ``model`` (here, or :mod:`minivae.identity`'s) has ``params``, ``forward(x)``, ``backward()``;
    ``minivae.Adam(model.params)`` steps it. Each epoch draws from ``rng`` a binarization of x
    (``binarization`` "dynamic"; None trains on x itself), then the order of its mini-batches.

    The learning rate stays at ``lr`` for the first ``hold`` fraction of the steps, then decays
    geometrically to ``lr_final`` at the last step (constant when ``lr_final`` is None). The
    parameters named in ``fast_params`` get their own Adam with ``fast_factor`` times the rate.
    Why: Adam moves a parameter by at most about lr per step, and log s² must travel far — from 0
    (the prior) to log(σ²/λ₁), about −6.2 for MNIST's top direction at σ² = 0.01, which at
    lr = 3e-3 alone takes 2,000 steps while W cannot grow until s² has shrunk.

    The steps are :func:`minivae.loop.run_epoch`'s, with this schedule and stop passed in. A loss
    that is not finite raises FloatingPointError, or with ``check_finite`` False ends the history
    and the training (the model keeps its last finite parameters).
    """
    if steps == 0:
        return []
    rng = np.random.default_rng(0) if rng is None else rng
    opt = _optimizer(model.params, lr, fast_params, fast_factor)
    bar = _progress_bar(steps, desc) if progress else None
    history = []

    def after_step(step, loss, size, seconds):
        history.append(loss)
        if bar is not None:
            bar.update(1)
            if len(history) % 50 == 0:
                bar.set_postfix(loss=f"{loss:.1f}")
        return len(history) == steps  # the budget is spent: stop

    lr_at = _hold_then_decay(lr, lr_final, hold, steps)
    for _, _, x_epoch, order in loop.epochs(x, binarization, batch_size, rng):
        _, loss, why = loop.run_epoch(model, opt, x_epoch, order, after_step, lr_at=lr_at)
        if why == "diverged":
            if check_finite:
                raise FloatingPointError(f"loss became {loss} at step {len(history) + 1}")
            history.append(loss)
        if why != "end":
            break
    if bar is not None:
        bar.close()
    return history


def descend(model, x, steps, lr=1.0, progress=False, desc="descend"):
    """Plain gradient descent on the whole of ``x`` as one batch, for up to ``steps`` steps:

        θ ← θ − η ∇L        every parameter, one step size η,

    η found by backtracking: halved until the loss falls by at least ½ η ‖∇L‖² (Armijo's rule),
    then tried doubled at the next step (starting from ``lr``). Unlike Adam, which moves every
    parameter by about its learning rate per step, this moves a parameter in proportion to its
    gradient, so a unit whose gradient is near 0 is not kept moving. Use a float64 model: near the
    optimum the loss falls by less than float32 resolves. Returns the loss of every accepted step;
    it stops early when no step size above 1e-12 lowers the loss (the optimum, as far as the
    arithmetic sees)."""
    history, eta = [], float(lr)
    loss = model.forward(x)
    grads = model.backward()
    with _progress(steps, desc, progress) as tick:
        for _ in range(steps):
            norm2 = sum(float(np.vdot(g, g)) for g in grads.values())
            old = {k: p.copy() for k, p in model.params.items()}
            while True:
                for k, p in model.params.items():
                    p -= eta * grads[k]
                new = model.forward(x)
                if math.isfinite(new) and new <= loss - 0.5 * eta * norm2:
                    break
                for k, p in model.params.items():
                    p[...] = old[k]
                eta /= 2
                if eta < 1e-12:
                    return history
            loss, eta = new, 2 * eta
            history.append(loss)
            grads = model.backward()
            tick()
    return history


def coordinate_ascent(model, x, sweeps, progress=False, desc="coordinate ascent"):
    """Variational EM: each half of the model set to its exact optimum given the other half,
    ``sweeps`` times, on the whole of ``x`` (its mean x̄ (D,) and covariance S (D, D) are all the
    loss depends on). Returns the loss after every sweep; it never rises.

    Decoder given encoder (μ(x) = V x + c and s² held): the loss is a least-squares problem in W, b,

        min  E_x ‖x − W μ(x) − b‖² + Σ_u s_u² ‖w_u‖²
        →    W = S Vᵀ (V S Vᵀ + diag s²)⁻¹      (D, Z)        b = x̄ − W (V x̄ + c)      (D,)

    (E_x over x: the cross-covariance of x and μ is S Vᵀ (D, Z), μ's covariance V S Vᵀ (Z, Z)).
    Encoder given decoder (W, b held): μ enters only through ‖x − W μ − b‖² / 2σ² + ½ ‖μ‖², whose
    minimum μ = M⁻¹ Wᵀ (x − b) with M = WᵀW + σ² I (Z, Z) is linear in x; s² enters through
    s_u² ‖w_u‖² / 2σ² + ½ (s_u² − log s_u²):

        V = M⁻¹ Wᵀ      (Z, D)        c = −V b      (Z,)        s_u² = σ² / (‖w_u‖² + σ²)      (Z,)

    Each half is the exact minimum of the other, so no sweep can raise the loss (the tests check
    that the gradient of each half is zero after its update). Why it helps where a first-order
    step does not: a latent on a direction of variance λ ≤ σ² that Adam left with a small decoder
    column w shrinks by λ/σ² per sweep (for small w, V ≈ Wᵀ/σ², s² ≈ 1 and W ← S W/σ²), whatever
    the curvature of the strong directions, which caps a gradient step's size. The model must be
    float64 and use the exact estimator: near the optimum the loss changes by less than float32
    resolves."""
    if model.dtype != np.float64 or model.estimator != "exact":
        raise ValueError("coordinate_ascent needs a float64 model with the exact estimator")
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)  # x̄ (D,)
    xc = x - mean
    S = xc.T @ xc / len(x)  # (D, D)
    P, s2v, Z = model.params, model.sigma2, model.latent
    history = []
    with _progress(sweeps, desc, progress) as tick:
        for _ in range(sweeps):
            V, s2 = P["V"], np.exp(P["logs2"])
            SV = S @ V.T  # S Vᵀ (D, Z)
            P["W"][...] = np.linalg.solve(V @ SV + np.diag(s2), SV.T).T  # (V S Vᵀ + diag s²) symmetric
            P["b"][...] = mean - P["W"] @ (V @ mean + P["c"])
            W = P["W"]
            M = W.T @ W + s2v * np.eye(Z)  # (Z, Z)
            P["V"][...] = np.linalg.solve(M, W.T)
            P["c"][...] = -P["V"] @ P["b"]
            P["logs2"][...] = np.log(s2v / ((W * W).sum(axis=0) + s2v))
            history.append(model.forward(x))
            tick()
    return history


def _hold_then_decay(lr, lr_final, hold, steps):
    """t ↦ the rate after t updates: ``lr`` for the first ``hold`` fraction of the steps, then
    geometrically down to ``lr_final`` at the last step (constant when ``lr_final`` is None)."""
    ratio = 1.0 if lr_final is None else lr_final / lr
    start = int(hold * steps)  # the first step of the decay
    return lambda t: lr * ratio ** (max(t - start, 0) / max(steps - 1 - start, 1))


def _optimizer(params, lr, fast_params, fast_factor):
    """Adam over ``params`` (the class they name: a fast model's flat ones get FastAdam); with
    ``fast_params``, a :class:`_SplitAdam`."""
    fast = {k: p for k, p in params.items() if k in fast_params}
    if not fast:
        return Adam(params, lr=lr)
    return _SplitAdam({k: p for k, p in params.items() if k not in fast}, fast, lr, fast_factor)


class _SplitAdam:
    """Two Adams that step as one: ``fast`` at ``factor`` times the rate of the others."""

    def __init__(self, params, fast, lr, factor):
        self.slow, self.fast, self.factor = Adam(params, lr=lr), Adam(fast, lr=lr * factor), factor

    @property
    def t(self):
        return self.slow.t

    @property
    def lr(self):
        return self.slow.lr

    @lr.setter
    def lr(self, value):
        self.slow.lr, self.fast.lr = value, value * self.factor

    def step(self, grads):
        self.slow.step({k: g for k, g in grads.items() if k not in self.fast.params})
        self.fast.step({k: grads[k] for k in self.fast.params})


@contextlib.contextmanager
def _progress(steps, desc, show):
    """A tick() that moves a progress bar of ``steps`` on by one (nothing when not ``show``); the
    bar is closed when the block ends, also by an exception or a return."""
    bar = _progress_bar(steps, desc) if show else None
    try:
        yield (lambda: bar.update(1)) if bar is not None else (lambda: None)
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(steps, desc):
    from tqdm import tqdm

    return tqdm(total=steps, desc=desc, unit="step", leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------
# The closed form
# --------------------------------------------------------------------------------------------


def spectrum(x, batch_size=10000):
    """x̄, λ and U of the training covariance S = (1/N) Σ (x − x̄)(x − x̄)ᵀ = U diag(λ) Uᵀ, float64.

    x: (N, D) → mean (D,), λ (D,) descending (clipped at 0), U (D, D) with eigenvectors as columns.
    """
    n, D = x.shape
    mean = np.zeros(D)
    for s in range(0, n, batch_size):
        mean += np.asarray(x[s : s + batch_size], np.float64).sum(axis=0)
    mean /= n
    S = np.zeros((D, D))
    for s in range(0, n, batch_size):
        xc = np.asarray(x[s : s + batch_size], np.float64) - mean
        S += xc.T @ xc
    lam, U = np.linalg.eigh(S / n)
    return mean, np.clip(lam[::-1], 0.0, None), U[:, ::-1]


def moment_points(mean, lam, U, dtype="float32", rtol=1e-12):
    """r + 1 points with the data's mean x̄ and covariance S: a full batch in r + 1 rows.

    Why it is exact: with the ``exact`` estimator the per-example loss of :class:`LinearVAE` (and
    of :class:`LinearAE`) is a quadratic function of x — μ = V x + c is linear in x, the Gaussian
    NLL and the KL are quadratic in x and μ — and so is its gradient with respect to every
    parameter. The mean of a quadratic over any set of points depends only on the set's mean and
    covariance. So the mean loss and gradient over these r + 1 points *are* the mean loss and
    gradient over all N training digits, and a step on them is a full-batch step (no mini-batch
    noise) at the cost of r + 1 examples instead of N (r = rank S = 712 for MNIST, N = 60,000).

    The construction: S = L Lᵀ with L = U_r Λ_r^½ (D, r), r = #{λ_i > rtol·λ₁}. H (r+1, r) has
    orthonormal columns orthogonal to the all-ones vector (the Helmert basis: column j is
    (1, …, 1, −j, 0, …, 0)/√(j(j+1)) with j ones). The points are the rows of

        P = x̄ + √(r+1) · H Lᵀ        (r+1, D)

    Their mean is x̄ (1ᵀH = 0) and their covariance (1/(r+1)) Σ_j (r+1) L h_j h_jᵀ Lᵀ = L HᵀH Lᵀ = S.
    Dropping the directions with λ_i ≤ rtol·λ₁ changes S by at most D·rtol·λ₁.
    """
    lam = np.asarray(lam, np.float64)
    r = int((lam > rtol * lam[0]).sum()) if len(lam) and lam[0] > 0 else 0
    L = np.asarray(U, np.float64)[:, :r] * np.sqrt(lam[:r])  # (D, r)
    H = np.zeros((r + 1, r))
    for j in range(1, r + 1):  # column j − 1: j ones, then −j
        H[:j, j - 1] = 1.0
        H[j, j - 1] = -float(j)
        H[:, j - 1] /= math.sqrt(j * (j + 1))
    points = np.asarray(mean, np.float64) + math.sqrt(r + 1) * (H @ L.T)  # (r+1, D)
    return points.astype(dtype)


def n_above(lam, sigma2):
    """k = #{i : λ_i > σ²}: the directions a pPCA model with noise σ² explains with a latent."""
    return int((np.asarray(lam) > sigma2).sum())


def optimum(mean, lam, U, sigma2, latent):
    """The parameters of the linear VAE at its global optimum (module docstring, R = I), float64.

    → {"W", "b", "V", "c", "logs2"} in the shapes of :class:`LinearVAE`; latent u < q is
    eigen-direction u, latents u ≥ q sit at the prior.
    """
    D = len(lam)
    q = min(latent, n_above(lam, sigma2))
    W = np.zeros((D, latent))
    V = np.zeros((latent, D))
    logs2 = np.zeros(latent)
    root = np.sqrt(lam[:q] - sigma2)  # (λ_i − σ²)^½
    W[:, :q] = U[:, :q] * root
    V[:q] = (U[:, :q] * (root / lam[:q])).T  # M⁻¹ Wᵀ with M = diag(λ_1..λ_q, σ², …)
    logs2[:q] = np.log(sigma2 / lam[:q])
    return {"W": W, "b": mean.copy(), "V": V, "c": -V @ mean, "logs2": logs2}


def ppca_log_likelihood(x, mean, lam, U, sigma2, latent, batch_size=10000):
    """log N(x; x̄, W Wᵀ + σ² I) at the optimum, per example, from the eigenbasis.   → (N,) nats

    C has eigenvalues λ_i for i < q = min(Z, k) and σ² for the rest, on the eigenvectors U.
    """
    q = min(latent, n_above(lam, sigma2))
    cvar = np.concatenate([lam[:q], np.full(len(lam) - q, sigma2)])  # eigenvalues of C (D,)
    const = len(lam) * LOG_2PI + np.log(cvar).sum()
    out = []
    for s in range(0, len(x), batch_size):
        y = (np.asarray(x[s : s + batch_size], np.float64) - mean) @ U  # (n, D)
        out.append(-0.5 * (const + (y * y / cvar).sum(axis=1)))
    return np.concatenate(out)


def ppca_train_log_likelihood(lam, sigma2, latent):
    """The mean of :func:`ppca_log_likelihood` over the training data itself, from λ alone:
    −½ [D log 2π + Σ_{i<q} log λ_i + (D − q) log σ² + q + Σ_{i≥q} λ_i / σ²]."""
    lam = np.asarray(lam, np.float64)
    D, q = len(lam), min(latent, n_above(lam, sigma2))
    return float(-0.5 * (D * LOG_2PI + np.log(lam[:q]).sum() + (D - q) * math.log(sigma2) + q + lam[q:].sum() / sigma2))


# --------------------------------------------------------------------------------------------
# Trained model against theory
# --------------------------------------------------------------------------------------------


RESULT_KEYS = (  # the keys of a result, in the order result.json lists them
    *("latent", "sigma2", "k", "q", "exact_train_ll", "exact_test_ll", "train_elbo", "test_elbo", "test_gap"),
    *("model_test_ll", "posterior_gap", "active_units", "predicted_active_units", "collapsed_units"),
    *("predicted_collapsed", "z_minus_q", "collapsed_max_s2_error", "collapsed_max_w_norm", "sv_max_abs_error"),
    *("sv_median_rel_error", "sv_max_rel_error_clear", "n_clear", "sv_largest_beyond_q", "test_kl"),
    *("test_kl_theory", "singular_values", "theory_singular_values", "var_mu_sorted", "kl_per_unit_sorted"),
    "eigenvalues",
)


def compare(model, train_x, test_x, mean, lam, U):
    """Everything the command reports, as a JSON-ready dict (numbers in nats per digit): the
    likelihoods here, the units' and W's singular values beside the closed form (below)."""
    s2v, Z = model.sigma2, model.latent
    k = n_above(lam, s2v)
    q = min(Z, k)
    r = {"latent": Z, "sigma2": s2v, "k": k, "q": q, "z_minus_q": Z - q, "eigenvalues": _r4(lam)}
    r.update(_units(model, test_x, lam, q))
    r.update(_singular_values(model, lam, q))
    test_ll = float(ppca_log_likelihood(test_x, mean, lam, U, s2v, Z).mean())
    test_elbo = float(-model.neg_elbo(test_x).mean())
    model_test_ll = float(model.log_likelihood(test_x).mean())
    r.update(
        exact_train_ll=ppca_train_log_likelihood(lam, s2v, Z),
        exact_test_ll=test_ll,
        train_elbo=float(-model.neg_elbo(train_x).mean()),
        test_elbo=test_elbo,
        test_gap=test_ll - test_elbo,
        model_test_ll=model_test_ll,  # log N(x; b, WWᵀ + σ²I) of the trained W, b
        posterior_gap=model_test_ll - test_elbo,  # the KL from q to the true posterior
    )
    return {key: r[key] for key in RESULT_KEYS}


def _r4(a):
    """Numbers to 5 significant digits, for compact JSON lists."""
    return [float(f"{v:.5g}") for v in np.asarray(a)]


def _units(model, test_x, lam, q):
    """Per latent unit on the test digits — active, KL, collapsed (mean KL below COLLAPSE_KL) —
    beside the closed form: KL_i = ½ log(λ_i/σ²) for i < q, the rest at the prior."""
    s2v, Z = model.sigma2, model.latent
    mu, logvar = model.encode(test_x)
    n_active, var_mu = metrics.active_units(mu)
    kl_unit = metrics.kl_per_dim(mu, logvar)  # (Z,)
    s2 = np.exp(np.asarray(model.params["logs2"], np.float64))
    collapsed = kl_unit < COLLAPSE_KL
    kl_theory = 0.5 * np.log(lam[:q] / s2v)  # mean KL of latent i at the optimum   (q,)
    W = np.asarray(model.params["W"], np.float64)
    return {
        "active_units": n_active,
        "predicted_active_units": int(((1 - s2v / lam[:q]) > metrics.ACTIVE_THRESHOLD).sum()),
        "collapsed_units": int(collapsed.sum()),
        "predicted_collapsed": Z - int((kl_theory >= COLLAPSE_KL).sum()),
        "collapsed_max_s2_error": float(np.abs(s2[collapsed] - 1).max()) if collapsed.any() else None,
        "collapsed_max_w_norm": float(np.sqrt((W[:, collapsed] ** 2).sum(axis=0)).max()) if collapsed.any() else None,
        "test_kl": float(kl_unit.sum()),
        "test_kl_theory": float(kl_theory.sum()),
        "var_mu_sorted": _r4(np.sort(var_mu)[::-1]),
        "kl_per_unit_sorted": _r4(np.sort(kl_unit)[::-1]),
    }


def _singular_values(model, lam, q):
    """W's singular values beside the closed form's (λ_i − σ²)^½ for i < q (0 beyond)."""
    s2v = model.sigma2
    sv = np.linalg.svd(np.asarray(model.params["W"], np.float64), compute_uv=False)  # descending
    theory_sv = np.zeros_like(sv)
    m = min(q, len(sv))
    theory_sv[:m] = np.sqrt(lam[:m] - s2v)
    clear = lam[:m] > 2 * s2v  # directions well above the noise floor
    rel = np.abs(sv[:m] - theory_sv[:m]) / theory_sv[:m]
    return {
        "sv_max_abs_error": float(np.abs(sv - theory_sv).max()),
        "sv_median_rel_error": float(np.median(rel)) if m else None,
        "sv_max_rel_error_clear": float(rel[clear].max()) if clear.any() else None,
        "n_clear": int(clear.sum()),
        "sv_largest_beyond_q": float(sv[m:].max()) if len(sv) > m else None,
        "singular_values": _r4(sv),
        "theory_singular_values": _r4(theory_sv),
    }


# --------------------------------------------------------------------------------------------
# The command's names, still reached from here (the command is minivae.linear_cli)
# --------------------------------------------------------------------------------------------

_COMMAND = {"main", "parse_args", "run", "memory_needed", "describe", "table_row", "TABLE_HEAD", "summarize"}
_COMMAND |= {"plot_spectrum", "HOLD"}


def __getattr__(name):
    """``minivae.linear.main`` and the command's other names, from :mod:`minivae.linear_cli`, which
    imports this module (so nothing here imports it before a name of the command is asked for)."""
    if name in _COMMAND:
        from minivae import linear_cli

        return getattr(linear_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from minivae.linear_cli import main

    sys.exit(main())
