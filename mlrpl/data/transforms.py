"""Image transforms: the HCP training augmentation and the plain evaluation resize.

Both take a PIL image and return a normalised float tensor (3, size, size). Their ``repr`` is
deterministic (it is part of the feature-cache key).

Training (the multi-scale crop used by the HCP / ML-GCN / ASL line of work, with square crops):

1. resize to ``round(size * 512 / 448)`` square;
2. crop a square at a random position whose side is drawn uniformly from
   ``{512, 448, 384, 320, 256} * size / 448``;
3. resize the crop to ``size`` square;
4. random horizontal flip;
5. to tensor, normalise.

Evaluation: resize to ``size`` square, to tensor, normalise.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

from torchvision import transforms as T

from mlrpl.errors import ConfigError

HCP_CROP_SIDES = (512, 448, 384, 320, 256)   # at the reference input size 448
HCP_REFERENCE_SIZE = 448

_INTERPOLATIONS = {
    "nearest": T.InterpolationMode.NEAREST,
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
    "lanczos": T.InterpolationMode.LANCZOS,
    "box": T.InterpolationMode.BOX,
    "hamming": T.InterpolationMode.HAMMING,
}


def interpolation_mode(name: str) -> T.InterpolationMode:
    try:
        return _INTERPOLATIONS[str(name).lower()]
    except KeyError:
        raise ConfigError(f"unknown interpolation {name!r}; expected one of "
                          f"{sorted(_INTERPOLATIONS)}") from None


class RandomSquareCrop:
    """Crop a square whose side is drawn uniformly from `sides`, at a uniformly random position.

    A side larger than the image is clipped to the image's shorter side.
    """

    def __init__(self, sides: Sequence[int]):
        sides = tuple(int(s) for s in sides)
        if not sides or min(sides) < 1:
            raise ConfigError(f"crop sides must be positive integers, got {sides}")
        self.sides = sides

    def __call__(self, img):
        w, h = img.size
        side = min(random.choice(self.sides), w, h)
        left = random.randint(0, w - side)
        top = random.randint(0, h - side)
        return img.crop((left, top, left + side, top + side))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sides={self.sides})"


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"bad image size {size!r}; expected a positive integer")
    return size


def hcp_train_transform(size: int, mean: Sequence[float], std: Sequence[float],
                        interpolation: str = "bicubic") -> T.Compose:
    """The HCP multi-scale training augmentation (see the module docstring)."""
    size = _check_size(size)
    interp = interpolation_mode(interpolation)
    scale = size / HCP_REFERENCE_SIZE
    big = round(512 * scale)
    sides = tuple(max(1, round(s * scale)) for s in HCP_CROP_SIDES)
    return T.Compose([
        T.Resize((big, big), interpolation=interp),
        RandomSquareCrop(sides),
        T.Resize((size, size), interpolation=interp),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(tuple(float(m) for m in mean), tuple(float(s) for s in std)),
    ])


def eval_transform(size: int, mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bicubic") -> T.Compose:
    """Resize to `size` x `size` (no crop), to tensor, normalise."""
    size = _check_size(size)
    return T.Compose([
        T.Resize((size, size), interpolation=interpolation_mode(interpolation)),
        T.ToTensor(),
        T.Normalize(tuple(float(m) for m in mean), tuple(float(s) for s in std)),
    ])


def build_transform(train: bool, size: int, mean: Sequence[float], std: Sequence[float],
                    interpolation: str = "bicubic") -> T.Compose:
    fn = hcp_train_transform if train else eval_transform
    return fn(size, mean, std, interpolation)
