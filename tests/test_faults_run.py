"""The fault suite, part 2: the run directory and kills at fixed points.

Nothing is lost (run.overwrite moves aside, best.pt always holds the best epoch), nothing blocks a
rerun, and a run killed with SIGKILL at each injected point (``mlrpl.utils.faults``: mid-epoch, between
the last.pt and best.pt writes, during a checkpoint write, during prototype recomputation, during
feature caching) resumes bit-identical to an uninterrupted run, with no temporary file left.
The random-instant campaign is benchmarks/fault_campaign.py.
"""
import csv
import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from mlrpl.cli import main
from mlrpl.config import load_config
from mlrpl.engine.trainer import Trainer
from tests.conftest import REPO
from tests.test_engine import tiny
from tests.test_faults import one_error_line

HST = ["method.name=hst", "method.trunk.dim=32", "method.trunk.attention_dim=16",
       "method.start_epoch=1", "method.prototype_interval=1", "method.num_prototypes=3",
       "method.kmeans_n_init=2", "method.threshold_init=0.3"]
TIMES = ("time_train_s", "time_eval_s")


def summary(run):
    with open(run / "summary.csv") as fh:
        return [{k: v for k, v in r.items() if k not in TIMES} for r in csv.DictReader(fh)]


def assert_same_run(a, b):
    for name in ("last.pt", "best.pt"):
        ka = torch.load(a / name, weights_only=True)
        kb = torch.load(b / name, weights_only=True)
        assert ka["epoch"] == kb["epoch"], name
        assert ka["model"].keys() == kb["model"].keys()
        for k in ka["model"]:
            assert torch.equal(torch.nan_to_num(ka["model"][k]), torch.nan_to_num(kb["model"][k])), (name, k)
    assert summary(a) == summary(b)
    assert not [p.name for p in b.iterdir() if p.name.endswith(".tmp")]


# The only way to arm a fault point: mlrpl.utils.faults.arm() in the process, before the command runs.
ARMED = ("import sys; from mlrpl.utils import faults; faults.arm(sys.argv[1]); "
         "from mlrpl.cli import main; sys.exit(main(sys.argv[2:]))")


