"""The canonical in-memory form of a multi-label dataset: items, class names, label matrix."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlrpl.data.encoding import NEG, POS, UNK, from_internal, to_internal
from mlrpl.errors import DataError


@dataclass
class LabelSet:
    """A dataset's images and their labels.

    Attributes
    ----------
    items : list of str, length N
        Image paths (absolute, or relative to `root`) or image ids, in dataset order. The order is
        part of the protocol: partial-label masks are drawn in this order.
    classes : list of str, length C
        Class names, in the order of the label matrix's columns.
    labels : ndarray of int8, shape (N, C)
        Internal encoding: +1 positive, -1 negative, 0 unknown / ignored.
    root : str or None
        Directory that relative `items` are resolved against.
    source : str
        A short description of where the labels came from (reader and path).
    """

    items: list[str]
    classes: list[str]
    labels: np.ndarray
    root: str | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.labels = np.ascontiguousarray(self.labels, dtype=np.int8)
        n, c = len(self.items), len(self.classes)
        if self.labels.shape != (n, c):
            raise DataError(f"label matrix has shape {self.labels.shape}, expected ({n}, {c}) "
                            f"for {n} items and {c} classes", path=self.source or None)
        if len(set(self.classes)) != c:
            dup = sorted({x for x in self.classes if self.classes.count(x) > 1})
            raise DataError(f"duplicate class names {dup}", path=self.source or None)

    # ---- shape -----------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.items)

    def paths(self) -> list[Path]:
        """Image paths resolved against `root`."""
        root = Path(self.root) if self.root else None
        return [Path(p) if root is None or Path(p).is_absolute() else root / p for p in self.items]

    def subset(self, index) -> "LabelSet":
        index = np.asarray(index)
        return LabelSet([self.items[i] for i in index], list(self.classes), self.labels[index],
                        self.root, self.source, dict(self.meta))

    def with_labels(self, labels: np.ndarray) -> "LabelSet":
        return LabelSet(list(self.items), list(self.classes), labels, self.root, self.source,
                        dict(self.meta))

    # ---- hashing ---------------------------------------------------------------------------
    def label_hash(self) -> str:
        """sha256 of the class names and the label matrix (not of the items' paths)."""
        return label_hash(self.labels, self.classes)

    # ---- canonical files -------------------------------------------------------------------
    def save(self, path: str | Path, encoding: str = "hcp", keep_old: bool = False) -> Path:
        """Write the canonical form: ``<path>`` (.npz with items, classes, labels), atomically
        (`keep_old`: a replaced file is moved aside, see :func:`mlrpl.utils.files.atomic_write`)."""
        from mlrpl.utils.files import atomic_write
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        return atomic_write(path, lambda fh: np.savez(
            fh, labels=from_internal(self.labels, encoding),
            items=np.array(self.items, dtype=str), classes=np.array(self.classes, dtype=str),
            encoding=np.array(encoding), root=np.array(self.root or ""),
            source=np.array(self.source)), keep_old=keep_old)

    @classmethod
    def load(cls, path: str | Path) -> "LabelSet":
        path = Path(path)
        if not path.is_file():
            raise DataError("canonical label file not found", path=path)
        try:
            with np.load(path, allow_pickle=False) as z:
                enc = str(z["encoding"])
                labels = to_internal(z["labels"], enc, path=path)
                return cls([str(x) for x in z["items"]], [str(x) for x in z["classes"]], labels,
                           str(z["root"]) or None, str(z["source"]))
        except (KeyError, ValueError, OSError) as e:
            raise DataError(f"not a canonical mlrpl label file ({e})", path=path) from None


def label_hash(labels: np.ndarray, classes: list[str] | None = None) -> str:
    h = hashlib.sha256()
    labels = np.ascontiguousarray(labels, dtype=np.int8)
    h.update(json.dumps([list(labels.shape), list(classes or [])]).encode())
    h.update(labels.tobytes())
    return h.hexdigest()


def label_summary(labels: np.ndarray, classes: list[str]) -> dict:
    """Counts that `mlrpl data inspect` and provenance records report."""
    labels = np.asarray(labels)
    pos = (labels == POS).sum(0)
    neg = (labels == NEG).sum(0)
    unk = (labels == UNK).sum(0)
    per_image_pos = (labels == POS).sum(1)
    return {
        "num_images": int(labels.shape[0]),
        "num_classes": int(labels.shape[1]),
        "known_entries": int((labels != UNK).sum()),
        "total_entries": int(labels.size),
        "known_positives": int(pos.sum()),
        "known_negatives": int(neg.sum()),
        "unknown_entries": int(unk.sum()),
        "images_without_known_label": int(((labels != UNK).sum(1) == 0).sum()),
        "images_without_known_positive": int((per_image_pos == 0).sum()),
        "images_without_unknown_label": int(((labels == UNK).sum(1) == 0).sum()),
        "positives_per_image_mean": float(per_image_pos.mean()) if labels.shape[0] else 0.0,
        "per_class": {c: {"positive": int(p), "negative": int(n), "unknown": int(u)}
                      for c, p, n, u in zip(classes, pos, neg, unk)},
    }
