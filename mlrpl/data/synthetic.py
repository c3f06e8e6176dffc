"""A small synthetic multi-label image dataset ("shapes"), generated offline from a seed.

:func:`make_shapes_dataset` writes, in the YOLO layout that ``read_dataset("yolo", root, split)``
reads::

    root/
      classes.yaml               names: [red_circle, green_square, ...]
      images/{train,val}/<id>.png
      labels/{train,val}/<id>.txt   one object a line: ``class cx cy w h`` (normalised to 0..1)
      manifest.json              the parameters and per-split counts
      README.txt                 what the data is

Each class is a shape in a colour ("red_circle", "blue_triangle", ...), so that a small CNN, even
a frozen ImageNet backbone with a linear head, can learn it. An image has a textured, noisy,
desaturated background with a few grey distractors and 1 to 3 objects (about 4% have none) at
random positions, sizes and rotations, with a slight colour jitter. The classes are mildly
imbalanced and co-occur with structure: each class has a *partner* (0-1, 2-3, 4-5, ...) that
often appears with it, and a few pairs never appear together (see :data:`EXCLUSIVE_PAIRS`), so
that label-correlation methods have something to learn.

Generation is deterministic: image ``i`` of a split is drawn from its own random stream seeded
with ``(seed, split, i)``, so the same seed gives byte-identical label files and identical pixels,
and growing ``n_train`` only appends images. It uses numpy and PIL only, and the default size
(240 images of 96x96) takes a fraction of a second.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mlrpl.errors import ConfigError, DataError
from mlrpl.utils.files import move_aside, rename_into_place

__all__ = ["CLASS_SHAPES", "CLASS_NAMES", "PARTNER_PAIRS", "EXCLUSIVE_PAIRS", "MAX_CLASSES",
           "make_shapes_dataset", "render_image", "sample_classes"]

GENERATOR = "mlrpl.data.synthetic.shapes"
VERSION = 1
SPLITS = ("train", "val")

# (name, shape, RGB). Colours are saturated and far from the grey backgrounds; shapes differ too.
CLASS_SHAPES: list[tuple[str, str, tuple[int, int, int]]] = [
    ("red_circle", "circle", (220, 35, 35)),
    ("green_square", "square", (35, 175, 60)),
    ("blue_triangle", "triangle", (40, 70, 225)),
    ("yellow_star", "star", (245, 220, 35)),
    ("white_ring", "ring", (245, 245, 245)),
    ("purple_cross", "cross", (140, 45, 195)),
    ("orange_bar", "bar", (250, 140, 20)),
    ("cyan_diamond", "diamond", (35, 220, 230)),
    ("pink_hexagon", "hexagon", (250, 115, 190)),
    ("lime_pentagon", "pentagon", (165, 245, 70)),
]
CLASS_NAMES = [name for name, _, _ in CLASS_SHAPES]
MAX_CLASSES = len(CLASS_SHAPES)

# Pairs that often appear together (the second object of an image is the first one's partner
# with probability PARTNER_P) and pairs that never do.
PARTNER_PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
EXCLUSIVE_PAIRS = [(1, 2), (3, 6), (5, 8)]
PARTNER_P = 0.55
NUM_OBJECTS_P = (0.04, 0.36, 0.38, 0.22)  # P(0 objects), P(1), P(2), P(3)
DUPLICATE_P = 0.08  # chance that an extra object repeats a class already in the image
SUPERSAMPLE = 2


# ---- sampling ----------------------------------------------------------------------------------
def _class_prior(num_classes: int) -> np.ndarray:
    # Mild imbalance in the first object's class: the most frequent is 2x the least frequent.
    w = np.linspace(1.0, 0.5, num_classes) if num_classes > 1 else np.ones(1)
    return w / w.sum()


def _relations(num_classes: int):
    partner = {}
    for a, b in PARTNER_PAIRS:
        if b < num_classes:
            partner[a], partner[b] = b, a
    exclusive = {c: set() for c in range(num_classes)}
    for a, b in EXCLUSIVE_PAIRS:
        if b < num_classes:
            exclusive[a].add(b)
            exclusive[b].add(a)
    return partner, exclusive


def sample_classes(rng: np.random.Generator, num_classes: int, force: int | None = None) -> list[int]:
    """The classes of one image's objects (with repeats for repeated objects), in drawing order.

    `force` makes the first object that class (used so that every class shows up in a split).
    """
    prior = _class_prior(num_classes)
    partner, exclusive = _relations(num_classes)
    k = int(rng.choice(len(NUM_OBJECTS_P), p=NUM_OBJECTS_P))
    if force is not None:
        k = max(k, 1)
    out: list[int] = []
    for j in range(k):
        if j == 0:
            out.append(int(force) if force is not None else int(rng.choice(num_classes, p=prior)))
            continue
        if rng.random() < DUPLICATE_P:
            out.append(out[int(rng.integers(len(out)))])
            continue
        first = out[0]
        if first in partner and partner[first] not in out and rng.random() < PARTNER_P:
            out.append(partner[first])
            continue
        banned = set(out).union(*(exclusive[c] for c in out))
        w = prior.copy()
        w[sorted(banned)] = 0.0
        if w.sum() == 0:
            break
        out.append(int(rng.choice(num_classes, p=w / w.sum())))
    return out


# ---- drawing -----------------------------------------------------------------------------------
def _rot(points: np.ndarray, angle: float, cx: float, cy: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _regular(n: int, r: float, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _shape_polygon(shape: str, r: float, rng: np.random.Generator) -> np.ndarray | None:
    """Polygon vertices around (0, 0) for a shape of "radius" r, rotated; None for round shapes."""
    deg = np.pi / 180
    if shape == "square":
        pts, ang = _regular(4, r * 0.95, np.pi / 4), rng.uniform(-15, 15) * deg
    elif shape == "triangle":
        pts, ang = _regular(3, r, -np.pi / 2), rng.uniform(-20, 20) * deg
    elif shape == "star":
        t = -np.pi / 2 + np.pi * np.arange(10) / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts, ang = np.stack([rad * np.cos(t), rad * np.sin(t)], 1), rng.uniform(0, 72) * deg
    elif shape == "cross":
        a, b = r, r * 0.3
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                        [-b, b], [-a, b], [-a, -b], [-b, -b]])
        ang = rng.uniform(-15, 15) * deg
    elif shape == "bar":
        a, b = r * 1.1, r * 0.3
        pts, ang = np.array([[-a, -b], [a, -b], [a, b], [-a, b]]), rng.uniform(0, 180) * deg
    elif shape == "diamond":
        pts = np.array([[0, -r], [0.62 * r, 0], [0, r], [-0.62 * r, 0]])
        ang = rng.uniform(-12, 12) * deg
    elif shape == "hexagon":
        pts, ang = _regular(6, r), rng.uniform(0, 60) * deg
    elif shape == "pentagon":
        pts, ang = _regular(5, r, -np.pi / 2), rng.uniform(-20, 20) * deg
    else:  # circle, ring
        return None
    return _rot(np.asarray(pts, dtype=np.float64), ang, 0.0, 0.0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A desaturated, textured background, float32 (size, size, 3) in 0..255."""
    base = rng.uniform(45, 140)
    tint = rng.normal(0, 10, size=3)
    g = int(rng.integers(3, 8))  # low-frequency texture: a coarse grid upsampled
    coarse = rng.normal(0, 22, size=(g, g, 1)) + rng.normal(0, 6, size=(g, g, 3))
    coarse = np.clip(coarse + 128, 0, 255).astype(np.uint8)
    low = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC), np.float32) - 128
    # Oriented stripes, faint, for a bit of texture at a middle frequency.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    th, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.5)
    stripes = rng.uniform(0, 8) * np.sin(freq * (np.cos(th) * xx + np.sin(th) * yy))
    img = base + tint + low + stripes[..., None]
    return img.astype(np.float32)


