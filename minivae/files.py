"""Files every command line writes and reads: atomic writes, JSON lines, checkpoints, generator state.

A file is written to a temporary name in its own folder and renamed onto its path, so a reader
never sees half of it and a failed write (a full disk, Ctrl-C) leaves the old file as it was.

A checkpoint (``checkpoint.npz``) holds NumPy arrays only, read with ``allow_pickle=False``:

    param/<layer>.W, param/<layer>.b     the weights, e.g. param/enc0.W (D, H)
    opt/t, opt/m.<name>, opt/v.<name>    Adam's step count and moments
    rng/model, rng/data, rng/epoch_start generator states, as JSON text
    epoch, step, config                  where the run stopped (epochs done, steps into the next);
                                         its options, as JSON text
    data/n_train, epoch/…                the number of training digits; mid-epoch, the epoch's
                                         running sums (loss_sum, seen, train_s)

:func:`read_checkpoint` is the one reader: :mod:`minivae.train` (``--resume``) and
:mod:`minivae.runs` (``minivae.load``) both read through it.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile

import numpy as np

CONFIG = "config.json"
CHECKPOINT = "checkpoint.npz"
# The files of a training run (minivae.train): a folder holding any of them holds a run.
RUN_FILES = (
    CONFIG,
    "metrics.jsonl",
    CHECKPOINT,
    "summary.json",
    "reconstructions.png",
    "samples.png",
    "kl_per_dim.png",
    "loss_curve.png",
)
# The files of a sweep (minivae.sweep) that tell its folder apart: it writes settings.json first.
SWEEP_FILES = ("settings.json", "results.jsonl")


class WriteError(OSError):
    """A file could not be written; ``str(e)`` is one line naming the file and the reason."""


class JsonlError(ValueError):
    """A line of a JSON-lines file that is not a JSON object; ``line`` is its number (from 1)."""

    def __init__(self, message, line):
        super().__init__(message)
        self.line = line


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (missing, truncated, foreign); the message names the file."""


def file_mode():
    """The permission bits the user's umask gives a new file (0666 & ~umask): what a file made
    by ``open`` would get, for files that ``tempfile.mkstemp`` creates private (0600)."""
    try:  # Linux states the umask without changing it
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def held_files(folder, names):
    """Those of ``names`` that are files in ``folder`` (none when it is not a folder)."""
    folder = pathlib.Path(folder)
    try:
        return [name for name in names if (folder / name).is_file()]
    except OSError:
        return []


def refuse_foreign(folder, what, mine):
    """Raise :class:`minivae.cli.UsageError` when ``folder`` (given as ``what``, e.g. ``--out``)
    holds the output of the other command: a sweep's for ``mine`` = "run" (minivae.train), a
    training run's for ``mine`` = "sweep". Neither command writes into, or replaces, the other's."""
    from minivae.cli import UsageError

    if mine == "run":
        held, theirs, how = held_files(folder, SWEEP_FILES), "a sweep", "minivae.sweep"
    else:
        held, theirs, how = held_files(folder, RUN_FILES), "a training run", "minivae.train"
    if held:
        raise UsageError(
            f"{what} {folder} holds {theirs} ({', '.join(held[:3])}), written by {how}: "
            f"choose another folder for this {'run' if mine == 'run' else 'sweep'}"
        )


# --------------------------------------------------------------------------------------------
# Atomic writes and JSON lines
# --------------------------------------------------------------------------------------------


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The file gets the mode the user's umask gives a new file. Any failure (a full disk, an
    unwritable folder, Ctrl-C) removes the temporary file and leaves ``path`` as it was; an
    OSError comes out as a :class:`WriteError` that names ``path``.
    """
    path = pathlib.Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes it 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def read_jsonl(path, on_bad=None):
    """The rows (JSON objects) of a JSON-lines file, [] when there is none.

    A line that is not a JSON object raises :class:`JsonlError` naming the file and the line,
    or, with ``on_bad``, is passed to ``on_bad(error, text)`` and skipped.
    """
    path = pathlib.Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
        except ValueError as e:
            reason = "truncated or not JSON" if isinstance(e, json.JSONDecodeError) else str(e)
            error = JsonlError(f"{path} line {number}: {reason}", number)
            if on_bad is None:
                raise error from None
            on_bad(error, line)
            continue
        rows.append(row)
    return rows


def write_jsonl(path, rows):
    """Write rows as JSON lines, atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# --------------------------------------------------------------------------------------------
# Generator state and checkpoints
# --------------------------------------------------------------------------------------------


def rng_state(rng):
    """A generator's state as a 0-d array of JSON text (what a checkpoint stores)."""
    return np.array(json.dumps(rng.bit_generator.state))


def set_rng_state(rng, state):
    """Restore :func:`rng_state`'s text into ``rng``; a text that is not a state raises
    ValueError, TypeError or KeyError."""
    rng.bit_generator.state = json.loads(str(state))


def save_checkpoint(
    path, vae, opt, data_rng, epoch_rng_state, epoch, step, config, running=None, n_train=None, data_id=None
):
    """Parameters, Adam moments, the generators, and the position (epoch done, steps into next).

    ``running``: mid-epoch, the epoch's running sums so far (loss_sum, seen, train_s), so that a
    resumed run reports the epoch's train loss over all of it. ``n_train``: the number of
    training digits, and ``data_id`` their :func:`minivae.data.fingerprint`, checked on resume.
    """
    arrays = {"param/" + k: v for k, v in vae.get_params().items()}
    arrays.update({"opt/" + k: v for k, v in opt.state_dict().items()})
    arrays["rng/model"] = rng_state(vae.rng)
    arrays["rng/data"] = rng_state(data_rng)
    arrays["rng/epoch_start"] = np.array(epoch_rng_state)
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


def read_checkpoint(path):
    """Every array of a checkpoint.npz, read without pickle: a dict name → array.

    Raises :class:`CheckpointError` for a missing file, one that is not an .npz archive (truncated,
    foreign, or holding pickled objects), and one without a model's parameters (``param/…``).
    """
    path = pathlib.Path(path)
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


def error_reason(e):
    """An exception in a few words: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
