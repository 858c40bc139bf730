"""The command of the linear Gaussian VAE (:mod:`minivae.linear`): train it, compare it with its
closed form, and gather the results of several runs into a table and a figure.

The command
-----------
``python -m minivae.linear --latent Z --sigma2 S --data-dir DIR --out OUT`` trains the model on
the training digits and writes ``OUT/result.json``: the trained test ELBO beside the exact test
log-likelihood, active units beside k, W's singular values beside (λ_i − σ²)^½, and the collapse.
``python -m minivae.linear --summarize DIR`` gathers the ``result.json`` files in DIR's subfolders
into ``DIR/table.md`` and the figure ``DIR/spectrum.png``: each result is checked whole before
anything is drawn (every field the command writes, its type, length, range and finiteness: a file
that is not one is a usage error naming it and the field), and the two files are written together,
both or neither; it takes no training options. As for the main job, everything is checked before
the first step — the options (σ² no smaller than the float64 arithmetic resolves,
:data:`SIGMA2_MIN`), the data, the memory the model needs, ``--out`` made and written into (a lock
on ``--out/.lock``) — and bad input is one line and exit code 2; a run that fails (a full disk, a
diverging loss) is one line and exit 1, each file whole or not written.

``python -m minivae.linear`` runs this module's :func:`main` (so do ``minivae-linear`` and
``python -m minivae.linear_cli``).

How it trains, and why so: 12,000 Adam steps, each on the whole training set (``--batch-size
full``: through its moment points, :func:`minivae.linear.moment_points`, so every gradient is the
exact full-data gradient at the cost of 713 examples), float32, the exact ELBO; b starts at the
data mean (its optimum; learning it from 0 is slow, and an offset b − x̄ is absorbed into W Wᵀ as
extra variance along the mean); log s² learns 10 times faster than W, V, b, c (see
:func:`minivae.linear.fit`); the learning rate 1e-3 is held for 30% of the steps, then decays
geometrically to 1e-5. Why so: the weak directions are the slow ones. λ₁/σ² is 51 at σ² = 0.1
but 512 at σ² = 0.01, and a direction with λ_i barely above σ² gets a gradient that is small
beside the mini-batch noise of the strong ones — hence full batches. Adam's jitter of size ~lr
in W costs ~‖δW μ‖²/2σ² nats, several at σ² = 0.01 until the rate is small — hence the decay. And
at Z = 1000 the rate 3e-3 on full batches spiked the loss by 1,200 nats per digit near step 2,000,
and 12,000 steps ended 26 nats short (which parameters jumped was not looked into) — hence 1e-3.
(The defaults were 3,000 steps on mini-batches of 256 at 3e-3 → 3e-5 before: ``docs/linear``
spells out each run's options.)
"""

from __future__ import annotations

import io
import json
import math
import pathlib
import sys
import time

import numpy as np

from minivae import linear, metrics
from minivae.cli import (
    EXIT_FAILED,
    Parser,
    UsageError,
    check_memory,
    given_options,
    load_digits,
    non_negative_int,
    number,
    path,
    positive_float,
    positive_int,
    program,
    require_folder,
    run_command,
    say,
    say_data,
)
from minivae.data import D as DATA_DIM
from minivae.data import binarize
from minivae.files import WriteError, atomic_write, atomic_write_files, atomic_write_text, read_regular_text
from minivae.guards import OutFolder

HOLD = 0.3  # the command holds its learning rate for this fraction of the steps, then decays it
EM_SWEEPS = 300  # variational EM sweeps after Adam (minivae.linear.coordinate_ascent), exact estimator
# The smallest σ² the command takes, D²ε/4 ≈ 3.4e-11 (ε of float64): the exact log-likelihood factors
# the model's covariance W Wᵀ + σ² I in float64 (Cholesky). Its largest eigenvalue is about the data's
# largest variance, at most D/4 for pixels in [0, 1], and a σ² below D·ε times that is lost in the
# rounding of sums of D such terms: the factorization fails (σ² = 1e-20 did, on MNIST). Far below, the
# loss's r²/σ² overflows (σ² = 1e-40 in float32; 1e-320, not even a normal float64, makes 1/σ² inf).
SIGMA2_MIN = DATA_DIM * DATA_DIM * float(np.finfo(np.float64).eps) / 4
sigma2_value = number(
    float,
    lambda v: SIGMA2_MIN <= v and math.isfinite(v),
    f"a number ≥ {SIGMA2_MIN:.2g} (D²ε/4: a smaller σ² is lost in float64 rounding beside the pixels' "
    "variance, up to D/4, and the model's covariance W Wᵀ + σ² I cannot be factored)",
)
SUMMARIZE_WITH = {"summarize", "quiet"}  # the options --summarize takes; the others train a model


