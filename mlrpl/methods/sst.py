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
starts at 0.95 and drops by 0.025 after every epoch from E0 on (floor 0.75): the rule
:class:`~mlrpl.methods.components.transfer.ScheduledThreshold` (SATL's in its place with
``thresholds: satl``). Inference: σ(s).
"""
from __future__ import annotations

from dataclasses import dataclass

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


@register_method("sst")
class SST(Method):
    Config = SSTConfig
    needs_embeddings = True
    pl_sources = shared.PL_SOURCES
    # What it shares with hst (mlrpl.methods.components.transfer), taken by name:
    forward = shared.transfer_forward         # the trunk, then self.transfer(out, target, epoch)
    is_active = shared.is_active
    shared_terms = shared.shared_terms
    pseudo_bce = shared.pseudo_bce
    on_epoch_start = shared.transfer_on_epoch_start
    epoch_stats = shared.transfer_epoch_stats
    # every class pair in the co-occurrence loss, as released (the CPU recipe samples them:
    # docs/methods/sst.md D2)
    recipes = sarl_recipes(hcp=["method.cooc_pairs=all"])

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        shared.build_parts(self, cfg, ctx, shared.ScheduledThreshold(cfg))
        self.bank = MemoryBank(ctx.num_classes, int(cfg.bank_size), self.trunk.dim)

    def transfer(self, out: dict, target, epoch: int) -> dict:
        rule, active = self.rule, self.is_active(epoch)
        semantic = out["semantic"]
        out["cooc"], q_intra = self.ist(semantic, target, entries=rule.entries(target == 0, active),
                                        score_grad=rule.grad)
        out["contrast"] = instance_contrastive(semantic, target)
        rule.observe(out, "intra", q_intra, target)
        # q^inter against the bank before this batch (no entry scored against itself), for a rule
        # that observes the scores
        rule.observe(out, "inter", lambda: self.bank.scores(semantic.detach()), target,
                     (self.bank.count > 0)[None].expand_as(target))
        if not active:
            return out
        # Pseudo-labels score against the bank with this batch pushed (the released order: the
        # bank is updated before pseudo-labelling), a preview; update_state pushes it for real.
        q_inter = self.bank.scores(semantic, target)
        out["pl_intra"] = rule.positives(out, "intra", q_intra, target, epoch)
        out["pl_inter"] = rule.positives(out, "inter", q_inter, target, epoch)
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
