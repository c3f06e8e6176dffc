"""NUS-WIDE (81 concepts) from the official label lists.

Layout (``root`` is the NUS-WIDE folder; each path can be overridden, relative to ``root``)::

    Concepts81.txt                                  # class names, one a line   (concepts=)
    ImageList/TrainImagelist.txt                    # split "train"             (image_list=)
    ImageList/TestImagelist.txt                     # split "test"
    TrainTestLabels/Labels_<concept>_Train.txt      # one 0/1 a line, aligned   (labels_dir=)
    TrainTestLabels/Labels_<concept>_Test.txt       #   with the image list

Labels are full: 1 is a positive, 0 a negative. Images without any positive label are dropped by
default (``drop_empty=True``, as CLSL does); ``drop_empty=False`` keeps them, all negative.

Image list lines are Windows paths (``actor\\0001_2124494179.jpg``); the backslashes become
``/`` and items are ``<image_dir>/<line>`` relative to ``root``, ``image_dir`` being ``Flickr``
by default (the folder of the official image archive; ``""`` or None for the lines as they are).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mlrpl.data.labelset import LabelSet
from mlrpl.data.readers.registry import register_reader
from mlrpl.data.readers.common import read_lines, read_names, resolve
from mlrpl.errors import DataError, require_dir

_SPLITS = {"train": "Train", "test": "Test"}



def read_nuswide(root, split: str | None = "train", concepts=None, image_list=None,
                 labels_dir=None, image_dir: str | None = "Flickr",
                 drop_empty: bool = True) -> LabelSet:
    """Read NUS-WIDE labels of `split` (``train`` or ``test``).

    Parameters
    ----------
    concepts : path or list of str, optional
        Class names; default ``Concepts81.txt``.
    image_list : path, optional
        Default ``ImageList/<Train|Test>Imagelist.txt``.
    labels_dir : path, optional
        Folder of ``Labels_<concept>_<Train|Test>.txt``; default ``TrainTestLabels``.
    image_dir : str, optional
        Prefix of the items; default ``Flickr``.
    drop_empty : bool
        Drop images without a positive label (default True).
    """
    root = require_dir(root, "NUS-WIDE root")
    split = (split or "train").lower()
    if split not in _SPLITS:
        raise DataError(f"split {split!r}; expected 'train' or 'test'", field="split")
    tag = _SPLITS[split]
    if concepts is None or isinstance(concepts, (str, Path)):
        names = read_names(resolve(root, concepts or "Concepts81.txt"), "NUS-WIDE concept list")
    else:
        names = [str(c) for c in concepts]
    list_path = resolve(root, image_list or f"ImageList/{tag}Imagelist.txt")
    lab_dir = resolve(root, labels_dir or "TrainTestLabels")

    entries = read_lines(list_path, f"NUS-WIDE {split} image list")
    n = len(entries)
    labels = np.empty((n, len(names)), dtype=np.int8)
    for j, c in enumerate(names):
        path = lab_dir / f"Labels_{c}_{tag}.txt"
        lines = read_lines(path, f"NUS-WIDE label file for concept {c!r}")
        if len(lines) != n:
            raise DataError(f"{len(lines)} labels, expected {n} (one a line, as many as the "
                            f"images of {str(list_path)!r})", path=path)
        col = np.empty(n, dtype=np.int8)
        for i, (ln, v) in enumerate(lines):
            if v not in ("0", "1"):
                raise DataError(f"label {v!r} is not 0 or 1", path=path, line=ln)
            col[i] = 1 if v == "1" else -1
        labels[:, j] = col

    ids = [line.replace("\\", "/") for _, line in entries]
    index = np.arange(n)
    if drop_empty:
        index = np.flatnonzero((labels == 1).any(1))
        labels = labels[index]
        ids = [ids[i] for i in index]
    items = [f"{image_dir}/{i}" for i in ids] if image_dir else list(ids)
    return LabelSet(items, names, labels, root=str(root), source=f"nuswide:{list_path}",
                    meta={"ids": ids, "drop_empty": drop_empty, "dropped": n - len(ids),
                          "list_index": index.tolist()})


@register_reader("nuswide")
def _reader(root, split=None, **options):
    return read_nuswide(root, split or "train", **options)
