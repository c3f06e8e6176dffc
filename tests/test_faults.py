"""The fault suite, part 1: bad input is one clear error (or an explicit, recorded choice).

Each test here pins a failure the code once had (a traceback, a silent wrong result or a
misleading message). Kill tests and run-directory faults: tests/test_faults_run.py.
"""
import errno
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mlrpl.cli import main
from mlrpl.config import load_config
from mlrpl.data import read_dataset
from mlrpl.errors import DataError
from tests.test_data import VOC3, make_voc
from tests.test_engine import tiny


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlrpl: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


# ---- label files ------------------------------------------------------------------------------
def test_voc_duplicate_ids_are_errors(tmp_path):
    make_voc(tmp_path, with_xml=True)
    main_dir = tmp_path / "ImageSets" / "Main"
    (main_dir / "trainval.txt").write_text("000002\n000001\n000003\n000001\n")
    with pytest.raises(DataError, match=r"trainval.txt, line 4: image id '000001' listed twice "
                                        r"\(first on line 2\)"):
        read_dataset("voc2007", tmp_path, "trainval", classes=VOC3)
    with pytest.raises(DataError, match="listed twice"):
        read_dataset("voc2007", tmp_path, "trainval", classes=VOC3, source="annotations")
    (main_dir / "trainval.txt").write_text("000002\n000001\n000003\n")
    (main_dir / "dog_trainval.txt").write_text("000001  1\n000002 -1\n000003 -1\n000001 -1\n")
    with pytest.raises(DataError, match=r"dog_trainval.txt, line 4: image id '000001' listed twice"):
        read_dataset("voc2007", tmp_path, "trainval", classes=VOC3)


def test_non_utf8_label_files_are_errors(tmp_path):
    make_voc(tmp_path, with_xml=False)
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_bytes(b"000002\n\xff\xfe01\n000003\n")
    with pytest.raises(DataError, match=r"trainval.txt: not UTF-8"):
        read_dataset("voc2007", tmp_path, "trainval", classes=VOC3)
    root = tmp_path / "yolo"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "images" / "train" / "a.png")
    (root / "labels" / "train" / "a.txt").write_bytes(b"0 0.5 0.5 \xe9 0.1\n")
    (root / "classes.yaml").write_text("names: [a, b]\n")
    with pytest.raises(DataError, match=r"a.txt: not UTF-8"):
        read_dataset("yolo", root, "train")
    (root / "classes.yaml").write_bytes(b"names: [\xe9, b]\n")
    with pytest.raises(DataError, match=r"classes.yaml: not UTF-8"):
        read_dataset("yolo", root, "train")


@pytest.mark.parametrize("value", ["0.99", "inf", "-inf", "nan", "2", "0.5", "1e400", "x"])
def test_mask_values_outside_the_encoding_are_errors(tmp_path, value):
    from mlrpl.data.simulate import load_partial
    full = np.array([[1, -1], [-1, 1]], dtype=np.int8)
    f = tmp_path / "mask.txt"
    f.write_text(f"1,-1\n{value},1\n")
    with pytest.raises(DataError, match=rf"mask.txt, line 2: value '{value}' in column 1 is "
                                        r"outside the 'hcp' encoding"):
        load_partial(f, full)
    f.write_text("1.0,-1\n-0,1\n")  # integral spellings are fine
    assert load_partial(f, full).tolist() == [[1, -1], [0, 1]]


def test_mask_npy_with_fractions_or_inf_is_an_error(tmp_path):
    from mlrpl.data.simulate import load_partial
    full = np.array([[1, -1], [-1, 1]], dtype=np.int8)
    for bad in (0.99, np.inf):
        np.save(tmp_path / "m.npy", np.array([[1.0, -1.0], [bad, 1.0]]))
        with pytest.raises(DataError, match="outside the 'hcp' encoding"):
            load_partial(tmp_path / "m.npy", full)


