"""Optional dependencies (the extras of pyproject.toml): one line when one is missing.

    from mlrpl.utils.optional import require
    require("matplotlib", "plot", "plots", "pass --no-plots")

imports ``matplotlib`` and returns it, or raises one :class:`~mlrpl.errors.ConfigError`:
``plots: matplotlib is not installed; pip install 'mlrpl[plot]' (or pass --no-plots)``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from mlrpl.errors import ConfigError


def require(module: str, extra: str, what: str, instead: str | None = None) -> ModuleType:
    """Import ``module`` (a top-level package of the extra ``extra``) and return it; raise a
    one-line ConfigError naming what needs it (``what``), the extra to install and, when given,
    what to do instead (``instead``, e.g. ``"pass train.tensorboard=false"``). A module that is
    installed but fails to import is named with its error, not called missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == top
        first = str(e).splitlines()[0] if str(e) else ""
        state = "is not installed" if missing else f"failed to import ({type(e).__name__}: {first})"
        hint = f"pip install 'mlrpl[{extra}]'" + (f" (or {instead})" if instead else "")
        raise ConfigError(f"{what}: {top} {state}; {hint}") from None
