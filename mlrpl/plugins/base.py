"""The plug-in contract: the hooks the training loop calls around any method.

Per epoch the loop calls (every hook on every process, in the order the plug-ins are listed)::

    plugins.on_epoch_start(ctx, model)            # ctx: EpochContext (as methods get it)
    for batch in the epoch:
        batch = plugins.transform_batch(batch, epoch)   # sample mixing (before the forward)
        outputs = model(batch); terms = method.loss(...)
        terms += plugins.loss(outputs, batch, epoch)    # extra named terms ("ranking", ...)
        backward; optimiser step
        plugins.update_state(model, outputs, batch)     # histograms, EMA weights
    with plugins.evaluation(model):               # the weights to evaluate and checkpoint
        [last epoch] plugins.on_train_end(ctx, model)   # post-hoc fitting (CFT)
        evaluate; write last.pt / best.pt
        row.update(plugins.epoch_stats())
    [after the last epoch] plugins.finalize(model)      # the model keeps the checkpoint's weights

A plug-in keeps its state in buffers (saved under ``plugins`` in the checkpoint) and changes it
only in ``update_state``, ``on_epoch_start`` and ``on_train_end``. ``evaluation`` may swap weights
in and out of the model (EMA): what is evaluated is what the checkpoint's ``model`` holds, and
``after_resume`` undoes the swap after a checkpoint is loaded. With no plug-in every hook is a
no-op and nothing (not even a random draw) changes.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn


@dataclass
class PluginConfig:
    name: str = ""


@dataclass
class PluginContext:
    """What a plug-in may know when it is built (plain data, like ``MethodContext``)."""
    num_classes: int
    class_names: list
    partial_labels: np.ndarray | None = None   # (N_train, C) int8, internal encoding
    seed: int = 0
    # training images held out of training before the run (train.select=train_holdout), 0 if none
    select_images: int = 0
    # the training images as the label file names them and as resolved paths (dataset order)
    train_items: list | None = None
    train_paths: list | None = None


@dataclass
class TrainEndContext:
    """What ``on_train_end`` may use: passes over the training set and the evaluation split in
    evaluation mode (``(batch, outputs)``, ``batch["index"]`` the dataset indices), the known
    training labels and the evaluation split's labels (for a selection that says it used them);
    with ``train.select=train_holdout``, passes over the training images held out of training
    before the run and their known labels (else None)."""
    epoch: int
    seed: int
    partial_labels: np.ndarray
    show_progress: bool | None
    train_batches: Callable[[str], Iterator[tuple[dict, dict]]]
    eval_batches: Callable[[str], Iterator[tuple[dict, dict]]]
    eval_labels: np.ndarray
    select_batches: Callable[[str], Iterator[tuple[dict, dict]]] | None = None
    select_labels: np.ndarray | None = None


class Plugin(nn.Module):
    Config = PluginConfig
    name = "base"

    def __init__(self, cfg, ctx: PluginContext, model: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.num_classes = ctx.num_classes

    @classmethod
    def check(cls, cfg) -> None:
        """Refuse values the plug-in cannot use (a ConfigError naming the key)."""

    def transform_batch(self, batch: dict, epoch: int) -> dict:
        return batch

    def loss(self, outputs: dict, batch: dict, epoch: int) -> dict[str, torch.Tensor]:
        return {}

    def update_state(self, model: nn.Module, outputs: dict, batch: dict) -> None:
        pass

    def on_epoch_start(self, ctx, model: nn.Module) -> None:
        pass

    @contextlib.contextmanager
    def evaluation(self, model: nn.Module):
        yield

    def after_resume(self, model: nn.Module) -> None:
        pass

    def on_train_end(self, ctx: TrainEndContext, model: nn.Module) -> dict:
        return {}

    def finalize(self, model: nn.Module) -> None:
        """Training is over: leave in the model the weights the last checkpoint holds."""

    def epoch_stats(self) -> dict[str, float]:
        return {}


class PluginSet(nn.Module):
    """The configured plug-ins, called in order."""

    def __init__(self, plugins: list[Plugin]):
        super().__init__()
        self.items = nn.ModuleList(plugins)
        self._finalized = False

    def __len__(self):
        return len(self.items)

    def names(self) -> list[str]:
        return [p.name for p in self.items]

    def transform_batch(self, batch, epoch):
        for p in self.items:
            batch = p.transform_batch(batch, epoch)
        return batch

    def loss(self, outputs, batch, epoch, terms: dict) -> dict:
        """``terms`` (the method's) with the plug-ins' terms added; a name clash is an error."""
        for p in self.items:
            for k, v in p.loss(outputs, batch, epoch).items():
                if k in terms:
                    raise RuntimeError(f"plug-in {p.name!r} adds a loss term {k!r} that the "
                                       f"method already has")
                terms[k] = v
        return terms

    def update_state(self, model, outputs, batch):
        for p in self.items:
            p.update_state(model, outputs, batch)

    def on_epoch_start(self, ctx, model):
        for p in self.items:
            p.on_epoch_start(ctx, model)

    @contextlib.contextmanager
    def evaluation(self, model):
        with contextlib.ExitStack() as stack:
            for p in self.items:
                stack.enter_context(p.evaluation(model))
            yield

    def after_resume(self, model):
        for p in self.items:
            p.after_resume(model)

    def finalize(self, model):
        if not self._finalized:
            self._finalized = True
            for p in self.items:
                p.finalize(model)

    def on_train_end(self, ctx, model) -> dict:
        out = {}
        for p in self.items:
            out.update(p.on_train_end(ctx, model))
        return out

    def epoch_stats(self) -> dict:
        out = {}
        for p in self.items:
            out.update(p.epoch_stats())
        return out