def _training_options(p):
    """How the model trains: steps, batch, rates, the descent after Adam, estimator, dtype."""
    p.add_argument("--steps", type=positive_int, default=12000, help="Adam steps")
    full = "or 'full': the whole training set each step, through its moment points"
    p.add_argument("--batch-size", type=batch_size, default="full", help=f"mini-batch size, {full}")
    p.add_argument(
        "--lr",
        type=positive_float,
        default=1e-3,
        help="Adam learning rate, held for the first 30%% of the steps",
    )
    p.add_argument(
        "--lr-final",
        type=positive_float,
        default=1e-5,
        help="learning rate at the last step, reached geometrically",
    )
    p.add_argument(
        "--descend",
        type=non_negative_int,
        default=0,
        metavar="STEPS",
        help="after Adam, up to STEPS of plain gradient descent on the whole training set (float64, "
        "step size by backtracking; --estimator exact) (default 0)",
    )
    p.add_argument(
        "--em",
        type=non_negative_int,
        default=None,
        metavar="SWEEPS",
        help="last, SWEEPS of variational EM on the whole training set: the decoder, then the encoder, "
        f"each set to its exact optimum given the other (float64; --estimator exact) (default {EM_SWEEPS}; "
        "0 with --estimator sample)",
    )
    p.add_argument(
        "--s2-lr-factor",
        type=positive_float,
        default=10.0,
        help="log s² learns this many times faster than W, V, b, c",
    )
    p.add_argument(
        "--estimator",
        choices=("exact", "sample"),
        default="exact",
        help="the expected reconstruction term by formula (exact) or by one sample",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="training precision; evaluation is always float64",
    )


def _parser():
    p = Parser(
        prog=program("minivae.linear", "minivae-linear"),
        usage="%(prog)s --latent Z --sigma2 S2 --out DIR [options]\n       %(prog)s --summarize DIR",
        description="Train the linear Gaussian VAE on MNIST grey values and compare it with "
        "its closed-form optimum (probabilistic PCA).",
    )
    needed = " (required, unless --summarize)"
    p.add_argument("--latent", type=positive_int, default=None, help="latent dimension Z" + needed)
    p.add_argument(
        "--sigma2",
        type=sigma2_value,
        default=None,
        help=f"the decoder's fixed variance σ², at least {SIGMA2_MIN:.2g}" + needed,
    )
    p.add_argument(
        "--data-dir", type=path, default=None, help="a folder of MNIST IDX files (default the download cache)"
    )
    p.add_argument("--out", type=path, default=None, help="output folder" + needed)
    _training_options(p)
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds the weights and the data order")
    p.add_argument("--limit", type=positive_int, default=None, help="use the first N training digits (default all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")
    p.add_argument(
        "--summarize",
        type=path,
        default=None,
        metavar="DIR",
        help="instead of training: gather DIR/*/result.json into DIR/table.md and DIR/spectrum.png (with --quiet only)",
    )
    return p


def parse_args(argv=None):
    args = _parser().parse_args(argv)
    args.given = given_options(_parser(), argv)  # --summarize refuses the training options
    return args


def batch_size(text):
    """--batch-size: a positive integer or "full"."""
    return "full" if text == "full" else positive_int(text)


