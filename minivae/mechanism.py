"""Why a VAE with many latents can do worse than one with few: measurements of a trained model.

A VAE with Z latents can represent every VAE with fewer: give the extra units q = N(0, 1)
(encoder rows of μ zero, of log σ² zero) and zero decoder rows, and they cost no KL and change no
likelihood. So at the optimum more latents cannot be worse; a deficit comes from how training gets
there. Four measurements look at how:

- :func:`unused_noise` — what the unused units feed the decoder. A unit the model does not use
  has q(z_u | x) ≈ N(0, 1) for every x, so z_u is pure noise. Its decoder row W_u (H,) is not
  pulled to zero by anything but the noise it causes, while its gradient, a batch mean of
  z_u · ∂L/∂h (h the first hidden pre-activation), is as large as a used unit's: every
  stochastic step moves it. The noise these rows add to h = z W + b is

      Var_inactive[h_j] = Σ_{u inactive} E_x[σ_u²(x)] · W_uj²,    summed over j:  Σ_u E[σ_u²] ‖W_u‖²

- :func:`pruned` — the model without a set of units (Burda et al. 2015, §5.2): the same weights
  with those units' encoder outputs and decoder rows removed. Evaluating it is evaluating the
  original model with their z fixed at 0 and their KL dropped. Beside it, :func:`at_prior` keeps
  their decoder rows and sends only their posteriors to the prior, which splits what removing
  them costs into what they tell about x and what their noise does to the decoder.

- :func:`embedded` — a trained model of Z latents inside a VAE of Z' > Z: the extra units at the
  prior (zero encoder rows, so μ = 0 and log σ² = 0) with zero decoder rows. Its ELBO is the
  small model's, exactly; training it on shows whether a large Z keeps a good solution.

- :func:`walk` — the optimizer's part: a trained model trained on for a few thousand steps
  (at a constant rate, or ending with a cool-down) with Adam, with the unused units' decoder rows
  stepping by their gradient's size instead (:class:`PlainRows`), held still, or zeroed and held,
  measuring how far each row moves per step and what the unused rows' noise, the test −ELBO and
  −log p(x) do. Adam's step is α m̂ / √v̂: a row whose gradient were small would still move about
  α per step; a plain step moves it in proportion to its gradient, so the two tell whether
  Adam's normalization is what moves the unused rows.

:func:`measure` takes the first two (with −ELBO and −log p(x) of each model) for one trained VAE;
``python -m minivae.mechanism RUN_DIR … --out FILE.jsonl`` (:func:`main`) for run folders, and
with ``--walk STEPS`` :func:`walk`.

Shapes: D pixels, H the first hidden width of the decoder, Z latents; the encoder's last layer
enc<L> maps to 2Z = [μ | log σ²], the decoder's first layer dec0.W is (Z, H).
"""

from __future__ import annotations

import numpy as np

from minivae import metrics
from minivae.metrics import ACTIVE_THRESHOLD
from minivae.optim import Adam


def _layers(model):
    """(name of the encoder's last layer, name of the decoder's first): enc<L>, dec0."""
    names = [k[: -len(".W")] for k in model.params if k.endswith(".W")]
    return [n for n in names if n.startswith("enc")][-1], [n for n in names if n.startswith("dec")][0]


