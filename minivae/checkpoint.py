"""Checkpoints: one format, one writer (:func:`save`) and one reader (:func:`read`), and one way
back into a model (:func:`restore`), for the main job and the sweep alike.

A checkpoint is an ``.npz`` of NumPy arrays only, read with ``allow_pickle=False``:

    param/<layer>.W, param/<layer>.b     the weights, e.g. param/enc0.W (D, H)
    opt/t, opt/m.<name>, opt/v.<name>    Adam's step count and moments
    rng/model, rng/data, rng/epoch_start generator states, as JSON text: the model's noise ε; the
                                         data generator now, and at the start of the epoch under way
    epoch, step                          where the run stopped: epochs done, steps into the next
    config                               JSON text (below)
    data/n_train, data/fingerprint       the main job: its training digits' count and fingerprint
    epoch/loss_sum, epoch/seen, epoch/train_s   the main job, mid-epoch: the epoch's running sums

It is the main job's ``checkpoint.npz`` (``config``: its :class:`minivae.config.RunConfig`), a sweep
run's mid-run ``runs/<tag>-<settings>.resume.npz`` (``config``: ``{"settings", "tag", "done"}``,
its settings key, its file name and its :class:`minivae.config.Progress`), and — parameters and
``config`` only, compressed (:func:`save_params`) — a model a sweep keeps, ``models/<run>/``.

A run continues where its checkpoint stopped: :func:`restore` puts the parameters, Adam's state and
both generators back, the data generator at the start of the epoch under way when the run stopped
inside one (``step`` > 0: that epoch's draws and order are replayed, its first ``step`` batches
skipped), else as it was.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from minivae.files import atomic_write, error_reason, parse_json, refuse_special

RESUME_KEYS = ("config", "epoch", "step", "rng/model", "rng/data", "rng/epoch_start")
RUNNING = ("loss_sum", "seen", "train_s")  # the main job's sums of the epoch under way


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or continued from; the message names the file."""


def rng_state(rng):
    """A generator's state as a 0-d array of JSON text (what a checkpoint stores)."""
    return np.array(json.dumps(rng.bit_generator.state))


def set_rng_state(rng, state):
    """Restore :func:`rng_state`'s text into ``rng``; a text that is not a state raises
    ValueError, TypeError or KeyError."""
    rng.bit_generator.state = parse_json(str(state))


def save(path, model, opt, data_rng, epoch_start, epoch, step, config, running=None, n_train=None, data_id=None):
    """Parameters, Adam's state, the generators (``epoch_start``: the data generator's state at the
    start of the epoch under way, as JSON text) and the position (``epoch`` done, ``step`` into the
    next), with ``config`` (a JSON object), atomically.

    ``running``: mid-epoch, the epoch's running sums so far (loss_sum, seen, train_s), so that a
    resumed run reports the epoch's train loss over all of it. ``n_train``: the number of
    training digits, and ``data_id`` their :func:`minivae.data.fingerprint`, checked on resume.
    """
    arrays = {"param/" + k: v for k, v in model.get_params().items()}
    arrays.update({"opt/" + k: v for k, v in opt.state_dict().items()})
    arrays["rng/model"] = rng_state(model.rng)
    arrays["rng/data"] = rng_state(data_rng)
    arrays["rng/epoch_start"] = np.array(epoch_start)
    arrays["epoch"] = np.array(epoch)
    arrays["step"] = np.array(step)
    arrays["config"] = np.array(json.dumps(config))
    if n_train is not None:
        arrays["data/n_train"] = np.array(n_train)
    if data_id is not None:
        arrays["data/fingerprint"] = np.array(data_id)
    for k, v in (running or {}).items():
        arrays["epoch/" + k] = np.array(v)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def save_params(path, model, config):
    """A trained model alone: its parameters and ``config`` (a JSON object), compressed."""
    arrays = {"param/" + k: v for k, v in model.get_params().items()}
    arrays["config"] = np.array(json.dumps(config))
    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def read(path):
    """Every array of a checkpoint, read without pickle: a dict name → array.

    Raises :class:`CheckpointError` for a missing file, one that is not an .npz archive (truncated,
    foreign, or holding pickled objects), and one without a model's parameters (``param/…``).
    """
    path = pathlib.Path(path)
    try:
        refuse_special(path)  # np.load would wait on a FIFO
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    try:
        with np.load(path, allow_pickle=False) as ck:
            if not hasattr(ck, "files"):  # a bare .npy file, not an archive
                raise CheckpointError(f"{path} is a single array, not a checkpoint archive")
            arrays = {k: ck[k] for k in ck.files}  # reads (and CRC-checks) every member now
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"no {path.name} at {path}") from None
    except IsADirectoryError:
        raise CheckpointError(f"no checkpoint at {path} (a folder)") from None
    except Exception as e:  # a truncated or foreign file: BadZipFile, EOFError, ValueError, OSError …
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or not a checkpoint?): {error_reason(e)}"
        ) from None
    if not any(k.startswith("param/") for k in arrays):
        raise CheckpointError(f"{path} holds no model parameters (no param/… arrays): not a minivae checkpoint")
    return arrays


