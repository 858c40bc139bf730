"""Learning-rate schedules: the rate α_s of update s + 1 (s = 0, 1, …, T − 1 updates done before
it) for a run of T updates at peak rate α.

    constant   α_s = α
    cosine     α_s = α · ½ (1 + cos(π s / T))                       α at s = 0, → 0 at s = T
    wsd        α_s = α                         for s < S = round((1 − f) T)   (warmup-free
               α_s = α · (T − s) / (T − S)     for s ≥ S                       "stable, decay")

``wsd`` (warmup–stable–decay; Hägele et al. 2024, "Scaling laws and compute-optimal training
beyond fixed training durations") holds the rate constant and decays it linearly to zero over the
last fraction f of the budget: its last update has α/(T − S). Until S it is the constant
schedule, step for step — so one constant-rate run (the *trunk*) can be stopped at S for every
budget T, and a short decay (a *branch*) from each stop gives the wsd run of that budget, value for
value (:mod:`minivae.sweep`'s budget curves).

The rate depends on s alone, not on how the run got there: a run resumed at s continues its
schedule exactly.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "wsd")
DECAY_FRAC = 0.2  # wsd: the fraction of the budget over which the rate decays to zero


def decay_start(total, decay_frac=DECAY_FRAC):
    """S = round((1 − f) T): the updates wsd makes at the constant rate before it decays."""
    return int(round((1.0 - decay_frac) * total))


def lr_at(s, total, lr, kind="constant", decay_frac=DECAY_FRAC):
    """α_s, the rate of the update that follows ``s`` updates, in a run of ``total`` (see the
    module docstring). Past ``total`` a decaying schedule stays at its last value."""
    if kind == "constant":
        return lr
    s = min(int(s), int(total) - 1)
    if kind == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * s / total))
    if kind == "wsd":
        start = decay_start(total, decay_frac)
        return lr if s < start else lr * (total - s) / (total - start)
    raise ValueError(f"unknown schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")


def schedule(total, lr, kind="constant", decay_frac=DECAY_FRAC):
    """``s ↦ α_s`` for a run of ``total`` updates (what :func:`minivae.loop.run_epoch` takes)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
    return lambda s: lr_at(s, total, lr, kind, decay_frac)
