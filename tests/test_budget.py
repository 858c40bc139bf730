"""Schedules, budget curves and the mechanism measurements of the latent-size study."""

import json
import math
import os
import signal

import numpy as np
import pytest

from minivae import losses, mechanism, metrics, plots, schedule, study, sweep, train
from minivae.config import SweepRun
from minivae.vae import VAE

pytestmark = pytest.mark.usefixtures("offline")  # tests/conftest.py: no network, empty cache

TINY = ["--limit", "256", "--hidden", "16", "--iw-samples", "3", "--iw-examples", "20", "--backend", "numpy"]


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


def test_schedule_values_at_given_steps():
    lr, t = 1e-3, 100
    assert [schedule.lr_at(s, t, lr) for s in (0, 50, 99, 500)] == [lr] * 4
    cos = [schedule.lr_at(s, t, lr, "cosine") for s in (0, 50, 99)]
    assert (
        cos[0] == lr
        and cos[1] == pytest.approx(lr / 2)
        and cos[2] == pytest.approx(lr * 0.5 * (1 + math.cos(0.99 * math.pi)))
    )
    # wsd, f = 0.2: constant for s < 80, then lr·(100 − s)/20: lr at 80, lr/20 at the last update
    assert schedule.decay_start(t, 0.2) == 80
    wsd = [schedule.lr_at(s, t, lr, "wsd", 0.2) for s in (0, 79, 80, 90, 99)]
    assert wsd[:3] == [lr, lr, lr] and wsd[3] == pytest.approx(lr / 2) and wsd[4] == pytest.approx(lr / 20)
    assert schedule.lr_at(150, t, lr, "wsd", 0.2) == wsd[4]  # past the budget it stays at its last rate
    assert schedule.lr_at(0, t, lr, "wsd", 1.0) == lr and schedule.lr_at(50, t, lr, "wsd", 1.0) == pytest.approx(lr / 2)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule.schedule(t, lr, "step")


def test_the_loop_sets_the_rate_of_every_update_from_the_schedule():
    vae = VAE(784, 3, (8,), seed=0, backend="numpy", dtype=np.float64)
    from minivae.optim import Adam

    opt, seen = Adam(vae.params, lr=1.0), []
    real = opt.step

    def step(grads):
        seen.append(opt.lr)
        real(grads)

    opt.step = step
    x = (np.random.default_rng(0).random((40, 784)) < 0.3).astype(np.float64)
    from minivae import loop

    lr_at = schedule.schedule(8, 1e-3, "wsd", 0.5)
    loop.run_epoch(vae, opt, x, [np.arange(i, i + 5) for i in range(0, 40, 5)], lr_at=lr_at)
    assert seen == [lr_at(s) for s in range(8)]
    assert seen[:4] == [1e-3] * 4 and seen[4] == pytest.approx(1e-3) and seen[7] == pytest.approx(1e-3 / 4)


def _run_main(argv):
    try:
        return train.main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def _params(out):
    with np.load(out / "checkpoint.npz") as ck:
        return {k: ck[k] for k in ck.files if k.startswith(("param/", "opt/"))}


def test_train_resumed_mid_schedule_continues_it_exactly(tmp_path, monkeypatch):
    args = TINY + ["--latent", "4", "--batch-size", "64", "--quiet", "--lr-schedule", "wsd", "--decay-frac", "0.5"]
    assert _run_main(args + ["--epochs", "3", "--out", tmp_path / "straight"]) == 0
    real, calls = VAE.forward, {"n": 0}

    def forward(self, x, eps=None):  # SIGTERM inside the decay (12 steps; the decay starts at 6)
        calls["n"] += 1
        if calls["n"] == 9:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, x, eps)

    monkeypatch.setattr(VAE, "forward", forward)
    assert _run_main(args + ["--epochs", "3", "--out", tmp_path / "cut"]) == 128 + signal.SIGTERM
    monkeypatch.setattr(VAE, "forward", real)
    assert _run_main(["--resume", tmp_path / "cut", "--epochs", "4"]) == 2  # the schedule cannot stretch
    assert _run_main(["--resume", tmp_path / "cut", "--quiet"]) == 0
    a, b = _params(tmp_path / "straight"), _params(tmp_path / "cut")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # and the schedule mattered: a constant-rate run ends elsewhere
    assert (
        _run_main(TINY + ["--latent", "4", "--batch-size", "64", "--quiet", "--epochs", "3", "--out", tmp_path / "c"])
        == 0
    )
    assert not np.array_equal(a["param/dec1.W"], _params(tmp_path / "c")["param/dec1.W"])


