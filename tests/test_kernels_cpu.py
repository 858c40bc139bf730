"""cpu-fused kernels against their NumPy oracles (kernels/reference.py), and the flat-buffer engine."""

import re

import numpy as np
import pytest
from gradcheck import numerical_grad, rel_error

import kernels.reference as ref
import minivae
from kernels.engine import Engine
from kernels.reference import NumpyOps

cpu_fused = pytest.importorskip("kernels.cpu_fused", reason="numba is not installed")

# float32 tolerance, atol + rtol·|ref|: the kernels and the oracle round differently (fused
# multiply-adds, a different order of summation), by a few float32 ulps per term.
ATOL, RTOL = 1e-5, 1e-5


def close(got, want, atol=ATOL, rtol=RTOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    bad = np.abs(got - want) > atol + rtol * np.abs(want)
    assert not bad.any(), f"{bad.sum()} entries differ; worst {np.abs(got - want).max():.3g}"


@pytest.fixture
def ops():
    return cpu_fused.CpuFusedOps()


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


SHAPES = [(1, 1), (5, 3), (17, 29), (128, 300)]  # ragged on purpose


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ref.ACTS)
def test_bias_act_and_backward(ops, rng, shape, act):
    a, b, dy = f32(rng, *shape, scale=3), f32(rng, shape[1]), f32(rng, *shape)
    out = np.empty_like(a)
    ops.bias_act(a, b, act, out)
    close(out, ref.bias_act(a, b, act))
    inplace = a.copy()
    ops.bias_act(inplace, b, act, inplace)  # out aliasing a, as the engine calls it
    close(inplace, out, 0, 0)
    y = out
    d = np.empty_like(dy)
    ops.act_backward(dy, y, act, d)
    close(d, ref.act_backward(dy, y, act))


@pytest.mark.parametrize("shape", SHAPES + [(3, 1000)])
def test_colsum(ops, rng, shape):
    dy = f32(rng, *shape)
    out = np.full(shape[1], np.nan, np.float32)
    ops.colsum(dy, out)
    close(out, ref.colsum(dy), atol=1e-4)


@pytest.mark.parametrize("B,Z", [(1, 1), (7, 5), (33, 200)])
def test_reparam_kl_forward_and_backward(ops, rng, B, Z):
    h, eps, dz = f32(rng, B, 2 * Z), f32(rng, B, Z), f32(rng, B, Z)
    z, kl = np.empty((B, Z), np.float32), np.empty(B, np.float32)
    ops.reparam_kl(h, eps, z, kl)
    z_ref, kl_ref = ref.reparam_kl(h, eps)
    close(z, z_ref)
    close(kl, kl_ref, atol=1e-4)
    dh = np.empty_like(h)
    ops.reparam_kl_backward(dz, h, eps, 0.37, dh)
    close(dh, ref.reparam_kl_backward(dz, h, eps, np.float32(0.37)))


@pytest.mark.parametrize("B,D", [(1, 1), (6, 33), (16, 784)])
@pytest.mark.parametrize("binary", [True, False])
def test_bernoulli_nll(ops, rng, B, D, binary):
    a = f32(rng, B, D, scale=6)
    x = (rng.random((B, D)) > 0.5 if binary else rng.random((B, D))).astype(np.float32)
    loss, da = np.empty(B, np.float32), np.empty_like(a)
    ops.bernoulli_nll(a, x, 0.25, loss, da)
    loss_ref, da_ref = ref.bernoulli_nll(a.astype(np.float64), x, 0.25)
    close(loss, loss_ref, atol=1e-3, rtol=1e-5)  # a sum of up to 784 terms
    close(da, da_ref)


def test_bernoulli_nll_extreme_logits(ops):
    a = np.array([[1000, -1000, 1000, -1000, 88, -88, 0]], np.float32)
    x = np.array([[1, 0, 0, 1, 1, 1, 0.5]], np.float32)
    loss, da = np.empty(1, np.float32), np.empty_like(a)
    ops.bernoulli_nll(a, x, 1.0, loss, da)
    loss_ref, da_ref = ref.bernoulli_nll(a.astype(np.float64), x.astype(np.float64), 1.0)
    assert np.isfinite(loss).all() and np.isfinite(da).all()
    close(loss, loss_ref, atol=1e-3)
    close(da, da_ref)


def test_adam_one_pass_matches_the_oracle(ops, rng):
    p, g = f32(rng, 1001), f32(rng, 1001)
    m, v = f32(rng, 1001, scale=0.1), np.abs(f32(rng, 1001, scale=0.1))
    want = [a.copy() for a in (p, m, v)]
    ref.adam(want[0], g, want[1], want[2], 1e-2, 0.9, 0.999, 1e-8, 1 - 0.9**3, 1 - 0.999**3)
    ops.adam(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 1 - 0.9**3, 1 - 0.999**3)
    for got, w in zip((p, m, v), want):
        close(got, w)


