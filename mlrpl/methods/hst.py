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
  features). Thresholds start at 0.95 and are not weight-decayed (docs/methods/hst.md D2).

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
from torch import nn

from mlrpl.losses import instance_contrastive, partial_bce, zero_loss
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
    uses_satl = property(shared.uses_satl)
    intra_observation = staticmethod(shared.intra_observation)
    satl_positives = shared.satl_positives
    is_active = shared.is_active
    shared_terms = shared.shared_terms
    pseudo_bce = shared.pseudo_bce
    update_state = shared.transfer_update_state
    # θ takes no part before E0 (and θ_inter none while no class has a prototype).
    ddp_find_unused_parameters = True
    recipes = sarl_recipes(hcp=["method.cooc_pairs=all", "train.batch_size=32"])

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        shared.build_parts(self, cfg, ctx)
        c, k, d = ctx.num_classes, int(cfg.num_prototypes), self.trunk.dim
        self.quirks = bool(cfg.reference_quirks)
        init = cfg.threshold_init if cfg.threshold_init is not None else (1.0 if self.quirks else 0.95)
        self.threshold_intra = nn.Parameter(torch.tensor(float(init)))
        self.threshold_inter = nn.Parameter(torch.tensor(float(init)))
        self.prototypes = Prototypes(c, k, d)

    # ---- optimiser ---------------------------------------------------------------------------
    def param_groups(self):
        thresholds = [self.threshold_intra, self.threshold_inter]
        ids = {id(p) for p in thresholds}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        if self.quirks:  # released: one Adam group, thresholds L2-decayed like every weight
            return [{"params": rest + thresholds}]
        return [{"params": rest},
                {"params": thresholds, "weight_decay": 0.0, "name": "thresholds"}]

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
        active = self.is_active(epoch)
        semantic = out["semantic"]
        unknown = target == 0
        # DTL scores every entry (known ones train θ), with the graph kept; SATL thresholds
        # need every entry's score from the start (the distributions), without a graph.
        satl = self.uses_satl
        everything = torch.ones_like(unknown) if (active or satl) else None
        out["cooc"], q_intra = self.ist(semantic, target, entries=everything,
                                        score_grad=not satl)
        out["contrast"] = instance_contrastive(semantic, target)
        has = self.prototypes.any                                  # (C,)
        if satl:
            # Prototypes exist from E0 on, so g (with its graph, for the prototype loss) is
            # computed once, when pseudo-labelling is on.
            g = self.prototypes.scores(semantic) if bool(has.any()) else None
            obs = {"intra": self.intra_observation(q_intra, target)}
            if g is not None:
                obs["inter"] = (g.detach(), has[None].expand_as(target))
            out["observed"] = obs
            if not active:
                return out
            out["pl_intra"] = self.satl_positives(obs, "intra", q_intra, target)
            if g is not None:
                out["pl_inter"] = self.satl_positives(obs, "inter", g, target) & has
                out["proto"] = self.prototype_loss(g, target, has)
            return out
        if not active:
            return out
        s_intra = (q_intra - self.threshold_intra).clamp(0, 1)
        out["dtl_intra"] = partial_bce(s_intra, target)
        out["pl_intra"] = unknown & (s_intra.detach() > 0)
        if bool(has.any()):
            g = self.prototypes.scores(semantic)
            s_inter = (g - self.threshold_inter).clamp(0, 1)
            # Classes without a prototype have no score: they take no part in DTL or labelling.
            out["dtl_inter"] = partial_bce(s_inter, target * has)
            out["pl_inter"] = unknown & has & (s_inter.detach() > 0)
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

    def epoch_stats(self):
        stats = shared.transfer_epoch_stats(self)
        if self.uses_satl:  # the learnable thresholds take no part
            return stats
        stats["threshold_intra"] = float(self.threshold_intra.detach())
        stats["threshold_inter"] = float(self.threshold_inter.detach())
        return stats
