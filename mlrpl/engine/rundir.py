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

A run directory belongs to one process at a time: :class:`RunLock` holds an OS-level lock on
``<parent>/.<name>.lock`` (beside the directory, so that it survives the directory being moved
aside or started over) for the life of the run; the lock dies with its process, so a killed run
never leaves a directory locked.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not a POSIX system: runs are not locked
    fcntl = None

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
    from mlrpl.utils.files import atomic_write_text
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
    """``summary.csv`` as a list of dicts of numbers (one per epoch; empty when absent), epochs
    counted from 1 (files of earlier releases, which counted from 0, are renumbered)."""
    f = Path(run_dir) / SUMMARY
    if not f.is_file():
        return []
    with open(f, newline="") as fh:
        rows = [{k: number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]
    if rows and rows[0].get("epoch") == 0:
        for row in rows:
            row["epoch"] = int(row["epoch"]) + 1
    return rows


def best_epoch_number(metrics: dict) -> int | None:
    """The best epoch of a ``metrics.json``, counted from 1 (files of earlier releases counted
    from 0 and say nothing of it)."""
    best = metrics.get("best_epoch")
    if best is None or not metrics.get("best"):
        return None
    return int(best) + (0 if metrics.get("epoch_numbering") == "from 1" else 1)


def write_summary(run_dir, history: list[dict]) -> None:
    """One row per epoch; the columns are the union of every row's keys, in order of appearance."""
    cols: list[str] = []
    for row in history:
        cols += [k for k in row if k not in cols]
    from mlrpl.utils.files import atomic_write

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
    from mlrpl.utils.files import check_writable_dir, remove_stale_temps
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
            from mlrpl.utils.files import move_aside
            aside = move_aside(path, "replaced")
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


# ---- what a run's config may change without changing the run ------------------------------------
# Keys that say where and how fast a run goes, not what it computes: a sweep may differ in them
# from an existing run, and ``--resume`` may change them (recorded in run.json).
SAFE_KEYS = ("run.", "train.stop_after_epochs", "train.device", "train.threads", "train.progress",
             "train.tensorboard", "train.eval_batch_size", "data.num_workers", "data.root",
             "model.cache_dir")


def flat(d, prefix="") -> dict:
    """A nested dict as ``{"a.b.c": value}``."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_drift(saved: dict, new: dict, safe=SAFE_KEYS) -> list[str]:
    """Keys whose value differs between a run's saved config and a new config for it, leaving
    out the `safe` ones.

    A key the saved config lacks is not drift: it was added to the schema after the run was made,
    and a new key's default keeps the earlier behaviour. A key the new config lacks is."""
    from mlrpl.data.readers import with_recorded_defaults  # a record made before they were
    a, b = flat(with_recorded_defaults(saved)), flat(with_recorded_defaults(new))
    return [k for k in sorted(set(a) | set(b)) if not k.startswith(tuple(safe)) and k in a
            and a.get(k) != b.get(k)]


def resume_changes(saved: dict, new: dict) -> tuple[dict, dict]:
    """What a ``--resume`` would change: (refused, accepted), each ``{key: (old, new)}``.

    Accepted are the :data:`SAFE_KEYS` and ``train.epochs`` under a schedule that does not
    depend on the number of epochs (``sched.name`` none or step); everything else would make the
    run's record describe another run than the one its checkpoints hold."""
    from mlrpl.data.readers import with_recorded_defaults
    a, b = flat(with_recorded_defaults(saved)), flat(with_recorded_defaults(new))
    safe = SAFE_KEYS + (("train.epochs",) if a.get("sched.name") in ("none", "step") else ())
    refused = {k: (a.get(k), b.get(k)) for k in config_drift(saved, new, safe)}
    accepted = {k: (a.get(k), b.get(k)) for k in sorted(set(a) & set(b))
                if k.startswith(safe) and a[k] != b[k] and not k.startswith("run.")
                and k != "train.stop_after_epochs"}
    return refused, accepted


# ---- one process per run directory ---------------------------------------------------------------
class RunLockedError(ConfigError):
    """The run directory is in use by another live process."""


_HELD: dict[str, list] = {}  # lock path -> [open file, count]: re-entrant within a process


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<parent>/.<name>.lock`` for the life of a run.

    ``acquire()`` refuses in one line, naming the holder (pid, host, start time, command), when
    another process holds it; the lock is re-entrant within a process (a sweep holds a run's lock
    while its trainer takes it again) and released by ``release()`` or when the process ends,
    however it ends."""

    def __init__(self, run_dir):
        run_dir = Path(run_dir)
        self.run_dir = run_dir
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.held = False

    def acquire(self) -> "RunLock":
        if self.held or fcntl is None:
            return self
        key = str(self.path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            self.held = True
            return self
        from mlrpl.utils.files import check_writable_dir
        parent = self.path.parent
        top = parent
        while not top.exists():
            top = top.parent
        check_writable_dir(top, "folder of run.dir")
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            fh = open(self.path, "a+")
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip()
                fh.close()
                raise RunLockedError(
                    f"run directory {self.run_dir} is in use by another mlrpl process"
                    f"{' (' + _describe_holder(holder) + ')' if holder else ''}; wait for it to "
                    f"end, or choose another run.dir") from None
            # The holder before us may have removed the file after we opened it: then our lock
            # is on a name nobody else sees; start again on the current file.
            try:
                same = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(sys.argv)[:300]}))
        fh.flush()
        _HELD[key] = [fh, 1]
        self.held = True
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        key = str(self.path.resolve())
        entry = _HELD.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _HELD[key]
        fh = entry[0]
        try:
            os.unlink(self.path)  # still ours: nobody else can hold it while we do
        except OSError:
            pass
        fh.close()

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _describe_holder(text: str) -> str:
    try:
        h = json.loads(text)
        return (f"pid {h['pid']} on {h['host']}, started {h['started']}: "
                f"{h.get('command', '?')}")
    except (ValueError, KeyError, TypeError):
        return text[:200]


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