def test_a_constant_schedule_keeps_the_settings_key_of_earlier_studies():
    args = sweep.parse_args(["--steps", "40000", "--data-dir", "data/mnist"])
    assert sweep.settings_of(args, 40000)[1] == "aa0106ef8bed"  # docs/study/settings.json
    wsd = sweep.parse_args(["--steps", "40000", "--data-dir", "data/mnist", "--lr-schedule", "wsd"])
    settings, key = sweep.settings_of(wsd, 40000)
    assert key != "aa0106ef8bed" and settings["lr_schedule"] == "wsd" and settings["decay_frac"] == 0.2


# --------------------------------------------------------------------------------------------
# Budget curves: a branch is the straight wsd run
# --------------------------------------------------------------------------------------------


def _cfg(out, budgets=None, steps=8):
    base = ["--latents", "3", "--out", str(out), "--lr-schedule", "wsd"] + TINY
    args = sweep.parse_args(base + (["--budgets", ",".join(map(str, budgets))] if budgets else ["--steps", str(steps)]))
    run = dict(model="vae", latent=3, hidden=[16], seed=0, backend="numpy", out=str(out), threads=None)
    if budgets:
        settings, _ = sweep.settings_of(args, max(budgets))
        chain = dict(settings, steps=None, budgets=list(budgets))
        keys = [sweep.settings_of(args, t)[1] for t in budgets]
        return SweepRun(**run, **chain, settings=sweep._key(chain), budget_keys=keys)
    settings, key = sweep.settings_of(args, steps)
    return SweepRun(**run, **settings, settings=key)


COMPARED = ("test_loss", "test_iw_nll", "train_loss", "curve", "active_units", "directions", "steps", "settings")


def test_each_branch_of_a_budget_curve_equals_the_straight_wsd_run(tmp_path):
    rows = sweep.run_budgets(_cfg(tmp_path / "curve", budgets=[6, 10]))
    assert [r["steps"] for r in rows] == [6, 10]
    for r in rows:
        straight = sweep.run_one(_cfg(tmp_path / f"straight{r['steps']}", steps=r["steps"]))
        for k in COMPARED:
            assert r[k] == straight[k], (r["steps"], k)
    assert not list((tmp_path / "curve" / "runs").glob("*.resume.npz"))  # the trunk's, removed at the end


def test_a_branch_rows_samples_per_s_times_the_branchs_own_steps(tmp_path, monkeypatch):
    # every update said to take 0.5 s: each row's rate is then exactly B / 0.5, whatever the
    # trunk did before its branch (a branch of 2 steps once divided 9 steps by its own 1 s)
    real = sweep.loop.run_epoch

    def half_second_steps(model, opt, x, order, after_step, skip=0, lr_at=None):
        return real(model, opt, x, order, lambda s, loss, n, sec: after_step(s, loss, n, 0.5), skip=skip, lr_at=lr_at)

    monkeypatch.setattr(sweep.loop, "run_epoch", half_second_steps)
    cfg = _cfg(tmp_path / "curve", budgets=[6, 10])
    rows = sweep.run_budgets(cfg)
    assert [r["samples_per_s"] for r in rows] == [cfg.batch_size / 0.5] * 2
    straight = sweep.run_one(_cfg(tmp_path / "straight", steps=10))
    assert straight["samples_per_s"] == cfg.batch_size / 0.5


