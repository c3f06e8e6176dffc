"""``ssgrl``: the SARL trunk trained with partial BCE (the "SSGRL" rows of the MLR-PL tables)."""
from __future__ import annotations

from dataclasses import dataclass

from mlrpl.losses import partial_bce
from mlrpl.methods.components.sarl import SARLMethod, SARLMethodConfig
from mlrpl.methods.registry import register_method


@dataclass
class SSGRLConfig(SARLMethodConfig):
    name: str = "ssgrl"


@register_method("ssgrl")
class SSGRL(SARLMethod):
    Config = SSGRLConfig

    def loss(self, outputs, batch, epoch):
        return {"bce": partial_bce(outputs["logits"], batch["target"])}