def memory_needed(data_dim, latent, n_train, n_test, batch_size, dtype):
    """Bytes the command needs at its peak, roughly (an upper estimate): the model's P ≈ 2·D·Z
    parameters with their gradients and Adam's moments in ``dtype``, a step's arrays, the float64
    copies of W and V the evaluation makes (the exact ELBO, the SVD, log p(x)) with the test
    digits' codes, the digits with their covariance and its eigenvectors, and the few (Z, Z)
    matrices of a variational EM sweep."""
    D, Z, size = data_dim, latent, np.dtype(dtype).itemsize
    P = 2 * D * Z + D + 2 * Z
    training = 4 * P * size + 6 * batch_size * (D + Z) * size
    evaluation = 3 * P * 8 + n_test * Z * (2 * size + 3 * 8) + 3 * 1000 * (D + Z) * 8
    digits = 2 * (n_train + n_test) * D * 4 + 4 * D * D * 8
    em = 3 * Z * Z * 8
    return training + evaluation + digits + em


def run(args):
    """Check the options, load the digits, check the memory and make ``--out`` — all before the
    first step — then train, compare and write result.json. Returns the exit code."""
    if args.summarize is not None:
        _only_summarize(getattr(args, "given", set()))
        return summarize(args.summarize, quiet=args.quiet)
    if args.latent is None or args.sigma2 is None or args.out is None:
        raise UsageError("--latent, --sigma2 and --out are required (or --summarize DIR)")
    if args.descend and args.estimator != "exact":
        raise UsageError("--descend needs --estimator exact: it descends the exact loss")
    if args.em and args.estimator != "exact":
        raise UsageError("--em needs --estimator exact: its updates are the exact loss's optima")
    if args.em is None:
        args.em = EM_SWEEPS if args.estimator == "exact" else 0
    OutFolder(args.out, "--out").check()
    if args.data_dir is not None:
        require_folder(args.data_dir, "--data-dir")
    data = load_digits(args.data_dir, args.limit, seed=args.seed)
    (n_train, D), n_test = data.train_x.shape, len(data.test_x)
    check_memory(
        memory_needed(
            D, args.latent, n_train, n_test, D + 1 if args.batch_size == "full" else args.batch_size, args.dtype
        ),
        f"this run (a linear VAE of Z = {args.latent}: {2 * D * args.latent:,} weights, {args.dtype})",
    )
    with OutFolder(args.out, "--out", "linear run"), np.errstate(all="ignore"):  # a divergence: one line
        try:
            return _train_and_write(args, data)
        except FloatingPointError as e:
            print(f"minivae.linear: {e}; lower --lr", file=sys.stderr)
        except np.linalg.LinAlgError as e:  # W so large that σ² is lost beside it (a diverging run)
            print(f"minivae.linear: cannot evaluate the trained model ({e}); lower --lr", file=sys.stderr)
        except WriteError as e:  # a full disk: nothing half-written, the old result.json kept
            print(f"minivae.linear: {e}", file=sys.stderr)
        except MemoryError:
            print(f"minivae.linear: out of memory (Z = {args.latent})", file=sys.stderr)
        return EXIT_FAILED


def _only_summarize(given):
    """Refuse the training options beside --summarize (``given``: the options on the command line)."""
    training = sorted(given - SUMMARIZE_WITH)
    if training:
        flags = " and ".join("--" + key.replace("_", "-") for key in training)
        raise UsageError(
            f"--summarize gathers finished runs and trains none: {flags} "
            f"contradict{'s' if len(training) == 1 else ''} it (only --quiet goes with --summarize)"
        )


def _after_adam(model, args, mean, lam, U, show):
    """(the model, {result keys}) after Adam: with --descend, :func:`minivae.linear.descend`, then
    with --em, :func:`minivae.linear.coordinate_ascent`, each on the moment points in float64 (the
    model is returned in float64 then), with its steps, its seconds and its last training loss."""
    if not (args.descend or args.em):
        return model, {}
    exact = linear.LinearVAE(model.data_dim, model.latent, args.sigma2, dtype="float64", estimator="exact")
    exact.set_params({k: np.asarray(v, np.float64) for k, v in model.get_params().items()})
    points = linear.moment_points(mean, lam, U, dtype="float64")
    out = {}
    if args.descend:
        t0 = time.perf_counter()
        history = linear.descend(exact, points, args.descend, progress=show, desc="gradient descent")
        out.update(descend_steps=len(history), descend_seconds=time.perf_counter() - t0)
    if args.em:
        t0 = time.perf_counter()
        history = linear.coordinate_ascent(exact, points, args.em, progress=show, desc="variational EM")
        out.update(em_sweeps=len(history), em_seconds=time.perf_counter() - t0, em_final_loss=history[-1])
    return exact, out


