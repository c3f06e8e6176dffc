"""A synthetic multi-label image dataset ("shapes"), generated offline from a seed.

:func:`make_shapes_dataset` writes, in the YOLO layout that ``read_dataset("yolo", root, split)``
reads::

    root/
      classes.yaml               names: [red_circle, green_square, ...]
      images/{train,val}/<id>.png
      labels/{train,val}/<id>.txt   one object a line: ``class cx cy w h`` (normalised to 0..1)
      manifest.json              the parameters, the co-occurrence structure, per-split counts
      README.txt                 what the data is

Two modes, chosen by ``num_classes``.

**Up to 10 classes** (:data:`NAMED_CLASSES`; its output is fixed byte for byte, and the demo,
the tests and pinned results rely on it). Each class is a shape in a colour ("red_circle",
"blue_triangle", ...), so that a small CNN, even a frozen ImageNet backbone with a linear head,
can learn it. An image has a textured, noisy, desaturated background with a few grey distractors
and 1 to 3 objects (about 4% have none) at random positions, sizes and rotations, with a slight
colour jitter. The classes are mildly imbalanced and co-occur with structure: each class has a
*partner* (0-1, 2-3, 4-5, ...) that often appears with it, and a few pairs never appear together
(see :data:`EXCLUSIVE_PAIRS`), so that label-correlation methods have something to learn.

**11 to 2,049 classes** (:data:`MAX_CLASSES`; the many-class mode). The vocabulary
(:func:`class_vocabulary`) is the ten named classes, then every combination of 16 shapes
(:data:`SHAPES`), 16 colours (:data:`COLOURS`) and 8 styles (:data:`STYLES`: filled, outline,
striped, checked, spotted, split, framed, cored) not already named, called
``<colour>_<shape>`` when filled and ``<colour>_<shape>_<style>`` otherwise ("teal_star",
"teal_star_outline"). It runs style by style, filled first, and inside a style through every
shape and colour in a Latin-square order, so a smaller ``num_classes`` takes the easiest classes
to tell apart and every prefix spreads over all shapes and colours. Patterns scale with the
object, so that they survive the 96 px images. Co-occurrence follows a *scene model*
(:func:`scene_world`, fixed by ``num_classes``; the seed only draws the images):

* frequency: class ``c`` has weight ``(rank_c + 2) ** -1`` (Zipf), ``rank`` a fixed random
  order of the classes, so a few classes are frequent and most are rare;
* scenes: the classes are split at random into scenes of about :data:`SCENE_SIZE`; an image
  draws a scene with probability proportional to its classes' total weight, then its first
  object from that scene by weight;
* each further object (0 to 6 objects an image, :data:`NUM_OBJECTS_MANY_P`, mean 3.2) repeats
  one already there (:data:`DUPLICATE_P`), else is the partner of one already there
  (:data:`SCENE_PARTNER_P`, when one has a partner not yet in the image; the classes of a scene
  are paired up), else comes from the whole vocabulary by weight
  (:data:`OUTSIDE_P`: cross-scene objects, mostly frequent classes), else from the scene by
  weight;
* never together: :data:`EXCLUSIVE_PER_SCENE` pairs of classes in each scene never appear in one
  image.

In both modes the first ``num_classes`` images of a split each start with a given class, so that
every class appears in a split with at least ``num_classes`` images. Generation is deterministic:
image ``i`` of a split is drawn from its own random stream seeded with ``(seed, split, i)``, so
the same seed gives byte-identical label files and identical pixels, and growing ``n_train`` only
appends images. It uses numpy and PIL only; 2,500 images of 96x96 take about ten seconds on one
core, most of it PNG encoding and file creation.
"""
from __future__ import annotations

import functools
import json
import shutil
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw

from mlrpl.errors import ConfigError, DataError
from mlrpl.utils.files import move_aside, rename_into_place

__all__ = ["CLASS_SHAPES", "CLASS_NAMES", "PARTNER_PAIRS", "EXCLUSIVE_PAIRS", "NAMED_CLASSES",
           "MAX_CLASSES", "SHAPES", "COLOURS", "STYLES", "SceneWorld", "class_vocabulary",
           "make_shapes_dataset", "render_image", "sample_classes", "scene_world"]

