"""PASCAL VOC 2007 / 2012 classification labels.

Two sources, same result:

* ``ImageSets/Main/<class>_<split>.txt`` (lines ``<id> <1|-1|0>``; 0 = present only as difficult),
  with the image order of ``ImageSets/Main/<split>.txt`` (or of the first class file);
* ``Annotations/<id>.xml`` (objects with ``<difficult>``), for the ids of ``<split>.txt``.

A class present in an image only as difficult is a negative by default (the HCP protocol,
``difficult="negative"``) or ignored (``difficult="ignore"``, label 0, as ML-GCN and CLSL do).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mlrpl.data.labelset import LabelSet
from mlrpl.data.readers.registry import register_reader
from mlrpl.data.readers.common import read_lines
from mlrpl.errors import DataError, require_dir, require_file

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]
_DIFFICULT = {"negative": -1, "ignore": 0}
DIFFICULT_DEFAULT = "negative"
READER_NAMES = ("voc2007", "voc2012", "voc")


def difficult_rule(difficult: str, option: str = "data.reader_options.difficult=") -> str:
    """One line saying what the VOC difficult entries are, and how to change it (`option`: how
    the option is spelled where the line is shown, ``--difficult `` on the command line)."""
    if difficult == "ignore":
        return (f"VOC difficult entries: unknown ({option}ignore; the HCP rule, {option}negative, "
                f"counts them as negatives)")
    return f"VOC difficult entries: negative (the HCP rule; {option}ignore makes them unknown)"


def _read_ids(path: Path) -> list[str]:
    """Image ids, one a line; an id listed twice is an error (it would be trained on twice, or
    land in both parts of a holdout split)."""
    ids: dict[str, int] = {}
    for ln, line in read_lines(path, "VOC split list"):
        parts = line.split()
        if len(parts) != 1:
            raise DataError(f"expected one image id per line, got {len(parts)} fields", path=path,
                            line=ln)
        if parts[0] in ids:
            raise DataError(f"image id {parts[0]!r} listed twice (first on line {ids[parts[0]]})",
                            path=path, line=ln)
        ids[parts[0]] = ln
    return list(ids)


def _read_class_file(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    first: dict[str, int] = {}
    for ln, line in read_lines(path, "VOC class file"):
        parts = line.split()
        if len(parts) != 2:
            raise DataError(f"expected '<image id> <1|-1|0>', got {len(parts)} fields", path=path,
                            line=ln)
        try:
            v = int(parts[1])
        except ValueError:
            v = None
        if v not in (1, -1, 0):
            raise DataError(f"label {parts[1]!r} is not one of 1, -1, 0", path=path, line=ln)
        if parts[0] in out:
            raise DataError(f"image id {parts[0]!r} listed twice (first on line {first[parts[0]]})",
                            path=path, line=ln)
        out[parts[0]] = v
        first[parts[0]] = ln
    return out


def _find_root(root: Path) -> Path:
    """Accept VOC2007/, VOCdevkit/ (with one VOC20xx inside) or the ImageSets' parent."""
    if (root / "ImageSets").is_dir() or (root / "Annotations").is_dir():
        return root
    subs = sorted(p for p in root.glob("VOC20*") if p.is_dir())
    if len(subs) == 1:
        return subs[0]
    raise DataError("no VOC layout here: expected ImageSets/Main/ or Annotations/ "
                    "(or a VOCdevkit folder holding one VOC20xx)", path=root)


def read_voc(root, split: str | None = "trainval", difficult: str = DIFFICULT_DEFAULT,
             source: str = "auto", classes: list[str] | None = None) -> LabelSet:
    """Read VOC labels of `split` under `root` (a ``VOC2007``-style folder).

    Parameters
    ----------
    difficult : {"negative", "ignore"}
        What a class present only as difficult becomes.
    source : {"auto", "imagesets", "annotations"}
        ``auto`` uses the ImageSets class files when they exist, else the XML annotations.
    """
    root = _find_root(require_dir(root, "VOC root"))
    split = split or "trainval"
    if difficult not in _DIFFICULT:
        raise DataError(f"difficult={difficult!r}; expected one of {sorted(_DIFFICULT)}",
                        field="difficult")
    classes = list(classes or VOC_CLASSES)
    main = root / "ImageSets" / "Main"
    class_files = [main / f"{c}_{split}.txt" for c in classes]
    if source == "auto":
        source = "imagesets" if all(f.is_file() for f in class_files) else "annotations"
    split_file = main / f"{split}.txt"

    if source == "imagesets":
        per_class = [_read_class_file(require_file(f, f"VOC class file for {c!r}"))
                     for c, f in zip(classes, class_files)]
        ids = _read_ids(split_file) if split_file.is_file() else list(per_class[0])
        labels = np.empty((len(ids), len(classes)), dtype=np.int8)
        for j, (c, table, f) in enumerate(zip(classes, per_class, class_files)):
            missing = [i for i in ids if i not in table]
            if missing:
                raise DataError(f"image {missing[0]!r} of the split ({len(missing)} in all) has no "
                                f"line for class {c!r}", path=f)
            col = np.array([table[i] for i in ids], dtype=np.int8)
            col[col == 0] = _DIFFICULT[difficult]
            labels[:, j] = col
    elif source == "annotations":
        ids = _read_ids(require_file(split_file, f"VOC split list {split!r}"))
        index = {c: j for j, c in enumerate(classes)}
        labels = np.full((len(ids), len(classes)), -1, dtype=np.int8)
        for n, i in enumerate(ids):
            xml = require_file(root / "Annotations" / f"{i}.xml", "VOC annotation")
            try:
                tree = ET.parse(xml)
            except ET.ParseError as e:
                raise DataError(f"malformed XML ({e})", path=xml) from None
            state: dict[int, bool] = {}  # class -> seen non-difficult
            for obj in tree.getroot().iter("object"):
                name = (obj.findtext("name") or "").strip()
                if name not in index:
                    raise DataError(f"unknown class name {name!r}; expected one of {classes}",
                                    path=xml, field="object/name")
                diff = (obj.findtext("difficult") or "0").strip() == "1"
                j = index[name]
                state[j] = state.get(j, False) or not diff
            for j, clear in state.items():
                labels[n, j] = 1 if clear else _DIFFICULT[difficult]
    else:
        raise DataError(f"source={source!r}; expected auto, imagesets or annotations",
                        field="source")

    items = [f"JPEGImages/{i}.jpg" for i in ids]
    return LabelSet(items, classes, labels, root=str(root),
                    source=f"voc:{root}:{split} (difficult={difficult})",
                    meta={"ids": ids, "difficult": difficult})


@register_reader(*READER_NAMES)
def _reader(root, split=None, **options):
    return read_voc(root, split or "trainval", **options)
