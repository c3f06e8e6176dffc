"""MS-COCO (2014 / 2017) image-level labels from the instance annotations.

Layout (``root`` is the COCO folder)::

    annotations/instances_<split>.json      # or any json given as annotations=
    <split>/<file_name>                      # or images/<split>/<file_name>

* Classes are the json's ``categories`` sorted by category id (the usual 80 classes for COCO,
  whose ids run 1..90 with gaps); the column order is that of the ids, the names those of the
  categories.
* Items are the json's ``images`` in file order (the order ``pycocotools`` and the ASL / ML-GCN
  loaders use), as ``<split>/<file_name>`` relative to ``root``, or ``images/<split>/<file_name>``
  when ``root/images/<split>/`` exists.
* A class is positive in an image when at least one annotation of that category refers to the
  image, and negative otherwise (COCO labels are full: no unknowns). Annotations with
  ``iscrowd=1`` count as positives like any other (as the ASL and ML-GCN loaders count them: a
  crowd of people is still a person in the image).
* An image without any annotation is kept with all classes negative (``drop_empty=False``, the
  default), or dropped (``drop_empty=True``).

Registered as ``coco`` and ``coco2014`` (default split ``train2014``) and ``coco2017`` (default
split ``train2017``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlrpl.data.labelset import LabelSet
from mlrpl.data.readers.registry import register_reader
from mlrpl.errors import DataError, require_dir, require_file


def _load_json(path: Path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON ({e.msg}, column {e.colno})", path=path,
                        line=e.lineno) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e})", path=path) from None


def _get(record, key: str, kind, path: Path, where: str):
    """``record[key]`` checked to be of type `kind`, else a DataError naming ``where.key``."""
    if not isinstance(record, dict):
        raise DataError(f"expected an object, got {type(record).__name__}", path=path, field=where)
    if key not in record:
        raise DataError(f"missing key {key!r}", path=path, field=f"{where}.{key}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"expected {names}, got {type(value).__name__} {value!r}", path=path,
                        field=f"{where}.{key}")
    return value


def _by_id(records: list, section: str, key: str, kind: str, path: Path) -> dict[int, str]:
    """{record["id"]: record[key]} of a COCO section, in file order; a repeated id is an error."""
    out: dict[int, str] = {}
    for k, record in enumerate(records):
        where = f"{section}[{k}]"
        rid = _get(record, "id", int, path, where)
        value = _get(record, key, str, path, where)
        if rid in out:
            raise DataError(f"duplicate {kind} id {rid}", path=path, field=f"{where}.id")
        out[rid] = value
    return out


def _split_from_json(path: Path) -> str | None:
    stem = path.stem
    for prefix in ("instances_", "image_info_"):
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return None


def read_coco(root, split: str | None = "train2014", annotations=None,
              drop_empty: bool = False) -> LabelSet:
    """Read the COCO instance annotations of `split` under `root` as image-level labels.

    Parameters
    ----------
    root : path
        The COCO folder (holding ``annotations/`` and the image folders).
    split : str
        ``train2014``, ``val2014``, ``train2017``, ``val2017``, ...; selects
        ``annotations/instances_<split>.json`` and the image folder ``<split>/``. When None and
        `annotations` is given, taken from the json's name (``instances_<split>.json``).
    annotations : path, optional
        The json file to read instead of ``annotations/instances_<split>.json`` (a relative path
        is taken relative to `root` when it exists there, else to the working directory).
    drop_empty : bool
        Drop images that have no annotation at all (default False: keep them, all negative).
    """
    root = require_dir(root, "COCO root")
    if annotations is not None:
        ann_path = Path(annotations)
        if not ann_path.is_absolute() and (root / ann_path).exists():
            ann_path = root / ann_path
        split = split or _split_from_json(ann_path)
    else:
        split = split or "train2014"
        ann_path = root / "annotations" / f"instances_{split}.json"
    ann_path = require_file(ann_path, "COCO annotation file")
    doc = _load_json(ann_path)
    if not isinstance(doc, dict):
        raise DataError(f"expected a JSON object at the top level, got {type(doc).__name__}",
                        path=ann_path)
    for key in ("images", "categories", "annotations"):
        if key not in doc:
            raise DataError(f"missing key {key!r} (expected a COCO instances file with "
                            f"'images', 'categories' and 'annotations')", path=ann_path, field=key)
        if not isinstance(doc[key], list):
            raise DataError(f"expected a list, got {type(doc[key]).__name__}", path=ann_path,
                            field=key)

    # categories, in id order
    cats = _by_id(doc["categories"], "categories", "name", "category", ann_path)
    if not cats:
        raise DataError("no categories", path=ann_path, field="categories")
    cat_ids = sorted(cats)
    col = {cid: j for j, cid in enumerate(cat_ids)}
    classes = [cats[cid] for cid in cat_ids]

    # images, in file order
    images = _by_id(doc["images"], "images", "file_name", "image", ann_path)
    image_ids: list[int] = list(images)
    file_names: list[str] = list(images.values())
    row: dict[int, int] = {iid: i for i, iid in enumerate(image_ids)}

    labels = np.full((len(image_ids), len(classes)), -1, dtype=np.int8)
    has_ann = np.zeros(len(image_ids), dtype=bool)
    for k, ann in enumerate(doc["annotations"]):
        where = f"annotations[{k}]"
        iid = _get(ann, "image_id", int, ann_path, where)
        cid = _get(ann, "category_id", int, ann_path, where)
        if iid not in row:
            raise DataError(f"annotation refers to unknown image id {iid} (not in 'images')",
                            path=ann_path, field=f"{where}.image_id")
        if cid not in col:
            raise DataError(f"annotation refers to unknown category id {cid}; expected one of "
                            f"the ids in 'categories' ({cat_ids[0]}..{cat_ids[-1]})",
                            path=ann_path, field=f"{where}.category_id")
        labels[row[iid], col[cid]] = 1
        has_ann[row[iid]] = True

    if drop_empty:
        keep = np.flatnonzero(has_ann)
        labels = labels[keep]
        image_ids = [image_ids[i] for i in keep]
        file_names = [file_names[i] for i in keep]

    prefix = f"{split}/" if split else ""
    if split and (root / "images" / split).is_dir():
        prefix = f"images/{split}/"
    items = [prefix + f for f in file_names]
    return LabelSet(items, classes, labels, root=str(root), source=f"coco:{ann_path}",
                    meta={"ids": image_ids, "category_ids": cat_ids, "split": split,
                          "drop_empty": drop_empty,
                          "dropped": int((~has_ann).sum()) if drop_empty else 0})


def _make_reader(default_split: str):
    def reader(root, split=None, **options):
        if split is None and options.get("annotations") is None:
            split = default_split
        return read_coco(root, split, **options)
    return reader


register_reader("coco", "coco2014")(_make_reader("train2014"))
register_reader("coco2017")(_make_reader("train2017"))
