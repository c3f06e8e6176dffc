"""Saving and loading PyTorch files safely: atomic writes (:func:`atomic_save`, through
:func:`mlrpl.utils.files.atomic_write`) and ``torch.load(weights_only=True)`` with one clear error
for a file that holds code or is damaged (:func:`safe_torch_load`). Used for checkpoints, bundles
and weight files alike."""
from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import torch

from mlrpl.errors import MlrplError


def atomic_save(obj, path: str | Path, keep_old: bool = False) -> Path:
    """torch.save to a temporary file in the same directory, fsync, then rename
    (:func:`mlrpl.utils.files.atomic_write`; `keep_old` moves a replaced file aside)."""
    from mlrpl.utils import faults
    from mlrpl.utils.files import atomic_write
    return atomic_write(path, lambda fh: torch.save(obj, fh), keep_old=keep_old,
                        before_rename=lambda: faults.point("checkpoint.write"))


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy `src` to `dst` through a temporary name and a rename (``best.pt`` from ``last.pt``)."""
    from mlrpl.utils.files import atomic_write
    with open(src, "rb") as fin:
        return atomic_write(dst, lambda fh: shutil.copyfileobj(fin, fh, 1 << 20))


def safe_torch_load(path: str | Path, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(weights_only=True)``: tensors and plain values only, never code.

    A file holding other Python objects (a crafted pickle, a whole pickled model) or a damaged
    file is one MlrplError naming it; torch's advice to retry with ``weights_only=False`` is not
    repeated, since that would run whatever the file holds."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise MlrplError(f"{path}: not a readable {what}: {unreadable_reason(e)}") from None


def unreadable_reason(e: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line, without torch's advice."""
    text = str(e)
    m = re.search(r"unsupported GLOBAL ([\w.]+)", text, re.IGNORECASE) or \
        re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return (f"it holds a Python object ({m.group(1)}) besides tensors and plain values; "
                f"mlrpl loads only tensors and plain values, so it is refused unread")
    if isinstance(e, (pickle.UnpicklingError, EOFError, RuntimeError, ValueError)) or \
            "Weights only load failed" in text:
        return "the file is damaged or is not a PyTorch file (truncated or overwritten?)"
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
