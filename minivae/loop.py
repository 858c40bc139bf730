"""The training loop, written once: the main job (:mod:`minivae.train`) and the latent-size study
(:mod:`minivae.sweep`) both run it.

    for each epoch:
        x_epoch = binarize(train_x, mode, data_rng)      dynamic: a fresh Bernoulli draw each epoch
        for each shuffled mini-batch x (B, D) of x_epoch (the order drawn from data_rng):
            loss = model.forward(x)                      batch mean of the negative ELBO
            opt.lr = lr_at(opt.t)                        the schedule's rate (minivae.schedule)
            opt.step(model.backward())                   ∂loss/∂θ, then Adam
            after_step(step, loss, B, seconds)           running sums, progress, checkpoints, stop?

Everything random in the loop comes from ``data_rng`` (the digits' draws, then the order) and from
the model's own generator (ε): the same generators give the same run.
"""

from __future__ import annotations

import math
import time

from minivae.data import batches, binarize


def epochs(train_x, mode, batch_size, data_rng, first=1, last=None):
    """Yield ``(epoch, start, x_epoch, order)`` for epochs ``first``, ``first`` + 1, … ``last`` (for
    ever when None): the state of ``data_rng`` at the epoch's start (a checkpoint saves it to
    replay an interrupted epoch), the epoch's binarization of ``train_x`` and its shuffled
    mini-batches (index arrays, drawn as they are taken), both from ``data_rng``, in that order."""
    epoch = first
    while last is None or epoch <= last:
        start = data_rng.bit_generator.state
        x_epoch = binarize(train_x, mode, data_rng)
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
