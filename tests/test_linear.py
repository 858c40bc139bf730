"""The linear Gaussian VAE against its closed form (probabilistic PCA), the Gaussian NLL, the
reconstruction metric of the identity question, and both commands' handling of bad input."""

import json
import math
import struct

import numpy as np
import pytest
from gradcheck import numerical_grad, rel_error

from minivae import identity, linear, linear_cli, losses

TOL = 1e-6  # relative error of analytic vs central-difference gradients, float64


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


# ------------------------------------------------------------------------------ Gaussian NLL


def test_gaussian_nll_value_by_hand():
    # one pixel: x = 1, m = 0, σ² = ½  →  ½ (log π + 1²/½) = ½ log π + 1
    got = losses.gaussian_nll(np.array([[0.0]]), np.array([[1.0]]), 0.5)
    assert got.shape == (1,) and got[0] == pytest.approx(0.5 * math.log(math.pi) + 1.0, abs=1e-15)


def test_gaussian_nll_gradient(rng):
    m = rng.standard_normal((4, 6))
    x = rng.random((4, 6))
    w = rng.standard_normal(4)  # ∂L/∂ℓ_b
    for var in (0.01, 0.3, 2.0):
        numeric = numerical_grad(lambda var=var: float(w @ losses.gaussian_nll(m, x, var)), m)
        assert rel_error(numeric, losses.gaussian_nll_backward(w, m, x, var)) < TOL


# ------------------------------------------------------------------------------ gradients


def _random_model(cls, rng, **kw):
    model = cls(data_dim=6, latent=8, seed=3, dtype="float64", **kw)
    for p in model.params.values():  # away from the initial near-zero values
        p[...] = 0.5 * rng.standard_normal(p.shape)
    return model


@pytest.mark.parametrize("estimator", ["exact", "sample"])
@pytest.mark.parametrize("sigma2", [0.05, 1.3])
def test_linear_vae_gradients(rng, estimator, sigma2):
    model = _random_model(linear.LinearVAE, rng, sigma2=sigma2, estimator=estimator)
    x = rng.random((5, 6))
    eps = rng.standard_normal((5, 8))
    model.forward(x, eps)
    grads = model.backward()
    assert set(grads) == set(model.params)
    for k, p in model.params.items():
        assert grads[k].shape == p.shape
        numeric = numerical_grad(lambda: model.forward(x, eps), p)
        assert rel_error(numeric, grads[k]) < TOL, k


def test_linear_ae_gradients(rng):
    model = _random_model(linear.LinearAE, rng)
    x = rng.random((5, 6))
    model.forward(x)
    grads = model.backward()
    for k, p in model.params.items():
        assert rel_error(numerical_grad(lambda: model.forward(x), p), grads[k]) < TOL, k


def test_exact_estimator_is_the_mean_of_the_sample_estimator(rng):
    """E_ε of the one-sample loss is the closed-form loss: averaged over many ε they agree."""
    exact = _random_model(linear.LinearVAE, rng, sigma2=0.2)
    sample = linear.LinearVAE(6, 8, sigma2=0.2, dtype="float64", estimator="sample")
    sample.set_params(exact.params)
    x = np.repeat(rng.random((1, 6)), 20000, axis=0)  # one digit, 20,000 draws of ε
    eps = np.random.default_rng(0).standard_normal((20000, 8))
    target = exact.forward(x[:1])
    per_draw = sample.forward(x, eps)
    assert per_draw == pytest.approx(target, rel=0.01)
    assert exact.neg_elbo(x[:1])[0] == pytest.approx(target, rel=1e-12)


# ------------------------------------------------------------------------------ closed form

LAM = np.array([4.0, 2.0, 0.5, 0.05, 0.01])  # the synthetic spectrum: three directions above σ²
SIGMA2 = 0.1
MEAN = np.array([0.5, -1.0, 0.25, 2.0, 0.0])


