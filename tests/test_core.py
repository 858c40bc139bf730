"""The NumPy reference: every derivative against central differences (float64), Adam, stability."""

import numpy as np
import pytest
from gradcheck import numerical_grad, rel_error

import minivae
from minivae import layers, losses
from minivae.optim import Adam

TOL = 1e-6  # relative error of analytic vs central-difference gradients, float64


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def check_op(forward, backward_of_weighted_sum, inputs, rng):
    """Check an op's backward: L = Σ w ⊙ forward(*inputs) with random weights w = ∂L/∂out."""
    out = forward()
    w = rng.standard_normal(np.shape(out))

    def loss():
        return float((w * forward()).sum())

    analytic = backward_of_weighted_sum(w)
    for x, g in zip(inputs, analytic, strict=True):
        assert rel_error(numerical_grad(loss, x), g) < TOL


# ------------------------------------------------------------------------------ layers


def test_dense_gradients(rng):
    x = rng.standard_normal((5, 7))
    W = rng.standard_normal((7, 3))
    b = rng.standard_normal(3)

    def back(dy):
        _, cache = layers.dense_forward(x, W, b)
        return layers.dense_backward(dy, cache, W)

    check_op(lambda: layers.dense_forward(x, W, b)[0], back, [x, W, b], rng)


@pytest.mark.parametrize("name", ["relu", "tanh", "identity"])
def test_activation_gradients(name, rng):
    fwd = getattr(layers, name + "_forward")
    bwd = getattr(layers, name + "_backward")
    a = rng.standard_normal((6, 5))
    a[np.abs(a) < 1e-2] = 0.5  # keep ReLU away from its kink, where it has no derivative

    def back(dy):
        return [bwd(dy, fwd(a)[1])]

    check_op(lambda: fwd(a)[0], back, [a], rng)


def test_layer_objects_match_functions(rng):
    d = layers.Dense(4, 3, rng, "he", np.float64)
    x = rng.standard_normal((2, 4))
    y, cache = d.forward(x)
    assert np.array_equal(y, x @ d.W + d.b)
    dx, g = d.backward(np.ones_like(y), cache)
    assert g["W"].shape == d.W.shape and g["b"].shape == d.b.shape and dx.shape == x.shape


@pytest.mark.parametrize("init,activation", [("he", "relu"), ("glorot", "tanh")])
def test_initialisation_keeps_activation_scale(init, activation, rng):
    """He/Glorot: after 5 wide layers the activations neither vanish nor explode."""
    h = rng.standard_normal((2000, 256))
    act = layers.ACTIVATIONS[activation]()
    scale0 = np.sqrt((h**2).mean())
    for _ in range(5):
        dense = layers.Dense(256, 256, rng, init, np.float64)
        h = act.forward(dense.forward(h)[0])[0]
    ratio = np.sqrt((h**2).mean()) / scale0
    assert 0.3 < ratio < 3, ratio


def test_unknown_init_rejected(rng):
    with pytest.raises(ValueError):
        layers.Dense(2, 2, rng, "zeros")


# ------------------------------------------------------------------------------ losses


def test_bernoulli_nll_gradient(rng):
    a = rng.standard_normal((4, 6)) * 3
    x = rng.random((4, 6))
    check_op(lambda: losses.bernoulli_nll(a, x), lambda w: [losses.bernoulli_nll_backward(w, a, x)], [a], rng)


def test_bernoulli_nll_is_binary_cross_entropy(rng):
    a = rng.standard_normal((3, 5))
    x = rng.random((3, 5))
    p = 1 / (1 + np.exp(-a))
    bce = -(x * np.log(p) + (1 - x) * np.log(1 - p)).sum(axis=1)
    np.testing.assert_allclose(losses.bernoulli_nll(a, x), bce, rtol=1e-12)


def test_gaussian_kl_gradient_and_value(rng):
    mu = rng.standard_normal((4, 3))
    logvar = rng.standard_normal((4, 3))
    check_op(
        lambda: losses.gaussian_kl(mu, logvar), lambda w: losses.gaussian_kl_backward(w, mu, logvar), [mu, logvar], rng
    )
    # KL(N(0,1) ‖ N(0,1)) = 0, and a Monte-Carlo estimate agrees with the closed form.
    assert losses.gaussian_kl(np.zeros((1, 3)), np.zeros((1, 3)))[0] == 0
    m, lv = np.array([[0.7]]), np.array([[-0.4]])
    z = m + np.exp(0.5 * lv) * rng.standard_normal((400_000, 1))
    log_q = -0.5 * (np.log(2 * np.pi) + lv + (z - m) ** 2 / np.exp(lv))
    log_p = -0.5 * (np.log(2 * np.pi) + z**2)
    assert abs((log_q - log_p).mean() - losses.gaussian_kl(m, lv)[0]) < 5e-3


