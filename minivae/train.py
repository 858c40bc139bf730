"""The main job: ``python -m minivae.train --latent 1000`` trains a VAE on MNIST and writes into
``--out DIR``:

    metrics.jsonl        one JSON object per epoch (epoch, train_loss, test_loss, test_recon,
                         test_kl, active_units, directions, participation_ratio, samples_per_s;
                         first_step_s in the epoch of the process's first step, which compiles
                         the kernels and is left out of samples_per_s)
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

Faults. Bad input is one line on stderr and exit code 2 (nothing written); a run that fails once
started (a diverging loss, a full disk) one line and exit 1, its last checkpoint kept; Ctrl-C or
SIGTERM exit 130 / 143, during training after saving a checkpoint. A fresh run refuses a folder
that holds a run (``--resume`` it, or ``--overwrite`` it); one run at a time writes into a folder
(a lock on ``.lock``); a resumed run refuses options that contradict its checkpoint, and
``--data-dir`` tells it where its data are now. Temporary files a killed run left are removed at
the next start. The bytes a run needs are estimated before anything is allocated. A stdout that
cannot be written (``| head -n 1``, ``> /dev/full``) ends the run's printed lines, not the run.

Everything random comes from six generators seeded by ``--seed`` (``s``): the model's initial
weights ([s, 0]) and its noise ε ([s, 1], inside :class:`minivae.VAE`), the data order and
binarization (``data_rng``, [s, 2]), the evaluation after each epoch ([s, 3, epoch], re-seeded every
epoch), the final log-likelihood estimate ([s, 4]) and the figures' samples ([s, 5]). The checkpoint
saves the two that carry a run forward — the noise generator's state and the data generator's (also
as it was at the epoch's start, to replay an interrupted epoch); the weights' generator is spent
once the weights exist (they are saved as parameters), and the other three are re-seeded when used.
So ``--resume`` continues exactly where a run stopped: the parameters come out bit for bit as
without the interruption, and so does the interrupted epoch's train loss (its running sums are
saved too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shlex
import signal
import sys
import time
import warnings

import numpy as np

from minivae import cli, loop, metrics
from minivae.cli import EXIT_FAILED, UsageError
from minivae.data import D, DataError, binarize_fixed, fingerprint, load_mnist
from minivae.files import (
    CHECKPOINT,
    RUN_FILES,
    CheckpointError,
    JsonlError,
    WriteError,
    atomic_write_text,
    read_checkpoint,
    read_jsonl,
    refuse_foreign,
    save_checkpoint,
    set_rng_state,
    write_jsonl,
)
from minivae.guards import FolderLock
from minivae.optim import Adam
from minivae.schedule import DECAY_FRAC, SCHEDULES, schedule
from minivae.vae import VAE

NAME = "minivae.train"  # what its messages start with
ARTIFACTS = RUN_FILES  # the files a run writes: a folder holding any of them holds a run
EXIT_DIVERGED = EXIT_FAILED
DEFAULT_EPOCHS = 30
RESUME_OPTIONS = {"resume", "epochs", "data_dir", "quiet"}  # what a resumed run may be given


class Complete(Exception):
    """``--resume`` of a run that has trained every epoch and written its summary: nothing to do."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM outside the training steps; ``signum`` says which."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _parser():
    p = cli.Parser(
        prog=cli.program("minivae.train", "minivae-train"),
        description="Train a VAE on MNIST; write metrics, a checkpoint and figures.",
    )
    p.add_argument("--latent", type=cli.positive_int, default=20, help="latent dimension Z")
    p.add_argument("--beta", type=cli.non_negative_float, default=1.0, help="weight of the KL term")
    p.add_argument("--out", type=cli.path, default=None, help="output folder (default runs/latent<Z>)")
    p.add_argument(
        "--resume",
        type=cli.path,
        default=None,
        metavar="DIR",
        help="continue the run in DIR from its checkpoint (its options are reused; "
        "--epochs may raise the total, --data-dir point to its data elsewhere)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (without it, a folder holding a run is refused)",
    )
    cli.add_training_options(p, epochs=DEFAULT_EPOCHS, iw_samples=50)
    return p


def parse_args(argv=None):
    args = _parser().parse_args(argv)
    # Which options were given on the command line (not defaulted): a resumed run refuses those
    # that contradict its checkpoint.
    explicit = _parser()
    for action in explicit._actions:
        action.default = argparse.SUPPRESS
    args.given = set(vars(explicit.parse_args(argv)))
    return args


