"""Backends: which implementation of the ops runs a training step.

- ``numpy``: the readable reference in :mod:`minivae.vae` (always available).
"""

from __future__ import annotations

BACKENDS = ("numpy",)


def create_engine(vae, name):
    raise ValueError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