def _train_and_write(args, data):
    say_data(data, args.quiet)
    train_x = binarize(data.train_x, "none")  # grey values in [0, 1]
    test_x = binarize(data.test_x, "none")
    show = not args.quiet and sys.stderr.isatty()

    wall0 = time.perf_counter()
    mean, lam, U = linear.spectrum(train_x)
    model = linear.LinearVAE(
        train_x.shape[1], args.latent, args.sigma2, seed=args.seed, dtype=args.dtype, estimator=args.estimator
    )
    model.params["b"][...] = mean  # start the decoder's bias at the data mean (its optimum, below)
    fit_x, batch = train_x, args.batch_size
    if batch == "full":  # the exact full-data gradient at the cost of r + 1 ≤ D + 1 examples
        fit_x = linear.moment_points(mean, lam, U, dtype=args.dtype)
        batch = len(fit_x)
    t0 = time.perf_counter()
    history = linear.fit(
        model,
        fit_x,
        args.steps,
        batch,
        args.lr,
        args.lr_final,
        np.random.default_rng([args.seed, 2]),
        progress=show,
        desc=f"Z={args.latent} σ²={args.sigma2:g}",
        hold=HOLD,
        fast_params=("logs2",),
        fast_factor=args.s2_lr_factor,
    )
    train_s = time.perf_counter() - t0
    model, after = _after_adam(model, args, mean, lam, U, show)
    result = linear.compare(model, train_x, test_x, mean, lam, U)
    result.update(after)
    config = {
        k: (str(v) if isinstance(v, pathlib.Path) else v)
        for k, v in vars(args).items()
        if k not in ("quiet", "summarize", "out", "given")
    }
    every = max(1, len(history) // 100)
    result.update(
        config=config,
        data=data.source,
        train_seconds=train_s,
        wall_seconds=time.perf_counter() - wall0,
        loss_curve=[[i + 1, float(f"{history[i]:.6g}")] for i in range(0, len(history), every)],
    )
    atomic_write_text(args.out / "result.json", json.dumps(result, indent=1) + "\n")
    if not args.quiet:
        say(*describe(result))
    return 0


def _maybe(value, spec):
    """A number as ``spec`` formats it; None (no direction above the noise floor) as a dash."""
    return "–" if value is None else format(value, spec)


def describe(r):
    """The result as a few lines of text, trained beside closed form."""
    return [
        f"Z={r['latent']}  σ²={r['sigma2']:g}  k=#{{λ>σ²}}={r['k']}  q=min(Z,k)={r['q']}",
        f"test ELBO {r['test_elbo']:.2f}  exact test log-likelihood {r['exact_test_ll']:.2f}  "
        f"gap {r['test_gap']:.2f} nats/digit (train ELBO {r['train_elbo']:.2f} vs {r['exact_train_ll']:.2f})",
        f"  trained model's own log p(x) {r['model_test_ll']:.2f} (posterior gap {r['posterior_gap']:.3f})",
        f"active units {r['active_units']} (predicted {r['predicted_active_units']}), collapsed "
        f"{r['collapsed_units']} (predicted {r['predicted_collapsed']}; Z−q = {r['z_minus_q']})",
        f"singular values of W vs (λ−σ²)^½: median rel. error {_maybe(r['sv_median_rel_error'], '.2g')}, "
        f"max abs error {r['sv_max_abs_error']:.2g}",
        f"training {r['train_seconds']:.0f} s",
    ]


TABLE_HEAD = (
    "| σ² | Z | steps | batch | lr | k | test ELBO | exact test log p | gap | trained log p | active (pred.) "
    "| collapsed (pred.) | σ(W) median rel. err. | σ(W) max abs err. |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
)


def table_row(r):
    steps = f"{r['config']['steps']}"  # Adam's, then the descent's and EM's that followed
    steps += f" + {r['descend_steps']} GD" if r.get("descend_steps") else ""
    steps += f" + {r['em_sweeps']} EM" if r.get("em_sweeps") else ""
    return (
        f"| {r['sigma2']:g} | {r['latent']} | {steps} | {r['config']['batch_size']} | "
        f"{r['config']['lr']:g} → {r['config']['lr_final']:g} | {r['k']} | "
        f"{r['test_elbo']:.2f} | "
        f"{r['exact_test_ll']:.2f} | {r['test_gap']:.2f} | {r['model_test_ll']:.2f} | "
        f"{r['active_units']} ({r['predicted_active_units']}) | "
        f"{r['collapsed_units']} ({r['predicted_collapsed']}) | "
        f"{_maybe(r['sv_median_rel_error'], '.3f')} | "
        f"{r['sv_max_abs_error']:.3f} |\n"
    )


def summarize(folder, quiet=False):
    """DIR/*/result.json → DIR/table.md and DIR/spectrum.png. Every result is checked whole first
    (the first that is not one is a usage error naming its file and field); then the table and the
    figure are made, and written together: both, or neither."""
    folder = pathlib.Path(folder)
    require_folder(folder, "--summarize")
    paths = sorted(folder.glob("*/result.json"))
    if not paths:
        raise UsageError(f"no */result.json in {folder}")
    results = [_read_result(p, folder) for p in paths]
    results.sort(key=_table_order)
    table = TABLE_HEAD + "".join(table_row(r) for r in results)
    with OutFolder(folder, "--summarize", "summary"):
        figure = spectrum_png(results)
        try:
            atomic_write_files({folder / "table.md": table.encode(), folder / "spectrum.png": figure})
        except WriteError as e:
            print(f"minivae.linear: {e}", file=sys.stderr)
            return EXIT_FAILED
    if not quiet:
        say(table.rstrip("\n"))
    return 0


def _read_result(path, folder):
    """One result.json, checked to hold what :func:`_train_and_write` writes (:data:`RESULT_SPEC`)."""
    try:
        r = json.loads(read_regular_text(path))
    except (OSError, ValueError, RecursionError) as e:
        raise UsageError(f"cannot read the results in {folder}: {e}") from None
    if not isinstance(r, dict):
        raise UsageError(f"{path} is not a result of python -m minivae.linear: a JSON {type(r).__name__}, no object")
    for key, ok, what in RESULT_SPEC:
        value = _field(r, key)
        if value is _MISSING and key not in OPTIONAL_KEYS:
            raise UsageError(f"{path} is not a result of python -m minivae.linear: {key!r} is missing")
        if value is not _MISSING and not ok(value, r):
            raise UsageError(
                f"{path} is not a result of python -m minivae.linear: {key!r} is {_shown(value)}, expected {what}"
            )
    return r


_MISSING = object()


def _field(r, key):
    """r[key], or r["config"][name] for a key "config.name"; _MISSING when it is not there."""
    for name in key.split("."):
        if not isinstance(r, dict) or name not in r:
            return _MISSING
        r = r[name]
    return r


def _shown(value, width=40):
    text = json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _int(v, low=0, high=math.inf):
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _number(v, low=-math.inf):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= low


def _descending(v, n, low=-math.inf):
    """A list of ``n`` finite numbers ≥ ``low`` in descending order, as the writer sorts them."""
    if not (isinstance(v, list) and len(v) == n and all(_number(x, low) for x in v)):
        return False
    return all(v[i] >= v[i + 1] for i in range(n - 1))


def _curve(v):
    """loss_curve: [[step, loss], …], steps from 1 on, losses finite."""
    pairs = isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 for p in v)
    return pairs and all(_int(step, 1) and _number(loss) for step, loss in v)


