"""YOLO label folders (the layout of COCO128): image-level labels from box label files.

Layout: ``images/<split>/<id>.<ext>``, ``labels/<split>/<id>.txt`` (one object a line:
``class cx cy w h``) and a class-name YAML (``names:`` as a list or an ``{id: name}`` mapping,
either in ``classes.yaml``/``data.yaml`` at the root or given as ``classes=``). An image without a
label file, or with an empty one, has no positive: all its classes are negatives.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from mlrpl.data.labelset import LabelSet
from mlrpl.data.readers.registry import register_reader
from mlrpl.data.readers.common import read_lines
from mlrpl.errors import DataError, require_dir, require_file

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def read_class_yaml(path) -> list[str]:
    path = require_file(path, "class-name YAML")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", path=path) from None
    except yaml.YAMLError as e:
        raise DataError(f"malformed YAML ({e})", path=path) from None
    names = doc.get("names") if isinstance(doc, dict) else doc
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError("class ids under 'names' must be integers", path=path,
                            field="names") from None
        if keys != list(range(len(keys))):
            raise DataError(f"class ids under 'names' must run 0..{len(keys) - 1} without gaps",
                            path=path, field="names")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError("expected a non-empty list of class names under 'names'", path=path,
                        field="names")
    return names


def read_yolo(root, split: str | None = None, classes=None) -> LabelSet:
    root = require_dir(root, "YOLO dataset root")
    if classes is None:
        for cand in ("classes.yaml", "data.yaml", "dataset.yaml"):
            if (root / cand).is_file():
                classes = root / cand
                break
        else:
            raise DataError("no class-name YAML (classes.yaml, data.yaml or dataset.yaml) and no "
                            "classes= given", path=root)
    names = read_class_yaml(classes) if isinstance(classes, (str, Path)) else list(classes)
    img_dir = root / "images" / split if split else root / "images"
    lab_dir = root / "labels" / split if split else root / "labels"
    require_dir(img_dir, "YOLO image folder")
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    labels = np.full((len(images), len(names)), -1, dtype=np.int8)
    for n, img in enumerate(images):
        lab = lab_dir / f"{img.stem}.txt"
        if not lab.is_file():
            continue
        for ln, line in read_lines(lab, "YOLO label file"):
            parts = line.split()
            if len(parts) < 5 and len(parts) != 1:
                raise DataError(f"expected 'class cx cy w h' (5 fields), got {len(parts)}",
                                path=lab, line=ln)
            try:
                c = int(parts[0])
            except ValueError:
                raise DataError(f"class id {parts[0]!r} is not an integer", path=lab,
                                line=ln) from None
            if not 0 <= c < len(names):
                raise DataError(f"class id {c} outside 0..{len(names) - 1}", path=lab, line=ln)
            labels[n, c] = 1
    items = [str(p.relative_to(root)) for p in images]
    return LabelSet(items, names, labels, root=str(root), source=f"yolo:{root}:{split}",
                    meta={"ids": [p.stem for p in images]})


@register_reader("yolo", "coco128")
def _reader(root, split=None, **options):
    return read_yolo(root, split, **options)
