"""Checkpoints: atomic writes, ``torch.load(weights_only=True)``-safe contents.

A checkpoint holds only tensors and plain Python values (dicts, lists, strings, numbers): the
resolved config as a dict, class names, the label encoding, preprocessing, the mask hash, the model
(with the method's state: banks, prototypes, thresholds), the optimiser, scheduler and scaler, RNG
states, and the per-epoch history, so that resume is exact.
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from mlrpl.errors import MlrplError

FORMAT = "mlrpl-checkpoint-v1"


def atomic_save(obj, path: str | Path) -> Path:
    """torch.save to a temporary file in the same directory, fsync, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise MlrplError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise MlrplError(f"{path}: not a readable mlrpl checkpoint ({type(e).__name__}: {e})") from None
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