def unused_noise(model, mu, logvar, threshold=ACTIVE_THRESHOLD, off=None):
    """What the units with Var_x μ_u < threshold (inactive) put into the decoder, from the
    posterior (μ, log σ²) (N, Z) of some digits:

        rows_inactive / rows_active   root-mean-square ‖W_u‖ of the decoder's first-layer rows
        noise_inactive                Σ_{u inactive} E_x[σ_u²] ‖W_u‖²   (the variance they add to
                                      the first hidden pre-activation, summed over its H units)
        signal_active                 Σ_{u active} (Var_x μ_u + E_x[σ_u²]) ‖W_u‖²   (for scale)
        inactive                      how many units are inactive

    ``off`` (Z,) bool, when given, names the inactive units instead (to follow one set of units).
    """
    mu, logvar = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
    activity = mu.var(axis=0)  # (Z,)
    var_q = np.exp(logvar).mean(axis=0)  # E_x[σ_u²] (Z,)
    _, dec0 = _layers(model)
    w2 = (np.asarray(model.get_params()[dec0 + ".W"], np.float64) ** 2).sum(axis=1)  # ‖W_u‖² (Z,)
    off = activity < threshold if off is None else np.asarray(off, bool)

    def rms(mask):
        return float(np.sqrt(w2[mask].mean())) if mask.any() else None

    return {
        "inactive": int(off.sum()),
        "rows_inactive": rms(off),
        "rows_active": rms(~off),
        "noise_inactive": float((var_q[off] * w2[off]).sum()),
        "signal_active": float(((activity[~off] + var_q[~off]) * w2[~off]).sum()),
    }


def _resized(model, latent, params, seed=0, backend=None):
    """A VAE like ``model`` (hidden widths, β, dtype, backend unless ``backend`` names another)
    with ``latent`` units, these parameters, and its noise generator seeded by ``seed``."""
    from minivae.vae import VAE

    backend = backend or model.backend
    new = VAE(model.data_dim, latent, model.hidden, seed=seed, dtype=model.dtype, beta=model.beta, backend=backend)
    new.set_params(params)
    return new


def pruned(model, keep):
    """The VAE of ``model`` with only the units ``keep`` (indices into Z): their μ and log σ²
    columns of the encoder's last layer and their rows of the decoder's first layer."""
    keep = np.asarray(keep, dtype=np.int64)
    z = model.latent
    if keep.ndim != 1 or len(keep) == 0 or keep.min() < 0 or keep.max() >= z or len(set(keep.tolist())) != len(keep):
        raise ValueError(f"keep must be distinct unit indices in 0 … {z - 1}, at least one")
    enc, dec0 = _layers(model)
    p = {k: np.array(v) for k, v in model.get_params().items()}
    cols = np.concatenate([keep, z + keep])  # [μ | log σ²] of the kept units
    p[enc + ".W"] = p[enc + ".W"][:, cols]
    p[enc + ".b"] = p[enc + ".b"][cols]
    p[dec0 + ".W"] = p[dec0 + ".W"][keep]
    return _resized(model, len(keep), p)


def at_prior(model, units):
    """``model`` with the units ``units`` sent to the prior: their μ and log σ² columns of the
    encoder's last layer zeroed, so q(z_u | x) = N(0, 1) for every x (no KL, no information about
    x), their decoder rows kept. Beside :func:`pruned` (z_u = 0) it splits what removing them
    costs into what they tell about x (this) and what their noise does to the decoder (the rest)."""
    units = np.asarray(units, dtype=np.int64)
    enc, _ = _layers(model)
    p = {k: np.array(v) for k, v in model.get_params().items()}
    cols = np.concatenate([units, model.latent + units])
    p[enc + ".W"][:, cols] = 0
    p[enc + ".b"][cols] = 0
    return _resized(model, model.latent, p)


def measure(model, test_x, seed=0, iw_samples=100, iw_examples=1000, iw_check=None):
    """The mechanism measurements of one trained VAE on binarized test digits ``test_x``:
    −ELBO and −log p(x) (K = ``iw_samples`` on the first ``iw_examples``) of the model, of the
    model pruned of its inactive units (:func:`pruned`), and of the model with them at the prior
    (:func:`at_prior`); :func:`unused_noise`; and with ``iw_check`` = K', −log p(x) with K'."""
    mu, logvar = metrics.posterior_means(model, test_x)
    off = np.asarray(mu, np.float64).var(axis=0) < ACTIVE_THRESHOLD
    x_iw = test_x[:iw_examples]
    out = dict(unused_noise(model, mu, logvar), latent=model.latent)

    def both(name, m):
        rng = np.random.default_rng([seed, 7])  # one stream per model: the same draws for each
        out[f"test_loss{name}"] = metrics.evaluate(m, test_x, rng)["loss"]
        out[f"test_iw_nll{name}"] = -metrics.iw_log_likelihood(m, x_iw, iw_samples, rng)

    both("", model)
    if off.any() and not off.all():
        both("_pruned", pruned(model, np.flatnonzero(~off)))
        both("_prior", at_prior(model, np.flatnonzero(off)))
    if iw_check:
        rng = np.random.default_rng([seed, 8])
        out["test_iw_nll_check"] = -metrics.iw_log_likelihood(model, x_iw, iw_check, rng, metrics.check_batch(iw_check))
        out["iw_check_samples"] = iw_check
    return out