def test_an_interrupted_budget_curve_continues_exactly_and_skips_what_is_done(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "RESUME_EVERY", 3)
    whole = sweep.run_budgets(_cfg(tmp_path / "whole", budgets=[4, 10]))
    cfg = _cfg(tmp_path / "cut", budgets=[4, 10])
    real, count = sweep.loop.run_epoch, [0]

    def interrupted(model, opt, x, order, after_step, skip=0, lr_at=None):
        def hook(*a):
            finished = after_step(*a)
            count[0] += 1
            if count[0] == 9:  # trunk 1-3, branch 4, trunk 4-8, then the 9th step: mid-trunk
                raise KeyboardInterrupt
            return finished

        return real(model, opt, x, order, hook, skip=skip, lr_at=lr_at)

    monkeypatch.setattr(sweep.loop, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_budgets(cfg)
    monkeypatch.setattr(sweep.loop, "run_epoch", real)
    first = json.loads(next((tmp_path / "cut" / "runs").glob("*.row.json")).read_text())
    assert first["steps"] == 4 and first["test_loss"] == whole[0]["test_loss"]
    again = sweep.run_budgets(cfg.replace(budgets_done=[cfg.budget_keys[0]]))
    assert [r["steps"] for r in again] == [10]
    for k in COMPARED:
        assert again[0][k] == whole[1][k], k


def test_budget_rows_report_and_figure_from_a_two_size_two_budget_sweep(tmp_path):
    out = tmp_path / "curves"
    args = ["--latents", "3,5", "--budgets", "5,10", "--lr-schedule", "wsd", "--quiet", "--out", str(out)] + TINY
    assert sweep.main(args) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["latent"], r["steps"]) for r in rows) == [(3, 5), (3, 10), (5, 5), (5, 10)]
    assert len({r["settings"] for r in rows}) == 2  # one key per budget
    assert (out / "budget_curves.png").stat().st_size > 0 and (out / "unused_noise.png").stat().st_size > 0
    text = (out / "report.md").read_text()
    # The deficit figure is drawn exactly when a size larger than the best one is in the sweep.
    larger = bool(study.budget_deficits(rows)[1])
    assert (out / "budget_deficit.png").exists() == larger and ("`budget_deficit.png`" in text) == larger
    assert "## Budget curves" in text and "| 5 | 10 | last change | converged |" in text
    # The last 20% of a wsd run is its cool-down: shown as such, and no convergence verdict by it.
    assert "cool-down gain" in text and "last-20%" not in text and "Not converged (last 20%" not in text
    curves = study.budget_curves(rows)
    for z in (3, 5):
        (t0, m0, _, _), (t1, m1, _, _) = curves[("vae", (16,), z)]
        assert (t0, t1) == (5, 10)
        change = f"{m1 - m0:+.2f}"
        assert f"| {m0:.2f} | {m1:.2f} | {change} | {'yes' if abs(m1 - m0) < 0.3 else '**no**'} |" in text
    # The same sweep again: nothing left to do, nothing trained.
    assert sweep.main(args) == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 4
    # A larger budget for one size only: its tables still compare both sizes, at the largest
    # budget both have; the budget section and the settings carry the new budget.
    longer = ["--latents", "3", "--budgets", "5,10,20", "--lr-schedule", "wsd", "--quiet", "--out", str(out)] + TINY
    assert sweep.main(longer) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["latent"], r["steps"]) for r in rows) == [(3, 5), (3, 10), (3, 20), (5, 5), (5, 10)]
    text = (out / "report.md").read_text()
    assert "Budget: 10 Adam steps per run" in text and "| 5 | 10 | 20 | last change | converged |" in text
    table = text.split("## Budget curves")[0]
    assert "| vae | 16 | 3 | 1 |" in table and "| vae | 16 | 5 | 1 |" in table
    assert json.loads((out / "settings.json").read_text())["steps"] == 20


def test_budget_change_and_convergence_on_fabricated_rows():
    def row(z, steps, seed, nll):
        return {"model": "vae", "latent": z, "hidden": [8], "seed": seed, "steps": steps, "test_iw_nll": nll}

    rows = [row(2, 1000, 0, 95.0), row(2, 2000, 0, 94.9), row(2, 1000, 1, 95.2), row(2, 2000, 1, 94.9)]
    rows = [row(9, 1000, 0, 99.0), row(9, 2000, 0, 97.0)] + rows  # the larger Z first: listed by Z
    curves = study.budget_curves(rows)
    assert [k[2] for k in curves] == [2, 9]
    assert curves[("vae", (8,), 2)][1][:2] == (2000, pytest.approx(94.9))
    assert study.budget_change(rows[2:], "test_iw_nll") == (pytest.approx(-0.2), 2.0)
    # a seed run only to the smaller budget does not enter the change: each seed against itself
    assert study.budget_change(rows[2:] + [row(2, 1000, 2, 90.0)], "test_iw_nll") == (pytest.approx(-0.2), 2.0)
    assert study.budget_change(rows[2:] + [row(2, 4000, 2, 90.0)], "test_iw_nll") == (None, None)
    text = study.budget_report(rows)
    assert "| vae | 8 | 2 | 2 | 95.10 ± 0.14 | 94.90 | -0.20 | yes |" in text
    assert "| vae | 8 | 9 | 1 | 99.00 | 97.00 | -2.00 | **no** |" in text