def synthetic(n=2000, seed=0):
    """n points whose covariance (1/N) is exactly Q diag(LAM) Qᵀ and whose mean is exactly MEAN."""
    r = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(r.standard_normal((5, 5)))
    g = r.standard_normal((n, 5))
    g -= g.mean(axis=0)
    g = g @ np.linalg.inv(np.linalg.cholesky(g.T @ g / n)).T  # whitened: (1/N) gᵀg = I exactly
    return MEAN + (g * np.sqrt(LAM)) @ Q.T, Q


def test_closed_form_on_a_known_spectrum():
    x, Q = synthetic()
    mean, lam, U = linear.spectrum(x)
    assert np.allclose(mean, MEAN, atol=1e-12) and np.allclose(lam, LAM, atol=1e-12)
    assert np.allclose(np.abs(U.T @ Q), np.eye(5), atol=1e-9)  # the same axes, up to sign
    assert linear.n_above(lam, SIGMA2) == 3

    # By hand: q = 3 latents; C has eigenvalues 4, 2, 0.5, 0.1, 0.1; the data's variance along the
    # last two axes is 0.05 and 0.01, so the mean of Σ y_i²/c_i is 1 + 1 + 1 + 0.5 + 0.1.
    by_hand = -0.5 * (5 * math.log(2 * math.pi) + math.log(4 * 2 * 0.5) + 2 * math.log(0.1) + 3.6)
    assert linear.ppca_train_log_likelihood(lam, SIGMA2, 8) == pytest.approx(by_hand, abs=1e-12)
    assert linear.ppca_log_likelihood(x, mean, lam, U, SIGMA2, 8).mean() == pytest.approx(by_hand, abs=1e-9)
    # With fewer latents than k, only the top Z directions are modelled: Z = 2 → c = 4, 2, 0.1, 0.1, 0.1.
    by_hand_2 = -0.5 * (5 * math.log(2 * math.pi) + math.log(8) + 3 * math.log(0.1) + 2 + 5.6)
    assert linear.ppca_train_log_likelihood(lam, SIGMA2, 2) == pytest.approx(by_hand_2, abs=1e-12)


@pytest.mark.parametrize("latent", [2, 8])
def test_at_the_optimum_the_elbo_is_the_exact_log_likelihood(latent, rng):
    """The VAE set to the pPCA optimum: ELBO(x) = log N(x; b, WWᵀ + σ²I) for every x, even off the
    data, and the collapsed latents sit at the prior."""
    x, _ = synthetic()
    mean, lam, U = linear.spectrum(x)
    model = linear.LinearVAE(5, latent, SIGMA2, dtype="float64")
    model.set_params(linear.optimum(mean, lam, U, SIGMA2, latent))
    probe = np.concatenate([x[:50], 3 * rng.standard_normal((50, 5))])
    exact = linear.ppca_log_likelihood(probe, mean, lam, U, SIGMA2, latent)
    assert np.allclose(-model.neg_elbo(probe), exact, rtol=0, atol=1e-10)
    assert np.allclose(model.log_likelihood(probe), exact, rtol=0, atol=1e-10)
    q = min(latent, 3)
    assert np.allclose(model.params["W"][:, q:], 0) and np.allclose(model.params["logs2"][q:], 0)
    assert np.allclose(np.linalg.svd(model.params["W"], compute_uv=False)[:q], np.sqrt(LAM[:q] - SIGMA2))