class PlainRows(Adam):
    """Adam, except that the rows ``rows`` of the parameter ``name`` take a plain (momentum)
    gradient step. For every parameter m and v are Adam's (:mod:`minivae.optim`); then

        θ_u ← θ_u − η m̂_u        for u in rows       (m̂ = m / (1 − β₁ᵗ), shape (H,) per row)
        η = α / median_{u ∉ rows} ( mean_j v̂_uj )^½

    η is the rate at which a plain step moves a typical other row about as far as Adam's α does,
    so the chosen rows move in proportion to their gradient's size relative to the others' —
    as under SGD — instead of by about α whatever that size. ``eta`` holds the last η. With
    ``frozen`` the rows do not move at all (η = 0)."""

    def __init__(self, params, name, rows, lr=1e-3, frozen=False, **kwargs):
        super().__init__(params, lr=lr, **kwargs)
        self.frozen = frozen
        n = len(params[name])
        self.name, self.rows = name, np.asarray(rows, dtype=np.int64)
        self.others = np.setdiff1d(np.arange(n), self.rows)
        if len(self.others) == 0 or len(self.rows) == 0 or self.rows.min() < 0 or self.rows.max() >= n:
            raise ValueError(f"rows must be some but not all of the {n} rows of {name}")
        self.eta = None

    def step(self, grads):
        w = self.params[self.name]
        before = w[self.rows].copy()
        super().step(grads)
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        typical = np.median(np.sqrt((self.v[self.name][self.others] / c2).mean(axis=1)))
        self.eta = 0.0 if self.frozen else self.lr / max(float(typical), self.eps)
        w[self.rows] = before - self.eta * self.m[self.name][self.rows] / c1


WALKS = ("adam", "plain", "frozen", "zeroed")  # how the unused units' decoder rows step in a walk


def walk(
    model,
    train_x,
    test_x,
    steps,
    lr=1e-3,
    unused="adam",
    seed=0,
    batch_size=128,
    bar=None,
    decay_frac=None,
    iw=(100, 1000),
):
    """Train a copy of ``model`` on for ``steps`` updates with a fresh Adam at the rate ``lr`` —
    constant, or with ``decay_frac`` f the wsd schedule over the walk (constant, then a linear
    decay to 0 over the last f of the steps: :mod:`minivae.schedule`) — on dynamically binarized
    ``train_x``. The units inactive at the start (Var_x μ_u < 0.01 on ``test_x``) are followed
    throughout; their decoder rows step as Adam steps them (``unused`` "adam"), by plain steps
    ("plain", :class:`PlainRows`), not at all ("frozen"), or are set to 0 and held there
    ("zeroed": the decoder no longer hears those units). Returns (row, trained model); the row
    has, over the updates, for the decoder's first-layer rows W_u (H,) of the inactive and of the
    active units (medians over units):

        grad_rms_*   ( mean over steps and j of g_uj² )^½          the gradient's size
        step_*       ( mean over steps t and j of (Δw_uj / α_t)² )^½   how far a weight moves per
                                                                    step, in learning rates

    and at the start and the end (``_start``, ``_end``): the noise those units feed the decoder
    (:func:`unused_noise`), the test −ELBO and −log p(x) (``iw`` = (K, N): K samples on the first
    N of ``test_x``, as :func:`measure` takes them).
    The same seed gives every variant the same data, the same ε and the same evaluation draws."""
    from minivae import schedule

    if unused not in WALKS:
        raise ValueError(f"unused must be one of {', '.join(WALKS)}, got {unused!r}")
    name = _layers(model)[1] + ".W"
    rng = np.random.default_rng([seed, 7])
    start, off = _walk_state(model, test_x, rng, iw)
    if not off.any() or off.all():
        raise ValueError("the walk needs both active and inactive units")
    m = _resized(model, model.latent, model.get_params(), seed, backend="numpy")  # its gradients, one by one
    if unused == "zeroed":
        m.params[name][off] = 0
    if unused == "adam":
        opt = Adam(m.params, lr=lr)
    else:
        opt = PlainRows(m.params, name, np.flatnonzero(off), lr, frozen=unused != "plain")
    lr_at = schedule.schedule(steps, lr, "wsd", decay_frac) if decay_frac else None
    g2, d2, done = _walk_steps(m, opt, train_x, steps, name, lr_at, (seed, batch_size), bar)
    end, _ = _walk_state(m, test_x, rng, iw, off)
    out = _walk_row(off, start, end, g2, d2, done * m.params[name].shape[1])
    out.update(walk_steps=done, walk_lr=lr, walk_decay_frac=decay_frac, unused_step=unused, latent=model.latent)
    if unused != "adam":
        out["eta"] = opt.eta
    return out, m


