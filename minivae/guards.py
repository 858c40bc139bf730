"""Guards that keep a command's output folder whole: one writer at a time, and workers that end
with the process that started them.

    with FolderLock(out, "--out", "run"):      # refuses a folder another process is writing into
        ...

``FolderLock`` takes ``fcntl.flock`` on ``<folder>/.lock`` (the holder's process id is written into
it, for the message a second writer gets). The kernel drops a flock when its process dies, even by
SIGKILL, so a crashed command never leaves a folder locked. The lock file is opened without
following links: a ``.lock`` that is a symbolic link is refused, never written through.

``OutFolder`` is a command's output folder: made (with the parents it lacks) only once the command's
input is checked, locked by a ``FolderLock`` while the command writes, and removed again — with the
parents it made — when the command ends without having written anything into it:

    with OutFolder(out, "--out", "explore") as folder:   # one line (UsageError) if it cannot be
        ...                                              # made or written into

A run's other guards, each a context manager, each turning one kind of fault into one line:

    with DeferredSignals(where) as signals:    # Ctrl-C, SIGTERM: wait for the step under way
        with disk_errors(where):               # a full disk: say which file, and what is kept
            with enough_memory(needed, what, where):   # refused before anything is allocated
                ...

``where()`` says where the command is, as (its stage, what it keeps): a fault in the stage
"start-up" — before anything was written — is a usage error (:class:`UsageError`, exit 2); a
later one stops the command with :class:`Stopped` (one line; exit 1, or 128 + the signal).

``watch_parent()`` runs in a worker process: when the process that started it is gone (killed,
even by SIGKILL), the worker sends itself SIGTERM, so that its run's clean-up runs and it exits
instead of training on for nobody.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pathlib
import signal
import threading
import time

from minivae.cli import EXIT_FAILED, UsageError, check_memory
from minivae.files import WriteError

LOCK = ".lock"


class FolderLock:
    """An exclusive, non-blocking ``flock`` on ``folder/name`` for as long as it is held.

    ``what`` names the folder in messages (``--out``), ``who`` the kind of writer ("run",
    "sweep"). :meth:`acquire` raises :class:`UsageError` (one line) when another process holds
    the lock, when the lock file is a link or not a regular file, or when it cannot be written
    (a full disk, no permission); nothing is left behind then."""

    def __init__(self, folder, what="--out", who="run", name=LOCK):
        self.folder, self.what, self.who, self.name = folder, what, who, name
        self.fd = None

    @property
    def path(self):
        return self.folder / self.name

    def acquire(self):
        lock = self.path
        while True:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise UsageError(f"{lock} is a symbolic link; remove it (never written through)") from None
                raise UsageError(f"cannot write into {self.what} {self.folder}: {e.strerror or e}") from None
            if not _is_regular(fd):
                os.close(fd)
                raise UsageError(f"{lock} is not a regular file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise UsageError(
                    f"another {self.who} (process {holder}) is writing into {self.folder}; wait for "
                    f"it to end, or choose another {self.what}"
                ) from None
            try:  # the previous holder may have removed the file between our open and our lock
                same = os.path.samestat(os.fstat(fd), os.stat(lock, follow_symlinks=False))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:  # a full disk: the lock is not taken, and its file not left
            self.fd = fd
            self.release()
            raise UsageError(f"cannot write into {self.what} {self.folder}: {e.strerror or e}") from None
        self.fd = fd
        return self

    def release(self):
        """Unlock, removing the lock file (while still holding it, so no one else's goes)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


class OutFolder:
    """A command's output folder, made and locked for as long as it is held (a context manager).

    :meth:`acquire` refuses (:class:`UsageError`, one line) a path that exists and is not a
    folder, a folder that cannot be made or written into (the lock file is the first write: a
    full disk, no permission, a read-only file system) and a folder another process is writing
    into. :meth:`release` unlocks; the folders it made are removed again while they are empty,
    so a command that fails before its first file leaves nothing behind."""

    def __init__(self, path, what="--out", who="run"):
        self.path, self.what, self.who = pathlib.Path(path), what, who
        self.made, self.lock = [], None  # the folders made here, outermost first

    def check(self):
        """Refuse, before anything is made, a path that is not a folder or cannot be one (a file
        on its way, a name too long, a loop of links). Returns the folders to make, innermost
        first."""
        path = self.path
        try:
            if path.exists() and not path.is_dir():
                raise UsageError(f"{self.what} {path} exists and is not a folder")
            missing = []
            for folder in (path, *path.parents):
                if folder.is_dir():
                    break
                if folder.exists() or folder.is_symlink():  # a file, or a link to nowhere
                    raise UsageError(f"cannot write into {self.what} {path}: {folder} is not a folder")
                missing.append(folder)
        except OSError as e:
            raise UsageError(f"{self.what} {path}: {e.strerror or e}") from None
        return missing

    def _make(self):
        """Make the folders :meth:`check` finds missing, outermost first (``made``); one that
        cannot be made is :class:`UsageError`, with those made before it removed again."""
        try:
            for folder in reversed(self.check()):
                try:
                    folder.mkdir()
                except FileExistsError:  # made by someone else meanwhile: fine if a folder
                    if not folder.is_dir():
                        raise
                    continue
                self.made.append(folder)
        except OSError as e:
            self.release()
            raise UsageError(f"cannot write into {self.what} {self.path}: {e.strerror or e}") from None

    def try_make(self):
        """Refuse now a folder that could not be made (under /proc, on a read-only disk), for a
        command that makes it only with its first file: the folders are made, then removed
        again. Takes no lock."""
        self._make()
        self.release()

    def acquire(self):
        path = self.path
        self._make()
        try:
            self.lock = FolderLock(path, self.what, self.who).acquire()
        except UsageError:
            self.release()
            raise
        return self

    def release(self):
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        for folder in reversed(self.made):
            try:
                folder.rmdir()  # only when empty: nothing was written into it
            except OSError:
                break
        self.made = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _is_regular(fd):
    import stat

    return stat.S_ISREG(os.fstat(fd).st_mode)


def watch_parent(interval=0.5):
    """In a worker process: SIGTERM to itself once its parent process has gone (its parent id
    changes when the parent dies: the worker is re-parented). A daemon thread; returns at once."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def remove_temporaries(folder, names):
    """Remove what atomic writes of a killed command left in ``folder`` (``.<name>.<random>.tmp``
    for each of ``names``): with the folder locked, no other process can be writing them. Returns
    (count, bytes)."""
    count = size = 0
    for name in names:
        for tmp in pathlib.Path(folder).glob(f".{name}.*.tmp"):
            try:
                size += tmp.stat().st_size
                tmp.unlink()
                count += 1
            except OSError:
                pass
    return count, size


# --------------------------------------------------------------------------------------------
# Signals, disk errors, memory: one line each
# --------------------------------------------------------------------------------------------


class Stopped(Exception):
    """A command that stopped early: ``str(e)`` is its one line, ``code`` its exit code."""

    def __init__(self, line, code=EXIT_FAILED):
        super().__init__(line)
        self.code = code


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM where it could not wait; ``signum`` says which."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


def _stop(why, where):
    stage, kept = where()
    if stage == "start-up":
        return UsageError(why)
    return Stopped(f"{why}; stopping during {stage} ({kept})")


class DeferredSignals:
    """Ctrl-C (SIGINT) and SIGTERM. While ``deferred`` (the training steps) a signal sets
    ``requested``: the loop finishes its step, saves and exits. Otherwise — or at a second
    signal — it stops the command where it is: :class:`Stopped`, exit 128 + the signal."""

    def __init__(self, where):
        self.where, self.requested, self.deferred = where, None, False

    def __enter__(self):
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        if self.deferred and self.requested is None:
            self.requested = signum
            return
        raise Interrupted(signum)

    def __exit__(self, kind, e, tb):
        for s, old in self._old.items():
            signal.signal(s, old)
        if isinstance(e, Interrupted):
            stage, kept = self.where()
            raise Stopped(f"{signal.Signals(e.signum).name} during {stage}; {kept}", 128 + int(e.signum)) from None


@contextlib.contextmanager
def disk_errors(where):
    """A file that cannot be written (a full disk, a size limit: :class:`WriteError`) stops the
    command in one line naming the file."""
    try:
        yield
    except WriteError as e:
        raise _stop(str(e), where) from None


@contextlib.contextmanager
def enough_memory(needed, what, where):
    """Refuse, before anything is allocated, a command whose estimated peak of ``needed`` bytes
    exceeds the memory available (:func:`minivae.cli.check_memory`); a MemoryError all the same
    stops it in one line."""
    check_memory(needed, what)
    try:
        yield
    except MemoryError:
        raise _stop("out of memory", where) from None