@pytest.mark.parametrize("cls", [linear.LinearVAE, linear.LinearAE])
def test_moment_points_give_the_full_data_loss_and_gradient(cls, rng):
    """r + 1 points with the data's mean and covariance: the mean loss and every gradient over
    them equal those over all N examples (float64), for data of rank r < D too."""
    x = rng.random((300, 4)) @ rng.standard_normal((4, 6)) + rng.standard_normal(6)  # rank 4 in D = 6
    mean, lam, U = linear.spectrum(x)
    points = linear.moment_points(mean, lam, U, dtype="float64")
    assert points.shape == (5, 6)
    assert np.allclose(points.mean(axis=0), x.mean(axis=0), atol=1e-12)
    assert np.allclose(np.cov(points.T, bias=True), np.cov(x.T, bias=True), atol=1e-10)
    model = _random_model(cls, rng, **({"sigma2": 0.3} if cls is linear.LinearVAE else {}))
    full_loss, full_grads = model.forward(x), model.backward()
    assert model.forward(points) == pytest.approx(full_loss, rel=1e-12)
    for k, g in model.backward().items():
        assert np.allclose(g, full_grads[k], rtol=1e-9, atol=1e-12), k


def test_full_batch_training_beats_mini_batches():
    """On moment points a step is a full-data step: no mini-batch noise, so the same schedule ends
    nearer the optimum than mini-batches of 20 (the data have 500 examples)."""
    x, _ = synthetic(n=500)
    mean, lam, U = linear.spectrum(x)
    points = linear.moment_points(mean, lam, U, dtype="float64")
    ends = {}
    for name, data, batch in (("full", points, len(points)), ("mini", x, 20)):
        model = linear.LinearVAE(5, 8, SIGMA2, seed=0, dtype="float64", init_std=0.1)
        linear.fit(
            model, data, 1500, batch, 0.05, 5e-4, np.random.default_rng(0), fast_params=("logs2",), fast_factor=5
        )
        ends[name] = model.neg_elbo(x).mean() + linear.ppca_train_log_likelihood(lam, SIGMA2, 8)  # the gap
    assert 0 <= ends["full"] < 0.002 and ends["full"] < ends["mini"] / 3, ends


def test_training_reaches_the_closed_form():
    """Z = 8 > D = 5: Adam lands on pPCA — ELBO = exact log-likelihood, k = 3 units active,
    Z − k = 5 collapsed, W's singular values (λ_i − σ²)^½."""
    x, _ = synthetic(n=500)
    test_x, _ = synthetic(n=500, seed=1)
    mean, lam, U = linear.spectrum(x)
    model = linear.LinearVAE(5, 8, SIGMA2, seed=0, dtype="float64", init_std=0.1)
    # full batches: mini-batch noise slows the last step, units sharing a direction parting ways
    linear.fit(model, x, 1500, 500, 0.05, 5e-3, np.random.default_rng(0), fast_params=("logs2",), fast_factor=5)
    r = linear.compare(model, x, test_x, mean, lam, U)
    assert r["k"] == 3 and r["q"] == 3
    assert abs(r["train_elbo"] - r["exact_train_ll"]) < 0.005
    assert abs(r["test_gap"]) < 0.02
    assert r["active_units"] == 3 == r["predicted_active_units"]
    assert r["collapsed_units"] == 5 == r["predicted_collapsed"]
    assert r["sv_max_abs_error"] < 0.02
    assert r["collapsed_max_s2_error"] < 0.01


def test_gradient_descent_steps_along_the_gradient_and_lowers_the_loss_to_the_closed_form():
    """descend: each accepted step is θ − η∇L with one η (a power of 2 times the start) for every
    parameter, and the loss falls at every step, toward the closed form."""
    x, _ = synthetic(n=500)
    mean, lam, U = linear.spectrum(x)
    points = linear.moment_points(mean, lam, U, dtype="float64")
    model = linear.LinearVAE(5, 8, SIGMA2, seed=0, dtype="float64", init_std=0.1)
    linear.fit(model, points, 300, len(points), 0.05, 5e-3, np.random.default_rng(0), fast_params=("logs2",))
    before = model.get_params()
    start_gap = model.neg_elbo(x).mean() + linear.ppca_train_log_likelihood(lam, SIGMA2, 8)
    model.forward(points)
    grads = model.backward()
    (first,) = linear.descend(model, points, 1, lr=1.0)
    ratios = np.concatenate([((before[k] - model.params[k]) / grads[k])[grads[k] != 0].ravel() for k in grads])
    eta = ratios[0]
    assert np.allclose(ratios, eta, rtol=1e-9) and math.log2(eta) == round(math.log2(eta))
    history = linear.descend(model, points, 3000)
    assert first > history[0] and all(b < a for a, b in zip(history, history[1:], strict=False))
    gap = model.neg_elbo(x).mean() + linear.ppca_train_log_likelihood(lam, SIGMA2, 8)
    assert 0 <= gap < start_gap / 5, (gap, start_gap)


