"""A run's options, typed and checked once: :class:`RunConfig`; a sweep's run as its worker gets it,
:class:`SweepRun`; and how far a sweep's run is, :class:`Progress`.

A training run's ``config.json`` (and the ``config`` array of its ``checkpoint.npz``) is
:meth:`RunConfig.to_json`; :meth:`RunConfig.from_json` reads it back, every value checked, for
``--resume`` (:mod:`minivae.train`), ``minivae.load`` (:mod:`minivae.runs`), :mod:`minivae.explore`
and the models a sweep keeps. Files written before an option existed still load: the option takes
the value those runs had (``lr_schedule`` constant, ``decay_frac`` 0.2), and a kept model's
config, which names only what the model needs, loads with ``required=("latent", "hidden")``. Keys
this code does not know are kept (``extra``) and written back as they were.

A sweep's mid-run checkpoint (``runs/<tag>-<settings>.resume.npz``) holds, as its ``config``, the
run's settings key, its file name and its :class:`Progress`: the steps done, the learning curve so
far and the times.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from minivae.data import D as DATA_DIM
from minivae.schedule import DECAY_FRAC, SCHEDULES

BINARIZE = ("dynamic", "static", "none")


class ConfigError(ValueError):
    """A value that a run's options cannot hold; ``key`` names the option."""

    def __init__(self, key, message):
        super().__init__(message)
        self.key = key


def _int(minimum):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


CHECKS = {  # option: (check, what it must be)
    "latent": (_int(1), "a positive integer"),
    "beta": (lambda v: _number(v) and v >= 0, "a non-negative number"),
    "hidden": (lambda v: isinstance(v, (list, tuple)) and v and all(map(_int(1), v)), "a list of positive widths"),
    "epochs": (_int(0), "a non-negative integer"),
    "batch_size": (_int(1), "a positive integer"),
    "lr": (lambda v: _number(v) and v > 0, "a positive number"),
    "lr_schedule": (lambda v: v in SCHEDULES, " or ".join(SCHEDULES)),
    "decay_frac": (lambda v: _number(v) and 0 < v <= 1, "a fraction in (0, 1]"),
    "seed": (_int(0), "a non-negative integer"),
    "binarize": (lambda v: v in BINARIZE, "dynamic, static or none"),
    "data_dir": (lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "a path or null"),
    "limit": (lambda v: v is None or _int(1)(v), "a positive integer or null"),
    "backend": (lambda v: isinstance(v, str), "a backend name"),
    "iw_samples": (_int(1), "a positive integer"),
    "iw_examples": (_int(1), "a positive integer"),
}
OPTIONAL = ("lr_schedule", "decay_frac")  # options younger than the first checkpoints
RESUME_OPTIONS = {"resume", "epochs", "data_dir", "quiet", "given"}  # what a resumed run may be given


def _flag(key):
    return "--" + key.replace("_", "-")


def _text(value):
    """An option's value as typed on the command line: 512,256; 0.001; 3e-5."""
    from minivae.cli import value_text

    return value_text(value)


