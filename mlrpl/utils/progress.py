"""Progress of long loops (feature caching, training epochs, prototype passes).

Where the output goes decides the form:

* on an interactive terminal (stderr is a TTY), or with ``enable=True``: a tqdm bar, removed when
  the loop ends;
* otherwise, with ``enable=None`` (a log file, CI, ``nohup``, a pipe: where a bar's carriage
  returns would only clutter the file): INFO lines on the ``mlrpl`` logger, so on the console and
  in the run's ``train.log``. A sized iterable gets a line each time it passes another tenth of
  its length, the last one at its end (at most 10 lines), e.g.
  ``caching features: 30% (304/1011 images, 12.1 s, ~28 s left)``; an iterable without a length
  gets a line every ``every`` items or every ``interval`` seconds, whichever comes first, and one
  at its end. ``log=False`` leaves such lines out (a pass whose caller reports it otherwise, such
  as an evaluation whose metrics follow at once);
* ``enable=False`` (``train.progress=never``, the processes other than the main one): nothing.

A DataLoader with a fixed batch size is counted in images; any other iterable in its items.
"""
from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm

_logger = logging.getLogger("mlrpl")


def progress(iterable, desc: str = "", enable: bool | None = None, log: bool = True,
             every: int = 100, interval: float = 30.0, **kw):
    """Iterate over ``iterable`` showing progress as the module says: a tqdm bar on a terminal
    (or with ``enable=True``), log lines without one (``enable=None``), nothing with
    ``enable=False``. ``every`` and ``interval`` pace the lines of an iterable without len()."""
    bar = sys.stderr.isatty() if enable is None else bool(enable)
    # Built in every case, shown or not, so that a run draws the same random numbers with or
    # without a terminal: tqdm.auto starts an iterator of its iterable when it is built, which for
    # a DataLoader without its own generator draws a seed from torch's global one.
    shown = tqdm(iterable, desc=desc, disable=not bar, leave=False, dynamic_ncols=True, **kw)
    if bar or enable is not None or not log:
        return shown
    return _LogLines(iterable, shown, desc, every, interval)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _length(iterable) -> int | None:
    try:
        return len(iterable)
    except TypeError:
        return None


class _LogLines:
    """The log-line form of :func:`progress` (iterable once, like a tqdm object)."""

    def __init__(self, iterable, wrapped, desc: str, every: int, interval: float):
        self.iterable, self.wrapped = iterable, wrapped
        self.desc = desc or "progress"
        self.every = max(int(every), 1)
        self.interval = float(interval)
        self.total = _length(iterable)
        # A DataLoader with a fixed batch size: report images (its samples), not batches.
        self.batch_size, self.samples = None, None
        batch_size = getattr(iterable, "batch_size", None)
        if isinstance(batch_size, int) and batch_size > 0 and hasattr(iterable, "dataset"):
            self.batch_size = batch_size
            if self.total is not None:
                sampler = _length(getattr(iterable, "sampler", None))
                self.samples = (self.total * batch_size
                                if getattr(iterable, "drop_last", False) or sampler is None
                                else sampler)
        self.unit = ("images" if self.batch_size else
                     "batches" if hasattr(iterable, "dataset") else "")

    def __len__(self):
        return len(self.iterable)

    def _count(self, n: int) -> str:
        if self.batch_size is None:
            return f"{n}" if self.total is None else f"{n}/{self.total}"
        done = n * self.batch_size
        return f"{done}" if self.samples is None else f"{min(done, self.samples)}/{self.samples}"

    def _line(self, n: int, elapsed: float, end: bool) -> None:
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            pct = min(100 * n // self.total, 100)
            left = ("" if end or n >= self.total
                    else f", ~{_duration(elapsed * (self.total - n) / n)} left")
            _logger.info(f"{self.desc}: {pct}% ({self._count(n)}{unit}, {_duration(elapsed)}"
                         f"{left})")
        elif end:
            _logger.info(f"{self.desc}: done ({self._count(n)}{unit}, {_duration(elapsed)})")
        else:
            _logger.info(f"{self.desc}: {self._count(n)}{unit} so far ({_duration(elapsed)})")

    def __iter__(self):
        start = last = time.monotonic()
        n, tenth, logged = 0, 0, -1
        for item in self.wrapped:
            yield item
            n += 1
            now = time.monotonic()
            if self.total:
                reached = 10 * n // self.total
                if reached > tenth and n <= self.total:
                    tenth, logged = reached, n
                    self._line(n, now - start, end=False)
            elif n % self.every == 0 or now - last >= self.interval:
                last, logged = now, n
                self._line(n, now - start, end=False)
        if n and logged != n:
            self._line(n, time.monotonic() - start, end=True)
