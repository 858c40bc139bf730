"""What the command lines share: exit codes, the usage error, argparse types and the training options.

Bad input is one line on stderr and exit code 2 (:data:`EXIT_USAGE`), never a traceback: the
types below turn a wrong value into argparse's one-line message, and :class:`Parser` prints that
line without the usage block.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """Bad input from the user: reported as one line with exit code 2."""


def program(module, script):
    """The program's name as it was invoked: the console script (``minivae-train``) when that is
    what runs, else ``python -m <module>``."""
    return script if os.path.basename(sys.argv[0] or "") == script else f"python -m {module}"


def command_name(prog):
    """The name a command's messages start with: ``minivae.train`` for ``python -m minivae.train``
    and for its console script ``minivae-train``; ``benchmarks.throughput`` for a script."""
    if prog.startswith("python -m "):
        return prog[len("python -m ") :]
    if prog.startswith("python ") and prog.endswith(".py"):  # a script: python benchmarks/throughput.py
        return prog[len("python ") : -len(".py")].replace("/", ".")
    return prog.replace("-", ".", 1) if prog.startswith("minivae-") else prog


def report(name, line):
    """One line on stderr, ``<name>: <line>``: how every command says what went wrong."""
    print(f"{name}: {line}", file=sys.stderr)


def usage_error(name, message):
    """A usage error as every command says it: ``<name>: error: <message>``. Returns exit code 2."""
    report(name, f"error: {message}")
    return EXIT_USAGE


def run_command(name, run, parse_args, argv=None, interrupted="interrupted"):
    """A command's ``main``: ``run(parse_args(argv))``, its exit code returned. A usage error is one
    line ``<name>: error: …`` on stderr and exit code 2, Ctrl-C before ``run`` took it over one line
    (``interrupted``) and exit code 130. A warning shown meanwhile is one line too,
    ``<name>: warning: …`` (not Python's two, the second a line of our source)."""
    import warnings

    shown = warnings.formatwarning
    warnings.formatwarning = lambda message, *rest, **kw: f"{name}: warning: {message}\n"
    try:
        return run(parse_args(argv))
    except UsageError as e:
        return usage_error(name, e)
    except KeyboardInterrupt:
        report(name, interrupted)
        return EXIT_INTERRUPTED
    finally:
        warnings.formatwarning = shown


def say(*lines, quiet=False):
    """Print ``lines`` to stdout (nothing when ``quiet``), each flushed at once. Once stdout cannot
    be written — a pipe closed early (``| head``), a full disk (``> /dev/full``) — this and
    everything printed after it is dropped: stdout is pointed at the null device, and the command
    carries on (its results are in its files, not in what it prints)."""
    if quiet:
        return
    try:
        for line in lines:
            print(line, flush=True)
    except OSError:  # BrokenPipeError, ENOSPC, EIO, …
        silence_stdout()


def load_digits(data_dir=None, limit=None, *, seed=0, progress=False, download=True, hint=""):
    """The digits a command reads (:func:`minivae.data.load_mnist`): ``data_dir``, else the
    default source (the cache, a download unless ``download`` is False, else the offline sample).
    The fallback's warning is not shown: the command says where its digits came from
    (:func:`say_data`). Digits that cannot be had — a folder that is not MNIST, a bad ``limit`` —
    are :class:`UsageError`, the reason in one line with ``hint`` after it."""
    import warnings

    from minivae.data import DataError, load_mnist

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load_mnist(data_dir, limit, download=download, seed=seed, progress=progress)
        except (DataError, ValueError, TypeError) as e:
            raise UsageError(f"{e}{hint}") from None


def say_data(data, quiet=False):
    """Which digits a command uses: ``data: <source>`` on stdout, also under --quiet; after a
    fallback to the offline sample, the short note on why (which cached file failed, where the
    cache is) under it, unless quiet."""
    say(f"data: {data.source}")
    if data.note and not quiet:
        say(f"  {data.note}")


def silence_stdout():
    """Point stdout at the null device, its file descriptor too where it has one, so that what is
    still buffered and what comes later (even the interpreter's last flush) is written nowhere,
    without an error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        devnull = None
    if devnull is not None:
        try:
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # no file descriptor (a test's capture)
            pass
        finally:
            os.close(devnull)
    try:
        sys.stdout.flush()  # the buffered rest now goes to the null device, if stdout is fd 1
    except (OSError, ValueError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def available_memory():
    """Bytes this process may still allocate (MemAvailable, else the physical memory); None when
    unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_text(n):
    """A number of bytes in words: ``1,234 B``, ``8.0 GB`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000


def check_memory(needed, what):
    """Refuse (:class:`UsageError`) a command whose estimated peak of ``needed`` bytes exceeds the
    memory available; ``what`` says what needs it ("this run (Z = 1000, …)")."""
    available = available_memory()
    if available is not None and needed > available:
        raise UsageError(
            f"{what} needs about {size_text(needed)} of memory, more than the {size_text(available)} available"
        )


class Parser(argparse.ArgumentParser):
    """argparse, with the house's habits for every command:

    - a usage error is one line on stderr, ``<name>: error: …`` (:func:`usage_error`), exit 2;
    - ``--version`` prints the command and the package's version;
    - an option's help ends with its default, ``(default 128)``, written here for every option
      that has one (a help text may say ``(default …)`` itself, in words, where the default is
      None: ``(default all digits)``), and with ``(required)`` for a required option.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import minivae  # here, not at import time: minivae imports this module

        self.add_argument("--version", action="version", version=f"%(prog)s {minivae.__version__}")

    @property
    def name(self):
        return command_name(self.prog)

    def add_argument(self, *names, **kwargs):
        help = kwargs.get("help")
        if help is not None and help != argparse.SUPPRESS and kwargs.get("action") not in ("version", "help"):
            kwargs["help"] = help + default_text(kwargs)
        return super().add_argument(*names, **kwargs)

    def error(self, message):
        usage_error(self.name, message)
        self.exit(EXIT_USAGE)


def given_options(parser, argv):
    """The options given on the command line ``argv`` (not defaulted), as dests, by ``parser``."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def default_text(kwargs):
    """What an option's help ends with: `` (required)``, `` (default <value>)``, or nothing (no
    default, a flag, or a help text that words its default itself)."""
    default = kwargs.get("default")
    if kwargs.get("required"):
        return " (required)"
    if "(default " in kwargs.get("help", "") or default is None or default is False or default == argparse.SUPPRESS:
        return ""
    if kwargs.get("action") in ("store_true", "store_false", "count"):
        return ""
    return f" (default {value_text(default)})".replace("%", "%%")


def value_text(value):
    """A default as one would type it: 512,256 for a sequence, 3e-5 or 0.001 for a float."""
    if isinstance(value, (list, tuple)):
        return ",".join(value_text(v) for v in value)
    if isinstance(value, float):
        text = f"{value:g}"
        if "e" in text:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}e{int(exponent)}"
        return text
    return str(value)


# --------------------------------------------------------------------------------------------
# Argument types
# --------------------------------------------------------------------------------------------


def number(convert, accept, what):
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


positive_int = number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = number(float, lambda v: v > 0 and math.isfinite(v), "a positive number")
fraction = number(float, lambda v: 0 < v <= 1, "a fraction in (0, 1]")
non_negative_float = number(float, lambda v: v >= 0 and math.isfinite(v), "a non-negative number")


def path(text):
    """A path that is not empty (``''`` would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    if "\0" in text:
        raise argparse.ArgumentTypeError(f"a path cannot hold a NUL character, got {text!r}")
    return pathlib.Path(text)


path.__name__ = "path"


def positive_ints(what, example):
    """An argparse type: comma-separated positive integers like ``example`` → a tuple; ``what``
    names them in the message."""

    def parse(text):
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"expected {what} like {example}, got {text!r}")
        return values

    parse.__name__ = what
    return parse


