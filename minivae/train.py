"""The main job: ``python -m minivae.train --latent 1000`` trains a VAE on MNIST and writes into
``--out DIR``:

    metrics.jsonl        per epoch: train_loss, test_loss, …, samples_per_s (first_step_s apart)
    config.json          the options of the run (:class:`minivae.config.RunConfig`)
    checkpoint.npz       parameters, Adam, generators, epoch and step (:mod:`minivae.checkpoint`)
    summary.json         the importance-weighted log-likelihood and the last epoch's row
    reconstructions.png  test digits over their reconstructions
    samples.png          decoded draws z ~ N(0, I)
    kl_per_dim.png       per-dimension KL, sorted: how many latents the model uses
    loss_curve.png       train and test negative ELBO per epoch

It reads top to bottom: 1. parse the options (``--resume``: the checkpoint's), 2. build the model,
Adam and the data, 3. the training loop (:mod:`minivae.loop`), the test metrics, the metrics row and
a checkpoint after each epoch, 4. evaluate the final model and save its figures.

Faults, each one line on stderr (the guards are :mod:`minivae.guards`): bad input exit 2, nothing
written; a diverging loss or a full disk exit 1, the last checkpoint kept (after a divergence, with
the command that trains the run again at a tenth of the rate); Ctrl-C or SIGTERM exit 130 / 143,
during training after saving a checkpoint. A fresh run refuses a folder holding a run (``--resume``
or ``--overwrite`` it) or a sweep; one run at a time writes into a folder (a lock on ``.lock``); a
resumed run refuses options that contradict its checkpoint, and a finished one says it is complete.

Everything random comes from generators seeded by ``--seed`` (``s``): the initial weights [s, 0],
the noise ε [s, 1], the data order and binarization [s, 2], each epoch's evaluation [s, 3, epoch],
the final log-likelihood [s, 4], the figures [s, 5]. The checkpoint saves those that carry a run
forward (ε's, the data's) and an interrupted epoch's sums: ``--resume`` goes on bit for bit.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import shlex
import signal
import sys
import time

import numpy as np

from minivae import checkpoint, cli, files, loop, metrics
from minivae.checkpoint import CheckpointError
from minivae.cli import EXIT_FAILED, UsageError, usable_path
from minivae.config import ConfigError, RunConfig
from minivae.data import D, binarize_fixed, fingerprint
from minivae.files import CHECKPOINT, CONFIG, RUN_FILES, atomic_write_text, read_metrics, refuse_foreign, write_jsonl
from minivae.guards import DeferredSignals, OutFolder, Stopped, disk_errors, enough_memory, remove_temporaries
from minivae.optim import Adam
from minivae.schedule import schedule
from minivae.vae import VAE

NAME = "minivae.train"  # what its messages start with
ARTIFACTS = RUN_FILES  # the files a run writes: a folder holding any of them holds a run
SUMMARY = "summary.json"
DEFAULT_EPOCHS = 30


class Complete(Exception):  # --resume of a run that has trained every epoch and written its summary
    pass


# 1. Parse: the options, or the checkpoint's -------------------------------------------------------
def _parser():
    p = cli.Parser(
        prog=cli.program(NAME, "minivae-train"),
        description="Train a VAE on MNIST; write metrics, a checkpoint and figures.",
    )
    p.add_argument("--latent", type=cli.positive_int, default=20, help="latent dimension Z")
    p.add_argument("--beta", type=cli.non_negative_float, default=1.0, help="weight of the KL term")
    p.add_argument("--out", type=cli.path, default=None, help="output folder (default runs/latent<Z>)")
    resume = "continue the run in DIR with its options (--epochs may raise the total, --data-dir find its data)"
    p.add_argument("--resume", type=cli.path, default=None, metavar="DIR", help=resume)
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (else a run there is refused)")
    cli.add_training_options(p, epochs=DEFAULT_EPOCHS, iw_samples=50)
    return p


def parse_args(argv=None):
    args = _parser().parse_args(argv)
    args.given = cli.given_options(_parser(), argv)  # a resumed run refuses those that contradict it
    return args


def options(args):
    """(config, output folder, checkpoint or None): a fresh run's from the options; a resumed
    run's from its checkpoint, checked against the options given."""
    if args.resume is None:
        data_dir = os.path.abspath(args.data_dir) if args.data_dir is not None else None  # resumable anywhere
        epochs = DEFAULT_EPOCHS if args.epochs is None else args.epochs
        if epochs == 0:  # no checkpoint would be written: nothing to load or resume
            raise UsageError("--epochs 0 trains nothing: give at least 1")
        config = RunConfig.from_options(args, data_dir=data_dir, epochs=epochs)
        out = args.out if args.out is not None else pathlib.Path("runs") / f"latent{args.latent}"
        usable_path(out, "--out")
        refuse_foreign(out, "--out", "run")
        return config, out, None
    if args.overwrite:
        raise UsageError("--overwrite replaces a run, --resume continues one: give one of them")
    out, path = args.resume, args.resume / CHECKPOINT
    usable_path(out, "--resume")
    refuse_foreign(out, "--resume", "run")
    try:
        ck = checkpoint.read(path)
        config = RunConfig.from_json(checkpoint.check(ck, path)[0])
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    except ConfigError as e:
        raise UsageError(f"{path}: its config's {e}") from None
    return config.resumed(args, getattr(args, "given", set()), int(ck["epoch"]), out), out, ck