GENERATOR = "mlrpl.data.synthetic.shapes"
# The version of each mode's output, written in manifest.json; a folder is reused only by the
# same version. VERSION is the up-to-10-class mode's, MANY_VERSION the many-class mode's.
VERSION = 1
MANY_VERSION = 1
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
NAMED_CLASSES = len(CLASS_SHAPES)  # up to this many classes: the historic mode

# The many-class vocabulary: shape x colour x style (the ring only as the named white_ring).
SHAPES = ("circle", "square", "triangle", "star", "cross", "bar", "diamond", "hexagon",
          "pentagon", "heart", "arrow", "crescent", "semicircle", "tee", "chevron", "trapezoid")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35), "green": (35, 175, 60), "blue": (40, 70, 225),
    "yellow": (245, 220, 35), "white": (245, 245, 245), "purple": (140, 45, 195),
    "orange": (250, 140, 20), "cyan": (35, 220, 230), "pink": (250, 115, 190),
    "lime": (165, 245, 70), "teal": (0, 135, 125), "magenta": (215, 20, 215),
    "navy": (25, 30, 115), "brown": (135, 75, 25), "black": (15, 15, 15),
    "sky": (125, 185, 250),
}
# Styles, in vocabulary order. Patterns are drawn in the colour and, where there is a second
# colour, in a contrast colour (near black for light colours, near white for dark ones).
STYLES = ("filled",    # the shape in its colour
          "outline",   # only a border of a sixth of the radius; the inside is background
          "striped",   # stripes of the colour and the contrast colour
          "checked",   # a checkerboard of the colour and the contrast colour
          "spotted",   # the colour with contrast spots
          "split",     # one half the colour, the other half the contrast colour
          "framed",    # the colour inside a contrast border
          "cored")     # the colour around a contrast disc at the centre

# Pairs that often appear together (the second object of an image is the first one's partner
# with probability PARTNER_P) and pairs that never do.
PARTNER_PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
EXCLUSIVE_PAIRS = [(1, 2), (3, 6), (5, 8)]
PARTNER_P = 0.55
NUM_OBJECTS_P = (0.04, 0.36, 0.38, 0.22)  # P(0 objects), P(1), P(2), P(3)
DUPLICATE_P = 0.08  # chance that an extra object repeats a class already in the image
SUPERSAMPLE = 2

# The many-class mode's scene model (the module docstring).
NUM_OBJECTS_MANY_P = (0.02, 0.13, 0.20, 0.22, 0.19, 0.14, 0.10)  # P(0 objects), ..., P(6)
SCENE_SIZE = 25           # classes per scene, about
SCENE_PARTNER_P = 0.35    # an extra object is the partner of one already there
OUTSIDE_P = 0.15          # an extra object comes from the whole vocabulary, not the scene
EXCLUSIVE_PER_SCENE = 2   # pairs of a scene that never appear together
ZIPF_EXPONENT, ZIPF_OFFSET = 1.0, 2.0   # class weight (rank + offset) ** -exponent
WORLD_SEED = 20_000       # seeds the scene structure, with num_classes