def choices_list(what, choices):
    """An argparse type: comma-separated names from ``choices`` → a list without repeats, in the
    order given; ``what`` names them in the message."""

    def parse(text):
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"{what} must be from {', '.join(choices)}, got {text!r}")
        return list(dict.fromkeys(values))

    parse.__name__ = what
    return parse


def usable_path(path, what):
    """Refuse (:class:`UsageError`) a path the system cannot even look up (a name too long, a loop of
    links, no permission); one that does not exist (yet) is fine."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # may be created (or is refused later with a clearer message)
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror or e}") from None


def progress_bar(total, desc, enabled, unit="step"):
    """A progress bar on stderr (tqdm) when ``enabled``, else None."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


def load_run(folder, backend, named=False):
    """(the run of ``folder`` (:func:`minivae.runs.read_run`), its model on ``backend``), for a
    command: a folder that is not a run, or a checkpoint that does not match its config, is
    :class:`UsageError` with the reader's one line; a backend this machine cannot run is
    ``cannot create the model[ of FOLDER]: …`` (``named``: where a command reads several)."""
    from minivae.runs import RunError, model_from, read_run

    try:
        run = read_run(folder)
        return run, model_from(run, backend)
    except RunError as e:
        raise UsageError(str(e)) from None
    except (ValueError, ImportError, RuntimeError) as e:  # a backend this machine cannot run
        raise UsageError(f"cannot create the model{f' of {folder}' if named else ''}: {e}") from None