_D, _SV = DATA_DIM, f"min({DATA_DIM}, latent) numbers ≥ 0, descending"  # W's singular values (D, Z)
_NUMBERS = ("exact_train_ll", "exact_test_ll", "train_elbo", "test_elbo", "test_gap", "model_test_ll")
_NUMBERS += ("posterior_gap", "test_kl", "test_kl_theory")
_OR_NULL = ("collapsed_max_s2_error", "collapsed_max_w_norm", "sv_median_rel_error", "sv_max_rel_error_clear")
_OR_NULL += ("sv_largest_beyond_q",)
# What result.json holds (minivae.linear.compare, then _after_adam and _train_and_write): (key, ok(value,
# result), what it must be), in an order where each check may read the keys checked before it.
RESULT_SPEC = (
    ("latent", lambda v, r: _int(v, 1), "a positive integer"),
    ("sigma2", lambda v, r: _number(v, SIGMA2_MIN), f"a number ≥ {SIGMA2_MIN:.2g}, as --sigma2 takes"),
    ("eigenvalues", lambda v, r: _descending(v, _D, 0) and v[0] > 0, f"{_D} numbers ≥ 0, descending, the first > 0"),
    ("k", lambda v, r: _int(v, 0, _D), f"an integer from 0 to {_D}"),
    ("q", lambda v, r: _int(v) and v == min(r["latent"], r["k"]), "min(latent, k)"),
    ("z_minus_q", lambda v, r: _int(v) and v == r["latent"] - r["q"], "latent − q"),
    *((key, lambda v, r: _number(v), "a number") for key in _NUMBERS),
    *((key, lambda v, r: v is None or _number(v, 0), "a number ≥ 0 or null") for key in _OR_NULL),
    ("sv_max_abs_error", lambda v, r: _number(v, 0), "a number ≥ 0"),
    ("active_units", lambda v, r: _int(v, 0, r["latent"]), "an integer from 0 to latent"),
    ("collapsed_units", lambda v, r: _int(v, 0, r["latent"]), "an integer from 0 to latent"),
    ("predicted_collapsed", lambda v, r: _int(v, 0, r["latent"]), "an integer from 0 to latent"),
    ("predicted_active_units", lambda v, r: _int(v, 0, r["q"]), "an integer from 0 to q"),
    ("n_clear", lambda v, r: _int(v, 0, r["q"]), "an integer from 0 to q"),
    *(
        (key, lambda v, r: _descending(v, min(_D, r["latent"]), 0), _SV)
        for key in ("singular_values", "theory_singular_values")
    ),
    ("var_mu_sorted", lambda v, r: _descending(v, r["latent"], 0), "a number ≥ 0 per latent unit, descending"),
    ("kl_per_unit_sorted", lambda v, r: _descending(v, r["latent"]), "a number per latent unit, descending"),
    ("config", lambda v, r: isinstance(v, dict), "an object (the run's options)"),
    ("config.latent", lambda v, r: _int(v) and v == r["latent"], "the latent of the result"),
    ("config.sigma2", lambda v, r: _number(v) and v == r["sigma2"], "the sigma2 of the result"),
    ("config.steps", lambda v, r: _int(v, 1), "a positive integer"),
    ("config.batch_size", lambda v, r: v == "full" or _int(v, 1), 'a positive integer or "full"'),
    ("config.lr", lambda v, r: _number(v) and v > 0, "a positive number"),
    ("config.lr_final", lambda v, r: _number(v) and v > 0, "a positive number"),
    ("data", lambda v, r: isinstance(v, str), "a string"),
    ("train_seconds", lambda v, r: _number(v, 0), "a number ≥ 0"),
    ("wall_seconds", lambda v, r: _number(v, 0), "a number ≥ 0"),
    ("loss_curve", lambda v, r: _curve(v), "a list of [step, loss] pairs"),
    ("descend_steps", lambda v, r: _int(v), "a non-negative integer"),
    ("descend_seconds", lambda v, r: _number(v, 0), "a number ≥ 0"),
    ("em_sweeps", lambda v, r: _int(v), "a non-negative integer"),
    ("em_seconds", lambda v, r: _number(v, 0), "a number ≥ 0"),
    ("em_final_loss", lambda v, r: _number(v), "a number"),
)
OPTIONAL_KEYS = {"descend_steps", "descend_seconds", "em_sweeps", "em_seconds", "em_final_loss"}  # --descend, --em