# ---- the many-class vocabulary and scene structure ----------------------------------------------
@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[tuple[str, str, tuple[int, int, int], str], ...]:
    named = tuple((name, shape, rgb, "filled") for name, shape, rgb in CLASS_SHAPES)
    taken = {name for name, *_ in named}
    colours = list(COLOURS)
    extra = []
    for style in STYLES:
        for j in range(len(SHAPES) * len(colours)):
            shape = SHAPES[j % len(SHAPES)]
            colour = colours[(j % len(SHAPES) + j // len(SHAPES)) % len(colours)]
            name = f"{colour}_{shape}" + ("" if style == "filled" else f"_{style}")
            if name not in taken:
                extra.append((name, shape, COLOURS[colour], style))
    return named + tuple(extra)


MAX_CLASSES = len(_vocabulary())  # 2,049: the ten named classes and 2,039 combinations


def class_vocabulary(num_classes: int = MAX_CLASSES) -> list[tuple[str, str, tuple, str]]:
    """The first `num_classes` classes as ``(name, shape, RGB, style)``: the ten named classes
    (filled), then shape x colour x style combinations (the module docstring)."""
    return list(_vocabulary()[:num_classes])


@dataclass(frozen=True)
class SceneWorld:
    """The co-occurrence structure of the many-class mode (:func:`scene_world`)."""

    popularity: np.ndarray        # (C,) class weights (Zipf over a fixed random rank), sum 1
    scene_of: np.ndarray          # (C,) the scene of each class
    scenes: tuple                 # per scene, its classes (sorted int arrays)
    scene_p: np.ndarray           # (S,) the probability that an image draws each scene
    partner: np.ndarray           # (C,) each class's partner in its scene, -1 for none
    exclusive_pairs: tuple        # ((a, b), ...) classes of one scene never in one image
    exclusive_of: tuple           # per class, the classes it never appears with (int arrays)


@functools.lru_cache(maxsize=4)
def scene_world(num_classes: int) -> SceneWorld:
    """The scene structure of the many-class mode for `num_classes` classes, the same for every
    seed: a fixed random rank per class giving its Zipf weight, a random split of the classes
    into scenes of about :data:`SCENE_SIZE`, partner pairs and never-together pairs inside each
    scene."""
    rng = np.random.default_rng([WORLD_SEED, num_classes])
    rank = np.empty(num_classes, dtype=np.int64)
    rank[rng.permutation(num_classes)] = np.arange(num_classes)
    popularity = (rank + ZIPF_OFFSET) ** -ZIPF_EXPONENT
    popularity /= popularity.sum()
    groups = np.array_split(rng.permutation(num_classes), max(2, round(num_classes / SCENE_SIZE)))
    scene_of = np.empty(num_classes, dtype=np.int64)
    partner = np.full(num_classes, -1, dtype=np.int64)
    exclusive = []
    for s, g in enumerate(groups):
        scene_of[g] = s
        for a, b in zip(g[0::2], g[1::2]):        # consecutive members of the shuffled scene
            partner[a], partner[b] = b, a
        exclusive += [(int(min(g[4 * j + 1], g[4 * j + 2])), int(max(g[4 * j + 1], g[4 * j + 2])))
                      for j in range(EXCLUSIVE_PER_SCENE) if 4 * j + 2 < len(g)]
    exclusive_of = [[] for _ in range(num_classes)]
    for a, b in exclusive:
        exclusive_of[a].append(b)
        exclusive_of[b].append(a)
    scenes = tuple(np.sort(g) for g in groups)
    scene_p = np.array([popularity[g].sum() for g in scenes])
    return SceneWorld(popularity, scene_of, scenes, scene_p / scene_p.sum(), partner,
                      tuple(sorted(exclusive)),
                      tuple(np.asarray(e, dtype=np.int64) for e in exclusive_of))


def _sample_scene_classes(rng: np.random.Generator, world: SceneWorld,
                          force: int | None) -> list[int]:
    """The classes of one image in the many-class mode (the module docstring)."""
    num_classes = len(world.popularity)
    k = int(rng.choice(len(NUM_OBJECTS_MANY_P), p=NUM_OBJECTS_MANY_P))
    if force is not None:
        k, scene = max(k, 1), int(world.scene_of[force])
    else:
        scene = int(rng.choice(len(world.scenes), p=world.scene_p))
    allowed = np.ones(num_classes, dtype=bool)     # neither present nor excluded by one present
    out: list[int] = []
    for j in range(k):
        if j == 0 and force is not None:
            c = int(force)
        elif j > 0 and rng.random() < DUPLICATE_P:
            out.append(out[int(rng.integers(len(out)))])
            continue
        else:
            partners = [int(world.partner[o]) for o in dict.fromkeys(out)]
            partners = [q for q in partners if q >= 0 and allowed[q]]
            if j > 0 and partners and rng.random() < SCENE_PARTNER_P:
                c = partners[0]
            else:
                outside = j > 0 and rng.random() < OUTSIDE_P
                pool = np.arange(num_classes) if outside else world.scenes[scene]
                w = world.popularity[pool] * allowed[pool]
                if w.sum() == 0:      # the scene has nothing left: any allowed class
                    pool = np.arange(num_classes)
                    w = world.popularity * allowed
                if w.sum() == 0:
                    break
                c = int(pool[rng.choice(len(pool), p=w / w.sum())])
        out.append(c)
        allowed[c] = False
        allowed[world.exclusive_of[c]] = False
    return out


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
    Above :data:`NAMED_CLASSES` classes, the many-class mode's scene model draws them.
    """
    if num_classes > NAMED_CLASSES:
        return _sample_scene_classes(rng, scene_world(num_classes), force)
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
    elif shape == "heart":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 2.5
        pts, ang = np.stack([x, y], 1) * (r / 15), rng.uniform(-20, 20) * deg
    elif shape == "arrow":
        pts = np.array([[-1, -0.22], [0.15, -0.22], [0.15, -0.6], [1, 0], [0.15, 0.6],
                        [0.15, 0.22], [-1, 0.22]]) * r
        ang = rng.uniform(0, 360) * deg
    elif shape == "crescent":
        # A disc of radius r less a disc of radius 0.8 r at (0.45 r, 0), moved so that its
        # thick part is at the centre.
        t0 = np.arctan2(0.78, 0.625)
        t1 = np.arctan2(0.78, 0.625 - 0.45)
        outer = np.linspace(t0, 2 * np.pi - t0, 24)
        inner = np.linspace(2 * np.pi - t1, t1, 24)
        pts = np.concatenate([np.stack([np.cos(outer), np.sin(outer)], 1),
                              np.stack([0.45 + 0.8 * np.cos(inner), 0.8 * np.sin(inner)], 1)])
        pts, ang = (pts + [0.5, 0.0]) * r, rng.uniform(0, 360) * deg
    elif shape == "semicircle":
        t = np.linspace(0, np.pi, 24)
        pts = np.stack([np.cos(t), np.sin(t) - 0.45], 1) * r
        ang = rng.uniform(0, 360) * deg
    elif shape == "tee":
        pts = np.array([[-0.9, -0.9], [0.9, -0.9], [0.9, -0.5], [0.22, -0.5], [0.22, 0.9],
                        [-0.22, 0.9], [-0.22, -0.5], [-0.9, -0.5]]) * r
        ang = rng.uniform(-20, 20) * deg
    elif shape == "chevron":
        pts = np.array([[-0.7, -0.85], [-0.2, -0.85], [0.75, 0], [-0.2, 0.85], [-0.7, 0.85],
                        [0.25, 0]]) * r
        ang = rng.uniform(0, 360) * deg
    elif shape == "trapezoid":
        pts = np.array([[-0.55, -0.65], [0.55, -0.65], [0.95, 0.65], [-0.95, 0.65]]) * r
        ang = rng.uniform(-20, 20) * deg
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


def _draw_plain(draw: ImageDraw.ImageDraw, shape: str, rgb, r: float, cx: float, cy: float,
                rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Draw one object of the up-to-10-class mode; its box (x0, y0, x1, y1) in image pixels."""
    s = SUPERSAMPLE
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
    return x0, y0, x1, y1


def _contrast(rgb) -> tuple[int, int, int]:
    """The second colour of a two-colour style: near black on light colours, else near white."""
    r, g, b = rgb
    return (25, 25, 25) if 0.299 * r + 0.587 * g + 0.114 * b > 128 else (235, 235, 235)


def _erode(mask: np.ndarray, w: int) -> np.ndarray:
    """`mask` eroded by a (2w+1)-pixel square: a pixel stays where its whole square is in it."""
    out = np.pad(mask, w)
    for axis in (0, 1):
        out = sliding_window_view(out, 2 * w + 1, axis=axis).all(-1)
    return out


def _draw_styled(canvas: Image.Image, shape: str, style: str, rgb, r: float, cx: float, cy: float,
                 rng: np.random.Generator) -> tuple[float, float, float, float]:
    """Draw one object of the many-class mode on the supersampled `canvas`: the shape as a mask
    on a local square, its style's layers pasted through it; returns the shape's box (x0, y0, x1,
    y1) in image pixels. Patterns are measured in units of the radius, at a random angle."""
    s = SUPERSAMPLE
    colour = tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.normal(0, 10, 3), 0, 255))
    half = int(np.ceil(1.25 * r * s)) + 1
    ox, oy = int(round(cx * s)) - half, int(round(cy * s)) - half   # the local square's corner
    lx, ly = cx * s - ox, cy * s - oy                                # the centre in it
    R = r * s
    mask_img = Image.new("L", (2 * half, 2 * half), 0)
    md = ImageDraw.Draw(mask_img)
    poly = _shape_polygon(shape, r, rng)
    if poly is None:
        bbox = [lx - R, ly - R, lx + R, ly + R]
        if shape == "ring":
            md.ellipse(bbox, outline=255, width=max(2, int(round(R * 0.35))))
        else:
            md.ellipse(bbox, fill=255)
    else:
        md.polygon([tuple(p) for p in (poly * s + [lx, ly]).tolist()], fill=255)
    mask = np.asarray(mask_img) > 127
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:2 * half, 0:2 * half].astype(np.float32) + 0.5
    xx, yy = (xx - lx) / R, (yy - ly) / R
    u = np.cos(theta) * xx + np.sin(theta) * yy
    v = -np.sin(theta) * xx + np.cos(theta) * yy
    if style in ("outline", "framed"):   # the mask less its erosion by a sixth of the radius
        border = mask & ~_erode(mask, max(1, int(round(0.16 * R))))
    layers = [(colour, border if style == "outline" else mask)]
    if style == "striped":
        layers.append((_contrast(rgb), mask & (np.floor(u / 0.35) % 2 == 1)))
    elif style == "checked":
        layers.append((_contrast(rgb), mask & ((np.floor(u / 0.5) + np.floor(v / 0.5)) % 2 == 1)))
    elif style == "spotted":
        layers.append((_contrast(rgb), mask & ((u % 0.6 - 0.3) ** 2 + (v % 0.6 - 0.3) ** 2
                                               < 0.16 ** 2)))
    elif style == "split":
        layers.append((_contrast(rgb), mask & (u > 0)))
    elif style == "framed":
        layers.append((_contrast(rgb), border))
    elif style == "cored":
        layers.append((_contrast(rgb), mask & (u * u + v * v < 0.4 ** 2)))
    box = (ox, oy, ox + 2 * half, oy + 2 * half)
    for fill, m in layers:
        canvas.paste(fill, box, Image.fromarray(m.astype(np.uint8) * 255))
    ys, xs = np.nonzero(mask)
    return ((ox + xs.min()) / s, (oy + ys.min()) / s, (ox + xs.max() + 1) / s,
            (oy + ys.max() + 1) / s)


