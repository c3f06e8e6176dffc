"""Which labels to annotate next (``mlrpl suggest``) and the answers back in (``mlrpl data
merge``): the strategies on hand cases, the verbs on a small model trained on a CSV with blanks,
and the whole loop (train, suggest, answer from the hidden labels, merge, train again)."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest

from mlrpl.cli import main
from mlrpl.data import read_dataset
from mlrpl.data.merge import merge_labels, write_labels_csv
from mlrpl.data.readers.tabular import read_csv
from mlrpl.deploy.suggest import STRATEGIES, rank_entries
from mlrpl.errors import MlrplError
from tests.deploy_helpers import make_own_csv_data, train_args


# ---- the strategies, on arrays ------------------------------------------------------------------
def _random_case(seed=0, n=30, c=5):
    rng = np.random.default_rng(seed)
    partial = np.where(rng.random((n, c)) < 0.5, np.where(rng.random((n, c)) < 0.3, 1, -1), 0)
    partial[:, 0] = np.where(partial[:, 0] == 1, -1, partial[:, 0])   # a class without positives
    return rng.random((n, c)), partial.astype(np.int8)


def _similarity(c, seed=0):
    """A cosine similarity of c random vectors (what related-classes reads)."""
    v = np.random.default_rng(seed).normal(size=(c, 4))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v @ v.T


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("per_image", [None, 2, "all"])
def test_no_strategy_asks_a_known_entry(strategy, per_image):
    probs, partial = _random_case()
    n_unknown = int((partial == 0).sum())
    for budget in (1, 7, n_unknown):
        rows = rank_entries(probs, partial, strategy, budget, seed=3, per_image=per_image,
                            similarity=_similarity(partial.shape[1]))
        pairs = [(r["item"], r["class"]) for r in rows]
        assert len(pairs) == len(set(pairs)) and 0 < len(pairs) <= budget
        assert all(partial[i, j] == 0 for i, j in pairs)
        assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
        if per_image == 2:
            assert max(np.bincount([i for i, _ in pairs])) <= 2
    everything = rank_entries(probs, partial, strategy, n_unknown,
                              similarity=_similarity(partial.shape[1]))
    assert len(everything) == n_unknown


def test_random_is_seeded_and_reproducible():
    probs, partial = _random_case()
    a = rank_entries(probs, partial, "random", 10, seed=5)
    b = rank_entries(probs * 0 + 0.5, partial, "random", 10, seed=5)   # scores play no part
    c = rank_entries(probs, partial, "random", 10, seed=6)
    key = [(r["item"], r["class"]) for r in a]
    assert key == [(r["item"], r["class"]) for r in b]
    assert key != [(r["item"], r["class"]) for r in c]


def test_uncertainty_ranks_by_distance_to_each_class_threshold():
    probs = np.array([[0.35, 0.5], [0.9, 0.72], [0.0, 0.1]])
    partial = np.array([[0, 0], [0, 0], [1, -1]], dtype=np.int8)
    rows = rank_entries(probs, partial, "uncertainty", 4, thresholds=[0.3, 0.7])
    # |p - t|: (1,1) 0.02, (0,0) 0.05, (0,1) 0.2, (1,0) 0.6
    assert [(r["item"], r["class"]) for r in rows] == [(1, 1), (0, 0), (0, 1), (1, 0)]
    assert [round(r["score"], 6) for r in rows] == [0.98, 0.95, 0.8, 0.4]
    # with 0.5 for every class the order is another one
    flat = rank_entries(probs, partial, "uncertainty", 4)
    assert [(r["item"], r["class"]) for r in flat][0] == (0, 1)


def test_class_balance_orders_classes_by_known_positives_round_robin():
    # known positives: class 0: 3, class 1: 0, class 2: 1
    partial = np.array([[1, 0, 0], [1, 0, 1], [1, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=np.int8)
    probs = np.array([[0.0, 0.9, 0.45], [0.0, 0.52, 0.0], [0.0, 0.2, 0.6],
                      [0.51, 0.0, 0.0], [0.3, 0.0, 0.0]])
    rows = rank_entries(probs, partial, "class-balance", 8)
    got = [(r["item"], r["class"]) for r in rows]
    # class 1 first (0 known positives), then class 2 (1), then class 0 (3); inside each class
    # the entry closest to 0.5 first; then the second round
    assert got == [(1, 1), (0, 2), (3, 0), (2, 1), (2, 2), (4, 0), (0, 1), (3, 2)]
    assert "0 known positives" in rows[0]["reason"]


def test_related_classes_looks_for_a_blind_class_where_related_classes_are():
    # classes: 0 fork (no known positive), 1 knife, 2 dining table, 3 giraffe
    names = ["fork", "knife", "dining table", "giraffe"]
    sim = np.eye(4)
    sim[0, 1] = sim[1, 0] = 0.7          # fork ~ knife
    sim[0, 2] = sim[2, 0] = 0.5          # fork ~ dining table
    sim[0, 3] = sim[3, 0] = -0.2         # fork and giraffe: unrelated (negative counts as 0)
    sim[1, 2] = sim[2, 1] = 0.6          # knife ~ dining table
    partial = np.array([[0, 0, 1, 0],    # image 0: a known dining table
                        [0, -1, -1, 1],  # image 1: a known giraffe, nothing related
                        [0, 0, -1, 0],   # image 2: knife predicted (p 0.9)
                        [0, -1, 0, 0],   # image 3: dining table unknown (p 0.05)
                        [-1, 1, 1, 1]],
                       dtype=np.int8)
    probs = np.full((5, 4), 0.05)
    probs[2, 1] = 0.9
    probs[1, 0] = 0.3                    # the model's own fork score, added to the strength
    rows = rank_entries(probs, partial, "related-classes", 4, class_names=names,
                        similarity=sim)
    fork = [r["item"] for r in rows if r["class"] == 0]
    # p + strength: image 2: 0.05 + knife 0.9 x 0.7 = 0.68; image 0: 0.05 + table 1 x 0.5;
    # image 1: 0.3 + 0 (nothing related), though the model's own fork score is highest there;
    # image 3: 0.05 + table 0.05 x 0.5
    got = rank_entries(probs, partial, "related-classes", 10, class_names=names, similarity=sim)
    assert [r["item"] for r in got if r["class"] == 0] == [2, 0, 1, 3]
    assert rows[0]["class"] == 0 and rows[0]["item"] == 2
    assert rows[0]["score"] == pytest.approx(0.68)
    assert rows[0]["reason"] == ("class has 0 known positives; p=0.050 plus: the image holds "
                                 "knife (p=0.900), related by name (similarity 0.70)")
    zero_row = [r for r in got if r["class"] == 0 and r["item"] == 1][0]
    assert "no class related to it by name" in zero_row["reason"]
    assert fork == [2]                   # one entry of each class per turn
    # a known dining table reads as known
    assert "holds dining table (a known positive)" in [r for r in got if r["class"] == 0][1][
        "reason"]
    # knife has 1 known positive: its entries by p plus the related strength (image 2: 0.9 + 0,
    # fork, the only class related to it, has no positive to be held)
    assert [r["item"] for r in got if r["class"] == 1][0] == 2
    assert [r for r in got if r["class"] == 1][0]["reason"] == (
        "class has 1 known positive; no class related to it by name is known or predicted in "
        "the image; p=0.900 vs threshold 0.500")
    # the names were checked on the known labels: knife's and dining table's
    from mlrpl.deploy.suggest import names_check
    assert names_check(probs, partial, sim) == (pytest.approx(0.875), 2)   # knife 1, table 0.75
    with pytest.raises(MlrplError, match="name similarity"):
        rank_entries(probs, partial, "related-classes", 4)
    with pytest.raises(MlrplError, match=r"class similarity \(3, 3\)"):
        rank_entries(probs, partial, "related-classes", 4, similarity=np.eye(3))


def test_related_classes_orders_inside_each_class_by_what_is_known_of_it(monkeypatch):
    """Round-robin as class-balance; inside a class with 0-2 known positives by p + the
    related strength; with 3 or more, as class-balance."""
    import mlrpl.deploy.suggest as suggest_module
    from mlrpl.deploy.suggest import _related_presence
    monkeypatch.setattr(suggest_module, "NAMES_MIN_AUC", -1.0)   # names always used here
    probs, partial = _random_case(seed=4, n=60, c=6)
    partial[:2, 1] = 1                   # class 1: exactly 2 known positives
    partial[2:, 1] = np.where(partial[2:, 1] == 1, -1, partial[2:, 1])
    sim = _similarity(6, seed=2)
    npos = (partial == 1).sum(0)
    assert npos[0] == 0 and npos[1] == 2 and (npos[2:] >= 3).all()
    got = rank_entries(probs, partial, "related-classes", None, similarity=sim)
    balance = rank_entries(probs, partial, "class-balance", None)
    ii, cc = np.nonzero(partial == 0)
    strength = dict(zip(zip(ii, cc), _related_presence(probs, partial, ii, cc, sim)[0]))
    for c in range(6):
        mine = [r["item"] for r in got if r["class"] == c]
        if c < 2:
            key = [probs[i, c] + strength[i, c] for i in mine]
        else:
            assert mine == [r["item"] for r in balance if r["class"] == c]
            continue
        assert key == sorted(key, reverse=True) and max(key) > 0
    assert [r["class"] for r in got] == [r["class"] for r in balance]   # the same turns


def test_related_classes_is_class_balance_where_related_names_do_not_go_together():
    """Photos of one subject each: a known cow is where a known horse is not. The names,
    checked on the known labels, rank them below chance; the strategy is then class-balance."""
    from mlrpl.deploy.suggest import names_check
    rng = np.random.default_rng(0)
    n = 40
    subject = rng.integers(0, 3, n)                       # cow, horse, sheep: one per photo
    full = np.eye(3, dtype=np.int8)[subject] * 2 - 1      # +1 / -1
    partial = np.where(rng.random((n, 3)) < 0.5, full, 0).astype(np.int8)
    partial[:, 2] = np.where(partial[:, 2] == 1, 0, partial[:, 2])   # sheep: no known positive
    sim = np.array([[1, 0.6, 0.7], [0.6, 1, 0.6], [0.7, 0.6, 1]])
    probs = rng.random((n, 3))
    auc, checked = names_check(probs, partial, sim)
    assert checked == 2 and auc < 0.5
    got = rank_entries(probs, partial, "related-classes", 20, similarity=sim)
    balance = rank_entries(probs, partial, "class-balance", 20)
    assert [(r["item"], r["class"]) for r in got] == [(r["item"], r["class"]) for r in balance]
    assert "as class-balance: related names did not rank the known labels" in got[0]["reason"]


def _gain(p, npos, nneg, flip, expected_positives, c):
    """The expected gain of docs/decisions.md, written out: AP as a log learning curve in the
    effective number of pairs h = PQ / (P + Q), P and Q the positives and negatives plus one."""
    P, Q = npos + 1, nneg + 1
    h = P * Q / (P + Q)
    value_pos, value_neg = (Q / (P + Q)) ** 2 / (1 + h), (P / (P + Q)) ** 2 / (1 + h)
    return (p * value_pos + (1 - p) * value_neg + flip / (1 + expected_positives)) / c


def test_expected_gain_on_a_hand_case():
    partial = np.array([[0, 1], [1, 0], [-1, 0], [1, 1], [0, 1]], dtype=np.int8)
    probs = np.zeros((5, 2))
    probs[0, 0], probs[1, 1], probs[2, 1], probs[4, 0] = 0.6, 0.9, 0.2, 0.1
    rows = rank_entries(probs, partial, "expected-gain", 4)
    # class 0: 2 known positives, 1 known negative, expected positives 2 + 0.6 + 0.1 = 2.7
    # class 1: 3 known positives, 0 known negatives, expected positives 3 + 0.9 + 0.2 = 4.1
    # P(the answer corrects the model) = p below the threshold (0.5), 1 - p above it
    alone = {(0, 0): _gain(0.6, 2, 1, 0.4, 2.7, 2),    # 0.1086
             (4, 0): _gain(0.1, 2, 1, 0.1, 2.7, 2),    # 0.0908
             (1, 1): _gain(0.9, 3, 0, 0.1, 4.1, 2),    # 0.0376
             (2, 1): _gain(0.2, 3, 0, 0.2, 4.1, 2)}    # 0.1641, the best
    assert max(alone, key=alone.get) == (2, 1)
    # taken one at a time: after (2, 1) class 1 counts 3.2 positives and 0.8 negatives; after
    # (0, 0) class 0 counts 2.6 and 1.4
    want = [((2, 1), alone[2, 1]), ((0, 0), alone[0, 0]),
            ((4, 0), _gain(0.1, 2.6, 1.4, 0.1, 2.7, 2)),    # 0.0832 (alone: 0.0908)
            ((1, 1), _gain(0.9, 3.2, 0.8, 0.1, 4.1, 2))]    # 0.0386 (alone: 0.0376)
    assert [(r["item"], r["class"]) for r in rows] == [k for k, _ in want]
    assert [r["score"] for r in rows] == pytest.approx([v for _, v in want])
    assert "1 of its entries ranked above" in rows[3]["reason"]


def test_expected_gain_spreads_a_batch_over_classes():
    # two classes alike (1 known positive, 1 known negative), six unknown entries each that are
    # almost surely negatives; class 1's are worth slightly more alone, so a ranking by the
    # gain alone asks its six first. Each answer makes the next of the same class worth less.
    partial = np.zeros((8, 2), dtype=np.int8)
    partial[6], partial[7] = [1, 1], [-1, -1]
    probs = np.zeros((8, 2))
    probs[:, 0], probs[:, 1] = 0.01, 0.02
    rows = rank_entries(probs, partial, "expected-gain", 6)
    assert [r["class"] for r in rows] == [1, 0, 1, 0, 1, 0]
    assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))


def test_per_image_all_takes_whole_images_ranked_by_summed_scores():
    partial = np.array([[0, 0, 0], [0, 1, 1], [0, 0, -1], [1, 1, 1]], dtype=np.int8)
    probs = np.array([[0.1, 0.1, 0.1], [0.5, 0.0, 0.0], [0.45, 0.55, 0.0], [0.5, 0.5, 0.5]])
    rows = rank_entries(probs, partial, "uncertainty", 5, per_image="all")
    # image scores (sum of 1 - |p - 0.5|): 0: 1.8, 1: 1.0, 2: 1.9 -> images 2, 0 (5 entries)
    assert [(r["item"], r["class"]) for r in rows] == [(2, 0), (2, 1), (0, 0), (0, 1), (0, 2)]
    # whole images only: with a budget of 4, image 0 (3 entries) does not fit after image 2,
    # image 1 (1 entry) does
    rows = rank_entries(probs, partial, "uncertainty", 4, per_image="all")
    assert sorted({r["item"] for r in rows}) == [1, 2] and len(rows) == 3
    rows = rank_entries(probs, partial, "uncertainty", 3, per_image=1)
    assert sorted(r["item"] for r in rows) == [0, 1, 2]


def test_budget_and_arguments_are_checked():
    probs, partial = _random_case()
    n_unknown = int((partial == 0).sum())
    with pytest.raises(MlrplError, match=f"only {n_unknown} unknown entries"):
        rank_entries(probs, partial, "random", n_unknown + 1)
    with pytest.raises(MlrplError, match="at least 1"):
        rank_entries(probs, partial, "random", 0)
    with pytest.raises(MlrplError, match="did you mean 'uncertainty'"):
        rank_entries(probs, partial, "uncertainity", 3)
    with pytest.raises(MlrplError, match="--per-image"):
        rank_entries(probs, partial, "random", 3, per_image="some")


# ---- the verbs, on a model trained on a CSV with blanks -------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = make_own_csv_data(tmp_path_factory.mktemp("suggest"))
    assert main(train_args(data, data / "run", "train.epochs=1")) == 0
    return data, data / "run" / "last.pt"


def _hidden_labels(data: Path) -> dict:
    """The full labels of the training images, by resolved path (what an annotator knows)."""
    full = read_dataset("yolo", data / "images", "train")
    return {os.path.realpath(p): dict(zip(full.classes, row.tolist()))
            for p, row in zip(full.paths(), full.labels)}


def _ask_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlrpl: error: "), err
    return err[0]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_suggest_asks_unknown_entries_of_training_images_only(trained, strategy, tmp_path,
                                                              capsys):
    data, ckpt = trained
    labels = read_csv(data / "train.csv")
    known = {(os.path.realpath(p), c): v for p, row in zip(labels.paths(), labels.labels)
             for c, v in zip(labels.classes, row)}
    val = {os.path.realpath(p) for p in read_csv(data / "val.csv").paths()}
    out = tmp_path / "ask.csv"
    assert main(["suggest", "--checkpoint", str(ckpt), "--budget", "8", "--strategy", strategy,
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "8 entries" in printed and "mlrpl data merge" in printed
    rows = _ask_rows(out)
    assert list(rows[0]) == ["image", "label", "value", "rank", "score", "reason"]
    assert [int(r["rank"]) for r in rows] == list(range(1, 9))
    for r in rows:
        key = (os.path.realpath(tmp_path / r["image"]), r["label"])
        assert key in known and known[key] == 0, key          # a training image, unknown there
        assert key[0] not in val and r["value"] == ""
    # the ask file reads as a long-layout label file (rank, score, reason ignored)
    back = read_csv(out)
    assert back.meta["layout"] == "long" and (back.labels == 0).all()


def test_suggest_random_is_reproducible_and_per_image_all(trained, tmp_path):
    import mlrpl
    data, ckpt = trained
    a = mlrpl.suggest(ckpt, 6, "random", seed=1)["rows"]
    b = mlrpl.suggest(ckpt, 6, "random", seed=1)["rows"]
    assert [(r["image"], r["label"]) for r in a] == [(r["image"], r["label"]) for r in b]
    rows = mlrpl.suggest(ckpt, 6, "expected-gain", per_image="all", out=tmp_path / "a.csv")["rows"]
    labels = read_csv(data / "train.csv")
    unknown_of = {os.path.realpath(p): int((row == 0).sum())
                  for p, row in zip(labels.paths(), labels.labels)}
    asked = {}
    for r in rows:
        asked.setdefault(os.path.realpath(tmp_path / r["image"]), []).append(r["label"])
    assert all(len(v) == unknown_of[k] for k, v in asked.items())   # every unknown of each image


def test_suggest_never_asks_the_runs_evaluation_images(trained, tmp_path):
    """Evaluation from a seeded hold-out of the label file: its images are not training images."""
    import mlrpl
    from mlrpl.engine.experiment import seeded_split
    data, ckpt = trained
    labels = read_csv(data / "train.csv")
    keep, held = seeded_split(len(labels), 0.5, 0)
    in_training = int((labels.labels[keep] == 0).sum())
    over = ["data.val_root=null", "data.holdout=0.5", "data.split_seed=0"]
    rows = mlrpl.suggest(ckpt, in_training, "expected-gain", overrides=over,
                         out=tmp_path / "ask.csv")["rows"]
    asked = {os.path.realpath(tmp_path / r["image"]) for r in rows}
    paths = labels.paths()
    assert asked <= {os.path.realpath(paths[i]) for i in keep}
    with pytest.raises(MlrplError, match=f"only {in_training} unknown entries"):
        mlrpl.suggest(ckpt, in_training + 1, overrides=over)


def test_suggest_on_a_simulated_mask_asks_its_unknown_entries(shapes, cache_dir, tmp_path):
    """A run that simulated its partial labels (HCP, p = 0.5): the mask is redrawn with the run's
    seed, the same as the run's mask.npy."""
    import mlrpl
    from tests.test_engine import tiny
    run = tmp_path / "run"
    assert main(["train", *tiny(shapes, cache_dir, run, "train.epochs=1",
                                "train.progress=never")]) == 0
    mask = np.load(run / "mask.npy")
    train = read_dataset("yolo", shapes, "train")
    index = {os.path.realpath(p): i for i, p in enumerate(train.paths())}
    for strategy in STRATEGIES:
        res = mlrpl.suggest(run / "last.pt", 12, strategy, out=tmp_path / f"{strategy}.csv")
        assert res["unknown_entries"] == int((mask == 0).sum())
        for r in res["rows"]:
            i = index[os.path.realpath(tmp_path / r["image"])]
            assert mask[i, train.classes.index(r["label"])] == 0


