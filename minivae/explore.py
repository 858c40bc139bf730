"""Looking inside a trained model: ``python -m minivae.explore RUN_DIR`` draws its latent space.

It loads the run with :func:`minivae.load`, encodes the test digits to their posterior means
μ(x) (N, Z), and writes into ``--out`` (default ``RUN_DIR/explore``):

    samples_by_temperature.png  decoded z = τ·ε, ε ~ N(0, I), for τ = 0.5, 0.8, 1 (the same ε):
                                how much of the prior the decoder covers; τ < 1 stays near its centre
    interpolations.png          pairs of test digits a, b and the decoded points of the line
                                z = (1 − t)·μ_a + t·μ_b between their posterior means, t ∈ [0, 1]
    traversals.png              the model's principal latent directions: with C = Cov_x μ (Z, Z),
                                C = U diag(λ) Uᵀ, row i decodes z = μ̄ + t·√λ_i·u_i for t from −3 to
                                3 (μ̄ the mean code, √λ_i the spread of the codes along u_i)
    latent_map.png              the test digits' μ as points coloured by their label: for Z = 2 the
                                latent space itself, for Z > 2 the projections (μ − μ̄)·u₁ and
                                (μ − μ̄)·u₂ onto the top two directions (Z = 1: μ against the label)
    manifold.png                (Z = 2 only) the decoded grid z = (Φ⁻¹(p₁), Φ⁻¹(p₂)) over a uniform
                                grid of p in (0, 1), Φ⁻¹ the standard normal quantile function: the
                                prior's probability mass spread evenly over the picture
                                (Kingma & Welling 2013, Fig. 4)

Why directions, not units: for a large Z most single latents carry almost nothing (their μ_u
barely varies), while the encoder's means vary along a few directions that mix many units.
λ_i is the variance of the codes along u_i, the same eigenvalues the main job's ``directions``
counts (:func:`minivae.metrics.latent_directions`).

The test digits are those the run was evaluated on: ``--data-dir DIR``, else the run's own data
folder, else the default source of :func:`minivae.data.load_mnist` (the offline sample's held-out
digits when full MNIST is not available, split with the run's seed), binarized as in training.

Faults, as in the main job: bad input — not a run, a model that does not take the digits, fewer
than two test digits, an output folder that cannot be made or written into — is one line on
stderr and exit code 2, found before the output folder is made; a figure that cannot be written
is one line and exit 1 (each figure is written whole, or not at all); Ctrl-C exits 130. One
explore at a time writes into a folder (a lock on ``.lock``).
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from minivae import cli, metrics
from minivae.cli import EXIT_FAILED, UsageError
from minivae.data import binarize_fixed
from minivae.guards import OutFolder

TEMPERATURES = (0.5, 0.8, 1.0)
TRAVERSAL_T = np.linspace(-3.0, 3.0, 11)  # t in units of √λ
INTERPOLATION_T = np.linspace(0.0, 1.0, 10)
N_DIRECTIONS, N_PAIRS, MANIFOLD_N = 8, 8, 20


def parse_args(argv=None):
    from minivae.backend import BACKENDS

    p = cli.Parser(
        prog=cli.program("minivae.explore", "minivae-explore"),
        description="Figures of a trained model's latent space: samples by temperature, "
        "interpolations, traversals of its principal directions, a map of the "
        "test digits' codes (and for Z = 2 the decoded manifold).",
    )
    p.add_argument(
        "run_dir",
        type=cli.path,
        metavar="RUN_DIR",
        help="a folder written by python -m minivae.train (config.json, checkpoint.npz)",
    )
    p.add_argument("--out", type=cli.path, default=None, help="output folder (default RUN_DIR/explore)")
    p.add_argument(
        "--data-dir",
        type=cli.path,
        default=None,
        help="a folder of MNIST IDX files with the test digits (default the run's own data)",
    )
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="backend of the model")
    p.add_argument("--seed", type=cli.non_negative_int, default=0, help="seeds the samples and the pairs of digits")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------
# What each figure decodes
# --------------------------------------------------------------------------------------------


def temperature_samples(vae, rng, n=64, temperatures=TEMPERATURES):
    """[(τ, sigmoid(decoder(τ·ε)))] for one draw ε ~ N(0, I) of shape (n, Z)."""
    eps = rng.standard_normal((n, vae.latent))  # (n, Z)
    return [(tau, vae.decode((tau * eps).astype(vae.dtype))) for tau in temperatures]


def interpolation_pairs(labels, n_pairs, rng):
    """Indices (a, b) of ``n_pairs`` pairs of test digits with different labels, drawn at random
    (pairs of different digits when all have one label; fewer pairs when there are fewer)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        labels = np.arange(len(labels))  # one class: any two different digits make a pair
    pairs = []
    for a in rng.permutation(len(labels)):
        others = np.flatnonzero(labels != labels[a])
        if len(others):
            pairs.append((int(a), int(rng.choice(others))))
        if len(pairs) == n_pairs:
            break
    return pairs