@dataclass
class RunConfig:
    """The options of one training run (the main job's; a sweep's runs share all but Z and the
    seed). Checked when made: a wrong value raises :class:`ConfigError` naming the option."""

    latent: int = 20
    beta: float = 1.0
    hidden: tuple = (512,)
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"
    decay_frac: float = DECAY_FRAC
    seed: int = 0
    binarize: str = "dynamic"
    data_dir: str | None = None  # absolute for the main job, so that a run resumes from anywhere
    limit: int | None = None
    backend: str = "auto"
    iw_samples: int = 50
    iw_examples: int = 1000
    extra: dict = field(default_factory=dict, repr=False)  # keys of a config.json not named above

    def __post_init__(self):
        for key, (ok, what) in CHECKS.items():
            value = getattr(self, key)
            if not ok(value):
                raise ConfigError(key, f"{key!r} is {value!r}, expected {what}")
        self.hidden = tuple(self.hidden)

    @classmethod
    def names(cls):
        return [f.name for f in dataclasses.fields(cls) if f.name != "extra"]

    @classmethod
    def from_options(cls, options, **changes):
        """The config of the options in ``options`` (a dict, or an argparse namespace) that name a
        field, with ``changes``."""
        options = vars(options) if not isinstance(options, dict) else options
        return cls(**{**{k: options[k] for k in cls.names() if k in options}, **changes})

    @classmethod
    def from_json(cls, obj, required=None):
        """The config a ``config.json`` object describes. Every option in ``required`` (default: all
        but :data:`OPTIONAL`) must be there; the others take their defaults."""
        if not isinstance(obj, dict):
            raise ConfigError(None, f"it holds a JSON {type(obj).__name__}, not the object of a run's options")
        names = cls.names()
        required = [k for k in names if k not in OPTIONAL] if required is None else required
        missing = [k for k in required if k not in obj]
        if missing:
            raise ConfigError(missing[0], f"it has no {missing[0]!r}")
        return cls(**{k: obj[k] for k in names if k in obj}, extra={k: v for k, v in obj.items() if k not in names})

    def to_json(self, keys=None):
        """The JSON object of config.json: the options in their order, ``hidden`` as a list, then the
        ``extra`` keys; or, given ``keys``, those options and extra keys in that order."""
        if keys is None:
            keys = [*self.names(), *self.extra]
        out = {k: self.extra[k] if k in self.extra else getattr(self, k) for k in keys}
        if "hidden" in out:
            out["hidden"] = list(out["hidden"])
        return out

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def resumed(self, options, given, done, folder):
        """This config (a checkpoint's, ``done`` epochs trained, in ``folder``) continued with the
        command line's ``options`` (an argparse namespace; ``given``: the options the user gave).
        Only ``--epochs`` (no fewer than done; not stretching a decaying schedule), ``--data-dir``
        (where the data are now) and options equal to the config's may be given, else
        :class:`minivae.cli.UsageError`."""
        from minivae.cli import UsageError

        saved, contradict = self.to_json(), []
        for key in sorted(given - RESUME_OPTIONS):
            value = getattr(options, key)
            if key == "out" and os.path.abspath(value) != os.path.abspath(folder):
                contradict.append((f"--out {value}", f"the run is in {folder}"))
            elif key != "out" and (key not in saved or (list(value) if key == "hidden" else value) != saved[key]):
                contradict.append((f"{_flag(key)} {_text(value)}", f"{key} {saved.get(key)}"))
        if contradict:
            raise UsageError(
                f"{' and '.join(c[0] for c in contradict)} contradict{'s' if len(contradict) == 1 else ''} the "
                f"checkpoint in {folder} ({', '.join(c[1] for c in contradict)}); a resumed run keeps its "
                f"options: only --epochs, --data-dir and --quiet may be given"
            )
        epochs, data_dir = options.epochs, options.data_dir
        if epochs is not None and epochs < done:
            raise UsageError(f"--epochs {epochs} is fewer than the {done} epochs the checkpoint in {folder} has done")
        if epochs not in (None, self.epochs) and self.lr_schedule != "constant":
            raise UsageError(
                f"--epochs {epochs}: the run's {self.lr_schedule} schedule is laid over its {self.epochs} "
                f"epochs and cannot be stretched; resume without --epochs"
            )
        return self.replace(
            epochs=self.epochs if epochs is None else epochs,
            data_dir=self.data_dir if data_dir is None else os.path.abspath(data_dir),  # the data moved
        )

    def retry_argv(self, folder, factor=0.1):
        """The options that train this config again from its start into ``folder`` (``--overwrite``)
        at ``factor`` times its learning rate: what to try after a divergence."""
        words, defaults = [], RunConfig()
        for key in self.names():
            if key != "lr" and getattr(self, key) != getattr(defaults, key):
                words += [_flag(key), _text(getattr(self, key))]
        return [*words, "--lr", _text(self.lr * factor), "--out", str(folder), "--overwrite"]

    def memory_needed(self, n_train=60_000, n_test=10_000):
        """(bytes, parameters): what a run of this config needs at its peak, roughly (an upper
        estimate) — the parameters with their gradients, Adam moments and checkpoint copies, the
        digits, and the largest of the training step's activations, the evaluation's and the
        importance-weighted estimate's."""
        Z, B, D = self.latent, self.batch_size, DATA_DIM
        enc, dec = [D, *self.hidden, 2 * Z], [Z, *self.hidden[::-1], D]
        P = sum(i * o + o for net in (enc, dec) for i, o in zip(net[:-1], net[1:], strict=True))
        width = sum(enc[1:]) + sum(dec[1:]) + 3 * Z  # floats per example through one step
        n_train = min(n_train, self.limit or n_train)
        params = 8 * P * 4  # θ, ∂θ, m, v, the model's own copy, checkpoint copies (float32)
        digits = 3 * (n_train + n_test) * D * 4  # the digits, this epoch's draw, the test set
        step = 3 * B * width * 4
        evaluation = 3 * 1000 * width * 4 + 4 * n_test * Z * 8  # batches of 1000; μ, log σ² (float64)
        K, n_iw = self.iw_samples, min(self.iw_examples, 100)  # the estimate's batch: 100
        iw = 5 * K * n_iw * (D + 3 * Z) * 8 + 3 * K * n_iw * width * 4
        return params + digits + max(step, evaluation, iw), P

    def memory_with_check(self, iw_check=None):
        """(bytes, parameters, K): :meth:`memory_needed` with this config's K, or, where the
        --iw-check estimate (K' = ``iw_check`` samples for :func:`minivae.metrics.check_batch`
        digits at a time) needs more, with that one and K'."""
        from minivae.metrics import check_batch

        needs = [(*self.memory_needed(), self.iw_samples)]
        if iw_check:
            check = self.replace(iw_samples=iw_check, iw_examples=check_batch(iw_check))
            needs.append((*check.memory_needed(), iw_check))
        return max(needs, key=lambda need: need[0])