def _halves_are_optimal(model, points, tol):
    """The gradient of the loss with respect to every parameter is ~0 (both halves at their optimum)."""
    model.forward(points)
    grads = model.backward()
    for k, g in grads.items():
        assert np.abs(g).max() < tol, (k, np.abs(g).max())


def test_each_half_of_a_coordinate_ascent_sweep_is_its_exact_optimum(rng):
    """A sweep sets W, b to their least-squares optimum given the encoder, then V, c, log s² to
    theirs given the decoder: right after the encoder's update its gradient is zero, and the
    decoder's update zeroes the decoder's gradient for the encoder it saw (checked by undoing
    the encoder update). The formulas are checked against the analytic gradients, which the
    central-difference tests above check."""
    x, _ = synthetic(n=400)
    mean, lam, U = linear.spectrum(x)
    points = linear.moment_points(mean, lam, U, dtype="float64")
    model = linear.LinearVAE(5, 8, SIGMA2, dtype="float64")
    for p in model.params.values():  # anywhere
        p[...] = 0.5 * rng.standard_normal(p.shape)
    encoder = {k: model.params[k].copy() for k in ("V", "c", "logs2")}
    linear.coordinate_ascent(model, points, 1)
    model.forward(points)
    grads = model.backward()
    for k in ("V", "c", "logs2"):
        assert np.abs(grads[k]).max() < 1e-10, k
    model.set_params({**model.get_params(), **encoder})  # the encoder the decoder's update saw
    model.forward(points)
    grads = model.backward()
    for k in ("W", "b"):
        assert np.abs(grads[k]).max() < 1e-10, k


def test_coordinate_ascent_never_raises_the_loss_and_lands_on_the_closed_form():
    """From a random start at Z = 8 > D = 5: the loss falls at every sweep (to rounding) and ends at
    pPCA's — ELBO = exact log-likelihood, k = 3 units active, Z − k = 5 collapsed — and on the
    data itself the sweeps on its moment points compute what sweeps on all of it do."""
    x, _ = synthetic(n=500)
    mean, lam, U = linear.spectrum(x)
    points = linear.moment_points(mean, lam, U, dtype="float64")
    model = linear.LinearVAE(5, 8, SIGMA2, seed=0, dtype="float64", init_std=0.1)
    twin = linear.LinearVAE(5, 8, SIGMA2, seed=0, dtype="float64", init_std=0.1)
    history = linear.coordinate_ascent(model, points, 3000)  # the last ~2,000: latents aligning with the axes
    assert len(history) == 3000 and all(b <= a + 1e-12 for a, b in zip(history, history[1:], strict=False))
    linear.coordinate_ascent(twin, x, 3000)
    for k, p in model.params.items():
        np.testing.assert_allclose(twin.params[k], p, rtol=1e-7, atol=1e-9, err_msg=k)
    r = linear.compare(model, x, x, mean, lam, U)
    assert abs(r["train_elbo"] - r["exact_train_ll"]) < 1e-8
    assert r["active_units"] == 3 == r["predicted_active_units"]
    assert r["collapsed_units"] == 5 == r["predicted_collapsed"]
    assert r["sv_max_abs_error"] < 1e-9
    _halves_are_optimal(model, points, 1e-6)  # rounding: the residuals x − Wμ − b cancel


def test_coordinate_ascent_wants_float64_and_the_exact_estimator():
    x, _ = synthetic(n=50)
    for kw in ({"dtype": "float32"}, {"estimator": "sample"}):
        with pytest.raises(ValueError, match="float64"):
            linear.coordinate_ascent(linear.LinearVAE(5, 2, SIGMA2, **kw), x, 1)


