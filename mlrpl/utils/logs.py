"""The library's logger ``mlrpl`` and the two places its output goes.

The library only logs; where the lines go is decided by the program: the command line shows
them on stdout (:func:`console`, main process only), and a Trainer copies them into its run
directory's ``train.log`` while it works (:func:`log_file`), then takes its handler away again.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("mlrpl")


class _Console(logging.StreamHandler):
    """Marks the handler :func:`console` installs, so that it is installed once. It writes to
    whatever ``sys.stdout`` (or ``sys.stderr``, see :func:`console`) is at the time (a redirected
    or captured stream, not a closed one)."""

    to_stderr = False

    @property
    def stream(self):
        return sys.stderr if self.to_stderr else sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def console(level: int = logging.INFO, to_stderr: bool = False) -> None:
    """Show the library's messages on stdout (on stderr with `to_stderr`: for a verb whose
    stdout is its result, JSON or CSV), from the main process of a torchrun job only."""
    main = int(os.environ.get("RANK", "0")) == 0
    log.setLevel(level if main else logging.WARNING)
    handler = next((h for h in log.handlers if isinstance(h, _Console)), None)
    if handler is None:
        handler = _Console(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    handler.to_stderr = to_stderr
    log.propagate = False


@contextlib.contextmanager
def log_file(path: Path | None):
    """Append the library's messages to ``path`` inside the block (nothing when None)."""
    if path is None:
        yield
        return
    h = logging.FileHandler(path)
    h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    old_level = log.level
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    log.addHandler(h)
    try:
        yield
    finally:
        log.removeHandler(h)
        h.close()
        log.setLevel(old_level)