_CONFIG_TYPES = {  # key: (check, what) of a checkpoint's config
    "latent": (lambda v: _is_int(v, 1), "a positive integer"),
    "hidden": (
        lambda v: isinstance(v, list) and bool(v) and all(_is_int(h, 1) for h in v),
        "a list of positive widths",
    ),
    "seed": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "beta": (lambda v: _is_number(v) and v >= 0, "a non-negative number"),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "batch_size": (lambda v: _is_int(v, 1), "a positive integer"),
    "epochs": (lambda v: _is_int(v, 0), "a non-negative integer"),
    "limit": (lambda v: v is None or _is_int(v, 1), "a positive integer or null"),
    "binarize": (lambda v: v in ("dynamic", "static", "none"), "dynamic, static or none"),
    "backend": (lambda v: isinstance(v, str), "a backend name"),
    "data_dir": (lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "a path or null"),
    "iw_samples": (lambda v: _is_int(v, 1), "a positive integer"),
    "iw_examples": (lambda v: _is_int(v, 1), "a positive integer"),
}
_CONFIG_OPTIONAL = {  # key: (default for a checkpoint written before the option existed, check, what)
    "lr_schedule": ("constant", lambda v: v in SCHEDULES, " or ".join(SCHEDULES)),
    "decay_frac": (DECAY_FRAC, lambda v: _is_number(v) and 0 < v <= 1, "a fraction in (0, 1]"),
}


def _is_int(v, minimum):
    return isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_checkpoint(folder):
    """The checkpoint in ``folder``, checked to be one a run can resume from before anything is
    built from it: (arrays, config, position (epoch, step))."""
    path = folder / CHECKPOINT
    try:
        ck = read_checkpoint(path)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    missing = [k for k in ("config", "epoch", "step", "rng/model", "rng/data", "rng/epoch_start") if k not in ck]
    if missing:
        raise UsageError(f"{path} is not a minivae checkpoint (it has no {', '.join(missing)})")
    try:
        config = json.loads(str(ck["config"]))
    except ValueError:
        raise UsageError(f"{path}: its config is corrupt (not JSON)") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path}: its config is corrupt (not a JSON object)")
    for key, (ok, what) in _CONFIG_TYPES.items():
        if key not in config:
            raise UsageError(f"{path}: its config has no {key!r}")
        if not ok(config[key]):
            raise UsageError(f"{path}: its config's {key!r} is {config[key]!r}, expected {what}")
    for key, (default, ok, what) in _CONFIG_OPTIONAL.items():
        config.setdefault(key, default)
        if not ok(config[key]):
            raise UsageError(f"{path}: its config's {key!r} is {config[key]!r}, expected {what}")
    for key in ("rng/model", "rng/data", "rng/epoch_start"):
        try:
            set_rng_state(np.random.default_rng(), ck[key])
        except (ValueError, TypeError, KeyError, AttributeError):
            raise UsageError(f"{path}: its generator state {key!r} is corrupt") from None
    position = []
    for key in ("epoch", "step") + tuple(k for k in ("data/n_train", "epoch/seen") if k in ck):
        a = ck[key]
        if a.shape != () or a.dtype.kind not in "iu" or int(a) < 0:
            raise UsageError(f"{path}: {key!r} is {a!r}, expected a non-negative integer")
        position.append(int(a))
    for key in ("epoch/loss_sum", "epoch/train_s"):
        if key in ck and (ck[key].shape != () or ck[key].dtype.kind != "f" or not np.isfinite(ck[key])):
            raise UsageError(f"{path}: {key!r} is {ck[key]!r}, expected a finite number")
    bad = [
        k
        for k, v in ck.items()
        if k.startswith(("param/", "opt/")) and v.dtype.kind == "f" and not np.isfinite(v).all()
    ]
    if bad:
        raise UsageError(f"{path}: {bad[0]!r} holds non-finite numbers; the checkpoint cannot be resumed")
    return ck, config, (position[0], position[1])


# --------------------------------------------------------------------------------------------
# The output folder: one run at a time
# --------------------------------------------------------------------------------------------


