"""The main job: ``python -m minivae.train --latent 1000`` trains a VAE on MNIST and writes into
``--out DIR``:

    metrics.jsonl        one JSON object per epoch (epoch, train_loss, test_loss, test_recon,
                         test_kl, active_units, directions, participation_ratio, samples_per_s)
    config.json          the options of the run
    checkpoint.npz       parameters, Adam state, random-generator states, epoch and step
    reconstructions.png  test digits over their reconstructions
    samples.png          decoded draws z ~ N(0, I)
    kl_per_dim.png       per-dimension KL, sorted: how many latents the model uses
    loss_curve.png       train and test negative ELBO per epoch

The loop, one epoch:

    draw the epoch's binarization of the training digits        (dynamic: fresh each epoch)
    for each shuffled mini-batch x (B, D):
        loss = vae.forward(x)          batch mean of the negative ELBO, one ε per example
        grads = vae.backward()         ∂loss/∂θ for every parameter
        opt.step(grads)                Adam
    evaluate on the test digits: −ELBO, reconstruction, KL, active units

Everything random comes from three seeded generators — the model's weights and its noise ε
(inside :class:`minivae.VAE`), the data order and binarization (``data_rng``), and evaluation
(``eval_rng``, re-seeded each epoch) — and all are saved in the checkpoint, so ``--resume`` continues
exactly where a run stopped: the parameters come out bit for bit as without the interruption.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import signal
import sys
import tempfile
import time
import warnings

import numpy as np

from minivae import metrics
from minivae.data import DataError, batches, binarize, load_mnist
from minivae.optim import Adam
from minivae.vae import VAE

CHECKPOINT = "checkpoint.npz"
EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """Bad input from the user: reported as one line with exit code 2."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _number(convert, accept, what):
    """An argparse type: ``convert`` the text, then require ``accept(value)``, else say ``what``."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
_non_negative_float = _number(float, lambda v: v >= 0 and math.isfinite(v), "a non-negative number")


def _widths(text):
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 512,256, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths like 512,256, got {text!r}")
    return widths


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not usage + message."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_training_options(p):
    """The options a training run takes (shared with :mod:`minivae.sweep`)."""
    from minivae.backend import BACKENDS

    p.add_argument("--hidden", type=_widths, default=(512,), metavar="H1,H2",
                   help="hidden widths of the encoder; the decoder mirrors them (default 512)")
    p.add_argument("--epochs", type=_non_negative_int, default=None, help="passes over the data")
    p.add_argument("--batch-size", type=_positive_int, default=128, help="mini-batch size B (128)")
    p.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (1e-3)")
    p.add_argument("--seed", type=int, default=0, help="seeds weights, noise, data order (0)")
    p.add_argument("--binarize", choices=("dynamic", "static", "none"), default="dynamic",
                   help="pixels as Bernoulli draws: fresh each epoch (dynamic, default), "
                        "one fixed draw (static), or grey levels (none)")
    p.add_argument("--data-dir", type=pathlib.Path, default=None,
                   help="a folder of MNIST IDX files to use instead of the download cache")
    p.add_argument("--limit", type=_positive_int, default=None, help="use the first N training digits")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="implementation of the step (default auto: the fastest usable)")
    p.add_argument("--iw-samples", type=_positive_int, default=50, metavar="K",
                   help="importance samples for the final log-likelihood estimate (50)")
    p.add_argument("--iw-examples", type=_positive_int, default=1000, metavar="N",
                   help="test digits the log-likelihood estimate averages over (1000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def parse_args(argv=None):
    p = _Parser(prog="python -m minivae.train",
                description="Train a VAE on MNIST; write metrics, a checkpoint and figures.")
    p.add_argument("--latent", type=_positive_int, default=20, help="latent dimension Z (20)")
    p.add_argument("--beta", type=_non_negative_float, default=1.0, help="weight of the KL term (1)")
    p.add_argument("--out", type=pathlib.Path, default=None, help="output folder (runs/latent<Z>)")
    p.add_argument("--resume", type=pathlib.Path, default=None, metavar="DIR",
                   help="continue the run in DIR from its checkpoint (its options are reused; "
                        "--epochs may raise the total)")
    add_training_options(p)
    return p.parse_args(argv)


DEFAULT_EPOCHS = 30


# --------------------------------------------------------------------------------------------
# Files: written to a temporary name in the same folder, then renamed
# --------------------------------------------------------------------------------------------


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def read_jsonl(path):
    """The rows of a JSON-lines file, [] when there is none."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path, rows):
    """Write rows as JSON lines, atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _rng_state(rng):
    return np.array(json.dumps(rng.bit_generator.state))


def _set_rng_state(rng, state):
    rng.bit_generator.state = json.loads(str(state))


def save_checkpoint(path, vae, opt, data_rng, epoch_rng_state, epoch, step, config):
    """Parameters, Adam moments, the generators, and the position (epoch done, steps into next)."""
    arrays = {"param/" + k: v for k, v in vae.get_params().items()}
    arrays.update({"opt/" + k: v for k, v in opt.state_dict().items()})
    arrays["rng/model"] = _rng_state(vae.rng)
    arrays["rng/data"] = _rng_state(data_rng)
    arrays["rng/epoch_start"] = np.array(epoch_rng_state)
    arrays["epoch"] = np.array(epoch)
    arrays["step"] = np.array(step)
    arrays["config"] = np.array(json.dumps(config))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path):
    try:
        with np.load(path, allow_pickle=False) as ck:
            return {k: ck[k] for k in ck.files}
    except FileNotFoundError:
        raise UsageError(f"no checkpoint at {path}") from None
    except Exception as e:  # a truncated or foreign file
        raise UsageError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class _Interrupt:
    """Ctrl-C sets a flag; the loop finishes its step, saves and exits with 130."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self._old)