def params(ck):
    return {k[len("param/") :]: v for k, v in ck.items() if k.startswith("param/")}


def check(ck, path):
    """The checkpoint ``ck`` (read from ``path``), checked to be one a run can continue from before
    anything is built from it: every array :func:`restore` needs, generator states that are states,
    counts that are counts, finite numbers. Returns (its config, a JSON object; epoch; step)."""
    missing = [k for k in RESUME_KEYS if k not in ck]
    if missing:
        raise CheckpointError(f"{path} is not a minivae checkpoint (it has no {', '.join(missing)})")
    try:
        config = parse_json(str(ck["config"]))
    except ValueError:
        raise CheckpointError(f"{path}: its config is corrupt (not JSON)") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its config is corrupt (not a JSON object)")
    for key in ("rng/model", "rng/data", "rng/epoch_start"):
        try:
            set_rng_state(np.random.default_rng(), ck[key])
        except (ValueError, TypeError, KeyError, AttributeError):
            raise CheckpointError(f"{path}: its generator state {key!r} is corrupt") from None
    for key in ("epoch", "step", "data/n_train", "epoch/seen"):
        a = ck.get(key, np.array(0))
        if a.shape != () or a.dtype.kind not in "iu" or int(a) < 0:
            raise CheckpointError(f"{path}: {key!r} is {a!r}, expected a non-negative integer")
    for key in ("epoch/loss_sum", "epoch/train_s"):
        if key in ck and (ck[key].shape != () or ck[key].dtype.kind != "f" or not np.isfinite(ck[key])):
            raise CheckpointError(f"{path}: {key!r} is {ck[key]!r}, expected a finite number")
    bad = [
        k
        for k, v in ck.items()
        if k.startswith(("param/", "opt/")) and v.dtype.kind == "f" and not np.isfinite(v).all()
    ]
    if bad:
        raise CheckpointError(f"{path}: {bad[0]!r} holds non-finite numbers; the checkpoint cannot be resumed")
    return config, int(ck["epoch"]), int(ck["step"])


def check_data(ck, n_train, data_id, batch_size):
    """Raise :class:`CheckpointError` unless the data at hand are those the run was trained on:
    as many training digits (``n_train``), the same digits (``data_id``: their fingerprint), and
    enough steps per epoch for the checkpoint's position."""
    if "data/n_train" in ck and int(ck["data/n_train"]) != n_train:
        raise CheckpointError(
            f"the run was trained on {int(ck['data/n_train']):,} training digits, the data now give {n_train:,}"
        )
    if "data/fingerprint" in ck and str(ck["data/fingerprint"]) != data_id:
        raise CheckpointError("the run was trained on other digits (same count, other images or labels)")
    per_epoch = -(-n_train // batch_size)
    if int(ck["step"]) >= per_epoch:
        raise CheckpointError(
            f"the checkpoint is at step {int(ck['step'])} of an epoch, but the data give {per_epoch} steps per epoch"
        )


def position(epoch, step):
    """Words for a checkpoint's position: epochs done, and steps into the next."""
    return f"epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, step {step}"


def running(ck):
    """The running sums of the epoch a main job stopped inside (None at an epoch's end)."""
    if int(ck["step"]) == 0 or "epoch/seen" not in ck:
        return None
    return {
        "loss_sum": float(ck["epoch/loss_sum"]),
        "seen": int(ck["epoch/seen"]),
        "train_s": float(ck["epoch/train_s"]),
    }


def restore(ck, model, opt, data_rng):
    """Put a checked checkpoint's state into ``model``, ``opt`` and ``data_rng`` (see the module
    docstring). Parameters or Adam state that do not fit the model raise ValueError before anything
    is changed."""
    state = {k[len("opt/") :]: v for k, v in ck.items() if k.startswith("opt/")}
    opt.checked_state(state)  # first: so that a bad state leaves the model as it was
    model.set_params(params(ck))
    opt.load_state_dict(state)
    set_rng_state(model.rng, ck["rng/model"])
    set_rng_state(data_rng, ck["rng/epoch_start"] if int(ck["step"]) else ck["rng/data"])