class _RunFolder:
    """The output folder, created if needed and locked for the run (``fcntl.flock`` on ``.lock``,
    which holds the writer's process id). A second run into the same folder is refused while the
    first holds the lock; the kernel drops the lock when a process dies, even by SIGKILL."""

    def __init__(self, path):
        self.path, self.created, self.lock = path, False, None

    def acquire(self, what):
        path = self.path
        if path.exists() and not path.is_dir():
            raise UsageError(f"{what} {path} exists and is not a folder")
        try:
            if not path.is_dir():
                path.mkdir(parents=True)
                self.created = True
        except FileExistsError:  # made by someone else in the meantime: fine, it is a folder
            if not path.is_dir():
                raise UsageError(f"{what} {path} exists and is not a folder") from None
        except OSError as e:
            raise UsageError(f"cannot create {what} {path}: {e.strerror or e}") from None
        try:
            self.lock = FolderLock(path, what, "run").acquire()
        except UsageError:
            self.release(keep=False)
            raise

    def release(self, keep=True):
        """Unlock (removing the lock file); a folder this run created is removed again when it
        is empty and ``keep`` is False (nothing was written)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.created and not keep:
            try:
                self.path.rmdir()  # only when empty
            except OSError:
                pass

    def artifacts(self):
        return [name for name in ARTIFACTS if (self.path / name).exists()]

    def remove_stale_temporaries(self):
        """Remove what atomic writes of a killed run left (``.<artifact>.<random>.tmp``): with the
        lock held, no other process can be writing them. Returns (count, bytes)."""
        count = size = 0
        for name in ARTIFACTS:
            for tmp in self.path.glob(f".{name}.*.tmp"):
                try:
                    size += tmp.stat().st_size
                    tmp.unlink()
                    count += 1
                except OSError:
                    pass
        return count, size


# --------------------------------------------------------------------------------------------
# Memory: estimated before anything is allocated
# --------------------------------------------------------------------------------------------


def memory_needed(config, n_train=60_000, n_test=10_000):
    """Bytes a run of ``config`` needs at its peak, roughly (an upper estimate): the parameters
    with their gradients, Adam moments and checkpoint copies, the digits, and the largest of the
    training step's activations, the evaluation's and the importance-weighted estimate's."""
    Z, hidden, B = config["latent"], list(config["hidden"]), config["batch_size"]
    enc = [D] + hidden + [2 * Z]
    dec = [Z] + hidden[::-1] + [D]
    P = sum(i * o + o for net in (enc, dec) for i, o in zip(net[:-1], net[1:], strict=True))
    width = sum(enc[1:]) + sum(dec[1:]) + 3 * Z  # floats per example through one step
    n_train = min(n_train, config["limit"] or n_train)
    params = 8 * P * 4  # θ, ∂θ, m, v, the model's own copy, checkpoint copies (float32)
    digits = 3 * (n_train + n_test) * D * 4  # the digits, this epoch's draw, the test set
    step = 3 * B * width * 4
    evaluation = 3 * 1000 * width * 4 + 4 * n_test * Z * 8  # batches of 1000; μ, log σ² (float64)
    K, n_iw = config["iw_samples"], min(config["iw_examples"], 100)  # the estimate's batch: 100
    iw = 5 * K * n_iw * (D + 3 * Z) * 8 + 3 * K * n_iw * width * 4
    return params + digits + max(step, evaluation, iw), P


_available_memory = cli.available_memory  # a module name, so that tests can pretend a smaller machine
_bytes = cli.size_text


def _check_memory(config):
    needed, P = memory_needed(config)
    available = _available_memory()
    if available is not None and needed > available:
        raise UsageError(
            f"this run needs about {_bytes(needed)} of memory ({P:,} parameters, "
            f"batch {config['batch_size']}, K = {config['iw_samples']} importance "
            f"samples), more than the {_bytes(available)} available"
        )


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class _Signals:
    """Ctrl-C (SIGINT) and SIGTERM. While ``deferred`` (the training steps) a signal sets
    ``requested``: the loop finishes its step, saves and exits. Otherwise — or at a second
    signal — it raises :class:`Interrupted` where the program is."""

    def __init__(self):
        self.requested = None  # the signal number, once one came
        self.deferred = False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.deferred and self.requested is None:
            self.requested = signum
            return
        raise Interrupted(signum)

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def _progress(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)


def _say(quiet, *lines):
    """The run's lines on stdout; a stdout that cannot be written (``| head``, ``> /dev/full``)
    stops them, never the run."""
    if not quiet:
        cli.say(*lines)


def _flag(key):
    return "--" + key.replace("_", "-")