def test_deficits_to_the_best_size_seed_by_seed_on_fabricated_rows(tmp_path):
    def row(z, steps, seed, nll):
        return {"model": "vae", "latent": z, "hidden": [8], "seed": seed, "steps": steps, "test_iw_nll": nll}

    ref = {1000: 95.0, 2000: 94.0, 4000: 93.5}  # Z = 2, seed 0; seed 1 is 0.5 nat better throughout
    rows = [row(2, t, 0, v) for t, v in ref.items()] + [row(2, t, 1, v - 0.5) for t, v in ref.items()]
    rows += [row(1, t, 0, v + 3.0) for t, v in ref.items()]  # smaller and worse: not a "larger size"
    rows += [row(9, 1000, 0, 96.0), row(9, 4000, 0, 94.5), row(9, 4000, 1, 93.75)]
    rows += [row(9, 8000, 0, 90.0)]  # a budget the reference never ran: no pair
    best, deficits = study.budget_deficits(rows)
    assert best == 2 and list(deficits) == [9]
    assert sorted(deficits[9]) == [1000, 4000]
    ((s0, gap0, none),) = deficits[9][1000]
    assert (s0, gap0, none) == (0, pytest.approx(1.0), None)  # 96 is worse than Z = 2 ever was
    at4000 = sorted(deficits[9][4000])
    # seed 0: 94.5 lies halfway (in nats) between 95.0 at 1000 and 94.0 at 2000 steps: in log
    # budget that is √(1000·2000) steps, so Z = 2 needs 4000 / 1414.2 = 2√2 times fewer.
    assert at4000[0] == (0, pytest.approx(1.0), pytest.approx(2 * math.sqrt(2)))
    # seed 1 against seed 1's own curve (94.5, 93.5, 93.0 at 1000, 2000, 4000): 93.75 lies three
    # quarters of the way from 1000 to 2000 steps, 1000·2^0.75 in log budget.
    assert at4000[1] == (1, pytest.approx(0.75), pytest.approx(4000 / (1000 * 2**0.75)))
    assert study.matching_budget([(10, 5.0), (20, 4.0)], 5.5) is None
    assert study.matching_budget([(10, 5.0), (20, 4.0)], 4.0) == pytest.approx(20)
    text = study.budget_report(rows)
    assert "Behind Z = 2 " in text and "| 9 | +1.00 | – | +0.88 (×2.6), n = 2 | – |" in text
    assert "`budget_deficit.png`" in text
    assert plots.budget_deficit(tmp_path / "deficit.png", rows) is True
    assert (tmp_path / "deficit.png").stat().st_size > 0
    # One size alone, or the best size the largest: nothing to draw and no such figure named.
    alone = [r for r in rows if r["latent"] == 2]
    assert study.budget_deficits(alone) == (None, {})
    assert plots.budget_deficit(tmp_path / "none.png", alone) is False and not (tmp_path / "none.png").exists()
    assert "budget_deficit" not in study.budget_report(alone)


def test_a_shorter_sweep_into_the_same_folder_keeps_the_longer_ones_arrays(tmp_path):
    """Issue: a 2-step sweep into a folder of a 3-step one overwrote its arrays, and the 3-step
    report then drew the 2-step models."""
    out = tmp_path / "study"
    common = ["--latents", "3,5", "--quiet", "--out", str(out)] + TINY
    assert sweep.main(common + ["--steps", "3"]) == 0
    three = {p.name: p.read_bytes() for p in (out / "runs").glob("*.npz")}
    assert sweep.main(common + ["--steps", "2"]) == 0
    assert all((out / "runs" / name).read_bytes() == data for name, data in three.items())
    assert len(list((out / "runs").glob("*.npz"))) == 4
    assert sweep.main(common + ["--steps", "3"]) == 0  # its report again, from its own rows and arrays
    assert "Budget: 3 Adam steps" in (out / "report.md").read_text()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["steps"] for r in rows) == [2, 2, 3, 3]


# --------------------------------------------------------------------------------------------
# The mechanism: pruning, embedding, the noise of unused units
# --------------------------------------------------------------------------------------------