def _check_folder(folder, config, ck, args):
    """In the locked folder: the run files a fresh run replaces (only with --overwrite), or that a
    resumed run is complete; and the run's data folder. Returns the run files to replace."""
    present = files.run_files_to_replace(folder, args.overwrite) if ck is None else []
    if ck is not None and (int(ck["epoch"]), int(ck["step"])) == (config.epochs, 0) and (folder / SUMMARY).is_file():
        raise Complete(
            f"the run in {folder} is complete ({config.epochs} epochs, {SUMMARY} written): nothing to do; "
            f"--epochs more than {config.epochs} trains it further"
        )
    if config.data_dir is not None and not cli.require_folder(pathlib.Path(config.data_dir), "--data-dir", False):
        if args.data_dir is not None:
            raise UsageError(f"--data-dir {args.data_dir} is not a folder")
        raise UsageError(
            f"the run's data folder {config.data_dir} is gone: give --data-dir to say where its data are now"
        )
    return present


# 2. Build: the model, Adam, the data — restored from the checkpoint when resuming -----------------
def build(config, ck, quiet):
    """(model, Adam, data, data generator, running sums of an interrupted epoch or None)."""
    try:
        vae = VAE(D, config.latent, config.hidden, seed=config.seed, beta=config.beta, backend=config.backend)
    except (ValueError, ImportError, RuntimeError) as e:
        raise UsageError(f"cannot create the model: {e}") from None
    data = cli.load_digits(config.data_dir, config.limit, seed=config.seed, progress=not quiet and sys.stderr.isatty())
    opt, data_rng = Adam(vae.params, lr=config.lr), np.random.default_rng([config.seed, 2])
    if ck is None:
        return vae, opt, data, data_rng, None
    try:
        checkpoint.check_data(ck, len(data.train_x), fingerprint(data), config.batch_size)
    except CheckpointError as e:
        raise UsageError(f"{e} ({data.source}): give --data-dir to point to the run's data") from None
    try:
        checkpoint.restore(ck, vae, opt, data_rng)
    except ValueError as e:
        raise UsageError(f"checkpoint {CHECKPOINT} does not match its config: {e}") from None
    return vae, opt, data, data_rng, checkpoint.running(ck)


# 3. The loop: epochs of steps; after each, the test metrics, its row and a checkpoint -------------
class Run:
    """One run under way: its config, folder, model, optimizer, data and where it stands."""

    def __init__(self, config, out, quiet, fresh):
        self.config, self.out, self.quiet, self.fresh = config, out, quiet, fresh
        self.stage, self.saved, self.history, self.first_step = "start-up", None, [], None  # [n, s, said]

    def where(self):
        """(stage, what is kept): for the one line of a run that stops (:mod:`minivae.guards`)."""
        out, saved = self.out, self.saved
        if self.stage == "start-up":
            return self.stage, "nothing was written" if self.fresh else f"{out} is unchanged"
        if saved is None:
            return self.stage, "no checkpoint was saved yet"
        return (
            self.stage,
            f"the checkpoint of {checkpoint.position(*saved)} in {out} is kept; continue with --resume {out}",
        )

    def save(self, epoch_start, epoch, step, running=None):
        checkpoint.save(
            self.out / CHECKPOINT, self.vae, self.opt, self.data_rng, epoch_start, epoch, step, self.config.to_json(),
            running=running, n_train=self.n, data_id=self.data_id,
        )  # fmt: skip
        self.saved = (epoch, step)


