"""Using a trained run: minivae.load, python -m minivae.explore, and the measures they rest on
(principal directions of the codes, the class probes)."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

import minivae
from minivae import checkpoint, explore, files, metrics, runs, train
from minivae.backend import available_backends
from minivae.data import binarize, load_mnist
from minivae.optim import Adam

TINY = [
    "--limit",
    "256",
    "--epochs",
    "1",
    "--hidden",
    "16",
    "--batch-size",
    "64",
    "--iw-samples",
    "2",
    "--iw-examples",
    "20",
    "--quiet",
]
FAST = [b for b in ("numpy", "cpu-fused") if b in available_backends()]


def trained_run(out, latent, backend="numpy"):
    """A one-epoch run of the main job on 256 digits (tests/conftest.py's offline data)."""
    argv = TINY + ["--latent", str(latent), "--backend", backend, "--out", str(out)]
    assert train.main(argv) == 0
    return out


def saved_model(folder, backend, dtype="float32", latent=3, hidden=(8,), data_dim=784):
    """A model trained a few steps in-process, saved as the main job saves it (config.json and
    checkpoint.npz); returns the model as it was when saved."""
    vae = minivae.VAE(data_dim, latent, hidden, seed=3, dtype=dtype, backend=backend)
    opt = Adam(vae.params, lr=1e-2)
    x = (np.random.default_rng(0).random((32, data_dim)) < 0.3).astype(dtype)
    for _ in range(3):
        vae.forward(x)
        opt.step(vae.backward())
    config = {"latent": latent, "hidden": list(hidden), "seed": 3, "beta": 1.0, "backend": backend}
    folder.mkdir()
    files.atomic_write_text(folder / "config.json", json.dumps(config))
    state = json.dumps(np.random.default_rng(5).bit_generator.state)
    checkpoint.save(folder / "checkpoint.npz", vae, opt, np.random.default_rng(1), state, 1, 0, config)
    return vae


# --------------------------------------------------------------------------------------------
# minivae.load
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend,dtype", [(b, "float32") for b in FAST] + [("numpy", "float64")])
def test_load_gives_the_saved_model_bit_for_bit(tmp_path, backend, dtype):
    before = saved_model(tmp_path / "run", backend, dtype)
    after = minivae.load(tmp_path / "run", backend=backend)
    assert isinstance(after, minivae.VAE) and after.backend == before.backend
    assert after.dtype == before.dtype and after.latent == 3 and after.hidden == (8,)
    x = np.random.default_rng(1).random((17, 784)).astype(dtype)
    z = np.random.default_rng(2).standard_normal((9, 3)).astype(dtype)
    for a, b in zip(before.encode(x), after.encode(x), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(before.decode(z), after.decode(z))
    assert np.array_equal(before.reconstruct(x), after.reconstruct(x))
    saved, loaded = before.get_params(), after.get_params()
    assert saved.keys() == loaded.keys() and all(np.array_equal(saved[k], loaded[k]) for k in saved)
    # The noise generator continues from the state the checkpoint holds.
    expect = before.rng.standard_normal((4, 3)).astype(dtype)
    assert np.array_equal(after.sample(4), before.decode(expect))


@pytest.mark.usefixtures("offline")
def test_load_of_a_trained_run_reproduces_its_test_loss(tmp_path):
    """The loaded model gives, on the run's test digits and with the run's evaluation noise, the
    test −ELBO the run wrote for its last epoch, to the last bit."""
    out = trained_run(tmp_path / "run", latent=4, backend=FAST[-1])
    vae = minivae.load(out, backend=FAST[-1])
    row = files.read_jsonl(out / "metrics.jsonl")[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback to the offline sample
        data = load_mnist(None, 256, seed=0)
    test_x = binarize(data.test_x, "static")
    ev = metrics.evaluate(vae, test_x, np.random.default_rng([0, 3, row["epoch"]]))
    assert ev["loss"] == row["test_loss"] and ev["kl"] == row["test_kl"]


def _write_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _arrays(folder):
    with np.load(folder / "checkpoint.npz") as ck:
        return {k: ck[k] for k in ck.files}


def _empty(run):
    for name in ("config.json", "checkpoint.npz"):
        (run / name).unlink()
    return run


def _break_truncate(run):
    data = (run / "checkpoint.npz").read_bytes()
    (run / "checkpoint.npz").write_bytes(data[: len(data) // 2])


def _break_drop_param(run):
    a = _arrays(run)
    del a["param/dec1.b"]
    _write_npz(run / "checkpoint.npz", a)


def _break_shape(run):
    a = _arrays(run)
    a["param/enc0.b"] = a["param/enc0.b"][:-1]
    _write_npz(run / "checkpoint.npz", a)


def _break_config(run, **change):
    config = json.loads((run / "config.json").read_text())
    config.update(change)
    (run / "config.json").write_text(json.dumps(config))


BROKEN = {
    "no folder": (lambda run: run.rename(run.with_name("gone")), "does not exist", "run"),
    "a file": (lambda run: _empty(run).rmdir() or run.write_text("x"), "is not a folder", "run"),
    "not a run": (_empty, "not a training run", "run"),
    "no checkpoint": (lambda run: (run / "checkpoint.npz").unlink(), "no checkpoint.npz", "checkpoint.npz"),
    "no config": (lambda run: (run / "config.json").unlink(), "no config.json", "config.json"),
    "truncated checkpoint": (_break_truncate, "truncated", "checkpoint.npz"),
    "empty checkpoint": (lambda run: (run / "checkpoint.npz").write_bytes(b""), "cannot read", "checkpoint.npz"),
    "text as checkpoint": (lambda run: (run / "checkpoint.npz").write_text("hello"), "cannot read", "checkpoint.npz"),
    "foreign archive": (
        lambda run: _write_npz(run / "checkpoint.npz", {"weights": np.ones(3)}),
        "no model parameters",
        "checkpoint.npz",
    ),
    "pickled object": (
        lambda run: _write_npz(run / "checkpoint.npz", {"param/x": np.array([{}], dtype=object)}),
        "cannot read",
        "checkpoint.npz",
    ),
    "corrupt config": (lambda run: (run / "config.json").write_text('{"latent": 3,'), "not valid JSON", "config.json"),
    "config a list": (lambda run: (run / "config.json").write_text("[3]"), "JSON list", "config.json"),
    "config without latent": (
        lambda run: (run / "config.json").write_text('{"hidden": [8]}'),
        "'latent'",
        "config.json",
    ),
    "bad latent": (lambda run: _break_config(run, latent="3"), "positive integer", "config.json"),
    "latent mismatch": (lambda run: _break_config(run, latent=5), "needs (8, 10)", "checkpoint.npz"),
    "hidden mismatch": (lambda run: _break_config(run, hidden=[8, 8]), "missing param/enc2.W", "checkpoint.npz"),
    "missing array": (_break_drop_param, "missing param/dec1.b", "checkpoint.npz"),
    "wrong shape": (_break_shape, "param/enc0.b has shape (7,)", "checkpoint.npz"),
    "non-finite": (
        lambda run: _write_npz(
            run / "checkpoint.npz", {**_arrays(run), "param/dec0.W": np.full((3, 8), np.nan, np.float32)}
        ),
        "non-finite",
        "checkpoint.npz",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_run_folder_is_one_clear_error_naming_the_file(tmp_path, case):
    run = tmp_path / "run"
    saved_model(run, "numpy")
    minivae.load(run, backend="numpy")  # intact, it loads
    breaks, says, names = BROKEN[case]
    breaks(run)
    with pytest.raises(minivae.RunError) as info:
        minivae.load(run, backend="numpy")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert says in message and names in message, message
    assert "\n" not in message and "Traceback" not in message


def test_a_config_that_does_not_match_names_both_files(tmp_path):
    run = tmp_path / "run"
    saved_model(run, "numpy")
    _break_config(run, latent=4)
    with pytest.raises(runs.RunError, match=r"checkpoint\.npz does not match .*config\.json"):
        runs.load(run, backend="numpy")


# --------------------------------------------------------------------------------------------
# python -m minivae.explore
# --------------------------------------------------------------------------------------------

FIGURES = ["samples_by_temperature.png", "interpolations.png", "traversals.png", "latent_map.png"]


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize("latent", [1, 2, 5])
def test_explore_writes_every_figure(tmp_path, capsys, latent):
    run = trained_run(tmp_path / "run", latent)
    capsys.readouterr()
    assert explore.main([str(run), "--backend", "numpy"]) == 0
    printed = capsys.readouterr().out
    out = run / "explore"
    expected = FIGURES + (["manifold.png"] if latent == 2 else [])
    assert sorted(p.name for p in out.iterdir()) == sorted(expected)  # nothing else, no temporary files
    for name in expected:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert name in printed
    assert "offline 5k sample" in printed and str(out) in printed


@pytest.mark.usefixtures("offline")
def test_explore_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    run = trained_run(tmp_path / "run", 2)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "empty")], "not a training run"),
        ([str(tmp_path / "nowhere")], "does not exist"),
        ([str(run), "--out", str(tmp_path / "a-file")], "not a folder"),
        ([str(run), "--out", str(tmp_path / "a-file" / "sub")], "cannot write into --out"),
        ([str(run), "--data-dir", str(tmp_path / "nowhere")], "--data-dir"),
        ([str(run), "--data-dir", str(tmp_path / "empty")], "lacks the MNIST test split"),
        ([str(run), "--backend", "gpu"], "invalid choice"),
    ]
    for argv, says in cases:
        capsys.readouterr()
        try:
            code = explore.main(argv)
        except SystemExit as e:  # argparse's own exit
            code = e.code
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert says in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (run / "explore").exists()  # nothing written for bad input


@pytest.mark.usefixtures("offline")
def test_explore_as_a_command_refuses_a_non_run_without_a_traceback(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "minivae.explore", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("minivae.explore: error:") and "not a training run" in r.stderr


def test_traversal_rows_move_along_one_principal_direction_each():
    """traverse decodes μ̄ + t·√λ_i·u_i: with an identity 'decoder' the codes themselves come back."""

    class Identity:
        latent, dtype = 3, np.dtype(np.float64)

        def decode(self, z):
            return z

    rng = np.random.default_rng(0)
    mu = rng.standard_normal((4000, 3)) * [3.0, 1.0, 0.2] + [1.0, -2.0, 0.5]
    codes, lam = explore.traverse(Identity(), mu, k=2, ts=np.array([-1.0, 0.0, 2.0]))
    assert codes.shape == (2, 3, 3)
    centre = mu.mean(axis=0)
    for i, axis in enumerate((0, 1)):
        assert np.allclose(codes[i, 1], centre)
        step = codes[i, 2] - centre  # t = 2: two standard deviations along u_i
        assert np.linalg.norm(step) == pytest.approx(2 * np.sqrt(lam[i]))
        assert abs(step[axis]) > 0.99 * np.linalg.norm(step)  # u_i is (nearly) the i-th axis here
        assert np.allclose(codes[i, 0] - centre, -step / 2)


def test_manifold_grid_covers_the_prior_quantiles():
    q = explore.normal_quantiles(20)
    assert q[0] == pytest.approx(-1.959964, abs=1e-5) and np.allclose(q, -q[::-1])  # Φ⁻¹(0.025), symmetric
    assert np.all(np.diff(q) > 0)


# --------------------------------------------------------------------------------------------
# The measures: principal directions of the codes, class probes
# --------------------------------------------------------------------------------------------


def test_principal_directions_of_a_constructed_cloud_are_recovered():
    rng = np.random.default_rng(0)
    Z, n = 12, 20000
    Q, _ = np.linalg.qr(rng.standard_normal((Z, Z)))  # a random rotation; its columns are the axes
    sd = np.array([3.0, 2.0, 1.0] + [0.05] * (Z - 3))
    mu = (rng.standard_normal((n, Z)) * sd) @ Q.T + rng.standard_normal(Z)  # Cov = Q diag(sd²) Qᵀ
    U, lam = metrics.principal_directions(mu, 3)
    assert U.shape == (Z, 3) and lam.shape == (3,)
    assert np.allclose(np.abs(np.sum(U * Q[:, :3], axis=0)), 1, atol=1e-3)  # the same axes, up to sign
    assert np.allclose(lam, sd[:3] ** 2, rtol=0.04)
    assert np.allclose(U.T @ U, np.eye(3), atol=1e-10)


def test_probe_reads_a_separable_code_perfectly_and_noise_at_chance():
    rng = np.random.default_rng(0)
    n = 3000
    y_train, y_test = rng.integers(0, 10, n), rng.integers(0, 10, n)

    centres = 4.0 * rng.standard_normal((10, 16))  # one point per class, ~16 apart

    def code(y):  # the class's point plus noise a fortieth as large
        return centres[y] + 0.1 * rng.standard_normal((len(y), 16))

    separable = metrics.probe_accuracy(code(y_train), y_train, code(y_test), y_test)
    assert separable == {"probe_logreg": 1.0, "probe_knn": 1.0}
    noise = metrics.probe_accuracy(rng.standard_normal((n, 16)), y_train, rng.standard_normal((n, 16)), y_test)
    for accuracy in noise.values():
        assert abs(accuracy - 0.1) < 0.03, noise  # chance for ten classes; its sd here is 0.0055
