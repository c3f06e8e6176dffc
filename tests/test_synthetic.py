"""The synthetic shapes dataset: layout readable by the YOLO reader, determinism, caching; the
named-class mode pinned byte for byte; the many-class mode's vocabulary, long tail and scenes."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from mlrpl.data import read_dataset
from mlrpl.data.synthetic import (CLASS_NAMES, EXCLUSIVE_PAIRS, MAX_CLASSES, STYLES,
                                  class_vocabulary, make_shapes_dataset, sample_classes,
                                  scene_world)
from mlrpl.errors import ConfigError, DataError

SMALL = dict(n_train=40, n_val=16, size=64, num_classes=8)
MANY = dict(n_train=240, n_val=40, size=48, num_classes=1000)


def pixels(root, split):
    return [np.asarray(Image.open(p)) for p in sorted((root / "images" / split).glob("*.png"))]


def label_bytes(root, split):
    return {p.name: p.read_bytes() for p in sorted((root / "labels" / split).glob("*.txt"))}


@pytest.fixture(scope="module")
def default_root(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("syn") / "shapes")


def test_default_layout_reads_back(default_root):
    root = default_root
    for name in ("classes.yaml", "manifest.json", "README.txt"):
        assert (root / name).is_file()
    train = read_dataset("yolo", root, "train")
    val = read_dataset("yolo", root, "val")
    assert train.labels.shape == (160, 8)
    assert val.labels.shape == (80, 8)
    assert train.classes == CLASS_NAMES[:8]
    assert all(" " not in c for c in train.classes)
    pos = train.labels == 1
    assert pos.any(axis=0).all(), "every class appears in train"
    assert (val.labels == 1).any(axis=0).all()
    # 0 to 3 objects an image, most images with at least one.
    k = pos.sum(1)
    assert k.max() <= 3 and (k >= 1).mean() > 0.85
    img = np.asarray(Image.open(root / train.items[0]))
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    # Co-occurrence structure: partners co-occur more than chance, exclusive pairs never.
    assert (pos[:, 0] & pos[:, 1]).mean() > pos[:, 0].mean() * pos[:, 1].mean()
    for a, b in EXCLUSIVE_PAIRS:
        if b < 8:
            assert not (pos[:, a] & pos[:, b]).any()
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["params"]["seed"] == 0 and manifest["classes"] == CLASS_NAMES[:8]


def check_boxes(label_dir, num_classes):
    """Every label line of the folder: a class below ``num_classes``, a box inside the image."""
    for p in label_dir.glob("*.txt"):
        for line in p.read_text().splitlines():
            c, *box = line.split()
            assert 0 <= int(c) < num_classes
            cx, cy, w, h = map(float, box)
            assert 0 < w <= 1 and 0 < h <= 1
            assert 0 <= cx - w / 2 + 1e-6 and cx + w / 2 <= 1 + 1e-6
            assert 0 <= cy - h / 2 + 1e-6 and cy + h / 2 <= 1 + 1e-6


def test_boxes_are_normalised(default_root):
    check_boxes(default_root / "labels" / "train", 8)


def test_deterministic(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", seed=3, **SMALL)
    b = make_shapes_dataset(tmp_path / "b", seed=3, **SMALL)
    c = make_shapes_dataset(tmp_path / "c", seed=4, **SMALL)
    for split in ("train", "val"):
        assert label_bytes(a, split) == label_bytes(b, split)
        pa, pb = pixels(a, split), pixels(b, split)
        assert len(pa) == SMALL[f"n_{split}"]
        assert all(np.array_equal(x, y) for x, y in zip(pa, pb))
    assert label_bytes(a, "train") != label_bytes(c, "train")
    assert (a / "classes.yaml").read_bytes() == (b / "classes.yaml").read_bytes()


def test_idempotent_cache(tmp_path):
    root = make_shapes_dataset(tmp_path / "d", seed=1, **SMALL)
    marker = root / "labels" / "train" / "train_00000.txt"
    mtime = marker.stat().st_mtime_ns
    assert make_shapes_dataset(tmp_path / "d", seed=1, **SMALL) == root
    assert marker.stat().st_mtime_ns == mtime, "a matching dataset is not rewritten"
    # No temporary folders are left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_refuses_to_clobber(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="mine"):
        make_shapes_dataset(foreign, **SMALL)
    assert (foreign / "notes.txt").read_text() == "keep me"
    # Another synthetic dataset with other parameters is not replaced silently either.
    other = make_shapes_dataset(tmp_path / "other", seed=1, **SMALL)
    with pytest.raises(DataError, match="other parameters"):
        make_shapes_dataset(other, seed=2, **SMALL)
    # overwrite=True replaces it, the old folder moved aside (never deleted).
    root = make_shapes_dataset(foreign, overwrite=True, **SMALL)
    assert not (root / "notes.txt").exists()
    assert read_dataset("yolo", root, "train").labels.shape == (40, 8)
    [aside] = tmp_path.glob("mine.replaced-*")
    assert (aside / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", aside.name, "other"]


def test_empty_folder_and_file(tmp_path):
    (tmp_path / "empty").mkdir()
    root = make_shapes_dataset(tmp_path / "empty", **SMALL)
    assert (root / "manifest.json").is_file()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="afile"):
        make_shapes_dataset(tmp_path / "afile", **SMALL)


def test_num_classes_and_bad_params(tmp_path):
    root = make_shapes_dataset(tmp_path / "c4", n_train=8, n_val=4, size=48, num_classes=4)
    ls = read_dataset("yolo", root, "train")
    assert ls.labels.shape == (8, 4) and (ls.labels == 1).any(0).all()
    for bad in (dict(num_classes=MAX_CLASSES + 1), dict(num_classes=1), dict(size=8),
                dict(n_train=0), dict(seed=-1)):
        [(key, _)] = bad.items()
        with pytest.raises(ConfigError, match=key):
            make_shapes_dataset(tmp_path / "bad", **{**SMALL, **bad})
    assert not (tmp_path / "bad").exists()


# ---- the named-class mode is fixed ---------------------------------------------------------------
def digest(root) -> str:
    """sha256 over every file: its path and bytes (decoded pixels for the PNGs)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes())
    return h.hexdigest()


