"""The training loop, written once: the main job (:mod:`minivae.train`), the latent-size study
(:mod:`minivae.sweep`) and the small models (:func:`minivae.linear.fit`: the linear VAE and
autoencoder, :mod:`minivae.identity`'s models) all run it.

    for each epoch:
        x_epoch = binarize(train_x, mode, data_rng)      dynamic: a fresh Bernoulli draw each epoch
        for each shuffled mini-batch x (B, D) of x_epoch (the order drawn from data_rng):
            loss = model.forward(x)                      batch mean of the negative ELBO
            opt.lr = lr_at(opt.t)                        the schedule's rate (minivae.schedule)
            opt.step(model.backward())                   ∂loss/∂θ, then Adam
            after_step(step, loss, B, seconds)           running sums, progress, checkpoints, stop?

Everything random in the loop comes from ``data_rng`` (the digits' draws, then the order) and from
the model's own generator (ε): the same generators give the same run.

:func:`evaluate` measures a model on the test digits as both commands do it, after an epoch (the
main job) or at the steps of a learning curve (the study).
"""

from __future__ import annotations

import math
import time

import numpy as np

from minivae import losses, metrics
from minivae.data import batches, binarize


def epochs(train_x, mode, batch_size, data_rng, first=1, last=None):
    """Yield ``(epoch, start, x_epoch, order)`` for epochs ``first``, ``first`` + 1, … ``last`` (for
    ever when None): the state of ``data_rng`` at the epoch's start (a checkpoint saves it to
    replay an interrupted epoch), the epoch's binarization of ``train_x`` (``mode`` None: ``train_x``
    itself, as it is) and its shuffled mini-batches (index arrays, drawn as they are taken), both
    from ``data_rng``, in that order."""
    epoch = first
    while last is None or epoch <= last:
        start = data_rng.bit_generator.state
        x_epoch = train_x if mode is None else binarize(train_x, mode, data_rng)
        yield epoch, start, x_epoch, batches(len(train_x), batch_size, data_rng)
        epoch += 1


def run_epoch(model, opt, x, order, after_step=None, skip=0, lr_at=None):
    """One pass over the mini-batches ``order`` of ``x`` (see the module docstring).

    The first ``skip`` batches are passed over (a resumed epoch). ``after_step(step, loss, B,
    seconds)`` runs after each update — ``step`` counts the epoch's batches from 1, ``seconds`` is
    the time of the forward, backward and update — and ends the epoch early by returning True.
    Returns ``(step, loss, why)``: why is "end" (every batch done), "stop" (after_step said so)
    or "diverged" (the loss of batch ``step`` is not finite; that batch updated nothing).
    ``lr_at(s)``, when given, sets Adam's rate before each update from the updates done so far
    (``opt.t``): a learning-rate schedule (:mod:`minivae.schedule`).
    """
    step, loss = 0, None
    for step, idx in enumerate(order, 1):
        if step <= skip:
            continue
        t0 = time.perf_counter()
        loss = model.forward(x[idx])
        if not math.isfinite(loss):
            return step, loss, "diverged"
        if lr_at is not None:
            opt.lr = lr_at(opt.t)
        opt.step(model.backward())
        seconds = time.perf_counter() - t0
        if after_step is not None and after_step(step, loss, len(idx), seconds):
            return step, loss, "stop"
    return step, loss, "end"


def evaluate(model, test_x, rng):
    """The test metrics of ``model`` as it is — −ELBO and its terms (an autoencoder: its
    reconstruction loss), active units, latent directions — and the test digits' posterior
    (μ, log σ²; an autoencoder's codes and None) they were computed from; ``rng`` draws the ε."""
    mu, logvar = metrics.posterior_means(model, test_x)
    if logvar is not None:
        ev = metrics.evaluate(model, test_x, rng, posterior=(mu, logvar))
    else:
        ev = reconstruction_loss(model, test_x)
    directions = metrics.latent_directions(mu)
    row = {
        "test_loss": ev["loss"],
        "test_recon": ev["recon"],
        "test_kl": ev["kl"],
        "active_units": metrics.active_units(mu)[0],
        "directions": directions["directions"],
        "participation_ratio": directions["participation_ratio"],
    }
    return row, (mu, logvar)


def reconstruction_loss(model, x, batch_size=1000):
    """An autoencoder's reconstruction loss Σ_pixels softplus(a) − x·a, averaged over x."""
    total = 0.0
    for s in range(0, len(x), batch_size):
        xb = np.asarray(x[s : s + batch_size], np.float64)
        a = np.asarray(model.decode_logits(model.encode(x[s : s + batch_size])[0]), np.float64)
        total += float(losses.bernoulli_nll(a, xb).sum())
    return {"loss": total / len(x), "recon": total / len(x), "kl": 0.0}


def steady_rate(seen, seconds, first=None):
    """Digits per second over an epoch; without ``first`` = (digits, seconds) of the process's first
    step, whose time is mostly the kernels' compilation."""
    if first is not None and seen > first[0] and seconds > first[1]:
        seen, seconds = seen - first[0], seconds - first[1]
    return seen / seconds if seconds > 0 else 0.0
