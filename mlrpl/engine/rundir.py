"""The run directory: its file names, how each file is written and read back, and the run record.

One leaf used by the trainer (writes), the sweep (reads and resumes) and the reports (read)::

    <run.dir>/
      run.json               the run record: library version, git commit + dirty flag, the
                             method's code digest, when it started
      config.yaml            the resolved config
      mask.npy, mask.provenance.json    the partial labels trained on
      summary.csv            one row per epoch
      train.log, tb/         the text log, TensorBoard events
      last.pt, best.pt       checkpoints
      metrics.json           last and best epoch
      sweep_run.json, error.txt, per_class_last.csv   written by a sweep

Everything here imports nothing of the engine but the library version.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import yaml

from mlrpl.errors import ConfigError

RUN_RECORD = "run.json"
CONFIG = "config.yaml"
MASK = "mask.npy"
MASK_PROVENANCE = "mask.provenance.json"
SUMMARY = "summary.csv"
LOG = "train.log"
TENSORBOARD = "tb"
LAST = "last.pt"
BEST = "best.pt"
METRICS = "metrics.json"
SWEEP_RECORD = "sweep_run.json"
ERROR = "error.txt"
PER_CLASS = "per_class_last.csv"


# ---- plain files ----------------------------------------------------------------------------------
def read_json(path) -> dict:
    """A JSON object, or {} when the file is absent or unreadable (reports never fail on one)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def write_json(path, obj) -> None:
    """Write to a temporary name in the same directory, then rename."""
    path = Path(path)
    from mlrpl.files import atomic_write_text
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1, default=_plain))


def _plain(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def read_config(run_dir) -> dict:
    """The saved ``config.yaml`` as a dict ({} when absent or unreadable)."""
    f = Path(run_dir) / CONFIG
    if not f.is_file():
        return {}
    try:
        return yaml.safe_load(f.read_text()) or {}
    except yaml.YAMLError:
        return {}


def number(v):
    """A CSV cell as int, float or the string itself."""
    if isinstance(v, (int, float)) or v is None:
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    return int(f) if f.is_integer() and "." not in str(v) and "e" not in str(v).lower() else f


def read_summary(run_dir) -> list[dict]:
    """``summary.csv`` as a list of dicts of numbers (one per epoch; empty when absent)."""
    f = Path(run_dir) / SUMMARY
    if not f.is_file():
        return []
    with open(f, newline="") as fh:
        return [{k: number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def write_summary(run_dir, history: list[dict]) -> None:
    """One row per epoch; the columns are the union of every row's keys, in order of appearance."""
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    from mlrpl.files import atomic_write

    def write(fh):
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for row in history:
            w.writerow({k: _fmt(row.get(k, "")) for k in cols})
    atomic_write(Path(run_dir) / SUMMARY, write, mode="w")


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


# ---- the directory itself -------------------------------------------------------------------------
# Files and folders a run writes before its first checkpoint: a directory holding only these
# (and no last.pt) is a run that never got anywhere, started over by the next invocation.
_EARLY = {RUN_RECORD, CONFIG, MASK, MASK_PROVENANCE, LOG, TENSORBOARD, SUMMARY, METRICS}


def is_run_dir(path: Path) -> bool:
    """A directory written by mlrpl: it holds the run record (or, for runs made before the run
    record existed, a saved config beside a checkpoint)."""
    path = Path(path)
    return (path / RUN_RECORD).is_file() or ((path / CONFIG).is_file() and (path / LAST).is_file())


def _never_checkpointed(path: Path) -> bool:
    names = {p.name for p in path.iterdir() if not p.name.endswith(".tmp")}
    return (path / RUN_RECORD).is_file() and LAST not in names and names <= _EARLY


def prepare_run_dir(path: Path, overwrite: bool, resume: bool) -> bool:
    """Check and create the run directory before any work; returns True when this invocation
    starts it afresh (so that a failure before the first checkpoint can remove it again).

    * never clobbered unless asked; ``run.overwrite=true`` replaces only an mlrpl run directory
      and moves it aside (``<dir>.replaced-<time>``), it never deletes;
    * a run that stopped before its first checkpoint is started over;
    * a file where the directory should be, or a folder that cannot be written, is one error;
    * temporary files of killed writers are removed."""
    from mlrpl.files import check_writable_dir, remove_stale_temps
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run.dir {path} is a file, not a directory; choose another run.dir")
    if path.is_dir() and any(path.iterdir()):
        check_writable_dir(path, "run directory")
        remove_stale_temps(path)
    if path.is_dir() and any(path.iterdir()):
        if resume:
            if not (path / LAST).is_file():
                if _never_checkpointed(path):
                    raise ConfigError(f"--resume: run directory {path} has no checkpoint yet (the "
                                      f"run stopped before its first epoch ended); run the same "
                                      f"command without --resume to start it over")
                raise ConfigError(f"--resume: {path / LAST} not found; {path} is not a run that "
                                  f"can be resumed")
            return False
        if _never_checkpointed(path):
            shutil.rmtree(path)  # only files mlrpl wrote before a first checkpoint
        elif not overwrite:
            raise ConfigError(f"run directory {path} already exists and is not empty; pass "
                              f"--resume to continue it, run.overwrite=true to replace it, or "
                              f"choose another run.dir")
        elif not is_run_dir(path):
            raise ConfigError(f"run.overwrite=true: {path} is not an mlrpl run directory (no "
                              f"{RUN_RECORD}); refusing to replace it; choose another run.dir")
        else:
            aside = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
            n = 1
            while aside.exists():
                n += 1
                aside = path.with_name(f"{path.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
            path.rename(aside)
            import logging
            logging.getLogger("mlrpl").warning(f"run.overwrite=true: the previous run was moved "
                                               f"to {aside}")
    elif resume:
        raise ConfigError(f"--resume: run directory {path} does not exist or is empty")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    check_writable_dir(parent, "folder of run.dir")
    path.mkdir(parents=True, exist_ok=True)
    # The run record first, before any other file: a directory killed at any later instant is
    # recognisably mlrpl's (and, without a checkpoint, started over by the next invocation).
    write_run_record(path)
    return True


# ---- which code made a run ------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """The library version, and the git commit and dirty flag of the checkout the library is
    imported from (None when it is not a git checkout, e.g. an installed wheel)."""
    from mlrpl.version import __version__
    out = {"mlrpl_version": __version__, "git_commit": None, "git_dirty": None}
    top = Path(__file__).resolve().parents[2]
    if not (top / ".git").exists():
        return out
    try:
        commit = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(top), "status", "--porcelain", "--", "mlrpl"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return out
    out.update(git_commit=commit, git_dirty=bool(status.strip()))
    return out


def write_run_record(run_dir, **fields) -> dict:
    """Create or update ``run.json``: the code version and method digest when it is created,
    then whatever the caller adds (kept across resumes)."""
    path = Path(run_dir) / RUN_RECORD
    rec = read_json(path)
    if not rec:
        rec = {"format": "mlrpl-run-v1", **code_version(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "pid": os.getpid()}
    rec.update(fields)
    write_json(path, rec)
    return rec


def read_run_record(run_dir) -> dict:
    return read_json(Path(run_dir) / RUN_RECORD)
