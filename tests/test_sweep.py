"""The latent-size study: files, resume, Dask, bad input; and the metrics it rests on."""

import json

import numpy as np
import pytest
from gradcheck import numerical_grad, rel_error

import minivae
from minivae import metrics, study, sweep
from minivae.ae import AE
from minivae.config import SweepRun
from minivae.data import load_offline_sample

FIGURES = [
    "metrics_vs_latent.png",
    "active_units.png",
    "kl_spectra.png",
    "samples_by_latent.png",
    "reconstructions_by_latent.png",
    "vae_vs_ae.png",
]
ROW_FIELDS = {
    "model",
    "latent",
    "test_loss",
    "test_recon",
    "test_kl",
    "test_iw_nll",
    "active_units",
    "params",
    "samples_per_s",
    "wall_s",
    "gap",
    "train_loss",
}
SMALL = [
    "--epochs",
    "1",
    "--limit",
    "256",
    "--hidden",
    "16",
    "--iw-samples",
    "3",
    "--iw-examples",
    "20",
    "--backend",
    "numpy",
    "--quiet",
]


pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty cache


def rows_of(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_two_size_sweep_writes_every_file_and_resumes(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["--latents", "3,900", "--models", "vae,ae", "--out", str(out)] + SMALL
    assert sweep.main(args) == 0
    rows = rows_of(out)
    assert sorted((r["model"], r["latent"]) for r in rows) == [("ae", 3), ("ae", 900), ("vae", 3), ("vae", 900)]
    for r in rows:
        assert ROW_FIELDS <= set(r)
        assert r["test_loss"] > 0 and r["params"] > 0 and r["wall_s"] > 0
    vae900 = next(r for r in rows if r["model"] == "vae" and r["latent"] == 900)
    assert vae900["test_iw_nll"] <= vae900["test_loss"] + 1.0  # IW bound is at least as tight
    assert vae900["test_loss"] == pytest.approx(vae900["test_recon"] + vae900["test_kl"])
    ae3 = next(r for r in rows if r["model"] == "ae" and r["latent"] == 3)
    assert ae3["test_iw_nll"] is None and ae3["test_kl"] == 0
    for name in FIGURES + ["report.md"]:
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "| vae | 900 |" in report and "| ae | 3 |" in report

    # Resume: nothing left to do, nothing trained again.
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    capsys.readouterr()
    assert sweep.main(["--latents", "3,900", "--models", "vae,ae", "--out", str(out)] + SMALL[:-1]) == 0
    assert "0 runs to do, 4 already" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == mtimes
    assert len(rows_of(out)) == 4

    # An interrupted sweep: drop one result, and only that run is done again.
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert sweep.main(["--latents", "3,900", "--models", "vae,ae", "--out", str(out)] + SMALL[:-1]) == 0
    assert "1 run to do, 3 already" in capsys.readouterr().out
    assert len(rows_of(out)) == 4


def test_sweep_on_a_local_dask_cluster(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        out = tmp_path / "study"
        code = sweep.main(["--latents", "4", "--out", str(out), "--scheduler", cluster.scheduler_address] + SMALL)
    assert code == 0
    (row,) = rows_of(out)
    assert row["model"] == "vae" and row["latent"] == 4 and row["test_loss"] > 0


@pytest.mark.parametrize(
    "bad",
    [
        ["--latents", "0,5"],
        ["--latents", "abc"],
        ["--models", "gan"],
        ["--epochs", "-1"],
        ["--jobs", "0"],
        ["--data-dir", "MISSING"],
        ["--backend", "bogus"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(bad, tmp_path, capsys):
    bad = [str(tmp_path / "nope") if b == "MISSING" else b for b in bad]
    out = tmp_path / "study"
    try:
        code = sweep.main(bad + ["--out", str(out)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------ the metrics


class FakeEncoder:
    """μ(x): the first 3 dimensions carry the digit's signal; the other 5 sit at the prior."""

    latent, dtype = 8, np.float32

    def __init__(self, rng):
        self.rng = rng

    def encode(self, x):
        n = len(x)
        mu = np.zeros((n, 8))
        mu[:, 0] = x[:, 0] * 3
        mu[:, 1] = np.sin(x[:, 1] * 6)
        mu[:, 2] = x[:, 2] - x[:, 3]
        mu[:, 3:] = self.rng.standard_normal((n, 5)) * 0.03  # variance 0.0009 < 0.01
        return mu, np.zeros((n, 8))


def test_active_units_on_a_constructed_case():
    rng = np.random.default_rng(0)
    x = rng.random((500, 4))
    mu, logvar = metrics.posterior_means(FakeEncoder(rng), x, batch_size=64)
    count, activity = metrics.active_units(mu)
    assert count == 3
    assert (activity[:3] > 0.01).all() and (activity[3:] < 0.01).all()
    kl = metrics.kl_per_dim(mu, logvar)
    assert kl[0] > kl[1] > 0.01 and (kl[3:] < 1e-3).all()


@pytest.fixture(scope="module")
def trained_vae():
    x, _ = load_offline_sample()
    x = (x[:600].astype(np.float32) / 255 > 0.5).astype(np.float32)
    vae = minivae.VAE(latent=10, hidden=(64,), seed=1)
    opt = minivae.Adam(vae.params, lr=2e-3)
    rng = np.random.default_rng(0)
    for _ in range(150):
        vae.forward(x[rng.choice(500, 100, replace=False)])
        opt.step(vae.backward())
    return vae, x[500:]


def test_evaluate_on_given_posterior_means_is_evaluate_on_the_data(trained_vae):
    vae, x = trained_vae
    posterior = metrics.posterior_means(vae, x, batch_size=40)
    fresh = metrics.evaluate(vae, x, np.random.default_rng(3), batch_size=40)
    reused = metrics.evaluate(vae, x, np.random.default_rng(3), batch_size=40, posterior=posterior)
    assert reused == fresh  # the same μ, log σ², ε and sums: equal to the last bit


def test_posterior_means_of_an_autoencoder_are_its_codes():
    x = np.random.default_rng(0).random((70, 784)).astype(np.float32)
    ae = AE(latent=6, hidden=(16,), seed=0)
    mu, logvar = metrics.posterior_means(ae, x, batch_size=32)
    assert logvar is None
    # Encoded in chunks of 32 rows, where BLAS may round otherwise than for all 70 at once.
    np.testing.assert_allclose(mu, ae.encode(x)[0], rtol=1e-5, atol=1e-6)


def test_importance_weighted_bound_is_above_the_elbo_and_tightens_with_k(trained_vae):
    vae, x = trained_vae
    elbo = -metrics.evaluate(vae, x, np.random.default_rng(1))["loss"]
    ll = {k: metrics.iw_log_likelihood(vae, x, k, np.random.default_rng(2)) for k in (1, 10, 100)}
    assert ll[1] == pytest.approx(elbo, abs=1.5)  # K = 1 is an estimate of the ELBO itself
    assert elbo < ll[10] < ll[100]
    assert ll[100] - ll[1] > 1.0  # a real tightening, not noise
    with pytest.raises(ValueError):
        metrics.iw_log_likelihood(vae, x, 0, np.random.default_rng(0))


def test_autoencoder_gradient_every_parameter():
    rng = np.random.default_rng(5)
    ae = AE(data_dim=9, latent=4, hidden=(7,), seed=2, dtype="float64")
    x = rng.random((5, 9))
    ae.forward(x)
    grads = ae.backward()
    assert list(grads) == list(ae.params)
    for k, p in ae.params.items():
        assert rel_error(numerical_grad(lambda: ae.forward(x), p), grads[k]) < 1e-6, k


def test_autoencoder_is_the_vae_without_sampling_and_kl():
    """Same MLP shapes; its loss equals the VAE's reconstruction term when z is the code."""
    ae = AE(data_dim=9, latent=4, hidden=(7,), seed=2, dtype="float64")
    vae = minivae.VAE(data_dim=9, latent=4, hidden=(7,), seed=2, dtype="float64")
    assert [p.shape for k, p in ae.params.items() if k.startswith("dec")] == [
        p.shape for k, p in vae.params.items() if k.startswith("dec")
    ]
    x = np.random.default_rng(0).random((3, 9))
    z = ae.encode(x)[0]
    for k in ae.params:
        if k.startswith("dec"):
            vae.params[k][...] = ae.params[k]
    logits = vae.decode_logits(z)
    want = (np.maximum(logits, 0) + np.log1p(np.exp(-np.abs(logits))) - x * logits).sum(1).mean()
    assert ae.forward(x) == pytest.approx(want, rel=1e-12)


def test_kl90_counts_the_latents_holding_90_percent_of_the_kl():
    assert study.kl90([0.05, 5.0, 3.9, 0.6, 0.45]) == 3  # top two: 8.9 of 10; top three: 9.5
    assert study.kl90([1.0] * 10) == 9
    assert study.kl90(np.zeros(4)) is None


# ------------------------------------------------------------------------------ the full-data study


def test_seeds_and_steps_give_one_run_per_seed_with_its_learning_curve(tmp_path):
    out = tmp_path / "study"
    small = [("cpu-fused" if a == "numpy" else a) for a in SMALL[2:]]  # SMALL less "--epochs 1"
    args = ["--latents", "3,40", "--models", "vae,ae", "--seeds", "0,1", "--steps", "5", "--out", str(out)] + small
    assert sweep.main(args) == 0
    rows = rows_of(out)
    assert sorted(study.run_key(r) for r in rows) == sorted(
        (m, z, (16,), s) for m in ("vae", "ae") for z in (3, 40) for s in (0, 1)
    )
    for r in rows:
        assert r["steps"] == 5 and [p["step"] for p in r["curve"]] == sweep.curve_steps(5) == [4, 5]
        assert r["last20_gain"] == pytest.approx(r["curve"][-2]["test_loss"] - r["curve"][-1]["test_loss"])
        assert {"directions", "participation_ratio", "probe_logreg", "probe_knn", "seed"} <= set(r)
        assert 0 <= r["probe_logreg"] <= 1 and 0 <= r["probe_knn"] <= 1
        saved = out / "runs" / study.run_file(r)
        with np.load(saved) as arrays:
            assert "originals" not in arrays.files  # the test digits are the data's, not a result
    assert not list((out / "runs").glob("*.partial.json"))
    for name in FIGURES + ["learning_curves.png", "probe.png", "report.md"]:
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "| vae | 16 | 40 | 2 |" in report  # the two seeds aggregated in one line


def test_curve_steps_are_log_spaced_and_end_with_the_last_fifth():
    assert sweep.curve_steps(40000) == [100, 200, 500, 1000, 2000, 5000, 10000, 20000, 32000, 40000]
    assert sweep.curve_steps(250) == [100, 200, 250]  # 200 is both a 1-2-5 step and 80% of 250
    assert sweep.curve_steps(1) == [1]


def test_seed_aggregation_and_the_convergence_column_on_fabricated_rows():
    def row(z, seed, loss, gain):
        return {
            "model": "vae",
            "latent": z,
            "hidden": [8],
            "seed": seed,
            "test_loss": loss,
            "test_iw_nll": loss - 5,
            "test_recon": loss - 20,
            "test_kl": 20.0,
            "active_units": 3,
            "directions": 2,
            "participation_ratio": 1.5,
            "kl90": 2,
            "gap": 1.0,
            "probe_logreg": 0.9,
            "probe_knn": 0.8,
            "last20_gain": gain,
            "samples_per_s": 100.0,
            "wall_s": 10.0,
            "epochs": 1.0,
        }

    rows = [
        row(2, 0, 100.0, 0.5),
        row(2, 1, 102.0, 0.2),
        row(2, 2, 104.0, 0.1),
        row(9, 0, 90.0, 2.5),
        row(9, 1, 91.0, 0.3),
        row(9, 2, 92.0, 0.4),
    ]
    mean, sd, n = study.aggregate([r for r in rows if r["latent"] == 2], "test_loss")
    assert (mean, sd, n) == (102.0, 2.0, 3)  # sample standard deviation, ddof = 1
    assert study.aggregate(rows[:1], "test_loss") == (100.0, None, 1)
    assert study.converged(rows[0]) is True and study.converged(rows[3]) is False
    assert study.converged(dict(rows[0], last20_gain=None)) is None
    z2, z9 = rows[:3], rows[3:]
    assert study.separated(z2, z9, "test_loss")  # 102 ± 2 against 91 ± 1: 11 > 3
    assert not study.separated(z2, [dict(r, test_loss=r["test_loss"] - 2) for r in z2], "test_loss")

    settings = {"steps": 1000, "batch_size": 8, "lr": 1e-3, "binarize": "dynamic", "iw_samples": 5, "iw_examples": 10}
    text = study.report(rows, settings, "fabricated")
    assert "| vae | 8 | 2 | 3 | 102.0 ± 2.0 |" in text
    assert "| vae | 9 | 8 | 0 | 90.0 | 85.0 | 3 | 2 | 2.50 | **no** |" in text
    assert "| vae | 2 | 8 | 0 | 100.0 | 95.0 | 3 | 2 | 0.50 | yes |" in text
    assert "Not converged (last 20% of the steps gained ≥ 1 nat): VAE Z = 9 seed 0 (2.50)." in text
    assert "Worse at the end" not in text
    ae = dict(rows[1], model="ae", test_iw_nll=None, last20_gain=1.5)
    wide = dict(rows[2], hidden=[16], seed=5, last20_gain=-0.75)
    text = study.report([*rows, ae, wide], settings, "fabricated")
    assert "gained ≥ 1 nat): VAE Z = 9 seed 0 (2.50), AE Z = 2 seed 1 (1.50)." in text
    assert "nothing was left to gain): VAE Z = 2 hidden 16 seed 5 (+0.75)." in text
    assert "Best −log p(x): 86.0 ± 1.0 nats at Z = 9" in text
    assert "Z = 2: 97.0 ± 2.0 (+11.0; beyond the seed spread)" in text
    one_seed = study.report([r for r in rows if r["seed"] == 0], settings, "fabricated")
    assert "Z = 2: 95.0 (+10.0; one seed each: no spread to compare with)" in one_seed
    # the best size with one seed, a size with three: the missing spread is the best size's
    best_one = study.report([*z2, rows[3]], settings, "fabricated")
    assert "Z = 2: 97.0 ± 2.0 (+12.0; Z = 9 has one seed: no spread to compare with)" in best_one
    other_one = study.report([rows[0], *z9], settings, "fabricated")
    assert "Z = 2: 95.0 (+9.0; one seed: no spread to compare with)" in other_one
    assert "`metrics_vs_latent.png`, `active_units.png`" in one_seed
    one_size = study.report(z9, settings, "fabricated")
    assert "Figures: `learning_curves.png`, `kl_spectra.png`, `samples_by_latent.png`" in one_size
    assert "metrics_vs_latent" not in one_size and "probe.png" not in one_size


def test_one_latent_size_gets_no_figures_against_z(tmp_path):
    """A sweep of one size (a longer run, say) draws its learning curves, not one-point plots."""
    from minivae import plots

    curve = [{"step": s, "test_loss": 200.0 / s**0.1, "active_units": 5, "directions": 4} for s in (10, 100)]
    row = {"model": "vae", "latent": 7, "hidden": [8], "seed": 0, "curve": curve, "last20_gain": 0.5, "settings": "k"}
    plots.study_figures(tmp_path, [row], None)
    assert (tmp_path / "learning_curves.png").stat().st_size > 0
    drawn = {p.name for p in tmp_path.glob("*.png")}
    assert drawn == {"learning_curves.png"}, drawn
    plots.study_figures(tmp_path, [row, dict(row, latent=9)], None)
    assert {"metrics_vs_latent.png", "active_units.png", "probe.png"} <= {p.name for p in tmp_path.glob("*.png")}


def test_figures_against_z_tick_the_sizes_drawn_with_labels_that_do_not_overlap(tmp_path, monkeypatch):
    """Issue: on an axis from Z = 200 to 2000 matplotlib's minor labels ran into each other
    ("3×10⁴×10²"). The sizes are the ticks now, of two too close only one labelled."""
    from minivae import plots

    drawn = _saved_figures(monkeypatch)
    base = {"model": "vae", "hidden": [8], "seed": 0, "test_loss": 95.0, "test_iw_nll": 90.0, "test_recon": 65.0}
    rows = [dict(base, latent=z, test_kl=29.0, gap=0.5, samples_per_s=1e3) for z in (200, 784, 1000, 2000)]
    plots.metrics_vs_latent(tmp_path / "m.png", rows)
    plots.probe_vs_latent(tmp_path / "p.png", [dict(r, probe_logreg=0.9, probe_knn=0.95) for r in rows])
    assert len(drawn) == 2
    labels = {}
    for fig in drawn:
        fig.canvas.draw()
        for ax in fig.axes:
            assert [t.get_position()[0] for t in ax.get_xticklabels()] == [200, 784, 1000, 2000]
            labels[tuple(t.get_text() for t in ax.get_xticklabels())] = ax
            assert not [t for t in ax.get_xminorticklabels() if t.get_text()]
            _assert_labels_apart(fig, ax)
    assert set(labels) == {("200", "784", "1k", "2k")}  # room for all four on a decade


def _saved_figures(monkeypatch):
    """The figures plots._save is given, kept open as saved (labels thinned) to be looked at."""
    from minivae import plots

    drawn = []
    monkeypatch.setattr(plots._pyplot(), "close", drawn.append)
    monkeypatch.setattr(plots, "atomic_write", lambda path, write: None)
    return drawn


def _assert_labels_apart(fig, ax):
    renderer = fig.canvas.get_renderer()
    boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()), key=lambda b: b.x0)
    gaps = [b.x0 - a.x1 for a, b in zip(boxes, boxes[1:], strict=False)]
    assert min(gaps) > 0, [t.get_text() for t in ax.get_xticklabels()]


def test_latent_ticks_of_the_whole_sweep_leave_room_between_their_labels(tmp_path, monkeypatch):
    """Issue: with the eleven sizes of the study (2 to 2000) on a panel a third of the figure wide,
    "500", "1000" and "2000" ran together. What is labelled is measured as drawn: no two labels of
    an axis touch, and the ends and Z = 1000 keep theirs (1000 and 2000 written 1k and 2k)."""
    from minivae import plots

    drawn = _saved_figures(monkeypatch)
    base = {"model": "vae", "hidden": [8], "seed": 0, "test_loss": 95.0, "test_iw_nll": 90.0, "test_recon": 65.0}
    sizes = (2, 5, 10, 20, 50, 100, 200, 500, 784, 1000, 2000)
    rows = [dict(base, latent=z, test_kl=29.0, gap=0.5, samples_per_s=1e3) for z in sizes]
    plots.metrics_vs_latent(tmp_path / "m.png", rows)
    plots.probe_vs_latent(tmp_path / "p.png", [dict(r, probe_logreg=0.9, probe_knn=0.95) for r in rows])
    assert len(drawn) == 2
    for fig in drawn:
        fig.canvas.draw()
        for ax in fig.axes:
            assert {"2", "1k", "2k"} <= {t.get_text() for t in ax.get_xticklabels()}
            _assert_labels_apart(fig, ax)
    # On the narrow panels of metrics_vs_latent 784 does not fit between 500 and 1000: D gives
    # way (its dashed line names it), its neighbours keep their labels.
    texts = [t.get_text() for t in drawn[0].axes[0].get_xticklabels()]
    assert texts[7:] == ["500", "", "1k", "2k"]


def test_directions_count_rotated_information_that_units_miss():
    """k informative directions rotated across all Z coordinates: every unit varies (Burda counts
    all Z as active), but the cloud of means spans exactly k directions."""
    rng = np.random.default_rng(0)
    N, Z, k = 4000, 30, 4
    white = rng.standard_normal((N, k))
    white, _ = np.linalg.qr(white - white.mean(axis=0))  # centred, orthonormal: exactly uncorrelated
    signal = white * np.sqrt(N) * np.array([2.0, 1.5, 1.0, 0.7])  # variances 4, 2.25, 1, 0.49
    rotation, _ = np.linalg.qr(rng.standard_normal((Z, Z)))
    mu = signal @ rotation[:k]  # (N, Z): each of the k directions spread over all coordinates
    assert metrics.active_units(mu)[0] == Z
    d = metrics.latent_directions(mu)
    assert d["directions"] == k
    lam = signal.var(axis=0)
    np.testing.assert_allclose(d["eigenvalues"][:k], np.sort(lam)[::-1], rtol=1e-8)
    assert d["participation_ratio"] == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-8)
    # Equal variances along k directions: the participation ratio is k itself.
    assert metrics.latent_directions(rng.standard_normal((N, k)) @ rotation[:k])[
        "participation_ratio"
    ] == pytest.approx(k, rel=0.1)
    vecs, var = metrics.principal_directions(mu, k)
    np.testing.assert_allclose(np.abs(vecs.T @ rotation[:k].T).max(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(var, np.sort(lam)[::-1], rtol=1e-8)


def test_autoencoder_on_the_fast_engine_equals_the_numpy_autoencoder():
    x = (np.random.default_rng(0).random((48, 784)) > 0.6).astype(np.float32)
    ref, fast = AE(latent=30, hidden=(24,), seed=3), AE(latent=30, hidden=(24,), seed=3, backend="cpu-fused")
    assert fast.backend == "cpu-fused"
    opt_ref, opt_fast = minivae.Adam(ref.params), minivae.Adam(fast.params)
    for _ in range(4):
        assert fast.forward(x) == pytest.approx(ref.forward(x), rel=1e-5)
        g_ref, g_fast = ref.backward(), fast.backward()
        for name in ref.params:
            np.testing.assert_allclose(g_fast[name], g_ref[name], rtol=1e-3, atol=1e-6, err_msg=name)
        opt_ref.step(g_ref)
        opt_fast.step(g_fast)
    z, none = fast.encode(x)
    assert none is None
    np.testing.assert_allclose(z, ref.encode(x)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fast.decode_logits(z), ref.decode_logits(z), rtol=1e-4, atol=1e-4)


def _run_cfg(out, backend="numpy", steps=8):
    """The run run() hands a worker for one VAE run (Z = 3, hidden 16, 256 digits)."""
    args = sweep.parse_args(["--latents", "3", "--steps", str(steps), "--out", str(out)] + SMALL[2:])
    settings, key = sweep.settings_of(args, steps)
    return SweepRun(**settings, model="vae", latent=3, hidden=[16], seed=0, out=str(out), settings=key, backend=backend)


def _interrupt_after(monkeypatch, stop_at):
    """Make the training loop raise KeyboardInterrupt (as Ctrl-C would) after step ``stop_at``."""
    run_epoch, count = sweep.loop.run_epoch, [0]

    def interrupted(model, opt, x, order, after_step, skip=0, lr_at=None):
        def hook(*a):
            finished = after_step(*a)
            count[0] += 1
            if count[0] == stop_at:
                raise KeyboardInterrupt
            return finished

        return run_epoch(model, opt, x, order, hook, skip=skip, lr_at=lr_at)

    monkeypatch.setattr(sweep.loop, "run_epoch", interrupted)


# 256 digits at batch 128: two steps per epoch. Checkpoints every 3 steps: an interruption at step 5
# continues from step 3 (mid-epoch), one at step 7 from step 6 (an epoch's last step).
@pytest.mark.parametrize("backend", ["numpy", "cpu-fused"])
@pytest.mark.parametrize("stop_at", [5, 7])
def test_an_interrupted_run_continues_from_its_checkpoint_exactly(tmp_path, monkeypatch, backend, stop_at):
    monkeypatch.setattr(sweep, "RESUME_EVERY", 3)
    whole = sweep.run_one(_run_cfg(tmp_path / "whole", backend))
    assert not list((tmp_path / "whole" / "runs").glob("*.resume.npz"))  # saved on the way, removed at the end
    cfg = _run_cfg(tmp_path / "cut", backend)
    with monkeypatch.context() as m:
        _interrupt_after(m, stop_at)
        with pytest.raises(KeyboardInterrupt):
            sweep.run_one(cfg)
    resume = tmp_path / "cut" / "runs" / cfg.file(".resume.npz")
    assert resume.exists()
    skips, real = [], sweep.loop.run_epoch
    monkeypatch.setattr(sweep.loop, "run_epoch", lambda *a, **k: (skips.append(k.get("skip", 0)), real(*a, **k))[1])
    again = sweep.run_one(cfg)
    assert skips[0] == {5: 1, 7: 2}[stop_at]  # the steps of the first epoch it runs that were done before
    assert len(skips) == {5: 3, 7: 2}[stop_at]  # the epochs it runs: 2-4 or 3-4 (4 epochs = 8 steps)
    assert not resume.exists()
    for k in ("test_loss", "test_iw_nll", "train_loss", "curve", "active_units", "directions", "steps", "probe_logreg"):
        assert again[k] == whole[k], k


def test_a_checkpoint_of_other_settings_is_left_alone_and_one_that_lies_is_set_aside(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "RESUME_EVERY", 3)
    other = _run_cfg(tmp_path, steps=9)  # another budget: another settings key, its own files
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)
        with pytest.raises(KeyboardInterrupt):
            sweep.run_one(other)
    theirs = tmp_path / "runs" / other.file(".resume.npz")
    before = theirs.read_bytes()
    fresh = sweep.run_one(_run_cfg(tmp_path / "fresh"))
    row = sweep.run_one(_run_cfg(tmp_path))
    assert theirs.read_bytes() == before  # kept for its own run
    assert row["curve"] == fresh["curve"] and row["test_loss"] == fresh["test_loss"]
    # The other run's checkpoint under this run's name: refused, set aside, and the run starts over.
    ours = tmp_path / "runs" / _run_cfg(tmp_path).file(".resume.npz")
    ours.write_bytes(before)
    capsys.readouterr()
    again = sweep.run_one(_run_cfg(tmp_path))
    assert "cannot continue from it (ValueError: it holds another run); that run starts again" in (
        capsys.readouterr().err
    )
    assert ours.with_name(ours.name + ".corrupt").exists() and not ours.exists()
    assert again["curve"] == fresh["curve"] and again["test_loss"] == fresh["test_loss"]