def _progress(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def _say(quiet, *lines):
    if not quiet:
        for line in lines:
            print(line, flush=True)


def run(args):
    """Validate, load, train, evaluate, write. Returns the exit code."""
    # 1. Everything that can be wrong with the input is checked before anything is written.
    if args.resume is not None:
        ck = load_checkpoint(args.resume / CHECKPOINT)
        config = json.loads(str(ck["config"]))
        if args.epochs is not None:
            config["epochs"] = args.epochs
        out = args.resume
    else:
        ck = None
        config = {k: v for k, v in vars(args).items() if k not in ("resume", "out", "quiet")}
        config["hidden"] = list(args.hidden)
        config["data_dir"] = str(args.data_dir) if args.data_dir is not None else None
        config["epochs"] = DEFAULT_EPOCHS if args.epochs is None else args.epochs
        out = args.out if args.out is not None else pathlib.Path("runs") / f"latent{args.latent}"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if args.data_dir is not None and not args.data_dir.is_dir() and ck is None:
        raise UsageError(f"--data-dir {args.data_dir} is not a folder")

    try:
        vae = VAE(784, config["latent"], tuple(config["hidden"]), seed=config["seed"],
                  beta=config["beta"], backend=config["backend"])
    except (ValueError, ImportError, RuntimeError) as e:
        raise UsageError(f"cannot create the model: {e}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback to the offline sample is said in `source`
        try:
            data = load_mnist(config["data_dir"], config["limit"], seed=config["seed"],
                              progress=not args.quiet and sys.stderr.isatty())
        except (DataError, ValueError) as e:
            raise UsageError(str(e)) from None

    opt = Adam(vae.params, lr=config["lr"])
    data_rng = np.random.default_rng([config["seed"], 2])
    start_epoch, start_step = 0, 0
    if ck is not None:
        try:
            vae.set_params({k[6:]: v for k, v in ck.items() if k.startswith("param/")})
            opt.load_state_dict({k[4:]: v for k, v in ck.items() if k.startswith("opt/")})
        except (KeyError, ValueError) as e:
            raise UsageError(f"checkpoint does not match its config: {e}") from None
        _set_rng_state(vae.rng, ck["rng/model"])
        start_epoch, start_step = int(ck["epoch"]), int(ck["step"])
        # Mid-epoch: replay the epoch's data order from its start, skipping the steps done.
        _set_rng_state(data_rng, ck["rng/epoch_start"] if start_step else ck["rng/data"])

    # 2. Now the output folder may be written.
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    history = []  # the rows of metrics.jsonl up to the epoch a resumed run starts after
    if ck is not None:
        history = [r for r in read_jsonl(out / "metrics.jsonl") if r["epoch"] <= start_epoch]
    quiet = args.quiet
    _say(quiet, f"data: {data.source}",
         f"model: D=784, Z={config['latent']}, hidden={config['hidden']}, "
         f"{vae.num_params():,} parameters, backend {vae.backend}")

    train_x = data.train_x
    test_x = binarize(data.test_x, "static" if config["binarize"] != "none" else "none")
    n, bs = len(train_x), config["batch_size"]
    steps_per_epoch = math.ceil(n / bs)
    show_bar = not quiet and sys.stderr.isatty()
    wall0 = time.perf_counter()
    posterior = None  # (μ, log σ²) of the test digits after the last epoch run here

    with _Interrupt() as interrupt:
        for epoch in range(start_epoch + 1, config["epochs"] + 1):
            epoch_rng_state = json.dumps(data_rng.bit_generator.state)
            x_epoch = binarize(train_x, config["binarize"], data_rng)
            bar = _progress(steps_per_epoch, f"epoch {epoch}/{config['epochs']}", show_bar)
            t0, seen, loss_sum, steps = time.perf_counter(), 0, 0.0, 0
            skip = start_step if epoch == start_epoch + 1 else 0
            for step, idx in enumerate(batches(n, bs, data_rng)):
                if step < skip:
                    continue
                loss = vae.forward(x_epoch[idx])
                if not math.isfinite(loss):
                    if bar is not None:
                        bar.close()
                    print(f"minivae.train: loss became {loss} at epoch {epoch}, step {step + 1}; "
                          f"stopping (the last good checkpoint in {out} is kept)", file=sys.stderr)
                    return EXIT_DIVERGED
                opt.step(vae.backward())
                seen += len(idx)
                loss_sum += loss * len(idx)
                steps += 1
                if bar is not None:
                    bar.update(1 + (skip if steps == 1 else 0))
                    bar.set_postfix(loss=f"{loss:.1f}", samples_per_s=f"{seen / (time.perf_counter() - t0):.0f}")
                if interrupt.requested:
                    if bar is not None:
                        bar.close()
                    save_checkpoint(out / CHECKPOINT, vae, opt, data_rng, epoch_rng_state,
                                    epoch - 1, step + 1, config)
                    print(f"minivae.train: interrupted at epoch {epoch}, step {step + 1}; checkpoint "
                          f"saved, continue with --resume {out}", file=sys.stderr)
                    return EXIT_INTERRUPTED
            if bar is not None:
                bar.close()
            train_time = time.perf_counter() - t0

            row, posterior = _evaluate_epoch(vae, test_x, config["seed"], epoch)
            row = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), **row,
                   "samples_per_s": seen / train_time}
            history.append(row)
            write_jsonl(out / "metrics.jsonl", history)
            save_checkpoint(out / CHECKPOINT, vae, opt, data_rng, epoch_rng_state, epoch, 0, config)
            _say(quiet, f"epoch {epoch:3d}  train {row['train_loss']:7.2f}  test {row['test_loss']:7.2f}"
                        f"  (recon {row['test_recon']:7.2f} + KL {row['test_kl']:6.2f})"
                        f"  active {row['active_units']:4d}/{config['latent']}"
                        f"  directions {row['directions']:4d}"
                        f"  {row['samples_per_s']:7.0f} samples/s")

    # 3. The end: log-likelihood, figures, summary.
    k, n_iw = config["iw_samples"], min(config["iw_examples"], len(test_x))
    iw_ll = metrics.iw_log_likelihood(vae, test_x[:n_iw], k, np.random.default_rng([config["seed"], 4]))
    from minivae import plots

    mu, logvar = posterior if posterior is not None else metrics.posterior_means(vae, test_x)
    plots.save_all(out, vae, test_x, mu, logvar, history, np.random.default_rng([config["seed"], 5]))
    last = history[-1] if history else None
    summary = {"data": data.source, "iw_samples": k, "iw_examples": n_iw, "test_iw_nll": -iw_ll,
               "wall_s": time.perf_counter() - wall0, "final": last}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _say(quiet, "",
         f"data: {data.source}",
         (f"final test: −ELBO {last['test_loss']:.2f} nats (recon {last['test_recon']:.2f} + "
          f"KL {last['test_kl']:.2f}), active units {last['active_units']}/{config['latent']}")
         if last else "no epochs trained",
         f"test log-likelihood ≈ {iw_ll:.2f} nats (importance-weighted, K={k}, first {n_iw} test digits)",
         f"artifacts in {out}/ ({time.perf_counter() - wall0:.0f} s)")
    return 0


def _evaluate_epoch(vae, test_x, seed, epoch):
    """The epoch's test metrics, and the (μ, log σ²) of the test digits they were computed from."""
    eval_rng = np.random.default_rng([seed, 3, epoch])
    mu, logvar = metrics.posterior_means(vae, test_x)
    ev = metrics.evaluate(vae, test_x, eval_rng, posterior=(mu, logvar))
    au, _ = metrics.active_units(mu)
    directions = metrics.latent_directions(mu)
    row = {"test_loss": ev["loss"], "test_recon": ev["recon"], "test_kl": ev["kl"], "active_units": au,
           "directions": directions["directions"], "participation_ratio": directions["participation_ratio"]}
    return row, (mu, logvar)


def main(argv=None):
    try:
        args = parse_args(argv)
        return run(args)
    except UsageError as e:
        print(f"minivae.train: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
