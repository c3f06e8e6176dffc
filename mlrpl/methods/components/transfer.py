"""The base of the semantic-transfer methods ``sst`` and ``hst`` (docs/methods/sst.md,
docs/methods/hst.md): SARL trunk + IST head + instance contrastive loss + pseudo-label quality,
and the loss terms they share."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from mlrpl.errors import ConfigError
from mlrpl.losses import partial_bce, zero_loss
from mlrpl.methods.components.distributions import SATLThresholdConfig, ScoreDistributions
from mlrpl.methods.components.ist import IntraImageTransfer, leave_one_out_intra, warmup_ramp
from mlrpl.methods.components.pseudo_labels import PseudoLabelQuality
from mlrpl.methods.components.sarl import SARLMethod, SARLMethodConfig


@dataclass
class TransferConfig(SARLMethodConfig):
    """Keys shared by ``sst`` and ``hst`` (under ``method:``)."""
    start_epoch: int = 5              # E0: pseudo-label losses from this epoch on
    intra_weight: float = 1.0         # weight of bce(s, y^intra)
    inter_weight: float = 1.0         # weight of bce(s, y^inter)
    cooc_weight: float = 10.0         # co-occurrence loss weight
    contrast_weight: float = 0.05     # instance contrastive loss weight
    warmup: bool = True               # ramp the two weights above over epoch 0 (step/steps)
    # sample | all: the pairs the co-occurrence loss uses (docs/methods/sst.md D2)
    cooc_pairs: str = "sample"
    cooc_sample: int = 512            # per image, sampled pairs that are not both known positive
    cooc_gamma_pos: float = 1.0       # asymmetric focal BCE (ASL): gamma+, gamma-, clip
    cooc_gamma_neg: float = 2.0
    cooc_clip: float = 0.05
    # Pairs with an unknown label: negative ("never co-occur", the released code) or ignore
    # (only pairs whose two labels are known are supervised): docs/methods/sst.md D3;
    # benchmarks/RESULTS.md measures both.
    cooc_unknown: str = "negative"
    ist_proj_dim: Optional[int] = None    # g_c size; None: D / 2
    ist_hidden_dim: Optional[int] = None  # pair MLP width; None: D
    dense: bool = False               # literal all-pairs IST (reference / benchmark)
    pl_stats_per_class: bool = True   # per-class pseudo-label quality columns in summary.csv
    # own: the method's thresholds (SST's schedule, HST's DTL); satl: per-class thresholds from
    # the score distributions of known positives / negatives of each source
    # (docs/methods/sst.md D5, docs/methods/hst.md D6)
    thresholds: str = "own"
    satl: SATLThresholdConfig = field(default_factory=SATLThresholdConfig)


class TransferMethod(SARLMethod):
    """SARL trunk + IST head + instance contrastive loss + pseudo-label quality tracking.

    Subclasses compute their pseudo-labels in ``forward`` (as boolean ``pl_<source>`` outputs)
    and their losses in ``loss``. What ``update_state`` must add to the state travels in
    ``outputs["observed"]``: ``{source: (scores, valid)}`` for the SATL distributions.
    """

    pl_sources = ("intra", "inter")

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.class_names = list(ctx.class_names)
        self.ist = IntraImageTransfer(cfg, ctx.num_classes, self.trunk.dim)
        self.quality = PseudoLabelQuality(self.pl_sources, self.class_names,
                                          cfg.pl_stats_per_class)
        if cfg.thresholds not in ("own", "satl"):
            raise ConfigError(f"bad value for 'method.thresholds': {cfg.thresholds!r}; expected "
                              f"'own' or 'satl'")
        # SATL thresholds in place of the method's own: positive pseudo-labels only, as the
        # method's own thresholds make (the effect of the thresholds alone).
        self.distributions = (ScoreDistributions(cfg.satl, self.pl_sources, ctx.num_classes,
                                                 ctx.partial_labels)
                              if cfg.thresholds == "satl" else None)

    def forward(self, features, batch=None):
        out = self.trunk(features)
        if not self.training or batch is None or "target" not in batch:
            return out
        return self.transfer(out, batch["target"], int(batch.get("epoch", 0)))

    def transfer(self, out: dict, target: torch.Tensor, epoch: int) -> dict:
        """The training step's pseudo-labelling and extra terms, added to the trunk's outputs
        ``out`` (pure, as ``forward``); ``target`` (B, C) partial labels."""
        raise NotImplementedError

    @property
    def uses_satl(self) -> bool:
        return self.distributions is not None

    def on_epoch_start(self, ctx):
        if self.uses_satl:
            self.distributions.snapshot_at_start(ctx.epoch, self.cfg.start_epoch)

    @staticmethod
    def intra_observation(q_intra: torch.Tensor, target: torch.Tensor):
        """The batch's intra-image scores of known entries for the SATL distributions, each known
        positive scored as if it were unknown (leave-one-out: without its own P_cc = 1)."""
        return leave_one_out_intra(q_intra.detach(), target)

    def satl_positives(self, observed: dict, source: str, scores: torch.Tensor,
                       target: torch.Tensor):
        """Positive pseudo-labels from the SATL thresholds that count this batch's scores."""
        seen, valid = observed[source]
        taus = self.distributions.preview(source, seen, target, valid)
        return self.distributions.pseudo_labels(source, scores, target, taus)[0]

    def is_active(self, epoch: int) -> bool:
        return epoch >= int(self.cfg.start_epoch)

    def shared_terms(self, outputs: dict, batch: dict, epoch: int) -> dict:
        """Partial BCE on the known labels + the warmed-up co-occurrence and contrastive terms."""
        ramp = warmup_ramp(batch, epoch, self.cfg.warmup)
        return {"bce": partial_bce(outputs["logits"], batch["target"]),
                "cooc": self.cfg.cooc_weight * ramp * outputs["cooc"],
                "contrast": self.cfg.contrast_weight * ramp * outputs["contrast"]}

    def pseudo_bce(self, outputs: dict, batch: dict, source: str) -> torch.Tensor:
        """bce(s, y^source): the known labels plus the source's positive pseudo-labels."""
        key = f"pl_{source}"
        if key not in outputs:
            return zero_loss(outputs["logits"])
        target = torch.where(outputs[key], torch.ones_like(batch["target"]), batch["target"])
        return partial_bce(outputs["logits"], target)

    def update_state(self, outputs, batch):
        target = batch["target"]
        for source, (scores, valid) in outputs.get("observed", {}).items():
            self.distributions.update(source, scores, target, valid)
        for s in self.pl_sources:
            if f"pl_{s}" in outputs:
                self.quality.update(s, outputs[f"pl_{s}"], target, batch.get("full"))

    def epoch_stats(self) -> dict[str, float]:
        device = next(self.parameters()).device
        stats = self.quality.compute(device)
        self.quality.reset()
        if self.uses_satl:
            stats.update(self.distributions.stats())
        return stats