def train(run, signals, first, skip, running):
    """The epochs ``first`` … config.epochs (the first one resumed after ``skip`` steps with its
    ``running`` sums). Returns an exit code when the run stops early, else None."""
    config, bs = run.config, run.config.batch_size
    steps = math.ceil(run.n / bs)
    lr_at = schedule(config.epochs * steps, config.lr, config.lr_schedule, config.decay_frac)
    show = not run.quiet and sys.stderr.isatty()
    for epoch, start, x_epoch, order in loop.epochs(
        run.train_x, config.binarize, bs, run.data_rng, first, config.epochs
    ):
        resumed = epoch == first and skip > 0
        sums = dict(running) if resumed and running else {"loss_sum": 0.0, "seen": 0, "train_s": 0.0}
        bar = cli.progress_bar(steps, f"epoch {epoch}/{config.epochs}", show)
        signals.deferred = True
        step, loss, why = _epoch(run, signals, x_epoch, order, skip if resumed else 0, sums, bar, lr_at)
        if why == "diverged":
            kept = (
                f"the checkpoint of {checkpoint.position(*run.saved)} is kept"
                if run.saved
                else "no checkpoint was saved"
            )
            cli.report(
                NAME,
                f"loss became {loss} at epoch {epoch}, step {step}; stopping ({kept}); to train again at a "
                f"tenth of the rate: {cli.program(NAME, 'minivae-train')} {shlex.join(config.retry_argv(run.out))}",
            )
            return EXIT_FAILED
        if why == "stop":
            run.save(json.dumps(start), epoch - 1, step, running=sums)
            where = f"at epoch {epoch}, step {step}"
        else:
            run.posterior = _end_epoch(run, epoch, json.dumps(start), sums)
            where = f"after epoch {epoch}"
        if signals.requested is not None:  # in the steps, or during the evaluation or the writes
            name = signal.Signals(signals.requested).name
            cli.report(NAME, f"{name}: interrupted {where}; checkpoint saved, continue with --resume {run.out}")
            return 128 + int(signals.requested)
    signals.deferred = False
    return None


def _epoch(run, signals, x_epoch, order, skip, sums, bar, lr_at):
    """One epoch of steps (:func:`minivae.loop.run_epoch`), growing ``sums``; a signal stops it after a step."""
    t0, before_s, steps = time.perf_counter(), sums["train_s"], [0]

    def after_step(step, loss, n, seconds):
        sums["seen"] += n
        sums["loss_sum"] += loss * n
        sums["train_s"] = before_s + time.perf_counter() - t0
        steps[0] += 1
        run.first_step = run.first_step or [n, seconds, False]  # it compiles: left out of samples_per_s
        if bar is not None:
            bar.update(1 + (skip if steps[0] == 1 else 0))
            bar.set_postfix(loss=f"{loss:.1f}", samples_per_s=f"{sums['seen'] / sums['train_s']:.0f}")
        return signals.requested is not None

    result = loop.run_epoch(run.vae, run.opt, x_epoch, order, after_step, skip=skip, lr_at=lr_at)
    sums["train_s"] = before_s + time.perf_counter() - t0
    if bar is not None:
        bar.close()
    return result


def _end_epoch(run, epoch, epoch_start, sums):
    """The epoch's test metrics, its row in metrics.jsonl, its checkpoint and its line."""
    row, posterior = loop.evaluate(run.vae, run.test_x, np.random.default_rng([run.config.seed, 3, epoch]))
    first = run.first_step if run.first_step is not None and not run.first_step[2] else None
    row = {"epoch": epoch, "train_loss": sums["loss_sum"] / max(sums["seen"], 1), **row}
    row["samples_per_s"] = loop.steady_rate(sums["seen"], sums["train_s"], first)
    if first is not None:
        row["first_step_s"], first[2] = first[1], True
    run.history.append(row)
    write_jsonl(run.out / "metrics.jsonl", run.history)  # a first signal waits until both are written
    run.save(epoch_start, epoch, 0)
    cli.say(
        f"epoch {epoch:3d}  train {row['train_loss']:7.2f}  test {row['test_loss']:7.2f}"
        f"  (recon {row['test_recon']:7.2f} + KL {row['test_kl']:6.2f})"
        f"  active {row['active_units']:4d}/{run.config.latent}  directions {row['directions']:4d}"
        f"  {row['samples_per_s']:7.0f} samples/s"
        + (f" (first step {row['first_step_s']:.2f} s, not counted)" if "first_step_s" in row else ""),
        quiet=run.quiet,
    )
    return posterior