def test_simulate_import_of_a_bad_mask_is_one_line(tmp_path, capsys):
    make_voc(tmp_path / "voc", with_xml=False)
    (tmp_path / "m.txt").write_text("1,-1,-1\n-1,1,inf\n0,0,1\n")
    argv = ["simulate", "--dataset", "voc2007", "--root", str(tmp_path / "voc"), "--split",
            "trainval", "-O", "classes=[cat, dog, car]", "--import", str(tmp_path / "m.txt"),
            "--out", str(tmp_path / "out.npy")]
    assert main(argv) == 2
    assert "m.txt, line 2: value 'inf'" in one_error_line(capsys)
    assert not (tmp_path / "out.npy").exists()


def test_embeddings_must_be_finite(tmp_path):
    from mlrpl.data.embeddings import load_embedding_file
    np.save(tmp_path / "e.npy", np.array([[0.0, np.nan], [1.0, 2.0]], dtype=np.float32))
    (tmp_path / "e.names.txt").write_text("a\nb\n")
    with pytest.raises(DataError, match="e.npy: label embeddings must be finite"):
        load_embedding_file(tmp_path / "e.npy")


# ---- configuration ------------------------------------------------------------------------------
@pytest.mark.parametrize("override, expected", [
    ("optim.lr=-0.1", "a positive learning rate"),
    ("optim.lr=0", "a positive learning rate"),
    ("optim.weight_decay=-1e-4", "a number >= 0"),
    ("train.batch_size=0", "an integer >= 1"),
    ("train.eval_batch_size=-3", "an integer >= 1"),
    ("train.epochs=0", "an integer >= 1"),
    ("train.epochs=-2", "an integer >= 1"),
    ("data.image_size=0", "a positive integer"),
    ("sched.step_size=0", "an integer >= 1"),
    ("eval.threshold=1.5", "a probability in"),
])
def test_config_values_out_of_range_are_one_line(override, expected, capsys, tmp_path):
    run = tmp_path / "never"
    assert main(["train", override, f"run.dir={run}"]) == 2
    line = one_error_line(capsys)
    assert f"bad value for '{override.split('=')[0]}'" in line and expected in line
    assert not run.exists()


def test_a_run_that_would_train_on_nothing_is_an_error(shapes, cache_dir, tmp_path, capsys):
    run = tmp_path / "r"
    args = tiny(shapes, cache_dir, run, "data.known_proportion=0.0001")
    assert main(["train", *args]) == 2
    assert "no training label is known" in one_error_line(capsys)
    assert not run.exists()  # nothing written, nothing that blocks a rerun


def test_an_evaluation_split_without_positives_is_an_error_before_training(tmp_path, cache_dir,
                                                                            capsys):
    from mlrpl.data.synthetic import make_shapes_dataset
    root = make_shapes_dataset(tmp_path / "d", n_train=16, n_val=6, size=64, num_classes=4)
    for f in (root / "labels" / "val").iterdir():
        f.write_text("")  # every validation image: all negatives
    run = tmp_path / "r"
    assert main(["train", *tiny(root, cache_dir, run)]) == 2
    assert "has no positive label in any class" in one_error_line(capsys)
    assert not run.exists()


# ---- images -------------------------------------------------------------------------------------
def test_image_modes_follow_the_documented_rule(tmp_path):
    from mlrpl.data.dataset import load_image
    a16 = np.full((4, 4), 32768, dtype=np.uint16)  # mid grey in 16 bits
    Image.fromarray(a16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert np.asarray(load_image(tmp_path / "g16.png")).tolist() == [[[128] * 3] * 4] * 4
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))  # fully transparent black
    rgba.save(tmp_path / "a.png")
    assert np.asarray(load_image(tmp_path / "a.png")).min() == 255  # over white
    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.save(tmp_path / "p.png")
    assert np.asarray(load_image(tmp_path / "p.png"))[0, 0].tolist() == [10, 20, 30]
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert np.asarray(load_image(tmp_path / "c.jpg")).min() > 240  # no ink = white
    Image.new("F", (2, 2), 0.5).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match=r"f.tif: image mode 'F' is not supported"):
        load_image(tmp_path / "f.tif")


def test_decompression_bomb_is_a_data_error(tmp_path, monkeypatch):
    from mlrpl.data.dataset import load_image
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px > 2 x 100: a "bomb"
    with pytest.raises(DataError, match=r"big.png: image refused as a possible decompression"):
        load_image(tmp_path / "big.png")


