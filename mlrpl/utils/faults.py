"""Injected faults, for the fault suite: kill this process at a named point.

A point does nothing until the fault suite arms it, explicitly, in the process itself, before
the command runs (``tests/test_faults_run.py`` starts its runs this way)::

    python -c "import sys; from mlrpl.utils import faults; faults.arm(sys.argv[1]);
               from mlrpl.cli import main; sys.exit(main(sys.argv[2:]))" train.step:5 train ...

``arm("checkpoint.between_renames")`` kills the first time that point is reached,
``arm("train.step:5")`` the 5th time. Nothing in the environment arms a point: ``MLRPL_FAULT``,
which used to, is not read any more, so no variable left set in a shell can kill a user's run.
Arming holds for this process only (the processes it starts are not armed).

Points: ``train.step`` (after an optimiser step), ``checkpoint.between_renames`` (last.pt renamed,
best.pt not yet updated), ``checkpoint.write`` (a checkpoint's temporary file written, not yet
renamed), ``prototypes`` (during a prototype recomputation), ``cache.batch`` (a feature-cache
batch written to the temporary entry). Unarmed, a point costs one comparison with None.
"""
from __future__ import annotations

import os
import signal

POINTS = ("train.step", "checkpoint.between_renames", "checkpoint.write", "prototypes",
          "cache.batch")

_armed: tuple[str, int] | None = None   # (point, the arrival that kills); set by arm() only
_counts: dict[str, int] = {}


def arm(spec: str) -> None:
    """Arm one point in this process: ``name`` or ``name:n`` (killed on the n-th arrival)."""
    global _armed
    name, _, n = spec.partition(":")
    if name not in POINTS:
        raise ValueError(f"unknown fault point {name!r}; expected one of {list(POINTS)}")
    if not (n or "1").isdigit() or int(n or 1) < 1:
        raise ValueError(f"bad fault count {n!r} in {spec!r}; expected an integer >= 1")
    _armed = (name, int(n or 1))
    _counts.clear()


def point(name: str) -> None:
    """Kill this process (SIGKILL: no cleanup, no flush) when `name` is the armed fault point
    and it has been reached the armed number of times."""
    if _armed is None or _armed[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _armed[1]:
        os.kill(os.getpid(), signal.SIGKILL)