def _bytes(*paths):
    return {p: Path(p).read_bytes() for p in paths}


def test_suggest_errors_are_one_line_and_write_nothing(trained, tmp_path, capsys):
    data, ckpt = trained
    inputs = _bytes(ckpt, data / "train.csv", data / "val.csv")
    out = tmp_path / "ask.csv"
    n_unknown = int((read_csv(data / "train.csv").labels == 0).sum())
    base = ["suggest", "--checkpoint", str(ckpt), "--out", str(out)]
    assert main(base + ["--budget", "0"]) == 2
    assert "--budget 0" in _one_error_line(capsys)
    assert main(base + ["--budget", str(n_unknown + 1)]) == 2
    assert f"only {n_unknown} unknown entries" in _one_error_line(capsys)
    assert main(base + ["--budget", "2", "--per-image", "none"]) == 2
    assert "--per-image" in _one_error_line(capsys)
    # a label file with other classes than the checkpoint's
    other = tmp_path / "other.csv"
    text = (data / "train.csv").read_text().splitlines()
    other.write_text("\n".join([text[0].replace("yellow_star", "black_dot")] + [
        f"{Path(data / ln.split(',')[0])}," + ln.split(",", 1)[1] for ln in text[1:]]) + "\n")
    assert main(base + ["--budget", "2", f"data.root={other}"]) == 2
    line = _one_error_line(capsys)
    assert str(other) in line and "classes differ" in line and "black_dot" in line
    assert not out.exists()
    # an existing --out without --force
    out.write_text("mine\n")
    assert main(base + ["--budget", "2"]) == 2
    assert "pass --force" in _one_error_line(capsys)
    assert out.read_text() == "mine\n"
    assert _bytes(ckpt, data / "train.csv", data / "val.csv") == inputs
    # with --force the old file is moved aside, never deleted
    assert main(base + ["--budget", "2", "--force"]) == 0
    aside = list(tmp_path.glob("ask.csv.replaced-*"))
    assert len(aside) == 1 and aside[0].read_text() == "mine\n"
    assert len(_ask_rows(out)) == 2


