"""No traceback from any verb on any bad input: every verb that reads a file is given a missing
file, a folder, an empty file, random bytes, text, malformed YAML, a JSON list and a .npy of the
wrong kind, and must answer with status 2 and one ``mlrpl: error:`` line, writing nothing.

The specific messages are tested one by one in tests/test_faults*.py (a test per row of
docs/errors.md); this test is the net under all of them.
"""
import numpy as np
import pytest

from mlrpl.cli import main

VERBS = {
    "simulate": ["simulate", "--dataset", "csv", "--root", "{F}", "--known", "0.1", "--out",
                 "{OUT}/mask.txt"],
    "data inspect": ["data", "inspect", "--dataset", "csv", "--root", "{F}"],
    "data convert": ["data", "convert", "--dataset", "csv", "--root", "{F}", "--out",
                     "{OUT}/labels.npz"],
    "metrics scores": ["metrics", "--scores", "{F}", "--labels", "{GOOD_NPY}"],
    "metrics labels": ["metrics", "--scores", "{GOOD_NPY}", "--labels", "{F}"],
    "train config": ["train", "--config", "{F}"],
    "train resume": ["train", "--resume", "--run-dir", "{F}"],
    "eval": ["eval", "--checkpoint", "{F}"],
    "thresholds": ["thresholds", "--checkpoint", "{F}"],
    "cft": ["cft", "--checkpoint", "{F}", "--out", "{OUT}/cft.pt"],
    "cache": ["cache", "--config", "{F}"],
    "sweep": ["sweep", "--config", "{F}", "--out", "{OUT}/sweep"],
    "predict": ["predict", "--checkpoint", "{F}", "{GOOD_NPY}"],
    "tune-thresholds": ["tune-thresholds", "--checkpoint", "{F}", "--out", "{OUT}/thr.json"],
    "export": ["export", "--checkpoint", "{F}", "--out", "{OUT}/export"],
    "model bundle": ["model", "bundle", "--checkpoint", "{F}", "--out", "{OUT}/bundle.pt"],
    "suggest": ["suggest", "--checkpoint", "{F}", "--budget", "3", "--out", "{OUT}/ask.csv"],
    "data merge": ["data", "merge", "{F}", "{F}", "--out", "{OUT}/merged.csv"],
}

# inputs that are not bad for that verb: a (3, 2) array of scores in [0, 1] is a valid scores file
VALID = {("metrics scores", "float_npy")}


def _inputs(folder):
    folder.mkdir()
    made = {"missing": folder / "missing.pt", "folder": folder / "a_folder"}
    made["folder"].mkdir()
    for name, content in {"empty": b"", "random_bytes": bytes(range(256)) * 4,
                          "text": b"hello\nworld\n", "bad_yaml": b"train: [unclosed\n  - x: :\n",
                          "json_list": b"[1, 2, 3]\n"}.items():
        made[name] = folder / f"{name}.yaml"
        made[name].write_bytes(content)
    made["object_npy"] = folder / "objects.npy"
    np.save(made["object_npy"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
    made["float_npy"] = folder / "floats.npy"
    np.save(made["float_npy"], np.full((3, 2), 0.5))
    return made


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    good = root / "good.npy"
    np.save(good, np.array([[1, -1], [-1, 1], [1, 1]], dtype=np.int8))
    return root, _inputs(root / "inputs"), good


@pytest.mark.parametrize("verb", list(VERBS))
def test_no_verb_gives_a_traceback_on_a_bad_file(bad, verb, capsys, tmp_path):
    root, inputs, good = bad
    out = tmp_path / "out"
    out.mkdir()
    for kind, f in inputs.items():
        if (verb, kind) in VALID:
            continue
        argv = [a.replace("{F}", str(f)).replace("{OUT}", str(out)).replace("{GOOD_NPY}",
                                                                             str(good))
                for a in VERBS[verb]]
        rc = main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, (verb, kind, rc, err)
        assert len(err) == 1 and err[0].startswith("mlrpl: error: "), (verb, kind, err)
        assert list(out.iterdir()) == [], (verb, kind, "wrote", list(out.iterdir()))
