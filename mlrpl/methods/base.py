"""The method contract: every hook the training loop calls, when, and under which process group.

A method is an ``nn.Module`` that turns backbone feature maps into logits, names its loss terms and
keeps its own state (memory banks, prototypes, thresholds, score distributions) in buffers or
parameters, so that checkpoints carry it and resume is exact. The loop calls, per epoch::

    method.on_epoch_start(ctx)                  # every process; ctx: EpochContext
    for batch in the epoch:                     # every process, its shard of the data
        outputs = method(features, batch)       # forward: pure, never changes state
        terms = method.loss(outputs, batch, epoch)
        (sum of terms).backward(); optimiser step
        method.update_state(outputs, batch)     # every process, after the optimiser step
    row.update(method.epoch_stats())            # every process (collectives allowed)

and, when it evaluates or predicts, ``method.eval()`` then ``forward`` (no ``target`` needed).
``param_groups()`` is asked once, when the optimiser is built; ``inference_thresholds()`` when a
user asks for the model's own thresholds. Under DDP every hook but ``forward`` may use collectives
(all processes call it at the same point); ``forward`` runs inside DDP's forward and must not.

The registry (end of this file): ``@register_method("name")`` on the class, ``create_method``,
``list_methods``; methods of other packages register through the entry-point group
``mlrpl.methods`` (``name = "pkg.module"`` or ``"pkg.module:Class"``).
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from mlrpl.errors import ConfigError
from mlrpl.utils.registry import Registry


@dataclass
class MethodConfig:
    name: str = "pbce"


@dataclass
class MethodContext:
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
    seed: int = 0                              # the experiment's seed (k-means, sampling)

    def embedding_dim(self, key: str) -> int:
        if self.embeddings is not None:
            return int(self.embeddings.shape[1])
        if self.state_shapes and key in self.state_shapes:
            return int(self.state_shapes[key][-1])
        raise ValueError("label embeddings are needed to build this method")


@dataclass
class EpochContext:
    """What ``on_epoch_start`` may use: never the Trainer.

    Attributes
    ----------
    epoch : the epoch about to start (0-based)
    seed : the experiment's seed
    partial_labels : (N_train, C) int8, the known labels of the training set (dataset order)
    show_progress : progress of long passes (None: a bar on a terminal, else a log line every 10%;
        False: nothing)
    eval_batches : ``eval_batches(desc)`` iterates over the whole training set in evaluation
        mode, this process's shard under DDP (no shuffling, the sampler's padding included),
        yielding ``(batch, outputs)`` with ``batch["index"]`` the dataset indices; the model is
        back in training mode afterwards.
    """
    epoch: int
    seed: int
    partial_labels: np.ndarray
    show_progress: bool | None
    eval_batches: Callable[[str], Iterator[tuple[dict, dict]]]


class Method(nn.Module):
    """Base class of every method.

    Subclasses set ``Config`` (a dataclass of their keys under ``method:``), implement
    ``forward`` and ``loss`` and override the hooks they need. ``recipes`` maps a training regime
    to the config overrides the method trains with in it (see :data:`mlrpl.methods.base.REGIMES`); a sweep applies
    the recipe of its regime, so that a method is never trained with another one's recipe.
    """

    Config = MethodConfig
    name = "base"
    needs_embeddings = False
    # Set True when some parameters take no part in some steps (DDP must then look for them).
    ddp_find_unused_parameters = False
    recipes: dict[str, list[str]] = {}
    # With a class prior (``model.prior``): True when ``forward`` adds the prior's logits
    # (``batch["prior_logits"]``, (B, C)) to its class scores itself, because it thresholds, ranks
    # or recovers labels from them (see :meth:`with_prior`); otherwise the model adds them to
    # ``logits`` after ``forward``.
    reads_prior = False

    def __init__(self, cfg, ctx: MethodContext):
        super().__init__()
        self.cfg = cfg
        self.num_classes = ctx.num_classes

    def forward(self, features: torch.Tensor, batch: dict | None = None) -> dict:
        """features (B, C_f, H, W) backbone maps -> dict with at least ``logits`` (B, C).

        Runs in training mode during training (``batch`` then holds ``target`` (B, C) partial
        labels, ``index``, ``epoch``, ``step``, ``steps_per_epoch``, and ``full`` hidden labels
        for pseudo-label statistics only) and in evaluation mode for evaluation and prediction.
        Pure: it reads the method's state and never writes it. Every quantity that depends on a
        parameter is computed here, not in ``loss``: under DDP only what ``forward`` computes
        takes part in the gradient synchronisation."""
        raise NotImplementedError

    @staticmethod
    def with_prior(logits: torch.Tensor, batch: dict | None) -> torch.Tensor:
        """``logits`` plus the class prior's logits when the model has a prior (``reads_prior``
        methods call it on every class score they output or derive labels from)."""
        prior = None if batch is None else batch.get("prior_logits")
        return logits if prior is None else logits + prior.to(logits.dtype)

    def loss(self, outputs: dict, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        """Named, already weighted loss terms; the loop optimises their sum. Every process, every
        step, after ``forward``."""
        raise NotImplementedError

    # ---- hooks --------------------------------------------------------------------------------
    def update_state(self, outputs: dict, batch: dict) -> None:
        """Change the state (banks, histograms, statistics) from a step's detached outputs.

        Called by the loop after the optimiser step, on every process at the same point, so it may
        all-reduce or all-gather; the only place besides ``on_epoch_start`` where state changes."""

    def on_epoch_start(self, ctx: EpochContext) -> None:
        """Work before an epoch (prototype recomputation, snapshots), every process."""

    def epoch_stats(self) -> dict[str, float]:
        """Numbers for summary.csv at the end of an epoch (then reset). Every process calls it
        (collectives allowed); the main process's numbers are written."""
        return {}

    def param_groups(self) -> list[dict]:
        """Parameter groups for the optimiser (e.g. thresholds without weight decay); asked once."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def inference_thresholds(self) -> np.ndarray | None:
        """(C,) per-class probability thresholds the method learned (SATL), or None."""
        return None


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Evaluation mode inside the block, the previous mode afterwards."""
    was = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was)


