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
resumes where it stopped. At the end it writes ``report.md`` and the figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pathlib
import sys
import time
import warnings

import numpy as np

from minivae import losses, metrics
from minivae.train import UsageError, _Parser, _positive_int, add_training_options, atomic_write, \
    atomic_write_text, read_jsonl, write_jsonl

MODELS = ("vae", "ae")
LATENTS = (2, 5, 10, 20, 50, 100, 200, 500, 784, 1000, 2000)
DEFAULT_EPOCHS = 10


def _latent_list(text):
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected latent sizes like 2,10,1000, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"latent sizes must be positive integers, got {text!r}")
    return sorted(set(values))


def _model_list(text):
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in MODELS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"models must be from {', '.join(MODELS)}, got {text!r}")
    return list(dict.fromkeys(values))


def parse_args(argv=None):
    p = _Parser(prog="python -m minivae.sweep",
                description="Train one model per latent size and compare them on held-out digits.")
    p.add_argument("--latents", type=_latent_list, default=list(LATENTS), help="comma-separated sizes")
    p.add_argument("--models", type=_model_list, default=["vae"], help="vae, ae or vae,ae")
    p.add_argument("--jobs", type=_positive_int, default=1, help="worker processes (1)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on this Dask scheduler (e.g. tcp://127.0.0.1:8786) instead")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs") / "sweep")
    add_training_options(p)
    p.set_defaults(iw_samples=100)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------- one run


def run_one(cfg):
    """Train and evaluate one model; save its arrays for the figures; return its results row.

    Runs in a worker process: everything it needs is in the plain dict ``cfg``.
    """
    if cfg.get("threads"):
        from threadpoolctl import threadpool_limits

        threadpool_limits(cfg["threads"])
    from minivae.ae import AE
    from minivae.data import batches, binarize, load_mnist
    from minivae.optim import Adam
    from minivae.vae import VAE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback to the offline sample is said in `source`
        data = load_mnist(cfg["data_dir"], cfg["limit"], seed=cfg["seed"])
    Z, hidden = cfg["latent"], tuple(cfg["hidden"])
    if cfg["model"] == "vae":
        model = VAE(784, Z, hidden, seed=cfg["seed"], backend=cfg["backend"])
    else:
        model = AE(784, Z, hidden, seed=cfg["seed"])
    opt = Adam(model.params, lr=cfg["lr"])
    data_rng = np.random.default_rng([cfg["seed"], 2])
    n, bs = len(data.train_x), cfg["batch_size"]

    t0 = time.perf_counter()
    seen, diverged, t_first = 0, None, None
    for epoch in range(1, cfg["epochs"] + 1):
        x_epoch = binarize(data.train_x, cfg["binarize"], data_rng)
        for step, idx in enumerate(batches(n, bs, data_rng), 1):
            loss = model.forward(x_epoch[idx])
            if not math.isfinite(loss):
                diverged = f"loss {loss} at epoch {epoch}, step {step}"
                break
            opt.step(model.backward())
            if t_first is None:  # samples/s leaves out the first step (it loads compiled kernels)
                t_first, first = time.perf_counter(), len(idx)
            seen += len(idx)
        if diverged:
            break
    now = time.perf_counter()
    samples_per_s = (seen - first) / (now - t_first) if t_first and seen > first else float("nan")

    mode = "static" if cfg["binarize"] != "none" else "none"
    test_x = binarize(data.test_x, mode)
    train_x = binarize(data.train_x[: len(test_x)], mode)  # as many training digits as test digits
    rng = np.random.default_rng([cfg["seed"], 3])
    mu, logvar = metrics.posterior_means(model, test_x)  # the AE's codes, and None, for "ae"
    active, activity = metrics.active_units(mu)
    if cfg["model"] == "vae":
        test = metrics.evaluate(model, test_x, rng, posterior=(mu, logvar))
        train = metrics.evaluate(model, train_x, rng)
        n_iw = min(cfg["iw_examples"], len(test_x))
        iw_nll = -metrics.iw_log_likelihood(model, test_x[:n_iw], cfg["iw_samples"], rng)
        kl_dim = metrics.kl_per_dim(mu, logvar)
    else:
        test, train = ae_evaluate(model, test_x), ae_evaluate(model, train_x)
        n_iw, iw_nll, kl_dim = 0, None, np.zeros(Z)

    # What the figures need, small: sorted KL spectrum, reconstructions, decoded N(0, I) codes.
    fig_rng = np.random.default_rng([cfg["seed"], 5])
    arrays = {"kl_per_dim": np.sort(kl_dim)[::-1], "activity": activity,
              "originals": test_x[:16], "reconstructions": model.reconstruct(test_x[:16]),
              "samples": model.sample(16, rng=fig_rng)}
    path = pathlib.Path(cfg["out"]) / "runs" / f"{cfg['model']}-{Z}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
    return {
        "model": cfg["model"], "latent": Z, "hidden": list(hidden), "epochs": cfg["epochs"],
        "test_loss": test["loss"], "test_recon": test["recon"], "test_kl": test["kl"],
        "test_iw_nll": iw_nll, "iw_samples": cfg["iw_samples"] if n_iw else None, "iw_examples": n_iw,
        "train_loss": train["loss"], "gap": test["loss"] - train["loss"],
        "active_units": active, "kl90": kl90(kl_dim), "params": model.num_params(), "samples_per_s": samples_per_s,
        "wall_s": time.perf_counter() - t0, "backend": model.backend, "diverged": diverged,
        "data": data.source, "settings": cfg["settings"],
    }


