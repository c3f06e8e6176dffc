"""``satl``: semantic-aware threshold learning (Ruan et al., ESWA 2025, arXiv 2507.23263).

The paper's method section is not public: this is the library's own design, documented in
docs/methods/satl.md#equations (its choices: docs/methods/satl.md D1-D8).

SARL trunk (as ``ssgrl``) + per-class thresholds derived from the score distributions of each
class's known positives and known negatives
(:class:`~mlrpl.methods.components.pseudo_labels.ScoreDistributions`, the classifier
probability σ(s) as the score), updated after every step:

* from epoch E0, unknown entries scoring at or above the class's positive threshold (estimated
  precision >= ``satl.target_precision``) become pseudo-positives, those below its negative
  threshold (estimated NPV >= ``satl.target_npv``) pseudo-negatives; a class with fewer than
  ``satl.min_positives`` known positives makes none;
* a differentiable ranking loss per class over the batch's (known positive, known negative) pairs
  widens the gap between the two distributions.

Loss: bce(s, y) + [ep >= E0] pseudo_weight · bce(s, y ∪ pseudo) + rank_weight · L_rank.
Inference: σ(s); the per-class decision thresholds (estimated-F1 optimum of the distributions)
are saved with the model (``mlrpl eval --model-thresholds``, ``mlrpl thresholds``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mlrpl.errors import ConfigError
from mlrpl.losses import partial_bce, ranking_loss, zero_loss
from mlrpl.methods.base import Method, MethodConfig, register_method
from mlrpl.methods.components.pseudo_labels import (PseudoLabelQuality, SATLThresholdConfig,
                                                    ScoreDistributions)
from mlrpl.models.sarl import SARLConfig, sarl_recipes, trunk_for


@dataclass
class SATLConfig(MethodConfig):
    name: str = "satl"
    trunk: SARLConfig = field(default_factory=SARLConfig)
    start_epoch: int = 5              # E0: pseudo-labels from this epoch on (as SST/HST)
    negatives: bool = True            # also make negative pseudo-labels
    pseudo_weight: float = 1.0        # weight of bce(s, y ∪ pseudo)
    rank_weight: float = 1.0          # λ_rank
    rank_margin: float = 0.0          # m
    rank_temperature: float = 1.0     # T
    rank_pseudo: bool = False         # also rank the pseudo-labelled entries (from E0)
    pl_stats_per_class: bool = True   # per-class pseudo-label quality columns in summary.csv
    satl: SATLThresholdConfig = field(default_factory=SATLThresholdConfig)


@register_method("satl")
class SATL(Method):
    reads_prior = True                # thresholds learned on the scores with the prior
    Config = SATLConfig
    pl_sources = ("pos", "neg")
    needs_embeddings = True
    recipes = sarl_recipes(hcp=["train.batch_size=32"])

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.trunk = trunk_for(cfg.trunk, ctx)
        if float(cfg.rank_temperature) <= 0:
            raise ConfigError(f"bad value for 'method.rank_temperature': {cfg.rank_temperature}; "
                              f"expected a positive number")
        self.distributions = ScoreDistributions(cfg.satl, ["cls"], ctx.num_classes,
                                                ctx.partial_labels)
        self.quality = PseudoLabelQuality(self.pl_sources, ctx.class_names,
                                          cfg.pl_stats_per_class)

    def is_active(self, epoch: int) -> bool:
        return epoch >= int(self.cfg.start_epoch)

    def on_epoch_start(self, ctx):
        self.distributions.snapshot_at_start(ctx.epoch, self.cfg.start_epoch)

    def forward(self, features, batch=None):
        out = self.trunk(features)
        # the thresholds learn on the scores the model outputs: the class prior's included
        out["logits"] = self.with_prior(out["logits"], batch)
        if not self.training or batch is None or "target" not in batch:
            return out
        target = batch["target"]
        prob = torch.sigmoid(out["logits"].detach().float())
        out["prob"] = prob
        if self.is_active(int(batch.get("epoch", 0))):
            # thresholds that already count this batch; update_state commits it
            taus = self.distributions.preview("cls", prob, target)
            pos, neg = self.distributions.pseudo_labels("cls", prob, target, taus)
            out["pl_pos"] = pos
            out["pl_neg"] = neg if self.cfg.negatives else torch.zeros_like(neg)
        return out

    def pseudo_target(self, outputs, batch) -> torch.Tensor:
        """The known labels with the pseudo-labels written into unknown entries."""
        target = batch["target"]
        if "pl_pos" not in outputs:
            return target
        target = torch.where(outputs["pl_pos"], torch.ones_like(target), target)
        return torch.where(outputs["pl_neg"], -torch.ones_like(target), target)

    def loss(self, outputs, batch, epoch):
        cfg = self.cfg
        logits = outputs["logits"]
        terms = {"bce": partial_bce(logits, batch["target"])}
        if self.is_active(epoch) and "pl_pos" in outputs:
            full = self.pseudo_target(outputs, batch)
            terms["bce_pseudo"] = cfg.pseudo_weight * partial_bce(logits, full)
        else:
            full = batch["target"]
            terms["bce_pseudo"] = zero_loss(logits)
        ranked = full if cfg.rank_pseudo else batch["target"]
        terms["rank"] = cfg.rank_weight * ranking_loss(logits, ranked, cfg.rank_margin,
                                                       cfg.rank_temperature)
        return terms

    def update_state(self, outputs, batch):
        self.distributions.update("cls", outputs["prob"], batch["target"])
        if "pl_pos" in outputs:
            self.quality.update_pos_neg("pos", "neg", outputs["pl_pos"], outputs["pl_neg"],
                                        batch["target"], batch.get("full"))

    def epoch_stats(self):
        device = next(self.parameters()).device
        stats = self.quality.compute(device)
        self.quality.reset()
        stats.update(self.distributions.stats())
        return stats

    def inference_thresholds(self) -> np.ndarray | None:
        """Per-class probability thresholds for the thresholded metrics: the decision thresholds
        of the distributions (0.5 where a class has none)."""
        d = self.distributions.decision[0].detach().cpu().double().numpy()
        return np.where(np.isfinite(d) & (d > 0) & (d < 1), np.round(d, 6), 0.5)