def _walk_row(off, start, end, g2, d2, per):
    """A :func:`walk`'s row: the units followed, the start and end states, and the medians over the
    inactive and the active units of the gradient's RMS and the step's (from Σ g² and Σ (Δw/α)²
    per row over ``per`` = steps × H weights)."""
    out = {"inactive": int(off.sum()), **{k + "_start": v for k, v in start.items()}}
    out.update({k + "_end": v for k, v in end.items()})
    grad_rms, step = np.sqrt(g2 / per), np.sqrt(d2 / per)
    for part, mask in (("inactive", off), ("active", ~off)):
        out[f"grad_rms_{part}"] = float(np.median(grad_rms[mask]))
        out[f"step_{part}"] = float(np.median(step[mask]))
    return out


def _walk_state(model, test_x, rng, iw, off=None):
    """({noise, test_loss, test_iw_nll}, off) of a model in a :func:`walk`: ``iw`` = (K, N) of the
    −log p(x) estimate, ``off`` the units followed (those inactive now when None)."""
    from minivae import loop

    ev, (mu, logvar) = loop.evaluate(model, test_x, rng)
    if off is None:
        off = np.asarray(mu, np.float64).var(axis=0) < ACTIVE_THRESHOLD
    state = {"noise": unused_noise(model, mu, logvar, off=off)["noise_inactive"], "test_loss": ev["test_loss"]}
    samples, examples = iw
    state["test_iw_nll"] = -metrics.iw_log_likelihood(model, test_x[:examples], samples, rng)
    return state, off


def _walk_steps(m, opt, train_x, steps, name, lr_at, seed_batch, bar):
    """The updates of a :func:`walk`: (Σ g², Σ (Δw/α)² per row of ``name``, updates done)."""
    from minivae import loop

    seed, batch_size = seed_batch
    g2, d2, done = np.zeros(len(m.params[name])), np.zeros(len(m.params[name])), 0
    for _, _, x, order in loop.epochs(train_x, "dynamic", batch_size, np.random.default_rng([seed, 9])):
        for idx in order:
            m.forward(x[idx])
            grads = m.backward()
            before = np.array(m.params[name], np.float64)
            if lr_at is not None:
                opt.lr = lr_at(opt.t)
            opt.step(grads)
            g2 += (np.asarray(grads[name], np.float64) ** 2).sum(axis=1)
            d2 += (((np.asarray(m.params[name], np.float64) - before) / opt.lr) ** 2).sum(axis=1)
            done += 1
            if bar is not None:
                bar.update(1)
            if done == steps:
                return g2, d2, done
    return g2, d2, done


