"""Guards that keep a command's output folder whole: one writer at a time, and workers that end
with the process that started them.

    with FolderLock(out, "--out", "run"):      # refuses a folder another process is writing into
        ...

``FolderLock`` takes ``fcntl.flock`` on ``<folder>/.lock`` (the holder's process id is written into
it, for the message a second writer gets). The kernel drops a flock when its process dies, even by
SIGKILL, so a crashed command never leaves a folder locked. The lock file is opened without
following links: a ``.lock`` that is a symbolic link is refused, never written through.

``watch_parent()`` runs in a worker process: when the process that started it is gone (killed,
even by SIGKILL), the worker sends itself SIGTERM, so that its run's clean-up runs and it exits
instead of training on for nobody.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import threading
import time

from minivae.cli import UsageError

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
