"""Writing files without losing or half-writing anything.

Every writer of the library follows the same rules:

* an output path is checked **before** the work that produces it (its folder exists and is
  writable, an existing file is replaced only when asked: ``--force``);
* the content goes to a temporary name in the same folder (``.<name>.<pid>.tmp``), then is
  renamed over the target, so a reader never sees half a file;
* temporary files and folders left by a killed writer are removed by the next run
  (:func:`remove_stale_temps`: only those whose process is gone);
* a full or read-only disk is one :class:`~mlrpl.errors.MlrplError` naming the path;
* a Ctrl-C that arrives while a file is written waits until the file is whole
  (:func:`interrupts_deferred`): a library writing through a callback (``torch.save``) would
  otherwise turn the KeyboardInterrupt into an error of its own.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from mlrpl.errors import MlrplError

_TMP = re.compile(r"^\.(?P<name>.+?)(\.(?P<pid>\d+))?\.tmp$")


class DiskError(MlrplError):
    """A file could not be written: full disk, read-only folder, missing folder."""


def temp_name(path: str | Path) -> Path:
    """The temporary name a writer of `path` uses in the same folder (``.<name>.<pid>.tmp``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def remove_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete ``.<name>.<pid>.tmp`` files and folders in `folder` whose process is gone (and
    ``.<name>.tmp`` ones, written by earlier versions); with `name`, only the temporaries of that
    output.

    Returns what was removed. A temp of a live process (another run writing now) is left."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TMP.match(p.name)
        if m is None or (m["pid"] is not None and pid_alive(int(m["pid"]))):
            continue  # a live writer's (a temp without a pid is an older writer's, never live)
        if name is not None and (m["name"] != name or m["pid"] is None):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def os_error_message(e: OSError, path) -> str:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return f"{path}: no space left on the device (disk full); free some space and run again"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: not writable ({e.strerror}); choose a folder you can write to"
    if e.errno == errno.ENOENT:
        return f"{path}: folder does not exist"
    if e.errno == errno.ENOTDIR:
        return f"{path}: a part of this path is a file, not a folder"
    return f"{path}: cannot write ({e.strerror or e})"


@contextmanager
def disk_errors(path):
    """Turn an OSError raised while writing `path` into one clear DiskError."""
    try:
        yield
    except OSError as e:
        if isinstance(e, MlrplError):
            raise
        raise DiskError(os_error_message(e, path)) from None


def check_writable_dir(folder: str | Path, what: str = "folder", create: bool = False) -> Path:
    """`folder` exists (or is created when `create`), is a folder, and a file can be made in it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DiskError(f"{folder}: the {what} is a file, not a folder")
    if not folder.exists():
        if not create:
            raise DiskError(f"{folder}: the {what} does not exist")
        with disk_errors(folder):
            folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-probe.{os.getpid()}.tmp"
    try:
        with open(probe, "wb") as fh:
            fh.write(b"x")
    except OSError as e:
        raise DiskError(os_error_message(e, folder)) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return folder


def check_free_space(folder: str | Path, need_bytes: int, what: str = "output") -> None:
    """An error when the file system holding `folder` has less than `need_bytes` free."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < need_bytes:
        raise DiskError(f"{folder}: not enough free space for the {what} (needs about "
                        f"{_size(need_bytes)}, {_size(free)} free); free some space and run again")


def check_output(path, force: bool = False, what: str = "output file") -> Path:
    """Check an output path before the work that produces it: its folder exists and is writable,
    and it does not exist yet unless `force`."""
    path = Path(path)
    if path.is_dir():
        raise DiskError(f"{path}: the {what} is a folder; give a file name")
    if path.exists() and not force:
        raise DiskError(f"{path}: refusing to overwrite an existing file (pass --force to "
                        f"replace it)")
    check_writable_dir(path.parent if str(path.parent) else Path("."), f"folder of the {what}")
    return path


@contextmanager
def interrupts_deferred():
    """Hold back SIGINT (Ctrl-C) for the duration of the block and raise the KeyboardInterrupt
    after it, so a file being written is finished (or its temporary removed) first.

    Only where Python's own handler is installed, in the main thread: a program with its own
    SIGINT handler, or a thread, keeps what it had. ``torch.save`` writes through a Python
    callback, and an interrupt raised inside it comes out as ``RuntimeError: ... unexpected
    pos``, which a caller cannot tell from a real failure; deferring keeps it an interrupt."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def atomic_write(path, write, mode: str = "wb", keep_old: bool = False,
                 before_rename=None, **open_kw) -> Path:
    """Call ``write(fh)`` on a temporary file beside `path`, fsync, rename over `path`.

    `keep_old`: an existing `path` (a user's file replaced with ``--force``) is moved aside to
    ``<name>.replaced-<time>`` just before the rename, never deleted; the move is logged.
    `before_rename`: called between the fsync and the rename (the fault suite's kill point).
    Temporary files of `path` left by killed writers are removed first. A Ctrl-C during the
    write takes effect once the file is renamed into place (:func:`interrupts_deferred`)."""
    path = Path(path)
    remove_stale_temps_of(path)
    tmp = temp_name(path)
    try:
        with interrupts_deferred(), disk_errors(path):
            with open(tmp, mode, **open_kw) as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            if before_rename is not None:
                before_rename()
            if keep_old and path.exists():
                aside = move_aside(path)
                import logging
                logging.getLogger("mlrpl").warning(f"--force: the earlier {path.name} was moved "
                                                   f"to {aside.name}")
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path, text: str, keep_old: bool = False) -> Path:
    return atomic_write(path, lambda fh: fh.write(text), mode="w", keep_old=keep_old)


def save_npy(path, array, keep_old: bool = False) -> Path:
    """``numpy.save`` atomically (no pickled objects)."""
    import numpy as np
    return atomic_write(path, lambda fh: np.save(fh, np.asarray(array), allow_pickle=False),
                        keep_old=keep_old)


def move_aside(path, tag: str = "replaced") -> Path:
    """Rename `path` (a file or folder) to ``<name>.<tag>-<YYYYmmdd-HHMMSS>`` beside it (``-2``,
    ``-3``... when that name is taken) and return the new path. Nothing is deleted."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.{tag}-{stamp}")
    n = 1
    while aside.exists() or aside.is_symlink():
        n += 1
        aside = path.with_name(f"{path.name}.{tag}-{stamp}-{n}")
    with disk_errors(path):
        os.rename(path, aside)
    return aside


def remove_stale_temps_of(path) -> list[Path]:
    """Delete the temporary files and folders that killed writers of `path` left beside it
    (``.<name>.<pid>.tmp`` whose process is gone); those of other names are left alone."""
    path = Path(path)
    return remove_stale_temps(path.parent if str(path.parent) else Path("."), path.name)


def make_temp_dir(path) -> Path:
    """A new, empty temporary folder beside `path` (``.<name>.<pid>.tmp``, removed by
    :func:`remove_stale_temps` once this process is gone) to build `path` in."""
    tmp = temp_name(path)
    with disk_errors(tmp):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)      # this process's own earlier, unfinished one
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        tmp.mkdir()
    return tmp


def rename_into_place(src, dest, raw_errors: bool = False) -> Path:
    """Rename `src` (a file, or a folder onto a missing or empty folder) to `dest` in one step.
    An OSError becomes one DiskError, or stays an OSError with `raw_errors` (for a caller that
    handles a lost race itself: another process renamed the same entry first)."""
    dest = Path(dest)
    if raw_errors:
        os.replace(src, dest)
        return dest
    with disk_errors(dest):
        os.replace(src, dest)
    return dest


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
