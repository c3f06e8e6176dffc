"""``sst``: Structured Semantic Transfer (Chen et al., AAAI 2022; SPEC §3).

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
import torch.nn.functional as F
from torch import nn

from mlrpl.engine import dist
from mlrpl.methods import register_method
from mlrpl.methods._transfer import (TransferConfig, TransferMethod, cosine_to_mean,
                                     instance_contrastive, sst_threshold, zero_like_loss)


@dataclass
class SSTConfig(TransferConfig):
    name: str = "sst"
    bank_size: int = 100              # E: features kept per class (the script's value)
    threshold_start: float = 0.95
    threshold_step: float = 0.025     # lowered after every epoch from E0 on ...
    threshold_min: float = 0.75       # ... down to this floor


class MemoryBank(nn.Module):
    """Per-class FIFO bank of the E most recent detached semantic features of known positives.

    Stored as a ring per class: ``features`` (C, E, D), ``head`` (C,) the slot of the newest
    entry, ``count`` (C,) the filled slots (all buffers: saved, so resume is exact). The
    newest-first order is the released code's ``cat((batch items in batch order, bank))[:E]``:
    within a batch, earlier images come first; if a batch holds more than E positives of a class,
    the first E are kept.
    """

    def __init__(self, num_classes: int, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError("the memory bank needs at least one slot per class")
        self.size = size
        self.register_buffer("features", torch.zeros(num_classes, size, dim))
        self.register_buffer("head", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def update(self, semantic: torch.Tensor, target: torch.Tensor) -> None:
        """Push the known positives of a batch: semantic (B, C, D), target (B, C).

        Under DDP the batch's known-positive features of every process are gathered first (in
        rank order), so that every process's bank is the same."""
        b, c = (target > 0).nonzero(as_tuple=True)          # image-major: batch order per class
        feats = semantic.detach()[b, c].float()
        if dist.is_dist():
            feats, c = dist.all_gather_varlen(feats), dist.all_gather_varlen(c)
        if c.numel() == 0:
            return
        num_classes, e = self.features.shape[:2]
        onehot = F.one_hot(c, num_classes)
        rank = (onehot.cumsum(0) - 1).gather(1, c[:, None]).squeeze(1)   # order within class
        n = onehot.sum(0)
        new_head = (self.head - n) % e
        keep = rank < e
        slot = (new_head[c] + rank) % e
        self.features[c[keep], slot[keep]] = feats[keep].to(self.features.dtype)
        self.head.copy_(new_head)
        self.count.copy_((self.count + n).clamp(max=e))

    def ordered(self, c: int) -> torch.Tensor:
        """The filled entries of class c, newest first: (count_c, D)."""
        e = self.features.shape[1]
        k = int(self.count[c])
        slots = (self.head[c] + torch.arange(k, device=self.head.device)) % e
        return self.features[c, slots]

    def scores(self, semantic: torch.Tensor) -> torch.Tensor:
        """q^inter (B, C): the mean over all E slots of cos(F_c, bank_c,e); empty (zero) slots
        contribute 0, as released."""
        c, e = self.features.shape[:2]
        weight = torch.ones(c, e, device=semantic.device)
        return cosine_to_mean(semantic, self.features, weight,
                              torch.full((c,), float(e), device=semantic.device))


@register_method("sst")
class SST(TransferMethod):
    Config = SSTConfig

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.bank = MemoryBank(ctx.num_classes, int(cfg.bank_size), self.trunk.dim)

    def threshold(self, epoch: int) -> float:
        cfg = self.cfg
        return sst_threshold(epoch, int(cfg.start_epoch), cfg.threshold_start, cfg.threshold_step,
                             cfg.threshold_min)

    def forward(self, features, batch=None):
        out = self.trunk(features)
        if not self.training or batch is None or "target" not in batch:
            return out
        target = batch["target"]
        epoch = int(batch.get("epoch", 0))
        active = self.is_active(epoch)
        semantic = out["semantic"]
        unknown = target == 0
        # Hard pseudo-labels need no gradient: SST scores only the unknown entries, detached
        # (every entry with SATL thresholds: the known ones feed the distributions).
        entries = torch.ones_like(unknown) if self.uses_satl else (unknown if active else None)
        out["cooc"], q_intra = self.ist(semantic, target, entries=entries, score_grad=False)
        out["contrast"] = instance_contrastive(semantic, target)
        if self.uses_satl:
            self.track_intra(q_intra, target)
            filled = (self.bank.count > 0)[None].expand_as(target)
            with torch.no_grad():  # the bank before this batch: no entry scored against itself
                self.distributions.update("inter", self.bank.scores(semantic.detach()), target,
                                          filled)
        # The bank is updated before pseudo-labelling: it includes the current batch.
        self.bank.update(semantic, target)
        if active:
            with torch.no_grad():
                q_inter = self.bank.scores(semantic.detach())
            if self.uses_satl:
                out["pl_intra"] = self.satl_positives("intra", q_intra, target)
                out["pl_inter"] = self.satl_positives("inter", q_inter, target)
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
            terms["bce_intra"] = terms["bce_inter"] = zero_like_loss(outputs["logits"])
        return terms

    def after_step(self, outputs, batch, epoch):
        super().after_step(outputs, batch, epoch)
        self._last_epoch = epoch

    def epoch_stats(self):
        stats = super().epoch_stats()
        epoch = getattr(self, "_last_epoch", None)
        if epoch is not None and not self.uses_satl:
            stats["pl_threshold"] = self.threshold(epoch) if self.is_active(epoch) else float("nan")
        return stats
