"""Checkpoints: atomic writes, ``torch.load(weights_only=True)``-safe contents.

A checkpoint holds only tensors and plain Python values (dicts, lists, strings, numbers): the
resolved config as a dict, class names, the label encoding, preprocessing, the mask hash, the model
(with the method's state: banks, prototypes, thresholds), the optimiser, scheduler and scaler, RNG
states, and the per-epoch history, so that resume is exact.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from mlrpl.errors import MlrplError
from mlrpl.utils.torchio import safe_torch_load

FORMAT = "mlrpl-checkpoint-v1"


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise MlrplError(f"{path}: checkpoint not found")
    ckpt = safe_torch_load(path, "mlrpl checkpoint", map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise MlrplError(f"{path}: not an mlrpl checkpoint (expected format {FORMAT!r})")
    if isinstance(ckpt.get("config"), dict):   # a model saved before a key keeps its behaviour
        from mlrpl.config import with_earlier_values
        ckpt["config"] = with_earlier_values(ckpt["config"])
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
