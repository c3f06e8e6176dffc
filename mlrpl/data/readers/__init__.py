"""Dataset readers: each turns a dataset on disk into a :class:`~mlrpl.data.labelset.LabelSet`.

``read_dataset(name, root, split, **options)`` is the single entry point; ``READERS`` (see
:mod:`mlrpl.data.readers.registry`) maps the dataset names the command line accepts to reader
functions with the signature ``reader(root, split, **options) -> LabelSet``.
"""
from __future__ import annotations

from mlrpl.data.labelset import LabelSet
from mlrpl.data.readers.registry import READERS, register_reader
from mlrpl.errors import DataError

__all__ = ["READERS", "read_dataset", "register_reader"]


def read_dataset(name: str, root, split: str | None = None, **options) -> LabelSet:
    """Read dataset `name` (see ``READERS.names()``) under `root`.

    >>> ls = read_dataset("voc2007", "data/VOCdevkit/VOC2007", "trainval")  # doctest: +SKIP
    >>> ls.labels.shape  # doctest: +SKIP
    (5011, 20)
    """
    reader = READERS.get(name)
    ls = reader(root, split, **options)
    if ls.num_items == 0:
        raise DataError(f"split {split!r} of dataset {name!r} is empty", path=root)
    return ls
