"""The fault suite, deployment: export, thresholds, predict inputs, metrics, saved scores.

Each test is a case where a new user lost data, got a silent wrong result or a traceback: an
export --force that deleted a folder, thresholds of another model applied, a read_image tensor
scored unlike its file, probabilities scored as logits, scores without image ids, a folder walk
that skipped files without a word, and a prior model that predicts nothing at 0.5 without a hint.
"""
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import mlrpl
from mlrpl.cli import main
from mlrpl.errors import MlrplError
from mlrpl.deploy.predict import DeployWarning
from tests.deploy_helpers import make_own_csv_data, train_own_model


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    data = make_own_csv_data(tmp_path_factory.mktemp("deploy"))
    return data, train_own_model(data, data / "run")


@pytest.fixture(scope="module")
def prior(own):
    """A model with the ImageNet class prior, without tuned thresholds."""
    data, _ = own
    return train_own_model(data, data / "prior_run", "model.prior.name=imagenet",
                           "train.epochs=1")


def one_error_line(capsys, *needles) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("mlrpl: error: ")]
    assert len(errors) == 1, err
    assert not any("Traceback" in ln for ln in err), err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def val_images(data):
    return sorted((data / "images" / "images" / "val").glob("*.png"))


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- export --force ------------------------------------------------------------------------
def test_export_force_never_replaces_what_export_did_not_write(own, tmp_path, capsys):
    _, ckpt = own
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    for force in ([], ["--force"]):
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(mine), *force]) == 2
        one_error_line(capsys, str(mine), "not an mlrpl export", "refusing to replace it")
        assert tree(mine) == ["thesis.tex"]
    # a file at --out: one line, with or without --force, the file untouched
    f = tmp_path / "model.onnx"
    f.write_text("keep")
    for force in ([], ["--force"]):
        assert main(["export", "--checkpoint", str(ckpt), "--out", str(f), *force]) == 2
        one_error_line(capsys, "model.onnx", "is a file, not a folder")
        assert f.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "model.onnx"]


def test_export_force_moves_an_earlier_export_aside(prior, tmp_path, capsys):
    """An earlier export is replaced only with --force, and moved aside, not deleted; the export
    of a prior model without tuned thresholds says how to tune them."""
    data = prior.parent.parent
    out = tmp_path / "exported"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an earlier model")
    (out / "preprocess.json").write_text(json.dumps({"written_by": "mlrpl export"}))
    (out / "my_notes.txt").write_text("notes kept beside the export")
    assert main(["export", "--checkpoint", str(prior), "--out", str(out),
                 "--images", *map(str, val_images(data)[:2])]) == 2
    one_error_line(capsys, "an earlier export", "pass --force")
    # the temporary folder of an export killed earlier (its process gone) is cleaned up
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".exported.{dead.pid}.tmp").mkdir()
    (tmp_path / f".exported.{dead.pid}.tmp" / "model.onnx").write_bytes(b"half")
    assert main(["export", "--checkpoint", str(prior), "--out", str(out), "--force",
                 "--images", *map(str, val_images(data)[:2])]) == 0
    captured = capsys.readouterr()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("exported.replaced-")]
    assert len(aside) == 1 and f"moved to {aside[0]}" in captured.out
    assert (aside[0] / "model.onnx").read_bytes() == b"an earlier model"
    assert (aside[0] / "my_notes.txt").read_text() == "notes kept beside the export"
    assert sorted(p.name for p in out.iterdir()) == ["classes.txt", "model.onnx",
                                                     "preprocess.json", "thresholds.json"]
    assert json.loads((out / "preprocess.json").read_text())["written_by"] == "mlrpl export"
    # no temporary folder left beside it, the killed export's neither
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", aside[0].name]
    # the prior model has no tuned thresholds: one warning line with the command to tune them
    warns = [ln for ln in captured.err.splitlines() if ln.startswith("mlrpl: warning: ")]
    assert len(warns) == 1 and "no tuned thresholds" in warns[0]
    assert f"mlrpl tune-thresholds --checkpoint {prior}" in warns[0]


def test_move_aside_never_overwrites(tmp_path):
    from mlrpl.utils.files import move_aside
    a = tmp_path / "d"
    a.mkdir()
    (a / "x").write_text("1")
    first = move_aside(a)
    a.mkdir()
    (a / "x").write_text("2")
    second = move_aside(a)
    assert first != second and not a.exists()
    assert (first / "x").read_text() == "1" and (second / "x").read_text() == "2"
    assert first.name.startswith("d.replaced-") and second.name.startswith(first.name)


