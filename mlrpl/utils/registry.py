"""A name -> object registry filled by decorators, by the modules of a package and by entry points.

Methods (:mod:`mlrpl.methods.base`) and dataset readers (:mod:`mlrpl.data.readers.registry`)
each keep one. The package's own modules are imported the first time the registry is asked (each
registers itself with the decorator); other packages register through the entry-point group
(``[project.entry-points."mlrpl.methods"] toy = "toy_pkg.toy"``: loading the module registers).
A name registered twice by two different objects is an error. A registry reads as a mapping name
-> object (``dict(registry)``, ``name in registry``), loaded first.

``package`` None: no package modules to import (the built-in entries register in the module that
creates the registry, as the backbones do).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Iterator


class Registry:
    def __init__(self, kind: str, package: str | None, package_dir: Path | None,
                 entry_group: str, error: Callable[[str], Exception], skip: Iterable[str] = ()):
        self.kind, self.package = kind, package
        self.package_dir = None if package_dir is None else Path(package_dir)
        self.entry_group, self.error, self.skip = entry_group, error, set(skip)
        self._items: dict[str, object] = {}
        self._loaded = False

    def add(self, name: str, obj) -> None:
        have = self._items.get(name)
        if have is not None and have is not obj and _origin(have) != _origin(obj):
            raise self.error(f"{self.kind} name {name!r} is already registered by "
                             f"{_origin(have)}; choose another name")
        self._items[name] = obj

    def taken(self, name: str) -> bool:
        """Whether `name` is registered already, without loading anything (for a decorator that
        refuses any second registration)."""
        return name in self._items

    def load(self) -> None:
        """Import the package's modules and the entry points of the group (once)."""
        if self._loaded:
            return
        self._loaded = True
        modules = [] if self.package is None else pkgutil.iter_modules([str(self.package_dir)])
        for mod in modules:
            if not mod.ispkg and not mod.name.startswith("_") and mod.name not in self.skip:
                importlib.import_module(f"{self.package}.{mod.name}")
        for ep in metadata.entry_points(group=self.entry_group):
            try:
                ep.load()
            except Exception as e:  # a broken plug-in must not hide the built-in entries
                raise self.error(f"the {self.kind} entry point {ep.name!r} ({ep.value}) failed to "
                                 f"load: {type(e).__name__}: {e}") from None

    def refresh(self) -> None:
        """Look at the entry points again on the next request (after installing a package)."""
        self._loaded = False

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)

    def get(self, name: str):
        self.load()
        if name not in self._items:
            close = difflib.get_close_matches(str(name), list(self._items), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(f"unknown {self.kind} {name!r}{hint} (available: "
                             f"{sorted(self._items)})")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        self.load()
        return name in self._items

    def keys(self) -> list[str]:
        return self.names()

    def __getitem__(self, name: str):
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load()
        return len(self._items)


def _origin(obj) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
