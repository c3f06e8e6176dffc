"""The annotation-rounds benchmark's reference that reads the hidden labels
(benchmarks/annotation_rounds.py, ``oracle-positives``): it asks only unknown entries, the hidden
positives first, the classes with the fewest known positives first."""
import csv
import importlib.util
import os
from pathlib import Path

import numpy as np

from mlrpl.data.labelset import LabelSet
from mlrpl.data.merge import write_labels_csv

REPO = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location(
        "annotation_rounds", REPO / "benchmarks" / "annotation_rounds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_oracle_asks_hidden_positives_of_the_poorest_classes_first(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    n, c = 12, 3
    names = [f"{i:02d}.jpg" for i in range(n)]
    for name in names:
        (images / name).write_bytes(b"x")
    rng = np.random.default_rng(0)
    full = np.where(rng.random((n, c)) < 0.4, 1, -1).astype(np.int8)
    full[:4, 0] = 1                                    # class 0: four hidden positives
    partial = np.where(rng.random((n, c)) < 0.3, full, 0).astype(np.int8)
    partial[:, 0] = np.where(np.arange(n) < 4, 0, -1)  # none of them known, no known positive
    partial[0, 1] = full[0, 1] = 1                     # class 1 has a known positive
    ls = LabelSet(names, ["a", "b", "c"], partial, root=str(images))
    labels = write_labels_csv(ls, tmp_path / "labels.csv")
    truth = {os.path.realpath(p): row for p, row in zip(ls.paths(), full)}
    ask = tmp_path / "ask.csv"
    budget = 5
    bench().oracle_ask(labels, ask, truth, budget, seed=0)
    with open(ask, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == budget and all(r["value"] == "" for r in rows)
    col = {"a": 0, "b": 1, "c": 2}
    index = {os.path.realpath(p): i for i, p in enumerate(ls.paths())}
    asked = [(index[os.path.realpath(ask.parent / r["image"])], col[r["label"]]) for r in rows]
    assert len(set(asked)) == budget
    assert all(partial[i, j] == 0 for i, j in asked)            # never a known entry
    assert [r["reason"] == "oracle: hidden positive" for r in rows] == \
        [full[i, j] == 1 for i, j in asked]
    # the first turn goes to class 0 (no known positive), and it asks a hidden positive
    assert asked[0][1] == 0 and full[asked[0]] == 1
    # every class's hidden positives come before its negatives
    for j in range(c):
        got = [full[i, jj] for i, jj in asked if jj == j]
        assert got == sorted(got, reverse=True)
