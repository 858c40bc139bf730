"""Adam (Kingma & Ba 2014), exactly as Algorithm 1 of the paper, updating parameters in place.

For each parameter θ with gradient g at step t = 1, 2, …:

    m ← β₁ m + (1 − β₁) g                 first moment (running mean of g)
    v ← β₂ v + (1 − β₂) g²                second moment (running mean of g², element-wise)
    m̂ = m / (1 − β₁ᵗ)                     bias correction: m and v start at 0, so early
    v̂ = v / (1 − β₂ᵗ)                       averages are too small by exactly these factors
    θ ← θ − α m̂ / (√v̂ + ε)

On the first step m̂ = g and v̂ = g², so every parameter moves by α·g/(|g| + ε) ≈ α·sign(g):
the step size is set by α, not by the scale of the gradient.
"""

from __future__ import annotations

import numpy as np

from minivae import checks


def adam_update(p, g, m, v, lr, b1, b2, eps, c1, c2):
    """One Adam step in place on arrays of any (equal) shape; c1 = 1 − β₁ᵗ, c2 = 1 − β₂ᵗ."""
    m *= b1
    m += (1 - b1) * g
    v *= b2
    v += (1 - b2) * (g * g)
    m_hat = m / c1
    v_hat = v / c2
    p -= lr * m_hat / (np.sqrt(v_hat) + eps)


class Adam:
    """Adam over a dict of parameter arrays (``vae.params``), updated in place by :meth:`step`.

    Parameters may name another Adam for themselves (``params.adam_class``): those of a model on a
    fast backend, held in one flat buffer (:class:`kernels.flat.FlatParams`), name
    :class:`kernels.flat.FastAdam`, the same update as one kernel pass over the buffer.
    """

    def __new__(cls, params, *args, **kwargs):
        if cls is Adam:
            cls = getattr(params, "adam_class", Adam)
        return super().__new__(cls)

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.lr = checks.real("lr", lr, low=0, low_open=True)
        if not hasattr(betas, "__len__") or len(betas) != 2:
            raise ValueError(f"betas must be a pair (β₁, β₂), got {betas!r}")
        self.b1 = checks.real("betas[0]", betas[0], low=0, high=1, high_open=True)
        self.b2 = checks.real("betas[1]", betas[1], low=0, high=1, high_open=True)
        self.eps = checks.real("eps", eps, low=0, low_open=True)
        if not hasattr(params, "items") or not params:
            raise ValueError(f"params must be a non-empty dict of arrays (vae.params), got {type(params).__name__}")
        self.params = params
        self.t = 0
        self.m = self.zeros_like_params()  # first moments, name → array
        self.v = self.zeros_like_params()  # second moments

    def zeros_like_params(self):
        return {k: np.zeros_like(p) for k, p in self.params.items()}

    def step(self, grads):
        """Apply one update with ``grads`` (same keys and shapes as the parameters)."""
        grads = checks.params("grads", grads, self.params, finite=False)
        self.t += 1
        c1 = 1 - self.b1**self.t
        c2 = 1 - self.b2**self.t
        for k, p in self.params.items():
            adam_update(p, grads[k], self.m[k], self.v[k], self.lr, self.b1, self.b2, self.eps, c1, c2)

    def state_dict(self):
        """The optimizer state as host arrays (copies): step count and both moments per parameter."""
        state = {"t": np.array(self.t)}
        for k in self.params:
            state["m." + k] = np.array(self.m[k])
            state["v." + k] = np.array(self.v[k])
        return state

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s arrays; all are checked (keys, exact shapes, finite,
        v ≥ 0, t a non-negative integer) before anything changes."""
        self.t, moments = self.checked_state(state)
        for k in self.params:
            self.m[k][...] = moments["m." + k]
            self.v[k][...] = moments["v." + k]

    def checked_state(self, state):
        """(t, moments) of a :meth:`state_dict`, every array checked against the parameters."""
        if not hasattr(state, "keys") or "t" not in state:
            raise ValueError("state must be a dict with the step count 't' and the moments 'm.*', 'v.*'")
        t = state["t"]
        t = t[()] if isinstance(t, np.ndarray) and t.shape == () else t
        t = checks.integer("state['t']", t, minimum=0)
        like = {f"{w}.{k}": p for w in "mv" for k, p in self.params.items()}
        moments = checks.params("state", {k: v for k, v in state.items() if k != "t"}, like)
        bad = [
            k
            for k in like
            if k.startswith("v.") and isinstance(moments[k], np.ndarray) and moments[k].size and moments[k].min() < 0
        ]
        if bad:
            raise ValueError(f"state[{bad[0]!r}] holds negative second moments")
        return t, moments
