"""Reading data as the user meant it: upright photos, one row per image file, 0/1 spreadsheets,
classes nothing can teach, mAP's coverage, training images evaluated, VOC's difficult rule, and
a checkpoint's data found from another folder."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from mlrpl.cli import main
from mlrpl.config import load_config, resolved
from mlrpl.data.dataset import load_image, upright
from mlrpl.data.encoding import infer_encoding
from mlrpl.data.readers import with_recorded_defaults
from mlrpl.data.readers.tabular import read_csv
from mlrpl.engine.evaluate import evaluate_checkpoint, map_scope
from mlrpl.engine.experiment import load_splits, make_partial
from mlrpl.engine.trainer import Trainer
from mlrpl.errors import DataError


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append((record.levelno, record.getMessage()))

    def warnings(self):
        return [m for lvl, m in self.lines if lvl >= logging.WARNING]

    def text(self):
        return "\n".join(m for _, m in self.lines)


@pytest.fixture
def mlrpl_log():
    log = logging.getLogger("mlrpl")
    h, level = Lines(), log.level
    log.addHandler(h)
    log.setLevel(logging.INFO)
    yield h
    log.removeHandler(h)
    log.setLevel(level)


def images(folder, names, size=24, seed=0):
    rng = np.random.default_rng(seed)
    for n in names:
        p = folder / n
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)


def run_args(run_dir, cache_dir, *extra):
    return ["data.image_size=32", "model.backbone=efficientnet_lite0", "model.freeze=all",
            f"model.cache_dir={cache_dir}", "train.epochs=1", "train.batch_size=8",
            "train.eval_batch_size=16", "train.tensorboard=false", f"run.dir={run_dir}", *extra]


# ---- EXIF orientation ---------------------------------------------------------------------------
def test_exif_orientation_is_applied_on_every_path(tmp_path, monkeypatch):
    pixels = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(6, 4, 3) * 3   # 4 wide, 6 tall
    Image.fromarray(pixels).save(tmp_path / "upright.png")
    # A camera held sideways stores the pixels rotated and says "rotate 90 CW" (orientation 6).
    stored = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.png", exif=exif)
    assert Image.open(tmp_path / "phone.png").size == (6, 4)   # sideways as stored
    got = load_image(tmp_path / "phone.png")
    assert got.size == (4, 6)
    np.testing.assert_array_equal(np.asarray(got), pixels)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(load_image(tmp_path / "upright.png")))
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=100)   # as a phone writes it
    assert load_image(tmp_path / "phone.jpg").size == (4, 6)
    # an image as Image.open returns it is turned upright; one made from it (here turned upright
    # by hand, its file's tag still attached) is left as it is
    with Image.open(tmp_path / "phone.png") as im:
        np.testing.assert_array_equal(np.asarray(upright(im)), pixels)
        by_hand = im.transpose(Image.Transpose.ROTATE_270)
        assert by_hand.getexif().get(0x0112) == 6 and upright(by_hand) is by_hand
    # the feature cache keys on the loader's version: entries of an earlier rule are not reused
    from mlrpl.data import cache
    key = cache.cache_key([str(tmp_path / "phone.png")], "bb", "w", "tf")
    monkeypatch.setattr(cache, "IMAGE_LOADER_VERSION", cache.IMAGE_LOADER_VERSION - 1)
    assert cache.cache_key([str(tmp_path / "phone.png")], "bb", "w", "tf") != key


# ---- one image file, two spellings --------------------------------------------------------------
def test_the_same_image_under_two_spellings_is_listed_twice(tmp_path):
    f = write(tmp_path / "l.csv", "image,cat,dog\n./img/a.jpg,1,0\nimg/b.jpg,0,1\nimg/a.jpg,0,0\n")
    with pytest.raises(DataError, match=r"l.csv, line 4, field 'image': image 'img/a.jpg' is "
                                        r"listed twice \(lines 2 and 4\) \(as './img/a.jpg' on "
                                        r"line 2: the same file\)"):
        read_csv(f)
    absolute = tmp_path / "img" / "a.jpg"
    f = write(tmp_path / "m.csv", f"image,labels\nimg/a.jpg,cat\n{absolute},dog\n")
    with pytest.raises(DataError, match=r"m.csv, line 3.*listed twice \(lines 2 and 3\)"):
        read_csv(f)
    f = write(tmp_path / "n.csv", "image,label,value\n./a.jpg,cat,1\nsub/../a.jpg,cat,0\n")
    with pytest.raises(DataError, match=r"n.csv, line 3.*listed twice \(lines 2 and 3\).* with "
                                        r"class 'cat'"):
        read_csv(f)
    # long layout: two spellings of one image with different classes are one image
    f = write(tmp_path / "o.csv", "image,label,value\n./a.jpg,cat,1\na.jpg,dog,0\n")
    ls = read_csv(f)
    assert ls.items == ["./a.jpg"] and ls.labels.tolist() == [[1, -1]]


def test_missing_image_of_a_csv_says_where_relative_paths_are_read(tmp_path, cache_dir,
                                                                   monkeypatch, capsys):
    data = tmp_path / "labels"
    images(data, [f"img/{i}.png" for i in range(4)])
    write(data / "train.csv", "image,cat\nimg/0.png,1\nimg/1.png,0\nimg/x.png,1\n")
    write(data / "val.csv", "image,cat\nimg/2.png,1\nimg/3.png,0\n")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "data.dataset=csv", "data.root=labels/train.csv",
                 "data.val_root=labels/val.csv", "data.train_split=null", "data.val_split=null",
                 *run_args(run, cache_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err == (f"mlrpl: error: labels/img/x.png: image file not found (1 of 3 missing; "
                   f"relative image paths in labels/train.csv are resolved against {data} (the "
                   f"label file's folder), not the working directory; pass "
                   f"data.on_bad_image=skip to leave them out)")
    assert not run.exists()


# ---- a fully labelled 0/1 spreadsheet -----------------------------------------------------------
def test_dense_zero_one_csv_reads_zero_as_negative(tmp_path, capsys):
    f = write(tmp_path / "l.csv", "image,cat,dog\na.jpg,1,0\nb.jpg,0,1\nc.jpg,0,0\n")
    ls = read_csv(f)
    assert ls.labels.tolist() == [[1, -1], [-1, 1], [-1, -1]]
    assert ls.meta["encoding"] == "asl" and "0 = negative" in ls.meta["encoding_rule"]
    assert main(["data", "inspect", "--dataset", "csv", "--root", str(f)]) == 0
    out = capsys.readouterr().out
    assert "labels read as: no blank cell and no -1: every label is known, 1 = positive, " \
           "0 = negative" in out
    # 1, 0 and -1 without blanks: one of them means unknown, the user must say which
    g = write(tmp_path / "g.csv", "image,cat,dog\na.jpg,1,0\nb.jpg,-1,1\n")
    with pytest.raises(DataError, match=r"g.csv: dense labels are ambiguous: .*both 0 \(first at "
                                        r"line 2, class 'dog'\) and -1 \(first at line 3, class "
                                        r"'cat'\).*encoding='hcp' or encoding='asl'"):
        read_csv(g)
    assert read_csv(g, encoding="hcp").labels.tolist() == [[1, 0], [-1, 1]]
    # the same rule for a dense matrix given to `mlrpl metrics`
    assert infer_encoding(np.array([[1, 0], [0, 0]])) == "asl"
    with pytest.raises(DataError, match="ambiguous"):
        infer_encoding(np.array([[1, 0], [-1, 1]]))


# ---- classes nothing can teach; mAP over the classes it covers ----------------------------------
CLASSES5 = ["a", "b", "c", "d", "e"]


@pytest.fixture(scope="module")
def five_class_run(tmp_path_factory):
    """A CSV run whose class 'e' is never labelled in training and whose evaluation split has
    positives of class 'a' only (a 0/1 spreadsheet)."""
    root = tmp_path_factory.mktemp("five")
    images(root, [f"img/t{i}.png" for i in range(16)] + [f"img/v{i}.png" for i in range(6)])
    rows = []
    for i in range(16):
        cells = ["1" if (i + j) % 3 == 0 else "0" for j in range(4)] + [""]
        cells[3] = "0"   # 'd': known, never positive
        rows.append(f"img/t{i}.png," + ",".join(cells))
    write(root / "train.csv", "image," + ",".join(CLASSES5) + "\n" + "\n".join(rows) + "\n")
    write(root / "val.csv", "image," + ",".join(CLASSES5) + "\n" + "".join(
        f"img/v{i}.png,{i % 2},0,0,0,0\n" for i in range(6)))
    run = root / "run"
    cfg = load_config(None, ["data.dataset=csv", f"data.root={root}", "data.train_split=train",
                             "data.val_split=val", *run_args(run, root / "cache")])
    Trainer(cfg).fit()
    return run


def test_classes_without_known_label_are_warned_and_recorded(tmp_path, mlrpl_log):
    write(tmp_path / "l.csv", "image,a,b,c\nx.jpg,1,,0\ny.jpg,0,,0\nz.jpg,1,,0\n")
    cfg = load_config(None, ["data.dataset=csv", f"data.root={tmp_path / 'l.csv'}",
                             f"data.val_root={tmp_path / 'l.csv'}", "data.train_split=null",
                             "data.val_split=null"])
    train = read_csv(tmp_path / "l.csv")
    _, record = make_partial(cfg, train, None)
    assert record["classes_without_known_label"] == ["b"]
    assert record["classes_without_known_positive"] == ["b", "c"]
    assert mlrpl_log.warnings() == [
        "1 of 3 classes have no known training label (every entry unknown): b; the model cannot "
        "learn them, and they stay in mAP wherever the evaluation split has positives (listed in "
        "mask.provenance.json, classes_without_known_label)",
        "1 of 3 classes have no known positive training label (only negatives): c; the model can "
        "only learn that they are absent (listed in mask.provenance.json, "
        "classes_without_known_positive)"]


def test_a_run_records_its_unlearnable_classes(five_class_run):
    prov = json.loads((five_class_run / "mask.provenance.json").read_text())
    assert prov["classes_without_known_label"] == ["e"]
    assert prov["classes_without_known_positive"] == ["d", "e"]
    log = (five_class_run / "train.log").read_text()
    assert "1 of 5 classes have no known training label (every entry unknown): e;" in log
    assert "1 of 5 classes have no known positive training label (only negatives): d;" in log


def test_eval_says_how_many_classes_its_map_covers(five_class_run, capsys):
    result = evaluate_checkpoint(five_class_run / "last.pt")
    assert result["classes_left_out_of_mAP"] == ["b", "c", "d", "e"]
    scope = "mAP over 1 of 5 classes (4 left out: no positive in this split: b, c, d, e)"
    assert result["mAP_scope"] == scope
    assert main(["eval", "--checkpoint", str(five_class_run / "last.pt")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == scope and out[2].split()[0] == "mAP"
    labels = np.array([[1, 0], [-1, 1]])
    assert map_scope(labels, ["x", "y"]) is None


# ---- training images evaluated; the data found from another folder ------------------------------
@pytest.fixture(scope="module")
def holdout_run(tmp_path_factory, shapes):
    """A run on a seeded hold-out of the 'train' split, trained from its project folder with a
    relative data.root and run.dir."""
    proj = tmp_path_factory.mktemp("proj")
    shutil.copytree(shapes, proj / "data")
    here = os.getcwd()
    os.chdir(proj)
    try:
        cfg = load_config(None, ["data.dataset=yolo", "data.root=data", "data.train_split=train",
                                 "data.val_split=null", "data.holdout=0.25",
                                 *run_args("runs/h", proj / "cache")])
        Trainer(cfg).fit()
    finally:
        os.chdir(here)
    return proj


def test_eval_on_the_training_split_warns(holdout_run, mlrpl_log, monkeypatch):
    monkeypatch.chdir(holdout_run)
    ckpt = "runs/h/last.pt"
    evaluate_checkpoint(ckpt)
    assert mlrpl_log.warnings() == []
    evaluate_checkpoint(ckpt, split="train")
    assert mlrpl_log.warnings() == [
        "split 'train' (48 images) holds all 36 images the model was trained on (split 'train' "
        "less its seeded hold-out of 12 images (data.holdout=0.25), the run's evaluation split) "
        "and 12 the run's hold-out evaluation images: scores on training images measure memory, "
        "not generalisation; leave out --split to evaluate the run's evaluation split"]
    mlrpl_log.lines.clear()
    evaluate_checkpoint(ckpt, split="val")   # images the run never saw
    assert mlrpl_log.warnings() == []


def test_eval_of_the_exact_training_split_warns(shapes, cache_dir, tmp_path, mlrpl_log):
    run = tmp_path / "run"
    Trainer(load_config(None, ["data.dataset=yolo", f"data.root={shapes}",
                               "data.train_split=train", "data.val_split=val",
                               *run_args(run, cache_dir)])).fit()
    mlrpl_log.lines.clear()
    evaluate_checkpoint(run / "last.pt", split="train")
    assert mlrpl_log.warnings() == [
        "split 'train' (48 images) is the model's training set: the 48 images of split 'train': "
        "scores on training images measure memory, not generalisation; leave out --split to "
        "evaluate the run's evaluation split"]


def test_eval_from_another_folder_finds_the_data(holdout_run, tmp_path, monkeypatch, mlrpl_log):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLRPL_DATA", raising=False)
    ckpt = holdout_run / "runs" / "h" / "last.pt"
    result = evaluate_checkpoint(ckpt)
    assert result["num_images"] == 12
    assert (f"data.root 'data' does not resolve from {tmp_path}; using {holdout_run / 'data'}, "
            f"where the run found it at training") in mlrpl_log.text()
    # config.yaml keeps the path as given
    assert yaml.safe_load((ckpt.parent / "config.yaml").read_text())["data"]["root"] == "data"
    # a path given on the command line is used as it is, and a missing one is one clear error
    with pytest.raises(DataError, match=r"data.root not found: 'nowhere' is resolved against the "
                                        r"working directory .*; run from the folder the model was "
                                        r"trained in, set MLRPL_DATA, or pass data.root=PATH"):
        evaluate_checkpoint(ckpt, overrides=["data.root=nowhere"])


def test_eval_uses_mlrpl_data_where_it_is_set(shapes, cache_dir, tmp_path, monkeypatch):
    first, moved = tmp_path / "here", tmp_path / "elsewhere"
    shutil.copytree(shapes, first / "shapes")
    monkeypatch.setenv("MLRPL_DATA", str(first))
    run = tmp_path / "run"
    Trainer(load_config(None, ["data.dataset=yolo", "data.root=${oc.env:MLRPL_DATA,data}/shapes",
                               "data.train_split=train", "data.val_split=val",
                               *run_args(run, cache_dir)])).fit()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["root"] == "${oc.env:MLRPL_DATA,data}/shapes"
    shutil.move(str(first), str(moved))
    monkeypatch.setenv("MLRPL_DATA", str(moved))        # another machine, its own MLRPL_DATA
    monkeypatch.chdir(tmp_path)
    assert str(moved) in evaluate_checkpoint(run / "last.pt")["dataset"]
    monkeypatch.delenv("MLRPL_DATA")                    # neither set nor where it was
    with pytest.raises(DataError, match=r"data.root not found: 'data/shapes' is resolved against "
                                        r"the working directory .*the checkpoint's config gives "
                                        r"'\$\{oc.env:MLRPL_DATA,data\}/shapes'; MLRPL_DATA is "
                                        r"unset"):
        evaluate_checkpoint(run / "last.pt")


# ---- VOC difficult entries ----------------------------------------------------------------------
def test_voc_difficult_rule_is_recorded(tmp_path, cache_dir, mlrpl_log, capsys):
    root = tmp_path / "VOC2007"
    main_dir = root / "ImageSets" / "Main"
    ids = {"trainval": [f"{i:06d}" for i in range(12)], "test": [f"{i:06d}" for i in range(12, 18)]}
    images(root / "JPEGImages", [f"{i}.jpg" for s in ids.values() for i in s])
    for split, lst in ids.items():
        write(main_dir / f"{split}.txt", "".join(i + "\n" for i in lst))
        for j, c in enumerate(["cat", "dog"]):
            vals = [1 if (k + j) % 2 else (0 if k % 5 == 0 else -1) for k in range(len(lst))]
            write(main_dir / f"{c}_{split}.txt",
                  "".join(f"{i} {v:2d}\n" for i, v in zip(lst, vals)))
    run = tmp_path / "run"
    voc = ["data.dataset=voc2007", f"data.root={root}", "data.train_split=trainval",
           "data.val_split=test", "data.reader_options.classes=[cat,dog]"]
    cfg = load_config(None, voc + run_args(run, cache_dir))
    # the record of the config says how the labels were read; an earlier record without it
    # compares equal
    filled = with_recorded_defaults(resolved(cfg))
    assert filled["data"]["reader_options"] == {"difficult": "negative", "classes": ["cat", "dog"]}
    assert with_recorded_defaults(filled) == filled
    assert with_recorded_defaults(resolved(load_config(None, ["data.dataset=csv"]))) == \
        resolved(load_config(None, ["data.dataset=csv"]))
    Trainer(cfg).fit()
    import yaml
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["reader_options"]["difficult"] == "negative"
    assert json.loads((run / "run.json").read_text())["labels"]["voc_difficult"] == "negative"
    prov = json.loads((run / "mask.provenance.json").read_text())
    assert prov["voc_difficult"] == "negative" and prov["source"].endswith("(difficult=negative)")
    line = ("VOC difficult entries: negative (the HCP rule; data.reader_options.difficult=ignore "
            "makes them unknown)")
    assert line in (run / "train.log").read_text()
    train, _ = load_splits(load_config(None, voc + ["data.reader_options.difficult=ignore"]))
    assert train.meta["difficult"] == "ignore" and (train.labels == 0).any()
    capsys.readouterr()
    assert main(["data", "inspect", "--dataset", "voc2007", "--root", str(root), "--split",
                 "trainval", "-O", "classes=[cat,dog]", "--difficult", "ignore"]) == 0
    assert ("VOC difficult entries: unknown (--difficult ignore; the HCP rule, --difficult "
            "negative, counts them as negatives)") in capsys.readouterr().out.splitlines()