def _vae(z, seed=0):
    return VAE(784, z, (16,), seed=seed, backend="numpy", dtype=np.float64)


def _digits(n=12, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.float64)


def test_an_embedded_model_has_exactly_the_small_models_elbo_at_step_0():
    small = _vae(3, seed=1)
    big = mechanism.embedded(small, 10)
    assert big.latent == 10 and big.num_params() > small.num_params()
    x, eps = _digits(), np.random.default_rng(2).standard_normal((12, 10))
    assert big.forward(x, eps) == pytest.approx(small.forward(x, eps[:, :3]), rel=1e-15, abs=1e-12)
    mu, logvar = big.encode(x)
    assert np.all(mu[:, 3:] == 0) and np.all(logvar[:, 3:] == 0)  # q = N(0, 1): no KL
    assert metrics.kl_per_dim(mu, logvar)[3:].max() == 0
    with pytest.raises(ValueError):
        mechanism.embedded(small, 2)


def test_a_pruned_model_is_the_model_with_those_units_at_zero_and_their_kl_dropped():
    vae = _vae(6, seed=3)
    keep = np.array([0, 2, 5])
    small = mechanism.pruned(vae, keep)
    x = _digits()
    eps = np.random.default_rng(4).standard_normal((12, 3))
    mu, logvar = (np.asarray(a) for a in vae.encode(x))
    z = np.zeros((12, 6))
    z[:, keep] = mu[:, keep] + np.exp(0.5 * logvar[:, keep]) * eps  # the dropped units' z at 0
    recon = losses.bernoulli_nll(vae.decode_logits(z), x)
    kl = 0.5 * (mu[:, keep] ** 2 + np.exp(logvar[:, keep]) - 1 - logvar[:, keep]).sum(axis=1)
    assert small.forward(x, eps) == pytest.approx((recon + kl).mean(), rel=1e-13)
    # pruning the units an embedding added gives back the small model, weight for weight
    back = mechanism.pruned(mechanism.embedded(small, 9), [0, 1, 2])
    assert all(np.array_equal(back.params[k], small.params[k]) for k in small.params)
    with pytest.raises(ValueError):
        mechanism.pruned(vae, [0, 0])


def test_the_noise_of_unused_units_on_a_constructed_case():
    vae = _vae(4)
    w = np.zeros((4, 16))
    w[0, :4] = 1.0  # ‖W_0‖² = 4
    w[1, :9] = 2.0  # ‖W_1‖² = 36
    w[2, 0] = 3.0  # ‖W_2‖² = 9
    vae.set_params(dict(vae.get_params(), **{"dec0.W": w}))
    n = 1000
    rng = np.random.default_rng(0)
    mu = np.zeros((n, 4))
    mu[:, 0] = rng.standard_normal(n)  # unit 0 active (Var ≈ 1), units 1–3 inactive
    logvar = np.log(np.full((n, 4), 0.5))
    logvar[:, 1:] = 0.0  # the inactive units at the prior: σ² = 1
    got = mechanism.unused_noise(vae, mu, logvar)
    assert got["inactive"] == 3
    assert got["noise_inactive"] == pytest.approx(36 + 9 + 0)
    assert got["rows_inactive"] == pytest.approx(np.sqrt((36 + 9 + 0) / 3))
    assert got["rows_active"] == pytest.approx(2.0)
    assert got["signal_active"] == pytest.approx((mu[:, 0].var() + 0.5) * 4)


def test_the_sweep_records_the_mechanism_in_its_rows_and_curves(tmp_path):
    cfg = _cfg(tmp_path, steps=6).replace(iw_check=7)
    row = sweep.run_one(cfg)
    for k in ("rows_inactive", "rows_active", "noise_inactive", "signal_active", "pruned_units"):
        assert k in row
    assert row["iw_check_samples"] == 7 and math.isfinite(row["test_iw_nll_check"])
    assert all("noise_inactive" in p for p in row["curve"])
    if row["pruned_units"]:
        assert math.isfinite(row["test_iw_nll_pruned"])