def render_image(rng: np.random.Generator, classes: list[int], size: int = 96,
                 num_classes: int = NAMED_CLASSES):
    """Draw one image with an object of each entry of `classes`.

    `num_classes` picks the mode: above :data:`NAMED_CLASSES` the objects are drawn from the
    many-class vocabulary (:func:`class_vocabulary`, shapes with a style, radii 0.1 to 0.18 of
    the side), otherwise as the ten named classes always were (radii 0.11 to 0.2).

    Returns ``(pixels, boxes)``: a uint8 array (size, size, 3) and one ``(class, cx, cy, w, h)``
    tuple (normalised) per object.
    """
    s = SUPERSAMPLE
    many = num_classes > NAMED_CLASSES
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
        if many:   # up to 6 objects: a little smaller
            _, shape, rgb, style = _vocabulary()[c]
            r = rng.uniform(0.1, 0.18) * size
        else:
            _, shape, rgb = CLASS_SHAPES[c]
            r = rng.uniform(0.11, 0.2) * size
        # Keep the object inside the image and try not to cover the others too much.
        for _ in range(20):
            cx, cy = rng.uniform(r, size - r, size=2)
            if all(np.hypot(cx - px, cy - py) > 0.8 * (r + pr) for px, py, pr in placed):
                break
        placed.append((cx, cy, r))
        if many:
            x0, y0, x1, y1 = _draw_styled(canvas, shape, style, rgb, r, cx, cy, rng)
        else:
            x0, y0, x1, y1 = _draw_plain(draw, shape, rgb, r, cx, cy, rng)
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

