"""``ema``: an exponential moving average of the trained weights, evaluated every epoch.

After every optimiser step, shadow = d · shadow + (1 - d) · weights for every trainable parameter
(of the method and of a fine-tuned backbone), with d = min(decay, (1 + n) / (10 + n)) after n
updates (the usual warm-up). Evaluation, best/last selection and the checkpoint's ``model`` use
the averaged weights, so ``mlrpl eval best.pt`` scores the model the run reported; the online
weights travel in the checkpoint's plug-in state and are put back on resume (exact). Buffers of
the method (banks, histograms) are not averaged.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mlrpl.errors import ConfigError
from mlrpl.plugins.base import Plugin, PluginConfig
from mlrpl.plugins.registry import register_plugin


@dataclass
class EMAConfig(PluginConfig):
    name: str = "ema"
    decay: float = 0.99
    warmup: bool = True


@register_plugin("ema")
class EMA(Plugin):
    Config = EMAConfig

    def __init__(self, cfg, ctx, model):
        super().__init__(cfg, ctx, model)
        self._params = [p for p in model.parameters() if p.requires_grad]
        for i, p in enumerate(self._params):
            self.register_buffer(f"shadow_{i}", p.detach().clone())
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def check(cls, cfg):
        if not 0.0 <= float(cfg.decay) < 1.0:
            raise ConfigError(f"bad value for 'plugins.ema.decay': {cfg.decay}; expected a "
                              f"number in [0, 1)")

    def _shadows(self):
        return [getattr(self, f"shadow_{i}") for i in range(len(self._params))]

    def decay(self) -> float:
        d, n = float(self.cfg.decay), int(self.updates)
        return min(d, (1.0 + n) / (10.0 + n)) if self.cfg.warmup else d

    @torch.no_grad()
    def update_state(self, model, outputs, batch):
        d = self.decay()
        for p, s in zip(self._params, self._shadows()):
            s.mul_(d).add_(p.detach().to(s.dtype), alpha=1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def _swap(self):
        for p, s in zip(self._params, self._shadows()):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)

    @contextlib.contextmanager
    def evaluation(self, model):
        self._swap()          # the model holds the average, the buffers the online weights
        try:
            yield
        finally:
            self._swap()

    def after_resume(self, model):
        # The checkpoint's model holds the average and the buffers the online weights.
        self._swap()

    def finalize(self, model):
        self._swap()          # training is over: the model keeps the average

    def epoch_stats(self):
        return {"ema_decay": round(self.decay(), 6)}
