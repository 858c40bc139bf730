"""Central-difference gradient checking in float64, shared by the tests."""

import numpy as np


def numerical_grad(f, x, h=1e-6):
    """∂f/∂x by central differences, (f(x + h·e_i) − f(x − h·e_i)) / 2h for every entry i.

    f: a function of no arguments returning a scalar that reads x (changed in place here).
    """
    g = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def rel_error(a, b):
    """max |a − b| / max(|a|, |b|): the worst error relative to the gradient's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.abs(a).max(), np.abs(b).max(), 1e-12)
    return np.abs(a - b).max() / scale
