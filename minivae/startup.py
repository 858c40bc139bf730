"""Ctrl-C while a command is still starting: one line on stderr, not a traceback.

``python -m minivae.train`` imports NumPy, Numba and this package before its ``main`` can catch
anything, and a Ctrl-C in that second would end in a traceback of the import machinery. Imported
first by ``minivae/__init__.py``, this module sees whether the process is a minivae command
(``python -m minivae.…`` or a ``minivae-…`` console script) and, if so, has an uncaught
KeyboardInterrupt said in one line; the exit status stays SIGINT's (130). A program that merely
imports minivae keeps its own handling.
"""

from __future__ import annotations

import os
import sys


def command_name():
    """``minivae.train`` for ``python -m minivae.train …``, ``minivae-train`` for the console
    script; None when the process is not a minivae command."""
    argv = list(getattr(sys, "orig_argv", None) or [])
    if "-m" in argv[1:-1]:
        module = argv[argv.index("-m", 1) + 1]
        return module if module.split(".")[0] == "minivae" else None
    script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return script if script.startswith("minivae-") else None


def quiet_interrupts(name=None):
    """In a minivae command: an uncaught KeyboardInterrupt (one that came before ``main`` could
    catch it, while modules were imported) prints one line instead of a traceback."""
    name = name or command_name()
    if name is None:
        return
    previous = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print(f"{name}: interrupted while starting; nothing was written", file=sys.stderr)
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


quiet_interrupts()
