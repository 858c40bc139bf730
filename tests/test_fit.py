"""One training loop: :func:`minivae.linear.fit` trains the linear VAE, the linear autoencoder and
:mod:`minivae.identity`'s MLP models through :func:`minivae.loop.run_epoch`, the main job's loop.

Each case runs a few hundred digits for a few steps through ``linear.fit`` and through a plain
re-implementation of the loop it replaced (``linear.fit`` as it was, and identity's own MLP loop),
and requires the same numbers bit for bit: the same batches, the same draws of the generators,
the same Adam steps.
"""

import math
import warnings

import numpy as np
import pytest

import minivae
from minivae import linear
from minivae.ae import AE
from minivae.backend import available_backends
from minivae.data import batches, binarize, load_mnist
from minivae.optim import Adam


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """300 grey training digits of the offline sample (no network, an empty cache)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = load_mnist(limit=300, download=False, cache_dir=tmp_path_factory.mktemp("cache"))
    return binarize(data.train_x, "none")


def old_linear_fit(model, x, steps, batch_size, lr, lr_final=None, rng=None, hold=0.5, fast_params=(), fast_factor=1.0):
    """The loop of linear.fit before it was shared (progress bar left out)."""
    fast = {k: p for k, p in model.params.items() if k in fast_params}
    opt = Adam({k: p for k, p in model.params.items() if k not in fast}, lr=lr)
    opt_fast = Adam(fast, lr=lr * fast_factor) if fast else None
    ratio = 1.0 if lr_final is None else lr_final / lr
    start = int(hold * steps)
    history, t = [], 0
    while t < steps:
        for idx in batches(len(x), batch_size, rng):
            if t == steps:
                break
            opt.lr = lr * ratio ** (max(t - start, 0) / max(steps - 1 - start, 1))
            loss = model.forward(x[idx])
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {t + 1}")
            grads = model.backward()
            opt.step({k: g for k, g in grads.items() if k not in fast})
            if opt_fast is not None:
                opt_fast.lr = opt.lr * fast_factor
                opt_fast.step({k: grads[k] for k in fast})
            history.append(loss)
            t += 1
    return history


def old_identity_mlp(model, train_x, epochs, batch_size, lr, rng):
    """identity.py's own MLP loop before it used linear.fit: → every batch's loss."""
    opt = Adam(model.params, lr=lr)
    history = []
    for _ in range(epochs):
        x_epoch = binarize(train_x, "dynamic", rng)
        for idx in batches(len(train_x), batch_size, rng):
            history.append(model.forward(x_epoch[idx]))
            opt.step(model.backward())
    return history


def same(a, b):
    """Bit for bit: histories (lists of floats) or parameter dicts."""
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
    else:
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("estimator", ["exact", "sample"])
@pytest.mark.parametrize("steps, batch_size", [(23, 64), (10, 60)])  # the last epoch cut short; whole epochs
def test_linear_vae_trajectory_is_unchanged(digits, estimator, steps, batch_size):
    runs = []
    for loop in (old_linear_fit, linear.fit):
        model = linear.LinearVAE(784, 12, 0.05, seed=1, dtype="float32", estimator=estimator)
        model.params["b"][...] = digits.mean(axis=0)
        rng = np.random.default_rng([0, 2])
        kw = dict(hold=0.3, fast_params=("logs2",), fast_factor=10.0)
        history = loop(model, digits, steps, batch_size, 3e-3, 3e-5, rng, **kw)
        runs.append((history, model.get_params(), rng.bit_generator.state, model.rng.bit_generator.state))
    (h0, p0, r0, m0), (h1, p1, r1, m1) = runs
    assert len(h1) == steps
    same(h0, h1)
    same(p0, p1)
    assert r0 == r1 and m0 == m1  # the same draws of the data order and of ε


def test_linear_autoencoder_trajectory_is_unchanged(digits):
    runs = []
    for loop in (old_linear_fit, linear.fit):
        model = linear.LinearAE(784, 30, seed=2, dtype="float32")
        history = loop(model, digits, 17, 64, 3e-3, 1e-4, np.random.default_rng([2, 2]))
        runs.append((history, {k: p.copy() for k, p in model.params.items()}))
    same(runs[0][0], runs[1][0])
    same(runs[0][1], runs[1][1])


@pytest.mark.parametrize("backend", [b for b in ("numpy", "cpu-fused") if b in available_backends()])
@pytest.mark.parametrize("cls", [minivae.VAE, AE], ids=["VAE", "AE"])
def test_identity_mlp_trajectory_is_unchanged(digits, backend, cls):
    """Two epochs of dynamic binarization, as identity trains its MLP models."""
    epochs, batch_size = 2, 64
    runs = []
    for new in (False, True):
        model = cls(784, 9, (20,), seed=3, backend=backend)
        rng = np.random.default_rng([3, 2])
        if new:
            steps = epochs * math.ceil(len(digits) / batch_size)
            history = linear.fit(model, digits, steps, batch_size, 1e-3, rng=rng, binarization="dynamic")
        else:
            history = old_identity_mlp(model, digits, epochs, batch_size, 1e-3, rng)
        runs.append((history, model.get_params(), rng.bit_generator.state, model.rng.bit_generator.state))
    (h0, p0, r0, m0), (h1, p1, r1, m1) = runs
    same(h0, h1)
    same(p0, p1)
    assert r0 == r1 and m0 == m1


def test_a_non_finite_loss_stops_the_loop_unless_told_not_to(digits):
    class Diverging(linear.LinearAE):
        def forward(self, x, eps=None):
            super().forward(x)
            return math.nan

    with pytest.raises(FloatingPointError, match="step 1"):
        linear.fit(Diverging(784, 4), digits, 3, 100, 1e-3)
    model = Diverging(784, 4)
    before = {k: p.copy() for k, p in model.params.items()}
    history = linear.fit(model, digits, 3, 100, 1e-3, check_finite=False)
    assert len(history) == 1 and math.isnan(history[0])  # stopped at the first non-finite loss
    same(before, model.params)  # ... which updated nothing


def test_the_small_models_train_through_the_main_loop(digits, monkeypatch):
    """linear.fit takes its steps through loop.run_epoch, the loop of the main job and the study."""
    from minivae import loop

    calls = []
    real = loop.run_epoch
    monkeypatch.setattr(loop, "run_epoch", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    assert len(linear.fit(linear.LinearAE(784, 4), digits, 7, 100, 1e-3)) == 7
    assert len(calls) == 3  # 300 digits in batches of 100: epochs of 3, 3 and 1 steps
