"""Checks of the arguments of the model's public methods, in one place.

The readable reference (:mod:`minivae.vae`, :mod:`minivae.ae`, :mod:`minivae.optim`) and the fast
models (:mod:`kernels.fast`, :mod:`kernels.flat`) call the same functions here, once, at their
public methods, so both refuse the same bad input with the same ``ValueError``, whose message
names the argument. For the fast backends this is what keeps a kernel from reading past an
array: the engine below trusts shapes, so every shape, dtype and memory layout is checked (or
made right) before any kernel runs.

Costs per call: shapes, dtypes and flags are O(1); the [0, 1] check of a batch x (B, D) is one
vectorised min and one max, O(B·D).
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def integer(name, value, minimum=1):
    """``value`` as an int ≥ ``minimum``; 2.5, "3", True and None are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value}")
    return int(value)


def real(name, value, low=None, high=None, low_open=False, high_open=False):
    """``value`` as a finite float in the interval given (open ends when ``*_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if (low is not None and (value < low or (low_open and value == low))) or (
        high is not None and (value > high or (high_open and value == high))
    ):
        lo = "-∞" if low is None else f"{low:g}"
        hi = "∞" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value:g}")
    return value


def _is_host(a):
    return isinstance(a, np.ndarray) or not hasattr(a, "__cuda_array_interface__")


def array(name, a, shape, dtype, xp_convert=None):
    """``a`` as a C-contiguous array of ``dtype`` and exactly ``shape`` (None in ``shape``: any size
    ≥ 1 there). Host input of a real dtype is converted (a copy only when needed); a device array
    must already have the dtype, or is converted by ``xp_convert`` when given.
    """
    if _is_host(a):
        a = _asarray(name, a)
        if a.dtype.kind not in "fiub":
            raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    elif np.dtype(a.dtype).kind not in "fiub":
        raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")
    got = tuple(a.shape)
    if len(got) != len(shape):
        raise ValueError(f"{name} must be a {len(shape)}-D array of shape {_shape(shape)}, got shape {got}")
    for g, want in zip(got, shape, strict=True):
        if (want is None and g < 1) or (want is not None and g != want):
            if want is None:
                raise ValueError(f"{name} must not be empty, got shape {got}")
            raise ValueError(f"{name} must have shape {_shape(shape)}, got {got}")
    if _is_host(a):
        return np.ascontiguousarray(a, dtype=dtype)  # the same array when it already is
    if a.dtype != dtype or not a.flags.c_contiguous:
        if xp_convert is None:
            raise ValueError(
                f"{name} must be a C-contiguous {np.dtype(dtype).name} array, "
                f"got {np.dtype(a.dtype).name}"
                f"{'' if a.flags.c_contiguous else ', not C-contiguous'}"
            )
        a = xp_convert(a)
    return a


def _asarray(name, a):
    try:
        return np.asarray(a)
    except (ValueError, TypeError) as e:  # ragged lists and the like
        raise ValueError(f"{name} is not an array: {e}") from None


def _shape(shape):
    return "(" + ", ".join("B" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def batch(name, a, width, dtype, unit=False, B=None, xp_convert=None):
    """A batch (B, width): ``array`` with the batch size free (or ``B``), at least one row, and
    finite values — within [0, 1] when ``unit`` (pixel probabilities). One min and one max."""
    a = array(name, a, (B, width), dtype, xp_convert)
    values = a if hasattr(a, "min") else a.copy_to_host()  # a Numba device array has no min()
    lo, hi = float(values.min()), float(values.max())  # NaN makes both comparisons below False
    if unit and not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(f"{name} must hold values in [0, 1] (pixel probabilities), got values from {lo:g} to {hi:g}")
    if not unit and not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must hold finite numbers, got values from {lo:g} to {hi:g}")
    return a


def _overflows(v, dtype):
    """The largest magnitude of the finite host array ``v`` when it becomes inf in ``dtype``
    (float64 1e39 in float32), else None. Casting rounds monotonically, so the largest magnitude
    decides for all."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or v.dtype.kind != "f" or v.dtype.itemsize <= dtype.itemsize:
        return None
    largest = float(np.abs(v).max())
    with np.errstate(over="ignore"):
        return largest if not np.isfinite(np.asarray(largest).astype(dtype)) else None


def params(name, values, like, finite=True):
    """Check a dict ``values`` against the parameter arrays ``like`` (same keys, exact shapes,
    real dtypes, and when ``finite`` numbers that are finite in the parameters' dtype: float64
    1e39 is inf in float32); returns it as a plain dict."""
    if not hasattr(values, "keys"):
        raise ValueError(f"{name} must be a dict of arrays keyed like the parameters, got {type(values).__name__}")
    missing = [k for k in like if k not in values]
    extra = [k for k in values if k not in like]
    if missing or extra:
        what = (
            (f"lacks {', '.join(missing[:3])}" if missing else "")
            + ("; " if missing and extra else "")
            + (f"has unknown {', '.join(map(str, extra[:3]))}" if extra else "")
        )
        raise ValueError(f"{name} {what}{' …' if len(missing) > 3 or len(extra) > 3 else ''}")
    out = {}
    for k, p in like.items():
        v = values[k]
        if _is_host(v):
            v = _asarray(f"{name}[{k!r}]", v)
        if np.dtype(v.dtype).kind not in "fiub":
            raise ValueError(f"{name}[{k!r}] must hold real numbers, got dtype {v.dtype}")
        if tuple(v.shape) != tuple(p.shape):
            raise ValueError(f"{name}[{k!r}]: shape {tuple(v.shape)} does not match {tuple(p.shape)}")
        if finite and _is_host(v) and v.size:
            if not np.isfinite(v).all():
                raise ValueError(f"{name}[{k!r}] holds non-finite numbers")
            largest = _overflows(v, p.dtype)
            if largest is not None:
                raise ValueError(
                    f"{name}[{k!r}] holds numbers that are inf in {np.dtype(p.dtype)}, the parameters' "
                    f"dtype (up to {largest:g}): non-finite"
                )
        out[k] = v
    return out
