"""``hst``: Heterogeneous Semantic Transfer (Chen et al., IJCV 2024, arXiv 2205.11131;
docs/methods/hst.md).

SST's trunk and IST head, with two changes:

* CST uses class **prototypes**: at epoch E0 and every ``prototype_interval`` epochs after, the
  model runs in eval mode over the whole training set, the semantic feature of every known
  positive (image, class) is collected, and K-means (K = 10) per class gives the prototypes
  p_ck; q^inter_c = mean_k cos(F_c, p_ck). A prototype contrastive loss pulls known positives
  towards their class's prototypes and pushes known negatives away (docs/methods/hst.md D1).
* **Differential threshold learning** (DTL): two learnable scalar thresholds θ_intra, θ_inter;
  ŝ = clip(q − θ, 0, 1); an unknown entry is pseudo-positive where ŝ > 0 (q > θ); ŝ is also
  scored as a logit against the known labels (partial BCE), which moves θ (and the head or the
  features). Thresholds start at 0.95 and are not weight-decayed (docs/methods/hst.md D2): the
  rule :class:`~mlrpl.methods.components.transfer.LearnedThresholds` (SATL's in its place with
  ``thresholds: satl``; θ are kept, unused).

``reference_quirks: true`` gives the released behaviour: thresholds start at 1.0 and are decayed
by the optimiser's L2 term; the prototype loss is the released mean over all entries of
1 + y·g (which pushes known positives away from their prototypes).

Loss: bce(s, y) + [ep >= E0](bce(s, y^intra) + bce(s, y^inter) + 0.1 L_dtl^intra
+ 0.1 L_dtl^inter + 0.05 L_proto) + 10 L_co + 0.05 L_contrast. Inference: σ(s).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from mlrpl.losses import instance_contrastive, zero_loss
from mlrpl.methods.components.prototypes import Prototypes, recompute_due
from mlrpl.methods.base import Method, register_method
from mlrpl.methods.components import transfer as shared
from mlrpl.methods.components.transfer import TransferConfig
from mlrpl.models.sarl import sarl_recipes

log = logging.getLogger("mlrpl")


@dataclass
class HSTConfig(TransferConfig):
    name: str = "hst"
    prototype_interval: int = 5       # recompute at E0, E0 + interval, ... (0: only at E0)
    num_prototypes: int = 10          # K per class (fewer when a class has fewer positives)
    kmeans_n_init: int = 10           # K-means restarts (scikit-learn's former default)
    threshold_init: Optional[float] = None   # None: 0.95 (1.0 with reference_quirks)
    dtl_weight: float = 0.1           # weight of each of L_dtl^intra, L_dtl^inter
    prototype_weight: float = 0.05    # weight of the prototype contrastive loss
    reference_quirks: bool = False    # released init/decay of the thresholds, released proto sign


@register_method("hst")
class HST(Method):
    Config = HSTConfig
    needs_embeddings = True
    pl_sources = shared.PL_SOURCES
    # What it shares with sst (mlrpl.methods.components.transfer), taken by name:
    forward = shared.transfer_forward         # the trunk, then self.transfer(out, target, epoch)
    is_active = shared.is_active
    shared_terms = shared.shared_terms
    pseudo_bce = shared.pseudo_bce
    update_state = shared.transfer_update_state
    epoch_stats = shared.transfer_epoch_stats
    # θ takes no part before E0 (and θ_inter none while no class has a prototype).
    ddp_find_unused_parameters = True
    recipes = sarl_recipes(hcp=["method.cooc_pairs=all", "train.batch_size=32"])

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.quirks = bool(cfg.reference_quirks)
        # θ_intra, θ_inter (registered here as threshold_intra, threshold_inter) whichever rule
        # labels: they stay in checkpoints and in the optimiser's groups.
        self.dtl = shared.LearnedThresholds(self, cfg.threshold_init, self.quirks)
        shared.build_parts(self, cfg, ctx, self.dtl)
        c, k, d = ctx.num_classes, int(cfg.num_prototypes), self.trunk.dim
        self.prototypes = Prototypes(c, k, d)

    # ---- optimiser ---------------------------------------------------------------------------
    def param_groups(self):
        # θ without weight decay (reference_quirks: one Adam group, θ L2-decayed like every weight)
        return self.dtl.param_groups(self.parameters())

    # ---- prototypes --------------------------------------------------------------------------
    def on_epoch_start(self, ctx):
        shared.transfer_on_epoch_start(self, ctx)
        if not recompute_due(ctx.epoch, int(self.prototypes.epoch), int(self.cfg.start_epoch),
                             int(self.cfg.prototype_interval)):
            return
        n = self.prototypes.recompute(ctx, int(self.cfg.kmeans_n_init))
        log.info(f"hst: prototypes at epoch {ctx.epoch + 1} from {n} known positives "
                 f"({int(self.prototypes.any.sum())} of {self.num_classes} classes)")

    # ---- training step -----------------------------------------------------------------------
    def transfer(self, out: dict, target, epoch: int) -> dict:
        rule, active = self.rule, self.is_active(epoch)
        semantic = out["semantic"]
        out["cooc"], q_intra = self.ist(semantic, target, entries=rule.entries(target == 0, active),
                                        score_grad=rule.grad)
        out["contrast"] = instance_contrastive(semantic, target)
        rule.observe(out, "intra", q_intra, target)
        if active:   # before g: the order the graph is built in (DTL's terms)
            out["pl_intra"] = rule.positives(out, "intra", q_intra, target, epoch)
        has = self.prototypes.any                                  # (C,)
        if not bool(has.any()):   # no prototype yet (they are computed from E0 on)
            return out
        g = self.prototypes.scores(semantic)   # with its graph, for the prototype loss
        # Classes without a prototype have no score: they take no part in labelling (or DTL).
        valid = has[None].expand_as(target)
        rule.observe(out, "inter", g, target, valid)
        if active:
            out["pl_inter"] = rule.positives(out, "inter", g, target, epoch, valid)
            out["proto"] = self.prototype_loss(g, target, has)
        return out

    def prototype_loss(self, g: torch.Tensor, target: torch.Tensor, has: torch.Tensor):
        """Mean over known entries (of classes with prototypes) of 1 − y·g (docs/methods/hst.md D1);
        with ``reference_quirks`` the released mean over all B x C entries of 1 + y·g."""
        y = target.float()
        if self.quirks:
            return (1 + y * g).mean()
        known = (target != 0) & has
        return ((1 - y * g) * known).sum() / known.sum().clamp(min=1)

    def loss(self, outputs, batch, epoch):
        cfg = self.cfg
        terms = self.shared_terms(outputs, batch, epoch)
        zero = zero_loss(outputs["logits"])
        active = self.is_active(epoch)
        terms["bce_intra"] = cfg.intra_weight * self.pseudo_bce(outputs, batch, "intra") if active else zero
        terms["bce_inter"] = cfg.inter_weight * self.pseudo_bce(outputs, batch, "inter") if active else zero
        terms["dtl_intra"] = cfg.dtl_weight * outputs["dtl_intra"] if "dtl_intra" in outputs else zero
        terms["dtl_inter"] = cfg.dtl_weight * outputs["dtl_inter"] if "dtl_inter" in outputs else zero
        terms["prototype"] = cfg.prototype_weight * outputs["proto"] if "proto" in outputs else zero
        return terms