_README_MANY = """\
Synthetic multi-label "shapes" dataset with {num_classes} classes (the many-class mode),
generated by mlrpl.data.synthetic.make_shapes_dataset (seed {seed}). It is made offline, from
the seed alone, to run methods end to end at many classes; it is not a benchmark.

Layout (YOLO; read with mlrpl.data.read_dataset("yolo", root, "train") or "val"):
  classes.yaml                   class names
  images/{{train,val}}/<id>.png    {size}x{size} RGB images ({n_train} train, {n_val} val)
  labels/{{train,val}}/<id>.txt    one object a line: class cx cy w h (normalised to 0..1);
                                 an empty file means no object, so every class is negative
  manifest.json                  generation parameters, the scene structure (scenes,
                                 partner_pairs, exclusive_pairs, class_weights) and per-split
                                 counts

Classes: the ten named classes of the small mode (red_circle ... lime_pentagon), then every
other combination of a shape, a colour and a style, named <colour>_<shape> when filled and
<colour>_<shape>_<style> otherwise (e.g. teal_star, teal_star_outline):
{vocabulary}
  styles   filled (solid), outline (a border only, background inside), striped (stripes in a
           contrast colour), checked (a checkerboard with a contrast colour), spotted (contrast
           spots), split (one half in a contrast colour), framed (a contrast border), cored (a
           contrast disc at the centre)
The contrast colour is near black on light colours and near white on dark ones; patterns scale
with the object and lie at a random angle. The classes run style by style, filled first, and
within a style through every shape and colour, so that fewer classes take the easiest ones.

Each image has a textured, noisy grey background with a few grey distractors and 0 to 6
objects at random positions, sizes and rotations, with a slight colour jitter; the number of
objects is 0, 1, ..., 6 with probabilities {num_objects_p}. Image i of a
split starts with class i (for i < {num_classes}), so that every class appears in a split of at
least {num_classes} images.

Co-occurrence, a scene model (fixed by the number of classes; the seed only draws the images):
  frequency       class weight (rank + {zipf_offset:g}) ** -{zipf_exponent:g} (Zipf), rank a fixed
                  random order of the classes: the most frequent weighs {w_max:.2e}, the
                  median {w_med:.2e}, the rarest {w_min:.2e} (weights sum to 1)
  scenes          {n_scenes} scenes of {scene_sizes} classes; an image draws a scene with
                  probability proportional to its classes' total weight, then its first
                  object from the scene by weight
  more objects    each further object repeats one already in the image ({duplicate_p:.0%}),
                  else is the partner of one already there ({partner_p:.0%}, when one has a
                  partner not yet in the image), else comes from all classes by weight
                  ({outside_p:.0%}: objects from other scenes, mostly frequent ones), else
                  from the scene by weight
  partners        {n_partners} pairs: the classes of a scene paired up (one left alone in a
                  scene of odd size)
  never together  {n_exclusive} pairs of classes of one scene never appear in one image

Classes ({num_classes}), index: name (scene, weight):
{classes}
"""