def kl90(kl_dim):
    """The fewest latents that hold 90% of the KL term (None when there is no KL)."""
    kl = np.sort(np.asarray(kl_dim, np.float64))[::-1]
    if kl.sum() <= 0:
        return None
    return int(np.searchsorted(np.cumsum(kl) / kl.sum(), 0.9) + 1)


def ae_evaluate(model, x, batch_size=1000):
    """The autoencoder's reconstruction loss Σ_pixels softplus(a) − x·a, averaged over x."""
    total = 0.0
    for s in range(0, len(x), batch_size):
        xb = np.asarray(x[s:s + batch_size], np.float64)
        a = np.asarray(model.decode_logits(model.encode(x[s:s + batch_size])[0]), np.float64)
        total += float(losses.bernoulli_nll(a, xb).sum())
    return {"loss": total / len(x), "recon": total / len(x), "kl": 0.0}


# ----------------------------------------------------------------------------------- the sweep


def settings_of(args):
    """Everything but Z and the model that a result depends on, and its short hash."""
    s = {"hidden": list(args.hidden), "epochs": args.epochs, "batch_size": args.batch_size,
         "lr": args.lr, "seed": args.seed, "binarize": args.binarize, "limit": args.limit,
         "data_dir": str(args.data_dir) if args.data_dir else None, "iw_samples": args.iw_samples,
         "iw_examples": args.iw_examples}
    return s, hashlib.sha1(json.dumps(s, sort_keys=True).encode()).hexdigest()[:12]