def test_skip_on_the_image_path_removes_bad_images_before_batching(tmp_path, cache_dir):
    from mlrpl.data.synthetic import make_shapes_dataset
    from mlrpl.engine.trainer import Trainer
    root = make_shapes_dataset(tmp_path / "d", n_train=16, n_val=13, size=64, num_classes=4)
    bad = sorted((root / "images" / "val").iterdir())[5]
    bad.write_bytes(b"not an image")
    run = tmp_path / "r"
    t = Trainer(load_config(None, tiny(root, cache_dir, run, "train.epochs=1",
                                       "model.cache_features=false", "data.on_bad_image=skip")))
    assert len(t.val_ds) == 12
    result = t.fit()
    assert result["last"]["eval_images"] == 12


# ---- evaluation outputs and thresholds -------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from mlrpl.data.synthetic import make_shapes_dataset
    from mlrpl.engine.trainer import Trainer
    base = tmp_path_factory.mktemp("trained")
    root = make_shapes_dataset(base / "d", n_train=24, n_val=12, size=64, num_classes=4)
    run = base / "run"
    Trainer(load_config(None, tiny(root, base / "cache", run, "train.epochs=1"))).fit()
    return run


def test_save_scores_into_a_missing_folder_fails_before_evaluating(trained, tmp_path, capsys,
                                                                    monkeypatch):
    import mlrpl.engine.evaluate as ev

    def never(*a, **k):
        raise AssertionError("evaluated although the output cannot be written")
    monkeypatch.setattr(ev, "predict_logits", never)
    out = tmp_path / "missing" / "s.npy"
    assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--save-scores", str(out)]) == 2
    assert "missing: the folder of the scores file does not exist" in one_error_line(capsys)
    (tmp_path / "s.npy").write_bytes(b"keep me")
    assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--save-scores",
                 str(tmp_path / "s.npy")]) == 2
    assert "refusing to overwrite" in one_error_line(capsys)
    assert (tmp_path / "s.npy").read_bytes() == b"keep me"


def test_save_scores_with_force_replaces_atomically(trained, tmp_path, capsys):
    (tmp_path / "s.npy").write_bytes(b"old")
    assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--save-scores",
                 str(tmp_path / "s.npy"), "--force", "--json"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (12, 4)
    [aside] = tmp_path.glob("s.npy.replaced-*")  # a replaced file is moved aside, never deleted
    assert aside.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ids.txt", "s.npy", aside.name]


@pytest.mark.parametrize("text, expected", [
    ('{"red_circle": 0.5, ', "malformed JSON"),
    ('[0.5, 0.5]', "expected a JSON object"),
    ('{"red_circle": "high"}', "no threshold for classes"),
    ('{"red_circle": "x", "green_square": 0.5, "blue_triangle": 0.5, "yellow_star": 0.5}',
     "threshold 'x' is not a number"),
    ('{"red_circle": 1.5, "green_square": 0.5, "blue_triangle": 0.5, "yellow_star": 0.5}',
     "is not a probability"),
])
def test_bad_thresholds_json_is_one_line(trained, tmp_path, capsys, text, expected):
    f = tmp_path / "thr.json"
    f.write_text(text)
    assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--thresholds", str(f)]) == 2
    line = one_error_line(capsys)
    assert "thr.json" in line and expected in line


def test_thresholds_export_into_a_missing_folder_fails_first(trained, tmp_path, capsys):
    assert main(["thresholds", "--checkpoint", str(trained / "last.pt"), "--out",
                 str(tmp_path / "no" / "t.json")]) == 2
    assert "does not exist" in one_error_line(capsys)


# ---- checkpoints and pickles ------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_corrupt_checkpoint_error_never_suggests_unsafe_loading(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage" * 100)
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    line = one_error_line(capsys)
    assert "bad.pt: not a readable mlrpl checkpoint" in line and "weights_only" not in line