def test_reparameterization_gradient(rng):
    mu = rng.standard_normal((4, 3))
    logvar = rng.standard_normal((4, 3))
    eps = rng.standard_normal((4, 3))
    check_op(
        lambda: losses.reparameterize(mu, logvar, eps),
        lambda w: losses.reparameterize_backward(w, logvar, eps),
        [mu, logvar],
        rng,
    )


def test_reparameterization_has_the_right_distribution(rng):
    """σ = exp(½ log σ²): the samples' standard deviation is σ, not σ² (a classic bug)."""
    eps = rng.standard_normal((200_000, 1))
    z = losses.reparameterize(np.array([[1.5]]), np.array([[np.log(4.0)]]), eps)
    assert abs(z.mean() - 1.5) < 0.02 and abs(z.std() - 2.0) < 0.02


# ------------------------------------------------------------------------------ the whole ELBO


def small_vae(**kw):
    args = dict(data_dim=10, latent=4, hidden=(8, 6), seed=3, dtype="float64")
    args.update(kw)
    return minivae.VAE(**args)


@pytest.mark.parametrize("activation,beta", [("relu", 1.0), ("tanh", 0.5)])
def test_negative_elbo_gradient_every_parameter(activation, beta, rng):
    vae = small_vae(activation=activation, beta=beta)
    x = rng.random((5, 10))
    eps = rng.standard_normal((5, 4))
    vae.forward(x, eps)
    grads = vae.backward()
    assert list(grads) == list(vae.params)
    for k, p in vae.params.items():
        assert grads[k].shape == p.shape
        err = rel_error(numerical_grad(lambda: vae.forward(x, eps), p), grads[k])
        assert err < TOL, (k, err)


def test_forward_is_recon_plus_beta_kl(rng):
    vae = small_vae(beta=2.5)
    x = rng.random((3, 10))
    loss = vae.forward(x, rng.standard_normal((3, 4)))
    assert loss == pytest.approx(vae.last["recon"] + 2.5 * vae.last["kl"], rel=1e-12)
    assert vae.last["kl"] > 0


def test_public_api_shapes(rng):
    vae = minivae.VAE(data_dim=784, latent=1000, hidden=(64,), seed=0)
    assert list(vae.params) == ["enc0.W", "enc0.b", "enc1.W", "enc1.b", "dec0.W", "dec0.b", "dec1.W", "dec1.b"]
    assert vae.params["enc0.W"].shape == (784, 64) and vae.params["enc1.W"].shape == (64, 2000)
    assert vae.params["dec0.W"].shape == (1000, 64) and vae.params["dec1.b"].shape == (784,)
    assert all(p.dtype == np.float32 for p in vae.params.values())
    x = rng.random((3, 784)).astype(np.float32)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (3, 1000)
    probs = vae.decode(mu)
    assert probs.shape == (3, 784) and (probs >= 0).all() and (probs <= 1).all()
    assert vae.sample(5).shape == (5, 784)
    assert np.isfinite(vae.forward(x))
    grads = vae.backward()
    assert {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in vae.params.items()}


@pytest.mark.parametrize(
    "kw",
    [
        dict(latent=0),
        dict(latent=-3),
        dict(hidden=(0,)),
        dict(dtype="int32"),
        dict(activation="gelu"),
        dict(backend="bogus"),
    ],
)
def test_bad_model_arguments(kw):
    with pytest.raises(ValueError):
        small_vae(**kw)


def test_vae_and_ae_share_what_does_not_depend_on_the_encoder_output():
    from minivae.ae import AE
    from minivae.mlp import MLPModel

    for cls in (minivae.VAE, AE):
        assert issubclass(cls, MLPModel)
        for name in ("__new__", "decode_logits", "decode", "sample", "get_params", "set_params"):
            assert name not in vars(cls), (cls.__name__, name)
    ae = AE(12, 3, (5,), seed=2)
    assert ae.seed == 2 and ae.decode(np.zeros((1, 3))).shape == (1, 12)


def test_backward_needs_forward():
    with pytest.raises(RuntimeError):
        small_vae().backward()


# ------------------------------------------------------------------------------ Adam


def test_adam_first_step_is_lr_times_sign(rng):
    params = {"a": rng.standard_normal((3, 4)), "b": rng.standard_normal(5)}
    before = {k: p.copy() for k, p in params.items()}
    grads = {"a": rng.standard_normal((3, 4)) * 100, "b": rng.standard_normal(5) * 1e-3}
    Adam(params, lr=0.01).step(grads)
    for k in params:
        np.testing.assert_allclose(params[k] - before[k], -0.01 * np.sign(grads[k]), rtol=1e-4)


