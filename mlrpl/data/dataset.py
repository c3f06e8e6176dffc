"""Torch datasets: images (with transforms) or cached feature maps, with partial and full labels.

Every item is a dict: ``image`` or ``features``, ``target`` (partial labels, the only labels a
method may train on), ``full`` (the complete labels, used for evaluation and to measure
pseudo-label quality, never for training) and ``index`` (position in the split).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from mlrpl.errors import DataError


class BadImageLog:
    """Images skipped with ``data.on_bad_image=skip`` (shared with the trainer's log)."""

    def __init__(self):
        self.paths: list[str] = []


def load_image(path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataError("image file not found", path=path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"unreadable image ({type(e).__name__}: {e})", path=path) from None


class ImageDataset(Dataset):
    """Images of a LabelSet through `transform`.

    With ``on_bad_image="skip"`` an unreadable image is replaced by the next readable one and
    counted in ``bad``; with ``"error"`` (the default) it raises a DataError naming the file.
    """

    def __init__(self, labelset, transform, partial: np.ndarray | None = None,
                 on_bad_image: str = "error"):
        self.paths = [str(p) for p in labelset.paths()]
        self.full = torch.as_tensor(labelset.labels, dtype=torch.int8)
        self.target = self.full if partial is None else torch.as_tensor(partial, dtype=torch.int8)
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.bad = BadImageLog()

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        j = i
        for _ in range(len(self.paths)):
            try:
                img = load_image(self.paths[j])
                break
            except DataError:
                if self.on_bad_image != "skip":
                    raise
                if self.paths[j] not in self.bad.paths:
                    self.bad.paths.append(self.paths[j])
                j = (j + 1) % len(self.paths)
        else:
            raise DataError("no readable image in the dataset", path=self.paths[i])
        return {"image": self.transform(img), "target": self.target[j], "full": self.full[j],
                "index": j}


class FeatureDataset(Dataset):
    """Cached backbone feature maps (fp16 on disk, fp32 out)."""

    def __init__(self, features: np.ndarray, full: np.ndarray, partial: np.ndarray | None = None):
        if len(features) != len(full):
            raise DataError(f"feature cache holds {len(features)} items but the split has "
                            f"{len(full)}; delete the cache entry to rebuild it")
        self.features = features
        self.full = torch.as_tensor(full, dtype=torch.int8)
        self.target = self.full if partial is None else torch.as_tensor(partial, dtype=torch.int8)

    def __len__(self):
        return len(self.full)

    def __getitem__(self, i):
        return {"features": torch.from_numpy(np.asarray(self.features[i], dtype=np.float32)),
                "target": self.target[i], "full": self.full[i], "index": i}