def test_a_warm_started_sweep_starts_from_the_embedded_model(tmp_path, capsys):
    small_out = tmp_path / "small"
    assert (
        sweep.main(["--latents", "3", "--steps", "6", "--keep-models", "--quiet", "--out", str(small_out)] + TINY) == 0
    )
    (kept,) = (small_out / "models").iterdir()
    small = minivae_load(kept)
    assert small.latent == 3
    warm = tmp_path / "warm"
    args = ["--latents", "3,7", "--steps", "4", "--init-from", str(kept), "--quiet", "--out", str(warm)] + TINY
    assert sweep.main(args) == 0
    rows = {r["latent"]: r for r in map(json.loads, (warm / "results.jsonl").read_text().splitlines())}
    assert rows[3]["curve"][0]["step"] == 0 and rows[7]["curve"][0]["step"] == 0
    assert rows[7]["curve"][0]["active_units"] <= 3  # the 4 added units start at the prior
    settings = json.loads((warm / "settings.json").read_text())
    assert settings["init_from"].startswith("vae-3-h16@")
    capsys.readouterr()
    for bad in (["--latents", "2"], ["--hidden", "8"], ["--models", "ae"]):
        code = sweep.main(args + bad)
        assert code == 2 and "--init-from" in capsys.readouterr().err, bad


def minivae_load(path):
    from minivae.runs import load

    return load(path, backend="numpy")


def test_the_report_names_the_test_digits_the_estimate_used():
    row = {"model": "vae", "latent": 2, "hidden": [8], "seed": 0, "test_loss": 100.0, "test_iw_nll": 95.0}
    row.update(active_units=2, directions=2, epochs=1.0, wall_s=1.0, iw_examples=500, settings="k")
    settings = {"steps": 10, "batch_size": 128, "lr": 1e-3, "binarize": "dynamic", "iw_samples": 100}
    text = study.report([row], dict(settings, iw_examples=1000), "the offline sample")
    assert "first 500 test digits" in text and "first 1000" not in text


def test_units_at_the_prior_cost_no_kl_and_tell_nothing_about_x():
    vae = _vae(5, seed=5)
    x = _digits()
    moved = mechanism.at_prior(vae, [1, 3])
    mu, logvar = moved.encode(x)
    assert np.all(mu[:, [1, 3]] == 0) and np.all(logvar[:, [1, 3]] == 0)
    keep = [0, 2, 4]
    assert np.array_equal(mu[:, keep], vae.encode(x)[0][:, keep])
    assert np.array_equal(moved.params["dec0.W"], vae.params["dec0.W"])  # the decoder still hears them


