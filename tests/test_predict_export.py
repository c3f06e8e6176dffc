"""From a CSV with blank unknowns to an exported model and a prediction (the README path), and
every bad input of that path: one clear line naming the culprit, nothing written."""
import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import mlrpl
from mlrpl.cli import main
from tests.deploy_helpers import make_own_csv_data, train_own_model


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    data = make_own_csv_data(tmp_path_factory.mktemp("own"))
    ckpt = train_own_model(data, data / "run")
    return data, ckpt


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("mlrpl: error: ")]
    assert len(errors) == 1, err
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def ort_probabilities(folder, paths):
    """What a deployment does with the exported folder alone: preprocess.json + model.onnx."""
    import onnxruntime as ort
    pre = json.loads((folder / "preprocess.json").read_text())
    w, h = pre["size"]
    mean, std = np.array(pre["mean"]), np.array(pre["std"])
    batch = []
    for p in paths:
        img = Image.open(p).convert("RGB").resize((w, h), Image.BICUBIC)
        x = (np.asarray(img, dtype=np.float32) / 255.0 - mean) / std
        batch.append(x.transpose(2, 0, 1))
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"image": np.stack(batch).astype(np.float32)})[0]


def test_readme_path_end_to_end(own, tmp_path, capsys):
    data, ckpt = own
    # inspect
    assert main(["data", "inspect", "--dataset", "csv", "--root", str(data / "train.csv")]) == 0
    out = capsys.readouterr().out
    assert "unknown" in out and "evaluable classes" in out
    # the run trained on the labels as they are: blanks stayed unknown, nothing else hidden
    mask = np.load(ckpt.parent / "mask.npy")
    train = mlrpl.data.read_dataset("csv", data / "train.csv")
    np.testing.assert_array_equal(mask, train.labels)
    assert (mask == 0).any()
    # tune-thresholds
    assert main(["tune-thresholds", "--checkpoint", str(ckpt), "--min-positives", "2"]) == 0
    out = capsys.readouterr().out
    side = ckpt.parent / "best.thresholds.json"
    assert side.is_file() and "wrote" in out
    tuned = json.loads(side.read_text())["thresholds"]
    assert list(tuned) == train.classes
    # predict (a folder), CSV and JSONL
    images = sorted((data / "images" / "images" / "val").glob("*.png"))
    preds = tmp_path / "preds.csv"
    assert main(["predict", "--checkpoint", str(ckpt), str(images[0].parent), "--out",
                 str(preds), "--progress", "never"]) == 0
    with open(preds) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(images)
    assert list(rows[0]) == ["path", "labels", *train.classes]
    jl = tmp_path / "preds.jsonl"
    assert main(["predict", "--checkpoint", str(ckpt), *map(str, images[:3]), "--out", str(jl),
                 "--topk", "1", "--thresholds", "0.01"]) == 0
    recs = [json.loads(x) for x in jl.read_text().splitlines()]
    assert len(recs) == 3 and all(len(r["labels"]) == 1 for r in recs)
    assert set(recs[0]["probabilities"]) == set(train.classes)
    # labels use the tuned thresholds
    thr = np.array([tuned[c] for c in train.classes])
    for r in rows:
        p = np.array([float(r[c]) for c in train.classes])
        want = {c for c, v, t in zip(train.classes, p, thr) if v >= t}
        assert set(filter(None, r["labels"].split(";"))) == want
    # export: ONNX equals PyTorch within 1e-4 on real images, with the side files
    exp = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(exp)]) == 0
    out = capsys.readouterr().out
    assert "largest |probability difference|" in out
    assert sorted(p.name for p in exp.iterdir()) == ["classes.txt", "model.onnx",
                                                     "preprocess.json", "thresholds.json"]
    assert (exp / "classes.txt").read_text().split() == train.classes
    assert json.loads((exp / "thresholds.json").read_text())["thresholds"] == tuned
    torch_probs = np.array([[float(r[c]) for c in train.classes] for r in rows])
    onnx_probs = ort_probabilities(exp, images)
    assert np.abs(onnx_probs - torch_probs).max() < 1e-4
    # the Python API gives the same
    model = mlrpl.load(ckpt)
    assert model.classes == train.classes
    np.testing.assert_allclose(model.thresholds, thr)
    api = model.predict([str(p) for p in images])
    api_probs = np.array([[a["probabilities"][c] for c in train.classes] for a in api])
    assert np.abs(api_probs - torch_probs).max() < 1e-5
    assert [";".join(a["labels"]) for a in api] == [r["labels"] for r in rows]
    # PIL images and preprocessed tensors too
    pil = model.predict_proba([Image.open(images[0])])
    tensor = model.predict_proba(model.transform(Image.open(images[0]).convert("RGB")))
    np.testing.assert_allclose(pil, api_probs[:1], atol=1e-6)
    np.testing.assert_allclose(tensor, api_probs[:1], atol=1e-6)


def test_torch_export_format(own, tmp_path, capsys):
    _, ckpt = own
    out = tmp_path / "pt2"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torch-export", "--out",
                 str(out)]) == 0
    assert (out / "model.pt2").is_file()