def plot_spectrum(results, path):
    """:func:`spectrum_png` written to ``path``, whole or not at all."""
    figure = spectrum_png(results)
    atomic_write(path, lambda f: f.write(figure))


def spectrum_png(results):
    """The figure, as PNG bytes. Per σ², one column: the data's eigenvalues with σ² and the learned
    σ² + s_i(W)² on top; below, per-unit KL and Var_x μ_u sorted, for each Z, with the closed form."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = one_run_per_size(results)
    sig = sorted({r["sigma2"] for r in results})
    fig, axes = plt.subplots(2, len(sig), figsize=(5.2 * len(sig), 7.5), squeeze=False)
    for j, s2v in enumerate(sig):
        rs = sorted((r for r in results if r["sigma2"] == s2v), key=lambda r: r["latent"])
        lam = np.array(rs[0]["eigenvalues"])
        k = linear.n_above(lam, s2v)
        _plot_eigenvalues(axes[0, j], rs, lam, k, s2v)
        _plot_units(axes[1, j], rs, lam, k, s2v)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def one_run_per_size(results):
    """Per (σ², Z), the run trained longest: the most Adam steps, then the most EM sweeps (the
    first of equals, in the order given)."""
    longest = {}
    for r in results:
        key = (r["sigma2"], r["latent"])
        if key not in longest or _training(r) > _training(longest[key]):
            longest[key] = r
    return list(longest.values())


def _training(r):
    return r["config"]["steps"], r.get("em_sweeps") or 0


def _table_order(r):
    """The table's rows: by σ², Z, Adam steps, batch size, then EM sweeps."""
    return r["sigma2"], r["latent"], r["config"]["steps"], str(r["config"]["batch_size"]), _training(r)