def test_adam_minimises_a_quadratic(rng):
    A = rng.standard_normal((6, 6))
    A = A @ A.T + np.eye(6)  # positive definite
    target = rng.standard_normal(6)
    params = {"w": np.zeros(6)}
    opt = Adam(params, lr=0.05)
    for _ in range(3000):
        opt.step({"w": A @ (params["w"] - target)})  # ∇ of ½ (w − t)ᵀ A (w − t)
    np.testing.assert_allclose(params["w"], target, atol=1e-3)


def test_adam_matches_algorithm_1_by_hand():
    p, g1, g2 = np.array([1.0]), np.array([0.5]), np.array([-2.0])
    opt = Adam({"p": p}, lr=0.1, betas=(0.8, 0.9), eps=1e-8)
    opt.step({"p": g1})
    opt.step({"p": g2})
    m = 0.8 * (0.2 * 0.5) + 0.2 * -2.0
    v = 0.9 * (0.1 * 0.25) + 0.1 * 4.0
    step2 = 0.1 * (m / (1 - 0.8**2)) / (np.sqrt(v / (1 - 0.9**2)) + 1e-8)
    step1 = 0.1 * 0.5 / (0.5 + 1e-8)
    assert p[0] == pytest.approx(1.0 - step1 - step2, rel=1e-12)


def test_adam_rejects_non_positive_lr():
    with pytest.raises(ValueError):
        Adam({"p": np.zeros(1)}, lr=-1e-3)


def test_adam_imports_nothing_from_kernels_and_follows_the_params():
    """No cycle optim → kernels → optim: parameters name their own Adam (``adam_class``), which the
    flat parameters of a fast model do (kernels.flat.FastAdam); a plain dict gets this Adam."""
    import ast
    import inspect

    from minivae import optim

    imported = [
        getattr(node, "module", None) or node.names[0].name
        for node in ast.walk(ast.parse(inspect.getsource(optim)))
        if isinstance(node, (ast.Import, ast.ImportFrom))
    ]
    assert not [m for m in imported if m.split(".")[0] == "kernels"], imported

    class Own(Adam):
        pass

    class Params(dict):
        adam_class = Own

    assert type(Adam({"p": np.zeros(1)})) is Adam
    assert type(Adam(Params(p=np.zeros(1)))) is Own


# ------------------------------------------------------------------------------ stability, dtypes, determinism


def test_extreme_logits_are_finite():
    a = np.array([[1000.0, -1000.0, 1000.0, -1000.0]], dtype=np.float32)
    x = np.array([[1.0, 0.0, 0.0, 1.0]], dtype=np.float32)
    loss = losses.bernoulli_nll(a, x)
    grad = losses.bernoulli_nll_backward(np.ones(1, np.float32), a, x)
    assert np.isfinite(loss).all() and np.isfinite(grad).all()
    assert loss[0] == pytest.approx(2000.0)  # two confidently wrong pixels cost |a| each
    np.testing.assert_array_equal(grad, [[0.0, 0.0, 1.0, -1.0]])


def test_extreme_inputs_through_the_model_are_finite(rng):
    vae = small_vae(dtype="float32")
    last = f"dec{len(vae.hidden)}"
    vae.params[last + ".b"][:] = np.where(np.arange(10) % 2, 1000.0, -1000.0)
    x = rng.random((4, 10)).astype(np.float32)
    assert np.isfinite(vae.forward(x))
    assert all(np.isfinite(g).all() for g in vae.backward().values())


def test_float32_and_float64_agree(rng):
    x = rng.random((6, 10))
    eps = rng.standard_normal((6, 4))
    v64, v32 = small_vae(dtype="float64"), small_vae(dtype="float32")
    for k in v32.params:  # identical start: the float32 model's own rounding of the weights
        v64.params[k][...] = v32.params[k]
    l64, l32 = v64.forward(x, eps), v32.forward(x, eps)
    assert l32 == pytest.approx(l64, rel=1e-5)
    g64, g32 = v64.backward(), v32.backward()
    for k in g64:
        assert g32[k].dtype == np.float32
        assert rel_error(g32[k], g64[k]) < 1e-4, k


def test_same_seed_same_losses_bit_for_bit(rng):
    x = rng.random((16, 10)).astype(np.float32)

    def run(seed):
        vae = small_vae(dtype="float32", seed=seed)
        opt = Adam(vae.params, lr=1e-2)
        out = []
        for _ in range(20):
            out.append(vae.forward(x))
            opt.step(vae.backward())
        return out

    a, b, c = run(7), run(7), run(8)
    assert a == b
    assert a != c