def test_crafted_pickles_never_run(trained, tmp_path, capsys, shapes, cache_dir):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "mlrpl-checkpoint-v1", "x": _Payload(marker)}, evil)
    # as a checkpoint
    assert main(["eval", "--checkpoint", str(evil)]) == 2
    line = one_error_line(capsys)
    assert "refused unread" in line and "weights_only" not in line
    # as a resume file
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "mask.npy", "mask.provenance.json"):
        (run / name).write_bytes((trained / name).read_bytes())
    evil_bytes = evil.read_bytes()
    (run / "last.pt").write_bytes(evil_bytes)
    assert main(["train", "--resume", "--run-dir", str(run)]) == 2
    assert "refused unread" in one_error_line(capsys)
    # as weights
    assert main(["train", *tiny(shapes, cache_dir, tmp_path / "w"), f"model.pretrained={evil}"]) == 2
    assert "refused unread" in one_error_line(capsys)
    # as a mask and as embeddings (numpy object arrays are pickles)
    obj = np.empty((2, 2), dtype=object)
    obj[0, 0] = _Payload(marker)
    with open(tmp_path / "m.npy", "wb") as fh:
        np.save(fh, obj, allow_pickle=True)
    from mlrpl.data.simulate import read_mask_file
    with pytest.raises(DataError, match="m.npy: not a readable .npy array"):
        read_mask_file(tmp_path / "m.npy")
    (tmp_path / "m.names.txt").write_text("a\nb\n")
    from mlrpl.data.embeddings import load_embedding_file
    with pytest.raises(DataError, match="m.npy: not a readable .npy array"):
        load_embedding_file(tmp_path / "m.npy")
    # as thresholds
    with pytest.raises(DataError, match="m.npy: not a readable .npy array"):
        from mlrpl.engine.evaluate import load_thresholds
        load_thresholds(tmp_path / "m.npy", ["a", "b"])
    assert not marker.exists()


# ---- resume inputs ------------------------------------------------------------------------------------
def test_damaged_run_files_on_resume_are_one_line(trained, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "mask.npy", "mask.provenance.json", "last.pt"):
        (run / name).write_bytes((trained / name).read_bytes())
    (run / "config.yaml").write_text("data: {root: [unclosed\n")
    assert main(["train", "--resume", "--run-dir", str(run)]) == 2
    assert "config.yaml: the run's saved config is damaged" in one_error_line(capsys)
    (run / "config.yaml").write_bytes((trained / "config.yaml").read_bytes())
    (run / "mask.provenance.json").unlink()
    assert main(["train", "--resume", "--run-dir", str(run)]) == 2
    assert "mask.provenance.json: the run's mask provenance is missing" in one_error_line(capsys)


# ---- the feature cache ----------------------------------------------------------------------------------
def _cache_args(shapes, tmp_path, cache):
    from mlrpl.engine.evaluate import build_cache
    cfg = load_config(None, tiny(shapes, cache, tmp_path / "r"))
    return build_cache, cfg


def test_full_disk_while_caching_is_one_error_and_leaves_no_temp(shapes, tmp_path, monkeypatch):
    from mlrpl.utils.files import DiskError
    build_cache, cfg = _cache_args(shapes, tmp_path, tmp_path / "cache")

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DiskError, match=r"cache: no space left on the device \(disk full\)"):
        build_cache(cfg)
    assert list((tmp_path / "cache").iterdir()) == []


def test_read_only_cache_folder_is_one_error(shapes, tmp_path, monkeypatch):
    import mlrpl.utils.files
    from mlrpl.utils.files import DiskError
    cache = tmp_path / "ro"
    cache.mkdir()
    build_cache, cfg = _cache_args(shapes, tmp_path, cache)
    real_open = open

    def ro_open(path, *a, **k):  # a read-only folder, even for root
        if str(path).startswith(str(cache)):
            raise PermissionError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(mlrpl.utils.files, "open", ro_open, raising=False)
    with pytest.raises(DiskError, match=r"ro: not writable"):
        build_cache(cfg)


def test_stale_cache_temps_of_killed_runs_are_removed(shapes, tmp_path):
    cache = tmp_path / "cache"
    stale = cache / ".0123456789abcdef01234567.999999999.tmp"
    stale.mkdir(parents=True)
    (stale / "features.npy").write_bytes(b"half")
    live = cache / f".0123456789abcdef01234567.{os.getppid()}.tmp"  # a live process's: kept
    live.mkdir()
    build_cache, cfg = _cache_args(shapes, tmp_path, cache)
    build_cache(cfg)
    assert not stale.exists() and live.exists()
