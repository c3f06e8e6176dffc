"""Torch datasets: images (with transforms) or cached feature maps, with partial and full labels.

Every item is a dict: ``image`` or ``features``, ``target`` (partial labels, the only labels a
method may train on), ``full`` (the complete labels, used for evaluation and to measure
pseudo-label quality, never for training) and ``index`` (position in the split).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from mlrpl.errors import DataError


_WHITE = (255, 255, 255)


def to_rgb(im: Image.Image, path=None) -> Image.Image:
    """An 8-bit RGB image by the library's rule for each mode (docs/decisions.md, "Image conversion
    rule").

    * ``RGB``, ``L``, ``1``, ``YCbCr``: converted as PIL does;
    * 16-bit grayscale (``I;16*``, and ``I`` with values in 0..65535): scaled to 8 bits
      (v / 257, rounded), never clipped (clipping makes most photos almost white);
    * alpha (``RGBA``, ``LA``, ``PA``, palettes with transparency): composited over white;
    * ``P`` (palette): expanded to its colours;
    * ``CMYK``: PIL's conversion (no colour profile);
    * anything else (32-bit float ``F``, other integer ranges, ``LAB``, ``HSV``...): refused.
    """
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("L", "1", "YCbCr", "CMYK"):
        return im.convert("RGB")
    if mode.startswith("I"):
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"integer image (mode {mode}) with values {a.min()}..{a.max()} outside "
                            f"the 16-bit range 0..65535; convert it to 8-bit RGB", path=path)
        g = np.rint(a / 257.0).astype(np.uint8)
        return Image.fromarray(g, "L").convert("RGB")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    raise DataError(f"image mode {mode!r} is not supported (expected RGB, grayscale, 16-bit "
                    f"grayscale, palette, CMYK or an alpha variant); convert it to 8-bit RGB",
                    path=path)


# The version of what :func:`load_image` makes of a file; the feature cache keys on it, so an
# entry computed by an earlier rule (before EXIF orientation was applied, say) is never reused.
IMAGE_LOADER_VERSION = 2


def load_image(path) -> Image.Image:
    """Decode an image file to 8-bit RGB, upright, or raise a DataError naming it.

    The EXIF orientation tag is applied first (``PIL.ImageOps.exif_transpose``, as torchvision
    and timm users do), so a phone photo stored sideways with "rotate 90" in its EXIF is seen
    upright by training, evaluation, the feature cache and predict alike; then :func:`to_rgb`.
    """
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(upright(im, path, in_place=True), path)
    except FileNotFoundError:
        raise DataError("image file not found", path=path) from None
    except Image.DecompressionBombError as e:
        raise DataError(f"image refused as a possible decompression bomb ({e}); raise "
                        f"PIL.Image.MAX_IMAGE_PIXELS if it is genuine", path=path) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"unreadable image ({type(e).__name__}: {e})", path=path) from None


def upright(im: Image.Image, path=None, in_place: bool = False) -> Image.Image:
    """`im` rotated / flipped as its EXIF orientation tag says, when `im` is an image as
    ``Image.open`` returned it (it has a ``filename``); any other image is returned as it is: an
    image made from another (rotated, resized, converted) keeps its file's tag but not the
    orientation the tag describes, so applying the tag again would turn it twice."""
    if not getattr(im, "filename", None):
        return im
    try:
        if im.getexif().get(0x0112, 1) == 1:   # no orientation tag, or "as stored"
            return im
        if in_place:
            ImageOps.exif_transpose(im, in_place=True)
            return im
        return ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise
    except Exception as e:  # a malformed EXIF block (struct.error, KeyError, TypeError...)
        raise DataError(f"unreadable EXIF orientation data ({type(e).__name__}: {e}); re-save the "
                        f"image without EXIF, or upright", path=path) from None


def scan_images(paths, show_progress=None) -> np.ndarray:
    """Decode every image once; returns a bool array, True where the image is readable.

    Used with ``data.on_bad_image=skip`` so that unreadable images are removed before batching
    (and listed), never replaced by another image on the fly."""
    from mlrpl.utils.progress import progress
    ok = np.ones(len(paths), dtype=bool)
    for i, p in enumerate(progress(paths, desc="checking images", enable=show_progress)):
        try:
            load_image(p)
        except DataError:
            ok[i] = False
    return ok


def check_images_exist(paths, where: str = "") -> None:
    """A quick check before any work: every image file exists (decoding errors come later).
    `where` says what relative image paths were resolved against (for the message)."""
    import os
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"image file not found ({len(missing)} of {len(paths)} missing"
                        f"{'; ' + where if where else ''}; pass data.on_bad_image=skip to leave "
                        f"them out)", path=missing[0])


def image_paths_origin(labelset) -> str:
    """What the relative image paths of a label file are resolved against, in words ('' for
    the benchmark readers, whose layout fixes it)."""
    kind, _, file = labelset.source.partition(":")
    if kind not in ("csv", "npy") or not labelset.root:
        return ""
    relative = [i for i in labelset.items if not os.path.isabs(i)]
    if not relative:
        return ""
    from pathlib import Path
    folder = Path(file).parent
    how = ("the label file's folder" if Path(labelset.root) == folder
           else "image_root=")
    return (f"relative image paths in {file} are resolved against "
            f"{os.path.abspath(labelset.root)} ({how}), not the working directory")


class ImageDataset(Dataset):
    """Images of a LabelSet through `transform`.

    An unreadable image raises a DataError naming the file. With ``data.on_bad_image=skip`` the
    caller removes unreadable images beforehand (:func:`scan_images`), so every item is the image
    its labels belong to."""

    def __init__(self, labelset, transform, partial: np.ndarray | None = None):
        self.paths = [str(p) for p in labelset.paths()]
        self.full = torch.as_tensor(labelset.labels, dtype=torch.int8)
        self.target = self.full if partial is None else torch.as_tensor(partial, dtype=torch.int8)
        self.transform = transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = load_image(self.paths[i])
        return {"image": self.transform(img), "target": self.target[i], "full": self.full[i],
                "index": i}


# The batch key of a cached feature map's untrusted prior logits (FeatureDataset.prior_untrusted),
# computed once per image by the trainer; the trainer drops it from a batch whose features a
# plug-in replaced (LogicMix's mixed maps have a prior of their own).
PRIOR_MEMO_KEY = "prior_untrusted"


class FeatureDataset(Dataset):
    """Cached backbone feature maps (fp16 on disk, fp32 out), under the batch key ``features``
    (the backbone's output) or ``prefix`` (the frozen layers' output, ``model.cache_prefix``)."""

    def __init__(self, features: np.ndarray, full: np.ndarray, partial: np.ndarray | None = None,
                 key: str = "features"):
        self.key = key
        if len(features) != len(full):
            raise DataError(f"feature cache holds {len(features)} items but the split has "
                            f"{len(full)}; delete the cache entry to rebuild it")
        self.features = features
        self.full = torch.as_tensor(full, dtype=torch.int8)
        self.target = self.full if partial is None else torch.as_tensor(partial, dtype=torch.int8)
        # (N, C) the class prior's untrusted logits of each item's map, when the trainer has
        # memoised them (the maps never change, so neither does their prior); batch key
        # PRIOR_MEMO_KEY
        self.prior_untrusted: torch.Tensor | None = None

    def __len__(self):
        return len(self.full)

    def __getitem__(self, i):
        item = {self.key: torch.from_numpy(np.asarray(self.features[i], dtype=np.float32)),
                "target": self.target[i], "full": self.full[i], "index": i}
        if self.prior_untrusted is not None:
            item[PRIOR_MEMO_KEY] = self.prior_untrusted[i]
        return item