@dataclass
class Progress:
    """How far a sweep's run is, as its mid-run checkpoint records it: Adam steps done, the learning
    curve measured so far, training and wall time before this process, and whether it diverged."""

    step: int = 0
    train_time: float = 0.0
    curve: list = field(default_factory=list)
    diverged: str | None = None
    wall_before: float = 0.0

    @classmethod
    def from_json(cls, done):
        """The progress record of a checkpoint (ValueError when it is not one a run continues from)."""
        if not isinstance(done, dict):
            raise ValueError("its progress record is not an object")
        if not _int(0)(done.get("step")):
            raise ValueError(f"its progress record's 'step' is {done.get('step')!r}, not a count")
        for k in ("train_time", "wall_before"):
            if not _number(done.get(k)) or done[k] < 0:
                raise ValueError(f"its progress record's {k!r} is {done.get(k)!r}, not a time")
        curve = done.get("curve")
        if not isinstance(curve, list) or not all(
            isinstance(p, dict) and _int(0)(p.get("step")) and p["step"] <= done["step"] and _number(p.get("test_loss"))
            for p in curve
        ):
            raise ValueError("its learning curve is not a list of measured points")
        if done.get("diverged") is not None:
            raise ValueError("it records a diverged run")
        return cls(done["step"], done["train_time"], curve, None, done["wall_before"])

    def to_json(self):
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep, as its worker gets it: what to train (the model, Z, the hidden widths,
    the seed, the backend), the study's settings that every run of it shares, and where it writes.

    ``settings`` is the key of those settings (:func:`minivae.sweep.settings_of`): with the run's
    tag it names the run's files, and it tags its results. With ``budgets`` the run is a budget
    curve (:func:`minivae.sweep.run_budgets`): ``steps`` is None, ``budget_keys`` holds each
    budget's settings key and ``budgets_done`` those whose results exist already. ``init_from``
    is the settings' name of a warm start's source, ``warm_start`` its folder. ``probe`` and
    ``iw_check`` (K' importance samples) are the measurements of a final model only.
    """

    model: str
    latent: int
    hidden: tuple
    seed: int
    backend: str
    out: str
    settings: str
    steps: int | None
    batch_size: int
    lr: float
    binarize: str
    limit: int | None
    data_dir: str | None
    iw_samples: int
    iw_examples: int
    lr_schedule: str = "constant"
    decay_frac: float = DECAY_FRAC
    init_from: str | None = None
    budgets: tuple = ()
    budget_keys: tuple = ()
    budgets_done: tuple = ()
    iw_check: int | None = None
    keep_models: bool = False
    warm_start: str | None = None
    probe: bool = True
    threads: int | None = None

    def __post_init__(self):
        for name in ("hidden", "budgets", "budget_keys", "budgets_done"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def file(self, suffix=".npz"):
        """The name of one of the run's files under ``runs/`` (:func:`minivae.study.run_file`)."""
        from minivae.study import run_file

        return run_file(self.row_fields(), suffix)

    def row_fields(self):
        """The fields a results row shares with the run: what :func:`minivae.study.run_key` reads."""
        return {"model": self.model, "latent": self.latent, "hidden": list(self.hidden), "seed": self.seed} | {
            "settings": self.settings
        }
