"""The latent-size study: does a VAE with more latents than pixels work, and what does Z change?

    python -m minivae.sweep --latents 2,5,10,20,50,100,200,500,784,1000,2000 --epochs N --jobs 2
    python -m minivae.sweep ... --models vae,ae        # the same sizes as a plain autoencoder too

Every run has the same data, hidden widths, optimizer, epochs and seed; only Z (and the model)
change. Per run, on the held-out test digits, it measures the negative ELBO and its two terms,
an importance-weighted log-likelihood (K samples, stated), active units (Burda et al. 2015:
Var_x E_q[z_u | x] > 0.01), the train–test gap (−ELBO on training digits minus on test digits),
the parameter count, samples/s and wall time. For the autoencoder, "test_loss" is its
reconstruction loss, and KL and log-likelihood do not exist.

Runs go to worker processes through a ``concurrent.futures`` executor (``--jobs``), or with
``--scheduler ADDRESS`` to a Dask cluster. Each finished run is appended to ``results.jsonl`` at
once, and a run whose result is already there (same settings) is skipped, so an interrupted sweep
resumes where it stopped. A run under way saves its whole state every 2,000 steps
(``runs/<tag>.resume.npz``, removed when it finishes), and continues from there when the sweep is
run again: an interruption costs at most 2,000 steps, and the run ends bit for bit as it would
have. At the end it writes ``report.md`` and the figures.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import pathlib
import signal
import sys
import threading
import time
import warnings

import numpy as np

from minivae import checkpoint, cli, loop, mechanism, metrics
from minivae.checkpoint import CheckpointError
from minivae.cli import EXIT_FAILED, EXIT_INTERRUPTED, UsageError, check_memory, value_text
from minivae.config import Progress, RunConfig, SweepRun
from minivae.data import D, binarize_fixed
from minivae.files import (
    JsonlError,
    WriteError,
    atomic_write,
    atomic_write_text,
    error_reason,
    parse_json,
    read_jsonl,
    read_regular_text,
    refuse_foreign,
    write_jsonl,
)
from minivae.guards import OutFolder, watch_parent
from minivae.schedule import decay_start, schedule
from minivae.study import budget_report, is_cooled, kl90, report, run_file, run_key

NAME = "minivae.sweep"  # what its messages start with
MODELS = ("vae", "ae")
LATENTS = (2, 5, 10, 20, 50, 100, 200, 500, D, 1000, 2000)  # D = 784: as many latents as pixels
DEFAULT_EPOCHS = 10
RESUME_EVERY = 2000  # steps between a run's mid-run checkpoints (runs/<tag>-<settings>.resume.npz)
TAKE_IN_EVERY = 30  # seconds between looks for the rows of budget curves under way
WORKERS_LOCK = ".workers.lock"  # a shared lock held by every worker of a sweep while it lives
KEPT = ("latent", "hidden", "seed", "beta", "backend", "steps", "lr", "lr_schedule", "binarize", "data_dir", "limit")
KEPT += ("sweep_settings",)  # what a kept model's config.json holds, in this order


def _int_list(expected, rule, minimum, sort=True):
    """An argparse type: comma-separated integers of at least ``minimum`` → a list without
    repeats, sorted (or in the given order); ``expected`` and ``rule`` word the two messages."""

    def parse(text):
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{rule}, got {text!r}")
        return sorted(set(values)) if sort else list(dict.fromkeys(values))

    return parse


_latent_list = _int_list("latent sizes like 2,10,1000", "latent sizes must be positive integers", 1)
_budget_list = _int_list("step budgets like 5000,10000,20000", "step budgets must be integers of at least 2", 2)
_seed_list = _int_list("seeds like 0,1,2", "seeds must be non-negative integers", 0, sort=False)


_model_list = cli.choices_list("models", MODELS)


def parse_args(argv=None):
    p = cli.Parser(
        prog=cli.program(NAME, "minivae-sweep"),
        description="Train one model per latent size and compare them on held-out digits.",
    )
    _study_options(p)
    p.add_argument("--jobs", type=cli.positive_int, default=1, help="worker processes")
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on this Dask scheduler (e.g. tcp://127.0.0.1:8786) instead (default local worker processes)",
    )
    p.add_argument(
        "--out",
        type=cli.path,
        default=pathlib.Path("runs") / "sweep",
        help="folder for results.jsonl, report.md, the figures and runs/",
    )
    cli.add_training_options(p, epochs=DEFAULT_EPOCHS, iw_samples=100)
    return p.parse_args(argv)


def _study_options(p):
    """What the study trains and keeps: the sizes, models, seeds, steps or budgets, and extras."""
    p.add_argument(
        "--latents",
        type=_latent_list,
        default=list(LATENTS),
        help="comma-separated sizes",
    )
    p.add_argument("--models", type=_model_list, default=["vae"], help="vae, ae or vae,ae")
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="comma-separated seeds, one run per seed and size (default --seed)",
    )
    p.add_argument(
        "--steps",
        type=cli.positive_int,
        default=None,
        help="Adam steps per run, the same for every size (default --epochs passes "
        f"over the training digits, {DEFAULT_EPOCHS} epochs when neither is given)",
    )
    p.add_argument(
        "--budgets",
        type=_budget_list,
        default=None,
        metavar="T1,T2,…",
        help="budget curves: for each size, the model trained with the wsd schedule of each of these "
        "step budgets, from one constant-rate run with a decay branch per budget (needs --lr-schedule wsd)",
    )
    p.add_argument(
        "--iw-check",
        type=cli.positive_int,
        default=None,
        metavar="K",
        help="also estimate −log p(x) of each final model with K importance samples (e.g. 1000), beside "
        "--iw-samples, to see the estimate's bias (default none)",
    )
    p.add_argument(
        "--keep-models",
        action="store_true",
        help="keep each final VAE as a run folder models/<run>/ (config.json, checkpoint.npz) that "
        "minivae.load and minivae.explore open; without it only the results and small arrays are kept",
    )
    p.add_argument(
        "--init-from",
        type=cli.path,
        default=None,
        metavar="RUN_DIR",
        help="start every VAE from this trained VAE (a run folder, e.g. one --keep-models kept) with its "
        "extra latents at the prior: the nested warm start (default fresh weights)",
    )


# ----------------------------------------------------------------------------------- one run


def curve_steps(total):
    """Where a run's learning curve is measured: the log-spaced steps 100, 200, 500, 1000, 2000, …
    below 80% of the budget, then 80% of it and the last step (the pair the convergence column
    compares).     total → sorted list of step numbers in 1 … total
    """
    total = int(total)
    marks, decade = set(), 1
    while decade <= total:
        marks.update(m * decade for m in (1, 2, 5) if 100 <= m * decade < 0.8 * total)
        decade *= 10
    marks.update({max(1, round(0.8 * total)), total})
    return sorted(marks)


def _curve_point(model, test_x, seed, step):
    """Test −ELBO (AE: reconstruction loss), active units and directions of the model as it is."""
    row, (mu, logvar) = loop.evaluate(model, test_x, np.random.default_rng([seed, 3, step]))
    point = {"step": step, **row}
    if logvar is not None:  # what the unused units feed the decoder (minivae.mechanism)
        noise = mechanism.unused_noise(model, mu, logvar)
        point.update({k: noise[k] for k in ("rows_inactive", "rows_active", "noise_inactive", "signal_active")})
    return point


def _marks(cfg, total):
    """The steps a run's curve is measured at: :func:`curve_steps`, and step 0 for a warm start
    (the model it starts from, as embedded)."""
    return ([0] if cfg.warm_start else []) + curve_steps(total)


def _setup(cfg):
    """The model, its optimizer, the digits and the test digits as the run measures them."""
    if cfg.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(cfg.threads)
    from minivae.data import load_mnist

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback to the offline sample is said in `source`
        data = load_mnist(cfg.data_dir, cfg.limit, seed=0)  # the same digits for every seed
    return (*_new_model(cfg), data, binarize_fixed(data.test_x, cfg.binarize))


def _new_model(cfg):
    """A freshly initialised model of ``cfg`` and its Adam."""
    from minivae.ae import AE
    from minivae.optim import Adam
    from minivae.vae import VAE

    kind = VAE if cfg.model == "vae" else AE
    model = kind(D, cfg.latent, tuple(cfg.hidden), seed=cfg.seed, backend=cfg.backend)
    if cfg.warm_start:  # a trained smaller VAE, its extra units at the prior (minivae.mechanism)
        from minivae.runs import load

        small = load(cfg.warm_start, backend=cfg.backend)
        model = mechanism.embedded(small, cfg.latent, seed=cfg.seed)
    return model, Adam(model.params, lr=cfg.lr)


def _files(cfg):
    """(progress file for a watcher, resume checkpoint) of a run: runs/<tag>-<settings>.*"""
    runs = pathlib.Path(cfg.out) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    return runs / cfg.file(".partial.json"), runs / cfg.file(".resume.npz")


def run_one(cfg):
    """Train and evaluate one model for ``cfg.steps`` Adam steps at the rate schedule of
    ``cfg``; save its arrays for the figures; return its results row, with the learning curve
    measured at :func:`curve_steps`. With ``cfg.budgets``, the budget curve of the model
    instead (:func:`run_budgets`): a list of rows, one per budget.

    Runs in a worker process: everything it needs is in ``cfg``, a :class:`minivae.config.SweepRun`. The row is also
    written to runs/<tag>-<settings>.row.json as soon as it exists, so that a sweep killed before
    it could take it in finds it there."""
    if cfg.budgets:
        return run_budgets(cfg)
    model, opt, data, test_x = _setup(cfg)
    partial, resume = _files(cfg)
    t0 = time.perf_counter()
    lr_at = schedule(cfg.steps, cfg.lr, cfg.lr_schedule, cfg.decay_frac)
    try:
        marks = _marks(cfg, cfg.steps)
        trained = _train(model, opt, data, test_x, cfg, (partial, resume), cfg.steps, marks, lr_at)
        row = _finish_row(model, data, test_x, cfg, trained, time.perf_counter() - t0)
    finally:  # a run that stops, however, leaves no progress file saying it is under way
        partial.unlink(missing_ok=True)
    resume.unlink(missing_ok=True)
    return row


def run_budgets(cfg):
    """The budget curve of one model: for each budget T of ``cfg.budgets`` (ascending), the
    model trained with the wsd schedule of T updates and evaluated — the rows a straight run of
    each budget would give, value for value, for about 1 + f of the largest budget's steps.

    The wsd schedule of T is the constant rate for its first S = round((1 − f) T) updates
    (:mod:`minivae.schedule`). So one constant-rate *trunk* runs on from budget to budget, saving
    its whole state at each S (runs/<tag>-<settings>.resume.npz); from each, a *branch* — a copy
    of that state — decays the rate to 0 over the last T − S updates and is measured. A budget
    whose row is in ``cfg.budgets_done`` gets no branch (and the trunk no stop there). An
    interrupted curve continues from the trunk's last checkpoint (saved every RESUME_EVERY steps
    and at every S)."""
    f = cfg.decay_frac
    trunk_marks = sorted({m for t in cfg.budgets for m in _marks(cfg, t) if m <= decay_start(t, f)})
    model, opt, data, test_x = _setup(cfg)
    files = _files(cfg)
    try:
        rows = _trunk_and_branches(cfg, model, opt, data, test_x, files, trunk_marks)
    finally:  # a curve that stops, however, leaves no progress file saying it is under way
        files[0].unlink(missing_ok=True)
    files[1].unlink(missing_ok=True)
    return rows


def _trunk_and_branches(cfg, model, opt, data, test_x, files, trunk_marks):
    """The loop of :func:`run_budgets`: the trunk to each budget's S, and that budget's branch."""
    budgets, f = cfg.budgets, cfg.decay_frac
    rows = []
    for total, key in zip(budgets, cfg.budget_keys, strict=True):
        start = decay_start(total, f)
        if key in cfg.budgets_done:
            continue  # the trunk passes through its S without stopping
        trunk = _train(model, opt, data, test_x, cfg, files, start, trunk_marks, None, keep_end=True)
        t0 = time.perf_counter()
        one = cfg.replace(steps=total, settings=key, lr_schedule="wsd", budgets=())
        if total != budgets[-1]:  # the larger-K estimate and the probes (minutes at large Z): final model only
            one = one.replace(iw_check=None, probe=False)
        branch, branch_opt = _new_model(one)  # given the trunk's state at S by _train, from its checkpoint
        marks = _marks(cfg, total)
        lr_at = schedule(total, cfg.lr, "wsd", f)
        trained = _train(branch, branch_opt, data, test_x, one, (None, files[1]), total, marks, lr_at, trunk=cfg)
        trained["curve"] = [p for p in trunk["curve"] if p["step"] in marks and p["step"] <= start] + trained["curve"]
        trained["wall_before"] = trunk["wall_before"]
        rows.append(_finish_row(branch, data, test_x, one, trained, time.perf_counter() - t0))
    return rows


def _finish_row(model, data, test_x, cfg, trained, seconds):
    """The results row of a trained run (also saved as runs/<tag>-<settings>.row.json)."""
    t0 = time.perf_counter()
    row = _measured(model, data, test_x, cfg, trained["diverged"])
    curve, step, bs = trained["curve"], trained["step"], cfg.batch_size
    gain = curve[-2]["test_loss"] - curve[-1]["test_loss"] if len(curve) >= 2 and not trained["diverged"] else None
    row = {
        "model": cfg.model,
        "latent": cfg.latent,
        "hidden": list(cfg.hidden),
        "seed": cfg.seed,
        "steps": step,
        "epochs": round(step * bs / len(data.train_x), 2),
        **row,
        "last20_gain": gain,
        "curve": curve,
        "params": model.num_params(),
        "samples_per_s": trained["samples_per_s"],
        "wall_s": trained["wall_before"] + seconds + time.perf_counter() - t0,
        "backend": model.backend,
        "diverged": trained["diverged"],
        "data": data.source,
        "settings": cfg.settings,
    }
    if cfg.keep_models and cfg.model == "vae":
        _keep_model(model, cfg, row)
    atomic_write_text(pathlib.Path(cfg.out) / "runs" / cfg.file(".row.json"), json.dumps(row) + "\n")
    return row


class Diverged(RuntimeError):
    """A run whose loss diverged so far that its model cannot be measured: it has no row."""


def _measured(model, data, test_x, cfg, diverged):
    """:func:`_measure`; for a model whose loss ``diverged`` (its words, else None) and that cannot
    be measured (codes that are not finite, an eigensolver that fails), :class:`Diverged` saying so
    and the rate to try instead (a tenth, as minivae.train suggests after a divergence)."""
    try:
        return _measure(model, data, test_x, cfg)
    except (ValueError, ArithmeticError) as e:  # np.linalg.LinAlgError is a ValueError
        if not diverged:
            raise
        raise Diverged(
            f"diverged ({diverged}), and its model cannot be measured ({error_reason(e)}); "
            f"train it again at a lower rate, e.g. --lr {value_text(cfg.lr * 0.1)}"
        ) from None


def _keep_model(model, cfg, row):
    """The trained VAE as a run folder, models/<tag>-<settings>/, in the main job's format (its
    config.json and a checkpoint.npz of the parameters): ``minivae.load`` and ``minivae.explore``
    open it."""
    folder = pathlib.Path(cfg.out) / "models" / cfg.file("")
    folder.mkdir(parents=True, exist_ok=True)
    options = {k: getattr(cfg, k) for k in ("latent", "hidden", "seed", "lr", "binarize", "data_dir", "limit")}
    config = RunConfig(
        **options,
        beta=1.0,
        backend=model.backend,
        lr_schedule=cfg.lr_schedule,
        extra={"steps": row["steps"], "sweep_settings": cfg.settings},
    ).to_json(KEPT)
    checkpoint.save_params(folder / "checkpoint.npz", model, config)
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")


def _train(model, opt, data, test_x, cfg, files, until, marks, lr_at, keep_end=False, trunk=None):
    """Adam steps of the training loop (:mod:`minivae.loop`) up to step ``until``, the rate set by
    ``lr_at`` (None: the constant ``cfg.lr``), the learning curve measured at the steps
    ``marks`` (and written to the progress file ``files[0]`` for a watcher as it grows).

    Every :data:`RESUME_EVERY` steps, and at ``until`` when ``keep_end``, the whole state of the
    run (parameters, Adam's moments, both generators, the position in the epoch, the curve so far)
    is saved to the checkpoint ``files[1]``, and a run that finds that file continues from it: an
    interrupted run loses at most RESUME_EVERY steps, and ends exactly as it would have without
    the interruption. A branch of a budget curve (``trunk``: the trunk's cfg) starts from the
    trunk's checkpoint instead and saves none."""
    partial, resume = files
    data_rng = np.random.default_rng([cfg.seed, 2])
    t0 = time.perf_counter()
    owner = trunk or cfg
    done, first, skip = _restore(resume, model, opt, data_rng, owner, len(data.train_x), until)
    timed_from = 1  # the first step is not timed (it loads compiled kernels)
    if trunk is not None:  # the branch starts a curve of its own (the caller adds the trunk's)
        done = dict(done, curve=[], train_time=0.0, wall_before=0.0)
        timed_from = done["step"]  # and times only its own steps
    wanted = set(marks)
    where = {}  # the epoch under way and its generator state at its start

    def after_step(epoch_step, loss, n, seconds):
        done["step"] += 1
        step = done["step"]
        if step > 1:  # samples/s leaves out the first step (it loads compiled kernels)
            done["train_time"] += seconds
        if step in wanted:
            done["curve"].append(_curve_point(model, test_x, cfg.seed, step))
            if partial is not None:  # how far it is, for a watcher
                atomic_write_text(partial, json.dumps(done["curve"]) + "\n")
        if trunk is None and ((step % RESUME_EVERY == 0 and step < until) or (keep_end and step == until)):
            state = dict(done, wall_before=done["wall_before"] + time.perf_counter() - t0)
            config = {"settings": cfg.settings, "tag": resume.name, "done": state}
            checkpoint.save(resume, model, opt, data_rng, where["start"], where["epoch"] - 1, epoch_step, config)
        return step >= until

    if done["step"] == 0 and 0 in wanted and trunk is None:
        done["curve"].append(_curve_point(model, test_x, cfg.seed, 0))
    if done["step"] < until:
        for epoch, start, x_epoch, order in loop.epochs(data.train_x, cfg.binarize, cfg.batch_size, data_rng, first):
            where.update(epoch=epoch, start=json.dumps(start))
            skipped = skip if epoch == first else 0
            _, loss, why = loop.run_epoch(model, opt, x_epoch, order, after_step, skip=skipped, lr_at=lr_at)
            if why == "diverged":
                done["diverged"] = f"loss {loss} at step {done['step'] + 1}"
            if why != "end" or done["step"] >= until:
                break
    time_s, steps_timed = done["train_time"], done["step"] - timed_from
    done["samples_per_s"] = steps_timed * cfg.batch_size / time_s if time_s > 0 else float("nan")
    done["wall_before"] += time.perf_counter() - t0
    return done


def _restore(resume, model, opt, data_rng, cfg, n_train, until):
    """(the run's progress, the first epoch, the steps of it already done) from ``resume`` when it
    holds this run with these settings, after loading its state into the model, Adam and the data
    generator (:func:`minivae.checkpoint.restore`, as the main job resumes); else a fresh start. A
    file that does not fit — another run's, other settings, a progress record that is not this
    checkpoint's — is said once and set aside."""
    fresh = Progress().to_json()
    if not resume.exists():
        return fresh, 1, 0
    try:
        ck = checkpoint.read(resume)
        record, epoch, step = checkpoint.check(ck, resume)
        if record.get("settings") != cfg.settings or record.get("tag") != resume.name:
            raise ValueError("it holds another run")
        done = Progress.from_json(record.get("done")).to_json()
        per_epoch = math.ceil(n_train / cfg.batch_size)
        t = int(ck["opt/t"]) if "opt/t" in ck else -1
        if not 0 <= step <= per_epoch or done["step"] != epoch * per_epoch + step or t != done["step"]:
            raise ValueError(f"its position (epoch {epoch}, step {step}, {done['step']} steps) is impossible")
        if done["step"] > until:
            raise ValueError(f"it is at step {done['step']}, past the step {until} this run stops at")
        checkpoint.restore(ck, model, opt, data_rng)
    except (CheckpointError, ValueError, KeyError, TypeError) as e:
        _warn(f"{resume}: cannot continue from it ({error_reason(e)}); that run starts again")
        resume.replace(resume.with_name(resume.name + ".corrupt"))
        return fresh, 1, 0
    return done, epoch + 1, step


def _measure(model, data, test_x, cfg):
    """The trained model's measures on the test (and training) digits, and its arrays for the
    figures, saved as runs/<tag>.npz."""
    train_x = binarize_fixed(data.train_x, cfg.binarize)
    rng = np.random.default_rng([cfg.seed, 3])
    mu, logvar = metrics.posterior_means(model, test_x)  # the AE's codes, and None, for "ae"
    active, activity = metrics.active_units(mu)
    directions = metrics.latent_directions(mu)
    if cfg.model == "vae":
        test = metrics.evaluate(model, test_x, rng, posterior=(mu, logvar))
        train = metrics.evaluate(model, train_x[: len(test_x)], rng)  # as many as test digits
        n_iw = min(cfg.iw_examples, len(test_x))
        iw_nll = -metrics.iw_log_likelihood(model, test_x[:n_iw], cfg.iw_samples, rng)
        kl_dim = metrics.kl_per_dim(mu, logvar)
    else:
        test, train = ae_evaluate(model, test_x), ae_evaluate(model, train_x[: len(test_x)])
        n_iw, iw_nll, kl_dim = 0, None, np.zeros(model.latent)
    probe = {}
    if cfg.probe:
        probe = metrics.probe_accuracy(metrics.posterior_means(model, train_x)[0], data.train_y, mu, data.test_y)

    # What the figures need, small: sorted KL spectrum, variances along the principal directions,
    # reconstructions, decoded N(0, I) codes. The test digits themselves are not saved: they are
    # the data's, and the report is drawn with the data at hand.
    fig_rng = np.random.default_rng([cfg.seed, 5])
    arrays = {
        "kl_per_dim": np.sort(kl_dim)[::-1],
        "activity": activity,
        "eigenvalues": directions["eigenvalues"],
        "reconstructions": model.reconstruct(test_x[:16]),
        "samples": model.sample(16, rng=fig_rng),
    }
    atomic_write(pathlib.Path(cfg.out) / "runs" / cfg.file(), lambda f: np.savez_compressed(f, **arrays))
    extra = _mechanism(model, test_x, mu, logvar, activity, cfg, n_iw) if cfg.model == "vae" else {}
    return {
        **extra,
        "test_loss": test["loss"],
        "test_recon": test["recon"],
        "test_kl": test["kl"],
        "test_iw_nll": iw_nll,
        "iw_samples": cfg.iw_samples if n_iw else None,
        "iw_examples": n_iw,
        "train_loss": train["loss"],
        "gap": test["loss"] - train["loss"],
        "active_units": active,
        "directions": directions["directions"],
        "participation_ratio": directions["participation_ratio"],
        "kl90": kl90(kl_dim),
        **probe,
    }


def _mechanism(model, test_x, mu, logvar, activity, cfg, n_iw):
    """The measurements of :mod:`minivae.mechanism` on the trained VAE: the noise its unused units
    feed the decoder; the model pruned of them (Burda et al. 2015, §5.2), evaluated as the model
    itself is; and, with ``cfg.iw_check`` = K', −log p(x) again with K' importance samples."""
    rng = np.random.default_rng([cfg.seed, 6])
    noise = mechanism.unused_noise(model, mu, logvar)
    out = {k: noise[k] for k in ("rows_inactive", "rows_active", "noise_inactive", "signal_active")}
    off = activity < metrics.ACTIVE_THRESHOLD
    out["pruned_units"] = int(off.sum())
    if off.any() and not off.all():
        small = mechanism.pruned(model, np.flatnonzero(~off))
        out["test_loss_pruned"] = metrics.evaluate(small, test_x, rng)["loss"]
        out["test_iw_nll_pruned"] = -metrics.iw_log_likelihood(small, test_x[:n_iw], cfg.iw_samples, rng)
    k = cfg.iw_check
    if k:
        out["test_iw_nll_check"] = -metrics.iw_log_likelihood(model, test_x[:n_iw], k, rng, metrics.check_batch(k))
        out["iw_check_samples"] = k
    return out


ae_evaluate = loop.reconstruction_loss  # the autoencoder's reconstruction loss, averaged over x


# ----------------------------------------------------------------------------------- the sweep


def settings_of(args, steps, schedule_kind=None):
    """Everything but the model, Z, the hidden widths and the seed that a result depends on, and
    its short hash: runs with the same hash belong to one study (and one report). The rate
    schedule enters only when it is not the constant rate (the keys of constant-rate studies are
    those they always had); ``schedule_kind`` overrides ``args.lr_schedule``."""
    s = {
        "steps": steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "binarize": args.binarize,
        "limit": args.limit,
        "data_dir": _data_dir_name(args.data_dir),
        "iw_samples": args.iw_samples,
        "iw_examples": args.iw_examples,
    }
    if getattr(args, "init_from", None) is not None:
        s["init_from"] = args.init_source["id"]
    kind = schedule_kind or getattr(args, "lr_schedule", "constant")
    if kind != "constant":
        s["lr_schedule"] = kind
    if kind == "wsd":
        s["decay_frac"] = args.decay_frac
    return s, _key(s)


def _data_dir_name(path):
    """The data folder as the settings name it: relative to the current folder when inside it
    (``data/mnist``, however it was written: ``./data/mnist/`` or its absolute path), else
    absolute — one folder, one name."""
    if path is None:
        return None
    full = os.path.abspath(path)
    inside = os.path.relpath(full)
    return full if inside == os.pardir or inside.startswith(os.pardir + os.sep) else inside


def _key(settings):
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def run(args):
    """Check the options, lock the output folder, load the data, train what is not in
    results.jsonl yet, write the report and the figures. Returns the exit code."""
    try:
        return _run(args)
    except WriteError as e:  # a full disk, say: every finished run is in results.jsonl already
        _warn(f"{e}; stopping (run the same command again when it can be written)")
        return EXIT_FAILED


def _run(args):
    _check_options(args)
    from minivae.backend import resolve

    backend = resolve(args.backend, "float32")
    _check_machine(args, backend)
    # The folder (and the parents it lacks) is made and locked here, and removed again by a
    # refusal that follows (bad data, say): nothing is written into it before _prepare_out.
    with OutFolder(args.out, "--out", "sweep"):
        _wait_for_old_workers(args.out)
        return _run_locked(args, backend)


def _run_locked(args, backend):
    data = _load_data(args)
    n_train = len(data.train_x)
    if args.batch_size > n_train:  # one step would be a whole epoch, and the row's epochs wrong
        raise UsageError(f"--batch-size {args.batch_size} is more than the {n_train:,} training digits")
    steps = args.steps or args.epochs * math.ceil(n_train / args.batch_size)
    study = _study_keys(args, steps)  # (settings, key, the settings keys of its results)
    client = _dask_client(args.scheduler) if args.scheduler else None
    try:
        return _sweep(args, backend, data, study, _previous_results(args.out, set(study[2])), client)
    finally:
        if client is not None:
            client.close()


def _sweep(args, backend, data, study, previous, client):
    """Write settings.json, train what is not in results.jsonl yet, write the report: the sweep
    once every check has passed. Returns the exit code."""
    (settings, key, per_budget), (rows, old, corrupt) = study, previous
    steps = settings["steps"]
    seeds = args.seeds if args.seeds is not None else [args.seed]
    results_path = args.out / "results.jsonl"
    say = (lambda *a: None) if args.quiet else print
    _prepare_out(args.out, corrupt, dict(settings, budgets=args.budgets) if args.budgets else settings, key)
    if corrupt:  # set aside, so moved: they are in results.jsonl.corrupt now, and only there
        write_jsonl(results_path, old + rows)
    _take_in(args.out, set(per_budget), rows, old)  # rows the workers of a killed sweep left
    wanted = _runs(args, seeds, backend, {(r["settings"], run_key(r)) for r in rows}, settings, key, per_budget)
    todo = [cfg for cfg, left in wanted if left]
    hidden = list(args.hidden)
    say(f"data: {data.source}")
    budget = (
        f"budgets {', '.join(f'{t:,}' for t in args.budgets)} steps (wsd, decay over the last {args.decay_frac:g})"
        if args.budgets
        else f"{steps:,} steps ({steps * args.batch_size / len(data.train_x):.1f} epochs)"
    )
    say(
        f"{len(todo)} run{'' if len(todo) == 1 else 's'} to do, {len(wanted) - len(todo)} already in {results_path}; "
        f"{budget}, hidden {hidden}, seeds {seeds}, backend {backend}"
    )
    t0 = time.perf_counter()
    try:
        failed = _train_all(args, todo, rows, old, client, say, set(per_budget))
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the workers were stopped by _execute
        left = stop.args[0] if stop.args else todo
        _warn(
            f"interrupted: {len(todo) - len(left)} of {len(todo)} runs finished (in {results_path}); "
            f"run the same command again to do the other {len(left)} (a run past 2,000 steps continues "
            "from its last checkpoint)"
        )
        return EXIT_INTERRUPTED
    shown = binarize_fixed(data.test_x, args.binarize)[:16]  # as the runs saw them
    if args.budgets:  # the tables compare the sizes at one budget; the budget section shows them all
        common = _common_budget(rows, args.budgets)
        settings, key = settings_of(args, common)
    final = [r for r in rows if r["settings"] == key]
    _write_report(args.out, final, settings, data.source, shown, rows if args.budgets else None)
    say(f"wrote {args.out / 'report.md'}, results.jsonl and figures ({time.perf_counter() - t0:.0f} s)")
    if failed:
        _warn(_failed_line(failed))
        return EXIT_FAILED
    return 0


def _failed_line(failed):
    """The last line of a sweep some of whose runs failed (``failed``: their exceptions): run again,
    or, for those that diverged beyond measuring (which would only diverge again), a lower rate."""
    diverged = sum(isinstance(e, Diverged) for e in failed)
    if diverged == len(failed):
        return f"{diverged} run(s) diverged and could not be measured; run them again at a lower --lr"
    also = f" ({diverged} of them diverged: those need a lower --lr)" if diverged else ""
    return f"{len(failed)} run(s) failed; run the same command again to retry them{also}"


def _study_keys(args, steps):
    """(settings, key, the settings keys of its results): one key for a study of ``steps`` per run;
    for a budget curve the largest budget's settings and key, and one key per budget."""
    if not args.budgets:
        settings, key = settings_of(args, steps)
        return settings, key, [key]
    settings, key = settings_of(args, max(args.budgets))
    return settings, key, [settings_of(args, t)[1] for t in args.budgets]


def _runs(args, seeds, backend, done, settings, key, per_budget):
    """The runs handed to the workers (:class:`minivae.config.SweepRun`), each with how many of its
    results (budgets) are not in ``done`` yet. Seed by seed, the largest (slowest) sizes first: the
    first seed's results come in first, and the workers do not wait on one long run at the end."""
    chain = dict(settings, steps=None, budgets=list(args.budgets or ()))  # a budget curve's
    shared = dict(chain, settings=_key(chain), budget_keys=per_budget) if args.budgets else dict(settings, settings=key)
    shared.update(backend=backend, out=str(args.out), iw_check=args.iw_check, keep_models=args.keep_models)
    shared.update(warm_start=args.init_source["path"] if args.init_source else None)
    shared.update(threads=1 if args.jobs > 1 else None)
    wanted = []
    for sd in seeds:
        for z in sorted(args.latents, reverse=True):
            for m in args.models:
                run = SweepRun(model=m, latent=z, hidden=args.hidden, seed=sd, **shared)
                have = [k for k in per_budget if (k, run_key(run.row_fields())) in done]
                if args.budgets:
                    run = run.replace(budgets_done=have)
                wanted.append((run, len(per_budget) - len(have)))
    return wanted


def _wait_for_old_workers(out, seconds=60):
    """Wait (up to ``seconds``) until no worker of an earlier sweep into ``out`` is left: each
    holds a shared lock on ``out/.workers.lock`` while it lives, and ends within a second of its
    sweep (:func:`minivae.guards.watch_parent`), once its run has cleaned up. The file is made by
    the workers, not here: where there is none, no worker holds it (and a sweep refused after
    this leaves none behind)."""
    fd = _open_workers_lock(out, create=False)
    if fd is None:
        return
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise UsageError(
                        f"workers of an earlier sweep are still writing into {out}; try again when they have ended"
                    ) from None
                time.sleep(0.2)
    finally:
        os.close(fd)


def _open_workers_lock(out, create=True):
    """A file descriptor of ``out/.workers.lock`` (made when ``create``, else None where there is none)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_CREAT if create else 0)
    try:
        return os.open(pathlib.Path(out) / WORKERS_LOCK, flags, 0o666)
    except OSError as e:
        if isinstance(e, FileNotFoundError) and not create:
            return None
        raise UsageError(f"cannot use {pathlib.Path(out) / WORKERS_LOCK}: {e.strerror or e}") from None


def _harvest(out, keys):
    """The rows that workers left in runs/*.row.json (a run's row is written there the moment it
    exists, in case its sweep is gone before it can take it in) whose settings are among
    ``keys``: a list of (file, row). A file that holds no usable row is set aside."""
    found = []
    runs = pathlib.Path(out) / "runs"
    for path in sorted(runs.glob("*.row.json")) if runs.is_dir() else []:
        try:
            row = parse_json(read_regular_text(path))
            if isinstance(row, dict) and _settings_problem(row):
                raise ValueError(_settings_problem(row))
            if not isinstance(row, dict) or row.get("settings") not in keys:
                continue
            problem = _row_problem(row)
            if problem:
                raise ValueError(problem)
        except (OSError, ValueError) as e:
            _warn(f"{path.name}: not a result ({error_reason(e)}); set aside")
            path.replace(path.with_name(path.name + ".corrupt"))
            continue
        found.append((path, row))
    return found


def _take_in(out, keys, rows, old, returned=()):
    """Add to ``rows`` the runs' rows not in it yet — those ``returned`` by workers and those left
    in runs/*.row.json — and write results.jsonl (all of it, atomically) when any is new; the row
    files go only once their rows are written. Returns the new rows."""
    have = {(r["settings"], run_key(r)) for r in rows}
    found = _harvest(out, keys)
    new = []
    for row in [*returned, *(row for _, row in found)]:
        if (row["settings"], run_key(row)) not in have:
            have.add((row["settings"], run_key(row)))
            new.append(row)
    if new:
        rows.extend(new)
        write_jsonl(pathlib.Path(out) / "results.jsonl", old + rows)
    for path, _ in found:
        path.unlink(missing_ok=True)
    return new


def _warn(line):
    cli.report(NAME, line)


def _check_options(args):
    """Contradicting or impossible options, refused before anything is loaded or written."""
    if args.steps is not None and args.epochs is not None:
        raise UsageError("give either --steps or --epochs, not both")
    if args.epochs == 0:  # as --steps 0: a study of untrained models
        raise UsageError("--epochs 0 trains nothing: give at least 1")
    if args.lr > float(np.finfo(np.float32).max):  # the models are float32: every step would be infinite
        raise UsageError(f"--lr {value_text(args.lr)} is beyond the range of float32, the models' numbers")
    if args.budgets is not None:
        if args.steps is not None or args.epochs is not None:
            raise UsageError("--budgets gives the steps of every run: give no --steps or --epochs with it")
        if args.lr_schedule != "wsd":
            raise UsageError("--budgets needs --lr-schedule wsd: the budget curve branches a constant-rate run")
        if min(decay_start(t, args.decay_frac) for t in args.budgets) < 1:
            raise UsageError(f"--decay-frac {args.decay_frac} leaves no constant-rate step in the smallest budget")
    args.init_source = _init_source(args) if args.init_from is not None else None
    if args.limit is not None and args.limit < 10:
        raise UsageError(f"--limit {args.limit}: the probes need at least 10 training digits")
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS
    if args.seeds is not None and args.seed != 0:
        raise UsageError("give either --seed or --seeds, not both")
    if args.data_dir is not None:
        cli.require_folder(args.data_dir, "--data-dir")  # also a name the system cannot look up
    OutFolder(args.out, "--out").check()  # a file there, or a name the system cannot look up
    refuse_foreign(args.out, "--out", "sweep")
    for sub in ("runs", "models"):  # the folders the runs write into, checked before any is trained
        OutFolder(args.out / sub, f"--out's {sub} folder").check()


def _check_machine(args, backend):
    """Runs that would each fail on this machine, refused before anything is made: a GPU backend
    without a usable GPU (as :func:`minivae.backend.create_ops` asks), and runs larger than the
    memory available (the largest size, estimated as minivae.train estimates a run; one run at a
    time). On a Dask cluster (``--scheduler``) its workers' machines decide: not checked here."""
    if args.scheduler:
        return
    from minivae.backend import GPU_LIBRARIES, gpu_usable

    if backend in GPU_LIBRARIES:
        usable, why = gpu_usable(backend, simulator=backend == "numba-cuda")
        if not usable:
            raise UsageError(f"--backend {backend} needs a usable CUDA GPU: {why}")
    z = max(args.latents)
    run = RunConfig(latent=z, hidden=args.hidden, batch_size=args.batch_size, limit=args.limit)
    run = run.replace(iw_samples=args.iw_samples, iw_examples=args.iw_examples)
    needed, P, k = run.memory_with_check(args.iw_check)
    check_memory(needed, f"the largest run (Z = {z:,}, {P:,} parameters, batch {args.batch_size}, K = {k:,})")


def _init_source(args):
    """The trained VAE a warm start begins from: {"path", "id"} (id: its latent size, hidden widths
    and a hash of its checkpoint, for the settings key), checked against every run of the sweep."""
    from minivae.runs import RunError, model_from, read_run

    try:
        run = read_run(args.init_from)
        model_from(run, backend="numpy")  # its checkpoint against its config, as every run will load it
    except RunError as e:
        raise UsageError(f"--init-from: {e}") from None
    except ValueError as e:
        raise UsageError(f"--init-from {args.init_from}: {e}") from None
    z, hidden = run.config.latent, list(run.config.hidden)
    if "vae" not in args.models or args.models != ["vae"]:
        raise UsageError("--init-from starts VAEs: give it with --models vae")
    if hidden != list(args.hidden):
        raise UsageError(f"--init-from {args.init_from} has hidden {hidden}, the sweep {list(args.hidden)}")
    if min(args.latents) < z:
        raise UsageError(f"--init-from {args.init_from} has Z = {z}: every --latents must be at least that")
    digest = hashlib.sha1((pathlib.Path(args.init_from) / "checkpoint.npz").read_bytes()).hexdigest()[:12]
    return {"path": os.path.abspath(args.init_from), "id": f"vae-{z}-h{'x'.join(map(str, hidden))}@{digest}"}


def _load_data(args):
    """The digits, loaded once here so that a data problem is one line before any worker starts."""
    return cli.load_digits(args.data_dir, args.limit, seed=0)


def _previous_results(out, keys):
    """(rows done before with these settings — ``keys``, a set of settings keys —, rows of other
    settings kept as they are, lines set aside): a line that is not a result, a result whose
    values or saved arrays are broken, or a second row of a run already there, is set aside (and
    a broken run trained again)."""
    results_path = out / "results.jsonl"
    corrupt, errors = [], []

    def set_aside(error, text):
        corrupt.append(text)
        errors.append(error)

    try:
        previous = read_jsonl(results_path, on_bad=set_aside, check=_settings_problem)
    except JsonlError as e:  # a row that cannot be sorted into studies: the file is refused, unchanged
        raise UsageError(f"{e}; correct or remove that line") from None
    except OSError as e:
        raise UsageError(f"cannot read {results_path}: {e.strerror or e}") from None
    for error in errors:  # said once the file is known to be usable
        _warn(f"{error}; set aside in {results_path.name}.corrupt, that run is trained again")
    rows, old, seen = [], [], set()
    for r in previous:
        if r.get("settings") not in keys:
            old.append(r)  # another study's: kept as it is
            continue
        problem = _row_problem(r) or _arrays_problem(out, r)
        if problem:
            _warn(f"{results_path.name}: the result of {problem}; that run is trained again")
            corrupt.append(json.dumps(r))
            continue
        if (r["settings"], run_key(r)) in seen:
            _warn(f"{results_path.name}: a second row of {_name(r)}; set aside (one run, one row)")
            corrupt.append(json.dumps(r))
            continue
        seen.add((r["settings"], run_key(r)))
        rows.append(r)
    return rows, old, corrupt


def _settings_problem(row):
    """What is wrong with a row's settings key (a string, or absent), in words; None when nothing."""
    settings = row.get("settings")
    if settings is None or isinstance(settings, str):
        return None
    return f'its "settings" is a JSON {type(settings).__name__}, not a settings key'


def _prepare_out(out, corrupt, settings, key):
    """The output folder, the lines set aside (nothing is lost) and settings.json."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if corrupt:
            with open(out / "results.jsonl.corrupt", "a") as f:
                f.write("".join(line.rstrip("\n") + "\n" for line in corrupt))
        atomic_write_text(out / "settings.json", json.dumps(dict(settings, key=key), indent=2) + "\n")
    except OSError as e:
        raise UsageError(f"cannot write into --out {out}: {e.strerror or e}") from None


def _common_budget(rows, budgets):
    """The largest budget every size of a budget curve has reached (each size by its furthest
    seed), so that a larger budget run for some sizes only does not take the others out of the
    report's tables; the largest of ``budgets`` before any row is in."""
    reached = {}
    for r in rows:
        size = (r["model"], tuple(r["hidden"]), r["latent"])
        reached[size] = max(reached.get(size, 0), r["steps"])
    return min(reached.values(), default=max(budgets))


def _name(r):
    return f"{r.get('model')} Z={r.get('latent')} seed {r.get('seed')}"


def _train_all(args, todo, rows, old, client, say, keys):
    """Run ``todo``, adding each finished row to ``rows`` and results.jsonl at once (a budget
    curve's rows as each budget is done); returns the exceptions of the runs that failed. On
    Ctrl-C raises KeyboardInterrupt(the runs left), their progress files removed."""
    bar = None
    if not args.quiet and sys.stderr.isatty() and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="runs", unit="run")
    failed, finished = [], set()
    try:
        for cfg, result in _execute(todo, args.jobs, client):
            if cfg is None:  # a while has passed: take in what finished budgets left
                new = _take_in(args.out, keys, rows, old)
            elif isinstance(result, BaseException):
                finished.add(run_key(cfg.row_fields()))
                failed.append(result)
                _warn(f"run {cfg.model} Z={cfg.latent}: {type(result).__name__}: {result}")
                new = _take_in(args.out, keys, rows, old)  # a budget curve's rows before it failed
            else:
                finished.add(run_key(cfg.row_fields()))
                new = _take_in(args.out, keys, rows, old, result if isinstance(result, list) else [result])
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(last=_name(cfg.row_fields()))
            for row in new:
                say(
                    f"  {row['model']:>3} Z={row['latent']:<5} hidden {row['hidden']} seed {row['seed']}  "
                    f"{row['steps']:,} steps  test {row['test_loss']:7.2f}  active {row['active_units']:4d}  "
                    f"directions {row['directions']:4d}  {row['wall_s']:6.1f} s"
                )
    except KeyboardInterrupt:
        left = [cfg for cfg in todo if run_key(cfg.row_fields()) not in finished]
        for cfg in left:  # a stopped run's progress file would say it is still going
            (args.out / "runs" / cfg.file(".partial.json")).unlink(missing_ok=True)
        raise KeyboardInterrupt(left) from None
    finally:
        if bar is not None:
            bar.close()
    return failed


def _write_report(out, rows, settings, source, originals, budget_rows=None):
    """report.md first (it must be written whatever happens to the figures), then the figures.
    ``budget_rows``: every budget's rows of a budget curve (``rows`` are its largest budget's)."""
    rows.sort(key=lambda r: (MODELS.index(r["model"]), r["hidden"], r["latent"], r["seed"]))
    text = report(rows, settings, source)
    if budget_rows is not None:
        text += "\n" + budget_report(budget_rows)
    atomic_write_text(out / "report.md", text)
    drawn = [r for r in rows if not r.get("diverged")]  # a diverged run has no curves to draw
    if is_cooled(settings):  # its last 20% is the cool-down:
        drawn = [dict(r, last20_gain=None) for r in drawn]  # no "not converged" marks by that rule
    if not drawn:
        _warn("no figures: every run diverged (see report.md)" if rows else "no figures: no run has finished")
        return
    from minivae import plots

    try:
        plots.study_figures(out, drawn, originals)
        if budget_rows is not None:
            plots.budget_curves(out / "budget_curves.png", [r for r in budget_rows if not r.get("diverged")])
            plots.unused_noise(out / "unused_noise.png", budget_rows)
            plots.budget_deficit(out / "budget_deficit.png", [r for r in budget_rows if not r.get("diverged")])
    except Exception as e:  # noqa: BLE001 - the results and the report are written already
        _warn(f"the figures could not be drawn ({type(e).__name__}: {e}); results.jsonl and report.md are written")


def _execute(todo, jobs, client):
    """Yield (cfg, result row or the exception it raised) as runs finish: on a Dask cluster, or
    in a pool of worker processes; and (None, None) each TAKE_IN_EVERY seconds meanwhile (for
    the rows of a budget curve under way). A failed run does not stop the others. Ctrl-C or SIGTERM (a
    KeyboardInterrupt here) stops the workers — each run's own clean-up still runs — and is
    raised on to the caller."""
    if not todo:
        return
    if client is not None:
        from dask.distributed import as_completed

        futures = client.map(run_one, todo, pure=False)
        cfg_of = {f.key: cfg for f, cfg in zip(futures, todo, strict=True)}
    else:
        import concurrent.futures as cf
        import multiprocessing

        # "spawn": fresh interpreters, so no thread pool (BLAS, Numba) is inherited half-started.
        ex = cf.ProcessPoolExecutor(
            max_workers=min(jobs, len(todo)),  # no more workers than runs (a huge --jobs overflowed)
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(todo[0].out,),
        )
        futures = [ex.submit(_run_in_worker, cfg) for cfg in todo]
        cfg_of = {id(f): cfg for f, cfg in zip(futures, todo, strict=True)}

        def as_completed(futures):
            pending = set(futures)
            while pending:
                ready, pending = cf.wait(pending, timeout=TAKE_IN_EVERY, return_when=cf.FIRST_COMPLETED)
                yield from ready or [None]

    ended = False
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for fut in as_completed(futures):
            if fut is None:
                yield None, None
                continue
            cfg = cfg_of[fut.key] if client is not None else cfg_of[id(fut)]
            try:
                yield cfg, fut.result()
            except Exception as e:  # reported, and retried by the next invocation
                yield cfg, e
        ended = True
    finally:
        signal.signal(signal.SIGTERM, old_term)
        if client is not None:
            if not ended:
                client.cancel(futures)
        else:
            _shut_down(ex, ended)


def _shut_down(ex, ended):
    """The pool of worker processes, shut down: once every run has ended, or, when the sweep was
    stopped, at once — its workers get SIGTERM, so that each run cleans up and exits."""
    if ended:
        ex.shutdown(wait=True)
        return
    workers = list((getattr(ex, "_processes", None) or {}).values())
    ex.shutdown(wait=False, cancel_futures=True)
    for w in workers:
        if w.is_alive():
            w.terminate()
    for w in workers:
        w.join(timeout=30)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signum)


def _worker_init(out):
    """In a worker: Ctrl-C is the main process's to handle (it stops the workers); SIGTERM ends
    the run with an exception, so that its clean-up (temporary files) runs, and so does the end
    of the sweep that started it, even by SIGKILL (:func:`minivae.guards.watch_parent`). While
    it lives it holds a shared lock on ``out/.workers.lock``, which a later sweep into ``out``
    waits on. A diverging run is recorded as such in its row: NumPy's overflow warnings would
    only repeat it on stderr."""
    global _WORKERS_LOCK_FD
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    np.seterr(all="ignore")
    _WORKERS_LOCK_FD = _open_workers_lock(out)
    fcntl.flock(_WORKERS_LOCK_FD, fcntl.LOCK_SH)
    watch_parent()


_WORKERS_LOCK_FD = None


def _run_in_worker(cfg):
    """:func:`run_one` in a worker process; stopped by SIGTERM, the process exits once the run's
    clean-up has run (instead of taking the next run from the queue), its progress file removed."""
    try:
        return run_one(cfg)
    except KeyboardInterrupt:
        # its progress file would say the run is still going (a sweep still alive removes it too)
        (pathlib.Path(cfg.out) / "runs" / cfg.file(".partial.json")).unlink(missing_ok=True)
        os._exit(128 + signal.SIGTERM)


# The fields of a result row and what they must hold (None allowed where a run may lack them).
_ROW_INTS = ("latent", "seed", "steps", "active_units", "directions")
_ROW_NUMBERS = (
    "test_loss",
    "test_recon",
    "test_kl",
    "train_loss",
    "gap",
    "epochs",
    "wall_s",
    "samples_per_s",
    "params",
)
_ROW_OPTIONAL = (
    "test_iw_nll",
    "kl90",
    "last20_gain",
    "participation_ratio",
    "probe_logreg",
    "probe_knn",
    "test_loss_pruned",
    "test_iw_nll_pruned",
    "test_iw_nll_check",
)
_RUN_ARRAYS = ("kl_per_dim", "activity", "eigenvalues", "reconstructions", "samples")


def _row_problem(r):
    """None for a usable result row, else what is wrong with it (in words)."""

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    name = f"{r.get('model')} Z={r.get('latent')} seed {r.get('seed')}"
    if (
        r.get("model") not in MODELS
        or not isinstance(r.get("hidden"), list)
        or not all(isinstance(h, int) and h > 0 for h in r["hidden"])
    ):
        return f"{name} names no model, Z, hidden widths and seed"
    for f in _ROW_INTS:
        if not isinstance(r.get(f), int) or isinstance(r.get(f), bool) or r[f] < 0:
            return f"{name}: {f} is {r.get(f)!r}, not a count"
    for f in _ROW_NUMBERS:
        if not number(r.get(f)):
            return f"{name}: {f} is {r.get(f)!r}, not a number"
    for f in _ROW_OPTIONAL:
        if r.get(f) is not None and not number(r.get(f)):
            return f"{name}: {f} is {r.get(f)!r}, not a number"
    if not isinstance(r.get("curve", []), list):
        return f"{name}: its learning curve is {type(r.get('curve')).__name__}, not a list"
    return None


def _arrays_problem(out, r):
    """None when the run's saved arrays (runs/<tag>-<settings>.npz, for the figures) are readable or
    absent."""
    path = pathlib.Path(out) / "runs" / run_file(r)
    if not path.exists():
        return None  # the figures leave the run out
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in _RUN_ARRAYS if k not in f.files]
            for k in f.files:
                f[k]  # reads (and checks) every array
    except Exception as e:  # noqa: BLE001 - truncated, not a zip, a broken array: all unreadable
        return f"{r['model']} Z={r['latent']} seed {r['seed']}: {path.name} is unreadable ({type(e).__name__})"
    if missing:
        return f"{r['model']} Z={r['latent']} seed {r['seed']}: {path.name} lacks {', '.join(missing)}"
    return None


def _dask_client(address):
    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed: pip install 'minivae[dask]'") from None
    try:
        return Client(address, timeout="10s")
    except Exception as e:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {type(e).__name__}: {e}") from None


def main(argv=None):
    # Ctrl-C is an interruption even where the sweep was started with SIGINT ignored (a background
    # job of a shell), as in minivae.train: finished runs are kept and the workers are stopped.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Ctrl-C before any run started (loading the data, say): one line, exit 130.
    return cli.run_command(NAME, run, parse_args, argv, interrupted="interrupted during start-up; no run was started")


if __name__ == "__main__":
    sys.exit(main())