def test_kernel_list_is_honest():
    """Every kernel the module docstring lists exists, is compiled, and is in KERNELS."""
    listed = set(re.findall(r"``(\w+)``", cpu_fused.__doc__.split("Kernels")[1].split("Matrix")[0]))
    assert listed == set(cpu_fused.KERNELS)
    for name in cpu_fused.KERNELS:
        assert hasattr(getattr(cpu_fused, name), "py_func"), name


def test_kernels_stay_float32(ops, rng):
    """No silent float64: every float32 kernel compiled for float32 arrays only."""
    h, eps = f32(rng, 4, 6), f32(rng, 4, 3)
    ops.reparam_kl(h, eps, np.empty((4, 3), np.float32), np.empty(4, np.float32))
    for name in cpu_fused.KERNELS:
        for sig in getattr(cpu_fused, name).signatures:
            assert "float64" not in str(sig), (name, sig)


# ------------------------------------------------------------------------------------ engine


def tiny(backend="numpy", dtype="float64", **kw):
    args = dict(data_dim=12, latent=3, hidden=(8, 5), seed=4, dtype=dtype, backend=backend)
    args.update(kw)
    return minivae.VAE(**args)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_engine_with_reference_ops_reproduces_the_model(rng, activation):
    x, eps = rng.random((6, 12)), rng.standard_normal((6, 3))
    a = tiny(activation=activation, beta=0.7)
    b = tiny(activation=activation, beta=0.7)
    b._engine = Engine(b, NumpyOps())
    assert list(b.params) == list(a.params)
    la, lb = a.forward(x, eps), b.forward(x, eps)
    assert lb == pytest.approx(la, rel=1e-12)
    ga, gb = a.backward(), b.backward()
    for k in ga:
        np.testing.assert_allclose(gb[k], ga[k], rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(b.encode(x)[0], a.encode(x)[0], rtol=1e-12)


def test_engine_gradient_by_central_differences(rng):
    x, eps = rng.random((4, 12)), rng.standard_normal((4, 3))
    vae = tiny()
    vae._engine = Engine(vae, NumpyOps())
    vae.forward(x, eps)
    grads = {k: g.copy() for k, g in vae.backward().items()}
    for k, p in vae.params.items():
        assert rel_error(numerical_grad(lambda: vae.forward(x, eps), p), grads[k]) < 1e-6, k


def test_cpu_fused_step_matches_numpy_step(rng):
    x = (rng.random((32, 12)) > 0.5).astype(np.float32)
    a, b = tiny(dtype="float32"), tiny(backend="cpu-fused", dtype="float32")
    assert b.backend == "cpu-fused"
    assert {k: v.shape for k, v in a.params.items()} == {k: v.shape for k, v in b.params.items()}
    oa, ob = minivae.Adam(a.params, lr=1e-2), minivae.Adam(b.params, lr=1e-2)
    la, lb = a.forward(x), b.forward(x)  # same seed: the same ε from each model's generator
    assert lb == pytest.approx(la, rel=1e-5)
    ga, gb = a.backward(), b.backward()
    for k in ga:
        close(gb[k], ga[k], atol=1e-5, rtol=1e-4)
    oa.step(ga)
    ob.step(gb)
    for _ in range(9):  # ten steps stay together
        for model, opt in ((a, oa), (b, ob)):
            model.forward(x)
            opt.step(model.backward())
    assert b.last["loss"] == pytest.approx(a.last["loss"], rel=1e-4)
    for k in a.params:
        close(b.params[k], a.params[k], atol=1e-4, rtol=1e-3)


def test_checkpoint_round_trip_on_cpu_fused(rng):
    b = tiny(backend="cpu-fused", dtype="float32")
    opt = minivae.Adam(b.params)
    x = rng.random((5, 12)).astype(np.float32)
    b.forward(x)
    opt.step(b.backward())
    params, state = b.get_params(), opt.state_dict()
    c = tiny(backend="cpu-fused", dtype="float32", seed=99)
    opt2 = minivae.Adam(c.params)
    c.set_params(params)
    opt2.load_state_dict(state)
    for k in params:
        assert np.array_equal(c.params[k], b.params[k])
        assert np.array_equal(opt2.state_dict()["m." + k], state["m." + k])


def test_fast_backends_refuse_float64():
    with pytest.raises(ValueError, match="float32"):
        tiny(backend="cpu-fused", dtype="float64")


def test_auto_picks_a_fast_backend_for_float32_and_numpy_for_float64():
    from minivae import backend

    assert backend.resolve("auto", "float64") == "numpy"
    assert backend.resolve("auto", "float32") in ("cupy", "cpu-fused")
    with pytest.raises(ValueError, match="choose from"):
        backend.resolve("bogus")
