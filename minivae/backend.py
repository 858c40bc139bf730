"""Backends: which implementation of the ops runs a training step.

- ``numpy``: the readable reference in :mod:`minivae.vae` (always available).
- ``auto``: the fastest backend usable here.
"""

from __future__ import annotations

BACKENDS = ("numpy", "auto")


def resolve(name, dtype=None):
    """The concrete backend for ``name`` ("auto" picks one); ValueError for an unknown name."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    if name == "auto":
        return "numpy"
    return name


def create_engine(vae, name):
    raise ValueError(f"backend {name!r} has no engine")