def require_folder(path, what, refuse=True):
    """Refuse (:class:`UsageError`, one line) a ``path`` given as ``what`` that is not a folder
    (or, with ``refuse`` False, return None for it), or that the system cannot even look up (a
    name too long, no permission)."""
    try:
        if path.is_dir():
            return path
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror or e}") from None
    if refuse:
        raise UsageError(f"{what} {path} is not a folder")
    return None


def widths(text):
    """Hidden widths like ``512,256`` → (512, 256)."""
    try:
        values = tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 512,256, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths like 512,256, got {text!r}")
    return values


def add_training_options(p, epochs, iw_samples):
    """The options a training run takes (the main job's and the study's). ``epochs`` is the
    default number of passes the command applies when ``--epochs`` is not given (the option
    itself defaults to None, so a command can tell "not given" apart); ``iw_samples`` is the
    default K of the log-likelihood estimate."""
    from minivae.schedule import DECAY_FRAC, SCHEDULES

    p.add_argument(
        "--hidden",
        type=widths,
        default=(512,),
        metavar="H1,H2",
        help="hidden widths of the encoder; the decoder mirrors them",
    )
    p.add_argument(
        "--epochs", type=non_negative_int, default=None, help=f"passes over the training digits (default {epochs})"
    )
    p.add_argument("--batch-size", type=positive_int, default=128, help="mini-batch size B")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    p.add_argument(
        "--lr-schedule",
        choices=SCHEDULES,
        default="constant",
        help="the rate over the run: constant, cosine (to 0 at the end), or wsd (constant, then a "
        "linear decay to 0 over the last --decay-frac of the steps)",
    )
    p.add_argument(
        "--decay-frac",
        type=fraction,
        default=DECAY_FRAC,
        metavar="F",
        help="wsd: the fraction of the steps over which the rate decays",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds weights, noise, data order")
    _add_data_and_evaluation_options(p, iw_samples)


def _add_data_and_evaluation_options(p, iw_samples):
    """The digits a run trains on, the backend, and the final log-likelihood estimate."""
    p.add_argument(
        "--binarize",
        choices=("dynamic", "static", "none"),
        default="dynamic",
        help="pixels as Bernoulli draws: fresh each epoch (dynamic), one fixed draw (static), or grey levels (none)",
    )
    p.add_argument(
        "--data-dir",
        type=path,
        default=None,
        help="a folder of MNIST IDX files to use instead of the download cache (default the cache)",
    )
    p.add_argument("--limit", type=positive_int, default=None, help="use the first N training digits (default all)")
    add_backend_and_estimate_options(p, iw_samples)
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")


def add_backend_and_estimate_options(p, iw_samples):
    """--backend, and the K and N of the final log-likelihood estimate (a training run's, or
    ``minivae.mechanism``'s of trained models)."""
    from minivae.backend import BACKENDS

    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="implementation of the step; auto: the fastest usable",
    )
    p.add_argument(
        "--iw-samples",
        type=positive_int,
        default=iw_samples,
        metavar="K",
        help="importance samples for the final log-likelihood estimate",
    )
    p.add_argument(
        "--iw-examples",
        type=positive_int,
        default=1000,
        metavar="N",
        help="test digits the log-likelihood estimate averages over",
    )
