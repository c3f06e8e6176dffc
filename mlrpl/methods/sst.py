"""``sst``: Structured Semantic Transfer (Chen et al., AAAI 2022, arXiv 2112.10941;
docs/methods/sst.md).

SARL trunk + two pseudo-labelling modules that only ever add positive labels to unknown entries:

* intra-image semantic transfer (IST): an image-specific class co-occurrence matrix P, learned
  from pairs of known positives; an unknown class c becomes positive when its mean co-occurrence
  with the image's known positives, q^intra_c, reaches the threshold;
* cross-image semantic transfer (CST): a per-class FIFO memory bank of the E most recent semantic
  features of known positives; an unknown class c becomes positive when the mean cosine of F_c to
  the bank's E slots, q^inter_c, reaches the threshold.

Loss (per step): bce(s, y) + [ep >= E0] bce(s, y^intra) + 10 L_co + [ep >= E0] bce(s, y^inter)
+ 0.05 L_contrast; the co-occurrence and contrastive weights ramp up over epoch 0. The threshold
starts at 0.95 and drops by 0.025 after every epoch from E0 on (floor 0.75). Inference: σ(s).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mlrpl.losses import instance_contrastive, zero_loss
from mlrpl.methods.components.memory_bank import MemoryBank
from mlrpl.methods.base import Method, register_method
from mlrpl.methods.components import transfer as shared
from mlrpl.methods.components.transfer import TransferConfig
from mlrpl.models.sarl import sarl_recipes


@dataclass
class SSTConfig(TransferConfig):
    name: str = "sst"
    bank_size: int = 100              # E: features kept per class (the script's value)
    threshold_start: float = 0.95
    threshold_step: float = 0.025     # lowered after every epoch from E0 on ...
    threshold_min: float = 0.75       # ... down to this floor


def sst_threshold(epoch: int, start_epoch: int, start: float = 0.95, step: float = 0.025,
                  floor: float = 0.75) -> float:
    """SST's pseudo-label threshold: ``start`` up to and at E0, lowered by ``step`` after every
    epoch from E0 on, never below ``floor`` (E0 = 5: 0.95 at epoch 5, 0.925 at 6, ..., 0.75
    from 13). A ``start`` below ``floor`` is kept as it is.

    >>> [round(sst_threshold(e, 5), 3) for e in (0, 5, 6, 12, 13, 19)]
    [0.95, 0.95, 0.925, 0.775, 0.75, 0.75]
    """
    return max(start - step * max(epoch - start_epoch, 0), min(floor, start))


@register_method("sst")
class SST(Method):
    Config = SSTConfig
    needs_embeddings = True
    pl_sources = shared.PL_SOURCES
    # What it shares with hst (mlrpl.methods.components.transfer), taken by name:
    forward = shared.transfer_forward         # the trunk, then self.transfer(out, target, epoch)
    uses_satl = property(shared.uses_satl)
    intra_observation = staticmethod(shared.intra_observation)
    satl_positives = shared.satl_positives
    is_active = shared.is_active
    shared_terms = shared.shared_terms
    pseudo_bce = shared.pseudo_bce
    on_epoch_start = shared.transfer_on_epoch_start
    # every class pair in the co-occurrence loss, as released (the CPU recipe samples them:
    # docs/methods/sst.md D2)
    recipes = sarl_recipes(hcp=["method.cooc_pairs=all"])

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        shared.build_parts(self, cfg, ctx)
        self.bank = MemoryBank(ctx.num_classes, int(cfg.bank_size), self.trunk.dim)

    def threshold(self, epoch: int) -> float:
        cfg = self.cfg
        return sst_threshold(epoch, int(cfg.start_epoch), cfg.threshold_start, cfg.threshold_step,
                             cfg.threshold_min)

    def transfer(self, out: dict, target, epoch: int) -> dict:
        active = self.is_active(epoch)
        semantic = out["semantic"]
        unknown = target == 0
        # Hard pseudo-labels need no gradient: SST scores only the unknown entries, detached
        # (every entry with SATL thresholds: the known ones feed the distributions).
        entries = torch.ones_like(unknown) if self.uses_satl else (unknown if active else None)
        out["cooc"], q_intra = self.ist(semantic, target, entries=entries, score_grad=False)
        out["contrast"] = instance_contrastive(semantic, target)
        if self.uses_satl:
            filled = (self.bank.count > 0)[None].expand_as(target)
            with torch.no_grad():  # the bank before this batch: no entry scored against itself
                out["observed"] = {"intra": self.intra_observation(q_intra, target),
                                   "inter": (self.bank.scores(semantic.detach()), filled)}
        if active:
            # Pseudo-labels score against the bank with this batch pushed (the released order:
            # the bank is updated before pseudo-labelling); update_state pushes it for real.
            with torch.no_grad():
                bank, _, _ = self.bank.pushed(semantic, target)
                q_inter = self.bank.scores(semantic.detach(), bank)
            if self.uses_satl:
                obs = out["observed"]
                out["pl_intra"] = self.satl_positives(obs, "intra", q_intra, target)
                out["pl_inter"] = self.satl_positives(obs, "inter", q_inter, target)
            else:
                theta = self.threshold(epoch)
                out["pl_intra"] = unknown & (q_intra >= theta)
                out["pl_inter"] = unknown & (q_inter >= theta)
        return out

    def loss(self, outputs, batch, epoch):
        terms = self.shared_terms(outputs, batch, epoch)
        cfg = self.cfg
        if self.is_active(epoch):
            terms["bce_intra"] = cfg.intra_weight * self.pseudo_bce(outputs, batch, "intra")
            terms["bce_inter"] = cfg.inter_weight * self.pseudo_bce(outputs, batch, "inter")
        else:
            terms["bce_intra"] = terms["bce_inter"] = zero_loss(outputs["logits"])
        return terms

    def update_state(self, outputs, batch):
        shared.transfer_update_state(self, outputs, batch)
        self.bank.update(outputs["semantic"], batch["target"])
        self._last_epoch = int(batch.get("epoch", 0))

    def epoch_stats(self):
        stats = shared.transfer_epoch_stats(self)
        epoch = getattr(self, "_last_epoch", None)
        if epoch is not None and not self.uses_satl:
            stats["pl_threshold"] = self.threshold(epoch) if self.is_active(epoch) else float("nan")
        return stats