def _parser():
    """The options of :func:`main`."""
    from minivae import cli

    p = cli.Parser(
        prog=cli.program("minivae.mechanism", "minivae-mechanism"),
        description="Measure what the unused latents of trained VAEs do: the noise they feed the decoder, "
        "and -log p(x) with them pruned and with them sent to the prior; one JSON line per run folder "
        "(minivae.train's, or those minivae.sweep --keep-models keeps), appended to --out as each is done. "
        "With --walk: train each model on and measure how far its unused decoder rows move.",
    )
    p.add_argument(
        "runs",
        nargs="+",
        type=cli.path,
        metavar="RUN_DIR",
        help="trained VAEs (folders with config.json, checkpoint.npz)",
    )
    p.add_argument("--out", type=cli.path, required=True, help="JSON-lines file the measurements go to")
    p.add_argument(
        "--data-dir", type=cli.path, default=None, help="a folder of MNIST IDX files (default the download cache)"
    )
    cli.add_backend_and_estimate_options(p, iw_samples=100)
    p.add_argument(
        "--iw-check",
        type=cli.positive_int,
        default=None,
        metavar="K",
        help="also estimate -log p(x) of each model with K samples (default none)",
    )
    _add_walk_options(p)
    return p


def _add_walk_options(p):
    """The options of ``--walk``: training each model on, its unused decoder rows stepped each way."""
    from minivae import cli

    p.add_argument(
        "--walk",
        type=cli.positive_int,
        default=None,
        metavar="STEPS",
        help="instead: train each model on for STEPS updates once per way its unused units' decoder rows step "
        "(--walk-rows), and measure how far the rows move, their noise, the test -ELBO and -log p(x)",
    )
    p.add_argument(
        "--walk-lr", type=cli.positive_float, default=1e-3, metavar="LR", help="the walk's Adam learning rate"
    )
    p.add_argument(
        "--walk-decay",
        type=cli.fraction,
        default=None,
        metavar="F",
        help="decay the rate to 0 over the walk's last F (wsd; default none: constant)",
    )
    p.add_argument(
        "--walk-seed",
        type=cli.non_negative_int,
        default=None,
        metavar="N",
        help="seeds the walk's data order, noise and evaluation draws (default the model's own seed)",
    )
    p.add_argument(
        "--walk-rows",
        type=cli.choices_list("--walk-rows", WALKS),
        default=list(WALKS),
        metavar="LIST",
        help=f"how the unused rows step, some of {', '.join(WALKS)} (default {','.join(WALKS)})",
    )


def main(argv=None):
    """``python -m minivae.mechanism RUN_DIR … --out FILE.jsonl``: :func:`measure` for each run
    folder (``minivae.train``'s, or those ``minivae.sweep --keep-models`` keeps), one JSON line
    each, appended to --out as each is done. With ``--walk STEPS``, :func:`walk` instead: one
    line per run and way of stepping the unused rows (``--walk-rows``), seeded by ``--walk-seed``
    (default the model's own training seed; the line's ``walk_seed``).

    Faults, as in :mod:`minivae.explore`: bad input — a folder that is not a run, a checkpoint
    missing, truncated or not matching its config, a backend this machine cannot run, a model
    that does not take the digits, an --out that cannot be read or written — is one line on
    stderr and exit code 2, found for every RUN_DIR before the digits load and before --out is
    written; a run folder that breaks or a file that cannot be written while measuring is one
    line and exit 1 (--out keeps the rows written before: each write is whole)."""
    from minivae import cli

    return cli.run_command("minivae.mechanism", _run, _parse_args, argv)


def _run(args):
    """Check every run folder and --out, load the digits, then measure (or walk) each run in turn.
    Returns the exit code."""
    from minivae import cli
    from minivae.files import WriteError
    from minivae.runs import RunError

    rows = _check_out(args.out)
    runs = _check_runs(args.runs, "numpy" if args.walk else args.backend)
    _check_memory(args, runs)
    if args.data_dir is not None:
        cli.require_folder(args.data_dir, "--data-dir")
    data = _load_data(args.data_dir, runs)
    try:
        _measure_runs(args, runs, data, rows)
    except (RunError, WriteError) as e:  # a folder changed since it was checked, a full disk
        cli.report("minivae.mechanism", f"{e}; stopping ({args.out} keeps the rows written before)")
        return cli.EXIT_FAILED
    return 0


