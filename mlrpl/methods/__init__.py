"""Methods: one module per method, registered by name.

A method is an ``nn.Module`` (see :class:`mlrpl.methods.base.Method`) that turns backbone feature
maps into logits, names its loss terms, and keeps its own state. The trainer knows nothing of any
particular method: adding one is a new module here plus a config.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil

from mlrpl.errors import ConfigError

_METHODS: dict[str, type] = {}


def register_method(name: str):
    def deco(cls):
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def _import_all():
    import mlrpl.methods as pkg
    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"mlrpl.methods.{mod.name}")


def list_methods() -> list[str]:
    _import_all()
    return sorted(_METHODS)


def get_method_class(name: str):
    _import_all()
    if name not in _METHODS:
        close = difflib.get_close_matches(str(name), list(_METHODS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown method {name!r}{hint} (available: {sorted(_METHODS)})")
    return _METHODS[name]
