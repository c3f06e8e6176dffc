"""``ranking``: SATL's pairwise ranking loss on any method's logits
(docs/methods/satl.md#equations).

Per class, over the batch's (known positive i, known negative j) pairs, the mean of
softplus((s_j - s_i + m) / T); the term is ``weight`` times the mean over the classes that have a
pair (:func:`mlrpl.losses.ranking_loss`), named ``ranking`` in summary.csv.
"""
from __future__ import annotations

from dataclasses import dataclass

from mlrpl.errors import ConfigError
from mlrpl.losses import ranking_loss
from mlrpl.plugins.base import Plugin, PluginConfig
from mlrpl.plugins.registry import register_plugin


@dataclass
class RankingConfig(PluginConfig):
    name: str = "ranking"
    weight: float = 1.0
    margin: float = 0.0
    temperature: float = 1.0


@register_plugin("ranking")
class Ranking(Plugin):
    Config = RankingConfig

    @classmethod
    def check(cls, cfg):
        if float(cfg.temperature) <= 0:
            raise ConfigError(f"bad value for 'plugins.ranking.temperature': {cfg.temperature}; "
                              f"expected a positive number")

    def loss(self, outputs, batch, epoch):
        return {"ranking": float(self.cfg.weight) * ranking_loss(
            outputs["logits"], batch["target"], float(self.cfg.margin),
            float(self.cfg.temperature))}