# ------------------------------------------------------------------------------ identity metric


def test_reconstruction_error_of_identity_and_constant_maps(rng):
    x = rng.random((300, 10)) ** 2
    ident = identity.reconstruction_error(lambda b: b, x, batch_size=64)
    assert ident["mse"] < 1e-12 and ident["relative"] < 1e-10  # float32 round trip of the input
    spread = x.var(axis=0).mean()
    mean = identity.reconstruction_error(lambda b: np.broadcast_to(x.mean(axis=0), b.shape), x, 64)
    assert mean["mse"] == pytest.approx(spread, rel=1e-6) and mean["relative"] == pytest.approx(1, rel=1e-6)
    # any constant c: mse = mean over pixels of Var + (x̄ − c)²
    c = np.full(10, 0.9)
    const = identity.reconstruction_error(lambda b: np.broadcast_to(c, b.shape), x, 64)
    assert const["mse"] == pytest.approx(spread + ((x.mean(axis=0) - c) ** 2).mean(), rel=1e-6)


def test_probe_sets_shapes_and_ranges(rng):
    digits = rng.random((20, 784)).astype(np.float32)
    sets = identity.probe_sets(digits, rng, n=10)
    assert list(sets) == ["test digits", "uniform noise", "digits rotated 90°", "inverted digits (1 − x)"]
    for x in sets.values():
        assert x.shape == (10, 784) and x.min() >= 0 and x.max() <= 1
    assert np.array_equal(sets["inverted digits (1 − x)"], 1 - digits[:10])
    rot = sets["digits rotated 90°"].reshape(10, 28, 28)
    assert np.array_equal(np.rot90(rot, k=-1, axes=(1, 2)).reshape(10, -1), digits[:10])


# ------------------------------------------------------------------------------ the commands


def _write_idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def tiny_mnist(tmp_path):
    """A folder of IDX files in MNIST's format: 300 training and 100 test images of noise blobs."""
    r = np.random.default_rng(5)
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 300), ("t10k", 100)):
        images = (r.random((n, 28, 28)) ** 4 * 255).round()
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", r.integers(0, 10, n))
    return folder