def _version(num_classes: int) -> int:
    """The output version of the mode that `num_classes` selects."""
    return VERSION if num_classes <= NAMED_CLASSES else MANY_VERSION


def _named_mode_docs(params: dict, names: list[str]) -> tuple[dict, str]:
    """The up-to-10-class mode's manifest entries and README."""
    num_classes = params["num_classes"]
    partners = [(a, b) for a, b in PARTNER_PAIRS if b < num_classes]
    exclusive = [(a, b) for a, b in EXCLUSIVE_PAIRS if b < num_classes]
    doc = {"partner_pairs": [[names[a], names[b]] for a, b in partners],
           "exclusive_pairs": [[names[a], names[b]] for a, b in exclusive]}
    readme = _README.format(
        seed=params["seed"], size=params["size"], n_train=params["n_train"],
        n_val=params["n_val"], num_classes=num_classes,
        classes="\n".join(f"  {i}: {n}" for i, n in enumerate(names)),
        partners="\n  ".join(f"{names[a]}+{names[b]}" for a, b in partners) or "none",
        exclusive="\n  ".join(f"{names[a]}+{names[b]}" for a, b in exclusive) or "none")
    return doc, readme


def _many_mode_docs(params: dict, names: list[str]) -> tuple[dict, str]:
    """The many-class mode's manifest entries (the scene structure) and README."""
    num_classes = params["num_classes"]
    world = scene_world(num_classes)
    pairs = [(int(a), int(b)) for a, b in enumerate(world.partner) if a < b]
    doc = {"model": "scenes",
           "scenes": [[names[c] for c in g] for g in world.scenes],
           "partner_pairs": [[names[a], names[b]] for a, b in pairs],
           "exclusive_pairs": [[names[a], names[b]] for a, b in world.exclusive_pairs],
           "class_weights": [float(f"{w:.6g}") for w in world.popularity]}
    sizes = sorted({len(g) for g in world.scenes})
    vocabulary = "\n".join(
        textwrap.fill(", ".join(items), 96, initial_indent=f"  {label:<9}",
                      subsequent_indent=" " * 11)
        for label, items in (("shapes", SHAPES), ("colours", COLOURS)))
    readme = _README_MANY.format(
        seed=params["seed"], size=params["size"], n_train=params["n_train"],
        n_val=params["n_val"], num_classes=num_classes, vocabulary=vocabulary,
        num_objects_p=", ".join(f"{p:g}" for p in NUM_OBJECTS_MANY_P),
        zipf_offset=ZIPF_OFFSET, zipf_exponent=ZIPF_EXPONENT,
        w_max=world.popularity.max(), w_med=float(np.median(world.popularity)),
        w_min=world.popularity.min(), n_scenes=len(world.scenes),
        scene_sizes=" or ".join(map(str, sizes)),
        duplicate_p=DUPLICATE_P, partner_p=SCENE_PARTNER_P,
        outside_p=OUTSIDE_P, n_partners=len(pairs), n_exclusive=len(world.exclusive_pairs),
        classes="\n".join(f"  {i}: {n} (scene {world.scene_of[i]}, {world.popularity[i]:.2e})"
                          for i, n in enumerate(names)))
    return doc, readme