def run(args):
    if args.epochs is None:
        args.epochs = DEFAULT_EPOCHS
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir} is not a folder")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder")
    from minivae.backend import resolve
    from minivae.data import DataError, load_mnist

    backend = resolve(args.backend, "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # fail early, in one line, before any worker starts or anything is written
            data = load_mnist(args.data_dir, args.limit, seed=args.seed)
        except (DataError, ValueError) as e:
            raise UsageError(str(e)) from None
    client = _dask_client(args.scheduler) if args.scheduler else None

    settings, key = settings_of(args)
    results_path = args.out / "results.jsonl"
    previous = read_jsonl(results_path)
    rows = [r for r in previous if r.get("settings") == key]  # done before, with these settings
    old = [r for r in previous if r.get("settings") != key]  # kept as they are
    done = {(r["model"], r["latent"]) for r in rows}
    threads = 1 if args.jobs > 1 else None
    todo = [dict(settings, model=m, latent=z, backend=backend, out=str(args.out), settings=key,
                 threads=threads)
            for z in sorted(args.latents, reverse=True) for m in args.models if (m, z) not in done]
    say = (lambda *a: None) if args.quiet else print
    say(f"data: {data.source}")
    say(f"{len(todo)} runs to do, {len(args.latents) * len(args.models) - len(todo)} already in "
        f"{results_path}; {args.epochs} epochs, hidden {list(args.hidden)}, backend {backend}")

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "settings.json", json.dumps(dict(settings, key=key), indent=2) + "\n")
    bar = None
    if not args.quiet and sys.stderr.isatty() and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="runs", unit="run")
    t0 = time.perf_counter()
    failed = []
    for cfg, row in _execute(todo, args.jobs, client):
        if isinstance(row, BaseException):
            failed.append(f"{cfg['model']} Z={cfg['latent']}: {type(row).__name__}: {row}")
            print(f"minivae.sweep: run {failed[-1]}", file=sys.stderr)
            continue
        rows.append(row)
        write_jsonl(results_path, old + rows)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(last=f"{row['model']} Z={row['latent']}")
        say(f"  {row['model']:>3} Z={row['latent']:<5} test {row['test_loss']:7.2f}  "
            f"active {row['active_units']:4d}  {row['wall_s']:6.1f} s")
    if bar is not None:
        bar.close()
    if client is not None:
        client.close()
    wanted = {(m, z) for m in args.models for z in args.latents}
    rows = sorted((r for r in rows if (r["model"], r["latent"]) in wanted),
                  key=lambda r: (MODELS.index(r["model"]), r["latent"]))
    from minivae import plots

    plots.study_figures(args.out, rows)
    atomic_write_text(args.out / "report.md", report(rows, settings, data.source))
    say(f"wrote {args.out / 'report.md'}, results.jsonl and figures ({time.perf_counter() - t0:.0f} s)")
    if failed:
        print(f"minivae.sweep: {len(failed)} run(s) failed; run the same command again to retry them",
              file=sys.stderr)
        return 1
    return 0


def _execute(todo, jobs, client):
    """Yield (cfg, result row or the exception it raised) as runs finish: on a Dask cluster, or
    in a pool of worker processes. A failed run does not stop the others."""
    if not todo:
        return
    if client is not None:
        from dask.distributed import as_completed

        futures = client.map(run_one, todo, pure=False)
        cfg_of = {f.key: cfg for f, cfg in zip(futures, todo)}
    else:
        import concurrent.futures as cf
        import multiprocessing

        # "spawn": fresh interpreters, so no thread pool (BLAS, Numba) is inherited half-started.
        ex = cf.ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))
        futures = [ex.submit(run_one, cfg) for cfg in todo]
        cfg_of = {id(f): cfg for f, cfg in zip(futures, todo)}
        as_completed = cf.as_completed
    try:
        for fut in as_completed(futures):
            cfg = cfg_of[fut.key] if client is not None else cfg_of[id(fut)]
            try:
                yield cfg, fut.result()
            except Exception as e:  # reported, and retried by the next invocation
                yield cfg, e
    finally:
        if client is None:
            ex.shutdown(wait=True, cancel_futures=True)


def _dask_client(address):
    try:
        from dask.distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs dask.distributed: pip install 'minivae[dask]'") from None
    try:
        return Client(address, timeout="10s")
    except Exception as e:
        raise UsageError(f"cannot reach the Dask scheduler at {address}: {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------------- report


def _fmt(v, nd=1):
    return "–" if v is None else f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}"