def render_image(rng: np.random.Generator, classes: list[int], size: int = 96):
    """Draw one image with an object of each entry of `classes`.

    Returns ``(pixels, boxes)``: a uint8 array (size, size, 3) and one ``(class, cx, cy, w, h)``
    tuple (normalised) per object.
    """
    s = SUPERSAMPLE
    bg = np.clip(_background(rng, size), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(bg).resize((size * s, size * s), Image.BILINEAR)
    draw = ImageDraw.Draw(canvas)
    # Grey distractors: thin lines and blobs that carry no class colour.
    for _ in range(int(rng.integers(0, 4))):
        v = int(rng.uniform(30, 200))
        p = (rng.uniform(0, size * s, size=4)).tolist()
        if rng.random() < 0.5:
            draw.line(p, fill=(v, v, v), width=int(rng.integers(1, 3)) * s)
        else:
            x, y, rr = p[0], p[1], rng.uniform(2, 5) * s
            draw.ellipse([x - rr, y - rr, x + rr, y + rr], fill=(v, v, v))

    boxes, placed = [], []
    for c in classes:
        _, shape, rgb = CLASS_SHAPES[c]
        r = rng.uniform(0.11, 0.2) * size
        # Keep the object inside the image and try not to cover the others too much.
        for _ in range(20):
            cx, cy = rng.uniform(r, size - r, size=2)
            if all(np.hypot(cx - px, cy - py) > 0.8 * (r + pr) for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        colour = tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.normal(0, 12, 3), 0, 255))
        poly = _shape_polygon(shape, r, rng)
        if poly is None:
            x0, y0, x1, y1 = cx - r, cy - r, cx + r, cy + r
            bbox = [x0 * s, y0 * s, x1 * s, y1 * s]
            if shape == "ring":
                draw.ellipse(bbox, outline=colour, width=max(2, int(round(r * 0.35 * s))))
            else:
                draw.ellipse(bbox, fill=colour)
        else:
            pts = poly + np.array([cx, cy])
            draw.polygon([tuple(p) for p in (pts * s).tolist()], fill=colour)
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
        x0, y0, x1, y1 = (min(max(v, 0.0), float(size)) for v in (x0, y0, x1, y1))
        boxes.append((c, (x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size,
                      (y1 - y0) / size))

    img = np.asarray(canvas.resize((size, size), Image.BOX), dtype=np.float32)
    img = img + rng.normal(0, 7, size=img.shape)  # sensor noise over everything
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), boxes