# 4. Evaluate and save: the final model's log-likelihood, its figures and the summary --------------
def finish(run, source, wall0):
    """The end: the importance-weighted log-likelihood, the figures, the summary."""
    from minivae import plots

    config, out, test_x, last = run.config, run.out, run.test_x, (run.history or [None])[-1]
    run.stage = "the final evaluation"
    k, n_iw = config.iw_samples, min(config.iw_examples, len(test_x))
    iw_ll = metrics.iw_log_likelihood(run.vae, test_x[:n_iw], k, np.random.default_rng([config.seed, 4]))
    run.stage = "the figures"
    mu, logvar = run.posterior if run.posterior is not None else metrics.posterior_means(run.vae, test_x)
    plots.save_all(out, run.vae, test_x, mu, logvar, run.history, np.random.default_rng([config.seed, 5]))
    run.stage = "the summary"
    summary = {"data": source, "iw_samples": k, "iw_examples": n_iw, "test_iw_nll": -iw_ll}
    summary.update(wall_s=time.perf_counter() - wall0, final=last)
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    words = "final test: −ELBO {test_loss:.2f} nats (recon {test_recon:.2f} + KL {test_kl:.2f}), active units"
    final = f"{words.format(**last)} {last['active_units']}/{config.latent}" if last else "no epochs trained"
    iw = f"test log-likelihood ≈ {iw_ll:.2f} nats (importance-weighted, K={k}, first {n_iw} test digits)"
    cli.say(
        "", f"data: {source}", final, iw, f"artifacts in {out}/ ({time.perf_counter() - wall0:.0f} s)", quiet=run.quiet
    )
    return 0


# The command: parse, build, loop, evaluate, save — inside the guards ------------------------------
def run(args):
    """Validate, load, train, evaluate, write. Returns the exit code."""
    config, out, ck = options(args)
    job = Run(config, out, args.quiet, fresh=ck is None)
    try:
        with DeferredSignals(job.where) as signals, disk_errors(job.where), np.errstate(all="ignore"):
            return _run(job, args, ck, signals)
    except Complete as e:
        cli.say(str(e))  # one line, even with --quiet: it is why nothing happened
        return 0
    except Stopped as e:
        cli.report(NAME, str(e))
        return e.code


def _run(job, args, ck, signals):
    config, out = job.config, job.out
    needed, P = config.memory_needed()
    what = f"this run ({P:,} parameters, batch {config.batch_size}, K = {config.iw_samples} importance samples)"
    with OutFolder(out, "--resume" if ck is not None else "--out", "run"), enough_memory(needed, what, job.where):
        replace = _check_folder(out, config, ck, args)
        job.history = read_metrics(out / "metrics.jsonl", int(ck["epoch"])) if ck is not None else []
        job.vae, job.opt, data, job.data_rng, running = build(config, ck, args.quiet)
        if config.batch_size > len(data.train_x):  # every step would take them all, silently
            raise UsageError(f"--batch-size {config.batch_size} is more than the {len(data.train_x):,} training digits")
        # The run starts: now the output folder may be written.
        stale, stale_bytes = remove_temporaries(out, ARTIFACTS)
        for name in replace:  # --overwrite: the old run goes first
            (out / name).unlink()
        atomic_write_text(out / CONFIG, json.dumps(config.to_json(), indent=2) + "\n")
        job.stage = "training"
        if stale:
            cli.say(f"removed {stale} temporary file(s) ({cli.size_text(stale_bytes)}) left in {out}", quiet=job.quiet)
        cli.say_data(data, job.quiet)
        cli.say(
            f"model: D={D}, Z={config.latent}, hidden={list(config.hidden)}, {job.vae.num_params():,} parameters, "
            f"backend {job.vae.backend}",
            quiet=job.quiet,
        )
        job.n, job.data_id, job.train_x, job.posterior = len(data.train_x), fingerprint(data), data.train_x, None
        job.test_x = binarize_fixed(data.test_x, config.binarize)
        wall0 = time.perf_counter()
        first, skip = (int(ck["epoch"]) + 1, int(ck["step"])) if ck is not None else (1, 0)
        code = train(job, signals, first, skip, running)
        return code if code is not None else finish(job, data.source, wall0)


def main(argv=None):
    # Ctrl-C before run() took over the signals (while parsing or importing): one line, exit 130.
    return cli.run_command(NAME, run, parse_args, argv, interrupted="interrupted during start-up; nothing was written")


if __name__ == "__main__":
    sys.exit(main())
