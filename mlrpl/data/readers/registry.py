"""The reader registry: ``@register_reader("name", ...)`` on a function
``reader(root, split, **options) -> LabelSet``; readers of other packages register through the
entry-point group ``mlrpl.readers``."""
from __future__ import annotations

from pathlib import Path

from mlrpl.errors import DataError
from mlrpl.utils.registry import Registry


def _error(msg: str) -> DataError:
    return DataError(msg, field="dataset")


READERS = Registry("dataset", "mlrpl.data.readers", Path(__file__).parent, "mlrpl.readers",
                   _error, skip=("registry", "common"))


def register_reader(*names: str):
    """Function decorator: register a reader under each of ``names``."""
    def deco(fn):
        for n in names:
            READERS.add(n, fn)
        return fn
    return deco
