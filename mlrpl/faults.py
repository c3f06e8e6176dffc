"""Injected faults, for the fault suite: kill this process at a named point.

    MLRPL_FAULT=checkpoint.between_renames        # SIGKILL the first time that point is reached
    MLRPL_FAULT=train.step:5                      # ... the 5th time

Points: ``train.step`` (after an optimiser step), ``checkpoint.between_renames`` (last.pt renamed,
best.pt not yet updated), ``checkpoint.write`` (a checkpoint's temporary file written, not yet
renamed), ``prototypes`` (during a prototype recomputation), ``cache.batch`` (a feature-cache
batch written to the temporary entry). Without ``MLRPL_FAULT`` a point costs one dict lookup.
"""
from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("MLRPL_FAULT")
    if not spec:
        return None
    name, _, n = spec.partition(":")
    return name, int(n or 1)


def point(name: str) -> None:
    """Kill this process (SIGKILL: no cleanup, no flush) when `name` is the armed fault point
    and it has been reached the armed number of times."""
    target = _target()
    if target is None or target[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