# ---- thresholds tuned for another model ----------------------------------------------------
def _another_model(ckpt, dest):
    ck = torch.load(ckpt, weights_only=True)
    key = next(k for k, v in ck["model"].items() if k.startswith("method.")
               and v.is_floating_point())
    ck["model"][key] = ck["model"][key] + 0.25
    torch.save(ck, dest)
    return dest


def test_thresholds_of_another_model_are_not_used_silently(own, tmp_path, capsys):
    from mlrpl.deploy.thresholds import sidecar_path
    data, ckpt = own
    run = tmp_path / "run"
    shutil.copytree(ckpt.parent, run)
    ckpt = run / "best.pt"
    assert main(["tune-thresholds", "--checkpoint", str(ckpt), "--min-positives", "2"]) == 0
    capsys.readouterr()
    side = sidecar_path(ckpt)
    doc = json.loads(side.read_text())
    model = mlrpl.load(ckpt)
    assert doc["model_digest"] == model.model_digest
    tuned = np.array([doc["thresholds"][c] for c in model.classes])
    assert model.thresholds_source == "tuned (best.thresholds.json)"
    # another model, with these thresholds copied beside it: not used, one warning line
    other = _another_model(ckpt, run / "other.pt")
    shutil.copy(side, sidecar_path(other))
    images = val_images(data)[:2]
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(other), *map(str, images), "--out",
                 str(out)]) == 0
    err = capsys.readouterr().err
    warns = [ln for ln in err.splitlines() if ln.startswith("mlrpl: warning: ")]
    assert any("other.thresholds.json: tuned for another model" in w and "not used" in w
               for w in warns), err
    assert "with 0.5 (default) thresholds" in err
    with pytest.warns(DeployWarning, match="tuned for another model"):
        assert mlrpl.load(other).thresholds_source == "0.5 (default)"
    # asked for tuned thresholds only: an error
    assert main(["predict", "--checkpoint", str(other), str(images[0]), "--thresholds",
                 "tuned"]) == 2
    one_error_line(capsys, "tuned for another model", "mlrpl tune-thresholds")
    # given explicitly: used, with a warning naming both models
    assert main(["predict", "--checkpoint", str(other), *map(str, images), "--out", str(out),
                 "--force", "--thresholds", str(side)]) == 0
    err = capsys.readouterr().err
    line = next(ln for ln in err.splitlines() if "tuned for another model" in ln)
    assert str(ckpt) in line and str(other) in line and "used as given" in line
    with pytest.warns(DeployWarning):
        np.testing.assert_allclose(mlrpl.load(other, thresholds=side).thresholds, tuned)
    # the bundle made from the checkpoint is the same model: its thresholds apply, no warning
    assert main(["model", "bundle", "--checkpoint", str(ckpt)]) == 0
    bundle = run / "best.bundle.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeployWarning)
        b = mlrpl.load(bundle)
        assert b.thresholds_source == "tuned (in the bundle)"
        np.testing.assert_allclose(b.thresholds, tuned)
        np.testing.assert_allclose(mlrpl.load(bundle, thresholds=side).thresholds, tuned)
    # a file of an older release without the record: used, but said to be unverifiable
    del doc["model_digest"]
    side.write_text(json.dumps(doc))
    with pytest.warns(DeployWarning, match="cannot be verified"):
        old = mlrpl.load(ckpt)
    np.testing.assert_allclose(old.thresholds, tuned)


# ---- predict inputs ------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_every_kind_of_image_input_gives_the_file_probabilities(own):
    from torchvision.io import read_image
    data, ckpt = own
    model = mlrpl.load(ckpt, thresholds=0.5)
    path = val_images(data)[0]
    want = model.predict_proba(str(path))
    chw = read_image(str(path))
    assert chw.dtype == torch.uint8 and chw.shape[0] == 3
    hwc = np.asarray(Image.open(path).convert("RGB"))
    for given in (chw, hwc, Image.open(path), [chw, hwc], torch.stack([chw, chw]),
                  np.stack([hwc, hwc])):
        got = model.predict_proba(given)
        np.testing.assert_allclose(got, np.repeat(want, len(got), 0), atol=1e-6)
    # a preprocessed float tensor of the model's size is taken as it is
    pre = model.transform(Image.open(path).convert("RGB"))
    np.testing.assert_allclose(model.predict_proba(pre), want, atol=1e-6)
    labels = model.predict([chw])[0]["labels"]
    assert labels == model.predict(str(path))[0]["labels"]