def interpolate(vae, mu_a, mu_b, ts=INTERPOLATION_T):
    """Decoded z = (1 − t)·μ_a + t·μ_b for each t.     μ_a, μ_b: (Z,) → (len(ts), D)"""
    t = np.asarray(ts)[:, None]  # (T, 1)
    return vae.decode(((1 - t) * mu_a + t * mu_b).astype(vae.dtype))


def traverse(vae, mu, k=N_DIRECTIONS, ts=TRAVERSAL_T):
    """Decoded μ̄ + t·√λ_i·u_i along the top-k principal directions of the codes.

    mu: (N, Z) → images (k, len(ts), D), λ (k,)
    """
    U, lam = metrics.principal_directions(mu, min(k, mu.shape[1]))  # (Z, k), (k,)
    centre = np.asarray(mu, dtype=np.float64).mean(axis=0)  # μ̄ (Z,)
    steps = np.asarray(ts)[None, :, None] * np.sqrt(lam)[:, None, None] * U.T[:, None, :]  # (k, T, Z)
    z = (centre + steps).reshape(-1, mu.shape[1])
    return vae.decode(z.astype(vae.dtype)).reshape(len(lam), len(ts), -1), lam


def map_coordinates(mu):
    """2-D (or, for Z = 1, 1-D) coordinates of the codes and the names of the axes.

    Z ≤ 2: μ itself; Z > 2: (μ − μ̄)·u₁ and (μ − μ̄)·u₂, the top two principal directions.
    """
    mu = np.asarray(mu, dtype=np.float64)
    Z = mu.shape[1]
    if Z == 1:
        return mu, ["μ"]
    if Z == 2:
        return mu, ["μ₁", "μ₂"]
    U, lam = metrics.principal_directions(mu, 2)
    coords = (mu - mu.mean(axis=0)) @ U  # (N, 2)
    return coords, [f"(μ − μ̄)·u{i + 1}   (λ{i + 1} = {lam_i:.3g})" for i, lam_i in enumerate(lam)]


def normal_quantiles(n):
    """Φ⁻¹(p) at the n midpoints p = (i + ½)/n of a uniform grid on (0, 1)."""
    inv_cdf = statistics.NormalDist().inv_cdf
    return np.array([inv_cdf((i + 0.5) / n) for i in range(n)])


def decoded_manifold(vae, n=MANIFOLD_N):
    """For Z = 2: the n × n decoded grid over the prior's quantiles, top row z₂ largest.
    → images (n·n, D), quantiles (n,)"""
    q = normal_quantiles(n)
    z1, z2 = np.meshgrid(q, q[::-1])  # rows: z₂ from high to low; columns: z₁ from low to high
    z = np.stack([z1.ravel(), z2.ravel()], axis=1)  # (n·n, 2)
    return vae.decode(z.astype(vae.dtype)), q


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def _top(k):
    return "the principal direction" if k == 1 else f"the top {k} principal directions"


def run(args):
    """Load the run and its test digits, then write the figures. Returns the exit code."""
    t0 = time.perf_counter()
    # 1. Everything that can be wrong with the input is checked before anything is written.
    run_, vae = _load_model(args)
    data = _load_data(args, run_.config)
    test_x = _test_digits(args, run_, vae, data)
    out = args.out if args.out is not None else args.run_dir / "explore"

    # 2. Encode the test digits as the run evaluated them, then draw.
    with OutFolder(out, "--out", "explore"):
        cli.say(
            f"data: {data.source}",
            f"model: {args.run_dir} (Z={vae.latent}, hidden={list(vae.hidden)}, epoch {run_.epoch}), "
            f"backend {vae.backend}",
            quiet=args.quiet,
        )
        mu, _ = metrics.posterior_means(vae, test_x)  # (N, Z)
        rng = np.random.default_rng([args.seed, 6])
        written = []
        for name, what, draw in _figures(vae, test_x, data.test_y, mu, rng):
            try:
                draw(out / name)
            except (OSError, MemoryError) as e:  # a full disk, the folder gone; each figure is whole
                why = "out of memory" if isinstance(e, MemoryError) else str(e)
                kept = f"{', '.join(written)} written" if written else "no figure written"
                cli.report("minivae.explore", f"{why}; stopping ({kept})")
                return EXIT_FAILED
            written.append(name)
            cli.say(f"{name:27s} {what}", quiet=args.quiet)
    cli.say(f"figures in {out}/ ({time.perf_counter() - t0:.0f} s)", quiet=args.quiet)
    return 0