def test_named_mode_is_unchanged(tmp_path):
    # Label files, pixels, manifest and README as the generator has always written them: the
    # demo, the tests and the pinned results rely on it.
    root = make_shapes_dataset(tmp_path / "pinned", n_train=12, n_val=6, size=48,
                               num_classes=10, seed=5)
    assert digest(root) == "0c453dad7b94418453e74e43d5868c996c58ebcdfede8dd3e2f594e42b96c6f9"
    assert json.loads((root / "manifest.json").read_text())["version"] == 1


# ---- the many-class mode -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def many_root(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("many") / "shapes1000", seed=0, **MANY)


def test_vocabulary_names_are_unique_and_readable():
    vocab = class_vocabulary()
    names = [name for name, *_ in vocab]
    assert len(names) == len(set(names)) == MAX_CLASSES >= 2000
    assert names[:10] == CLASS_NAMES
    assert all(n.replace("_", "").isalpha() and n.islower() for n in names)
    assert {style for *_, style in vocab} == set(STYLES)
    assert len({(shape, rgb, style) for _, shape, rgb, style in vocab}) == MAX_CLASSES
    assert "teal_star" in names and "teal_star_outline" in names
    # A prefix of the vocabulary is the vocabulary of fewer classes; the first ones are filled.
    assert class_vocabulary(300) == vocab[:300]
    assert all(style == "filled" for *_, style in vocab[:250])


def test_many_classes_reads_back(many_root):
    root = many_root
    names = [name for name, *_ in class_vocabulary(1000)]
    train = read_dataset("yolo", root, "train")
    val = read_dataset("yolo", root, "val")
    assert train.labels.shape == (240, 1000) and val.labels.shape == (40, 1000)
    assert train.classes == names and val.classes == names
    assert set(np.unique(train.labels)) <= {-1, 1}
    pos = train.labels == 1
    # Every class forced into the first images of a split appears there.
    assert pos[:, :240].any(axis=0).all() and (val.labels == 1)[:, :40].any(axis=0).all()
    k = pos.sum(1)
    assert k.max() <= 6 and k.mean() > 2.2 and (k >= 1).all()
    assert np.asarray(Image.open(root / train.items[0])).shape == (48, 48, 3)
    check_boxes(root / "labels" / "train", 1000)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["model"] == "scenes" and manifest["classes"] == names
    assert sorted(n for g in manifest["scenes"] for n in g) == sorted(names)
    assert len(manifest["class_weights"]) == 1000
    readme = (root / "README.txt").read_text()
    assert "scene" in readme and "teal_star" in readme and "Zipf" in readme