def _check_runs(folders, backend):
    """Each run folder read whole and its model built on ``backend`` (then let go), before the
    digits load: [(folder, its options as config.json's object, the model's D)]. A folder that is
    not a run, a checkpoint missing, truncated or not matching config.json, or a backend this
    machine cannot run is :class:`minivae.cli.UsageError`, one line naming the folder."""
    from minivae.cli import load_run

    checked = []
    for folder in folders:
        run_, model = load_run(folder, backend, named=True)
        checked.append((folder, run_.config.to_json(), model.data_dim))
    return checked


def _check_memory(args, runs):
    """Refuse, in one line and before the digits load, importance-sampling settings (K, and K' of
    --iw-check) whose estimate would not fit in the memory available, for the largest model."""
    from minivae.cli import check_memory
    from minivae.config import RunConfig

    needs = []
    for folder, options, _ in runs:
        run = RunConfig(latent=options["latent"], hidden=tuple(options["hidden"]), iw_samples=args.iw_samples)
        run = run.replace(iw_examples=args.iw_examples)
        needed, _, k = run.memory_with_check(args.iw_check)
        needs.append((needed, f"measuring {folder} (Z = {run.latent:,}, K = {k:,})"))
    check_memory(*max(needs, key=lambda need: need[0]))


def _check_out(path):
    """The rows --out holds already ([] when there is none), read before anything is measured. A
    folder, a file that is not JSON lines, or a path whose folder cannot be made (a file on its
    way) or written into is :class:`minivae.cli.UsageError`; a folder it lacks is made with the
    first row (:func:`_write_rows`), as the other commands make their --out."""
    import os

    from minivae.cli import UsageError
    from minivae.files import JsonlError, read_jsonl
    from minivae.guards import OutFolder

    folder = OutFolder(path.parent, "--out's folder")
    if not folder.check() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write into --out's folder {path.parent}: permission denied")
    folder.try_make()  # found now, not after measuring; made again with the first row (_write_rows)
    try:
        if path.is_dir():
            raise UsageError(f"--out {path} is a folder, not a file")
        return read_jsonl(path)
    except JsonlError as e:
        raise UsageError(f"--out {e}") from None
    except OSError as e:
        raise UsageError(f"cannot read --out {path}: {e.strerror or e}") from None


def _load_data(data_dir, runs):
    """The MNIST digits (``--data-dir``, else the default source), checked to fit every model."""
    from minivae.cli import UsageError, load_digits

    data = load_digits(data_dir, seed=0)
    pixels = data.test_x.shape[1]
    for folder, _, data_dim in runs:
        if data_dim != pixels:
            raise UsageError(
                f"the model in {folder} takes inputs of D = {data_dim} values, the test digits have {pixels} pixels"
            )
    return data


def _write_rows(path, rows):
    """All the rows, written whole to ``path`` (its folder made first when it lacks one)."""
    import json

    from minivae.files import WriteError, atomic_write_text

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _measure_runs(args, runs, data, rows):
    """:func:`measure` (or with --walk :func:`_walks`) for each checked run, each row appended to
    ``rows`` and written to --out as it is done."""
    import pathlib

    from minivae.data import binarize_fixed
    from minivae.runs import load

    for run_dir, config, _ in runs:
        test_x = binarize_fixed(data.test_x, config.get("binarize", "dynamic"))
        if args.walk:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a divergence is said once, below
                _walks(args, run_dir, config, data.train_x, test_x, rows)
            continue
        row = measure(
            load(run_dir, args.backend),
            test_x,
            config.get("seed", 0),
            args.iw_samples,
            args.iw_examples,
            args.iw_check,
        )
        rows.append({"run": pathlib.Path(run_dir).name, "steps": config.get("steps"), **row})
        _write_rows(args.out, rows)
        print(
            f"{pathlib.Path(run_dir).name}: -log p(x) {row['test_iw_nll']:.2f}, pruned "
            f"{row.get('test_iw_nll_pruned', float('nan')):.2f}, at the prior "
            f"{row.get('test_iw_nll_prior', float('nan')):.2f}",
            flush=True,
        )