# ---- writing -----------------------------------------------------------------------------------
_README = """\
Synthetic multi-label "shapes" dataset, generated by mlrpl.data.synthetic.make_shapes_dataset
(seed {seed}). It is made offline, from the seed alone, for demos and tests; it is not a
benchmark.

Layout (YOLO; read with mlrpl.data.read_dataset("yolo", root, "train") or "val"):
  classes.yaml                   class names
  images/{{train,val}}/<id>.png    {size}x{size} RGB images ({n_train} train, {n_val} val)
  labels/{{train,val}}/<id>.txt    one object a line: class cx cy w h (normalised to 0..1);
                                 an empty file means no object, so every class is negative
  manifest.json                  generation parameters and per-split counts

Classes ({num_classes}), each a shape in a colour:
{classes}

Each image has a textured, noisy grey background with a few grey distractors and 1 to 3
objects (about 4% of images have none) at random positions, sizes and rotations, with a slight
colour jitter. Classes are mildly imbalanced (class 0 the most frequent).

Co-occurrence: each class often appears with its partner:
  {partners}
These pairs never appear together:
  {exclusive}
"""


def _params(n_train, n_val, size, num_classes, seed) -> dict:
    return {"n_train": n_train, "n_val": n_val, "size": size, "num_classes": num_classes,
            "seed": seed, "format": "png"}


