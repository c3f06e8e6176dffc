"""The synthetic shapes dataset: layout readable by the YOLO reader, determinism, caching."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mlrpl.data import read_dataset
from mlrpl.data.synthetic import CLASS_NAMES, EXCLUSIVE_PAIRS, make_shapes_dataset
from mlrpl.errors import ConfigError, DataError

SMALL = dict(n_train=40, n_val=16, size=64, num_classes=8)


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


def test_boxes_are_normalised(default_root):
    for p in (default_root / "labels" / "train").glob("*.txt"):
        for line in p.read_text().splitlines():
            c, *box = line.split()
            assert 0 <= int(c) < 8
            cx, cy, w, h = map(float, box)
            assert 0 < w <= 1 and 0 < h <= 1
            assert 0 <= cx - w / 2 + 1e-6 and cx + w / 2 <= 1 + 1e-6
            assert 0 <= cy - h / 2 + 1e-6 and cy + h / 2 <= 1 + 1e-6


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
    for bad in (dict(num_classes=99), dict(size=8), dict(n_train=0), dict(seed=-1)):
        with pytest.raises(ConfigError):
            make_shapes_dataset(tmp_path / "bad", **{**SMALL, **bad})
    assert not (tmp_path / "bad").exists()
