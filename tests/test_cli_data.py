"""The data verbs of the command line: simulate, data inspect / convert."""
import json
import subprocess
import sys

import numpy as np

from mlrpl.cli import main
from tests.conftest import REPO


def test_simulate_exact_command_from_project_root(shared_data, tmp_path):
    """README's ``mlrpl simulate`` command, run as a user would (console script, project root)."""
    out = tmp_path / "mask.txt"
    cmd = [sys.executable, "-m", "mlrpl", "simulate", "--dataset", "voc2007", "--root",
           str(shared_data / "voc2007-labels"), "--split", "trainval", "--known", "0.1",
           "--seed", "0", "--format", "hcp", "--out", str(out)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = out.read_text().splitlines()
    assert len(rows) == 5011 and all(len(x.split(",")) == 20 for x in rows)
    m = np.array([[int(v) for v in x.split(",")] for x in rows])
    assert (m != 0).sum() == 10108 and (m == 1).sum() == 740
    prov = json.loads((tmp_path / "mask.provenance.json").read_text())
    assert prov["protocol"] == "hcp" and prov["p"] == 0.1 and prov["seed"] == 0
    assert prov["images_without_known_label"] == 533
    assert prov["images_without_known_positive"] == 4297
    assert len(prov["source_label_hash"]) == 64
    assert sum(v["positive"] for v in prov["per_class_known"].values()) == 740
    # importing it back is accepted; the same file against other labels is refused
    assert main(["simulate", "--dataset", "voc2007", "--root", str(shared_data / "voc2007-labels"),
                 "--import", str(out), "--out", str(tmp_path / "imp.npy")]) == 0
    assert (np.load(tmp_path / "imp.npy") == m).all()


def _voc(tmp_path):
    from tests.test_data import make_voc
    make_voc(tmp_path / "voc")
    return ["--dataset", "voc2007", "--root", str(tmp_path / "voc"), "--split", "trainval",
            "-O", "classes=[cat, dog, car]"]


def test_simulate_bad_input_writes_nothing(tmp_path, capsys):
    args = _voc(tmp_path)
    out = tmp_path / "m.npy"
    assert main(["simulate", *args, "--known", "0", "--out", str(out)]) == 2
    assert "known proportion must lie in (0, 1]" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "m.provenance.json").exists()
    assert main(["simulate", *args, "--out", str(out)]) == 2
    assert "needs --known" in capsys.readouterr().err
    bad = tmp_path / "pub.txt"
    bad.write_text("1,1,1\n0,0,0\n0,0,0\n")  # image 000002 is not a dog
    assert main(["simulate", *args, "--import", str(bad), "--out", str(out)]) == 2
    assert "pub.txt, line 1: the mask contradicts" in capsys.readouterr().err
    assert not out.exists()
    assert main(["simulate", *args, "--known", "0.5", "--out", str(out)]) == 0
    before = out.read_bytes()
    assert main(["simulate", *args, "--known", "0.9", "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_data_inspect_and_convert(tmp_path, capsys):
    args = _voc(tmp_path)
    assert main(["data", "inspect", *args, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["per_class"]["cat"] == {"positive": 1, "negative": 2, "unknown": 0}
    assert s["images_without_known_positive"] == 0
    assert main(["data", "inspect", *args]) == 0
    assert "images without any positive: 0" in capsys.readouterr().out
    out = tmp_path / "canon.npz"
    assert main(["data", "convert", *args, "--out", str(out), "--to-encoding", "asl"]) == 0
    from mlrpl.data import LabelSet
    assert LabelSet.load(out).labels.tolist() == [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]]
    csv = tmp_path / "dense.csv"
    assert main(["data", "convert", *args, "--out", str(csv), "--to-encoding", "asl"]) == 0
    assert csv.read_text().splitlines()[:2] == ["image,cat,dog,car", "JPEGImages/000002.jpg,1,0,0"]
    assert main(["data", "convert", *args, "--out", str(csv)]) == 2


def test_data_inspect_missing_root(tmp_path, capsys):
    assert main(["data", "inspect", "--dataset", "voc2007", "--root", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err


def test_metrics_verb(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.where(rng.random((40, 4)) < 0.4, 1, -1).astype(np.int8)
    scores = rng.normal(size=(40, 4)) + 2 * labels
    np.save(tmp_path / "s.npy", scores)
    np.save(tmp_path / "l.npy", labels)
    assert main(["metrics", "--scores", str(tmp_path / "s.npy"), "--labels",
                 str(tmp_path / "l.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["mAP", "ap_voc", "ap_rank", "ap_sklearn", "CP", "CR", "CF1", "OP", "OR",
                         "OF1", "CP_top3", "CR_top3", "CF1_top3", "OP_top3", "OR_top3", "OF1_top3"]
    from sklearn.metrics import average_precision_score
    ref = np.mean([average_precision_score(labels[:, c] == 1, scores[:, c]) for c in range(4)])
    assert abs(out["ap_sklearn"] - 100 * ref) < 1e-4
    # the same labels in the ASL encoding: 1/0 is read as positive/negative
    np.save(tmp_path / "asl.npy", np.where(labels == 1, 1, 0))
    assert main(["metrics", "--scores", str(tmp_path / "s.npy"), "--labels",
                 str(tmp_path / "asl.npy"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == out
    # 1/0/-1 is ambiguous (which of 0 and -1 is unknown?) and must be named
    np.save(tmp_path / "amb.npy", np.where(labels == 1, 1, 0) - (np.arange(labels.shape[1]) == 0))
    assert main(["metrics", "--scores", str(tmp_path / "s.npy"), "--labels",
                 str(tmp_path / "amb.npy"), "--json"]) == 2
    assert "ambiguous" in capsys.readouterr().err
    assert main(["metrics", "--scores", str(tmp_path / "s.npy"), "--labels",
                 str(tmp_path / "asl.npy"), "--encoding", "asl", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == out
    np.save(tmp_path / "bad.npy", scores[:, :3])
    assert main(["metrics", "--scores", str(tmp_path / "bad.npy"), "--labels",
                 str(tmp_path / "l.npy")]) == 2
    assert "shape" in capsys.readouterr().err