def _position(epoch, step):
    """Words for a checkpoint's position: epochs done, and steps into the next."""
    return f"epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"


def _exit_code(signum):
    return 128 + int(signum)


def run(args):
    """Validate, load, train, evaluate, write. Returns the exit code."""
    given = getattr(args, "given", None)
    if given is None:  # called without parse_args: what differs from the defaults was given
        defaults = vars(_parser().parse_args([]))
        given = {k for k, v in vars(args).items() if defaults.get(k, v) != v or k not in defaults}
    with _Signals() as signals:
        state = {"stage": "start-up", "folder": None, "saved": None, "out": None}
        try:
            with np.errstate(all="ignore"):  # a diverging loss is caught and said in one line
                return _run(args, given, signals, state)
        except Complete as e:
            cli.say(str(e))  # one line, even with --quiet: it is why nothing happened
            return 0
        except Interrupted as e:
            name = signal.Signals(e.signum).name
            cli.report(NAME, f"{name} during {state['stage']}; {_what_is_kept(state)}")
            return _exit_code(e.signum)
        except (WriteError, MemoryError) as e:
            what = "out of memory" if isinstance(e, MemoryError) else str(e)
            if state["stage"] == "start-up":
                raise UsageError(what) from None
            cli.report(NAME, f"{what}; stopping during {state['stage']} ({_what_is_kept(state)})")
            return EXIT_FAILED
        finally:
            if state["folder"] is not None:
                state["folder"].release(keep=state["stage"] != "start-up")


def _what_is_kept(state):
    out, saved = state["out"], state["saved"]
    if state["stage"] == "start-up":
        return "nothing was written" if state.get("fresh", True) else f"{out} is unchanged"
    if saved is None:
        return "no checkpoint was saved yet"
    return f"the checkpoint of {_position(*saved)} in {out} is kept; continue with --resume {out}"