def _test_digits(args, run_, vae, data):
    """The test digits as the run evaluated them (binarized as in training), checked to fit the
    model and to be enough for the figures."""
    if vae.data_dim != data.test_x.shape[1]:
        raise UsageError(
            f"the model in {args.run_dir} takes inputs of D = {vae.data_dim} values, the test digits "
            f"have {data.test_x.shape[1]} pixels: explore draws models of the digits"
        )
    if len(data.test_x) < 2:
        raise UsageError(f"explore needs at least 2 test digits, {data.source} gives {len(data.test_x)}")
    return binarize_fixed(data.test_x, run_.config.binarize)


def _load_model(args):
    """The run (:func:`minivae.runs.read_run`) and its model on ``--backend``."""
    return cli.load_run(args.run_dir, args.backend)


def _load_data(args, config):
    """The digits the run was evaluated on: ``--data-dir``, else the run's own data folder."""
    data_dir = args.data_dir if args.data_dir is not None else config.data_dir
    if args.data_dir is not None:
        cli.require_folder(args.data_dir, "--data-dir")
    hint = " (the run's data folder; pass --data-dir)" if args.data_dir is None and data_dir else ""
    progress = not args.quiet and sys.stderr.isatty()
    return cli.load_digits(data_dir, config.limit, seed=config.seed, progress=progress, hint=hint)


def _figures(vae, test_x, test_y, mu, rng):
    """The figures to draw: [(file name, what it shows, draw(path))], in the order they are drawn.
    test_x: (N, D) the encoded test digits, test_y: (N,) their labels, mu: (N, Z) their means."""
    from minivae import plots

    Z = vae.latent

    def draw_samples(path):
        plots.temperature_samples(path, temperature_samples(vae, rng), z=Z)

    def draw_interpolations(path):
        pairs = interpolation_pairs(test_y, N_PAIRS, rng)
        a, b = (np.array([p[i] for p in pairs]) for i in (0, 1))
        rows = np.stack([interpolate(vae, mu[i], mu[j]) for i, j in pairs])
        plots.interpolations(
            path,
            rows,
            test_x[a],
            test_x[b],
            INTERPOLATION_T,
            f"Interpolations between the posterior means of test digits (Z = {Z})",
        )

    def draw_traversals(path):
        images, lam = traverse(vae, mu)
        plots.traversals(path, images, lam, TRAVERSAL_T, f"Traversals of {_top(len(lam))} of Cov_x μ (Z = {Z})")

    def draw_map(path):
        coords, names = map_coordinates(mu)
        what = "the latent space" if Z <= 2 else "projected onto the top two principal directions"
        plots.latent_map(path, coords, test_y, names, f"Posterior means of {len(mu):,} test digits, {what} (Z = {Z})")

    def draw_manifold(path):
        images, q = decoded_manifold(vae)
        plots.manifold(path, images, q, f"Decoded z over the prior's quantiles, {MANIFOLD_N} × {MANIFOLD_N}")

    jobs = [
        ("samples_by_temperature.png", "samples at τ = " + ", ".join(f"{t:g}" for t in TEMPERATURES), draw_samples),
        ("interpolations.png", f"{N_PAIRS} interpolations between test digits", draw_interpolations),
        ("traversals.png", f"traversals of {_top(min(N_DIRECTIONS, Z))}", draw_traversals),
        ("latent_map.png", "map of the test digits' posterior means", draw_map),
    ]
    if Z == 2:
        jobs.append(("manifold.png", "decoded manifold over the prior's quantiles", draw_manifold))
    return jobs


def main(argv=None):
    return cli.run_command("minivae.explore", run, parse_args, argv)


if __name__ == "__main__":
    sys.exit(main())