def test_command_writes_result_and_summary(tiny_mnist, tmp_path, capsys):
    out = tmp_path / "runs"
    for z in (3, 900):
        assert (
            linear.main(
                [
                    "--latent",
                    str(z),
                    "--sigma2",
                    "0.1",
                    "--data-dir",
                    str(tiny_mnist),
                    "--out",
                    str(out / f"z{z}"),
                    "--steps",
                    "30",
                    "--batch-size",
                    "100",
                    "--quiet",
                ]
            )
            == 0
        )
    printed = capsys.readouterr().out.splitlines()  # --quiet: only the data line, once per run
    assert printed == [f"data: MNIST: 300 training digits from {tiny_mnist}, test: 100 digits from {tiny_mnist}"] * 2
    r = json.loads((out / "z900" / "result.json").read_text())
    assert r["latent"] == 900 and r["q"] == r["k"] <= 784 and r["z_minus_q"] == 900 - r["k"]
    assert len(r["kl_per_unit_sorted"]) == 900 and len(r["eigenvalues"]) == 784
    assert linear.main(["--summarize", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert table.count("\n") == 4 and "| 0.1 | 900 | 30 + 300 EM | 100 | 0.001 → 1e-05 |" in table
    assert (out / "spectrum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 0.1 | 3 | 30 + 300 EM | 100 | 0.001 → 1e-05 |" in capsys.readouterr().out


def test_command_trains_on_the_full_batch(tiny_mnist, tmp_path):
    """--batch-size full: every step sees the whole training set through its moment points."""
    out = tmp_path / "full"
    args = ["--latent", "5", "--sigma2", "0.1", "--data-dir", str(tiny_mnist), "--out", str(out)]
    assert linear.main(args + ["--steps", "20", "--batch-size", "full", "--quiet"]) == 0
    r = json.loads((out / "result.json").read_text())
    assert r["config"]["batch_size"] == "full"
    assert len(r["loss_curve"]) == 20 and all(math.isfinite(v) for _, v in r["loss_curve"])
    assert r["loss_curve"][-1][1] < r["loss_curve"][0][1]


def test_command_descends_after_adam(tiny_mnist, tmp_path):
    """--descend N: plain gradient descent after Adam, its steps and time in result.json; the
    model it leaves is no worse on the training set than Adam's."""
    out = tmp_path / "d"
    args = ["--latent", "5", "--sigma2", "0.1", "--data-dir", str(tiny_mnist), "--steps", "20", "--quiet", "--em", "0"]
    assert linear.main(args + ["--out", str(tmp_path / "a")]) == 0
    assert linear.main(args + ["--out", str(out), "--descend", "30"]) == 0
    adam = json.loads((tmp_path / "a" / "result.json").read_text())
    r = json.loads((out / "result.json").read_text())
    assert 1 <= r["descend_steps"] <= 30 and r["descend_seconds"] >= 0 and r["config"]["descend"] == 30
    assert r["train_elbo"] > adam["train_elbo"]


def test_command_runs_variational_em_after_adam(tiny_mnist, tmp_path):
    """--em N: N sweeps of coordinate ascent after Adam, in result.json with their seconds and
    last training loss (the training ELBO it reports); the model ends no worse than Adam's."""
    args = ["--latent", "5", "--sigma2", "0.1", "--data-dir", str(tiny_mnist), "--steps", "20", "--quiet"]
    assert linear.main(args + ["--out", str(tmp_path / "a"), "--em", "0"]) == 0
    assert linear.main(args + ["--out", str(tmp_path / "e"), "--em", "25"]) == 0
    adam = json.loads((tmp_path / "a" / "result.json").read_text())
    r = json.loads((tmp_path / "e" / "result.json").read_text())
    assert "em_sweeps" not in adam and r["em_sweeps"] == 25 == r["config"]["em"] and r["em_seconds"] >= 0
    assert linear.parse_args(["--latent", "5", "--sigma2", "0.1"]).em is None  # decided by the estimator:
    default = tmp_path / "default"
    assert linear.main(args + ["--out", str(default)]) == 0
    assert json.loads((default / "result.json").read_text())["em_sweeps"] == linear_cli.EM_SWEEPS
    sample = tmp_path / "sample"
    assert linear.main(args + ["--out", str(sample), "--estimator", "sample"]) == 0
    assert "em_sweeps" not in json.loads((sample / "result.json").read_text())  # no EM on the sampled loss
    assert linear.main(["--summarize", str(tmp_path), "--quiet"]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| 0.1 | 5 | 20 + 25 EM | " in table and "| 0.1 | 5 | 20 | " in table  # the Adam-only run
    assert r["train_elbo"] == pytest.approx(-r["em_final_loss"], abs=1e-9)
    assert r["train_elbo"] > adam["train_elbo"] + 1e-3


@pytest.mark.parametrize(
    "bad",
    [
        ["--latent", "0", "--sigma2", "0.1"],
        ["--latent", "10", "--sigma2", "-1"],
        ["--latent", "10", "--sigma2", "nan"],
        ["--latent", "x", "--sigma2", "0.1"],
        ["--latent", "10"],
        ["--latent", "10", "--sigma2", "0.1", "--steps", "0"],
        ["--latent", "10", "--sigma2", "0.1", "--batch-size", "fool"],
        ["--latent", "10", "--sigma2", "0.1", "--data-dir", "MISSING"],
        ["--latent", "10", "--sigma2", "0.1", "--descend", "5", "--estimator", "sample"],
        ["--latent", "10", "--sigma2", "0.1", "--descend", "-1"],
        ["--latent", "10", "--sigma2", "0.1", "--em", "5", "--estimator", "sample"],
        ["--latent", "10", "--sigma2", "0.1", "--em", "x"],
        ["--summarize", "MISSING"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(bad, tmp_path, capsys):
    bad = [str(tmp_path / "nope") if b == "MISSING" else b for b in bad]
    out = tmp_path / "out"
    try:
        code = linear.main(bad + ["--out", str(out), "--quiet"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "error" in err, err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("bad", [["--latent", "0"], ["--n", "1"], ["--hidden", "a"], ["--data-dir", "MISSING"]])
def test_identity_command_bad_input(bad, tmp_path, capsys):
    bad = [str(tmp_path / "nope") if b == "MISSING" else b for b in bad]
    out = tmp_path / "out"
    try:
        code = identity.main(bad + ["--out", str(out), "--quiet"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "error" in err, err
    assert not out.exists()


def test_identity_command_end_to_end(tiny_mnist, tmp_path, capsys):
    out = tmp_path / "id"
    assert (
        identity.main(
            [
                "--data-dir",
                str(tiny_mnist),
                "--out",
                str(out),
                "--latent",
                "20",
                "--hidden",
                "32",
                "--epochs",
                "1",
                "--linear-steps",
                "20",
                "--n",
                "50",
                "--backend",
                "numpy",
                "--quiet",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.splitlines()  # --quiet: only the data line
    assert printed == [f"data: MNIST: 300 training digits from {tiny_mnist}, test: 100 digits from {tiny_mnist}"]
    report = json.loads((out / "identity.json").read_text())
    assert set(report["results"]) >= {"linear autoencoder", "MLP autoencoder", "MLP VAE"}
    for per_set in report["results"].values():
        assert set(per_set) == {"test digits", "uniform noise", "digits rotated 90°", "inverted digits (1 − x)"}
    # the constant map (mean digit) explains none of the test digits' variance beyond their mean
    const = report["results"]["constant map (mean digit)"]["test digits"]["relative"]
    assert 0.9 < const < 1.2
    assert (out / "identity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_lives_in_linear_cli_and_answers_to_minivae_linear():
    """minivae.linear is the model and its closed form; the command is minivae.linear_cli, whose
    names minivae.linear still gives (``python -m minivae.linear`` runs it)."""
    import pathlib
    import subprocess
    import sys

    from minivae import linear_cli

    for name in ("main", "parse_args", "run", "summarize", "plot_spectrum", "describe", "table_row", "HOLD"):
        assert getattr(linear, name) is getattr(linear_cli, name)
    with pytest.raises(AttributeError):
        linear.no_such_name  # noqa: B018 - the attribute access is the test
    code = "import sys, minivae.linear; print('minivae.linear_cli' in sys.modules)"
    root = pathlib.Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert r.stdout.strip() == "False", r.stderr


def test_the_figure_shows_per_size_the_run_trained_longest():
    """One run per (σ², Z) in spectrum.png: the most Adam steps, then the most EM sweeps; the first
    of equals in the table's order."""

    def result(name, s2, Z, steps, em=None):
        r = {"name": name, "sigma2": s2, "latent": Z, "config": {"steps": steps}}
        return r if em is None else {**r, "em_sweeps": em}

    runs = [
        result("adam 12k", 0.01, 1000, 12000),
        result("em 300", 0.01, 1000, 12000, em=300),
        result("em 10", 0.01, 1000, 12000, em=10),
        result("adam 3k + em", 0.01, 100, 3000, em=1000),
        result("adam 12k", 0.01, 100, 12000),
        result("first", 0.1, 100, 3000),
        result("second", 0.1, 100, 3000, em=0),
    ]
    chosen = {(r["sigma2"], r["latent"]): r["name"] for r in linear_cli.one_run_per_size(runs)}
    assert chosen == {(0.01, 1000): "em 300", (0.01, 100): "adam 12k", (0.1, 100): "first"}