def report(rows, settings, source):
    """The table and a short reading of it, every statement computed from the rows."""
    lines = ["# Latent-size study", "",
             f"Data: {source}.  ",
             f"Settings: hidden {settings['hidden']}, {settings['epochs']} epochs, batch "
             f"{settings['batch_size']}, Adam lr {settings['lr']}, {settings['binarize']} binarization, "
             f"seed {settings['seed']}. Log-likelihood: importance-weighted with K = "
             f"{settings['iw_samples']} on the first {settings['iw_examples']} test digits.", "",
             "| model | Z | test −ELBO | recon | KL | −log p(x) (IW) | active units | KL-90 | test − train | "
             "params | samples/s | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['latent']} | {_fmt(r['test_loss'])} | {_fmt(r['test_recon'])} | "
                     f"{_fmt(r['test_kl']) if r['model'] == 'vae' else '–'} | {_fmt(r['test_iw_nll'])} | "
                     f"{r['active_units']} | {_fmt(r.get('kl90'))} | {_fmt(r['gap'])} | {r['params']:,} | "
                     f"{r['samples_per_s']:,.0f} | {r['wall_s']:,.0f} |")
    lines += ["", "KL-90: the fewest latents that hold 90% of the KL term. "
              "For the autoencoder, test −ELBO is its reconstruction loss (it has no KL term and no "
              "likelihood), and its \"active units\" count code dimensions whose value varies across "
              "test digits (variance > 0.01), which says little for a code with no prior.", ""]
    vae = [r for r in rows if r["model"] == "vae" and not r.get("diverged")]
    if vae:
        lines += ["## Reading", ""]
        best = min(vae, key=lambda r: r["test_loss"])
        lines.append(f"- Best test −ELBO: {best['test_loss']:.1f} nats at Z = {best['latent']}.")
        big = [r for r in vae if r["latent"] > 784]
        if big:
            worst_big = max(big, key=lambda r: r["test_loss"])
            lines.append("- Above the data's 784 dimensions: "
                         + ", ".join(f"at Z = {r['latent']} the test −ELBO is {r['test_loss']:.1f}" for r in big)
                         + f" nats, at most {worst_big['test_loss'] - best['test_loss']:.1f} nats above the best.")
        top = max(vae, key=lambda r: r["active_units"])
        unused = [r for r in vae if r["active_units"] < r["latent"]]
        lines.append(f"- Active units: at most {top['active_units']} (at Z = {top['latent']}); "
                     + ", ".join(f"{r['active_units']} of {r['latent']}" for r in vae)
                     + (". Units beyond those stay at the prior (μ ≈ 0 for every digit)" if unused else "")
                     + ".")
        lines.append("- Train–test gap (test −ELBO minus train −ELBO): "
                     + ", ".join(f"{r['gap']:+.1f} at Z = {r['latent']}" for r in vae) + " nats.")
        iw = [r for r in vae if r["test_iw_nll"] is not None]
        if iw:
            lines.append("- Importance weighting tightens the bound by "
                         + ", ".join(f"{r['test_loss'] - r['test_iw_nll']:.1f}" for r in iw)
                         + " nats (same order of Z).")
    ae = {r["latent"]: r for r in rows if r["model"] == "ae"}
    both = [r for r in vae if r["latent"] in ae]
    if both:
        lines.append("- Reconstruction loss, VAE vs autoencoder: "
                     + ", ".join(f"Z = {r['latent']}: {r['test_recon']:.1f} vs {ae[r['latent']]['test_recon']:.1f}"
                                 for r in both) + " nats.")
    lines += ["", "Figures: `metrics_vs_latent.png`, `active_units.png`, `kl_spectra.png`, "
              "`samples_by_latent.png`, `reconstructions_by_latent.png`, `vae_vs_ae.png`.", ""]
    return "\n".join(lines)


def main(argv=None):
    try:
        return run(parse_args(argv))
    except UsageError as e:
        print(f"minivae.sweep: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
