"""Files every command line writes and reads: atomic writes, JSON lines, and which command's files a
folder holds.

A file is written to a temporary name in its own folder and renamed onto its path, so a reader
never sees half of it and a failed write (a full disk, Ctrl-C) leaves the old file as it was.

A training run's folder (:data:`RUN_FILES`: config.json, metrics.jsonl, checkpoint.npz, …) and a
sweep's (:data:`SWEEP_FILES`: settings.json, results.jsonl, …) are each their command's alone:
:func:`refuse_foreign` keeps the other out. Checkpoints have a module of their own,
:mod:`minivae.checkpoint`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import tempfile

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


def run_files_to_replace(folder, overwrite):
    """The files of a training run in ``folder``, which a fresh run replaces only with
    ``overwrite`` (else :class:`minivae.cli.UsageError`: continue it, or replace it)."""
    from minivae.cli import UsageError

    present = [name for name in RUN_FILES if (pathlib.Path(folder) / name).exists()]
    if present and not overwrite:
        files = f"{', '.join(present[:3])}{', …' if len(present) > 3 else ''}"
        if CHECKPOINT not in present:
            raise UsageError(
                f"--out {folder} holds the files of a run without a checkpoint ({files}): replace them "
                f"with --overwrite, or choose another --out"
            )
        raise UsageError(
            f"--out {folder} holds a run ({files}): continue it with --resume {folder}, or replace it with --overwrite"
        )
    return present


# --------------------------------------------------------------------------------------------
# Atomic writes and JSON lines
# --------------------------------------------------------------------------------------------


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it onto ``path``.

    The file gets the mode the user's umask gives a new file. Any failure (a full disk, an
    unwritable folder, Ctrl-C) removes the temporary file and leaves ``path`` as it was; an
    OSError comes out as a :class:`WriteError` that names ``path``.
    """
    atomic_write_files({path: write})


def atomic_write_files(writes):
    """Several files, all or none: ``writes`` maps each path to its ``write(file)`` (or to its
    bytes). Each is written to a temporary file beside its path, and only once every one is
    written are they renamed onto their paths. A failure before then (a full disk, Ctrl-C)
    removes the temporary files and leaves every path as it was; an OSError comes out as a
    :class:`WriteError` that names the file."""
    done = []  # (temporary, path) of the files written so far
    try:
        for path, write in writes.items():
            path = pathlib.Path(path)
            if isinstance(write, bytes):
                write = _writer(write)
            done.append((_write_temporary(path, write), path))
        for tmp, path in done:
            _rename(tmp, path)
    except BaseException:
        for tmp, _ in done:
            _remove(tmp)  # those already renamed are gone from their temporary names
        raise


def _writer(data):
    return lambda f: f.write(data)


def _write_temporary(path, write):
    """``write(file)`` on a new temporary file beside ``path``, with the mode the user's umask gives
    a new file; returns its name. A failure removes it; an OSError comes out as a WriteError."""
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes it 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            write(f)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return tmp


def _rename(tmp, path):
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None


def _remove(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def parse_json(text):
    """``json.loads(text)``, with nesting too deep for Python's parser (its RecursionError) raised
    as the :class:`json.JSONDecodeError` every reader here already handles."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply to read", str(text)[:0], 0) from None


def refuse_special(path):
    """OSError for a path that is there but is neither a regular file nor a folder — a FIFO, a
    device: reading it would wait for a writer, or never end."""
    path = pathlib.Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        raise OSError(errno.EINVAL, "not a regular file (a pipe or a device?)", str(path))


def read_regular_bytes(path):
    """The bytes of the file at ``path``, refused first by :func:`refuse_special`."""
    refuse_special(path)
    return pathlib.Path(path).read_bytes()


def read_regular_text(path):
    """:func:`read_regular_bytes` decoded as UTF-8 (UnicodeDecodeError where it is not)."""
    return read_regular_bytes(path).decode()


def read_jsonl(path, on_bad=None, check=None):
    """The rows (JSON objects) of a JSON-lines file, [] when there is none.

    A line that is not a JSON object raises :class:`JsonlError` naming the file and the line,
    or, with ``on_bad``, is passed to ``on_bad(error, text)`` and skipped. ``check(row)``, when
    given, says in words what makes an object no row of this file at all (None when nothing):
    such a line raises :class:`JsonlError`, ``on_bad`` or not.
    """
    path = pathlib.Path(path)
    try:
        text = read_regular_bytes(path).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = parse_json(line)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
        except ValueError as e:
            reason = "truncated or not JSON" if isinstance(e, json.JSONDecodeError) else str(e)
            error = JsonlError(f"{path} line {number}: {reason}", number)
            if on_bad is None:
                raise error from None
            on_bad(error, line)
            continue
        problem = check(row) if check is not None else None
        if problem:
            raise JsonlError(f"{path} line {number}: {problem}", number)
        rows.append(row)
    return rows


def write_jsonl(path, rows):
    """Write rows as JSON lines, atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def error_reason(e):
    """An exception in a few words: its type and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


METRIC_NUMBERS = ("train_loss", "test_loss", "test_recon", "test_kl", "active_units")


def read_metrics(path, epochs):
    """The rows of a run's ``metrics.jsonl`` for epochs 1 … ``epochs``, checked: a resumed run
    continues them (a row written after the checkpoint, by a run killed between the two writes,
    is dropped). A file that is not that is :class:`minivae.cli.UsageError`, one line."""
    from minivae.cli import UsageError

    fix = "restore the file (or remove it to resume without the earlier epochs' rows)"
    try:
        rows = read_jsonl(path)
    except JsonlError as e:
        raise UsageError(f"cannot resume: {e}; {fix}") from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None
    history = []
    for number, row in enumerate(rows, 1):
        epoch = row.get("epoch")
        counted = isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1
        bad = [f for f in METRIC_NUMBERS if not _finite(row.get(f))]
        if not counted or bad:
            what = ", ".join(bad) if counted else "its epoch"
            raise UsageError(f"cannot resume: {path} row {number}: {what} missing or not a number; {fix}")
        if epoch <= epochs:
            history.append(row)
    if [r["epoch"] for r in history] != list(range(1, epochs + 1)) and pathlib.Path(path).exists():
        raise UsageError(
            f"cannot resume: {path} holds epochs {[r['epoch'] for r in history]}, the checkpoint has done "
            f"1–{epochs}; {fix}"
        )
    return history


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