_COLORS = {100: "tab:green", 784: "tab:orange", 1000: "tab:blue"}  # per Z


def _plot_eigenvalues(ax, rs, lam, k, s2v):
    """The data's eigenvalues λ_i, σ² and k, and each run's σ² + s_i(W)²."""
    i = np.arange(1, len(lam) + 1)
    ax.semilogy(i, np.maximum(lam, 1e-12), "k-", lw=1.5, label="data eigenvalues λ_i")
    ax.axhline(s2v, color="r", ls="--", lw=1, label=f"σ² = {s2v:g}")
    ax.axvline(k, color="r", ls=":", lw=1)
    ax.text(k, lam[0], f" k = {k}", color="r", va="top")
    for r in rs:
        sv = np.array(r["singular_values"])
        ax.semilogy(
            np.arange(1, len(sv) + 1),
            sv**2 + s2v,
            ".",
            ms=2.5,
            color=_COLORS.get(r["latent"], None),
            label=f"σ² + s_i(W)², Z = {r['latent']}",
        )
    ax.set_ylim(max(1e-6, lam[lam > 0].min() / 2), lam[0] * 3)
    ax.set_xlim(0, 1000)
    ax.set_xlabel("index i (sorted)")
    ax.set_title(f"σ² = {s2v:g}: eigenvalues and the learned decoder")
    ax.legend(fontsize=7, loc="upper right")


def _plot_units(ax, rs, lam, k, s2v):
    """Each run's per-unit KL and Var_x μ_u, sorted, beside the optimum's KL_i = ½ log(λ_i/σ²)."""
    q_all = np.arange(1, k + 1)
    ax.semilogy(q_all, 0.5 * np.log(lam[:k] / s2v), "k--", lw=1, label="KL_i = ½ log(λ_i/σ²), optimum")
    for r in rs:
        kl = np.maximum(np.array(r["kl_per_unit_sorted"]), 1e-6)
        vm = np.maximum(np.array(r["var_mu_sorted"]), 1e-6)
        c = _COLORS.get(r["latent"], None)
        u = np.arange(1, len(kl) + 1)
        ax.semilogy(u, kl, "-", color=c, lw=1.5, label=f"KL per unit, Z = {r['latent']}")
        ax.semilogy(u, vm, ":", color=c, lw=1.2, label=f"Var_x μ_u, Z = {r['latent']}")
    ax.axhline(metrics.ACTIVE_THRESHOLD, color="gray", lw=0.8)
    ax.axvline(k, color="r", ls=":", lw=1)
    ax.set_ylim(1e-5, 10)
    ax.set_xlim(0, 1000)
    ax.set_xlabel("latent unit (sorted)")
    ax.set_title("per unit, sorted: collapse beyond k")
    ax.legend(fontsize=6.5, loc="lower left", ncol=1)


def main(argv=None):
    return run_command("minivae.linear", run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
