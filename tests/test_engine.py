"""The training engine and the backend choice.

The Engine runs the reference math through an ops object. With NumpyOps in float64 it must give
the reference VAE's loss and gradients to rounding (1e-12): it calls the same oracles, only in a
different order of buffers. On cpu-fused (float32) a training step must match the numpy backend's
step with the same ε to float32 tolerance, and stay close over ten Adam steps; its own noise is
the Philox stream keyed by the model's generator.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minivae
from kernels.engine import FlatParams
from kernels.fast import FastVAE
from kernels.reference import NumpyOps
from minivae import backend

TINY = dict(data_dim=11, latent=3, seed=4)


def engine_vae(**kw):
    vae = FastVAE(**kw, ops=NumpyOps())
    return vae, vae.engine


def data(B, D, seed=0):
    return np.random.default_rng(seed).random((B, D))


@pytest.mark.parametrize("hidden", [(9,), (8, 6)])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_engine_on_numpy_ops_reproduces_reference_float64(hidden, activation):
    kw = dict(TINY, hidden=hidden, activation=activation, dtype="float64", beta=0.6)
    ref = minivae.VAE(**kw)
    vae, eng = engine_vae(**kw)
    x = data(5, 11)
    for _ in range(2):  # the second forward reuses the workspaces and draws new ε from the rng
        loss_ref, loss = ref.forward(x), eng.forward(x)
        assert abs(loss - loss_ref) <= 1e-12 * abs(loss_ref)
        for k in ("recon", "kl"):
            assert abs(vae.last[k] - ref.last[k]) <= 1e-12 * (1 + abs(ref.last[k]))
        g_ref, g = ref.backward(), eng.backward()
        assert list(g) == list(g_ref)
        for k in g_ref:
            np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-12, atol=1e-12)
    mu, lv = eng.encode(x)
    mu_ref, lv_ref = ref.encode(x)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lv, lv_ref, rtol=1e-12, atol=1e-12)
    z = np.random.default_rng(1).standard_normal((4, 3))
    np.testing.assert_allclose(eng.decode_logits(z), ref.decode_logits(z), rtol=1e-12, atol=1e-12)


def test_engine_gradient_central_differences_float64():
    vae, eng = engine_vae(**TINY, hidden=(5,), dtype="float64", beta=0.8)
    x = data(4, 11, seed=2)
    eps = np.random.default_rng(3).standard_normal((4, 3))
    eng.forward(x, eps)
    grads = {k: g.copy() for k, g in eng.backward().items()}
    h = 1e-6
    rng = np.random.default_rng(0)
    for k, p in vae.params.items():
        for idx in map(tuple, rng.integers(0, p.shape, size=(3, p.ndim))):
            old = p[idx]
            p[idx] = old + h
            up = eng.forward(x, eps)
            p[idx] = old - h
            down = eng.forward(x, eps)
            p[idx] = old
            numeric = (up - down) / (2 * h)
            assert abs(numeric - grads[k][idx]) <= 1e-6 + 1e-5 * abs(numeric), (k, idx)


def test_flat_params_and_workspaces():
    vae, eng = engine_vae(**TINY, hidden=(6,))
    before = {k: p.copy() for k, p in minivae.VAE(**TINY, hidden=(6,)).params.items()}
    assert isinstance(vae.params, FlatParams) and vae.params.flat.shape == (vae.num_params(),)
    for k, p in vae.params.items():
        np.testing.assert_array_equal(p, before[k])
        assert np.shares_memory(p, vae.params.flat)
    vae.params.flat[:] = 0.5
    assert all((p == 0.5).all() for p in eng.get_params().values())
    eng.set_params(before)
    for k, p in eng.get_params().items():
        np.testing.assert_array_equal(p, before[k])
    with pytest.raises(ValueError):  # the model checks the values; its engine trusts them
        vae.set_params({**before, "enc0.W": before["enc0.W"].T})

    x = data(6, 11).astype(np.float32)
    eng.forward(x)
    ws = eng._workspaces[6]
    eng.backward()
    eng.forward(x)
    assert eng._workspaces[6] is ws and len(eng._workspaces) == 1  # same B: reused
    eng.forward(x[:2])
    assert len(eng._workspaces) == 2  # a new B gets its own


def steps(vae, x, n):
    opt = minivae.Adam(vae.params, lr=1e-3)
    noise = np.random.default_rng(5)  # the same ε for both backends (they draw ε differently)
    losses = []
    for _ in range(n):
        losses.append(vae.forward(x, noise.standard_normal((x.shape[0], vae.latent))))
        opt.step(vae.backward())
    return losses


def test_cpu_fused_step_matches_numpy_backend():
    kw = dict(data_dim=30, latent=7, hidden=(20,), seed=9, beta=0.9)
    ref, fused = minivae.VAE(**kw), minivae.VAE(**kw, backend="cpu-fused")
    assert fused.backend == "cpu-fused" and isinstance(fused.params, FlatParams)
    assert [(k, p.shape) for k, p in ref.params.items()] == [(k, p.shape) for k, p in fused.params.items()]
    x = data(13, 30).astype(np.float32)
    eps = np.random.default_rng(6).standard_normal((13, 7))
    loss_ref, loss = ref.forward(x, eps), fused.forward(x, eps)
    assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)
    g_ref, g = ref.backward(), fused.backward()
    for k in g_ref:  # float32: a few ulps of the largest gradient entry
        np.testing.assert_allclose(g[k], g_ref[k], rtol=1e-4, atol=1e-5 * np.abs(g_ref[k]).max())
    # ten Adam steps: the runs stay together (float32 rounding grows slowly, Adam normalises it)
    ref2, fused2 = minivae.VAE(**kw), minivae.VAE(**kw, backend="cpu-fused")
    l_ref, l_fused = steps(ref2, x, 10), steps(fused2, x, 10)
    np.testing.assert_allclose(l_fused, l_ref, rtol=1e-4)
    for k, p in ref2.params.items():
        np.testing.assert_allclose(fused2.params[k], p, atol=1e-4)


def test_cpu_fused_draws_philox_noise_keyed_by_the_model_generator():
    """ε = the standard_normal_philox stream for a key of two words from the model's generator:
    the same seed gives the same noise, every step a new key, and the generator's state (which a
    checkpoint saves) is all that decides the noise."""
    import copy

    from kernels.reference import standard_normal_philox

    B, Z = 6, 5
    vae = minivae.VAE(data_dim=12, latent=Z, hidden=(8,), seed=3, backend="cpu-fused")
    x = data(B, 12).astype(np.float32)
    rng = copy.deepcopy(vae.rng)
    drawn = []
    for _ in range(2):
        vae.forward(x)
        drawn.append(vae.engine._step[2].copy())
        key = rng.integers(0, 2**32, size=2, dtype=np.uint64)
        expected = standard_normal_philox(key, B * Z).reshape(B, Z)
        np.testing.assert_allclose(drawn[-1], expected, rtol=1e-6, atol=1e-6)
    assert not np.allclose(drawn[0], drawn[1])
    assert vae.rng.bit_generator.state == rng.bit_generator.state  # two words per step, no more
    twin = minivae.VAE(data_dim=12, latent=Z, hidden=(8,), seed=3, backend="cpu-fused")
    assert twin.forward(x) == minivae.VAE(data_dim=12, latent=Z, hidden=(8,), seed=3, backend="cpu-fused").forward(x)


def test_adam_state_dict_on_flat_params():
    vae = minivae.VAE(**TINY, hidden=(4,), backend="cpu-fused")
    opt = minivae.Adam(vae.params)
    x = data(3, 11).astype(np.float32)
    vae.forward(x)
    opt.step(vae.backward())
    state = opt.state_dict()
    assert set(state) == {"t"} | {f"{s}.{k}" for s in "mv" for k in vae.params}
    opt2 = minivae.Adam(vae.params)
    opt2.load_state_dict(state)
    np.testing.assert_array_equal(opt2.m_flat, opt.m_flat)


def test_backend_names():
    with pytest.raises(ValueError, match="choose from numpy, cpu-fused, cupy, numba-cuda, auto"):
        minivae.VAE(backend="bogus")
    with pytest.raises(ValueError, match="float32"):
        minivae.VAE(**TINY, dtype="float64", backend="cpu-fused")
    assert backend.resolve("auto") in ("cupy", "cpu-fused")
    assert backend.resolve("numpy") == "numpy"
    assert {"numpy", "cpu-fused"} <= set(backend.available_backends())
    assert minivae.VAE(**TINY, backend="auto").backend in ("cupy", "cpu-fused")


def test_import_does_not_load_gpu_modules_or_numba():
    code = (
        "import sys, minivae; vae = minivae.VAE(data_dim=4, latent=2, hidden=(3,)); "
        "bad = [m for m in ('cupy', 'numba', 'numba.cuda') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert out.stdout.strip() == "[]"
