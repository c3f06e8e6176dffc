"""``pbce``: global average pooling + a linear classifier, trained with partial BCE.

The baseline of every MLR-PL table ("Partial BCE"): unknown labels are ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mlrpl.losses import partial_bce
from mlrpl.methods.base import Method, MethodConfig
from mlrpl.methods.base import register_method


@dataclass
class PBCEConfig(MethodConfig):
    name: str = "pbce"
    dropout: float = 0.0


@register_method("pbce")
class PartialBCE(Method):
    Config = PBCEConfig
    # The presets are this method's (configs/*_pbce_*.yaml): nothing to add in either regime.
    recipes = {"cpu-cached": [], "hcp": []}

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc = nn.Linear(ctx.feature_channels, ctx.num_classes)

    def forward(self, features, batch=None):
        pooled = features.float().mean(dim=(2, 3)) if features.dim() == 4 else features.float()
        return {"logits": self.fc(self.dropout(pooled))}

    def loss(self, outputs, batch, epoch):
        return {"bce": partial_bce(outputs["logits"], batch["target"])}