def test_many_classes_scenes_in_the_labels(many_root):
    manifest = json.loads((many_root / "manifest.json").read_text())
    col = {n: i for i, n in enumerate(manifest["classes"])}
    scene = np.empty(len(col), dtype=int)
    for s, g in enumerate(manifest["scenes"]):
        scene[[col[n] for n in g]] = s
    for split in ("train", "val"):
        pos = read_dataset("yolo", many_root, split).labels == 1
        # Never-together pairs never meet; partner pairs are in one scene.
        for a, b in manifest["exclusive_pairs"]:
            assert scene[col[a]] == scene[col[b]]
            assert not (pos[:, col[a]] & pos[:, col[b]]).any()
    for a, b in manifest["partner_pairs"]:
        assert scene[col[a]] == scene[col[b]]
    # Pairs of classes in one image share a scene far more often than independent draws would.
    pos = read_dataset("yolo", many_root, "train").labels == 1
    same = pairs = 0
    for row in pos:
        sc = scene[np.flatnonzero(row)]
        same += int((sc[:, None] == sc[None, :]).sum() - len(sc)) // 2
        pairs += len(sc) * (len(sc) - 1) // 2
    mass = np.bincount(scene, weights=pos.sum(0), minlength=scene.max() + 1)
    chance = ((mass / mass.sum()) ** 2).sum()
    assert same / pairs > 0.6 and same / pairs > 10 * chance


def test_many_classes_long_tail_and_cooccurrence():
    # The sampler alone, on many unforced images: the Zipf tail and the scene structure.
    c, n = 1000, 4000
    world = scene_world(c)
    assert scene_world(c) is world and len(world.scenes) == 40
    pos = np.zeros((n, c), dtype=bool)
    for i in range(n):
        pos[i, sample_classes(np.random.default_rng([9, i]), c)] = True
    freq = pos.sum(0)
    by_weight = freq[np.argsort(-world.popularity)]
    # Long tail: the top tenth of the classes by weight take over a third of the positives, each
    # of them on average eight times as many as a class of the lower half; the most frequent
    # class dwarfs the median.
    assert by_weight[:100].sum() > freq.sum() / 3
    assert by_weight[:100].mean() > 8 * by_weight[500:].mean()
    assert freq.max() > 20 * np.median(freq)
    # P(b | a): classes of a's scene far more often than classes of other scenes.
    co = pos.T.astype(np.float32) @ pos.astype(np.float32)
    cond = co / np.maximum(freq, 1)[:, None]
    same = world.scene_of[:, None] == world.scene_of[None, :]
    off = ~np.eye(c, dtype=bool)
    assert cond[same & off].mean() > 50 * cond[~same].mean()
    partner_rate = np.mean([co[a, b] / freq[a] for a, b in enumerate(world.partner)
                            if b >= 0 and freq[a] >= 20])
    assert partner_rate > 0.3
    for a, b in world.exclusive_pairs:
        assert co[a, b] == 0


def test_many_classes_deterministic(tmp_path):
    kw = dict(n_val=4, size=48, num_classes=300)
    a = make_shapes_dataset(tmp_path / "a", n_train=12, seed=2, **kw)
    b = make_shapes_dataset(tmp_path / "b", n_train=12, seed=2, **kw)
    c = make_shapes_dataset(tmp_path / "c", n_train=12, seed=3, **kw)
    longer = make_shapes_dataset(tmp_path / "longer", n_train=16, seed=2, **kw)
    assert digest(a) == digest(b) != digest(c)
    for split in ("train", "val"):
        assert label_bytes(a, split) == label_bytes(b, split)
        assert all(np.array_equal(x, y) for x, y in zip(pixels(a, split), pixels(b, split)))
    # Growing n_train appends images: the first ones stay the same.
    grown = label_bytes(longer, "train")
    assert len(grown) == 16 and all(grown[k] == v for k, v in label_bytes(a, "train").items())
    assert all(np.array_equal(x, y) for x, y in zip(pixels(a, "train"), pixels(longer, "train")))


def test_other_generator_version_is_not_reused(tmp_path):
    kw = dict(n_train=6, n_val=2, size=32, num_classes=20)
    root = make_shapes_dataset(tmp_path / "v", **kw)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["version"] = 0
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="another version of the generator"):
        make_shapes_dataset(root, **kw)
    make_shapes_dataset(root, overwrite=True, **kw)
    assert json.loads((root / "manifest.json").read_text())["version"] == 1
