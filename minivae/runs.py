"""Reading a training run back: ``minivae.load(run_dir)`` → the trained model.

A run folder, as ``python -m minivae.train`` writes it (or ``minivae.sweep --keep-models`` keeps
it), holds (among its figures and metrics)

    config.json      the options of the run (:class:`minivae.config.RunConfig`): latent Z, hidden
                     widths, seed, β, backend, data, … (a kept model's names only what it needs)
    checkpoint.npz   NumPy arrays only, never pickle (:mod:`minivae.checkpoint`): the weights
                     param/<layer>.W, param/<layer>.b; for a run that can go on, Adam's state,
                     the generators and where it stopped

The model is rebuilt from the config (Z, hidden widths, seed, β) and the arrays (D and the dtype
come from their shapes and type), and every array is checked against the layers the config
implies before any is used. Whatever is wrong with a folder — not a run, a missing, truncated or
foreign checkpoint, a config that is not JSON, a config that does not match the arrays — is one
:class:`RunError` (a ``ValueError``) whose message names the file.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

import numpy as np

from minivae import checkpoint
from minivae.checkpoint import CheckpointError, set_rng_state
from minivae.config import ConfigError, RunConfig
from minivae.files import CHECKPOINT, CONFIG, error_reason, parse_json

LOADABLE = ("latent", "hidden")  # what a config.json must name for its model to be built


class RunError(ValueError):
    """A folder or file that is not a readable training run; the message names the file."""


@dataclass
class Run:
    """What a run folder holds: its folder, its config and the arrays of its checkpoint."""

    folder: pathlib.Path
    config: RunConfig  # the options config.json does not name take their defaults
    arrays: dict = field(repr=False)  # name → array, as in checkpoint.npz

    @property
    def epoch(self):
        """Epochs completed when the checkpoint was written."""
        return int(self.arrays["epoch"]) if "epoch" in self.arrays else None


def read_config(path):
    """The options of a run from its config.json: the JSON object, checked (it names at least
    ``latent`` and ``hidden``, and every option it names holds a value the option can hold)."""
    return _read_config(path)[0]


def _read_config(path):
    """(the JSON object of a config.json, its :class:`RunConfig`)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RunError(f"no {path.name} at {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RunError(f"cannot read {path}: {error_reason(e)}") from None
    try:
        obj = parse_json(text)
    except json.JSONDecodeError as e:
        raise RunError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path} holds a JSON {type(obj).__name__}, not the object of a run's options")
    try:
        return obj, RunConfig.from_json(obj, required=LOADABLE)
    except ConfigError as e:
        if e.key in LOADABLE and e.key not in obj:
            raise RunError(f"{path} has no {e.key!r}: not the config of a minivae training run") from None
        raise RunError(f"{path}: {e}") from None


def read_run(run_dir):
    """The :class:`Run` in ``run_dir``: its config.json and checkpoint.npz, both read and checked."""
    folder = pathlib.Path(run_dir)
    try:
        if not folder.is_dir():
            raise RunError(f"{folder} is not a folder" if folder.exists() else f"{folder} does not exist")
    except OSError as e:  # a name too long, a loop of links, no permission
        raise RunError(f"cannot read {folder}: {e.strerror or e}") from None
    missing = [name for name in (CONFIG, CHECKPOINT) if not (folder / name).is_file()]
    if len(missing) == 2:
        raise RunError(f"{folder} is not a training run: it has no {CONFIG} and no {CHECKPOINT}")
    if missing:
        raise RunError(f"{folder} is not a complete training run: no {missing[0]} at {folder / missing[0]}")
    config = _read_config(folder / CONFIG)[1]
    try:
        arrays = checkpoint.read(folder / CHECKPOINT)
    except CheckpointError as e:
        raise RunError(str(e)) from None
    return Run(folder, config, arrays)


def model_from(run, backend="auto"):
    """A :class:`minivae.VAE` with the architecture of ``run.config`` and the weights of
    ``run.arrays``, on ``backend``. Every parameter's presence, shape, dtype and finiteness is
    checked against the model the config describes before any is copied in (:class:`RunError`
    naming both files when they disagree)."""
    from minivae.vae import VAE

    config, arrays = run.config, run.arrays
    ck_path, cfg_path = run.folder / CHECKPOINT, run.folder / CONFIG

    def mismatch(what):
        return RunError(f"{ck_path} does not match {cfg_path}: {what}")

    params = checkpoint.params(arrays)
    if "enc0.W" not in params or np.ndim(params["enc0.W"]) != 2:
        raise mismatch("no 2-D param/enc0.W to read the data dimension D from")
    data_dim = int(params["enc0.W"].shape[0])
    dtypes = {np.dtype(v.dtype) for v in params.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
        raise RunError(
            f"{ck_path}: parameters must all be float32 or all float64, got {sorted(d.name for d in dtypes)}"
        )
    dtype = next(iter(dtypes))
    latent, hidden = config.latent, config.hidden
    vae = VAE(data_dim, latent, hidden, seed=config.seed, dtype=dtype, beta=config.beta, backend=backend)
    absent = [k for k in vae.params if k not in params]
    extra = [k for k in params if k not in vae.params]
    if absent or extra:
        said = [f"missing param/{', param/'.join(absent)}"] if absent else []
        said += [f"unexpected param/{', param/'.join(extra)}"] if extra else []
        raise mismatch(f"{'; '.join(said)} (config: Z={latent}, hidden={list(hidden)})")
    for name, p in vae.params.items():
        if tuple(params[name].shape) != tuple(p.shape):
            raise mismatch(
                f"param/{name} has shape {tuple(params[name].shape)}, the config "
                f"(Z={latent}, hidden={list(hidden)}) needs {tuple(p.shape)}"
            )
        if not np.isfinite(params[name]).all():
            raise RunError(f"{ck_path}: param/{name} holds non-finite values")
    vae.set_params(params)
    if "rng/model" in arrays:  # the noise generator as it was when the checkpoint was written
        try:
            set_rng_state(vae.rng, arrays["rng/model"])
        except (ValueError, TypeError, KeyError) as e:
            raise RunError(f"{ck_path}: rng/model is not a generator state: {error_reason(e)}") from None
    return vae


def load(run_dir, backend="auto"):
    """The trained model of a run folder written by ``python -m minivae.train``.

    Returns a :class:`minivae.VAE` (``encode``, ``decode``, ``reconstruct``, ``sample``,
    ``params``, …) holding the weights of the run's ``checkpoint.npz`` — the last completed epoch,
    or the step where Ctrl-C stopped it — built as its ``config.json`` says, on ``backend``
    ("auto": the fastest usable, as for :class:`minivae.VAE`). Its noise generator continues from
    the checkpoint's state.

    Raises :class:`RunError` (a ``ValueError``), naming the file, when ``run_dir`` is not a run
    folder, its checkpoint is missing, truncated or foreign, its config is not valid JSON, or the
    two do not match.
    """
    return model_from(read_run(run_dir), backend)
