"""Dataset readers: each turns a dataset on disk into a :class:`~mlrpl.data.labelset.LabelSet`.

``read_dataset(name, root, split, **options)`` is the single entry point; ``READERS`` (see
:mod:`mlrpl.data.readers.registry`) maps the dataset names the command line accepts to reader
functions with the signature ``reader(root, split, **options) -> LabelSet``.
"""
from __future__ import annotations

from mlrpl.data.labelset import LabelSet
from mlrpl.data.readers.registry import READERS, register_reader
from mlrpl.errors import DataError

__all__ = ["READERS", "read_dataset", "recorded_defaults", "register_reader",
           "with_recorded_defaults"]


def recorded_defaults(name) -> dict:
    """The reader options of dataset `name` whose default decides what the labels mean, with
    their defaults (VOC: ``difficult``)."""
    from mlrpl.data.readers import voc
    if name in voc.READER_NAMES:
        return {"difficult": voc.DIFFICULT_DEFAULT}
    return {}


def with_recorded_defaults(config: dict) -> dict:
    """A plain config dict (config.yaml, a checkpoint's config) with the reader options that
    decide what the labels mean filled in with their defaults where it leaves them out, so that
    the record says how the labels were read and a record made before an option was filled in
    compares equal to one made after. Returns a new dict; `config` is not changed."""
    data = config.get("data") if isinstance(config, dict) else None
    defaults = recorded_defaults(data.get("dataset")) if isinstance(data, dict) else {}
    if not defaults:
        return config
    options = data.get("reader_options")
    options = options if isinstance(options, dict) else {}
    return {**config, "data": {**data, "reader_options": {**defaults, **options}}}


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