def test_unreadable_image_is_reported_and_the_rest_predicted(own, tmp_path, capsys):
    data, ckpt = own
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((data / "images" / "images" / "val").glob("*.png"))[:2]:
        shutil.copy(p, folder / p.name)
    (folder / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(ckpt), str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 unreadable" in err
    assert len(out.read_text().splitlines()) == 3     # header + the 2 readable images


def test_bad_inputs_one_line_nothing_written(own, tmp_path, capsys):
    data, ckpt = own
    out = tmp_path / "p.csv"
    # a missing image in predict
    assert main(["predict", "--checkpoint", str(ckpt), str(tmp_path / "nope.jpg"), "--out",
                 str(out)]) == 2
    one_error_line(capsys, "nope.jpg", "image not found")
    assert not out.exists()
    # a checkpoint with another class list than the labelled data
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "val"):
        text = (data / f"{split}.csv").read_text().replace("yellow_star", "purple_cross", 1)
        text = "\n".join(ln if i == 0 else f"{data}/{ln}"
                         for i, ln in enumerate(text.splitlines())) + "\n"
        (other / f"{split}.csv").write_text(text)
    thr_out = tmp_path / "t.json"
    assert main(["tune-thresholds", "--checkpoint", str(ckpt), f"data.root={other / 'train.csv'}",
                 f"data.val_root={other / 'val.csv'}", "--out", str(thr_out)]) == 2
    one_error_line(capsys, "classes differ", "purple_cross", "yellow_star")
    assert not thr_out.exists()
    # thresholds for another class list
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"thresholds": {"a": 0.5}}))
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "images"), "--thresholds",
                 str(bad), "--out", str(out)]) == 2
    one_error_line(capsys, "bad.json", "classes differ")
    assert not out.exists()
    # a split name for a single-file dataset
    assert main(["eval", "--checkpoint", str(ckpt), "--split", "val"]) == 2
    one_error_line(capsys, "train.csv", "split 'val' given for a dataset that is one file")
    # export into a non-empty folder
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "full")]) == 2
    one_error_line(capsys, "not empty")


def test_checkpoint_of_another_release_or_method(own, tmp_path, capsys):
    import torch
    _, ckpt = own
    ck = torch.load(ckpt, weights_only=True)
    ck["mlrpl_version"] = "9.3.0"
    torch.save(ck, tmp_path / "old.pt")
    assert main(["predict", "--checkpoint", str(tmp_path / "old.pt"), str(ckpt)]) == 2
    one_error_line(capsys, "old.pt", "mlrpl 9.3.0")
    ck["mlrpl_version"] = mlrpl.__version__
    ck["config"]["method"]["name"] = "nosuchmethod"
    torch.save(ck, tmp_path / "m.pt")
    with pytest.raises(mlrpl.errors.MlrplError, match="method 'nosuchmethod' is not available"):
        mlrpl.load(tmp_path / "m.pt")


def test_missing_backbone_file_and_the_bundle(own, tmp_path, capsys):
    from mlrpl.models.backbones import efficientnet_lite0_weight_file
    data, _ = own
    weights = tmp_path / "weights" / "lite0.pth"
    weights.parent.mkdir()
    shutil.copy(efficientnet_lite0_weight_file(), weights)
    ckpt = train_own_model(data, tmp_path / "run", f"model.pretrained={weights}",
                           "train.epochs=1")
    capsys.readouterr()
    assert main(["model", "bundle", "--checkpoint", str(ckpt)]) == 0
    bundle = ckpt.with_name("best.bundle.pt")
    before = mlrpl.load(ckpt).predict_proba(str(data / "images/images/val/val_00000.png"))
    weights.unlink()
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(ckpt), str(data / "images/images/val"),
                 "--out", str(out)]) == 2
    one_error_line(capsys, str(weights), "mlrpl model bundle")
    assert not out.exists()
    # the bundle holds every tensor: it opens without the file, and predicts the same
    after = mlrpl.load(bundle).predict_proba(str(data / "images/images/val/val_00000.png"))
    np.testing.assert_allclose(after, before, atol=1e-6)
    # and the checkpoint opens again once the file is given elsewhere
    shutil.copy(efficientnet_lite0_weight_file(), tmp_path / "elsewhere.pth")
    p = mlrpl.load(ckpt, backbone_weights=tmp_path / "elsewhere.pth")
    assert p.classes == mlrpl.load(bundle).classes


def test_save_attention_overlays_for_a_sarl_model(own, tmp_path, capsys):
    """--save-attention writes one S x S overlay per predicted class for a SARL-trunk model; a
    model without attention (pbce) is one clear error, before anything is written."""
    from PIL import Image

    from tests.test_transfer import _embeddings
    data, pbce_ckpt = own
    emb = _embeddings(tmp_path)
    names = (data / "train.csv").read_text().splitlines()[0].split(",")[1:]
    np.save(emb, np.random.default_rng(0).normal(size=(len(names), 7)).astype("f4"))
    (tmp_path / "emb.names.txt").write_text("\n".join(names) + "\n")
    ckpt = train_own_model(data, tmp_path / "run", "method.name=ssgrl", "train.epochs=1",
                           "method.trunk.dim=16", "method.trunk.attention_dim=8",
                           f"data.embeddings={emb}")
    images = sorted((data / "images").rglob("*.png"))[:2]
    out = tmp_path / "att"
    assert main(["predict", "--checkpoint", str(ckpt), *map(str, images), "--thresholds", "0.5",
                 "--save-attention", str(out), "--out", str(tmp_path / "p.csv")]) == 0
    pngs = sorted(out.glob("*.png"))
    assert pngs and {p.name.split("__")[0] for p in pngs} == {i.stem for i in images}
    assert Image.open(pngs[0]).size == (64, 64)
    assert f"attention overlays to {out}" in capsys.readouterr().err
    none = tmp_path / "none"
    assert main(["predict", "--checkpoint", str(pbce_ckpt), str(images[0]),
                 "--save-attention", str(none)]) == 2
    assert "computes no per-class attention" in capsys.readouterr().err and not none.exists()
