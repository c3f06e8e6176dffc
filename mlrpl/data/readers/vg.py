"""Visual Genome VG-200, as the HCP-MLR-PL code reads it.

Files (all under ``root`` by default; each name can be overridden, relative paths being taken
relative to ``root``):

=====================  ==========================================  ================================
option                 default                                     content
=====================  ==========================================  ================================
``labels_json``        ``vg_category_200_labels_index.json``       ``{image name: [class index]}``
``train_list``         ``train_list_500.txt``                      split ``train``: one name a line
``test_list``          ``test_list_500.txt``                       split ``test``: one name a line
``classes``            ``vg_category_200.txt``                     class names, one a line (or a
                                                                   list of names)
``image_dir``          ``VG_100K``                                 folder of the images (``""``
                                                                   or None: names as they are)
=====================  ==========================================  ================================

Labels are full, as in HCP-MLR-PL: the classes listed for an image are positives, all other
classes negatives. The image order is that of the list file. Items are
``<image_dir>/<image name>`` relative to ``root``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlrpl.data.labelset import LabelSet
from mlrpl.data.readers.registry import register_reader
from mlrpl.data.readers.common import read_lines, read_names, resolve
from mlrpl.errors import DataError, require_dir, require_file

DEFAULT_FILES = {
    "labels_json": "vg_category_200_labels_index.json",
    "train_list": "train_list_500.txt",
    "test_list": "test_list_500.txt",
    "classes": "vg_category_200.txt",
}
_SPLITS = {"train": "train_list", "test": "test_list", "val": "test_list"}


def read_vg(root, split: str | None = "train", labels_json=None, train_list=None, test_list=None,
            classes=None, image_dir: str | None = "VG_100K") -> LabelSet:
    """Read VG-200 labels of `split` (``train`` or ``test``; ``val`` means ``test``).

    See the module docstring for the files and their default names.
    """
    root = require_dir(root, "VG root")
    split = split or "train"
    if split not in _SPLITS:
        raise DataError(f"split {split!r}; expected 'train' or 'test'", field="split")
    json_path = resolve(root, labels_json or DEFAULT_FILES["labels_json"])
    list_opt = train_list if _SPLITS[split] == "train_list" else test_list
    list_path = resolve(root, list_opt or DEFAULT_FILES[_SPLITS[split]])

    if classes is None or isinstance(classes, (str, Path)):
        names_path = resolve(root, classes or DEFAULT_FILES["classes"])
        if not names_path.is_file():
            raise DataError("VG class-name file not found (one name a line; give classes= a "
                            "path or a list of names)", path=names_path)
        names = read_names(names_path, "VG class-name file")
    else:
        names = [str(c) for c in classes]
        names_path = None
    num_classes = len(names)

    json_path = require_file(json_path, "VG label json")
    try:
        with open(json_path, encoding="utf-8") as fh:
            table = json.load(fh)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg}, column {e.colno})", path=json_path,
                        line=e.lineno) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", path=json_path) from None
    if not isinstance(table, dict):
        raise DataError(f"expected an object mapping image names to lists of class indices, "
                        f"got {type(table).__name__}", path=json_path)

    entries = read_lines(list_path, f"VG {split} image list")
    labels = np.full((len(entries), num_classes), -1, dtype=np.int8)
    for n, (ln, name) in enumerate(entries):
        if name not in table:
            raise DataError(f"image {name!r} is not in the label json {str(json_path)!r}",
                            path=list_path, line=ln)
        idx = table[name]
        if not isinstance(idx, list):
            raise DataError(f"expected a list of class indices, got {type(idx).__name__}",
                            path=json_path, field=name)
        for c in idx:
            if not isinstance(c, int) or isinstance(c, bool):
                raise DataError(f"class index {c!r} is not an integer", path=json_path, field=name)
            if not 0 <= c < num_classes:
                raise DataError(f"class index {c} outside 0..{num_classes - 1} "
                                f"({num_classes} classes"
                                + (f" in {str(names_path)!r})" if names_path else ")"),
                                path=json_path, field=name)
            labels[n, c] = 1

    ids = [name for _, name in entries]
    items = [f"{image_dir}/{i}" for i in ids] if image_dir else list(ids)
    return LabelSet(items, names, labels, root=str(root), source=f"vg:{list_path}",
                    meta={"ids": ids, "labels_json": str(json_path)})


@register_reader("vg200", "vg")
def _reader(root, split=None, **options):
    return read_vg(root, split or "train", **options)