def cli(args, fault=None, timeout=300):
    """``mlrpl args`` in a new process; with `fault` (``point[:n]``) that point armed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    start = ["-c", ARMED, fault] if fault else ["-m", "mlrpl"]
    r = subprocess.run([sys.executable, *start, *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return r


@pytest.fixture(scope="module")
def emb(tmp_path_factory):
    from tests.test_transfer import _embeddings
    return _embeddings(tmp_path_factory.mktemp("emb"))


@pytest.fixture(scope="module")
def reference(shapes, tmp_path_factory, emb):
    """Uninterrupted runs: pbce for 3 epochs and hst for 2, in process."""
    base = tmp_path_factory.mktemp("ref")
    cache = base / "cache"
    runs = {}
    for name, extra in (("pbce", ["train.epochs=3", "train.threads=1"]),
                        ("hst", [*HST, f"data.embeddings={emb}", "train.threads=1"])):
        run = base / name
        Trainer(load_config(None, tiny(shapes, cache, run, *extra))).fit()
        runs[name] = (run, extra)
    return runs


# ---- the run directory ------------------------------------------------------------------------------
def test_overwrite_never_deletes_and_only_replaces_a_run(shapes, cache_dir, tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("years of work")
    assert main(["train", *tiny(shapes, cache_dir, docs, "train.epochs=1"),
                 "run.overwrite=true"]) == 2
    assert "is not an mlrpl run directory" in one_error_line(capsys)
    assert (docs / "thesis.txt").read_text() == "years of work"
    run = tmp_path / "run"
    args = tiny(shapes, cache_dir, run, "train.epochs=1")
    assert main(["train", *args]) == 0
    first = torch.load(run / "last.pt", weights_only=True)["rng"]["torch"]
    assert main(["train", *args, "run.overwrite=true", "seed=3"]) == 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and (aside[0] / "last.pt").is_file()  # moved aside, not deleted
    assert torch.equal(torch.load(aside[0] / "last.pt", weights_only=True)["rng"]["torch"], first)


def test_run_dir_that_is_a_file_or_not_writable_is_one_line(shapes, cache_dir, tmp_path, capsys,
                                                            monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["train", *tiny(shapes, cache_dir, f)]) == 2
    assert "is a file, not a directory" in one_error_line(capsys)
    import mlrpl.utils.files
    ro = tmp_path / "ro"
    ro.mkdir()
    real_open = open

    def ro_open(path, *a, **k):  # a read-only folder, even for root
        if str(path).startswith(str(ro)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(mlrpl.utils.files, "open", ro_open, raising=False)
    assert main(["train", *tiny(shapes, cache_dir, ro / "run")]) == 2
    assert "ro: not writable" in one_error_line(capsys)
    assert not (ro / "run").exists()


def test_a_run_stopped_before_its_first_checkpoint_does_not_block_a_rerun(shapes, cache_dir,
                                                                          tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny(shapes, cache_dir, run, "train.epochs=1")
    # what a run killed during its first epoch leaves
    run.mkdir()
    for name in ("run.json", "config.yaml", "train.log"):
        (run / name).write_text("{}")
    (run / f".last.pt.{2**22 + 12345}.tmp").write_bytes(b"half")
    assert main(["train", "--resume", "--run-dir", str(run)]) == 2
    assert "has no checkpoint yet" in one_error_line(capsys)
    assert main(["train", *args]) == 0  # the same command again starts it over
    assert (run / "last.pt").is_file() and not list(run.glob(".*.tmp"))
    # killed while writing its very first file: only a temporary run record
    other = tmp_path / "other"
    other.mkdir()
    (other / f".run.json.{2**22 + 12345}.tmp").write_text("{")
    assert main(["train", *tiny(shapes, cache_dir, other, "train.epochs=1")]) == 0
    # a run record is the first thing a run writes, so a kill at any later instant is recognised
    import mlrpl.engine.rundir as rd
    fresh = tmp_path / "fresh"
    assert rd.prepare_run_dir(fresh, overwrite=False, resume=False)
    assert [p.name for p in fresh.iterdir()] == ["run.json"]


def test_metrics_and_run_record_name_left_out_classes_and_word_vectors(shapes, cache_dir,
                                                                      tmp_path, emb):
    import hashlib

    from mlrpl.data.synthetic import make_shapes_dataset
    root = make_shapes_dataset(tmp_path / "d", n_train=24, n_val=3, size=64, num_classes=6)
    run = tmp_path / "r"
    Trainer(load_config(None, tiny(root, cache_dir, run, "train.epochs=1", *HST[:4],
                                   f"data.embeddings={emb}"))).fit()
    metrics = json.loads((run / "metrics.json").read_text())
    from mlrpl.data import read_dataset
    val = read_dataset("yolo", root, "val")
    absent = [c for c, has in zip(val.classes, (val.labels == 1).any(0)) if not has]
    assert absent and metrics["classes_left_out_of_mAP"] == absent
    record = json.loads((run / "run.json").read_text())
    wv = record["word_vectors"]
    assert wv["kind"] == "file" and wv["sha256"] == hashlib.sha256(emb.read_bytes()).hexdigest()
    assert metrics["word_vectors"] == wv
    assert "word vectors: " in (run / "train.log").read_text()
    assert record["checkpoints"] == {"last": 1, "best": 1}


def test_skipped_images_are_listed(tmp_path, cache_dir):
    from mlrpl.data.synthetic import make_shapes_dataset
    root = make_shapes_dataset(tmp_path / "d", n_train=16, n_val=8, size=64, num_classes=4)
    bad = sorted((root / "images" / "train").iterdir())[2]
    bad.write_bytes(b"junk")
    run = tmp_path / "r"
    Trainer(load_config(None, tiny(root, tmp_path / "c", run, "train.epochs=1",
                                   "data.on_bad_image=skip"))).fit()
    item = f"images/train/{bad.name}"
    assert json.loads((run / "metrics.json").read_text())["skipped_images"] == \
        {"train": [item], "eval": []}
    assert json.loads((run / "run.json").read_text())["skipped_images"]["train"] == [item]
    assert (run / "skipped_images.txt").read_text() == f"train\t{item}\n"


def test_best_pt_lagging_after_a_kill_is_repaired_and_a_lost_best_is_reported(reference,
                                                                              tmp_path, capsys):
    ref, _ = reference["pbce"]
    run = tmp_path / "run"
    run.mkdir()
    for name in ("run.json", "config.yaml", "mask.npy", "mask.provenance.json", "summary.csv"):
        (run / name).write_bytes((ref / name).read_bytes())
    last = torch.load(ref / "last.pt", weights_only=True)
    assert last["best"]["epoch"] + 1 == last["epoch"]  # this run improved at its last epoch
    (run / "last.pt").write_bytes((ref / "last.pt").read_bytes())
    # killed between the two writes of the first epoch: no best.pt at all
    assert main(["train", "--resume", "--run-dir", str(run)]) == 0
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == last["epoch"]
    assert "best.pt repaired" in (run / "train.log").read_text()
    # a best.pt of another epoch whose weights are nowhere: reported, not papered over
    older = dict(last, epoch=1)
    torch.save(older, run / "best.pt")
    bad = dict(last, best={"epoch": 1, "mAP": 50.0})  # the run claims epoch 2 was best
    torch.save(bad, run / "last.pt")
    assert main(["train", "--resume", "--run-dir", str(run)]) == 2
    assert "whose weights are in no checkpoint" in one_error_line(capsys)


# ---- kills at fixed points --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method, fault", [
    ("pbce", "train.step:9"),                    # mid-epoch 2 (6 steps an epoch)
    ("pbce", "checkpoint.between_renames:1"),    # last.pt of epoch 1 written, best.pt not yet
    ("pbce", "checkpoint.write:2"),              # epoch 2's last.pt half-written
    ("hst", "prototypes:1"),                     # the prototype pass of epoch 2 (E0)
])
def test_kill_at_a_fixed_point_resumes_exactly(reference, shapes, tmp_path, method, fault):
    ref, extra = reference[method]
    run = tmp_path / "run"
    args = tiny(shapes, ref.parent / "cache", run, *extra)
    r = cli(["train", *args], fault=fault)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    if fault.startswith("checkpoint.write"):
        assert list(run.glob(".last.pt.*.tmp"))  # what the kill left
    r = cli(["train", "--resume", "--run-dir", str(run)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(ref, run)


def test_the_environment_alone_arms_no_fault(reference, shapes, tmp_path, monkeypatch):
    """MLRPL_FAULT (what used to arm a point) left set in a shell kills nothing."""
    ref, extra = reference["pbce"]
    run = tmp_path / "run"
    monkeypatch.setenv("MLRPL_FAULT", "train.step:1")
    r = cli(["train", *tiny(shapes, ref.parent / "cache", run, *extra)])
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(ref, run)


@pytest.mark.slow
def test_kill_during_caching_leaves_no_temp_and_a_rerun_finishes(reference, shapes, tmp_path):
    ref, extra = reference["pbce"]
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = tiny(shapes, cache, run, *extra)
    r = cli(["train", *args, "train.eval_batch_size=8"], fault="cache.batch:2")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert [p for p in cache.iterdir() if p.name.endswith(".tmp")]  # the killed entry
    r = cli(["train", *args])  # the same command: no checkpoint yet, so it starts over
    assert r.returncode == 0, r.stderr[-3000:]
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]
    assert_same_run(ref, run)


# ---- distributed evaluation: 2 and 3 processes, uneven shards ----------------------------------------
class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, 20).reshape(5, 4))

    def forward(self, batch):
        return {"logits": batch["features"] @ self.w}


class _Items(torch.utils.data.Dataset):
    def __init__(self, n):
        self.x = torch.arange(n * 5, dtype=torch.float32).reshape(n, 5).sin()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "index": i}


def _eval_worker(rank, world, init, n, batch, out):
    import numpy as np
    import torch.distributed as tdist

    from mlrpl.engine.evaluate import predict_logits
    tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        scores = predict_logits(_Linear(), _Items(n), batch, "cpu")
        if rank == 0:
            np.save(out, scores)
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("world, n, batch", [(2, 7, 2), (3, 10, 3)])
def test_distributed_evaluation_equals_one_process(tmp_path, world, n, batch):
    import numpy as np
    import torch.multiprocessing as mp

    from mlrpl.engine.evaluate import predict_logits
    single = predict_logits(_Linear(), _Items(n), batch, "cpu")
    out = tmp_path / "scores.npy"
    mp.spawn(_eval_worker, args=(world, f"file://{tmp_path / 'init'}", n, batch, str(out)),
             nprocs=world, join=True)
    # every item once, in dataset order, although the sampler pads the last shards with repeats
    assert np.array_equal(np.load(out), single)


def test_too_little_disk_for_the_checkpoints_is_one_error_before_training(shapes, cache_dir,
                                                                         tmp_path, capsys,
                                                                         monkeypatch):
    import collections
    import shutil
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))
    run = tmp_path / "run"
    assert main(["train", *tiny(shapes, cache_dir, run)]) == 2
    assert "not enough free space for the checkpoints" in one_error_line(capsys)
    assert not run.exists()


def test_a_full_disk_while_writing_a_checkpoint_is_one_error(shapes, cache_dir, tmp_path, capsys,
                                                             monkeypatch):
    import mlrpl.engine.checkpoint as ck
    real = torch.save

    def full(obj, fh, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ck.torch, "save", full)
    run = tmp_path / "run"
    try:
        assert main(["train", *tiny(shapes, cache_dir, run, "train.epochs=1")]) == 2
    finally:
        monkeypatch.setattr(ck.torch, "save", real)
    assert "last.pt: no space left on the device (disk full)" in one_error_line(capsys)
    assert not list(run.glob(".*.tmp"))


def test_resume_after_the_final_checkpoint_rewrites_stale_run_files(reference, tmp_path):
    # killed after the last epoch's checkpoints, before metrics.json and the run record caught up
    ref, _ = reference["pbce"]
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "mask.npy", "mask.provenance.json", "last.pt", "best.pt"):
        (run / name).write_bytes((ref / name).read_bytes())
    record = json.loads((ref / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(dict(record, checkpoints={"last": 2, "best": 2})))
    stale = json.loads((ref / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps(dict(stale, best_epoch=1, epochs=2)))
    assert main(["train", "--resume", "--run-dir", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == stale["best_epoch"] and metrics["epochs"] == 3
    assert json.loads((run / "run.json").read_text())["checkpoints"] == {"last": 3, "best": 3}
    assert summary(run) == summary(ref)