@pytest.mark.parametrize("make, needles", [
    (lambda: torch.rand(3, 32, 32), ["predict input 0", "(3, 32, 32)", "float32",
                                     "(3, 64, 64)"]),
    (lambda: torch.full((3, 64, 64), float("nan")), ["predict input 0", "NaN"]),
    (lambda: torch.zeros(3, 64, 64).index_fill_(0, torch.tensor([1]), float("inf")),
     ["predict input 0", "infinite"]),
    (lambda: np.zeros((64, 64, 3), dtype=np.float32), ["numpy array", "float32", "uint8"]),
    (lambda: torch.zeros(3, 64, 64, dtype=torch.int64), ["int64", "uint8 tensor (3, H, W)"]),
    (lambda: [torch.rand(3, 64, 64), torch.rand(5, 64, 64)], ["predict input 1", "(5, 64, 64)"]),
    (lambda: 42, ["predict input 0", "a int"]),
])
def test_bad_image_inputs_are_one_clear_error(own, make, needles):
    _, ckpt = own
    model = mlrpl.load(ckpt, thresholds=0.5)
    with pytest.raises(MlrplError) as e:
        model.predict_proba(make())
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, msg


# ---- metrics: probabilities, .npz labels, saved scores with ids ----------------------------
def test_metrics_reads_probabilities_as_probabilities(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((40, 4)) < 0.4, 1, -1).astype(np.int8)
    logits = rng.normal(size=(40, 4)) + 2 * labels
    probs = 1 / (1 + np.exp(-logits))
    np.save(tmp_path / "logits.npy", logits)
    np.save(tmp_path / "probs.npy", probs)
    np.save(tmp_path / "l.npy", labels)
    args = ["--labels", str(tmp_path / "l.npy"), "--json"]
    assert main(["metrics", "--scores", str(tmp_path / "logits.npy"), *args]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main(["metrics", "--scores", str(tmp_path / "probs.npy"), *args]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    assert got == pytest.approx(ref, abs=1e-4)
    note = captured.err.strip().splitlines()
    assert len(note) == 1 and "read as probabilities" in note[0]
    assert "--scores-kind logits" in note[0]
    # read as logits when asked: every entry passes 0.5 (the old, wrong reading)
    assert main(["metrics", "--scores", str(tmp_path / "probs.npy"), *args,
                 "--scores-kind", "logits"]) == 0
    assert json.loads(capsys.readouterr().out)["CR"] == 100.0
    # called probabilities but they are not
    assert main(["metrics", "--scores", str(tmp_path / "logits.npy"), *args,
                 "--scores-kind", "probabilities"]) == 2
    one_error_line(capsys, "logits.npy", "expected values in [0, 1]")
    assert "--scores-kind {auto,logits,probabilities}" in _help(capsys, "metrics")


def _help(capsys, verb):
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_eval_saves_ids_and_metrics_reads_them_with_converted_labels(own, tmp_path, capsys):
    data, ckpt = own
    labels = tmp_path / "val.npz"
    assert main(["data", "convert", "--dataset", "csv", "--root", str(data / "val.csv"),
                 "--out", str(labels)]) == 0
    capsys.readouterr()
    # .npy: the logits, and their images' ids beside them
    s = tmp_path / "s.npy"
    assert main(["eval", "--checkpoint", str(ckpt), "--save-scores", str(s), "--json"]) == 0
    captured = capsys.readouterr()
    ev = json.loads(captured.out)
    items = mlrpl.data.read_dataset("csv", data / "val.csv").items
    assert (tmp_path / "s.ids.txt").read_text().splitlines() == items
    assert "s.ids.txt" in captured.err
    assert main(["metrics", "--scores", str(s), "--labels", str(labels), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mAP"] == pytest.approx(ev["mAP"], abs=1e-4)
    # .npz: scores, ids, classes and kind in one file
    z = tmp_path / "s.npz"
    assert main(["eval", "--checkpoint", str(ckpt), "--save-scores", str(z), "--json"]) == 0
    capsys.readouterr()
    with np.load(z) as f:
        assert sorted(f.files) == ["classes", "ids", "kind", "scores"]
        assert list(f["ids"]) == items and str(f["kind"]) == "logits"
        scores, ids, classes = f["scores"], f["ids"], f["classes"]
    assert main(["metrics", "--scores", str(z), "--labels", str(labels), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["mAP"] == pytest.approx(ev["mAP"], abs=1e-4)
    assert "probabilities" not in captured.err         # the .npz says they are logits
    # scores in another order are matched to the labels by image id
    perm = np.random.default_rng(0).permutation(len(ids))
    np.savez(tmp_path / "shuffled.npz", scores=scores[perm], ids=ids[perm], classes=classes)
    assert main(["metrics", "--scores", str(tmp_path / "shuffled.npz"), "--labels", str(labels),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mAP"] == pytest.approx(ev["mAP"], abs=1e-4)
    # the wrong file in the wrong place, or another image set: one line
    assert main(["metrics", "--scores", str(z), "--labels", str(z)]) == 2
    one_error_line(capsys, "s.npz", "not a label file written by mlrpl data convert",
                   "give it as --scores")
    assert main(["metrics", "--scores", str(labels), "--labels", str(labels)]) == 2
    one_error_line(capsys, "val.npz", "no 'scores' array")
    np.savez(tmp_path / "fewer.npz", scores=scores[1:], ids=ids[1:], classes=classes)
    assert main(["metrics", "--scores", str(tmp_path / "fewer.npz"), "--labels",
                 str(labels)]) == 2
    one_error_line(capsys, "fewer.npz", "image ids differ", f"{items[0]!r} is not scored")
    np.save(tmp_path / "l.npy", np.ones((3, 4), dtype=np.int8))
    np.savez(tmp_path / "wide.npz", scores=np.zeros((3, 5)))
    assert main(["metrics", "--scores", str(tmp_path / "wide.npz"), "--labels",
                 str(tmp_path / "l.npy")]) == 2
    one_error_line(capsys, "wide.npz", "shape")
    # a scores name that is neither .npy nor .npz: refused before evaluating
    assert main(["eval", "--checkpoint", str(ckpt), "--save-scores",
                 str(tmp_path / "s.txt")]) == 2
    one_error_line(capsys, "s.txt", "must end in .npy", ".npz")
    assert not (tmp_path / "s.txt").exists()


# ---- the predict folder walk -----------------------------------------------------------------
def test_predict_folder_walk_is_documented_and_skips_are_reported(own, tmp_path, capsys):
    data, ckpt = own
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    src = val_images(data)
    shutil.copy(src[0], folder / "a.png")
    shutil.copy(src[1], folder / "B.PNG")
    shutil.copy(src[2], folder / "sub" / "c.png")
    shutil.copy(src[3], folder / "._a.png")           # a macOS companion file: hidden
    (folder / "notes.txt").write_text("x")
    (folder / "sub" / "meta.json").write_text("{}")
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(ckpt), str(folder), "--out", str(out),
                 "--thresholds", "0.5"]) == 0
    rows = out.read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [str(folder / "B.PNG"), str(folder / "a.png"),
                                               str(folder / "sub" / "c.png")]
    err = capsys.readouterr().err.splitlines()
    notes = [ln for ln in err if "skipped" in ln]
    assert len(notes) == 1 and notes[0].startswith("mlrpl: note: skipped 3 files")
    for name in ("._a.png", "notes.txt", "meta.json", ".json", ".txt", "hidden"):
        assert name in notes[0], notes[0]
    text = _help(capsys, "predict")
    for needle in ("recursively", ".JPG", ".webp", "hidden", "skipped"):
        assert needle in text, needle


# ---- no tuned thresholds ---------------------------------------------------------------------
def test_predict_says_when_the_model_needs_tuned_thresholds(prior, tmp_path, capsys):
    data = prior.parent.parent
    images = list(map(str, val_images(data)[:4]))
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(prior), *images, "--out", str(out)]) == 0
    warns = [ln for ln in capsys.readouterr().err.splitlines()
             if ln.startswith("mlrpl: warning: ")]
    assert len(warns) == 1, warns
    assert "no tuned thresholds" in warns[0] and "model.prior" in warns[0]
    assert f"mlrpl tune-thresholds --checkpoint {prior}" in warns[0]
    # thresholds chosen by the user: no warning; the predictions are the same file either way
    assert main(["predict", "--checkpoint", str(prior), *images, "--out", str(out), "--force",
                 "--thresholds", "0.3"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_threshold_advice_rule(own):
    _, ckpt = own
    model = mlrpl.load(ckpt)
    assert model.thresholds_are_default and not model.has_prior
    low = np.full((10, 4), 0.1)
    assert "10 of 10 images got no label" in model.threshold_advice(low)
    mostly = np.full((10, 4), 0.1)
    mostly[:6, 0] = 0.9
    assert model.threshold_advice(mostly) is None       # most images get a label
    tuned = mlrpl.load(ckpt, thresholds=0.5)
    assert tuned.threshold_advice(np.full((10, 4), 0.1)) is None   # chosen by the user
