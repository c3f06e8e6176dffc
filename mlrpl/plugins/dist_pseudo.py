"""``dist_pseudo``: SATL's per-class distribution thresholds on any method's scores
(docs/methods/satl.md#equations).

Decayed histograms of σ(s) for each class's known positives and known negatives (updated after
every step, :class:`~mlrpl.methods.components.pseudo_labels.ScoreDistributions`) give per-class
thresholds τ⁺ (estimated precision >= target) and τ⁻ (estimated NPV >= target). From
``start_epoch`` on, unknown entries scoring >= τ⁺ become pseudo-positives and those below τ⁻
pseudo-negatives (``negatives: false``: positives only), and the term
``weight · bce(s, y ∪ pseudo)`` (named ``dist_pseudo``) is added to the method's loss. The batch's
thresholds already count the batch (SATL's order); the histograms live in buffers.
Pseudo-label quality against the hidden labels is logged as ``pl_dp_pos_*`` / ``pl_dp_neg_*``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mlrpl.losses import partial_bce, zero_loss
from mlrpl.methods.components.pseudo_labels import (SATLThresholdConfig, ScoreDistributions,
                                                    check_threshold_config)
from mlrpl.methods.components.pseudo_labels import PseudoLabelQuality
from mlrpl.plugins.base import Plugin, PluginConfig
from mlrpl.plugins.registry import register_plugin


@dataclass
class DistPseudoConfig(PluginConfig):
    name: str = "dist_pseudo"
    start_epoch: int = 5
    weight: float = 1.0
    negatives: bool = True
    thresholds: SATLThresholdConfig = field(default_factory=SATLThresholdConfig)


def pseudo_target(target: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Known labels with pseudo-positives (+1) and pseudo-negatives (-1) written into unknowns."""
    unknown = target == 0
    out = torch.where(pos & unknown, torch.ones_like(target), target)
    return torch.where(neg & unknown & ~pos, -torch.ones_like(target), out)


@register_plugin("dist_pseudo")
class DistPseudo(Plugin):
    Config = DistPseudoConfig

    def __init__(self, cfg, ctx, model):
        super().__init__(cfg, ctx, model)
        self.distributions = ScoreDistributions(cfg.thresholds, ["cls"], ctx.num_classes,
                                                ctx.partial_labels)
        self.quality = PseudoLabelQuality(("dp_pos", "dp_neg"), ctx.class_names, per_class=False)

    @classmethod
    def check(cls, cfg):
        check_threshold_config(cfg.thresholds, "plugins.dist_pseudo.thresholds")

    def active(self, epoch: int) -> bool:
        return epoch >= int(self.cfg.start_epoch)

    def loss(self, outputs, batch, epoch):
        logits, target = outputs["logits"], batch["target"]
        prob = torch.sigmoid(logits.detach().float())
        outputs["dist_pseudo_prob"] = prob
        if not self.active(epoch):
            return {"dist_pseudo": zero_loss(logits)}
        taus = self.distributions.preview("cls", prob, target)
        pos, neg = self.distributions.pseudo_labels("cls", prob, target, taus)
        if not self.cfg.negatives:
            neg = torch.zeros_like(neg)
        outputs["dist_pseudo_pos"], outputs["dist_pseudo_neg"] = pos, neg
        full = pseudo_target(target, pos, neg)
        return {"dist_pseudo": float(self.cfg.weight) * partial_bce(logits, full)}

    def update_state(self, model, outputs, batch):
        self.distributions.update("cls", outputs["dist_pseudo_prob"], batch["target"])
        if "dist_pseudo_pos" in outputs:
            self.quality.update_pos_neg("dp_pos", "dp_neg", outputs["dist_pseudo_pos"],
                                        outputs["dist_pseudo_neg"], batch["target"],
                                        batch.get("full"))

    def epoch_stats(self):
        stats = self.quality.compute(self.distributions.pos.device)
        self.quality.reset()
        stats.update(self.distributions.stats("dist_pseudo"))
        return stats