def _check_params(n_train, n_val, size, num_classes, seed):
    for name, v, lo in (("n_train", n_train, 1), ("n_val", n_val, 0), ("size", size, 32),
                        ("num_classes", num_classes, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    if num_classes > MAX_CLASSES:
        raise ConfigError(f"num_classes must be at most {MAX_CLASSES}, got {num_classes}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def _read_manifest(root: Path) -> dict | None:
    try:
        doc = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("generator") == GENERATOR else None


def _is_complete(root: Path, params: dict) -> bool:
    if not (root / "classes.yaml").is_file():
        return False
    for split in SPLITS:
        n = params[f"n_{split}"]
        img_dir, lab_dir = root / "images" / split, root / "labels" / split
        if not img_dir.is_dir() or not lab_dir.is_dir():
            return False
        if (len(list(img_dir.glob("*.png"))) != n or len(list(lab_dir.glob("*.txt"))) != n):
            return False
    return True


def _generate(dst: Path, params: dict) -> dict:
    size, num_classes, seed = params["size"], params["num_classes"], params["seed"]
    names = CLASS_NAMES[:num_classes]
    splits = {}
    for si, split in enumerate(SPLITS):
        n = params[f"n_{split}"]
        (dst / "images" / split).mkdir(parents=True)
        (dst / "labels" / split).mkdir(parents=True)
        pos = np.zeros(num_classes, dtype=np.int64)
        n_obj = n_empty = 0
        for i in range(n):
            rng = np.random.default_rng([seed, si, i])
            # The first images of a split each start with a given class, so that every class
            # appears in a split with at least num_classes images.
            classes = sample_classes(rng, num_classes, force=i if i < num_classes else None)
            pixels, boxes = render_image(rng, classes, size)
            stem = f"{split}_{i:05d}"
            Image.fromarray(pixels).save(dst / "images" / split / f"{stem}.png", compress_level=1)
            lines = "".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
                            for c, cx, cy, w, h in boxes)
            (dst / "labels" / split / f"{stem}.txt").write_text(lines)
            n_obj += len(boxes)
            n_empty += not boxes
            for c in set(classes):
                pos[c] += 1
        splits[split] = {"images": n, "objects": n_obj, "images_without_objects": n_empty,
                         "positives_per_class": dict(zip(names, pos.tolist()))}
    (dst / "classes.yaml").write_text("names:\n" + "".join(f"  - {n}\n" for n in names))
    partners = [(a, b) for a, b in PARTNER_PAIRS if b < num_classes]
    exclusive = [(a, b) for a, b in EXCLUSIVE_PAIRS if b < num_classes]
    manifest = {
        "generator": GENERATOR, "version": VERSION, "params": params, "classes": names,
        "partner_pairs": [[names[a], names[b]] for a, b in partners],
        "exclusive_pairs": [[names[a], names[b]] for a, b in exclusive],
        "splits": splits,
    }
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (dst / "README.txt").write_text(_README.format(
        seed=seed, size=size, n_train=params["n_train"], n_val=params["n_val"],
        num_classes=num_classes,
        classes="\n".join(f"  {i}: {n}" for i, n in enumerate(names)),
        partners="\n  ".join(f"{names[a]}+{names[b]}" for a, b in partners) or "none",
        exclusive="\n  ".join(f"{names[a]}+{names[b]}" for a, b in exclusive) or "none"))
    return manifest


def make_shapes_dataset(root, n_train: int = 160, n_val: int = 80, size: int = 96,
                        num_classes: int = 8, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the synthetic shapes dataset under `root` (YOLO layout) and return `root` as a Path.

    If `root` already holds this dataset (a ``manifest.json`` with the same parameters and all
    files present), it is returned as is: generation is deterministic, so it would be the same.
    If `root` holds anything else, :class:`~mlrpl.errors.DataError` is raised unless `overwrite`
    is true, in which case it is replaced (the old folder moved aside to
    ``<root>.replaced-<time>``, never deleted). The data is generated in a temporary sibling folder and
    renamed into place, so `root` never holds a half-written dataset.

    >>> root = make_shapes_dataset(tmp / "shapes")  # doctest: +SKIP
    >>> read_dataset("yolo", root, "train").labels.shape  # doctest: +SKIP
    (160, 8)
    """
    _check_params(n_train, n_val, size, num_classes, seed)
    params = _params(int(n_train), int(n_val), int(size), int(num_classes), int(seed))
    root = Path(root)

    def reusable() -> bool:
        m = _read_manifest(root)
        return m is not None and m.get("params") == params and _is_complete(root, params)

    if root.exists():
        if not root.is_dir():
            raise DataError("exists and is not a directory; cannot write the synthetic dataset "
                            "there", path=root)
        if any(root.iterdir()):
            if reusable():
                return root
            if not overwrite:
                m = _read_manifest(root)
                what = ("holds a synthetic dataset with other parameters "
                        f"({m.get('params')})" if m else "is not empty and holds other files")
                raise DataError(f"{what}; refusing to overwrite it (pass overwrite=True, or "
                                "choose another folder)", path=root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _generate(tmp, params)
        if root.exists():
            if any(root.iterdir()):  # overwrite: the old content is moved aside, never deleted
                move_aside(root)
            else:
                root.rmdir()
        try:
            rename_into_place(tmp, root, raw_errors=True)
        except OSError as e:
            # Someone else wrote root in the meantime; theirs is fine if it is the same dataset.
            if reusable():
                return root
            raise DataError(f"could not move the generated dataset into place ({e})",
                            path=root) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
