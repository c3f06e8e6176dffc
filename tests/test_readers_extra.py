"""Readers for COCO, VG-200, NUS-WIDE, CSV and NPY label files, on tiny fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlrpl.data.readers import READERS, read_dataset
from mlrpl.data.readers.coco import read_coco
from mlrpl.data.readers.nuswide import read_nuswide
from mlrpl.data.readers.tabular import read_csv, read_npy
from mlrpl.data.readers.vg import read_vg
from mlrpl.errors import DataError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_registered_names():
    for name in ("coco", "coco2014", "coco2017", "vg200", "vg", "nuswide", "csv", "npy"):
        assert name in READERS


# ---- COCO -----------------------------------------------------------------------------------
def coco_doc():
    return {
        "images": [{"id": 10, "file_name": "a.jpg"}, {"id": 5, "file_name": "b.jpg"},
                   {"id": 7, "file_name": "c.jpg"}],
        "categories": [{"id": 3, "name": "car"}, {"id": 1, "name": "person"},
                       {"id": 90, "name": "toothbrush"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 1, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 1, "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 90, "iscrowd": 1},
            {"id": 4, "image_id": 10, "category_id": 3, "iscrowd": 0},
        ],
    }


def make_coco(root: Path, split="train2014", doc=None) -> Path:
    return write(root / "annotations" / f"instances_{split}.json", json.dumps(doc or coco_doc()))


def test_coco_basic(tmp_path):
    make_coco(tmp_path)
    ls = read_coco(tmp_path, "train2014")
    assert ls.classes == ["person", "car", "toothbrush"]  # category-id order
    assert ls.items == ["train2014/a.jpg", "train2014/b.jpg", "train2014/c.jpg"]
    assert ls.labels.dtype == np.int8
    np.testing.assert_array_equal(ls.labels, [[1, 1, -1], [-1, -1, 1], [-1, -1, -1]])
    assert ls.meta["ids"] == [10, 5, 7]


def test_coco_drop_empty_and_images_folder(tmp_path):
    make_coco(tmp_path, "val2017")
    (tmp_path / "images" / "val2017").mkdir(parents=True)
    ls = read_coco(tmp_path, "val2017", drop_empty=True)
    assert ls.items == ["images/val2017/a.jpg", "images/val2017/b.jpg"]
    assert ls.labels.shape == (2, 3)


def test_coco_annotations_option_and_read_dataset(tmp_path):
    ann = write(tmp_path / "elsewhere" / "instances_val2014.json", json.dumps(coco_doc()))
    ls = read_dataset("coco", tmp_path, annotations=ann)
    assert ls.items[0] == "val2014/a.jpg"
    ls = read_dataset("coco2014", tmp_path, "train2014", annotations=ann)
    assert ls.items[0] == "train2014/a.jpg"
    make_coco(tmp_path, "train2017")
    assert read_dataset("coco2017", tmp_path).items[0] == "train2017/a.jpg"


def test_coco_errors(tmp_path):
    with pytest.raises(DataError, match="instances_val2014.json"):
        read_coco(tmp_path, "val2014")
    doc = coco_doc()
    doc["annotations"].append({"id": 9, "image_id": 999, "category_id": 1})
    make_coco(tmp_path, "a", doc)
    with pytest.raises(DataError, match=r"annotations\[4\]\.image_id.*999") as e:
        read_coco(tmp_path, "a")
    assert e.value.path.endswith("instances_a.json")
    doc = coco_doc()
    doc["annotations"][0]["category_id"] = 2
    make_coco(tmp_path, "b", doc)
    with pytest.raises(DataError, match="category_id"):
        read_coco(tmp_path, "b")
    doc = coco_doc()
    del doc["categories"]
    make_coco(tmp_path, "c", doc)
    with pytest.raises(DataError, match="categories"):
        read_coco(tmp_path, "c")
    doc = coco_doc()
    del doc["images"][1]["file_name"]
    make_coco(tmp_path, "d", doc)
    with pytest.raises(DataError, match=r"images\[1\]\.file_name"):
        read_coco(tmp_path, "d")
    write(tmp_path / "annotations" / "instances_e.json", "{not json")
    with pytest.raises(DataError, match="malformed JSON"):
        read_coco(tmp_path, "e")


# ---- VG-200 ---------------------------------------------------------------------------------
def make_vg(root: Path, num_classes=4, table=None):
    write(root / "vg_category_200.txt", "\n".join(f"c{i}" for i in range(num_classes)) + "\n")
    write(root / "vg_category_200_labels_index.json",
          json.dumps(table or {"1.jpg": [0, 2], "2.jpg": [], "3.jpg": [3]}))
    write(root / "train_list_500.txt", "1.jpg\n2.jpg\n")
    write(root / "test_list_500.txt", "3.jpg\n")


def test_vg_basic(tmp_path):
    make_vg(tmp_path)
    ls = read_vg(tmp_path, "train")
    assert ls.classes == ["c0", "c1", "c2", "c3"]
    assert ls.items == ["VG_100K/1.jpg", "VG_100K/2.jpg"]
    np.testing.assert_array_equal(ls.labels, [[1, -1, 1, -1], [-1, -1, -1, -1]])
    ls = read_dataset("vg200", tmp_path, "test", image_dir="")
    assert ls.items == ["3.jpg"]
    np.testing.assert_array_equal(ls.labels, [[-1, -1, -1, 1]])


def test_vg_overrides(tmp_path):
    make_vg(tmp_path)
    write(tmp_path / "meta" / "my_list.txt", "3.jpg\n\n1.jpg\n")
    ls = read_dataset("vg", tmp_path, "test", test_list="meta/my_list.txt",
                      classes=["a", "b", "c", "d"])
    assert ls.classes == ["a", "b", "c", "d"]
    assert ls.meta["ids"] == ["3.jpg", "1.jpg"]


def test_vg_errors(tmp_path):
    make_vg(tmp_path)
    write(tmp_path / "bad_list.txt", "1.jpg\nmissing.jpg\n")
    with pytest.raises(DataError, match="missing.jpg") as e:
        read_vg(tmp_path, "train", train_list="bad_list.txt")
    assert e.value.path.endswith("bad_list.txt") and e.value.line == 2
    make_vg(tmp_path, table={"1.jpg": [0, 4], "2.jpg": [], "3.jpg": [3]})
    with pytest.raises(DataError, match=r"class index 4 outside 0\.\.3"):
        read_vg(tmp_path, "train")
    with pytest.raises(DataError, match="split"):
        read_vg(tmp_path, "trainval")
    (tmp_path / "vg_category_200.txt").unlink()
    with pytest.raises(DataError, match="vg_category_200.txt"):
        read_vg(tmp_path, "train")


# ---- NUS-WIDE -------------------------------------------------------------------------------
def make_nus(root: Path):
    write(root / "Concepts81.txt", "sky\nwater\n")
    write(root / "ImageList" / "TrainImagelist.txt",
          "actor\\0001_1.jpg\nairport\\0002_2.jpg\nanimal\\0003_3.jpg\n")
    write(root / "ImageList" / "TestImagelist.txt", "actor\\0004_4.jpg\n")
    write(root / "TrainTestLabels" / "Labels_sky_Train.txt", "1 \n0 \n0 \n")
    write(root / "TrainTestLabels" / "Labels_water_Train.txt", "1\n0\n1\n")
    write(root / "TrainTestLabels" / "Labels_sky_Test.txt", "0\n")
    write(root / "TrainTestLabels" / "Labels_water_Test.txt", "0\n")


def test_nuswide_basic(tmp_path):
    make_nus(tmp_path)
    ls = read_nuswide(tmp_path, "train")
    assert ls.classes == ["sky", "water"]
    assert ls.items == ["Flickr/actor/0001_1.jpg", "Flickr/animal/0003_3.jpg"]
    np.testing.assert_array_equal(ls.labels, [[1, 1], [-1, 1]])
    assert ls.meta["dropped"] == 1
    ls = read_nuswide(tmp_path, "train", drop_empty=False, image_dir=None)
    assert ls.items[1] == "airport/0002_2.jpg"
    np.testing.assert_array_equal(ls.labels[1], [-1, -1])


def test_nuswide_read_dataset_empty_split(tmp_path):
    make_nus(tmp_path)
    assert read_dataset("nuswide", tmp_path, "test", drop_empty=False).num_items == 1
    with pytest.raises(DataError, match="empty"):
        read_dataset("nuswide", tmp_path, "test")


def test_nuswide_errors(tmp_path):
    make_nus(tmp_path)
    write(tmp_path / "TrainTestLabels" / "Labels_water_Train.txt", "1\n0\n")
    with pytest.raises(DataError, match="2 labels, expected 3") as e:
        read_nuswide(tmp_path, "train")
    assert e.value.path.endswith("Labels_water_Train.txt")
    write(tmp_path / "TrainTestLabels" / "Labels_water_Train.txt", "1\n2\n0\n")
    with pytest.raises(DataError, match="not 0 or 1") as e:
        read_nuswide(tmp_path, "train")
    assert e.value.line == 2
    (tmp_path / "TrainTestLabels" / "Labels_sky_Test.txt").unlink()
    with pytest.raises(DataError, match="Labels_sky_Test.txt"):
        read_nuswide(tmp_path, "test")


# ---- CSV: list layout -----------------------------------------------------------------------
def test_csv_list_layout(tmp_path):
    f = write(tmp_path / "labels.csv", "image,labels,unknown\nimg/a.jpg,cat;dog,\n\n"
                                       "img/b.jpg,,bird\nimg/c.jpg,bird, cat \n")
    ls = read_csv(f)
    assert ls.classes == ["bird", "cat", "dog"]
    assert ls.items == ["img/a.jpg", "img/b.jpg", "img/c.jpg"]
    assert ls.root == str(tmp_path)
    np.testing.assert_array_equal(ls.labels, [[-1, 1, 1], [0, -1, -1], [1, 0, -1]])

    ls = read_csv(f, classes=["dog", "cat", "bird", "fish"], image_root="/data")
    assert ls.classes == ["dog", "cat", "bird", "fish"]
    assert ls.root == "/data"
    np.testing.assert_array_equal(ls.labels[0], [1, 1, -1, -1])


def test_csv_directory_and_read_dataset(tmp_path):
    write(tmp_path / "train.csv", "image,labels\na.jpg,x\nb.jpg,y;x\n")
    names = write(tmp_path / "classes.txt", "x\ny\nz\n")
    ls = read_dataset("csv", tmp_path, "train", classes=str(names))
    assert ls.classes == ["x", "y", "z"]
    np.testing.assert_array_equal(ls.labels, [[1, -1, -1], [1, 1, -1]])
    with pytest.raises(DataError, match="val.csv"):
        read_dataset("csv", tmp_path, "val")


def test_csv_unknown_class_name(tmp_path):
    f = write(tmp_path / "l.csv", "image,labels\na.jpg,cat\nb.jpg,dgo\n")
    with pytest.raises(DataError, match=r"'dgo'.*did you mean 'dog'") as e:
        read_csv(f, classes=["cat", "dog"])
    assert e.value.line == 3 and e.value.path == str(f)


def test_csv_wrong_column_count(tmp_path):
    f = write(tmp_path / "l.csv", "image,labels\na.jpg,cat\nb.jpg,cat,dog\n")
    with pytest.raises(DataError, match="3 columns, expected 2") as e:
        read_csv(f)
    assert e.value.line == 3
    f = write(tmp_path / "d.csv", "image,cat,dog\na.jpg,1,-1\nb.jpg,1\n")
    with pytest.raises(DataError, match="2 columns, expected 3") as e:
        read_csv(f)
    assert e.value.line == 3


def test_csv_bad_header_and_missing(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_csv(tmp_path / "nope.csv")
    f = write(tmp_path / "h.csv", "path,labels\na.jpg,x\n")
    with pytest.raises(DataError, match="header") as e:
        read_csv(f)
    assert e.value.line == 1


# ---- CSV: dense layout ----------------------------------------------------------------------
def test_csv_dense_encodings(tmp_path):
    f = write(tmp_path / "d.csv", "image,cat,dog\na.jpg,1,0\nb.jpg,-1,1\n")
    np.testing.assert_array_equal(read_csv(f, encoding="hcp").labels, [[1, 0], [-1, 1]])
    np.testing.assert_array_equal(read_csv(f, encoding="asl").labels, [[1, -1], [0, 1]])
    ls = read_csv(f, encoding="asl", classes=["dog", "cat"])
    assert ls.classes == ["dog", "cat"]
    np.testing.assert_array_equal(ls.labels, [[-1, 1], [1, 0]])


def test_csv_dense_unambiguous_without_encoding(tmp_path):
    f = write(tmp_path / "d.csv", "image,cat,dog\na.jpg,1,-1\nb.jpg,-1,1.0\n")
    ls = read_csv(f)
    np.testing.assert_array_equal(ls.labels, [[1, -1], [-1, 1]])
    assert ls.meta["encoding"] == "hcp"


@pytest.mark.parametrize("rows", ["a.jpg,1,-1\nb.jpg,0,1\n", "a.jpg,0,-1\nb.jpg,0,0\n"])
def test_csv_dense_ambiguous(tmp_path, rows):
    f = write(tmp_path / "d.csv", "image,cat,dog\n" + rows)
    with pytest.raises(DataError, match="ambiguous.*encoding="):
        read_csv(f)


def test_csv_dense_value_outside_encoding(tmp_path):
    f = write(tmp_path / "d.csv", "image,cat,dog\na.jpg,1,0\nb.jpg,2,1\n")
    with pytest.raises(DataError, match="outside the 'hcp' encoding") as e:
        read_csv(f, encoding="hcp")
    assert e.value.line == 3 and e.value.field == "cat"
    f = write(tmp_path / "e.csv", "image,cat\na.jpg,yes\n")
    with pytest.raises(DataError, match="not an integer") as e:
        read_csv(f, encoding="asl")
    assert e.value.line == 2
    with pytest.raises(DataError, match="unknown label encoding"):
        read_csv(f, encoding="bogus")


def test_csv_dense_classes_mismatch(tmp_path):
    f = write(tmp_path / "d.csv", "image,cat,dgo\na.jpg,1,-1\n")
    with pytest.raises(DataError, match="did you mean 'dgo'"):
        read_csv(f, classes=["cat", "dog"])


# ---- NPY ------------------------------------------------------------------------------------
def test_npy_basic(tmp_path):
    m = tmp_path / "train.npy"
    np.save(m, np.array([[1, 0, -1], [0, 1, 1]], dtype=np.int64))
    write(tmp_path / "train.names.txt", "a\nb\nc\n")
    ls = read_npy(m, encoding="asl")
    assert ls.classes == ["a", "b", "c"]
    assert ls.items == ["0", "1"]
    np.testing.assert_array_equal(ls.labels, [[1, -1, 0], [-1, 1, 1]])
    write(tmp_path / "train.items.txt", "x.jpg\ny.jpg\n")
    ls = read_dataset("npy", tmp_path, "train", encoding="hcp")
    assert ls.items == ["x.jpg", "y.jpg"]
    np.testing.assert_array_equal(ls.labels, [[1, 0, -1], [0, 1, 1]])
    ls = read_npy(m, encoding="hcp", classes=["p", "q", "r"], items=["u", "v"])
    assert ls.classes == ["p", "q", "r"] and ls.items == ["u", "v"]


def test_npy_errors(tmp_path):
    m = tmp_path / "m.npy"
    np.save(m, np.array([[1, 0], [0, 1]], dtype=np.float32))
    with pytest.raises(DataError, match="encoding"):
        read_npy(m)
    with pytest.raises(DataError, match="m.names.txt"):
        read_npy(m, encoding="hcp")
    with pytest.raises(DataError, match="2 columns but 3 class names"):
        read_npy(m, encoding="hcp", classes=["a", "b", "c"])
    with pytest.raises(DataError, match="2 rows but 1 items"):
        read_npy(m, encoding="hcp", classes=["a", "b"], items=["x"])
    np.save(m, np.array([[1, 0], [0, 2]]))
    with pytest.raises(DataError, match=r"value 2 at row 1, column 1 \('b'\).*'asl'"):
        read_npy(m, encoding="asl", classes=["a", "b"])
    np.save(m, np.zeros(3))
    with pytest.raises(DataError, match="2-D"):
        read_npy(m, encoding="asl", classes=["a"])
    with pytest.raises(DataError, match="not found"):
        read_npy(tmp_path / "missing.npy", encoding="hcp")
