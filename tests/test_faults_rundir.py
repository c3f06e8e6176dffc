"""The fault suite, run directories: one run per directory, a resume that keeps its settings, an
honest best epoch, and the small things a new user trips over (seed range, Ctrl-C, --version).
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlrpl.cli import main
from mlrpl.engine import rundir
from tests.test_engine import rows, tiny
from tests.test_faults import one_error_line

REPO = Path(__file__).resolve().parents[1]
_HOLD = ("import sys, time\n"
         "from mlrpl.engine.rundir import RunLock\n"
         "RunLock(sys.argv[1]).acquire()\n"
         "print('locked', flush=True)\n"
         "time.sleep(120)\n")


def _holder(run: Path) -> subprocess.Popen:
    """Another process holding the run directory's lock (as a running `mlrpl train` does)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE,
                         text=True, env=env)
    assert p.stdout.readline().strip() == "locked"
    return p


# ---- one process per run directory ------------------------------------------------------------
def test_a_second_run_on_a_locked_directory_is_refused_and_the_lock_dies_with_its_holder(
        shapes, cache_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny(shapes, cache_dir, run, "train.epochs=1")
    holder = _holder(run)
    try:
        assert main(["train", *args]) == 2
        line = one_error_line(capsys)
        assert f"run directory {run} is in use by another mlrpl process (pid {holder.pid}" in line
        assert "choose another run.dir" in line
        assert not run.exists()  # the refused run wrote nothing
        assert main(["train", *args, "run.overwrite=true"]) == 2  # not even when asked to replace
        one_error_line(capsys)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["train", *args]) == 0  # a killed holder leaves no lock behind
    assert not (tmp_path / ".run.lock").exists()  # released at the end of the run


def test_the_lock_is_reentrant_within_a_process_and_released_by_its_last_holder(tmp_path):
    a, b = rundir.RunLock(tmp_path / "r"), rundir.RunLock(tmp_path / "r")
    a.acquire()
    b.acquire()  # the same process (a sweep, then its trainer)
    b.release()
    assert (tmp_path / ".r.lock").exists()
    holder_line = json.loads((tmp_path / ".r.lock").read_text())
    assert holder_line["pid"] == os.getpid()
    a.release()
    assert not (tmp_path / ".r.lock").exists()


def test_a_sweep_reports_a_run_in_use_and_leaves_it_alone(tmp_path):
    from mlrpl.experiments.sweep import execute_run

    class Run:
        name, method, method_name, p, seed = "pbce_p0.5_s0", "pbce", "pbce", 0.5, 0

        def dir(self, out):
            return Path(out) / "runs" / self.name

    class Spec:
        out = tmp_path / "sweep"

    logged = []
    run_dir = Run().dir(Spec.out)
    holder = _holder(run_dir)
    try:
        rec = execute_run(Spec(), Run(), object(), logged.append)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert rec["status"] == "failed" and rec["action"] == "busy"
    assert "in use by another mlrpl process" in logged[0]
    assert not run_dir.exists()


# ---- resume keeps the run's settings ------------------------------------------------------------
@pytest.fixture()
def one_epoch_run(shapes, cache_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *tiny(shapes, cache_dir, run, "train.epochs=1")]) == 0
    return run


@pytest.mark.parametrize("override, shown", [
    ("optim.lr=0.5", "optim.lr 0.01 -> 0.5"),
    ("data.known_proportion=0.3", "data.known_proportion 0.5 -> 0.3"),
    ("seed=3", "seed 0 -> 3"),
    ("data.image_size=32", "data.image_size 64 -> 32"),
    ("method.name=ssgrl", "method.name 'pbce' -> 'ssgrl'"),
])
def test_resume_refuses_a_change_that_alters_the_run(one_epoch_run, capsys, override, shown):
    run = one_epoch_run
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["train", "--resume", "--run-dir", str(run), override, "train.epochs=2"]) == 2
    line = one_error_line(capsys)
    assert f"--resume: {run} was trained with other settings than these ({shown}" in line
    assert "start a new run in another run.dir" in line
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before  # the record still describes the run that was trained