def test_the_mechanism_command_measures_kept_models(tmp_path, capsys):
    out = tmp_path / "s"
    assert sweep.main(["--latents", "6", "--steps", "4", "--keep-models", "--quiet", "--out", str(out)] + TINY) == 0
    (kept,) = (out / "models").iterdir()
    result = tmp_path / "m.jsonl"
    argv = [str(kept), "--out", str(result), "--iw-samples", "3", "--iw-examples", "20", "--backend", "numpy"]
    assert mechanism.main(argv) == 0
    (row,) = [json.loads(line) for line in result.read_text().splitlines()]
    assert row["run"] == kept.name and row["latent"] == 6 and math.isfinite(row["test_iw_nll"])
    sweep_row = json.loads((out / "results.jsonl").read_text())
    assert row["noise_inactive"] == pytest.approx(sweep_row["noise_inactive"])
    capsys.readouterr()
    assert mechanism.main([str(tmp_path / "nothing"), "--out", str(result)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_plain_rows_step_their_rows_by_the_gradient_and_the_others_by_adam():
    from minivae.optim import Adam

    vae, ref = _vae(5, seed=6), _vae(5, seed=6)
    x, eps = _digits(), np.random.default_rng(8).standard_normal((12, 5))
    vae.forward(x, eps)
    g = vae.backward()
    before = vae.params["dec0.W"].copy()
    opt = mechanism.PlainRows(vae.params, "dec0.W", [1, 3], lr=1e-2)
    opt.step(g)
    Adam(ref.params, lr=1e-2).step(g)
    others = [0, 2, 4]
    assert all(np.array_equal(vae.params[k], ref.params[k]) for k in vae.params if k != "dec0.W")
    assert np.array_equal(vae.params["dec0.W"][others], ref.params["dec0.W"][others])
    # at t = 1, m̂ = g and v̂ = g²: η = α / median over the other rows of (mean_j g²)^½
    eta = 1e-2 / np.median(np.sqrt((g["dec0.W"][others] ** 2).mean(axis=1)))
    assert opt.eta == pytest.approx(eta, rel=1e-12)
    want = before[[1, 3]] - eta * g["dec0.W"][[1, 3]]
    np.testing.assert_allclose(vae.params["dec0.W"][[1, 3]], want, rtol=1e-12, atol=1e-15)
    assert not np.allclose(want, ref.params["dec0.W"][[1, 3]])  # not Adam's step
    with pytest.raises(ValueError, match="some but not all"):
        mechanism.PlainRows(vae.params, "dec0.W", range(5))


def _walk_case():
    vae = mechanism.at_prior(_vae(6, seed=7), [2, 4, 5])  # μ = 0 for units 2, 4, 5: inactive
    rng = np.random.default_rng(9)
    return vae, rng.random((40, 784)), (rng.random((30, 784)) < 0.3).astype(np.float64)


def test_the_walk_is_adam_training_and_measures_steps_in_learning_rates():
    from minivae import loop
    from minivae.optim import Adam

    vae, train_x, test_x = _walk_case()
    row, trained = mechanism.walk(vae, train_x, test_x, steps=5, lr=1e-3, batch_size=8)
    assert row["inactive"] == 3 and row["walk_steps"] == 5 and row["unused_step"] == "adam"
    # five steps = one epoch of 40 digits in batches of 8: the training loop's result, exactly
    ref = mechanism._resized(vae, 6, vae.get_params(), seed=0)
    _, _, x, order = next(loop.epochs(train_x, "dynamic", 8, np.random.default_rng([0, 9])))
    assert loop.run_epoch(ref, Adam(ref.params, lr=1e-3), x, order)[2] == "end"
    assert all(np.array_equal(trained.params[k], ref.params[k]) for k in ref.params)
    # one fresh Adam step moves a weight by α·|g| / (|g| + ε): α where g ≠ 0, 0 where g = 0
    one, _ = mechanism.walk(vae, train_x, test_x, steps=1, lr=1e-3, batch_size=8)
    first = mechanism._resized(vae, 6, vae.get_params(), seed=0)
    _, _, x, order = next(loop.epochs(train_x, "dynamic", 8, np.random.default_rng([0, 9])))
    first.forward(x[next(iter(order))])
    g = first.backward()["dec0.W"]
    moved = np.sqrt(((np.abs(g) / (np.abs(g) + 1e-8)) ** 2).mean(axis=1))
    grad_rms = np.sqrt((g**2).mean(axis=1))
    off = np.zeros(6, bool)
    off[[2, 4, 5]] = True
    assert one["step_inactive"] == pytest.approx(np.median(moved[off]), rel=1e-6)
    assert one["grad_rms_inactive"] == pytest.approx(np.median(grad_rms[off]), rel=1e-12)
    assert one["grad_rms_active"] == pytest.approx(np.median(grad_rms[~off]), rel=1e-12)
    assert one["step_active"] == pytest.approx(np.median(moved[~off]), rel=1e-6)
    assert row["noise_start"] == pytest.approx(one["noise_start"]) and row["noise_end"] != row["noise_start"]
    # with a cool-down: the training loop under the wsd schedule of the walk's length
    cooled, trained = mechanism.walk(vae, train_x, test_x, steps=5, lr=1e-3, batch_size=8, decay_frac=0.4)
    ref = mechanism._resized(vae, 6, vae.get_params(), seed=0)
    _, _, x, order = next(loop.epochs(train_x, "dynamic", 8, np.random.default_rng([0, 9])))
    lr_at = schedule.schedule(5, 1e-3, "wsd", 0.4)
    assert loop.run_epoch(ref, Adam(ref.params, lr=1e-3), x, order, lr_at=lr_at)[2] == "end"
    assert all(np.array_equal(trained.params[k], ref.params[k]) for k in ref.params)
    assert cooled["walk_decay_frac"] == 0.4 and math.isfinite(cooled["test_iw_nll_end"])


def test_the_walk_with_plain_or_held_rows_moves_the_unused_rows_by_their_gradient_or_not():
    vae, train_x, test_x = _walk_case()
    row, _ = mechanism.walk(vae, train_x, test_x, steps=1, lr=1e-3, unused="plain", batch_size=8)
    assert row["unused_step"] == "plain" and row["eta"] > 0
    # at t = 1 the plain rows move by η·|g| per weight: in learning rates η/α times their gradient
    assert row["step_inactive"] == pytest.approx(row["eta"] / 1e-3 * row["grad_rms_inactive"], rel=1e-9)
    held, trained = mechanism.walk(vae, train_x, test_x, steps=3, unused="frozen", batch_size=8)
    assert held["step_inactive"] == 0 and held["step_active"] > 0 and held["eta"] == 0
    assert np.array_equal(trained.params["dec0.W"][[2, 4, 5]], vae.params["dec0.W"][[2, 4, 5]])
    zeroed, trained = mechanism.walk(vae, train_x, test_x, steps=3, unused="zeroed", batch_size=8)
    assert np.all(trained.params["dec0.W"][[2, 4, 5]] == 0) and zeroed["noise_end"] == 0
    assert zeroed["noise_start"] == held["noise_start"] > 0
    with pytest.raises(ValueError, match="unused must be one of"):
        mechanism.walk(vae, train_x, test_x, steps=1, unused="sgd")
    active = mechanism.at_prior(vae, [0, 1, 3])  # every unit at the prior: nothing to compare
    with pytest.raises(ValueError, match="both active and inactive"):
        mechanism.walk(active, train_x, test_x, steps=1)


def test_the_mechanism_command_walks_kept_models(tmp_path, capsys):
    from minivae import checkpoint

    out = tmp_path / "s"
    assert sweep.main(["--latents", "6", "--steps", "4", "--keep-models", "--quiet", "--out", str(out)] + TINY) == 0
    (kept,) = (out / "models").iterdir()
    ck = checkpoint.read(kept / "checkpoint.npz")
    model = mechanism.at_prior(minivae_load(kept), [1, 3, 5])  # three unused units to follow
    checkpoint.save_params(kept / "checkpoint.npz", model, json.loads(str(ck["config"])))
    result = tmp_path / "w.jsonl"
    argv = [str(kept), "--walk", "4", "--walk-decay", "0.5", "--walk-rows", "zeroed,adam", "--out", str(result)]
    argv += ["--iw-samples", "3", "--iw-examples", "20"]  # the walk's −log p(x) estimate, as measure's
    assert mechanism.main(argv) == 0
    rows = [json.loads(line) for line in result.read_text().splitlines()]
    assert [r["unused_step"] for r in rows] == ["zeroed", "adam"] and all(r["walk_steps"] == 4 for r in rows)
    assert rows[0]["walk_decay_frac"] == 0.5 and rows[0]["inactive"] >= 3 and rows[0]["noise_end"] == 0
    assert rows[0]["noise_start"] == pytest.approx(rows[1]["noise_start"]) and rows[1]["noise_end"] > 0
    assert all(math.isfinite(r["test_iw_nll_start"]) and math.isfinite(r["test_iw_nll_end"]) for r in rows)
    assert "unused rows' noise" in capsys.readouterr().out
    assert all(r["walk_seed"] == json.loads((kept / "config.json").read_text())["seed"] for r in rows)
    other = tmp_path / "other.jsonl"  # another walk: its own seed, its own data order and ε
    argv2 = [str(kept), "--walk", "4", "--walk-decay", "0.5", "--walk-rows", "adam", "--walk-seed", "5"]
    assert mechanism.main(argv2 + ["--out", str(other), "--iw-samples", "3", "--iw-examples", "20"]) == 0
    (again,) = [json.loads(line) for line in other.read_text().splitlines()]
    assert again["walk_seed"] == 5 and again["noise_end"] != pytest.approx(rows[1]["noise_end"], rel=1e-9)
    assert mechanism._parser().parse_args([str(kept), "--walk", "2", "--out", "x"]).walk_rows == list(mechanism.WALKS)
    capsys.readouterr()
    assert mechanism.main([str(kept), "--walk-seed", "5", "--walk-lr", "0.01", "--out", str(result)]) == 2
    err = capsys.readouterr().err  # the options of a walk without --walk: refused, not ignored
    assert "--walk-lr, --walk-seed only apply with --walk" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as bad:
        mechanism.main([str(kept), "--walk", "4", "--walk-rows", "sgd", "--out", str(result)])
    assert bad.value.code == 2 and "--walk-rows must be from" in capsys.readouterr().err
    checkpoint.save_params(kept / "checkpoint.npz", mechanism.at_prior(model, range(6)), json.loads(str(ck["config"])))
    assert mechanism.main([str(kept), "--walk", "3", "--out", str(result)]) == 2
    err = capsys.readouterr().err
    assert "both active and inactive" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
