"""Does an autoencoder with Z ≥ D just learn the identity? Reconstructing inputs that are not digits.

With as many latents as pixels (or more) and a hidden layer wider than the image, nothing in an
autoencoder's shape stops it from copying its input: x̂ = x is a perfect reconstruction. Whether
training finds that map is an empirical question, and the test is simple: an identity map
reconstructs *anything* — uniform noise as well as digits — while a model that learned the data
reconstructs digits and fails on what it never saw.

The metric (N examples, D pixels; ``reconstruct`` maps (N, D) → (N, D)):

    mse      = (1/ND) Σ_n Σ_d (x̂_nd − x_nd)²               mean squared error per pixel
    relative = mse / ((1/D) Σ_d Var_n(x_nd))                 the fraction of the set's own variance
                                                           left unexplained

The identity map has mse = relative = 0. The constant map x̂ = x̄ (the set's own per-pixel mean) has
mse = (1/D) Σ_d Var_n(x_nd) and relative = 1; any constant c has mse = (1/D) Σ_d [Var_n(x_nd) +
(x̄_d − c_d)²]. So relative ≈ 1 means "no better than outputting one fixed image".

``python -m minivae.identity --data-dir DIR --out OUT`` trains, at Z = 1000 by default,

- the linear autoencoder (:class:`minivae.linear.LinearAE`: no noise, no KL) on grey values,
- the MLP autoencoder :class:`minivae.ae.AE` and the MLP VAE :class:`minivae.VAE` (one hidden
  layer of 1024 > D units, cpu-fused backend, dynamic binarization drawn fresh each epoch),

adds the linear VAE at its closed-form optimum (probabilistic PCA, :mod:`minivae.linear`) and the
constant map (the mean training digit) for reference, and measures every one on four sets: test
digits, uniform noise, test digits rotated by 90°, and inverted test digits (1 − x). It writes
``OUT/identity.json``, ``OUT/identity.md`` (the table) and ``OUT/identity.png`` (reconstructions).
As for the main job, the options, the data, the memory the models need and ``--out`` (made and
written into, a lock on ``OUT/.lock``) are checked before the first step: bad input is one line and
exit code 2, a run that fails (a full disk) one line and exit 1, each file whole or not written.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time

import numpy as np

from minivae import linear
from minivae.cli import (
    EXIT_FAILED,
    Parser,
    UsageError,
    check_memory,
    load_digits,
    non_negative_int,
    path,
    positive_float,
    positive_int,
    program,
    require_folder,
    run_command,
    say,
    say_data,
    widths,
)
from minivae.data import binarize
from minivae.files import WriteError, atomic_write, atomic_write_text
from minivae.guards import OutFolder


def reconstruction_error(reconstruct, x, batch_size=1000):
    """{"mse", "relative"} of ``reconstruct`` on x (module docstring).     x: (N, D)"""
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError("x must be (N, D) with N ≥ 2")
    sq = 0.0
    for s in range(0, len(x), batch_size):
        r = np.asarray(reconstruct(x[s : s + batch_size].astype(np.float32)), np.float64) - x[s : s + batch_size]
        sq += float((r * r).sum())
    mse = sq / x.size
    spread = float(x.var(axis=0).mean())  # (1/D) Σ_d Var_n(x_nd)
    return {"mse": mse, "relative": mse / spread if spread > 0 else math.inf}


def probe_sets(test_x, rng, n=1000):
    """The inputs reconstructed: {name: (n, D) float32} — digits and three kinds of non-digit."""
    digits = np.asarray(test_x[:n], np.float32)
    n = len(digits)
    side = int(round(math.sqrt(digits.shape[1])))
    return {
        "test digits": digits,
        "uniform noise": rng.random(digits.shape, dtype=np.float32),
        "digits rotated 90°": np.rot90(digits.reshape(n, side, side), axes=(1, 2)).reshape(n, -1).copy(),
        "inverted digits (1 − x)": 1 - digits,
    }


def parse_args(argv=None):
    p = Parser(
        prog=program("minivae.identity", "minivae-identity"),
        description="Train autoencoders and a VAE with Z ≥ D and measure how well they "
        "reconstruct inputs that are not digits.",
    )
    p.add_argument(
        "--data-dir", type=path, default=None, help="a folder of MNIST IDX files (default the download cache)"
    )
    p.add_argument("--out", type=path, required=True, help="output folder")
    p.add_argument("--latent", type=positive_int, default=1000, help="latent dimension Z")
    p.add_argument("--hidden", type=widths, default=(1024,), metavar="H1,H2", help="hidden widths of the MLP models")
    p.add_argument("--epochs", type=positive_int, default=5, help="epochs of each MLP model")
    p.add_argument("--batch-size", type=positive_int, default=128, help="MLP mini-batch size")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="MLP Adam learning rate")
    p.add_argument(
        "--linear-steps",
        type=positive_int,
        default=3000,
        help="Adam steps of the linear autoencoder (batch 256, lr 3e-3 → 1e-4)",
    )
    p.add_argument("--sigma2", type=positive_float, default=0.01, help="σ² of the closed-form linear VAE")
    p.add_argument("--n", type=positive_int, default=1000, help="examples per probe set")
    p.add_argument("--backend", default="cpu-fused", help="backend of the MLP models")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds the weights, the data order, the noise")
    p.add_argument("--limit", type=positive_int, default=None, help="use the first N training digits (default all)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary lines")
    return p.parse_args(argv)


def run(args):
    """Check the options, load the digits, build the MLP models, check the memory and make
    ``--out`` — all before the first step — then fit every model, measure each on the probe sets
    and write identity.json, identity.md and identity.png. Returns the exit code."""
    _check_options(args)
    data = _load_data(args)
    (n_train, D), n_test = data.train_x.shape, len(data.test_x)
    check_memory(
        memory_needed(D, args.latent, args.hidden, args.batch_size, n_train, n_test, args.n),
        f"this run (models of Z = {args.latent}, hidden {list(args.hidden)})",
    )
    mlps = _mlp_models(args, D)
    with OutFolder(args.out, "--out", "identity run"):
        try:
            return _fit_and_write(args, data, mlps)
        except WriteError as e:  # a full disk: each file is written whole, or not at all
            print(f"minivae.identity: {e}", file=sys.stderr)
        except MemoryError:
            print(f"minivae.identity: out of memory (Z = {args.latent}, hidden {list(args.hidden)})", file=sys.stderr)
        except Diverged as e:  # nothing written: the results would be NaN
            print(f"minivae.identity: {e}", file=sys.stderr)
        return EXIT_FAILED


class Diverged(RuntimeError):
    """A fitted model whose codes are no longer finite numbers."""


def memory_needed(data_dim, latent, hidden, batch_size, n_train, n_test, n):
    """Bytes the command needs at its peak, roughly (an upper estimate): every model at once — the
    closed-form linear VAE in float64 (with the optimum it is set from), the linear autoencoder,
    the MLP autoencoder and VAE in float32 with their gradients and Adam's moments, a step's
    activations — the covariance with its eigenvectors, the digits and the probe sets."""
    D, Z, hidden = data_dim, latent, list(hidden)

    def mlp(code):
        enc, dec = [D, *hidden, code], [Z, *hidden[::-1], D]
        return sum(i * o + o for net in (enc, dec) for i, o in zip(net[:-1], net[1:], strict=True))

    linear = 4 * D * Z * 8 + 4 * 2 * D * Z * 4 + 6 * 256 * (D + Z) * 4
    width = 2 * sum(hidden) + 3 * Z + 2 * D  # floats per example through one MLP step
    mlps = 4 * (mlp(Z) + mlp(2 * Z)) * 4 + 3 * batch_size * width * 4
    data = 3 * (n_train + n_test) * D * 4 + 4 * n * D * 4 + 2 * 1000 * (D + width) * 8 + 4 * D * D * 8
    return linear + mlps + data


def _fit_and_write(args, data, mlps):
    say_data(data, args.quiet)
    show = not args.quiet and sys.stderr.isatty()
    say_ = (lambda *a: None) if args.quiet else say
    train_x = binarize(data.train_x, "none")
    sets = probe_sets(binarize(data.test_x, "none"), np.random.default_rng([args.seed, 7]), args.n)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # a divergence is said below, once
        models, budget, seconds = _fit_all(args, mlps, train_x, show, say_)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            results = {name: {s: reconstruction_error(f, x) for s, x in sets.items()} for name, f in models.items()}
    except ValueError as e:  # the input checks (minivae.checks) refuse the NaN or ∞ codes of a diverged model
        raise Diverged(f"a model diverged at --lr {args.lr:g} ({e}); try a lower --lr") from None
    report = {
        "data": data.source,
        "latent": args.latent,
        "hidden": list(args.hidden),
        "seed": args.seed,
        "n_per_set": args.n,
        "budget": budget,
        "seconds": seconds,
        "results": results,
    }
    _write(args.out, report, models, sets, say_)
    return 0


def _check_options(args):
    """What can be wrong with the options before any data is read."""
    OutFolder(args.out, "--out").check()
    if args.data_dir is not None:
        require_folder(args.data_dir, "--data-dir")
    if args.n < 2:
        raise UsageError("--n must be at least 2")


def _load_data(args):
    return load_digits(args.data_dir, args.limit, seed=args.seed)


def _mlp_models(args, D):
    """The untrained MLP autoencoder and MLP VAE: {name: model}."""
    from minivae.ae import AE
    from minivae.vae import VAE

    try:
        return {
            "MLP autoencoder": AE(D, args.latent, args.hidden, seed=args.seed, backend=args.backend),
            "MLP VAE": VAE(D, args.latent, args.hidden, seed=args.seed, backend=args.backend),
        }
    except (ValueError, ImportError, RuntimeError) as e:
        raise UsageError(f"cannot create the model: {e}") from None


def _fit_all(args, mlps, train_x, show, say):
    """Fit every model: ({name: reconstruct}, {name: budget line}, {name: seconds}), the reference
    maps first, then the linear autoencoder, then the MLP models — each trained by the one loop
    of the small models, :func:`minivae.linear.fit`."""
    D, Z = train_x.shape[1], args.latent
    models, budget, seconds = {}, {}, {}
    t0 = time.perf_counter()
    mean, lam, U = linear.spectrum(train_x)
    ppca = linear.LinearVAE(D, Z, args.sigma2)
    ppca.set_params(linear.optimum(mean, lam, U, args.sigma2, Z))
    models["constant map (mean digit)"] = lambda x: np.broadcast_to(mean, x.shape)
    models[f"linear VAE, closed-form optimum (σ² = {args.sigma2:g})"] = ppca.reconstruct
    seconds["closed form"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    lae = linear.LinearAE(D, Z, seed=args.seed, dtype="float32")
    rng = np.random.default_rng([args.seed, 2])
    hist = linear.fit(lae, train_x, args.linear_steps, 256, 3e-3, 1e-4, rng, progress=show, desc="linear AE")
    models["linear autoencoder"] = lae.reconstruct
    seconds["linear autoencoder"] = time.perf_counter() - t0
    budget["linear autoencoder"] = (
        f"{args.linear_steps} Adam steps, batch 256, lr 3e-3 → 1e-4, grey values; final ½‖x − x̂‖² {hist[-1]:.3f}"
    )
    say(f"linear autoencoder: {seconds['linear autoencoder']:.0f} s, final loss {hist[-1]:.3f}")

    for name, model in mlps.items():
        t0 = time.perf_counter()
        loss = _fit_mlp(args, model, train_x, show, name)
        models[name] = model.reconstruct
        seconds[name] = time.perf_counter() - t0
        budget[name] = (
            f"{args.epochs} epochs, batch {args.batch_size}, Adam {args.lr:g}, hidden "
            f"{list(args.hidden)}, dynamic binarization, {args.backend}; last batch loss "
            f"{loss:.1f}"
        )
        say(f"{name}: {seconds[name]:.0f} s, last batch loss {loss:.1f}")
    return models, budget, seconds


def _fit_mlp(args, model, train_x, show, name):
    """``--epochs`` whole epochs of Adam on fresh Bernoulli draws of the grey digits (dynamic
    binarization: each epoch draws the digits, then the order, from one generator); the last
    batch's loss. A model that diverges stops at its first non-finite loss, keeping its last
    finite parameters, and is measured like the others."""
    steps = args.epochs * math.ceil(len(train_x) / args.batch_size)
    rng = np.random.default_rng([args.seed, 2])
    kw = dict(rng=rng, progress=show, desc=name, binarization="dynamic", check_finite=False)
    return linear.fit(model, train_x, steps, args.batch_size, args.lr, **kw)[-1]


def _write(out, report, models, sets, say):
    """identity.json (the report), identity.md (the table, also said) and identity.png."""
    atomic_write_text(out / "identity.json", json.dumps(report, indent=1) + "\n")
    table = markdown_table(report["results"])
    atomic_write_text(out / "identity.md", table)
    plot_reconstructions(models, sets, out / "identity.png")
    say(table.rstrip("\n"))


def markdown_table(results):
    """Rows: models; columns: probe sets; cells: mse (relative)."""
    sets = list(next(iter(results.values())))
    head = "| model | " + " | ".join(sets) + " |\n|---|" + "---:|" * len(sets) + "\n"
    rows = "".join(
        f"| {m} | " + " | ".join(f"{r[s]['mse']:.4f} ({r[s]['relative']:.2f})" for s in sets) + " |\n"
        for m, r in results.items()
    )
    return head + rows


def plot_reconstructions(models, sets, path, per_set=2):
    """Columns: two inputs of each probe set; rows: the inputs, then each model's reconstructions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inputs = np.concatenate([x[:per_set] for x in sets.values()])  # (S·per_set, D)
    rows = [("input", inputs)] + [(name, np.asarray(f(inputs), np.float64)) for name, f in models.items()]
    side = int(round(math.sqrt(inputs.shape[1])))
    fig, axes = plt.subplots(len(rows), len(inputs), figsize=(1.1 * len(inputs) + 2.6, 1.1 * len(rows)))
    for i, (name, imgs) in enumerate(rows):
        for j in range(len(inputs)):
            ax = axes[i, j]
            ax.imshow(np.clip(imgs[j], 0, 1).reshape(side, side), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
    for j, s in enumerate(sets):
        axes[0, j * per_set].set_title(s, fontsize=7, loc="left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))  # whole, or not at all


def main(argv=None):
    return run_command("minivae.identity", run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