def test_resume_accepts_and_records_the_safe_changes(one_epoch_run, capsys):
    run = one_epoch_run
    assert main(["train", "--resume", "--run-dir", str(run), "train.epochs=2",
                 "train.threads=1"]) == 0
    rec = rundir.read_run_record(run)
    assert rec["resumes"][-1]["after_epoch"] == 1
    assert rec["resumes"][-1]["changed"] == {"train.epochs": [1, 2], "train.threads": [None, 1]}
    assert rundir.read_config(run)["train"]["epochs"] == 2
    assert [int(r["epoch"]) for r in rows(run)] == [1, 2]


def test_resume_refuses_more_epochs_under_a_schedule_that_depends_on_them(shapes, cache_dir,
                                                                         tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *tiny(shapes, cache_dir, run, "train.epochs=1", "sched.name=cosine")]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--run-dir", str(run), "train.epochs=3"]) == 2
    assert "train.epochs 1 -> 3" in one_error_line(capsys)


# ---- the best epoch, honestly ---------------------------------------------------------------------
def test_best_epoch_on_the_evaluation_split_is_labelled_optimistic(one_epoch_run, capsys):
    m = json.loads((one_epoch_run / "metrics.json").read_text())
    assert m["epoch_numbering"] == "from 1" and m["best_epoch"] == 1 and m["epochs"] == 1
    assert m["best_chosen_on"].startswith("eval: ") and "optimistic" in m["best_chosen_on"]
    assert rundir.best_epoch_number(m) == 1
    assert rundir.best_epoch_number({"best_epoch": 0, "best": {"mAP": 1}}) == 1  # older files


def test_train_holdout_selects_without_the_evaluation_split_and_stops_early(shapes, cache_dir,
                                                                           tmp_path, capsys):
    run = tmp_path / "run"
    # A learning rate too small to change anything: the held-out mAP never improves after the
    # first epoch, so early_stop=1 ends the run after epoch 2.
    assert main(["train", *tiny(shapes, cache_dir, run, "train.epochs=6", "optim.lr=1e-12",
                                "train.select=train_holdout", "train.select_holdout=0.25",
                                "train.early_stop=1")]) == 0
    out = capsys.readouterr().out
    assert "(chosen on held-out training labels); stopped early" in out
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["stopped_early"] and m["best_epoch"] == 1
    assert m["best_chosen_on"].startswith("train_holdout: mAP on the known labels of 12 training")
    r = rows(run)
    assert [int(x["epoch"]) for x in r] == [1, 2] and "select_mAP" in r[0]
    log = (run / "train.log").read_text()
    assert "12 of 48 training images held out of training" in log
    assert "| 36 train / 24 eval images" in log
    # finished: a resume trains nothing more, a sweep counts it as done
    from mlrpl.experiments.sweep import run_state
    assert run_state(run, 6) == "finished"
    assert main(["train", "--resume", "--run-dir", str(run)]) == 0
    assert len(rows(run)) == 2


def test_threads_are_printed_and_recorded(one_epoch_run):
    rec = rundir.read_run_record(one_epoch_run)
    assert isinstance(rec["threads"], int) and rec["threads"] >= 1
    assert "thread(s) (train.threads=null: all cores)" in (one_epoch_run / "train.log").read_text()


# ---- small things ---------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["seed=-1", "data.mask_seed=-2", "seed=4294967296"])
def test_a_seed_outside_numpys_range_is_one_line(shapes, cache_dir, tmp_path, capsys, key):
    assert main(["train", *tiny(shapes, cache_dir, tmp_path / "run", key)]) == 2
    assert "expected an integer in [0, 2**32)" in one_error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_the_run_resumes(shapes, cache_dir, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "mlrpl", "train",
                          *tiny(shapes, cache_dir, run, "train.epochs=200")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         # a suite started in the background inherits an ignored SIGINT, and
                         # Python then installs no KeyboardInterrupt handler: restore it
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "last.pt").is_file():
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("mlrpl: interrupted; the run directory keeps "
                                                   "its last finished epoch")
    assert not (tmp_path / ".run.lock").exists() or not _locked(run)
    assert main(["train", "--resume", "--run-dir", str(run), "train.stop_after_epochs=1"]) == 0