def _params(n_train, n_val, size, num_classes, seed) -> dict:
    return {"n_train": n_train, "n_val": n_val, "size": size, "num_classes": num_classes,
            "seed": seed, "format": "png"}


def _check_params(n_train, n_val, size, num_classes, seed):
    for name, v, lo in (("n_train", n_train, 1), ("n_val", n_val, 0), ("size", size, 32),
                        ("num_classes", num_classes, 2)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
    if num_classes > MAX_CLASSES:
        raise ConfigError(f"num_classes must be at most {MAX_CLASSES} (the ten named classes, then "
                          f"shape x colour x style combinations), got {num_classes}")
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
    names = [name for name, *_ in class_vocabulary(num_classes)]
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
            pixels, boxes = render_image(rng, classes, size, num_classes)
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
    docs = _named_mode_docs if num_classes <= NAMED_CLASSES else _many_mode_docs
    doc, readme = docs(params, names)
    manifest = {"generator": GENERATOR, "version": _version(num_classes), "params": params,
                "classes": names, **doc, "splits": splits}
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (dst / "README.txt").write_text(readme)
    return manifest


def make_shapes_dataset(root, n_train: int = 160, n_val: int = 80, size: int = 96,
                        num_classes: int = 8, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the synthetic shapes dataset under `root` (YOLO layout) and return `root` as a Path.

    `num_classes` from 2 to :data:`NAMED_CLASSES` (10) gives the named-class mode, as it always
    was; from 11 to :data:`MAX_CLASSES` (2,049) the many-class mode, its scene model of
    co-occurrence and 0 to 6 objects an image (the module docstring).

    If `root` already holds this dataset (a ``manifest.json`` with the same parameters and all
    files present), it is returned as is: generation is deterministic, so it would be the same.
    If `root` holds anything else, :class:`~mlrpl.errors.DataError` is raised unless `overwrite`
    is true, in which case it is replaced (the old folder moved aside to
    ``<root>.replaced-<time>``, never deleted). The data is generated in a temporary sibling folder and
    renamed into place, so `root` never holds a half-written dataset.

    >>> root = make_shapes_dataset(tmp / "shapes")  # doctest: +SKIP
    >>> read_dataset("yolo", root, "train").labels.shape  # doctest: +SKIP
    (160, 8)
    >>> big = make_shapes_dataset(tmp / "shapes1000", 2000, 500, num_classes=1000)  # doctest: +SKIP
    """
    _check_params(n_train, n_val, size, num_classes, seed)
    params = _params(int(n_train), int(n_val), int(size), int(num_classes), int(seed))
    root = Path(root)

    def reusable() -> bool:
        m = _read_manifest(root)
        return (m is not None and m.get("params") == params
                and m.get("version") == _version(params["num_classes"])
                and _is_complete(root, params))

    if root.exists():
        if not root.is_dir():
            raise DataError("exists and is not a directory; cannot write the synthetic dataset "
                            "there", path=root)
        if any(root.iterdir()):
            if reusable():
                return root
            if not overwrite:
                m = _read_manifest(root)
                if m is None:
                    what = "is not empty and holds other files"
                elif m.get("params") != params:
                    what = f"holds a synthetic dataset with other parameters ({m.get('params')})"
                elif m.get("version") != _version(params["num_classes"]):
                    what = (f"holds this synthetic dataset from another version of the generator "
                            f"({m.get('version')!r}, now {_version(params['num_classes'])})")
                else:
                    what = "holds this synthetic dataset with files missing or added"
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