_WALK_OPTIONS = ("walk_lr", "walk_decay", "walk_seed", "walk_rows")  # they shape a walk: no use without --walk


def _parse_args(argv=None):
    """The parsed options; a --walk-… option given without --walk is a usage error, not ignored."""
    from minivae import cli

    args = _parser().parse_args(argv)
    if args.walk is None:
        stray = sorted(cli.given_options(_parser(), argv) & set(_WALK_OPTIONS))
        if stray:
            names = ", ".join("--" + name.replace("_", "-") for name in stray)
            raise cli.UsageError(f"{names} only appl{'y' if len(stray) > 1 else 'ies'} with --walk STEPS")
    return args


def _walks(args, run_dir, config, train_x, test_x, rows):
    """:func:`walk` with each way of stepping the unused rows (:data:`WALKS`), each row appended to
    ``rows`` and written to ``args.out`` as it is done."""
    import pathlib
    import sys

    from minivae import cli
    from minivae.runs import load

    name = pathlib.Path(run_dir).name
    model = load(run_dir, "numpy")
    seed = config.get("seed", 0) if args.walk_seed is None else args.walk_seed
    try:
        for unused in args.walk_rows:
            bar = cli.progress_bar(args.walk, f"{name} {unused}", sys.stderr.isatty())
            try:
                row, _ = walk(
                    model,
                    train_x,
                    test_x,
                    args.walk,
                    args.walk_lr,
                    unused,
                    seed,
                    config.get("batch_size", 128),
                    bar,
                    args.walk_decay,
                    (args.iw_samples, args.iw_examples),
                )
            finally:
                if bar is not None:
                    bar.close()
            rows.append({"run": name, "steps": config.get("steps"), **row, "walk_seed": seed})
            _write_rows(args.out, rows)
            print(
                f"{name} {row['unused_step']}: unused rows' noise {row['noise_start']:.0f} → {row['noise_end']:.0f}, "
                f"step {row['step_inactive']:.3f} α (active {row['step_active']:.3f} α), "
                f"test −ELBO {row['test_loss_start']:.2f} → {row['test_loss_end']:.2f}, "
                f"−log p(x) {row['test_iw_nll_start']:.2f} → {row['test_iw_nll_end']:.2f}",
                flush=True,
            )
    except ValueError as e:
        raise cli.UsageError(f"{name}: {e}") from None


def embedded(model, latent, seed=0):
    """``model`` (Z latents) inside a VAE of ``latent`` ≥ Z: units Z … latent − 1 get zero encoder
    columns (μ = 0, log σ² = 0: q = N(0, 1), no KL) and zero decoder rows (no effect on x)."""
    z = model.latent
    if latent < z:
        raise ValueError(f"cannot embed Z = {z} in {latent} latents")
    enc, dec0 = _layers(model)
    p = {k: np.array(v) for k, v in model.get_params().items()}
    extra = latent - z
    w, b = p[enc + ".W"], p[enc + ".b"]
    zeros_w, zeros_b = np.zeros((w.shape[0], extra), w.dtype), np.zeros(extra, b.dtype)
    p[enc + ".W"] = np.concatenate([w[:, :z], zeros_w, w[:, z:], zeros_w], axis=1)
    p[enc + ".b"] = np.concatenate([b[:z], zeros_b, b[z:], zeros_b])
    p[dec0 + ".W"] = np.concatenate([p[dec0 + ".W"], np.zeros((extra, p[dec0 + ".W"].shape[1]), w.dtype)])
    return _resized(model, latent, p, seed)


if __name__ == "__main__":
    import sys

    sys.exit(main())
