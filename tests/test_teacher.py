"""The ``teacher`` plug-in: unknown labels recovered from a teacher's scores, calibrated per class
on the known labels; teacher files and their errors."""
import numpy as np
import pytest
import torch

from mlrpl.errors import DataError
from mlrpl.plugins.teacher import TeacherConfig, percentiles, read_teacher_file, recover
from tests.test_engine import rows, tiny


def test_percentiles_are_per_class_ranks():
    s = np.array([[0.1, 5.0], [0.3, 5.0], [0.2, -1.0], [0.9, 2.0]])
    np.testing.assert_allclose(percentiles(s), [[0.25, 1.0], [0.75, 1.0], [0.5, 0.25],
                                                [1.0, 0.5]])


def test_recovery_is_calibrated_on_the_known_labels():
    """A teacher that ranks every positive above every negative: the known labels put the
    thresholds between the two groups, every unknown entry is recovered correctly, known entries
    are never touched; a class with too few known positives gets negatives only."""
    rng = np.random.default_rng(0)
    n = 400
    full = np.where(rng.random((n, 2)) < 0.3, 1, -1).astype(np.int8)
    scores = full + 0.01 * rng.normal(size=(n, 2))
    partial = np.where(rng.random((n, 2)) < 0.3, full, 0).astype(np.int8)
    partial[:, 1] = np.where(partial[:, 1] > 0, 0, partial[:, 1])   # class 1: no known positive
    rec, detail = recover(scores, partial, TeacherConfig(target_precision=0.9, target_npv=0.95))
    assert not rec[partial != 0].any()                            # known entries keep their label
    unknown = partial[:, 0] == 0
    got = rec[unknown, 0]
    assert (got != 0).mean() > 0.9                                # most unknowns recovered ...
    truth = full[unknown, 0]
    assert (truth[got > 0] > 0).mean() >= 0.9                     # ... at the targets: precision
    assert (truth[got < 0] < 0).mean() >= 0.95                    # and NPV
    assert not (rec[:, 1] > 0).any() and detail["positives"][1] == 0
    # a teacher at chance recovers (almost) no positive at 90% precision
    rec, _ = recover(rng.normal(size=(n, 2)), partial, TeacherConfig())
    assert (rec[:, 0] > 0).sum() <= 0.02 * n


def _write(path, text):
    path.write_text(text)
    return path


def test_teacher_files_and_their_errors(tmp_path):
    items, paths = ["a/x1.jpg", "a/x2.jpg"], ["/d/a/x1.jpg", "/d/a/x2.jpg"]
    f = _write(tmp_path / "t.csv", "image,cat,dog,extra\nx2,0.2,0.9,1\na/x1.jpg,0.7,0.1,1\n")
    np.testing.assert_allclose(read_teacher_file(f, items, paths, ["dog", "cat"]),
                               [[0.1, 0.7], [0.9, 0.2]])
    with pytest.raises(DataError, match=r"t.csv.*no scores for 1 of the 2 training images"):
        read_teacher_file(_write(tmp_path / "t.csv", "image,cat,dog\nx1,1,2\n"), items, paths,
                          ["cat", "dog"])
    with pytest.raises(DataError, match=r"line 1.*no column for 1 of the 2 classes.*bird"):
        read_teacher_file(f, items, paths, ["cat", "bird"])
    with pytest.raises(DataError, match=r"line 3.*NaN or infinite"):
        read_teacher_file(_write(tmp_path / "n.csv", "image,cat\nx1,1\nx2,nan\n"), items,
                          paths, ["cat"])
    with pytest.raises(DataError, match=r"line 2.*'high' of class 'cat' is not a number"):
        read_teacher_file(_write(tmp_path / "h.csv", "image,cat\nx1,high\n"), items, paths,
                          ["cat"])
    # mlrpl predict's CSV: its text column 'labels' is ignored
    f = _write(tmp_path / "p.csv", "path,labels,cat,dog\n/d/a/x1.jpg,cat;dog,0.9,0.8\n"
                                   "/d/a/x2.jpg,,0.1,0.2\n")
    np.testing.assert_allclose(read_teacher_file(f, items, paths, ["cat"]), [[0.9], [0.1]])
    with pytest.raises(DataError, match="teacher scores file not found"):
        read_teacher_file(tmp_path / "none.csv", items, paths, ["cat"])


def test_a_run_with_a_teacher_file(shapes, cache_dir, tmp_path):
    """End to end: a teacher file (here the hidden labels, slightly noisy) recovers unknown
    entries from epoch 1; their precision against the hidden labels is in summary.csv. Even a
    perfect teacher's positives go down to the estimated target precision (0.9): the thresholds
    come from the known labels, not from the teacher's word."""
    from mlrpl.config import load_config
    from mlrpl.data import read_dataset
    from mlrpl.engine.trainer import Trainer
    ls = read_dataset("yolo", str(shapes), "train")
    rng = np.random.default_rng(0)
    lines = ["image," + ",".join(ls.classes)]
    for item, row in zip(ls.items, ls.labels):
        lines.append(item + "," + ",".join(f"{v + 0.1 * rng.normal():.4f}" for v in row))
    teacher = _write(tmp_path / "teacher.csv", "\n".join(lines) + "\n")
    run = tmp_path / "run"
    Trainer(load_config(None, tiny(shapes, cache_dir, run, "data.known_proportion=0.3",
                                   f"plugins=[{{name: teacher, source: file, file: {teacher}, "
                                   f"start_epoch: 1, min_positives: 1, target_precision: 0.9, "
                                   f"target_npv: 0.9}}]"
                                   ))).fit()
    last = rows(run)[-1]
    assert float(last["loss_teacher"]) > 0
    # (percent) the estimate lets precision fall to its target; on 48 images it lands near it
    assert float(last["pl_teacher_pos_precision"]) >= 75
    assert float(last["pl_teacher_neg_precision"]) == pytest.approx(100.0)
    assert "teacher (file):" in (run / "train.log").read_text()
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["plugins"] and any("recovered" in k for k in ckpt["plugins"])
