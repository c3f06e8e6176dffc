"""``ssgrl``: the SARL trunk trained with partial BCE (the "SSGRL" rows of the MLR-PL tables;
docs/methods/sarl.md)."""
from __future__ import annotations

from dataclasses import dataclass, field

from mlrpl.losses import partial_bce
from mlrpl.methods.base import Method, MethodConfig, register_method
from mlrpl.models.sarl import SARLConfig, sarl_recipes, trunk_for


@dataclass
class SSGRLConfig(MethodConfig):
    name: str = "ssgrl"
    trunk: SARLConfig = field(default_factory=SARLConfig)


@register_method("ssgrl")
class SSGRL(Method):
    Config = SSGRLConfig
    needs_embeddings = True
    recipes = sarl_recipes()

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.trunk = trunk_for(cfg.trunk, ctx)

    def forward(self, features, batch=None):
        return self.trunk(features)

    def loss(self, outputs, batch, epoch):
        return {"bce": partial_bce(outputs["logits"], batch["target"])}
