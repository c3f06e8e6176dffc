"""Where and how a computation runs: device, mixed precision, seeds, process-wide settings.

A leaf of the engine: the trainer, evaluation, caching and prediction import it; it imports
nothing of the engine.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from mlrpl.utils import dist
from mlrpl.errors import ConfigError


def select_device(name: str) -> torch.device:
    """``auto`` (the local rank's GPU when there is one, else the CPU), ``cpu``, ``cuda[:i]``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist.local_rank())
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device asks for CUDA but no GPU is visible; use train.device=cpu")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", dist.local_rank())
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """One seed per (experiment, epoch, process): resume reproduces every epoch exactly."""
    return (seed * 1_000_003 + epoch * 1009 + rank) % 2**63


def amp_dtype(name):
    """``train.amp`` (None, ``bf16``, ``fp16``) -> the autocast dtype (None: full precision)."""
    return {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


@contextlib.contextmanager
def process_settings(threads: int | None = None, deterministic: bool = False):
    """Set torch's thread count and deterministic-algorithm mode for a block and restore both
    afterwards: building or running a Trainer leaves the process as it found it."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if threads:
            torch.set_num_threads(int(threads))
        if deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
