"""Dataset readers: each turns a dataset on disk into a :class:`~mlrpl.data.labelset.LabelSet`.

``read_dataset(name, root, split, **options)`` is the single entry point; ``READERS`` maps the
dataset names the command line accepts to reader functions with the signature
``reader(root, split, **options) -> LabelSet``.
"""
from __future__ import annotations

from typing import Callable

from mlrpl.data.labelset import LabelSet
from mlrpl.errors import DataError

READERS: dict[str, Callable[..., LabelSet]] = {}


def register_reader(*names: str):
    def deco(fn):
        for n in names:
            READERS[n] = fn
        return fn
    return deco


def read_dataset(name: str, root, split: str | None = None, **options) -> LabelSet:
    """Read dataset `name` (see ``READERS``) under `root`.

    >>> ls = read_dataset("voc2007", "data/VOCdevkit/VOC2007", "trainval")  # doctest: +SKIP
    >>> ls.labels.shape  # doctest: +SKIP
    (5011, 20)
    """
    _load_all()
    try:
        reader = READERS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(READERS)}",
                        field="dataset") from None
    ls = reader(root, split, **options)
    if ls.num_items == 0:
        raise DataError(f"split {split!r} of dataset {name!r} is empty", path=root)
    return ls


def _load_all():
    # Imported lazily so that each reader module registers itself.
    from mlrpl.data.readers import voc, yolo  # noqa: F401
    for mod in ("coco", "vg", "nuswide", "tabular"):
        try:
            __import__(f"mlrpl.data.readers.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"mlrpl.data.readers.{mod}":
                raise