def _usable_path(path, what):
    """Refuse a path the system cannot even look up (too long, a loop of links, no permission)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # may be created (or is refused later with a clearer message)
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror or e}") from None


def _run(args, given, signals, state):
    # 1. Everything that can be wrong with the input is checked before anything is written.
    ck, config, out, (start_epoch, start_step) = _options(args, given, state)
    folder, present, history = _claim_folder(out, ck, args, state)
    vae, opt, data, data_rng, running = _build(config, ck, out, start_step, args.quiet)

    # 2. The run starts: now the output folder may be written.
    stale, stale_bytes = folder.remove_stale_temporaries()
    if ck is None and present:  # --overwrite: the old run goes before anything new is written
        for name in present:
            (out / name).unlink()
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    state["stage"] = "training"
    quiet = args.quiet
    if stale:
        _say(quiet, f"removed {stale} temporary file(s) ({_bytes(stale_bytes)}) that an interrupted run left in {out}")
    cli.say_data(data, quiet)
    _say(
        quiet,
        f"model: D={D}, Z={config['latent']}, hidden={config['hidden']}, "
        f"{vae.num_params():,} parameters, backend {vae.backend}",
    )
    job = dict(
        vae=vae,
        opt=opt,
        data_rng=data_rng,
        config=config,
        out=out,
        quiet=quiet,
        n=len(data.train_x),
        data_id=fingerprint(data),
        signals=signals,
        state=state,
        history=history,
        test_x=binarize_fixed(data.test_x, config["binarize"]),
    )
    wall0 = time.perf_counter()
    code, posterior = _train_epochs(job, data.train_x, start_epoch, start_step, running)
    if code is not None:
        return code
    signals.deferred = False

    # 3. The end: log-likelihood, figures, summary.
    return _finish(job, data.source, posterior, wall0)


def _options(args, given, state):
    """The run's config, its folder, its checkpoint (None for a fresh run) and the position it
    starts from, every option checked against the checkpoint, the paths and the memory."""
    if args.resume is not None:
        if args.overwrite:
            raise UsageError("--overwrite replaces a run, --resume continues one: give one of them")
        _usable_path(args.resume, "--resume")
        refuse_foreign(args.resume, "--resume", "run")
        ck, config, (start_epoch, start_step) = _read_checkpoint(args.resume)
        out = args.resume
        contradict = []
        for key in sorted(given - RESUME_OPTIONS - {"given"}):
            value = getattr(args, key)
            if key == "out":
                if os.path.abspath(value) != os.path.abspath(out):
                    contradict.append((f"--out {value}", f"the run is in {out}"))
                continue
            value = list(value) if key == "hidden" else value
            if key not in config or value != config[key]:
                contradict.append(
                    (
                        f"{_flag(key)} {getattr(args, key) if key != 'hidden' else ','.join(map(str, value))}",
                        f"{key} {config.get(key)}",
                    )
                )
        if contradict:
            raise UsageError(
                f"{' and '.join(c[0] for c in contradict)} contradict"
                f"{'s' if len(contradict) == 1 else ''} the checkpoint in {out} "
                f"({', '.join(c[1] for c in contradict)}); a resumed run keeps its "
                f"options: only --epochs, --data-dir and --quiet may be given"
            )
        if args.epochs is not None:
            if args.epochs < start_epoch:
                raise UsageError(
                    f"--epochs {args.epochs} is fewer than the {start_epoch} epochs the checkpoint in {out} has done"
                )
            if args.epochs != config["epochs"] and config["lr_schedule"] != "constant":
                raise UsageError(
                    f"--epochs {args.epochs}: the run's {config['lr_schedule']} schedule is laid over its "
                    f"{config['epochs']} epochs and cannot be stretched; resume without --epochs"
                )
            config["epochs"] = args.epochs
        if start_step == 0 and start_epoch == config["epochs"] and (out / "summary.json").is_file():
            raise Complete(
                f"the run in {out} is complete ({start_epoch} epochs, summary.json written): nothing to do; "
                f"--epochs more than {start_epoch} trains it further"
            )
        if args.data_dir is not None:
            config["data_dir"] = os.path.abspath(args.data_dir)  # the data moved: follow them
        state["fresh"] = False
        state["saved"] = (start_epoch, start_step)
    else:
        ck, start_epoch, start_step = None, 0, 0
        config = {k: v for k, v in vars(args).items() if k not in ("resume", "out", "quiet", "overwrite", "given")}
        config["hidden"] = list(args.hidden)
        # Absolute, so that the run can be resumed from any folder.
        config["data_dir"] = os.path.abspath(args.data_dir) if args.data_dir is not None else None
        config["epochs"] = DEFAULT_EPOCHS if args.epochs is None else args.epochs
        out = args.out if args.out is not None else pathlib.Path("runs") / f"latent{args.latent}"
        _usable_path(out, "--out")
        refuse_foreign(out, "--out", "run")
    state["out"] = out
    _usable_path(out, "--resume" if ck is not None else "--out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if config["data_dir"] is not None:
        _usable_path(pathlib.Path(config["data_dir"]), "--data-dir")
    if config["data_dir"] is not None and not pathlib.Path(config["data_dir"]).is_dir():
        if args.data_dir is not None:
            raise UsageError(f"--data-dir {args.data_dir} is not a folder")
        raise UsageError(
            f"the run's data folder {config['data_dir']} is gone: give --data-dir to say where its data are now"
        )
    _check_memory(config)  # before the model or the data take any
    return ck, config, out, (start_epoch, start_step)


def _claim_folder(out, ck, args, state):
    """The output folder, created and locked for this run; a fresh run refuses a folder holding
    another. Returns (folder, the artifacts present, the metrics rows a resumed run continues)."""
    folder = _RunFolder(out)
    folder.acquire("--resume" if ck is not None else "--out")
    state["folder"] = folder
    present = folder.artifacts()
    if ck is None and present and not args.overwrite:
        files = f"{', '.join(present[:3])}{', …' if len(present) > 3 else ''}"
        if CHECKPOINT in present:
            raise UsageError(
                f"--out {out} holds a run ({files}): continue it with --resume {out}, or replace it with --overwrite"
            )
        raise UsageError(
            f"--out {out} holds the files of a run without a checkpoint ({files}): "
            f"replace them with --overwrite, or choose another --out"
        )
    # The rows of metrics.jsonl up to the epoch a resumed run starts after.
    history = _read_history(out, int(ck["epoch"])) if ck is not None else []
    return folder, present, history


def _build(config, ck, out, start_step, quiet):
    """The model, its optimizer, the data and the data generator, restored from the checkpoint
    ``ck`` when resuming; and the running sums of an interrupted epoch."""
    try:
        vae = VAE(
            D,
            config["latent"],
            tuple(config["hidden"]),
            seed=config["seed"],
            beta=config["beta"],
            backend=config["backend"],
        )
    except (ValueError, ImportError, RuntimeError) as e:
        raise UsageError(f"cannot create the model: {e}") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback to the offline sample is said in `source`
        try:
            data = load_mnist(
                config["data_dir"], config["limit"], seed=config["seed"], progress=not quiet and sys.stderr.isatty()
            )
        except (DataError, ValueError) as e:
            raise UsageError(str(e)) from None

    opt = Adam(vae.params, lr=config["lr"])
    data_rng = np.random.default_rng([config["seed"], 2])
    n, bs = len(data.train_x), config["batch_size"]
    steps_per_epoch = math.ceil(n / bs)
    running = {"loss_sum": 0.0, "seen": 0, "train_s": 0.0}  # of the interrupted epoch, if any
    if ck is not None:
        try:
            vae.set_params({k[6:]: v for k, v in ck.items() if k.startswith("param/")})
            opt.load_state_dict({k[4:]: v for k, v in ck.items() if k.startswith("opt/")})
        except ValueError as e:
            raise UsageError(f"checkpoint {out / CHECKPOINT} does not match its config: {e}") from None
        if "data/n_train" in ck and int(ck["data/n_train"]) != n:
            raise UsageError(
                f"the run was trained on {int(ck['data/n_train']):,} training digits, "
                f"the data now give {n:,} ({data.source}); give --data-dir to point "
                f"to the run's data"
            )
        if "data/fingerprint" in ck and str(ck["data/fingerprint"]) != fingerprint(data):
            raise UsageError(
                f"the run was trained on other digits than those {data.source} gives (same count, other "
                f"images or labels); give --data-dir to point to the run's data"
            )
        if start_step >= steps_per_epoch:
            raise UsageError(
                f"the checkpoint is at step {start_step} of an epoch, but the data give "
                f"{steps_per_epoch} steps per epoch: not the run's data"
            )
        set_rng_state(vae.rng, ck["rng/model"])
        # Mid-epoch: replay the epoch's data order from its start, skipping the steps done.
        set_rng_state(data_rng, ck["rng/epoch_start"] if start_step else ck["rng/data"])
        if start_step and "epoch/seen" in ck:
            running = {
                "loss_sum": float(ck["epoch/loss_sum"]),
                "seen": int(ck["epoch/seen"]),
                "train_s": float(ck["epoch/train_s"]),
            }
    return vae, opt, data, data_rng, running


def _train_epochs(job, train_x, start_epoch, start_step, running):
    """The epochs of the training loop (:mod:`minivae.loop`) from the checkpoint's position: after
    each epoch the test metrics, metrics.jsonl and a checkpoint. Returns (exit code or None to
    go on, the test digits' posterior of the last epoch)."""
    config, out, signals = job["config"], job["out"], job["signals"]
    show_bar = not job["quiet"] and sys.stderr.isatty()
    posterior = None  # (μ, log σ²) of the test digits after the last epoch run here
    n, bs = job["n"], config["batch_size"]
    for epoch, start, x_epoch, order in loop.epochs(
        train_x, config["binarize"], bs, job["data_rng"], first=start_epoch + 1, last=config["epochs"]
    ):
        epoch_rng_state = json.dumps(start)
        resumed = epoch == start_epoch + 1 and start_step > 0
        sums = dict(running) if resumed else {"loss_sum": 0.0, "seen": 0, "train_s": 0.0}
        bar = _progress(math.ceil(n / bs), f"epoch {epoch}/{config['epochs']}", show_bar)
        signals.deferred = True
        step, loss, why = _epoch(job, x_epoch, order, start_step if resumed else 0, sums, bar)
        if bar is not None:
            bar.close()
        if why == "diverged":
            saved = job["state"]["saved"]
            kept = f"the checkpoint of {_position(*saved)} is kept" if saved is not None else "no checkpoint was saved"
            cli.report(
                NAME,
                f"loss became {loss} at epoch {epoch}, step {step}; stopping ({kept}); to train again at a "
                f"tenth of the rate: {retry_command(config, out)}",
            )
            return EXIT_DIVERGED, posterior
        if why == "stop":
            _save(job, epoch_rng_state, epoch - 1, step, running=sums)
            name = signal.Signals(signals.requested).name
            cli.report(
                NAME,
                f"{name}: interrupted at epoch {epoch}, step {step}; checkpoint saved, continue with --resume {out}",
            )
            return _exit_code(signals.requested), posterior
        posterior = _end_epoch(job, epoch, epoch_rng_state, sums)
        if signals.requested is not None:  # came during the evaluation or the writes
            name = signal.Signals(signals.requested).name
            cli.report(NAME, f"{name}: interrupted after epoch {epoch}; checkpoint saved, continue with --resume {out}")
            return _exit_code(signals.requested), posterior
    return None, posterior


def _epoch(job, x_epoch, order, skip, sums, bar):
    """One epoch of steps; ``sums`` (loss_sum, seen, train_s) grow as it goes. A signal ends it
    after its step ("stop")."""
    t0, before_s, steps = time.perf_counter(), sums["train_s"], [0]

    def after_step(step, loss, n, seconds):
        sums["seen"] += n
        sums["loss_sum"] += loss * n
        sums["train_s"] = before_s + time.perf_counter() - t0
        steps[0] += 1
        if "first_step" not in job:  # the process's first step compiles the kernels: timed apart
            job["first_step"] = {"n": n, "s": sums["train_s"] - before_s, "said": False}
        if bar is not None:
            bar.update(1 + (skip if steps[0] == 1 else 0))
            bar.set_postfix(loss=f"{loss:.1f}", samples_per_s=f"{sums['seen'] / sums['train_s']:.0f}")
        return job["signals"].requested is not None

    config = job["config"]
    lr_at = schedule(
        config["epochs"] * math.ceil(job["n"] / config["batch_size"]),
        config["lr"],
        config["lr_schedule"],
        config["decay_frac"],
    )
    result = loop.run_epoch(job["vae"], job["opt"], x_epoch, order, after_step, skip=skip, lr_at=lr_at)
    sums["train_s"] = before_s + time.perf_counter() - t0
    return result


def _save(job, epoch_rng_state, epoch, step, running=None):
    save_checkpoint(
        job["out"] / CHECKPOINT,
        job["vae"],
        job["opt"],
        job["data_rng"],
        epoch_rng_state,
        epoch,
        step,
        job["config"],
        n_train=job["n"],
        data_id=job["data_id"],
        running=running,
    )
    job["state"]["saved"] = (epoch, step)


def _end_epoch(job, epoch, epoch_rng_state, sums):
    """The epoch's test metrics, its row in metrics.jsonl, its checkpoint and its line."""
    config, history = job["config"], job["history"]
    row, posterior = _evaluate_epoch(job["vae"], job["test_x"], config["seed"], epoch)
    seen, train_time = sums["seen"], sums["train_s"]
    first = job.get("first_step")
    first = first if first is not None and not first["said"] else None
    if first is not None and seen > first["n"] and train_time > first["s"]:  # the steady rate
        seen, train_time = seen - first["n"], train_time - first["s"]
    row = {
        "epoch": epoch,
        "train_loss": sums["loss_sum"] / max(sums["seen"], 1),
        **row,
        "samples_per_s": seen / train_time if train_time > 0 else 0.0,
    }
    if first is not None:
        row["first_step_s"] = first["s"]
        first["said"] = True
    history.append(row)
    write_jsonl(job["out"] / "metrics.jsonl", history)  # a first signal waits until both are written
    _save(job, epoch_rng_state, epoch, 0)
    _say(
        job["quiet"],
        f"epoch {epoch:3d}  train {row['train_loss']:7.2f}  test {row['test_loss']:7.2f}"
        f"  (recon {row['test_recon']:7.2f} + KL {row['test_kl']:6.2f})"
        f"  active {row['active_units']:4d}/{config['latent']}"
        f"  directions {row['directions']:4d}"
        f"  {row['samples_per_s']:7.0f} samples/s"
        + (f" (first step {row['first_step_s']:.2f} s, not counted)" if "first_step_s" in row else ""),
    )
    return posterior


def _finish(job, source, posterior, wall0):
    """The end: the importance-weighted log-likelihood, the figures, the summary."""
    vae, config, out, state, history, quiet = (job[k] for k in ("vae", "config", "out", "state", "history", "quiet"))
    test_x = job["test_x"]
    state["stage"] = "the final evaluation"
    k, n_iw = config["iw_samples"], min(config["iw_examples"], len(test_x))
    iw_ll = metrics.iw_log_likelihood(vae, test_x[:n_iw], k, np.random.default_rng([config["seed"], 4]))
    from minivae import plots

    state["stage"] = "the figures"
    mu, logvar = posterior if posterior is not None else metrics.posterior_means(vae, test_x)
    plots.save_all(out, vae, test_x, mu, logvar, history, np.random.default_rng([config["seed"], 5]))
    last = history[-1] if history else None
    summary = {
        "data": source,
        "iw_samples": k,
        "iw_examples": n_iw,
        "test_iw_nll": -iw_ll,
        "wall_s": time.perf_counter() - wall0,
        "final": last,
    }
    state["stage"] = "the summary"
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    _say(
        quiet,
        "",
        f"data: {source}",
        (
            f"final test: −ELBO {last['test_loss']:.2f} nats (recon {last['test_recon']:.2f} + "
            f"KL {last['test_kl']:.2f}), active units {last['active_units']}/{config['latent']}"
        )
        if last
        else "no epochs trained",
        f"test log-likelihood ≈ {iw_ll:.2f} nats (importance-weighted, K={k}, first {n_iw} test digits)",
        f"artifacts in {out}/ ({time.perf_counter() - wall0:.0f} s)",
    )
    return 0


METRIC_NUMBERS = ("train_loss", "test_loss", "test_recon", "test_kl", "active_units")


def _read_history(out, start_epoch):
    """The rows of ``metrics.jsonl`` for epochs 1 … ``start_epoch``, checked: a resumed run
    continues them (a row written after the checkpoint, by a run killed between the two writes,
    is dropped)."""
    path = out / "metrics.jsonl"
    try:
        rows = read_jsonl(path)
    except JsonlError as e:
        raise UsageError(
            f"cannot resume: {e}; restore the file (or remove it to resume without the earlier epochs' rows)"
        ) from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    if not path.exists():
        return []
    history = []
    for number, row in enumerate(rows, 1):
        epoch = row.get("epoch")
        bad = [f for f in METRIC_NUMBERS if not _is_number(row.get(f))]
        if not _is_int(epoch, 1) or bad:
            what = "its epoch" if not _is_int(epoch, 1) else ", ".join(bad)
            raise UsageError(
                f"cannot resume: {path} row {number}: {what} missing or not a "
                f"number; restore the file (or remove it to resume without the "
                f"earlier epochs' rows)"
            )
        if epoch <= start_epoch:
            history.append(row)
    if [r["epoch"] for r in history] != list(range(1, start_epoch + 1)):
        raise UsageError(
            f"cannot resume: {path} holds epochs {[r['epoch'] for r in history]}, "
            f"the checkpoint has done 1–{start_epoch}; restore the file (or remove "
            f"it to resume without the earlier epochs' rows)"
        )
    return history


def _evaluate_epoch(vae, test_x, seed, epoch):
    """The epoch's test metrics, and the (μ, log σ²) of the test digits they were computed from."""
    eval_rng = np.random.default_rng([seed, 3, epoch])
    mu, logvar = metrics.posterior_means(vae, test_x)
    ev = metrics.evaluate(vae, test_x, eval_rng, posterior=(mu, logvar))
    au, _ = metrics.active_units(mu)
    directions = metrics.latent_directions(mu)
    row = {
        "test_loss": ev["loss"],
        "test_recon": ev["recon"],
        "test_kl": ev["kl"],
        "active_units": au,
        "directions": directions["directions"],
        "participation_ratio": directions["participation_ratio"],
    }
    return row, (mu, logvar)


def retry_command(config, out, factor=0.1):
    """The command line that trains the run of ``config`` again from its start into ``out``
    (``--overwrite``), at ``factor`` times its learning rate: what to try after a divergence."""
    defaults = vars(_parser().parse_args([]))
    defaults.update(epochs=DEFAULT_EPOCHS, hidden=list(defaults["hidden"]))
    words = []
    for key, value in config.items():
        if key in defaults and key != "lr" and value != defaults[key]:
            text = ",".join(map(str, value)) if key == "hidden" else str(value)
            words += [_flag(key), text]
    words += ["--lr", cli.value_text(config["lr"] * factor), "--out", str(out), "--overwrite"]
    return f"{cli.program(NAME, 'minivae-train')} {shlex.join(words)}"


def main(argv=None):
    # Ctrl-C before run() took over the signals (while parsing or importing): one line, exit 130.
    return cli.run_command(NAME, run, parse_args, argv, interrupted="interrupted during start-up; nothing was written")


if __name__ == "__main__":
    sys.exit(main())
