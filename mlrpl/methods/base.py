"""The method interface the trainer talks to."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn


@dataclass
class MethodConfig:
    name: str = "pbce"


@dataclass
class TrainingContext:
    """What a method may know about the experiment when it is built.

    Every field is plain data, so that a model rebuilt from a checkpoint (without the training
    data) gets the same modules: methods store what they derive (graphs, embeddings) as buffers.
    """
    num_classes: int
    feature_channels: int
    class_names: list[str]
    partial_labels: np.ndarray | None = None  # (N_train, C) int8, internal encoding
    embeddings: np.ndarray | None = None       # (C, D) label embeddings, when the method asks
    # Shapes of the method's saved tensors when it is rebuilt from a checkpoint (no data then):
    # lets a method size what depends on the data (e.g. the embedding width).
    state_shapes: dict | None = None
    extra: dict = field(default_factory=dict)

    def embedding_dim(self, key: str) -> int:
        if self.embeddings is not None:
            return int(self.embeddings.shape[1])
        if self.state_shapes and key in self.state_shapes:
            return int(self.state_shapes[key][-1])
        raise ValueError("label embeddings are needed to build this method")


class Method(nn.Module):
    """Base class of every method.

    Subclasses set ``Config`` (a dataclass of their keys under ``method:``) and implement
    ``forward`` and ``loss``. Optional hooks: ``on_epoch_start``, ``after_step``,
    ``epoch_stats``. Persistent state (memory banks, prototypes, thresholds) lives in buffers or
    parameters, so that it is saved in checkpoints and resume is exact.
    """

    Config = MethodConfig
    name = "base"
    needs_embeddings = False
    # Set True when some parameters take no part in some steps (DDP must then look for them).
    ddp_find_unused_parameters = False

    def __init__(self, cfg, ctx: TrainingContext):
        super().__init__()
        self.cfg = cfg
        self.num_classes = ctx.num_classes

    def forward(self, features: torch.Tensor, batch: dict) -> dict:
        """features: (B, C_f, H, W) backbone maps -> dict with at least ``logits`` (B, C).

        Every quantity that depends on a parameter must be computed here, not in ``loss``: under
        DDP only what ``forward`` computes takes part in the gradient synchronisation."""
        raise NotImplementedError

    def loss(self, outputs: dict, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; the trainer optimises their sum."""
        raise NotImplementedError

    # ---- hooks --------------------------------------------------------------------------------
    def on_epoch_start(self, trainer, epoch: int) -> None:
        """Work done before an epoch (prototype recomputation, schedules)."""

    def epoch_stats(self) -> dict[str, float]:
        """Numbers to log in summary.csv at the end of an epoch (then reset)."""
        return {}

    def param_groups(self) -> list[dict]:
        """Parameter groups for the optimiser (e.g. thresholds without weight decay)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
