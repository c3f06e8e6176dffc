"""Checkpoints: atomic writes, ``torch.load(weights_only=True)``-safe contents.

A checkpoint holds only tensors and plain Python values (dicts, lists, strings, numbers): the
resolved config as a dict, class names, the label encoding, preprocessing, the mask hash, the model
(with the method's state: banks, prototypes, thresholds), the optimiser, scheduler and scaler, RNG
states, and the per-epoch history, so that resume is exact.
"""
from __future__ import annotations

import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from mlrpl.errors import MlrplError

FORMAT = "mlrpl-checkpoint-v1"


def atomic_save(obj, path: str | Path, keep_old: bool = False) -> Path:
    """torch.save to a temporary file in the same directory, fsync, then rename
    (:func:`mlrpl.files.atomic_write`; `keep_old` moves a replaced file aside)."""
    from mlrpl import faults
    from mlrpl.files import atomic_write
    return atomic_write(path, lambda fh: torch.save(obj, fh), keep_old=keep_old,
                        before_rename=lambda: faults.point("checkpoint.write"))


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy `src` to `dst` through a temporary name and a rename (``best.pt`` from ``last.pt``)."""
    from mlrpl.files import atomic_write
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


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise MlrplError(f"{path}: checkpoint not found")
    ckpt = safe_torch_load(path, "mlrpl checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MlrplError(f"{path}: not an mlrpl checkpoint (expected format {FORMAT!r})")
    return ckpt


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_state(model, ckpt: dict) -> None:
    """Load a checkpoint's weights; a frozen pretrained backbone is checked by its digest."""
    state = ckpt["model"]
    strict_keys = set(model.state_dict())
    if ckpt.get("backbone_digest"):
        from mlrpl.data.cache import state_digest
        if state_digest(model.backbone) != ckpt["backbone_digest"]:
            raise MlrplError("the frozen backbone's weights differ from those the checkpoint was "
                             "trained with (backbone digest mismatch); supply the same weights")
        strict_keys = {k for k in strict_keys if not k.startswith("backbone.")}
    missing = strict_keys - set(state)
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise MlrplError(f"checkpoint does not fit the model: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    model.load_state_dict(state, strict=False)