def test_a_ctrl_c_inside_a_checkpoint_write_waits_for_the_file(tmp_path):
    """The Ctrl-C arrives while torch.save is writing (the case the test above hits by chance):
    the checkpoint is finished and renamed, then the KeyboardInterrupt comes out, not torch's
    RuntimeError ("unexpected pos") that made an interrupted run exit 1."""
    import torch
    from mlrpl.utils.files import atomic_write
    from mlrpl.utils.torchio import safe_torch_load
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's KeyboardInterrupt here (a suite started with it "
                    "ignored)")
    state = {"w": torch.arange(200_000, dtype=torch.float32)}
    target = tmp_path / "last.pt"

    class Interrupting:  # a file object whose third write delivers a Ctrl-C to this process
        def __init__(self, fh):
            self.fh, self.writes = fh, 0

        def write(self, b):
            self.writes += 1
            if self.writes == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return self.fh.write(b)

        def flush(self):
            self.fh.flush()

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, lambda fh: torch.save(state, Interrupting(fh)))
    assert torch.equal(safe_torch_load(target)["w"], state["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # without deferring, the same interrupt is torch's error and there is no file
    target.unlink()
    from mlrpl.utils import files
    real = files.interrupts_deferred
    try:
        files.interrupts_deferred = contextlib.nullcontext
        with pytest.raises(RuntimeError, match="unexpected pos"):
            atomic_write(target, lambda fh: torch.save(state, Interrupting(fh)))
    finally:
        files.interrupts_deferred = real
    assert not target.exists()


def _locked(run: Path) -> bool:
    try:
        rundir.RunLock(run).acquire().release()
        return False
    except rundir.RunLockedError:
        return True


def test_version_and_train_help_list_methods_plugins_and_presets(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    from mlrpl.version import __version__
    assert capsys.readouterr().out.strip() == f"mlrpl {__version__}"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for word in ("methods (method.name=...)", "sarb", "clsl", "plug-ins", "logicmix",
                 "preset configs", "coco128_pbce_cpu.yaml"):
        assert word in out, word
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "mlrpl VERB --help" in top


# ---- --force never deletes a file mlrpl did not write -------------------------------------------
def test_force_moves_a_replaced_file_aside(shapes, tmp_path, capsys):
    out = tmp_path / "labels.csv"
    out.write_text("a user's own spreadsheet\n")
    stale = tmp_path / ".labels.csv.999999999.tmp"   # a killed writer's (no such process)
    stale.write_text("half")
    ds = ["--dataset", "yolo", "--root", str(shapes), "--split", "train"]
    assert main(["data", "convert", *ds, "--out", str(out)]) == 2
    assert "refusing to overwrite" in one_error_line(capsys)
    assert main(["data", "convert", *ds, "--out", str(out), "--force"]) == 0
    [aside] = tmp_path.glob("labels.csv.replaced-*")
    assert aside.read_text() == "a user's own spreadsheet\n"
    assert out.read_text().startswith("image,")
    assert not stale.exists()  # the next writer of the same output removed it
    mask = tmp_path / "mask.npy"
    mask.write_bytes(b"not mlrpl's")
    assert main(["simulate", *ds, "--known", "0.5", "--out", str(mask), "--force"]) == 0
    [aside] = tmp_path.glob("mask.npy.replaced-*")
    assert aside.read_bytes() == b"not mlrpl's"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_every_rename_goes_through_the_files_module():
    """One implementation of the atomic write, the rename into place and the move aside."""
    import re
    pattern = re.compile(r"os\.(replace|rename)\(|\.rename\(|\b(tmp|tmp_\w+)\.replace\(")
    offenders = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "mlrpl").rglob("*.py")
                 if p.name != "files.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