# ---- registry --------------------------------------------------------------------------------
# Training regimes a method can declare a recipe for (``Method.recipes``).
REGIMES = {
    "cpu-cached": "frozen EfficientNet-Lite0 maps cached once, trained on a few CPU cores",
    "hcp": "the authors' recipe: ResNet-101 at 448 px, all but the last stage frozen (HCP)",
    "modern": "a fine-tuned backbone with today's augmentation and schedule",
}

_METHODS = Registry("method", "mlrpl.methods", Path(__file__).parent, "mlrpl.methods",
                    ConfigError, skip=("base",))


def register_method(name: str):
    """Class decorator: register a method under ``name``; a name already taken is an error."""
    def deco(cls):
        for regime in getattr(cls, "recipes", {}):
            if regime not in REGIMES:
                raise ConfigError(f"method {name!r} declares a recipe for unknown regime "
                                  f"{regime!r}; known regimes: {sorted(REGIMES)}")
        _METHODS.add(name, cls)
        cls.name = name
        return cls
    return deco


def list_methods() -> list[str]:
    """The registered method names, sorted."""
    return _METHODS.names()


def get_method_class(name: str):
    return _METHODS.get(name)


def create_method(name: str, ctx, **cfg):
    """A method built from its name, a :class:`~mlrpl.methods.base.MethodContext` and config keys
    (nested keys as dicts): ``create_method("sst", ctx, bank_size=50, trunk={"dim": 256})``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    cls = get_method_class(name)
    try:
        conf = OmegaConf.merge(OmegaConf.structured(cls.Config), {**cfg, "name": name})
    except OmegaConfBaseException as e:
        raise ConfigError(f"bad config for method {name!r}: {e.msg}") from None
    return cls(conf, ctx)


def recipe(name: str, regime: str) -> list[str] | None:
    """The overrides method ``name`` trains with in ``regime`` (None: it declares none)."""
    if regime not in REGIMES:
        raise ConfigError(f"unknown training regime {regime!r}; expected one of {sorted(REGIMES)}")
    r = get_method_class(name).recipes.get(regime)
    return None if r is None else list(r)


def method_code_digest(name: str) -> str:
    """A digest of the code method ``name`` runs (its module and every package module it
    imports): a sweep re-runs a finished run when it changed."""
    from mlrpl.utils.codeinfo import code_digest, modules
    module = get_method_class(name).__module__
    if module not in modules():        # a third-party method: its own file
        import hashlib
        import inspect
        src = inspect.getsource(importlib.import_module(module))
        return hashlib.sha256(src.encode()).hexdigest()[:16]
    return code_digest(module)