def test_the_loop_suggest_answer_merge_train(trained, tmp_path, capsys):
    data, ckpt = trained
    ask = data / "loop_ask.csv"
    assert main(["suggest", "--checkpoint", str(ckpt), "--budget", "10", "--strategy",
                 "expected-gain", "--out", str(ask), "--force"]) == 0
    truth = _hidden_labels(data)
    rows = _ask_rows(ask)
    for r in rows:   # the annotator answers from the hidden labels (one left blank)
        v = truth[os.path.realpath(data / r["image"])][r["label"]]
        r["value"] = "" if r["rank"] == "10" else ("1" if v == 1 else "0")
    with open(ask, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    merged = tmp_path / "train.v2.csv"
    before = read_csv(data / "train.csv")
    assert main(["data", "merge", str(data / "train.csv"), str(ask), "--out", str(merged)]) == 0
    printed = capsys.readouterr().out
    assert "filled 9 unknown entries" in printed and "1 answers blank" in printed
    after = read_csv(merged)
    assert after.meta["layout"] == "dense" and after.classes == before.classes
    assert int((after.labels != 0).sum()) == int((before.labels != 0).sum()) + 9
    # relative image paths were rebased to the merged file's folder: the same images
    assert [os.path.realpath(p) for p in after.paths()] == \
        [os.path.realpath(p) for p in before.paths()]
    # the same recipe trains on the merged labels
    run = tmp_path / "run2"
    args = [a.replace(str(data / "train.csv"), str(merged)) for a in train_args(data, run)]
    assert main(args + ["train.epochs=1"]) == 0
    assert (run / "last.pt").is_file()
    # and a suggestion from the new run never asks the answered entries again
    ask2 = tmp_path / "ask2.csv"
    assert main(["suggest", "--checkpoint", str(run / "last.pt"), "--budget", "20",
                 "--out", str(ask2)]) == 0
    answered = {(os.path.realpath(data / r["image"]), r["label"]) for r in rows if r["value"]}
    again = {(os.path.realpath(tmp_path / r["image"]), r["label"]) for r in _ask_rows(ask2)}
    assert not answered & again


# ---- merge: layouts and refusals -------------------------------------------------------------------
CLASSES = ["cat", "dog", "bird"]
# the hidden truth of 3 images, and what is known of it
TRUTH = {"a.jpg": [1, -1, -1], "b.jpg": [-1, 1, 1], "c.jpg": [1, 1, -1]}
KNOWN = {"a.jpg": [1, 0, -1], "b.jpg": [0, 0, 1], "c.jpg": [1, 1, 0]}


def _write_labels(folder: Path, layout: str) -> Path:
    path = folder / f"labels_{layout}.csv"
    for img in KNOWN:
        (folder / img).write_bytes(b"")     # the paths name files (their content is not read)
    if layout == "wide":
        tok = {1: "1", -1: "0", 0: ""}
        lines = ["image," + ",".join(CLASSES)] + [
            f"{img}," + ",".join(tok[v] for v in row) for img, row in KNOWN.items()]
    elif layout == "long":
        lines = ["image,label,value"] + [f"{img},{c},{1 if v == 1 else 0}"
                                         for img, row in KNOWN.items()
                                         for c, v in zip(CLASSES, row) if v != 0]
    else:  # list with an unknown column: not listed = negative
        lines = ["image,labels,unknown"] + [
            f"{img},{';'.join(c for c, v in zip(CLASSES, row) if v == 1)},"
            f"{';'.join(c for c, v in zip(CLASSES, row) if v == 0)}"
            for img, row in KNOWN.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _write_answers(folder: Path, layout: str, entries) -> Path:
    """Answers for `entries` [(image, class)] from TRUTH, in `layout`."""
    path = folder / f"answers_{layout}.csv"
    val = {(img, c): TRUTH[img][CLASSES.index(c)] for img, c in entries}
    if layout == "long":
        lines = ["image,label,value,rank,score,reason"] + [
            f"{img},{c},{'1' if v == 1 else '-1'},{k},0.5,why" for k, ((img, c), v) in
            enumerate(val.items(), 1)]
    elif layout == "wide":
        images = sorted({img for img, _ in entries})
        lines = ["image," + ",".join(CLASSES)] + [
            f"{img}," + ",".join(("1" if val[img, c] == 1 else "0") if (img, c) in val else ""
                                 for c in CLASSES) for img in images]
    else:   # list: the asked classes answered, the others unknown
        images = sorted({img for img, _ in entries})
        lines = ["image,labels,unknown"] + [
            f"{img},{';'.join(c for c in CLASSES if val.get((img, c)) == 1)},"
            f"{';'.join(c for c in CLASSES if (img, c) not in val)}" for img in images]
    path.write_text("\n".join(lines) + "\n")
    return path


UNKNOWN = [(img, c) for img, row in KNOWN.items() for c, v in zip(CLASSES, row) if v == 0]


@pytest.mark.parametrize("labels_layout", ["wide", "long", "list"])
@pytest.mark.parametrize("answers_layout", ["long", "wide", "list"])
def test_merge_each_layout(tmp_path, labels_layout, answers_layout, capsys):
    labels = _write_labels(tmp_path, labels_layout)
    before = labels.read_bytes()
    answers = _write_answers(tmp_path, answers_layout, UNKNOWN[:3])
    out = tmp_path / "sub" / "merged.csv"
    out.parent.mkdir()
    assert main(["data", "merge", str(labels), str(answers), "--out", str(out)]) == 0
    assert labels.read_bytes() == before
    got = read_csv(out)
    assert got.meta["layout"] == read_csv(labels).meta["layout"]
    want = {img: list(row) for img, row in KNOWN.items()}
    for img, c in UNKNOWN[:3]:
        want[img][CLASSES.index(c)] = TRUTH[img][CLASSES.index(c)]
    rows = {os.path.basename(item): [int(v) for v in row]
            for item, row in zip(got.items, got.labels[:, [got.classes.index(c) for c in CLASSES]])}
    assert rows == want
    # image paths rebased to the output's folder
    assert all(item.startswith("../") for item in got.items)
    assert "filled 3 unknown entries" in capsys.readouterr().out


def test_merge_refuses_a_contradiction_naming_both_files_and_lines(tmp_path, capsys):
    labels = _write_labels(tmp_path, "wide")
    answers = tmp_path / "answers.csv"
    answers.write_text("image,label,value\nb.jpg,bird,1\na.jpg,cat,0\n")
    out = tmp_path / "merged.csv"
    assert main(["data", "merge", str(labels), str(answers), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"{answers}, line 3, field 'value'" in line
    assert f"{labels}, line 2: positive" in line and "'cat'" in line
    assert not out.exists()
    # two answers files that disagree
    a2 = tmp_path / "answers2.csv"
    a2.write_text("image,label,value\nb.jpg,cat,1\n")
    a3 = tmp_path / "answers3.csv"
    a3.write_text("image,dog,cat\nb.jpg,,0\n")
    assert main(["data", "merge", str(labels), str(a2), str(a3), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"{a3}, line 2, field 'cat'" in line and f"{a2}, line 2" in line
    assert not out.exists()


@pytest.mark.parametrize("text,where,what", [
    ("image,label,value\nb.jpg,cat,1\nz.jpg,cat,1\n", "line 3, field 'image'", "'z.jpg' is not in"),
    ("image,label,value\nb.jpg,cta,1\n", "line 2, field 'label'", "did you mean 'cat'"),
    ("image,label,value\nb.jpg,cat,yes\n", "line 2, field 'value'", "'yes' is not an answer"),
    ("image,label,value\nb.jpg,cat,0.5\n", "line 2, field 'value'", "'0.5' is not an answer"),
    ("image,cat,horse\nb.jpg,1,\n", "line 1, field 'horse'", "'horse' is not a class"),
    ("image,cat\nb.jpg,2\n", "line 2, field 'cat'", "'2' is not an answer"),
    ("image,labels\nb.jpg,cat;cow\n", "line 2, field 'labels'", "'cow' is not a class"),
    ("image,label,value\nb.jpg,cat,1\nb.jpg,cat,1\n", "line 3, field 'value'", "answered twice"),
])
def test_merge_answer_errors_name_file_line_and_field(tmp_path, capsys, text, where, what):
    labels = _write_labels(tmp_path, "long")
    answers = tmp_path / "answers.csv"
    answers.write_text(text)
    before = _bytes(labels, answers)
    out = tmp_path / "merged.csv"
    assert main(["data", "merge", str(labels), str(answers), "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert f"{answers}, {where}" in line and what in line, line
    assert not out.exists() and _bytes(labels, answers) == before


def test_merge_never_overwrites_its_inputs(tmp_path, capsys):
    labels = _write_labels(tmp_path, "wide")
    answers = _write_answers(tmp_path, "long", UNKNOWN[:1])
    before = _bytes(labels, answers)
    for out in (labels, answers, tmp_path / "." / labels.name):
        for force in ([], ["--force"]):
            assert main(["data", "merge", str(labels), str(answers), "--out", str(out),
                         *force]) == 2
            assert "inputs are never overwritten" in _one_error_line(capsys)
    out = tmp_path / "merged.csv"
    out.write_text("mine\n")
    assert main(["data", "merge", str(labels), str(answers), "--out", str(out)]) == 2
    assert "pass --force" in _one_error_line(capsys)
    assert main(["data", "merge", str(labels), str(answers), "--out", str(out), "--force"]) == 0
    assert [p.read_text() for p in tmp_path.glob("merged.csv.replaced-*")] == ["mine\n"]
    assert _bytes(labels, answers) == before


def test_merge_into_a_positives_only_list_refuses_negatives(tmp_path, capsys):
    labels = tmp_path / "pos.csv"
    labels.write_text("image,labels\na.jpg,cat\nb.jpg,dog;bird\nc.jpg,cat\n")
    answers = tmp_path / "answers.csv"
    answers.write_text("image,label,value\nc.jpg,dog,1\n")
    out = tmp_path / "merged.csv"
    assert main(["data", "merge", str(labels), str(answers), "--out", str(out),
                 "--absent", "unknown"]) == 0
    got = read_csv(out, absent="unknown")
    assert got.labels[got.items.index("c.jpg"), got.classes.index("dog")] == 1
    assert int((got.labels != 0).sum()) == 5
    answers.write_text("image,label,value\nc.jpg,bird,0\n")
    assert main(["data", "merge", str(labels), str(answers), "--out", str(tmp_path / "m2.csv"),
                 "--absent", "unknown"]) == 2
    assert "absent=unknown" in _one_error_line(capsys)


def test_write_labels_csv_reads_back(tmp_path, shapes):
    ls = read_dataset("yolo", shapes, "train")
    partial = ls.labels.copy()
    partial[::3, 1] = 0
    out = write_labels_csv(ls.with_labels(partial), tmp_path / "l.csv")
    back = read_csv(out)
    assert (back.labels == partial).all() and back.classes == ls.classes
    assert [os.path.realpath(p) for p in back.paths()] == [os.path.realpath(p) for p in ls.paths()]
    n = merge_labels(out, _answers_for(tmp_path, back, ls), tmp_path / "l2.csv")
    assert n["filled"] == int((partial == 0).sum()) and n["unknown_after"] == 0


def _answers_for(folder, back, full) -> Path:
    path = folder / "all_answers.csv"
    lines = ["image,label,value"]
    for item, row, truth in zip(back.items, back.labels, full.labels):
        for c, v, t in zip(back.classes, row, truth):
            if v == 0:
                lines.append(f"{item},{c},{1 if t == 1 else 0}")
    path.write_text("\n".join(lines) + "\n")
    return path
